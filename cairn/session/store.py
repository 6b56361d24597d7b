"""
Session state across a clean restart.

On a clean stop the node writes every open session's snapshot to one
file (CBOR, mode 0600: it holds session keys), atomically. On start it
loads the file and deletes it at once, so that state is used once: after
a crash there is no file, the sessions are gone, and peers run a new
handshake. That is deliberate -- a snapshot older than the crash would
make the node reuse sequence numbers (AEAD nonces) and ratchet keys it
had already used after the snapshot.
"""

import os

from cairn.wire import cbor

FILE_NAME = "sessions.cbor"


def save(directory: str, snapshots: list) -> str:
    """Write C{snapshots} to the data directory atomically; return the path."""
    path = os.path.join(directory, FILE_NAME)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, cbor.dumps({"version": 1, "sessions": snapshots}))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def load_once(directory: str) -> list:
    """Read and remove the saved snapshots; an absent or bad file yields []."""
    path = os.path.join(directory, FILE_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    os.unlink(path)
    try:
        content = cbor.loads(data)
        return list(content["sessions"])
    except (cbor.CBORError, KeyError, TypeError):
        return []
