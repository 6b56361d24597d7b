"""
Giving the C allocator's free memory back to the operating system.

glibc's C{free()} returns memory to the kernel only from the top of the
heap. Everything a handshake makes and drops in C (OpenSSL's cipher and
key objects, Python objects over 512 bytes, 256 KiB read buffers) leaves
free chunks between the long-lived objects of the sessions made at the
same time; their pages stay in the node's RSS, free but never used again
once the sessions are idle. C{malloc_trim(0)} hands those pages back
(C{MADV_DONTNEED}) without moving anything: measured on the bench node
(C{python -m bench.capacity idle --heap}, 2,000 idle sessions), 1.1 KB per
TCP session and 0.45 KB per WebSocket session, about a tenth of each
session's RSS. A page handed back costs a page fault when it is used
again.

A node whose process is its own (L{cairn.node.Process}'s C{trim_heap},
set by the twistd plugin) trims every L{TRIM_INTERVAL} seconds; elsewhere
(another C library, or an application embedding a node) nothing happens.
Twisted has no such service and glibc no other interface to it, hence
these few lines over C{ctypes}.
"""

import ctypes

from twisted.internet import task
from twisted.logger import Logger

log = Logger()

#: Seconds between two trims: a trim of a 150 MB heap takes about a
#: millisecond (bench/README.rst, issue 19).
TRIM_INTERVAL = 30.0


def glibc_trim():
    """
    glibc's C{malloc_trim}, as C{() -> None}; None where the C library
    has none (musl, macOS).
    """
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


class HeapTrimmer:
    """
    Calls C{trim} every C{interval} seconds on C{clock} while started.

    @param trim: C{() -> None}, e.g. L{glibc_trim}'s; None: never trims.
    """

    def __init__(self, clock, trim, interval: float = TRIM_INTERVAL):
        self._trim = trim
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock
        self.interval = interval

    def start(self) -> None:
        if self._trim is not None and not self._loop.running:
            self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        try:
            self._trim()
        except Exception:
            # A periodic job logs its own failure and keeps running.
            log.failure("trimming the heap failed")
