"""
What can stop a node from starting, said in one line.

Every start-up failure an operator can cause -- a bad setting, an endpoint
Twisted cannot parse, a port in use, a data directory that cannot be
created or written, a damaged key or database -- ends start-up with a
L{StartupError}: a C{SystemExit} whose message is one line naming the
variable (or the file) at fault, so that C{twistd} and C{cairn-server run}
print that line and exit with status 1, never a traceback.

This module imports nothing heavy (and no reactor), so that C{cairn.tap}
can use it before twistd has chosen the reactor.
"""

from __future__ import annotations

import atexit
import glob
import os
import sys
from contextlib import contextmanager

from twisted.internet.error import CannotListenError

#: The setting behind each listener name of L{cairn.node.CairnNode}.
LISTENER_VARIABLES = {
    "tcp": "CAIRN_LISTEN",
    "websocket": "CAIRN_WS_LISTEN",
    "management": "CAIRN_MGMT_LISTEN",
}


class StartupError(SystemExit):
    """Start-up cannot go on; the message is one line for the operator."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"cairn: {problem}")
        #: The message without the program's name.
        self.problem = problem


def endpoint_problem(name: str, description: str, error: Exception) -> StartupError:
    """An endpoint string Twisted's parser refused (C{tcp:notaport}, C{foo:1}, ...)."""
    variable = LISTENER_VARIABLES.get(name, name)
    why = str(error) or type(error).__name__
    return StartupError(f"{variable}: {description!r} cannot be used: {why}")


def listen_problem(name: str, description: str, error) -> StartupError:
    """A listener that could not bind (C{CannotListenError}: port in use, no permission, no such address)."""
    variable = LISTENER_VARIABLES.get(name, name)
    cause = getattr(error, "socketError", None)
    why = getattr(cause, "strerror", None) or str(cause or error)
    return StartupError(f"{variable}: cannot listen on {description!r}: {why}")


def data_dir_problem(path: str, error: OSError) -> StartupError:
    """The data directory (or a file in it) cannot be created, read or written."""
    where = error.filename or path
    why = error.strerror or str(error)
    if isinstance(error, FileExistsError) and not os.path.isdir(where):
        why = "it is not a directory"
    return StartupError(f"CAIRN_DATA_DIR: cannot use {where}: {why}")


def check_writable(path: str) -> None:
    """
    Refuse a data directory the node cannot write (a read-only mount, no
    permission) before anything is opened in it.

    @raise StartupError: naming C{CAIRN_DATA_DIR} and the cause.
    """
    if not os.access(path, os.W_OK | os.X_OK):
        # access() says EROFS for a read-only file system, EACCES otherwise.
        try:
            probe = os.path.join(path, ".cairn-write-test")
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError as e:
            raise StartupError(f"CAIRN_DATA_DIR: cannot write in {path}: {e.strerror or e}") from None


def disk_warnings(data_dir: str, free: int, held: int, reserve: int, max_total: int) -> list:
    """
    Lines to warn about at start-up when the disk cannot hold what the
    limits allow: C{free} bytes available on the file system of
    C{data_dir}, C{held} bytes of database files already there.
    """
    lines = []
    if free < reserve:
        lines.append(
            f"free space on {data_dir} ({_mb(free)}) is below CAIRN_DISK_RESERVE ({_mb(reserve)}):"
            " new messages and sync updates are refused until space is freed"
        )
    room = free + held - reserve
    if max_total > room:
        lines.append(
            f"CAIRN_FORWARD_MAX_TOTAL ({_mb(max_total)}) is more than {data_dir} can hold"
            f" ({_mb(max(room, 0))}: {_mb(free)} free plus {_mb(held)} in the database, less"
            f" CAIRN_DISK_RESERVE): new messages will be refused at the reserve before that limit"
        )
    return lines


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def bind_listeners(listeners: dict, descriptions: dict, start) -> None:
    """
    Bind the listening services C{listeners} ({name: service}) by calling
    C{start}; a port that cannot be bound closes those already bound and
    raises a L{StartupError} naming the listener's variable.
    """
    try:
        start()
    except CannotListenError as e:
        # Listeners bind in order: the failed one is the last begun. (The
        # endpoint services keep their port's Deferred in _waitingForPort,
        # private to Twisted, which offers no public accessor.)
        begun = [n for n, s in listeners.items() if s._waitingForPort is not None]
        failed = begun[-1] if begun else ""
        for name in begun[:-1]:
            listeners[name]._waitingForPort.addCallback(lambda port: port.stopListening())
        raise listen_problem(failed, descriptions.get(failed, ""), e) from None


def load_identity(data_dir: str, path: str | None = None):
    """
    The node's identity: from C{path} (C{CAIRN_IDENTITY_FILE}, the key every
    node of a deployment shares), else from C{data_dir} (created on first
    use there). A damaged, missing, unreadable or exposed key is one line.
    """
    from cairn.crypto import identity as identity_mod

    if path is not None:
        return _shared_identity(path)
    try:
        return identity_mod.load_or_create(data_dir)
    except identity_mod.IdentityError as e:
        raise StartupError(f"CAIRN_DATA_DIR: {e}") from None
    except OSError as e:
        raise data_dir_problem(data_dir, e) from None


def _shared_identity(path: str):
    """
    The identity key at C{path}, which must exist (never created there:
    each node creating its own would split the deployment into several
    servers) and be closed to other users, as the data directory's key is.
    """
    import stat

    from cairn.crypto import identity as identity_mod

    variable = "CAIRN_IDENTITY_FILE"
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        with open(path, "rb") as f:
            seed = f.read(33)
    except FileNotFoundError:
        raise StartupError(
            f"{variable}: {path} does not exist (copy identity.key from a node's data directory,"
            " or create one: umask 077; head -c 32 /dev/urandom > FILE)"
        ) from None
    except OSError as e:
        raise StartupError(f"{variable}: cannot read {path} ({e.strerror or e})") from None
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise StartupError(f"{variable}: {path} is open to other users (mode {mode:04o}); run: chmod 600 {path}")
    if len(seed) != 32:
        raise StartupError(f"{variable}: {path} is not a 32-byte Ed25519 seed")
    return identity_mod.Identity.from_seed(seed)


def warn_about_disk(db, max_total: int, log) -> None:
    """Warn (one line each) when the disk of C{db} cannot hold what the mailbox limit allows."""
    space = db.space
    if space is None:
        return
    held = sum(os.path.getsize(p) for p in glob.glob(db.path + "*") if os.path.isfile(p))
    for line in disk_warnings(space.path, space.free(), held, space.reserve, max_total):
        log.warn("{line}", line=line)


def from_any_thread(reactor, log):
    """A warning logger callable from the database thread (logged in the reactor's)."""

    def report(fmt, **fields):
        reactor.callFromThread(lambda: log.warn(fmt, **fields))

    return report


def _remove_own_pidfile(path):
    """Remove the pidfile at C{path} if it names this process (twistd wrote it after forking)."""
    if not path:
        return
    try:
        with open(path) as f:
            if int(f.read().strip() or 0) != os.getpid():
                return
        os.unlink(path)
    except (OSError, ValueError):
        pass  # gone already or not ours: nothing to clean up


@contextmanager
def tell_launcher(twistd_options):
    """
    Pass a L{StartupError} raised inside on to the twistd that launched a
    daemon (C{twistd cairn} without C{-n}): it waits on its status pipe
    for the child's outcome, and hears of an C{Exception} only -- a
    C{SystemExit} would leave it waiting for ever. It prints the line
    ("An error has occurred: ...") and exits with status 1.

    The daemon's line goes to its log (its C{sys.stderr}: twistd's log)
    before the launcher is told, and the error then ends the daemon with
    status 1 without printing it again. Python would print it only as the
    daemon exits, after the launcher had exited: an operator (or a test)
    reading the log at once could find it missing.

    The daemon's pidfile is removed first: twistd removes it after an
    C{Exception} in the start, not after the C{SystemExit} this ends with,
    and a pidfile left behind can block the next start.
    """
    try:
        yield
    except StartupError as e:
        pipe = twistd_options.get("statusPipe") if twistd_options is not None else None
        if pipe is None:
            raise
        twistd_options["statusPipe"] = None
        print(e, file=sys.stderr, flush=True)
        _remove_own_pidfile(twistd_options.get("pidfile"))
        # twistd's own format: "1 " and at most 100 bytes in all.
        os.write(pipe, f"1 {e.problem}".encode("ascii", "backslashreplace")[:100])
        os.close(pipe)
        raise SystemExit(1) from None


def exit_with_status(status: int) -> None:
    """
    End the process with C{status} once it has finished exiting.

    For a start that fails after twistd has started the reactor (a store
    that cannot load): the node logs why and stops the reactor, and twistd
    then shuts down as after any stop, and exits 0.  A supervisor must see
    a failure instead (systemd's C{Restart=on-failure}, a container's
    restart policy), so the process's last act is C{os._exit(status)}, after
    twistd's own clean-up and after the log is flushed.
    """

    def _exit():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):
                pass  # closed or replaced: nothing left to flush
        os._exit(status)

    atexit.register(_exit)
