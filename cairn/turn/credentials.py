"""
TURN REST API credentials (draft-uberti-behave-turn-rest-00; coturn's
C{use-auth-secret} / C{static-auth-secret}).

The TURN server and the node share a secret; neither keeps per-user
state. A credential is valid until the Unix time in its username.
"""

import base64
import hashlib
import hmac


def turn_username(expires_at: int, peer_id: str) -> str:
    """The username C{"<expires_at>:<peer_id>"} (expiry in whole Unix seconds)."""
    if not isinstance(expires_at, int) or isinstance(expires_at, bool) or expires_at < 0:
        raise ValueError("expires_at must be a non-negative integer")
    return f"{expires_at}:{peer_id}"


def turn_password(secret: str, username: str) -> str:
    """C{base64(HMAC-SHA1(secret, username))}, both UTF-8, standard base64 with padding."""
    mac = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def turn_credentials(secret: str, peer_id: str, expires_at: int):
    """The (username, password) pair for C{peer_id}, valid until C{expires_at}."""
    username = turn_username(expires_at, peer_id)
    return username, turn_password(secret, username)
