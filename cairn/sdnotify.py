"""
Telling systemd how the node's start and stop go (C{Type=notify}, the
units in docker/systemd/): L{notify} sends C{READY=1}, C{STOPPING=1} and
C{STATUS=...} to the socket systemd names in C{NOTIFY_SOCKET}.

Why: under C{Type=simple} systemd counts the service as started as soon as
it has forked it, so a C{systemctl reload} right after a start could send
SIGHUP before the node had its handler, and SIGHUP's default action ended
the node; systemd counts death by SIGHUP as a clean exit, so
C{Restart=on-failure} left it down (seen under systemd 252: the
socket-activated node "Deactivated successfully" after start-then-reload).
With C{Type=notify} the start job lasts until the node says C{READY=1}
(its handlers installed and its listeners bound), and a reload waits for
it.

The protocol is one datagram of C{KEY=value} lines to a Unix socket
(sd_notify(3)); it is written here rather than taken from a library: the
maintained one, systemd's own C{systemd-python}, is a C extension built
against libsystemd (headers and a compiler on every machine that installs
cairn), and the small pure-Python packages on PyPI are unmaintained.
"""

import os
import socket

from twisted.logger import Logger

log = Logger()


def notify(state: str, environ=None) -> bool:
    """
    Send C{state} (e.g. C{"READY=1"}) to systemd if it asked for it
    (C{NOTIFY_SOCKET}); whether it was sent. Never raises: a node not
    started by systemd, or a socket gone, only logs.
    """
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket (Linux)
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8"), address)
    except OSError as e:
        log.warn("could not tell systemd {state!r}: {why}", state=state.split("\n", 1)[0], why=e.strerror or e)
        return False
    return True
