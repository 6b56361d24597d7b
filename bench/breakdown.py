"""
Where the session layer's CPU goes: the pieces of a handshake and of a
1 KiB Data message timed one by one in this process (no sockets).

    python -m bench.breakdown [--quick]

Not part of C{bench.run}; it explains the figures the two benches print.
"""

import contextlib
import os
import time

from nacl.bindings import crypto_box_keypair, crypto_scalarmult_base

from bench._common import measure_in_process, out, parser
from bench.data import MESSAGE_SIZE
from bench.handshake import bare_handshake_operation
from cairn.crypto import handshake, ratchet, ratchet_state
from cairn.crypto.aead import SessionCipher
from cairn.crypto.handshake import NoiseHandshake, check_identity_payload, identity_payload
from cairn.crypto.identity import Identity
from cairn.crypto.ratchet import Ratchet, make_spare_keys
from cairn.crypto.ratchet_seed import derive_seed
from cairn.wire import cbor

SESSION_ID = b"\x07" * 16


def _cairn_noise(initiator_identity, responder_identity):
    def handshake():
        initiator = NoiseHandshake(initiator_identity, initiator=True, session_id=SESSION_ID)
        responder = NoiseHandshake(responder_identity, initiator=False, session_id=SESSION_ID)
        responder.read_init(initiator.write_init())
        initiator.read_response(responder.write_response())
        responder.read_final(initiator.write_final())
        return initiator.result()

    return handshake


def _ratchets(result):
    seed = derive_seed(result.handshake_hash, result.key_i2r, result.key_r2i)
    initiator, first = Ratchet.start_initiator(seed, b"", SESSION_ID)
    responder, _ = Ratchet.start_responder(seed, first, SESSION_ID)
    return initiator, responder


def handshake_parts(count):
    """(label, operation, count) for the pieces of one handshake."""
    alice, bob = Identity.generate(), Identity.generate()
    noise = _cairn_noise(alice, bob)
    result = noise()
    payload = identity_payload(alice)
    static = alice.noise_static_public()

    def noise_first_contact():
        # Both peers' identity proofs checked from scratch, as for two
        # peers that have not met since the process started.
        handshake._binding_verifies.cache_clear()
        noise()

    def check_uncached():
        handshake._binding_verifies.cache_clear()
        check_identity_payload(payload, static)

    return [
        ("bare noiseprotocol XX, both sides (the anchor)", bare_handshake_operation(), count),
        ("cairn NoiseHandshake with identity payloads, both sides", noise, count),
        ("  the same, identity proofs not seen before (no verify cache)", noise_first_contact, count),
        ("derive_seed + ratchet start, both sides", lambda: _ratchets(result), count),
        ("identity_payload (computed once per Identity)", lambda: identity_payload(alice), count),
        (
            "  computing it: static key conversion + Ed25519 sign + CBOR",
            lambda: handshake._make_identity_payload(Identity(alice.signing_key)),
            count,
        ),
        ("check_identity_payload (proof seen before)", lambda: check_identity_payload(payload, static), count),
        ("  proof not seen before: CBOR + Ed25519 verify", check_uncached, count),
        ("Identity.noise_static_public (computed once per Identity)", alice.noise_static_public, count),
    ]


def message_parts(count):
    """(label, operation, count) for the pieces of one 1 KiB Data message."""
    alice, bob = Identity.generate(), Identity.generate()
    result = _cairn_noise(alice, bob)()
    body = os.urandom(MESSAGE_SIZE)
    encrypting, _ = _ratchets(result)
    sender, receiver = _ratchets(result)
    # One chain sent ahead, so that every decrypt timed is the next message.
    pending = iter([sender.encrypt(body, SESSION_ID) for _ in range(count)])
    ping, pong = _ratchets(result)
    key_a, key_b = os.urandom(32), os.urandom(32)
    seal, unseal = SessionCipher(key_a, key_b), SessionCipher(key_b, key_a)
    data_body = {"channel": 2, "dr": sender.encrypt(body, SESSION_ID)}
    seq = [0]

    def outer_layer():
        seq[0] += 1
        envelope = seal.seal(1, 0x0100, SESSION_ID, seq[0], cbor.dumps(data_body))
        cbor.loads(unseal.open(envelope))

    def ping_pong():
        pong.decrypt(ping.encrypt(body, SESSION_ID), SESSION_ID)
        ping.decrypt(pong.encrypt(body, SESSION_ID), SESSION_ID)

    def ping_pong_stepping():
        with _steps_at_once():
            ping_pong()

    private = os.urandom(32)
    parts = [
        ("Ratchet.encrypt of 1 KiB (same direction as the last)", lambda: encrypting.encrypt(body, SESSION_ID), count),
        ("Ratchet.decrypt of 1 KiB (next in the chain)", lambda: receiver.decrypt(next(pending), SESSION_ID), count),
        (
            "  X25519 public key of a private one (libsodium; seeds)",
            lambda: crypto_scalarmult_base(private),
            count,
        ),
        ("  X25519 key pair (libsodium; DH steps, made ahead)", crypto_box_keypair, count),
    ]
    parts += [
        ("outer layer: CBOR + ChaCha20-Poly1305 seal + open + CBOR", outer_layer, count),
        ("ping-pong: 2 messages, each turning the DH ratchet, both sides", ping_pong_stepping, max(count // 10, 1)),
        ("ping-pong: 2 messages, own-key steps deferred (the default)", ping_pong, max(count // 10, 1)),
    ]
    return parts


def answer_path(count, spare: bool) -> float:
    """
    CPU seconds per answer to a message that turns the DH ratchet: the
    responder's decrypt of it and encrypt of the reply, what stands between
    a message's arrival and its answer in a request/response conversation.
    With C{spare}, the key that step uses was made ahead
    (L{make_spare_keys}, called outside the timed part, as the session
    layer calls it once its writes are out).
    """
    alice, bob = Identity.generate(), Identity.generate()
    ping, pong = _ratchets(_cairn_noise(alice, bob)())
    body = os.urandom(MESSAGE_SIZE)
    del ratchet._spare[:]
    clock = time.process_time
    total = 0.0
    with _steps_at_once():
        total = _answers(ping, pong, body, count, spare, clock)
    del ratchet._spare[:]
    return total / count


@contextlib.contextmanager
def _steps_at_once():
    """Every own-key step owed taken at the first send (Signal's algorithm; docs/protocol.md section 11.8)."""
    kept = ratchet_state.REKEY_MESSAGES
    ratchet_state.REKEY_MESSAGES = 0
    try:
        yield
    finally:
        ratchet_state.REKEY_MESSAGES = kept


def _answers(ping, pong, body, count, spare, clock):
    total = 0.0
    for _ in range(count):
        message = ping.encrypt(body, SESSION_ID)
        if spare:
            make_spare_keys()
        start = clock()
        pong.decrypt(message, SESSION_ID)
        reply = pong.encrypt(body, SESSION_ID)
        total += clock() - start
        ping.decrypt(reply, SESSION_ID)
        if not spare:
            del ratchet._spare[:]
    return total


def report(title, parts):
    out(title)
    for label, operation, count in parts:
        measurement = measure_in_process(operation, count)
        out(f"  {label:<66} {measurement.wall / count * 1e6:8.1f} us")


def main(argv=None):
    args = parser("CPU cost of the pieces of a handshake and of a Data message").parse_args(argv)
    count = 200 if args.quick else 2000
    report("== per handshake ==", handshake_parts(count))
    report("== per 1 KiB Data message ==", message_parts(count * 5))
    out("== answer to a 1 KiB message that turns the DH ratchet (decrypt + encrypt, CPU) ==")
    for _ in range(3):
        inline, spare = answer_path(count, False), answer_path(count, True)
        out(f"  key generated on the spot {inline * 1e6:6.1f} us; key made ahead {spare * 1e6:6.1f} us")


if __name__ == "__main__":
    main()
