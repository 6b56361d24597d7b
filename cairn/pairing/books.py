"""
The node's PIN and link books: the codes it issued, and their state.

The node keeps one active PIN at a time: creating a new one replaces the
old. Any number of links may be active, each filed under an id derived
from its secret. Both kinds are single-use, expire, and are burned after
a number of failed attempts. The books keep them in memory; what they
issue, spend or count against is also handed to an
L{cairn.pairing.code_store.ICodeStore}, shared by the nodes of a
deployment.
"""

import os

from twisted.internet import defer

from cairn.pairing import proofs
from cairn.pairing.code_store import ALREADY_USED, PIN_NAME, Code, LocalCodes, link_name, pin_generation
from cairn.pairing.codes import Link, format_pin, new_pin
from cairn.wire.constants import PairRejectCode


def _merge(mine, theirs):
    """What another node did to the same code: used and failures only grow."""
    mine.used = mine.used or theirs.used
    mine.failures = max(mine.failures, theirs.failures)


class PinBook:
    """
    The one active PIN. A new PIN replaces the previous one, whatever its
    state: only the PIN the operator last saw works.
    """

    def __init__(self, clock, ttl: float, max_failures: int, codes=None):
        self.clock = clock
        self.ttl = ttl
        self.max_failures = max_failures
        self.codes = codes if codes is not None else LocalCodes()
        self.current = None
        self.codes.watch(self._elsewhere)

    def create(self):
        """(display form, expires_at) of a new PIN."""
        canonical = new_pin()
        key = canonical.encode("ascii")
        expires_at = self.clock.seconds() + self.ttl
        self.current = Code(key, expires_at, pin_generation(key))
        self.codes.save(PIN_NAME, self.current)
        return format_pin(canonical), expires_at

    def refusal(self, generation=None):
        """Why the active PIN (of C{generation} if given) cannot be tried, or None."""
        pin = self.current
        if pin is None:
            return PairRejectCode.UNKNOWN_CODE, "no PIN is active"
        if generation is not None and pin.generation != generation:
            return PairRejectCode.EXPIRED, "the PIN was replaced by a newer one"
        return pin.refusal(self.clock.seconds(), self.max_failures)

    def spend(self, generation):
        """Use the PIN of C{generation}: a Deferred of None (it is this exchange's) or the refusal."""
        refusal = self.refusal(generation)
        if refusal is not None:
            return defer.succeed(refusal)
        pin = self.current
        pin.used = True
        return self.codes.spend(PIN_NAME, pin).addCallback(lambda won: None if won else ALREADY_USED)

    def failed(self, generation) -> bool:
        """A wrong answer to the PIN of C{generation}: whether it burned the PIN now."""
        pin = self.current
        if pin is None or pin.generation != generation or pin.used or pin.failures >= self.max_failures:
            return False
        pin.failures += 1
        self.codes.failed(PIN_NAME, pin)
        return pin.failures >= self.max_failures

    def _elsewhere(self, name, code):
        if name != PIN_NAME:
            return
        if code is None:
            self.current = None
        elif self.current is None or self.current.key != code.key:
            code.generation = pin_generation(code.key)
            self.current = code
        else:
            _merge(self.current, code)


class LinkBook:
    """
    Active links by id. Spent and expired links are remembered for one
    more TTL (so a late attempt is told why), then forgotten; at most
    C{max_links} are kept, the oldest dropped first.
    """

    def __init__(self, clock, ttl: float, max_failures: int, max_links: int = 1000, codes=None):
        self.clock = clock
        self.ttl = ttl
        self.max_failures = max_failures
        self.max_links = max_links
        self.codes = codes if codes is not None else LocalCodes()
        self._links = {}
        self.codes.watch(self._elsewhere)

    def create(self, peer_id: str, addresses) -> Link:
        self._prune()
        secret = os.urandom(proofs.LINK_SECRET_SIZE)
        expires_at = int(self.clock.seconds() + self.ttl)
        link_id = proofs.link_id(secret)
        self._links[link_id] = Code(proofs.link_key(secret), expires_at)
        self.codes.save(link_name(link_id), self._links[link_id])
        while len(self._links) > self.max_links:
            del self._links[next(iter(self._links))]
        return Link(peer_id, tuple(addresses), secret, expires_at)

    def get(self, link_id: bytes):
        """The L{Code} filed under C{link_id}, or None."""
        self._prune()
        return self._links.get(link_id)

    def refusal(self, code):
        if code is None:
            return PairRejectCode.UNKNOWN_CODE, "no such link"
        return code.refusal(self.clock.seconds(), self.max_failures)

    def spend(self, link_id, code):
        """Use C{code} (filed under C{link_id}): a Deferred of None (this pairing's) or the refusal."""
        refusal = self.refusal(code)
        if refusal is not None:
            return defer.succeed(refusal)
        code.used = True
        return self.codes.spend(link_name(link_id), code).addCallback(lambda won: None if won else ALREADY_USED)

    def failed(self, link_id, code):
        """A wrong proof for C{code}."""
        code.failures += 1
        self.codes.failed(link_name(link_id), code)

    def _elsewhere(self, name, code):
        if not name.startswith("link."):
            return
        try:
            link_id = bytes.fromhex(name[len("link.") :])
        except ValueError:
            return
        mine = self._links.get(link_id)
        if code is None:
            self._links.pop(link_id, None)
        elif mine is None:
            self._links[link_id] = code
        else:
            _merge(mine, code)

    def _prune(self):
        horizon = self.clock.seconds() - self.ttl
        for key in [k for k, c in self._links.items() if c.expires_at <= horizon]:
            del self._links[key]

    def __len__(self):
        return len(self._links)
