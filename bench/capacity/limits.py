"""
What bounds how many sessions one run can open, besides the node: each
process's descriptor limit, and the ephemeral ports of one loopback source
address.

Descriptors: every bench process (node, clients, bench) raises its own
limit with L{cairn.fdlimit} (the node's own start-up code): as root both
limits go to C{fs.nr_open}, otherwise the soft limit goes to the hard one;
the bench says which, and opens fewer sessions when that is too few.

Ports: the node listens on 127.0.0.1; a client socket's local port is
picked from C{net.ipv4.ip_local_port_range} (about 28,000) per source
address, so the client processes bind their sockets to 127.0.0.2,
127.0.0.3, ... (all loopback on Linux), enough of them for the sessions
asked for.
"""

from bench._common import out
from cairn import fdlimit

#: File descriptors a process needs besides one per session.
FD_MARGIN = 64
#: Sessions per source address: under the ~28,000 ephemeral ports, with
#: room for the pairing sessions and the connections still in TIME_WAIT.
PER_SOURCE = 10_000
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"


def raise_descriptors() -> fdlimit.Raised:
    """Raise this process's descriptor limit as far as it may (see the module docstring)."""
    return fdlimit.raise_limit()


def fd_budget(sessions: int, processes: int = 1) -> int:
    """
    How many sessions the descriptor limits allow (all if enough); says
    so if fewer. The node holds every session, each client process its
    share.
    """
    raised = raise_descriptors()
    out(f"this process: {raised.line()}")
    soft = raised.after[0]
    fits = min(soft - FD_MARGIN, (soft - FD_MARGIN) * processes)
    if sessions > fits:
        out(f"  the limit allows only {fits} sessions: scaled down from {sessions} to {fits}")
        return fits
    return sessions


def ephemeral_ports() -> int:
    """How many local ports one source address has (C{ip_local_port_range})."""
    try:
        with open(PORT_RANGE) as f:
            low, high = map(int, f.read().split())
        return high - low + 1
    except (OSError, ValueError):
        return 28_232  # Linux's default range


def source_addresses(sessions: int, per_source: int = PER_SOURCE, prefix: str = "127.0") -> list:
    """
    The loopback addresses the clients bind to: 127.0.0.2 upwards (C{prefix}
    .0.2 upwards), one per C{per_source} sessions (each session's peer pairs
    in a connection of its own first, so a session costs two ports on its
    way up).
    """
    per_source = min(per_source, ephemeral_ports() // 2)
    count = max(1, -(-sessions // per_source))
    return [f"{prefix}.{(i + 2) // 256}.{(i + 2) % 256}" for i in range(count)]
