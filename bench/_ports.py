"""
L{free_port}: a loopback TCP port for a process that must be told its port
before it starts (nats-servers and their routes, a node restarted on the
same address). One for the benches and the tests (C{tests/_nats.py}
re-exports it).
"""

import random
import socket


def _ephemeral_start():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port():
    """
    A TCP port on 127.0.0.1 that was free a moment ago.

    Drawn at random below the kernel's ephemeral range where there is room
    (10000 up to it): there, no outgoing connection and no port-0 listener
    of a test or bench running in parallel can take it between this check
    and the process's listen, which is what made such ports "already in
    use" under load (a bench's nats-server that never became ready, during
    the suite). Without such room, a port the kernel picks.
    """
    start = _ephemeral_start()
    for _ in range(50 if start > 10100 else 0):
        port = random.randrange(10000, start)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
