"""
L{free_port}: a loopback TCP port for a process that must be told its port
before it starts (nats-servers and their routes, a node restarted on the
same address). One for the benches and the tests (C{tests/_nats.py}
re-exports it).

A port is free when it is checked, but the process it is meant for binds
it a little later. Two callers running at once (the suite's C{-j2}
workers, a bench started by a test) must not be handed the same port in
between: CI at d2dc50a failed when a test's nats-server found its port
"already in use" by another's. So each port handed out is also reserved,
for L{HOLD} seconds, by a file made exclusively in a directory shared by
every process of this user (L{RESERVATIONS}); no caller is handed a port
another has reserved. Nothing in the standard library or the test tools
reserves a port across processes, hence these few lines.
"""

import os
import random
import socket
import tempfile
import time

#: Seconds a port handed out stays reserved: longer than any test or bench
#: keeps a port of a process it restarts on the same address.
HOLD = 900

#: Where the reservations are, one empty file per port.
RESERVATIONS = os.path.join(tempfile.gettempdir(), f"cairn-ports-{os.getuid()}")


def _ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _reserve(port, now):
    """Whether C{port} is now reserved by this call (False: another caller holds it)."""
    path = os.path.join(RESERVATIONS, str(port))
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            try:
                if now - os.stat(path).st_mtime < HOLD:
                    return False
                os.unlink(path)  # an old reservation: its holder is done with the port
            except FileNotFoundError:
                pass
    return False


_tidied = []


def _tidy(now):
    """Once per process: remove reservations older than L{HOLD} (each port's file is otherwise only reused)."""
    if _tidied == [RESERVATIONS]:
        return
    _tidied[:] = [RESERVATIONS]
    for name in os.listdir(RESERVATIONS):
        path = os.path.join(RESERVATIONS, name)
        try:
            if now - os.stat(path).st_mtime >= HOLD:
                os.unlink(path)
        except FileNotFoundError:
            pass  # another process tidied it first


def free_port():
    """
    A TCP port on 127.0.0.1 that was free a moment ago, and that no other
    caller (in this process or another) was handed in the last L{HOLD}
    seconds.

    Drawn at random below the kernel's ephemeral range where there is room
    (10000 up to it): there, no outgoing connection and no port-0 listener
    can take it between this check and the process's listen. Without such
    room, a port the kernel picks (not reserved: the kernel does not hand
    out a port that is bound).
    """
    start = _ephemeral_start()
    os.makedirs(RESERVATIONS, mode=0o700, exist_ok=True)
    now = time.time()
    _tidy(now)
    for _ in range(200 if start > 10100 else 0):
        port = random.randrange(10000, start)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if _reserve(port, now):
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
