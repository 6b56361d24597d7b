"""
Property-based tests of every body parser: valid bodies round-trip, and
any other input (mutated bodies, arbitrary CBOR, arbitrary bytes) is
either parsed into a valid value or rejected with the documented error
(L{BodyError}, for every family).
"""

import math

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.signaling import announce
from cairn.wire import cbor
from cairn.wire.constants import MessageType
from tests.fuzz import strategies as fs
from tests.fuzz import targets
from tests.fuzz.targets import BODY_PARSERS, WHOLE_ENVELOPE_TYPES, Unexpected

#: Every key a cairn body schema names.
SCHEMA_KEYS = sorted(
    """
    ack already_paired at channel circuit code confirm credit cursors data dr epoch error expires_at from id
    final key last_received link_id messages method name noise oldest_seq pake password payload peer proof reason
    receipts req rseq seq upto seqs servers spake2 status stored_at target to topic topics ttl username
    """.split()
)


class RegistryTests(unittest.TestCase):
    def test_every_type_has_a_parser(self):
        """Every MessageType has a body parser listed, or is fuzzed as a whole envelope."""
        covered = {p.type for p in BODY_PARSERS} | WHOLE_ENVELOPE_TYPES
        self.assertEqual(set(MessageType) - covered, set())

    def test_every_parser_has_a_valid_strategy(self):
        """Every listed parser has a strategy of valid bodies."""
        self.assertEqual({p.name for p in BODY_PARSERS} - set(fs.VALID), set())

    def test_unexpected_is_caught(self):
        """A parser raising something undocumented is reported as Unexpected."""

        def broken(body):
            return body["missing"]

        parser = targets.BodyParser(0, "broken", broken, lambda r: True)
        self.assertRaises(Unexpected, targets.parse_body, parser, {})

    def test_invalid_result_is_caught(self):
        """A parser accepting a body into an invalid value is reported as Unexpected."""
        parser = targets.BodyParser(0, "lax", lambda body: body, lambda r: False)
        self.assertRaises(Unexpected, targets.parse_body, parser, {})


class ValidBodyTests(unittest.TestCase):
    @fs.FUZZ
    @given(st.data())
    def test_round_trip(self, data):
        """Every parser returns the expected value for a valid body after a CBOR round trip."""
        for parser in BODY_PARSERS:
            body, expected = data.draw(fs.VALID[parser.name], label=parser.name)
            ok, result = targets.parse_body(parser, cbor.loads(cbor.dumps(body)))
            self.assertTrue(ok, f"{parser.name} refused {body!r}: {result}")
            self.assertTrue(same(result, expected), f"{parser.name}: {result!r} != {expected!r}")


def same(a, b) -> bool:
    """
    Equality in which a NaN equals a NaN: bodies may carry floats, NaN
    included (docs/protocol.md §1.2), and a parser passes opaque values on.
    """
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b) and not (isinstance(a, tuple) and isinstance(b, tuple)):
        return a == b
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


class SameTests(unittest.TestCase):
    def test_nan_aware(self):
        """same() treats NaN as equal to NaN, inside maps and lists too, and still tells other values apart."""
        nan = float("nan")
        self.assertTrue(same({"": nan}, cbor.loads(cbor.dumps({"": nan}))))
        self.assertTrue(same((1, [nan, b"x"]), (1, [nan, b"x"])))
        self.assertFalse(same({"": nan}, {"": 1.0}))
        self.assertFalse(same((1, [2]), (1, [3])))
        self.assertFalse(same({"a": 1}, {"b": 1}))


class BadBodyTests(unittest.TestCase):
    @fs.FUZZ
    @given(st.data())
    def test_mutated_bodies(self, data):
        """A valid body with keys replaced, dropped, added or retyped is parsed validly or rejected as documented."""
        # A few parsers per example keeps the run short; CAIRN_FUZZ_EXAMPLES scales it.
        for parser in data.draw(st.lists(st.sampled_from(BODY_PARSERS), min_size=1, max_size=8)):
            body, _ = data.draw(fs.VALID[parser.name], label=parser.name)
            bad = data.draw(fs.mutated(body), label="mutated")
            ok, value = targets.loads(cbor.dumps(bad))
            if ok:
                targets.parse_body(parser, value)

    @fs.FUZZ
    @given(fs.cbor_values)
    def test_arbitrary_cbor(self, value):
        """Any CBOR value is parsed validly or rejected as documented, by every parser."""
        ok, decoded = targets.loads(cbor.dumps(value))
        if ok:
            for parser in BODY_PARSERS:
                targets.parse_body(parser, decoded)

    @fs.FUZZ
    @given(st.dictionaries(st.sampled_from(SCHEMA_KEYS), fs.cbor_values, max_size=8))
    def test_known_keys_arbitrary_values(self, body):
        """Maps of the schemas' own keys holding arbitrary values are parsed validly or rejected as documented."""
        ok, decoded = targets.loads(cbor.dumps(body))
        if ok:
            for parser in BODY_PARSERS:
                targets.parse_body(parser, decoded)

    @fs.FUZZ
    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, data):
        """Arbitrary bytes are refused with CBORError, or parsed validly or rejected as documented."""
        ok, decoded = targets.loads(data)
        if ok:
            for parser in BODY_PARSERS:
                targets.parse_body(parser, decoded)


IDENTITY = Identity.from_seed(b"\x05" * 32)


class AnnounceTests(unittest.TestCase):
    @fs.FUZZ
    @given(
        st.lists(fs.text(256), max_size=16),
        st.lists(fs.b32, max_size=64),
        st.integers(0, announce.FRESHNESS),
        st.integers(0, 2**64 - 1),
    )
    def test_round_trip(self, addresses, rendezvous, ts, seq):
        """A signed PeerAnnounce parses back to its fields."""
        data = announce.encode(IDENTITY, addresses, rendezvous, ts, seq)
        ok, parsed = targets.parse_announce(data)
        if len(data) > announce.MAX_ANNOUNCE_SIZE:
            self.assertFalse(ok)
            return
        self.assertTrue(ok, parsed)
        self.assertEqual(parsed.peer_id, IDENTITY.peer_id)

    @fs.FUZZ
    @given(st.data())
    def test_mutated(self, data):
        """A PeerAnnounce with bytes flipped, cut or appended is verified or refused with AnnounceError."""
        good = bytearray(announce.encode(IDENTITY, ["tcp:host=127.0.0.1:port=1"], [b"\x01" * 32], 0, 1))
        for _ in range(data.draw(st.integers(1, 4))):
            action = data.draw(st.sampled_from(["flip", "cut", "append"]))
            if action == "flip" and good:
                i = data.draw(st.integers(0, len(good) - 1))
                good[i] ^= data.draw(st.integers(1, 255))
            elif action == "cut":
                del good[data.draw(st.integers(0, len(good))) :]
            else:
                good += data.draw(st.binary(max_size=8))
        targets.parse_announce(bytes(good))

    @fs.FUZZ
    @given(fs.cbor_values)
    def test_arbitrary_payload(self, value):
        """A PeerAnnounce envelope carrying arbitrary CBOR is refused with AnnounceError."""
        data = targets.envelope_bytes(MessageType.PEER_ANNOUNCE, cbor.dumps(value))
        ok, _ = targets.parse_announce(data)
        self.assertFalse(ok)
