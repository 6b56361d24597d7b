"""
The pairing codes' bucket (L{cairn.cluster.pairing_codes.KVCodes}) as a
node's books see it: what its watch brings applies in KV revision order,
this node's own writes included, so a value never replaces a newer one.
"""

import os

from twisted.internet import defer, task
from twisted.trial import unittest

from cairn.cluster.pairing_codes import KVCodes
from cairn.pairing.books import PinBook
from cairn.pairing.code_store import Code, link_name
from tests import _jetstream
from tests._harness import Conditions


class RevisionOrderTests(unittest.TestCase):
    @defer.inlineCallbacks
    def setUp(self):
        _, self.jet = yield _jetstream.single(self)
        self.codes, self.other = KVCodes(self.jet, ttl=600), KVCodes(self.jet, ttl=600)
        for codes in (self.codes, self.other):
            yield codes.start()
            self.addCleanup(codes.stop)
        self.book = PinBook(task.Clock(), ttl=300, max_failures=3, codes=self.codes)
        self.conditions, self.told = Conditions(), []

        def told(name, code):  # after the book's own callback: what it holds then
            self.told.append((name, self.book.current.key if self.book.current else None))
            self.conditions.changed()

        self.codes.watch(told)

    @defer.inlineCallbacks
    def until_watched(self):
        """Everything written so far has come through this node's watch: a link written afterwards has."""
        marker = link_name(os.urandom(16))
        yield self.other.save(marker, Code(b"k" * 32, 1e12))
        yield self.conditions.until(lambda: any(name == marker for name, _ in self.told))

    @defer.inlineCallbacks
    def test_second_pin_made_before_the_first_comes_back(self):
        """A second PIN made before the first one's write returns through the watch is not replaced by the first."""
        thread, made = self.jet.thread, []
        to_reactor = thread.to_reactor

        def second_first(function, *args):  # on the NATS loop: a PIN is made just before the watch's entry lands
            entries = args[0] if args and isinstance(args[0], list) else args
            if not made and any(getattr(entry, "key", None) == "pin" for entry in entries):
                made.append(True)
                to_reactor(self.book.create)
                to_reactor(self.conditions.changed)
            to_reactor(function, *args)

        self.patch(thread, "to_reactor", second_first)
        self.book.create()
        first = self.book.current.key
        yield self.conditions.until(lambda: self.book.current.key != first)
        second = self.book.current.key
        yield self.codes.flushed()
        yield self.until_watched()
        self.assertNotIn(first, [key for name, key in self.told])
        self.assertEqual(self.book.current.key, second)
        yield self.other.save("pin", Code(b"theirs", 1e12))  # a newer one made elsewhere still applies
        yield self.until_watched()
        self.assertEqual(self.book.current.key, b"theirs")
