"""
The session snapshot (docs/protocol.md §16): restoring the same snapshot
more than once never reuses a (key, nonce) pair, and the file is written
and read without following planted links.
"""

import os

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.internet import task
from twisted.trial import unittest

from cairn.crypto.aead import nonce_for, split_bstr
from cairn.crypto.handshake import HandshakeResult
from cairn.crypto.identity import Identity
from cairn.session import store
from cairn.session.peer import Peer
from cairn.session.resume import RESTORE_JUMP
from cairn.session.session import Session
from cairn.wire import cbor
from cairn.wire.envelope import EnvelopeParser
from tests._harness import SETTINGS


def responder_session(peer, send_seq=7):
    """A node-side session keyed by fixed handshake keys (no transport)."""
    result = HandshakeResult(
        remote_identity=Identity.generate().public_key,
        handshake_hash=b"\x01" * 32,
        key_i2r=b"\x02" * 32,
        key_r2i=b"\x03" * 32,
        initiator=False,
    )
    return Session(peer, b"\x04" * 16, result, 1, send_seq=send_seq, recv_seq=3)


class NonceLedger:
    """Every (key, nonce) sealed, with the plaintext it sealed."""

    def __init__(self):
        self.used = {}
        self.reused = []

    def record(self, key: bytes, data: bytes):
        parser = EnvelopeParser(2**32 - 1)
        for envelope in parser.feed(data):
            sealed = split_bstr(envelope.payload)
            plain = ChaCha20Poly1305(key).decrypt(nonce_for(envelope.seq), sealed, envelope.header())
            pair = (key, nonce_for(envelope.seq))
            if pair in self.used and self.used[pair] != plain:
                self.reused.append(envelope.seq)
            self.used.setdefault(pair, plain)


class RestoreTwiceTests(unittest.TestCase):
    def peer(self):
        return Peer(Identity.generate(), task.Clock(), **SETTINGS)

    def test_same_snapshot_restored_twice_never_reuses_a_nonce(self):
        """Two nodes restoring one snapshot each send new messages: no (key, nonce) seals two plaintexts."""
        ledger = NonceLedger()
        original = responder_session(self.peer())
        for i in range(3):
            original.send(0xF000, b"before %d" % i)
        snapshot = cbor.loads(cbor.dumps(original.snapshot()))
        for _, data in original._unacked:
            ledger.record(original.cipher.send_key, data)
        for restore in range(2):
            peer = self.peer()
            self.assertEqual(peer.restore_sessions([snapshot]), 1)
            restored = peer.sessions[snapshot["session_id"]]
            self.assertGreaterEqual(restored.send_seq, snapshot["send_seq"] + RESTORE_JUMP)
            for i in range(50):
                restored.send(0xF000, b"restore %d message %d" % (restore, i))
            for _, data in restored._unacked:  # the resent ones are the original bytes
                ledger.record(restored.cipher.send_key, data)
        self.assertEqual(ledger.reused, [])
        self.assertEqual(len(ledger.used), 3 + 2 * 50)

    def test_counter_too_high_is_not_restored(self):
        """A session whose counter cannot jump is left out of the restore, with a warning."""
        snapshot = responder_session(self.peer(), send_seq=2**63 - 5).snapshot()
        peer = self.peer()
        self.assertEqual(peer.restore_sessions([snapshot]), 0)
        self.assertEqual(peer.sessions, {})


class SnapshotFileTests(unittest.TestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.path = os.path.join(self.directory, store.FILE_NAME)

    def test_planted_temporary_link_is_not_followed(self):
        """A symlink planted at the temporary name is replaced, never written through."""
        target = os.path.join(self.directory, "elsewhere")
        with open(target, "wb") as f:
            f.write(b"untouched")
        os.symlink(target, self.path + ".tmp")
        store.save(self.directory, [{"session_id": b"x"}])
        with open(target, "rb") as f:
            self.assertEqual(f.read(), b"untouched")
        self.assertFalse(os.path.islink(self.path))
        self.assertEqual(store.load_once(self.directory), [{"session_id": b"x"}])
        self.assertFalse(os.path.exists(self.path))

    def test_planted_snapshot_link_is_not_read(self):
        """A symlink at the snapshot's name is removed, not read."""
        target = os.path.join(self.directory, "elsewhere")
        with open(target, "wb") as f:
            f.write(cbor.dumps({"version": 1, "sessions": [{"session_id": b"y"}]}))
        os.symlink(target, self.path)
        self.assertEqual(store.load_once(self.directory), [])
        self.assertFalse(os.path.lexists(self.path))
        self.assertTrue(os.path.exists(target))

    def test_full_disk_leaves_nothing(self):
        """A write that fails (ENOSPC) raises and leaves no partial file of session keys."""
        import errno

        def full(fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(store.os, "write", full)
        with self.assertRaises(OSError):
            store.save(self.directory, [{"session_id": b"x"}])
        self.assertEqual(os.listdir(self.directory), [])
