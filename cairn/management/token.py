"""
The management API's bearer token: where it comes from, and how it is checked.

Precedence: C{CAIRN_MGMT_TOKEN}, else the contents of
C{CAIRN_MGMT_TOKEN_FILE}, else C{<data_dir>/mgmt.token} (created with a
fresh random token, mode 0600, on first start).  The token itself is never
logged; only where it came from.
"""

import hashlib
import hmac
import os
import secrets
import stat

from cairn.config import ConfigError

#: Name of the generated token file inside the data directory.
TOKEN_FILE_NAME = "mgmt.token"

#: Below this length a configured token draws a warning.
_SHORT_TOKEN = 16


def resolve_token(config, log) -> str:
    """
    Return the management token for C{config}, creating one if none is set.

    @param config: a L{cairn.config.Config}.
    @param log: a L{twisted.logger.Logger}; receives where the token came
        from (a variable name or a path), never the token.
    @raise ConfigError: if C{CAIRN_MGMT_TOKEN_FILE} is unreadable or empty.
    """
    if config.mgmt_token is not None:
        # Config.from_env has already read CAIRN_MGMT_TOKEN_FILE into
        # mgmt_token when that variable is set.
        source = "CAIRN_MGMT_TOKEN_FILE" if config.mgmt_token_file else "CAIRN_MGMT_TOKEN"
        token = config.mgmt_token.strip()
        if not token:
            raise ConfigError(source, "the management token is empty")
    elif config.mgmt_token_file is not None:
        # A Config built directly (not through from_env) leaves the file unread.
        source = "CAIRN_MGMT_TOKEN_FILE"
        token = _read_configured_file(config.mgmt_token_file)
    else:
        return _data_dir_token(config.data_dir, log)
    if len(token) < _SHORT_TOKEN:
        log.warn(
            "the management token from {source} is shorter than {n} characters; "
            "use a long random value",
            source=source,
            n=_SHORT_TOKEN,
        )
    log.info("management API token taken from {source}", source=source)
    return token


def reread_token(config, log) -> str:
    """
    The management token as it is now (for C{SIGHUP}): C{CAIRN_MGMT_TOKEN_FILE}
    read again, else the one from C{CAIRN_MGMT_TOKEN} (an environment
    variable does not change), else C{<data_dir>/mgmt.token} read again
    (created anew if it was removed).

    @raise ConfigError: if the file cannot be read or is empty.
    """
    if config.mgmt_token_file is not None:
        return _read_configured_file(config.mgmt_token_file)
    if config.mgmt_token is not None:
        return config.mgmt_token.strip()
    return _data_dir_token(config.data_dir, log)


def check_bearer(header_value, token: str) -> bool:
    """
    Whether an C{Authorization} header value carries C{token} as a Bearer token.

    The scheme is matched case-insensitively; the token comparison takes
    the same time whatever the supplied value (both sides are hashed first,
    so not even the length leaks).

    @param header_value: the header as C{bytes} or C{str}, or C{None}.
    """
    if not token or not header_value:
        return False
    if isinstance(header_value, str):
        header_value = header_value.encode("utf-8")
    scheme, _, credentials = header_value.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return False
    supplied = hashlib.sha256(credentials.strip()).digest()
    expected = hashlib.sha256(token.encode("utf-8")).digest()
    return hmac.compare_digest(supplied, expected)


def _read_configured_file(path: str) -> str:
    """Read C{CAIRN_MGMT_TOKEN_FILE}; errors name the file, never its contents."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise ConfigError("CAIRN_MGMT_TOKEN_FILE", f"cannot read {path!r} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError("CAIRN_MGMT_TOKEN_FILE", f"{path!r} is not UTF-8 text") from None
    if not token:
        raise ConfigError("CAIRN_MGMT_TOKEN_FILE", f"{path!r} is empty (put the token in it)")
    return token


def _data_dir_token(data_dir: str, log) -> str:
    """
    Reuse C{<data_dir>/mgmt.token}, or create it with a new random token.

    @raise ConfigError: naming C{CAIRN_DATA_DIR} if the file cannot be read
        or created (e.g. a symlink is in the way).
    """
    path = os.path.join(data_dir, TOKEN_FILE_NAME)
    try:
        os.makedirs(data_dir, mode=0o700, exist_ok=True)
        return _reuse_or_create(path, log)
    except OSError as e:
        raise ConfigError("CAIRN_DATA_DIR", f"cannot read or create {path!r} ({e.strerror})") from None


def _reuse_or_create(path: str, log) -> str:
    token = _read_existing(path, log)
    if token:
        log.info("management API token read from {path}", path=path)
        return token
    token = secrets.token_urlsafe(32)
    try:
        _write_new(path, token)
    except FileExistsError:
        # Another process created it between our read and our write.
        token = _read_existing(path, log)
        if not token:
            raise
        log.info("management API token read from {path}", path=path)
        return token
    log.info("management API token generated and saved to {path} (mode 0600)", path=path)
    return token


def _read_existing(path: str, log):
    """The token stored at C{path}, or C{None} if there is none (an empty file is removed)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        raw = f.read()
    if stat.S_IMODE(mode) & 0o077:
        log.warn(
            "management token file {path} is readable by other users (mode {mode:o}); chmod 600 it",
            path=path,
            mode=stat.S_IMODE(mode),
        )
    token = raw.decode("utf-8", "replace").strip()
    if not token:
        log.warn("management token file {path} is empty; generating a new token", path=path)
        os.unlink(path)
        return None
    return token


def _write_new(path: str, token: str) -> None:
    """Create C{path} (never following or replacing anything) holding C{token}, mode 0600."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, token.encode("ascii") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
