"""
L{cairn.wire.cbor.dumps_deliveries} and L{cairn.wire.cbor.dumps_receipts}:
a drain's bodies written from the node's rows are exactly the canonical
encoding of the same maps (issue 19).
"""

import math

import cbor2
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from cairn.wire import cbor
from tests.test_cbor import FAST

PEER = "12D3KooW" + "x" * 44
#: Floats canonical mode writes shorter than a double (half, single, NaN, infinities) and some it does not.
FLOATS = [
    0.0,
    -0.0,
    1.5,
    65504.0,
    3.4028234663852886e38,
    2.0**-149,
    math.inf,
    -math.inf,
    math.nan,
    1765000000.123456,
    1765000064.0,
    0.1,
    1e300,
    -1e300,
    1e-300,
    3.5e38,
    2.0**-150,
]


def canonical_deliveries(entries):
    """The general encoder's bytes for C{(id, seq, from, payload, stored_at)} entries."""
    keys = ("id", "seq", "from", "payload", "stored_at")
    return cbor2.dumps({"messages": [dict(zip(keys, entry)) for entry in entries]}, canonical=True)


def canonical_receipts(entries):
    """The general encoder's bytes for C{(at, id, to, rseq, status)} entries."""
    keys = ("at", "id", "to", "rseq", "status")
    return cbor2.dumps({"receipts": [dict(zip(keys, entry)) for entry in entries]}, canonical=True)


class RowsTests(unittest.TestCase):
    def check(self, deliveries, receipts):
        self.assertEqual(cbor.dumps_deliveries(iter(deliveries)), canonical_deliveries(deliveries))
        self.assertEqual(cbor.dumps_receipts(iter(receipts)), canonical_receipts(receipts))

    def test_typical_bodies(self):
        """A drain's bodies (1 KiB payloads, wall-clock times) and empty ones: the canonical bytes."""
        deliveries = [(bytes(16), seq, PEER, b"p" * 1085, 1765000000.123 + seq) for seq in range(1, 196)]
        receipts = [(1765000000.5, bytes(16), PEER, rseq, 1) for rseq in range(1, 257)]
        self.check(deliveries, receipts)
        self.check([], [])

    def test_float_widths(self):
        """Every float width canonical mode picks, alone and beside a double, as the general encoder writes it."""
        for at in FLOATS:
            self.check([(b"i" * 16, 1, "p", b"x", at)], [(at, b"i" * 16, "p", 1, 1)])
            self.check(
                [(b"i" * 16, 1, "p", b"x", 0.1), (b"j" * 16, 2, "p", b"y", at)],
                [(0.1, b"i" * 16, "p", 1, 1), (at, b"j" * 16, "p", 2, 1)],
            )

    def test_other_numbers_for_times(self):
        """An integer or a huge integer where a time goes: the general encoder's bytes."""
        for at in (0, 1, 2**40, 2**64 - 1):
            self.check([(b"i" * 16, 1, "p", b"x", at)], [(at, b"i" * 16, "p", 1, 1)])

    @FAST
    @given(
        st.lists(
            st.tuples(
                st.binary(max_size=20),
                st.integers(0, 2**64 - 1),
                st.text(max_size=60),
                st.binary(max_size=300),
                st.floats(),
            ),
            max_size=5,
        ),
        st.lists(
            st.tuples(
                st.floats(),
                st.binary(max_size=20),
                st.text(max_size=60),
                st.integers(0, 2**64 - 1),
                st.integers(0, 2**64 - 1),
            ),
            max_size=5,
        ),
    )
    def test_any_entries(self, deliveries, receipts):
        """Random entries of the layouts' kinds (any float, NaN too): the canonical bytes."""
        self.check(deliveries, receipts)
