"""
One issued pairing code (L{Code}) and where the books share it
(L{ICodeStore}): L{LocalCodes} for a node alone (nothing more: a restart
invalidates them), or a KV bucket shared by the nodes of a deployment
(L{cairn.cluster.pairing_codes}), so that a PIN or link created on one
node works on any, once.
"""

import hashlib

import attr
from twisted.internet import defer
from zope.interface import Interface, implementer

from cairn.wire.constants import PairRejectCode

#: The refusal of a code someone used first (here or on another node).
ALREADY_USED = (PairRejectCode.ALREADY_USED, "code already used")


@attr.s(auto_attribs=True, repr=False)
class Code:
    """One issued code: what it proves with, when it ends, how it was used."""

    key: bytes
    expires_at: float
    generation: int = 0
    failures: int = 0
    used: bool = False

    def refusal(self, now: float, max_failures: int):
        """None if the code can be tried now, else (PairRejectCode, reason)."""
        if self.used:
            return ALREADY_USED
        if self.failures >= max_failures:
            return PairRejectCode.EXPIRED, f"code invalidated after {max_failures} failed attempts"
        if now >= self.expires_at:
            return PairRejectCode.EXPIRED, "code expired"
        return None


def pin_generation(key: bytes) -> int:
    """Which PIN an exchange started with: the same on every node that holds it (from its key)."""
    return int.from_bytes(hashlib.sha256(b"cairn pin generation" + key).digest()[:8], "big")


#: C{ICodeStore} names: the one PIN, and each link by its id.
PIN_NAME = "pin"


def link_name(link_id: bytes) -> str:
    return "link." + link_id.hex()


class ICodeStore(Interface):
    """Where the books' codes are shared (a node alone: nowhere)."""

    def start():
        """A Deferred firing once the codes issued elsewhere are known (through L{watch})."""

    def stop():
        """Stop following; a Deferred."""

    def watch(callback):
        """Call C{callback(name, code or None)} for each code issued, changed or removed elsewhere."""

    def save(name, code):
        """Issue C{code} under C{name} (replacing any); a Deferred firing once it is usable everywhere."""

    def spend(name, code):
        """Mark C{code} used, once in the deployment: a Deferred of whether this call was the one."""

    def failed(name, code):
        """Count a failed attempt on C{code} (already counted in C{code.failures}); a Deferred."""

    def flushed():
        """A Deferred firing once every L{save} made so far is done."""


@implementer(ICodeStore)
class LocalCodes:
    """A node alone: the books' memory is all there is."""

    def start(self):
        return defer.succeed(None)

    def stop(self):
        return defer.succeed(None)

    def watch(self, callback):
        pass

    def save(self, name, code):
        return defer.succeed(None)

    def spend(self, name, code):
        return defer.succeed(True)

    def failed(self, name, code):
        return defer.succeed(None)

    def flushed(self):
        return defer.succeed(None)
