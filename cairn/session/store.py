"""
Session state across a clean restart (docs/protocol.md §16).

On a clean stop the node writes every open session's snapshot to one
file (CBOR, mode 0600: it holds session keys), atomically: a fresh
temporary file (C{O_CREAT|O_EXCL|O_NOFOLLOW}, so a planted file or
symlink is never written through), fsynced, renamed over the real name,
then the directory fsynced so the rename itself is durable. On start the
node loads the file and deletes it at once, fsyncing the directory again,
so that a power loss right after start cannot bring the deleted snapshot
back: state is used once. After a crash there is no file, the sessions
are gone, and peers run a new handshake.

That alone cannot stop a snapshot from coming back through a restored
backup or a VM/filesystem rollback, so a restored session never seals
with the sequence numbers or ratchet chains the snapshot recorded: see
L{cairn.session.session.Session.restore} (every send counter jumps forward
by a large random amount) and §16.4.
"""

import os

from cairn.wire import cbor

FILE_NAME = "sessions.cbor"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _fsync_directory(directory: str) -> None:
    """Make a rename or unlink in C{directory} durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: str, snapshots: list) -> str:
    """
    Write C{snapshots} to the data directory atomically and durably; return
    the path. Raises C{OSError} (e.g. the disk is full) having left nothing.
    """
    path = os.path.join(directory, FILE_NAME)
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)  # left by a stop that died mid-write (a symlink is removed, not followed)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    try:
        try:
            data = cbor.dumps({"version": 1, "sessions": snapshots})
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        # A full disk (ENOSPC): no partial file of session keys is left behind.
        os.unlink(tmp)
        raise
    os.replace(tmp, path)
    _fsync_directory(directory)
    return path


def load_once(directory: str) -> list:
    """Read and remove the saved snapshots (durably); an absent or bad file yields []."""
    path = os.path.join(directory, FILE_NAME)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    except FileNotFoundError:
        return []
    except OSError:  # a symlink (ELOOP): not a snapshot this node wrote
        os.unlink(path)
        _fsync_directory(directory)
        return []
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    finally:
        os.unlink(path)
        _fsync_directory(directory)
    try:
        content = cbor.loads(data)
        return list(content["sessions"])
    except (cbor.CBORError, KeyError, TypeError):
        return []
