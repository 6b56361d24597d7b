"""
The node's PSK and the operator's control over it (docs/protocol.md
§20.4.7): limits (expiry, maximum uses), rotation and disabling at run
time, persisted so that a restart does not bring back a rotated-out PSK.

The PSK is a group credential: every holder can pair (again) and pose as
the node to the next PSK device. Only the password scalar derived from it
is kept in memory; the text is written once to the override file (mode
0600, atomically) when the operator sets one through the API, and
returned once to that operator -- never logged.
"""

import json
import os
import secrets

from twisted.logger import Logger

from cairn.pairing import proofs
from cairn.wire.constants import PairRejectCode

log = Logger()

#: Name of the override file in the data directory.
PSK_FILE = "pairing-psk.json"
#: Bytes of randomness in a generated PSK (shown as 32 hex characters).
GENERATED_BYTES = 16
#: A PSK shorter than this (in bytes) is logged as weak.
WEAK_PSK = 16
MAX_PSK = 1024


class PskError(ValueError):
    """An unusable PSK given through the API; the message is for the caller."""


class PskSetting:
    """
    The PSK in force: its scalar, when it was set, and its limits.

    @param max_uses: pairings it may make before it stops working (0: no limit).
    @param lifetime: seconds it works after being set (None: no limit).
    """

    def __init__(self, clock, psk=None, max_uses=0, lifetime=None, path=None):
        self.clock = clock
        self.max_uses = max_uses
        self.lifetime = lifetime
        self.path = path
        self.w = None
        self.set_at = None
        self.uses = 0
        self.source = "CAIRN_PSK"
        stored = self._load()
        if stored is not None:
            self.source = "api"
            psk = stored.get("psk")
            if psk is None:
                log.info("PSK pairing disabled through the API ({path}): CAIRN_PSK is ignored", path=self.path)
            else:
                log.info("using the PSK set through the API ({path}) instead of CAIRN_PSK", path=self.path)
        self._set(psk or None, warn=True)

    @property
    def enabled(self) -> bool:
        return self.w is not None

    @property
    def expires_at(self):
        if self.set_at is None or self.lifetime is None:
            return None
        return self.set_at + self.lifetime

    def _set(self, psk, warn=False):
        self.w = proofs.psk_scalar(psk) if psk else None
        self.set_at = self.clock.seconds() if psk else None
        self.uses = 0
        if psk and warn and len(proofs.psk_bytes(psk)) < WEAK_PSK:
            log.warn("the PSK is shorter than {n} bytes: use a long random key", n=WEAK_PSK)

    def refusal(self):
        """None if the PSK may pair now, else (PairRejectCode, reason)."""
        if self.max_uses and self.uses >= self.max_uses:
            return PairRejectCode.EXPIRED, f"the PSK has been used {self.max_uses} time(s), its limit"
        expires_at = self.expires_at
        if expires_at is not None and self.clock.seconds() >= expires_at:
            return PairRejectCode.EXPIRED, "the PSK has expired"
        return None

    def used(self):
        self.uses += 1

    def rotate(self, psk=None) -> str:
        """Put C{psk} (or a new random one) in force; returns it."""
        if psk is None:
            psk = secrets.token_hex(GENERATED_BYTES)
        if not isinstance(psk, str) or not psk or len(proofs.psk_bytes(psk)) > MAX_PSK:
            raise PskError(f"'psk' must be a non-empty string of at most {MAX_PSK} bytes")
        if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in psk):
            raise PskError("'psk' must not contain control characters")
        self._store({"psk": psk})
        self._set(psk, warn=True)
        self.source = "api"
        log.info("PSK rotated through the API")
        return psk

    def disable(self):
        """Turn PSK pairing off (until the next rotation)."""
        self._store({"psk": None})
        self._set(None)
        self.source = "api"
        log.info("PSK pairing disabled through the API")

    def status(self) -> dict:
        """What the management API shows (never the PSK)."""
        return {
            "enabled": self.enabled,
            "source": self.source,
            "set_at": self.set_at,
            "expires_at": self.expires_at,
            "max_uses": self.max_uses or None,
            "uses": self.uses,
        }

    def _load(self):
        if self.path is None:
            return None
        try:
            with open(self.path, encoding="utf-8") as f:
                stored = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise PskError(f"cannot read {self.path}: {e}") from None
        if not isinstance(stored, dict) or not isinstance(stored.get("psk"), (str, type(None))):
            raise PskError(f"{self.path} is not a PSK file written by this node")
        return stored

    def _store(self, data):
        if self.path is None:
            return
        temporary = self.path + ".tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(temporary, flags, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        directory = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
