"""
The node's descriptor limit, raised at start-up as far as the process may.

Every session holds a socket, and a socket is a file descriptor: the soft
C{RLIMIT_NOFILE} (often 1024 from a login shell, 1024 or 524288 under
systemd, 1048576 in Docker) bounds how many sessions a node can hold
(L{cairn.transport.fds} keeps a reserve below it). At start-up the node
raises its soft limit to its hard limit, which any process may; a process
allowed to raise its hard limit too (root, C{CAP_SYS_RESOURCE}) raises both
to the kernel's ceiling, C{/proc/sys/fs/nr_open}. It says in one line what
it got (docs/deployment.md, "File descriptors", says how an operator raises
the hard limit under systemd and Docker).

The node's reactor is epoll (Twisted's default on Linux), for which a
descriptor above 1024 is no different from any other.
"""

import resource

import attr
from twisted.logger import Logger

log = Logger()

NR_OPEN = "/proc/sys/fs/nr_open"


@attr.s(frozen=True, auto_attribs=True)
class Raised:
    """What L{raise_limit} did: the (soft, hard) limits before and after, and how."""

    before: tuple
    after: tuple
    how: str

    def line(self) -> str:
        """The one start-up line."""
        (soft0, hard0), (soft, hard) = self.before, self.after
        if (soft, hard) == (soft0, hard0):
            return f"file descriptors: RLIMIT_NOFILE soft {_show(soft)}, hard {_show(hard)} ({self.how})"
        return (
            f"file descriptors: RLIMIT_NOFILE raised from soft {_show(soft0)}, hard {_show(hard0)} "
            f"to soft {_show(soft)}, hard {_show(hard)} ({self.how})"
        )


def _show(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def kernel_ceiling(path: str = NR_OPEN):
    """C{fs.nr_open}, the most a process's descriptor limit can be (None if unknown)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def raise_limit(getrlimit=resource.getrlimit, setrlimit=resource.setrlimit, ceiling=None) -> Raised:
    """
    Raise this process's C{RLIMIT_NOFILE} as far as it is allowed.

    First both limits to the kernel's ceiling (allowed with privilege),
    else the soft limit to the hard one. Never lowers a limit, never raises.

    @param getrlimit: C{resource.getrlimit}'s shape (for tests).
    @param setrlimit: C{resource.setrlimit}'s shape (for tests).
    @param ceiling: C{() -> int or None}, the kernel's C{fs.nr_open}
        (default: L{kernel_ceiling}, looked up at the call).
    """
    kind = resource.RLIMIT_NOFILE
    before = soft, hard = getrlimit(kind)
    infinite = resource.RLIM_INFINITY
    top = (ceiling or kernel_ceiling)()
    if top is not None and hard != infinite and hard < top:
        try:
            setrlimit(kind, (top, top))
        except (ValueError, OSError):
            pass  # not privileged: the hard limit stays
        else:
            return Raised(before, getrlimit(kind), "both raised to the kernel's fs.nr_open")
    if soft == hard:
        why = (
            "the hard limit"
            if hard == infinite or top is None or hard >= top
            else "the hard limit; raising it needs privilege"
        )
        return Raised(before, before, f"soft already at {why}")
    try:
        setrlimit(kind, (hard, hard))
    except (ValueError, OSError) as e:
        return Raised(before, getrlimit(kind), f"raising the soft limit was refused: {e}")
    return Raised(before, getrlimit(kind), "soft raised to the hard limit; raising that needs privilege")


def raise_and_say(logger: Logger = log, **hooks) -> Raised:
    """L{raise_limit}, then log its one line."""
    raised = raise_limit(**hooks)
    logger.info("{line}", line=raised.line())
    return raised
