"""
Ratchet keys made ahead of the DH steps that use them
(L{cairn.crypto.ratchet.make_spare_keys}), and when the session layer
makes them (L{cairn.session.channels}): after the reactor turn's writes.
"""

import os
from types import SimpleNamespace

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from twisted.trial import unittest

from cairn.crypto import ratchet, ratchet_state
from cairn.crypto.ratchet import SPARE_KEYS, Ratchet, make_spare_keys, spare_keys_wanted
from cairn.crypto.ratchet_seed import derive_seed
from cairn.session import channels
from cairn.session.channels import Channels
from cairn.wire.cbor import loads_data
from tests.test_ratchet import step_at_once

AD = b"spare-keys ad"


def _pub(private: bytes) -> bytes:
    """The public key of a spare entry's private bytes, computed independently (cryptography)."""
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


class _Isolated(unittest.TestCase):
    def setUp(self):
        # Each test starts with no spare key and no pending top-up, and
        # takes every own-key step at the first send after a new peer key.
        self.patch(ratchet, "_spare", [])
        self.patch(channels, "_top_up", [None, None])
        step_at_once(self)


class SpareKeyTests(_Isolated):
    def _pair(self):
        seed = derive_seed(os.urandom(32), os.urandom(32), os.urandom(32))
        initiator, first = Ratchet.start_initiator(seed, b"", AD)
        responder, _ = Ratchet.start_responder(seed, first, AD)
        return initiator, responder

    def test_dh_step_takes_a_spare_key(self):
        """An own-key step uses a key made ahead by make_spare_keys, once, instead of generating one."""
        initiator, responder = self._pair()
        make_spare_keys()
        self.assertEqual(len(ratchet._spare), SPARE_KEYS)
        expected = _pub(ratchet._spare[-1][0])
        self.assertEqual(initiator.decrypt(responder.encrypt(b"r", AD), AD), b"r")  # a step owed
        self.assertEqual(len(ratchet._spare), SPARE_KEYS)
        message = initiator.encrypt(b"i", AD)  # taken
        self.assertEqual(len(ratchet._spare), SPARE_KEYS - 1)
        self.assertEqual(message["pub"], expected)
        self.assertEqual(responder.decrypt(message, AD), b"i")
        # The next step takes another key: none is handed out twice.
        self.assertEqual(initiator.decrypt(responder.encrypt(b"r2", AD), AD), b"r2")
        self.assertNotEqual(initiator.encrypt(b"i2", AD)["pub"], expected)

    def test_public_key_made_ahead_too(self):
        """The key a DH step takes comes with its public bytes: the answer's encrypt does not compute them."""
        initiator, responder = self._pair()
        make_spare_keys()
        expected = _pub(ratchet._spare[-1][0])
        self.assertEqual(initiator.decrypt(responder.encrypt(b"r", AD), AD), b"r")  # a step owed
        self.patch(ratchet_state, "crypto_scalarmult_base", None)  # never called
        initiator.encrypt(b"i", AD)
        self.assertEqual(initiator._state.own_pub, expected)

    def test_bounded(self):
        """At most SPARE_KEYS keys are kept, however often a top-up is asked for."""
        self.assertTrue(spare_keys_wanted())
        make_spare_keys()
        make_spare_keys()
        self.assertEqual(len(ratchet._spare), SPARE_KEYS)
        self.assertFalse(spare_keys_wanted())

    def test_forgotten_in_a_forked_child(self):
        """A process forked after keys were made ahead starts with none (the parent keeps its own)."""
        make_spare_keys()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report and leave at once
            try:
                os.write(write, b"%d" % len(ratchet._spare))
            finally:
                os._exit(0)
        os.close(write)
        self.addCleanup(os.close, read)
        os.waitpid(pid, 0)
        self.assertEqual(os.read(read, 16), b"0")
        self.assertEqual(len(ratchet._spare), SPARE_KEYS)

    def test_pinned_generator_wins(self):
        """With generate_private_key replaced, no spare key is made or used (the vectors pin every key)."""
        make_spare_keys()
        pinned = os.urandom(32)
        self.patch(ratchet, "generate_private_key", lambda: pinned)
        ratchet._spare.pop()
        self.assertFalse(spare_keys_wanted())
        make_spare_keys()
        self.assertEqual(len(ratchet._spare), SPARE_KEYS - 1)
        seed = derive_seed(os.urandom(32), os.urandom(32), os.urandom(32))
        _, first = Ratchet.start_initiator(seed, b"", AD)
        self.assertEqual(first["pub"], _pub(pinned))
        self.assertEqual(len(ratchet._spare), SPARE_KEYS - 1)


class _Session:
    """What L{Channels} uses of a session; sent bodies are kept in C{sent}."""

    def __init__(self, clock, initiator, result):
        self.clock = clock
        self.initiator = initiator
        self.result = result
        self.session_id = b"\x05" * 16
        self.closed = None
        self.sent = []

    def seed_from_okm(self):
        return None

    def send(self, type_code, body):
        self.sent.append((type_code, body))

    def send_payload(self, type_code, payload):
        self.sent.append((type_code, loads_data(payload)))


class _Call:
    def __init__(self, f, args):
        self.f, self.args, self.done = f, args, False

    def active(self):
        return not self.done

    def run(self):
        self.done = True
        self.f(*self.args)


class _Iterations:
    """
    A clock run the way a reactor iteration runs its timed calls
    (C{runUntilCurrent}): the calls due when the iteration starts, not those
    they make (C{task.Clock.advance} runs those too). Between two
    iterations the reactor polls, and sends what was written.
    """

    def __init__(self):
        self.calls = []

    def callLater(self, delay, f, *args):
        call = _Call(f, args)
        self.calls.append(call)
        return call

    def getDelayedCalls(self):
        return list(self.calls)

    def iterate(self):
        due, self.calls = self.calls, []
        for call in due:
            call.run()


class TopUpTests(_Isolated):
    def setUp(self):
        super().setUp()
        self.clock = _Iterations()
        result = SimpleNamespace(handshake_hash=os.urandom(32), key_i2r=os.urandom(32), key_r2i=os.urandom(32))
        self.a = Channels(_Session(self.clock, True, result))
        self.b = Channels(_Session(self.clock, False, result))
        self.a.open("x")
        (_, start), (_, init) = self.a.session.sent
        self.b.data_received(0, start["dr"])
        self.b.init_received(init["channel"], init["name"])
        self.a.session.sent.clear()
        # Both starts asked for a top-up (one pending call for the clock).
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.iterate()
        self.clock.iterate()
        self.assertEqual(len(ratchet._spare), SPARE_KEYS)

    def _answer(self):
        """b sends on the channel; a receives it (an own-key step owed on a's side)."""
        self.b.send(2, b"answer", None)
        ((_, parts),) = self.b.session.sent
        self.b.session.sent.clear()
        return self.a.parts_received(*parts)

    def _ask(self):
        """a sends on the channel (taking a step owed); b receives it."""
        self.a.send(2, b"question", None)
        ((_, parts),) = self.a.session.sent
        self.a.session.sent.clear()
        return self.b.parts_received(*parts)

    def test_top_up_after_the_writes(self):
        """
        An own-key step that used a spare key asks for a new one in two
        reactor hops (the first runs before the poll that sends this turn's
        writes), not at once.
        """
        channel, plain = self._answer()
        self.assertEqual(plain, b"answer")
        self.assertEqual(len(ratchet._spare), SPARE_KEYS)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self._ask()
        self.assertEqual(len(ratchet._spare), SPARE_KEYS - 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.iterate()
        self.assertEqual(len(ratchet._spare), SPARE_KEYS - 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.iterate()
        self.assertEqual(len(ratchet._spare), SPARE_KEYS)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_same_chain_asks_nothing(self):
        """Messages that take no own-key step (one direction) schedule nothing."""
        self._answer()
        self._ask()
        self.clock.iterate()
        self.clock.iterate()
        for _ in range(3):
            self._ask()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_one_pending_top_up(self):
        """Several own-key steps in one turn leave one pending top-up."""
        self._answer()
        self._ask()  # a's step
        self._answer()  # b's step
        self.assertEqual(len(ratchet._spare), SPARE_KEYS - 2)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.iterate()
        self.clock.iterate()
        self.assertEqual(len(ratchet._spare), SPARE_KEYS)
