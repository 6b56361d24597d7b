"""
A drain's common ForwardDeliver and ForwardReceipt entries (issue 19) are
read with C{struct} layouts (L{cairn.wire.batch_layouts}) to exactly what
the general decode gives; any other entry is read head by head as before,
and a body cut or altered anywhere is declined or read as the general
decode reads it.
"""

import math

from twisted.trial import unittest

from cairn.wire import batch_layouts, cbor
from tests.test_cbor import _UINTS, _strict


def same(value):
    """C{value} by kind and exact value, NaN equal to NaN."""
    return repr(_strict(value))


#: A peer id's length (base58 of a sha2-256 multihash).
PEER = "Qm" + "Z" * 44
ID = bytes(range(16))
#: Floats written in half, single and double precision, and the special ones.
FLOATS = [0.0, -0.0, 1.5, 65504.0, 3.4028234663852886e38, 1.100000023841858, 1765000000.123456, 1e-300, math.inf]
#: Payload sizes in one- and two-byte length heads, at their edges.
PAYLOAD_SIZES = [24, 255, 256, 1100, 65535]
SMALL_UINTS = [value for value in _UINTS if value < 2**32]


def deliveries(entries):
    """A ForwardDeliver body of C{(id, seq, from, payload, stored_at)} entries, as the node writes it."""
    return cbor.dumps_deliveries(entries)


def receipts(entries):
    """A ForwardReceipt body of C{(at, id, to, rseq, status)} entries, as the node writes it."""
    return cbor.dumps_receipts(entries)


def general(data):
    """What the general decode gives for C{data}, or None if it refuses it."""
    try:
        return cbor._loads_general(data)
    except cbor.CBORError:
        return None


class _Agreement:
    def check(self, data):
        """C{data} is read by the fast path to what the general decode gives."""
        fast = cbor.loads_batch(data)
        self.assertIsNotNone(fast)
        self.assertEqual(same(fast), same(general(data)))
        return fast


class CommonEntriesTests(_Agreement, unittest.TestCase):
    """The common entries are read without the head-by-head walk, over every head width."""

    def setUp(self):
        def walked(*args):
            self.fail("walked")

        self.patch(batch_layouts, "_string", walked)  # the walk reads every entry's id with it

    def test_deliver_head_widths(self):
        """Every seq head width, payload length head and float width."""
        for seq in SMALL_UINTS:
            for size in PAYLOAD_SIZES:
                self.check(deliveries([(ID, seq, PEER, b"p" * size, 1765000000.5)]))
        for stored_at in FLOATS:
            self.check(deliveries([(ID, 1, PEER, b"p" * 1100, stored_at)]))
        fast = cbor.loads_batch(deliveries([(ID, 1, PEER, b"p" * 1100, math.nan)]))
        self.assertTrue(math.isnan(fast["messages"][0]["stored_at"]))

    def test_receipt_head_widths(self):
        """Every rseq head width, every status below 24, every float width."""
        for rseq in SMALL_UINTS:
            for status in range(24):
                self.check(receipts([(1765000000.5, ID, PEER, rseq, status)]))
        for at in FLOATS:
            self.check(receipts([(at, ID, PEER, 1, 1)]))

    def test_drain(self):
        """A drain's 256-entry bodies, seqs crossing head widths."""
        rows = [(ID, 250 + n, PEER, bytes([n]) * 1085, 1765000000.123 + n) for n in range(256)]
        self.assertEqual(len(self.check(deliveries(rows))["messages"]), 256)
        rows = [(1765000000.5 + n, ID, PEER, 65400 + n, 1) for n in range(256)]
        self.assertEqual(len(self.check(receipts(rows))["receipts"]), 256)

    def test_longer_heads(self):
        """A seq or rseq in a longer head than needed is read as the general decode reads it."""
        data = deliveries([(ID, 5, PEER, b"p" * 300, 1.5)])
        self.assertEqual(self.check(data.replace(b"cseq\x05", b"cseq\x1a\x00\x00\x00\x05"))["messages"][0]["seq"], 5)
        data = receipts([(1.5, ID, PEER, 5, 1)])
        self.assertEqual(self.check(data.replace(b"rseq\x05", b"rseq\x19\x00\x05"))["receipts"][0]["rseq"], 5)


class OtherEntriesTests(_Agreement, unittest.TestCase):
    """
    Entries outside the common layouts, alone or between common ones, are
    read head by head to what the general decode gives (agreement: these
    pass before and after the layouts).
    """

    def test_deliveries(self):
        common = (ID, 7, PEER, b"p" * 1100, 1765000000.5)
        others = [
            (ID, 8, PEER[:45], b"p" * 1100, 1.5),  # a shorter sender
            (ID, 8, PEER + "Z", b"p" * 1100, 1.5),
            (ID, 8, "p", b"p" * 1100, 1.5),
            (ID, 8, "é" * 23, b"p" * 1100, 1.5),  # 46 bytes, not characters
            (ID, 8, PEER, b"", 1.5),  # payloads in a head without a length byte, or of four
            (ID, 8, PEER, b"p" * 23, 1.5),
            (ID, 8, PEER, b"p" * 65536, 1.5),
            (b"i" * 15, 8, PEER, b"p", 1.5),  # another id size
        ]
        for other in others:
            self.check(deliveries([common, other, common]))

    def test_receipts(self):
        common = (1765000000.5, ID, PEER, 7, 1)
        others = [
            (1.5, ID, PEER, 8, 24),  # a status after its head
            (1.5, ID, PEER, 8, 2**32 - 1),
            (1.5, ID, PEER[:45], 8, 1),
            (1.5, ID, "p", 8, 1),
            (1.5, b"", PEER, 8, 1),
        ]
        for other in others:
            self.check(receipts([common, other, common]))

    def test_beyond_32_bits(self):
        """A seq or rseq of 2**32 or more: the general decode (as before)."""
        for data in (
            deliveries([(ID, 1, PEER, b"p", 1.5), (ID, 2**32, PEER, b"p", 1.5)]),
            receipts([(1.5, ID, PEER, 1, 1), (1.5, ID, PEER, 2**32, 1)]),
        ):
            self.assertIsNone(cbor.loads_batch(data))
            self.assertEqual(cbor.loads(data), general(data))


class AlteredBodiesTests(unittest.TestCase):
    """
    A common body cut short, extended or with any byte altered is declined
    or read as the general decode reads it, and loads() accepts or refuses
    it as the general decode does (agreement: passes before and after).
    """

    BODIES = [
        deliveries([(ID, 23, PEER, b"p" * 300, 1765000000.5), (ID, 300, PEER, b"q" * 30, 1.5)]),
        receipts([(1765000000.5, ID, PEER, 23, 1), (1.5, ID, PEER, 70000, 3)]),
    ]

    def test_cut_or_extended(self):
        for data in self.BODIES:
            for size in range(len(data)):
                self.assertIsNone(cbor.loads_batch(data[:size]), size)
                self.assertRaises(cbor.CBORError, cbor.loads, data[:size])
            self.assertIsNone(cbor.loads_batch(data + b"\x00"))

    def test_any_byte_altered(self):
        for data in self.BODIES:
            for at in range(len(data)):
                for value in {data[at] ^ 0x01, data[at] ^ 0x20, 0x00, 0x18, 0x1B, 0x58, 0x59, 0xFB, 0xFF} - {data[at]}:
                    altered = data[:at] + bytes((value,)) + data[at + 1 :]
                    expected = general(altered)
                    fast = cbor.loads_batch(altered)
                    if fast is not None:
                        self.assertEqual(same(fast), same(expected), (at, value))
                    if expected is None:
                        self.assertRaises(cbor.CBORError, cbor.loads, altered)
                    else:
                        self.assertEqual(same(cbor.loads(altered)), same(expected))
