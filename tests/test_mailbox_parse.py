"""
The batch parsers of a drain's bodies (L{cairn.mailbox.messages.parse_deliveries},
L{parse_receipts}) take an entry of the node's kinds in one test; every
entry, of those kinds or not, must give what the one-entry parser gives
(the same tuple, or the same refusal).
"""

import enum

from twisted.trial import unittest

from cairn.crypto.identity import Identity
from cairn.mailbox import messages
from cairn.mailbox.client import uuid7
from cairn.wire.schema import BodyError, uint_value

PEER = Identity.generate().peer_id


class Seq(enum.IntEnum):
    FIRST = 1


class Blob(bytes):
    pass


def outcome(parse, value):
    try:
        return parse(value)
    except BodyError as e:
        return ("refused", str(e))


def variants(entry):
    """C{entry}, then each key's value swapped for other kinds, or the key missing."""
    others = [
        None,
        True,
        0,
        -1,
        1,
        2**63,
        1.5,
        3.0,
        "",
        "x" * 65,
        PEER,
        b"",
        b"\x01" * 16,
        Blob(b"\x02" * 16),
        Seq.FIRST,
    ]
    yield entry
    for key in entry:
        for other in others:
            yield {**entry, key: other}
        yield {k: v for k, v in entry.items() if k != key}
    yield {**entry, "extra": 1}
    yield [entry]
    yield None


class BatchParseTests(unittest.TestCase):
    def test_deliveries_as_each_entry_alone(self):
        entry = {"id": uuid7(), "from": PEER, "seq": 7, "stored_at": 1.25, "payload": b"sealed"}
        for variant in variants(entry):
            alone = outcome(messages.parse_forward_deliver, variant)
            batch = outcome(messages.parse_deliveries, {"messages": [variant]})
            self.assertEqual(batch, alone if alone[0] == "refused" else [alone], variant)

    def test_receipts_as_each_entry_alone(self):
        entry = {"id": uuid7(), "to": PEER, "rseq": 7, "status": 1, "at": 1.25}
        for variant in variants(entry):
            alone = outcome(messages.parse_forward_receipt, variant)
            batch = outcome(messages.parse_receipts, {"receipts": [variant]})
            self.assertEqual(batch, alone if alone[0] == "refused" else [alone], variant)

    def test_deliveries_in_seq_order(self):
        first = {"id": uuid7(), "from": PEER, "seq": 7, "stored_at": 1.25, "payload": b"sealed"}
        with self.assertRaises(BodyError):
            messages.parse_deliveries({"messages": [first, {**first, "seq": 7}]})


def one_by_one(values):
    """What a ForwardPurge's receipts list gave when each item was checked alone (the reference)."""
    for item in values:
        uint_value(item, "receipts", "ForwardPurge", messages.MAX_POSITIVE, minimum=1)
    return values


class PurgeParseTests(unittest.TestCase):
    def test_receipts_as_each_item_alone(self):
        """A ForwardPurge's rseqs, checked together, give what each item checked alone gives (same list or refusal)."""
        others = [None, True, False, 0, -1, 2**63 - 1, 2**63, 1.0, "1", b"1", [1], Seq.FIRST]
        lists = [[], [1], list(range(1, 257)), [2**63 - 1] * 3]
        lists += [[1, other, 3] for other in others] + [[other] for other in others]
        for values in lists:
            parsed = outcome(lambda body: messages.parse_forward_purge(body)[1], {"receipts": values})
            self.assertEqual(parsed, outcome(one_by_one, values), values)
