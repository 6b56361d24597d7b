"""
Own-key steps taken at a send, and deferred (docs/protocol.md section 11.8,
"When an own-key step is taken"; L{cairn.crypto.ratchet_state}): the
deferred vector of section 11.9, the reference policy (64 messages or one
second of the sending chain), the rule that no step is taken unless one is
owed, the persisted flag, and a deferring end talking to one that steps at
every change of direction (python-doubleratchet).
"""

import json
from collections.abc import Iterator

from twisted.trial import unittest

from cairn.crypto import ratchet, ratchet_seed, ratchet_state
from cairn.crypto.ratchet import Ratchet, RatchetError
from cairn.crypto.ratchet_seed import derive_seed
from tests.test_ratchet import (
    AD,
    D_CHANNELS,
    D_PLAINTEXTS,
    V_A1,
    V_A2,
    V_B1,
    V_B2,
    V_CHANNELS,
    V_HANDSHAKE_HASH,
    V_KEY_I2R,
    V_KEY_R2I,
    V_PLAINTEXTS,
    V_SESSION_ID,
    _LibraryEnd,
    _pair,
    _seed,
    _show,
    documented_vector,
    independent_vector,
)


class _Frozen(unittest.TestCase):
    """The ratchet's clock pinned at C{self.now} (moved by the tests)."""

    def setUp(self):
        self.now = 1000.0
        self.patch(ratchet_state, "clock", lambda: self.now)


class DeferredVectorTests(_Frozen):
    def test_independent_matches_docs(self):
        """The second block of section 11.9, computed without cairn, equals the documented one."""
        deferred: dict[str, str] = {}
        independent_vector(deferred)
        self.assertEqual(deferred, documented_vector("ratchet-deferred-vector"))

    def test_module_matches_docs(self):
        """
        With its keys and clock pinned, the reference implementation defers
        the initiator's step past D2, takes it for D3 a second later, and the
        responder's R1 is the first block's.
        """
        keys: Iterator[bytes] = iter([V_A1, V_B1, V_A2, V_B2])
        self.patch(ratchet, "generate_private_key", lambda: next(keys))
        sent_from: list[bytes] = []
        kdf_chain = ratchet_state.kdf_chain
        self.patch(ratchet_state, "kdf_chain", lambda ck: (sent_from.append(ck), kdf_chain(ck))[1])
        seed = derive_seed(V_HANDSHAKE_HASH, V_KEY_I2R, V_KEY_R2I)
        ad = {label: ratchet_seed.session_ad(V_SESSION_ID, channel)
              for label, channel in {**V_CHANNELS, **D_CHANNELS}.items()}
        produced: dict[str, str] = {}

        def record(label, msg, into):
            for field in ("pub", "pn", "n", "ct"):
                into["%s.%s" % (label, field)] = _show(msg[field])
            into["%s.chain_key" % label] = _show(sent_from[-1])
            return msg

        initiator, i0 = Ratchet.start_initiator(seed, V_PLAINTEXTS["I0"], ad["I0"])
        i1 = initiator.encrypt(V_PLAINTEXTS["I1"], ad["I1"])
        responder, _ = Ratchet.start_responder(seed, i0, ad["I0"])
        responder.decrypt(i1, ad["I1"])
        initiator.decrypt(responder.encrypt(V_PLAINTEXTS["R0"], ad["R0"]), ad["R0"])
        d2 = record("D2", initiator.encrypt(D_PLAINTEXTS["D2"], ad["D2"]), produced)
        self.now += ratchet_state.REKEY_SECONDS
        d3 = record("D3", initiator.encrypt(D_PLAINTEXTS["D3"], ad["D3"]), produced)
        self.assertEqual(responder.decrypt(d2, ad["D2"]), D_PLAINTEXTS["D2"])
        self.assertEqual(responder.decrypt(d3, ad["D3"]), D_PLAINTEXTS["D3"])
        r1: dict[str, str] = {}
        record("R1", responder.encrypt(V_PLAINTEXTS["R1"], ad["R1"]), r1)

        documented = documented_vector("ratchet-deferred-vector")
        self.assertEqual(len(produced), 10)
        for name, value in produced.items():
            self.assertEqual((name, value), (name, documented[name]))
        first = documented_vector()
        for name, value in r1.items():
            self.assertEqual((name, value), (name, first[name]))


def _ping_pong(case, a, b, rounds, tick=None):
    """C{rounds} round trips (a's message, b's answer); each end's messages as (pub, pn, n)."""
    sent = {a: [], b: []}
    for r in range(rounds):
        for sender, receiver in ((a, b), (b, a)):
            msg = sender.encrypt(b"%d" % r, AD)
            sent[sender].append((msg["pub"], msg["pn"], msg["n"]))
            case.assertEqual(receiver.decrypt(msg, AD), b"%d" % r)
            if tick is not None:
                tick()
    return sent[a], sent[b]


def _steps(sent):
    """The messages of C{sent} that opened a new sending chain (a new pub)."""
    return [m for prev, m in zip(sent, sent[1:]) if m[0] != prev[0]]


class PolicyTests(_Frozen):
    def test_fast_conversation_steps_once_per_64_messages(self):
        """
        Back to back (the clock still), each end steps once its chain has
        carried 64 messages, not at every change of direction.
        """
        initiator, responder = _pair()
        for sent in _ping_pong(self, initiator, responder, 300):
            steps = _steps(sent)
            self.assertGreaterEqual(len(steps), 3)
            for _, pn, n in steps:
                self.assertEqual((pn, n), (ratchet_state.REKEY_MESSAGES, 0))

    def test_chain_a_second_old_steps(self):
        """A step owed is taken at the first send once the chain is REKEY_SECONDS old, and then not again."""
        initiator, responder = _pair()
        a, b = _ping_pong(self, initiator, responder, 3)
        self.assertEqual(_steps(a) + _steps(b), [])
        self.now += ratchet_state.REKEY_SECONDS
        x = initiator.encrypt(b"x", AD)
        self.assertNotEqual(x["pub"], a[-1][0])
        self.assertEqual((x["pn"], x["n"]), (1 + 3, 0))  # the ratchet start and 3
        self.assertEqual(responder.decrypt(x, AD), b"x")
        y = responder.encrypt(b"y", AD)
        self.assertNotEqual(y["pub"], b[-1][0])
        self.assertEqual((y["pn"], y["n"]), (3, 0))
        self.assertEqual(initiator.decrypt(y, AD), b"y")
        w = initiator.encrypt(b"w", AD)  # owed again, but the chain is new
        self.assertEqual((w["pub"], w["n"]), (x["pub"], 1))
        self.assertEqual(responder.decrypt(w, AD), b"w")

    def test_slow_conversation_steps_every_turn(self):
        """A message a second or slower: every change of direction steps, as Signal's algorithm does."""

        def tick():
            self.now += ratchet_state.REKEY_SECONDS

        initiator, responder = _pair()
        a, b = _ping_pong(self, initiator, responder, 6, tick)
        self.assertEqual(len({m[0] for m in a}), 6)
        self.assertEqual(len({m[0] for m in b}), 6)

    def test_no_step_unless_owed(self):
        """An end that receives no new peer key never steps, however long and old its chain."""
        initiator, responder = _pair()
        for i in range(200):
            self.now += ratchet_state.REKEY_SECONDS
            msg = initiator.encrypt(b"%d" % i, AD)
            self.assertEqual(responder.decrypt(msg, AD), b"%d" % i)
            self.assertEqual(msg["n"], i + 1)

    def test_owed_once_per_new_peer_key(self):
        """An end takes one step per new peer key, however many of its messages it receives."""
        initiator, responder = _pair()
        for i in range(5):
            initiator.decrypt(responder.encrypt(b"r%d" % i, AD), AD)
        self.now += ratchet_state.REKEY_SECONDS
        pubs = set()
        for i in range(5):
            msg = initiator.encrypt(b"i%d" % i, AD)
            pubs.add(msg["pub"])
            responder.decrypt(msg, AD)
        self.assertEqual(len(pubs), 1)


class PersistedTests(_Frozen):
    def test_owed_step_survives_and_is_due(self):
        """A state saved with a step owed takes it at its next send once restored (its chain counts as old)."""
        initiator, responder = _pair()
        initiator.decrypt(responder.encrypt(b"r", AD), AD)
        text = initiator.to_json()
        self.assertIs(json.loads(text)["step_owed"], True)
        kept = initiator.encrypt(b"kept", AD)  # the original: not due yet
        restored = Ratchet.from_json(text)
        stepped = restored.encrypt(b"stepped", AD)
        self.assertNotEqual(stepped["pub"], kept["pub"])
        self.assertEqual(stepped["pn"], 1)
        self.assertEqual(responder.decrypt(stepped, AD), b"stepped")

    def test_state_without_the_flag(self):
        """A state saved before own-key steps were deferred (no flag) owes nothing."""
        initiator, responder = _pair()
        outer = json.loads(initiator.to_json())
        del outer["step_owed"]
        restored = Ratchet.from_json(json.dumps(outer))
        self.assertEqual(restored.encrypt(b"x", AD)["pub"], initiator.encrypt(b"y", AD)["pub"])

    def test_bad_flag_refused(self):
        outer = json.loads(_pair()[0].to_json())
        for bad in ("yes", 1, None):
            outer["step_owed"] = bad
            self.assertRaises(RatchetError, Ratchet.from_json, json.dumps(outer))


class StepAtOnceInteropTests(_Frozen):
    """A deferring end and python-doubleratchet (which steps at every receipt), both ways."""

    def _converse(self, a, b):
        _ping_pong(self, a, b, 150)
        msgs = [a.encrypt(b"late %d" % i, AD) for i in range(3)]
        self.assertEqual(b.decrypt(msgs[2], AD), b"late 2")
        self.now += ratchet_state.REKEY_SECONDS
        _ping_pong(self, a, b, 3)
        self.assertEqual(b.decrypt(msgs[0], AD), b"late 0")
        self.assertEqual(b.decrypt(msgs[1], AD), b"late 1")

    def _both_ways(self, start_initiator, start_responder):
        seed = _seed()
        a, first = start_initiator(seed, b"hello", AD)
        b, plain = start_responder(seed, first, AD)
        self.assertEqual(plain, b"hello")
        self._converse(a, b)
        self._converse(b, a)

    def test_cairn_initiator(self):
        self._both_ways(Ratchet.start_initiator, _LibraryEnd.responder)

    def test_cairn_responder(self):
        self._both_ways(_LibraryEnd.initiator, Ratchet.start_responder)
