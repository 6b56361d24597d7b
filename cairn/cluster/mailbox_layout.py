"""
Layout 2 of the C{mbox} stream (L{cairn.cluster.mailbox}): the tombstone
that replaces a removed message carries the receipt owed to its sender,
so that a delivery costs one replicated, fsync'd write instead of two
(issue 14's drain). This module holds what the store's mixins share about
it -- the names, reading a receipt off a tombstone, the sender's
"consumed" marker -- and the upgrade of layout-1 data
(L{upgrade_from_1}, run by L{cairn.cluster.connection}).

Subjects of layout 2:

  - C{<p>.mbox.<recipient>.<sender>.<id>}: the message, then its
    tombstone (C{Cairn-Kind: done}, with the message's C{Cairn-Size} and
    the C{Cairn-Message-Writer} that wrote it); a removal's tombstone also
    has the receipt's C{Cairn-Status} and C{Cairn-At}. A sender's
    receipts are the tombstones under C{<p>.mbox.*.<sender>.*} that have a
    status; C{Receipt.rseq} is the tombstone's stream seq, which grows
    with every receipt written (a sender's receipt cursor stays
    meaningful).
  - C{<p>.rdone.<sender>}: which of its receipts the sender has consumed
    (the tombstones stay until the message would have expired: they are
    the dedup record): C{Cairn-Upto: N} (every receipt up to seq N) and,
    in the body, the seqs above N consumed out of order (comma-separated,
    usually none). One per sender, rewritten by a rollup conditional on
    the last one (two nodes dropping for the same sender do not lose each
    other's drops).
"""

import asyncio

from cairn.cluster import direct as D
from cairn.cluster.common import DONE, KIND, SIZE, is_message

#: The consumed marker's header: every receipt of the sender up to this seq is consumed.
UPTO = "Cairn-Upto"
#: Layout-1 receipts converted at once by L{upgrade_from_1}.
UPGRADE_AT_ONCE = 64


def is_receipt(held):
    """Whether C{held} (an item of C{mbox.*}) is a tombstone carrying a receipt."""
    return held.headers.get(KIND) is not None and held.headers.get(D.STATUS) is not None


def receipt_headers(status, at, expires, size):
    """The headers a tombstone carries its receipt in (without the rollup and writer ones)."""
    return {KIND: DONE, D.STATUS: str(int(status)), D.AT: repr(float(at)), D.EXPIRES: expires, SIZE: str(size)}


def receipt_subject(jet, sender):
    """The subject filter of C{sender}'s tombstones (its receipts among them)."""
    return jet.subject("mbox", "*", sender, "*")


def marker_subject(jet, sender):
    return jet.subject("rdone", sender)


def parse_marker(held):
    """C{(upto, extras, seq)} of a consumed marker, or C{(0, frozenset(), 0)} for none."""
    if held is None:
        return 0, frozenset(), 0
    body = (held.data or b"").decode("ascii")
    extras = frozenset(int(s) for s in body.split(",") if s)
    return int(held.headers.get(UPTO) or 0), extras, held.seq


def marker_body(extras):
    return ",".join(str(s) for s in sorted(extras)).encode("ascii")


async def upgrade_from_1(jet, nc):
    """
    Convert the layout-1 receipts (C{<p>.rcpt.<sender>.<message seq>}) of
    the C{mbox} stream to layout 2: each becomes the tombstone of its
    message's subject (a rollup conditional on that subject's last item,
    as read from the leader), then the old receipt is deleted.

    Crash-safe and idempotent: a receipt is written in its new form before
    its old form goes, and a subject whose last item is already a receipt
    tombstone is not written again (only the old receipt is deleted), so
    an upgrade killed half way and run again loses no receipt and writes
    none twice. A message whose layout-1 receipt was written but whose
    tombstone was not (a crash in between) is replaced by the receipt's
    tombstone: it was acknowledged. Its receipt gets a new rseq (the
    tombstone's seq): a sender that had it already sees it again, as the
    protocol allows (duplicates by (id, status)).
    """
    from nats.js.errors import NotFoundError

    js = jet.js_writes
    stream = jet.stream("mbox")
    try:
        await js.stream_info(stream)
    except NotFoundError:
        return 0
    return await convert_receipts(jet, nc)


async def convert_receipts(jet, nc):
    """
    Convert every layout-1 receipt in the C{mbox} stream (L{upgrade_from_1});
    how many were. Also run by each store's start: a layout-1 node that was
    still running after the upgrade (the version is checked at start only)
    wrote receipts that layout-2 readers would not see.
    """
    js, stream = jet.js_writes, jet.stream("mbox")
    old = await D.direct_all(nc, stream, jet.subject("rcpt", ">"))
    converted = 0
    for i in range(0, len(old), UPGRADE_AT_ONCE):
        chunk = old[i : i + UPGRADE_AT_ONCE]
        converted += sum(await asyncio.gather(*(_convert(jet, nc, js, stream, receipt) for receipt in chunk)))
    return converted


async def _convert(jet, nc, js, stream, receipt):
    h = receipt.headers
    sender = receipt.subject.split(".")[-2]
    subject = jet.subject("mbox", h[D.RECIPIENT], sender, h[D.ID])
    for _ in range(10):
        last = await D.leader_last(nc, js, stream, subject)
        if last is not None and is_receipt(last):
            break  # converted by an earlier (interrupted) or concurrent upgrade
        if last is not None and is_message(last) and str(last.seq) != receipt.subject.split(".")[-1]:
            # Another message under the same id (only possible once the id is
            # too old to be forwarded again): it is not replaced; the old
            # receipt stays where it is, read by no one, until it expires.
            return False
        expires = float(h[D.EXPIRES])
        if last is not None:
            expires = max(expires, float(last.headers.get(D.EXPIRES) or 0))
        headers = receipt_headers(int(h[D.STATUS]), float(h[D.AT]), repr(expires), int(h.get(SIZE) or 0))
        headers[D.EXPECT_LAST] = str(last.seq if last is not None else 0)
        if last is not None:
            headers["Nats-Rollup"] = "sub"
        try:
            await js.publish(subject, b"", headers=headers, stream=stream)
            break
        except Exception as e:
            if not D.is_wrong_last(e):
                raise
    else:
        raise RuntimeError(f"upgrading receipt {receipt.seq}: its message's subject keeps changing")
    await D.delete(js, stream, receipt.seq)
    return True
