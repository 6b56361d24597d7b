"""
The mailbox's seam: L{IMailboxStore} and the values that cross it.

A store holds messages per recipient in server-sequence order, the ids
seen per sender (dedup, kept until the message would have expired), the
receipts owed to senders, and the operator's per-peer limit overrides.
Every mutation enforces the limits inside the same transaction that
makes it durable; the Deferreds fire once the change is durable.

The depth figures (L{IMailboxStore.depths}, L{IMailboxStore.total_bytes})
and the overrides (L{IMailboxStore.limits}) are answered synchronously
from a cache, so that metrics and limit reports never wait for the disk.
The cache is loaded by C{start()} and kept current by this store's own
writes: exact for a store that is its data's only writer (SQLite,
memory), local to this node for one that is not (JetStream, see
docs/scaling.md). A store that shares its data tells its service about
writes made elsewhere through L{IMailboxStore.watch}.
"""

from typing import NamedTuple

import attr
from zope.interface import Attribute, Interface

#: (component, schema package) for L{cairn.db.Database}.
MAILBOX_SCHEMA = ("mailbox", "cairn.mailbox.schema")


@attr.s(frozen=True, auto_attribs=True)
class Limits:
    """The global limits (C{CAIRN_FORWARD_MAX_PER_PEER}, C{..._MAX_TOTAL}, C{..._MAX_AGE})."""

    max_per_peer: int = 10_000
    max_total: int = 10**9
    max_age: float = 7 * 86400.0


@attr.s(frozen=True, auto_attribs=True)
class PeerLimits:
    """An operator override for one recipient; C{None} means the global default (bytes: no own cap)."""

    max_messages: int = None
    max_bytes: int = None

    def to_json(self):
        return {"max_messages": self.max_messages, "max_bytes": self.max_bytes}


@attr.s(frozen=True, auto_attribs=True)
class Incoming:
    """A ForwardRequest that passed the protocol checks, to be stored."""

    sender: str
    recipient: str
    message_id: bytes
    payload: bytes


# Stored and Receipt are named tuples, not attrs classes: a store makes one
# per message a drain reads (on its database threads, holding the GIL), and
# a named tuple is made from a row as it comes (C{_make}) for a quarter of
# the cost (0.2 against 0.9 us; issue 19). Immutable and compared by value
# as before.


class Stored(NamedTuple):
    """A message held for its recipient; C{seq} is the server sequence."""

    seq: int
    recipient: str
    sender: str
    message_id: bytes
    stored_at: float
    expires_at: float
    payload: bytes

    def __repr__(self):  # the payload is left out, as before
        return (
            f"Stored(seq={self.seq!r}, recipient={self.recipient!r}, sender={self.sender!r},"
            f" message_id={self.message_id!r}, stored_at={self.stored_at!r}, expires_at={self.expires_at!r})"
        )


class Receipt(NamedTuple):
    """A receipt owed to C{sender} about its message C{message_id} to C{recipient}."""

    rseq: int
    sender: str
    recipient: str
    message_id: bytes
    status: int
    at: float


@attr.s(frozen=True, auto_attribs=True)
class Depth:
    """What one mailbox holds: message count, payload bytes, oldest C{stored_at} (None when empty)."""

    messages: int = 0
    bytes: int = 0
    oldest: float = None


class StoreFull(Exception):
    """Raised by a store that cannot write (e.g. the disk is full); new requests get STORAGE_ERROR."""


class PartlyStored(StoreFull):
    """
    An C{enqueue} that failed after storing some of its messages (a store
    whose writes are not one transaction: JetStream's publishes, at its
    storage limit). C{results} is the call's list with C{(STORED, seq)}
    for each message held and None for the others. The senders get
    STORAGE_ERROR for all (a retry of a held one is DUPLICATE); what is
    held counts in the depths and is delivered like any other message.
    """

    def __init__(self, why, results):
        super().__init__(why)
        self.results = results


class PartlyRemoved(StoreFull):
    """
    A removal (C{acknowledge}, C{expire}, C{purge}) that failed after
    removing some of its messages (JetStream's tombstones, at its storage
    limit). What it removed is out of the depths all the same; C{receipts}
    are theirs, owed to their senders as a success's are. The service
    tries the call again as after any L{StoreFull}, for the rest.
    """

    def __init__(self, why, receipts):
        super().__init__(why)
        self.receipts = receipts


class IMailboxStore(Interface):
    """Durable storage of the mailbox. Every method but the cache reads returns a Deferred."""

    limits = Attribute("{peer_id: PeerLimits} of the overrides (a cache, current after start()).")

    def start():
        """Load the caches; fires once L{depths} and L{limits} are accurate."""

    def flushed():
        """A Deferred firing once every mutation submitted so far is durable (or has failed)."""

    def watch(callback):
        """
        Call C{callback(recipient)} (on the reactor thread) whenever a
        message for C{recipient} is stored by another writer of the same
        data (another node). A store that is its data's only writer never
        calls it.
        """

    def enqueue(items, now, limits):
        """
        Store each L{Incoming} of C{items} unless it is a duplicate or over a limit.

        @param limits: the global L{Limits}; overrides are applied by the store.
        @return: a Deferred firing, once durable, with one
            C{(ForwardStatus, seq or None)} per item, in order.
        """

    def fetch(recipient, after_seq, limit):
        """Up to C{limit} L{Stored} messages for C{recipient} with C{seq > after_seq}, in order."""

    def acknowledge(recipient, seqs, now, receipt_ttl, upto=0):
        """
        Delete C{recipient}'s messages C{seqs} and all of its messages with
        C{seq <= upto} (others' are ignored) and owe their senders DELIVERED
        receipts; fires with the new L{Receipt}s.
        """

    def receipts(sender, after_rseq, limit):
        """Up to C{limit} L{Receipt}s owed to C{sender} with C{rseq > after_rseq}, in order."""

    def drop_receipts(sender, rseqs):
        """Forget receipts C{rseqs} of C{sender} (it has them)."""

    def expire(now, limit, receipt_ttl):
        """
        Remove up to C{limit} messages with C{expires_at <= now} (owing
        EXPIRED receipts), and the dedup ids and receipts past their
        time; fires with C{(new receipts, more)}, C{more} true when the
        limit was reached.
        """

    def purge(peer_id, now, receipt_ttl):
        """
        Remove everything held for C{peer_id} (its messages, owing EVICTED
        receipts to their senders; its dedup ids, receipts and override);
        fires with the new L{Receipt}s.
        """

    def set_limits(peer_id, limits):
        """Persist the override L{PeerLimits} of C{peer_id} (all C{None}: remove it)."""

    def depths():
        """{recipient: L{Depth}} of every non-empty mailbox (cached, synchronous; see the module docstring)."""

    def total_bytes():
        """Payload bytes across all mailboxes (cached, synchronous; see the module docstring)."""
