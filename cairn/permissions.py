"""
The start-up check of the data directory's permissions.

The data directory holds the node's secrets: its identity key, the
management token, the sessions saved for resume (session keys) and the
database (pairings, queued messages). The node creates all of them owner
only (directory 0700, files 0600), but an operator's C{mkdir}, a volume
mount or a restore from backup can loosen that. At start-up:

  - B{refused}: the directory, or a secret file, that other users may
    B{write} (C{o+w}): whoever can replace the identity key or the
    database can impersonate the node or its peers; and an identity key
    that other users may B{read} (C{o+r}), like OpenSSH refuses a private
    key others can read;
  - B{warned}: anything else that group or other users may read or write.

Each message names the path, its mode and the command that fixes it, never
the content. Files that do not exist yet are skipped: the node creates
them 0600.
"""

import os
import stat

from twisted.logger import Logger

from cairn.crypto.identity import KEY_FILE_NAME
from cairn.db import DB_FILE_NAME
from cairn.management.token import TOKEN_FILE_NAME
from cairn.session.store import FILE_NAME as SESSIONS_FILE_NAME

log = Logger()

#: The files of the data directory that hold secrets (with SQLite's companions).
SECRET_FILES = (
    KEY_FILE_NAME,
    TOKEN_FILE_NAME,
    SESSIONS_FILE_NAME,
    DB_FILE_NAME,
    DB_FILE_NAME + "-wal",
    DB_FILE_NAME + "-shm",
)


class PermissionProblem(Exception):
    """The data directory or a file in it is open to other users: start-up stops."""


def _mode(path):
    # The mode of what a symbolic link names: a link's own mode is always
    # 0777 and grants nothing.  systemd's StateDirectory= with DynamicUser=
    # makes the data directory such a link (/var/lib/cairn -> private/cairn).
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def check_data_dir(path: str, logger: Logger = log) -> list:
    """
    Check C{path} and its secret files; warn through C{logger}.

    @return: the warnings given (one line each).
    @raise PermissionProblem: with a one-line message, for what is refused.
    """
    warnings = []
    mode = _mode(path)
    if mode is not None:
        if mode & stat.S_IWOTH:
            raise PermissionProblem(
                f"data directory {path} is writable by other users (mode {mode:04o}); run: chmod 700 {path}"
            )
        if mode & 0o077:
            warnings.append(
                f"data directory {path} is open to other users (mode {mode:04o}); run: chmod 700 {path}"
            )
    for name in SECRET_FILES:
        file_path = os.path.join(path, name)
        mode = _mode(file_path)
        if mode is None or not mode & 0o077:
            continue
        if mode & stat.S_IWOTH or (name == KEY_FILE_NAME and mode & stat.S_IROTH):
            raise PermissionProblem(
                f"{file_path} is open to other users (mode {mode:04o}); run: chmod 600 {file_path}"
            )
        warnings.append(f"{file_path} is open to other users (mode {mode:04o}); run: chmod 600 {file_path}")
    for line in warnings:
        logger.warn("{problem}", problem=line)
    return warnings
