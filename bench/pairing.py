"""
Pairing bench: the node's CPU per PSK PairRequest (issue 21 item 8), in
process, against a bare Noise XX handshake (both sides) as the anchor --
the work an unpaired peer must already make the node do before it may
send a PairRequest at all.

Measured: C{PairingService}'s PairRequest handler for a PSK request
(validate pA, draw y, pB = y*P + w*N, K, TT, the key schedule; the
PairChallenge written to a stand-in session), and the whole exchange
(PairRequest and PairResponse, the device's side not counted). If the
removed C{spake2} package is importable, the version-1 PIN step (python-
spake2's SPAKE2_B start and finish) is printed too, for comparison.

    python -m bench.pairing [--quick] [--count N]
"""

import os
import time
from types import SimpleNamespace

from twisted.internet import task

from bench._common import out, parser
from bench.handshake import bare_handshake_operation
from cairn.crypto.handshake import HandshakeResult
from cairn.crypto.identity import Identity
from cairn.pairing import pake, proofs
from cairn.pairing.service import PairingService
from cairn.pairing.trust import MemoryTrustStore
from cairn.session.peer import Peer
from cairn.wire.constants import MessageType

PSK = "the bench's pre-shared key, long enough"


class _Session:
    """What the pairing service uses of a session; sent bodies are kept."""

    def __init__(self, identity, n):
        self.session_id = os.urandom(16)
        self.remote_identity = identity.public_key
        self.remote_peer_id = identity.peer_id
        self.initiator = False
        self.result = HandshakeResult(self.remote_identity, os.urandom(32), bytes(32), bytes(32), False)
        # One source per request: the per-source limits are not what is measured.
        tcp = SimpleNamespace(getPeer=lambda: SimpleNamespace(host=f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"))
        self.connection = SimpleNamespace(transport=SimpleNamespace(transport=tcp))
        self.closed = None
        self.attached = True
        self.sent = []

    def send(self, type_code, body):
        self.sent.append((type_code, body))

    def close(self, code=0, reason=""):
        self.closed = (code, reason)


def per_call(operation, count):
    """Seconds of CPU per call of C{operation} over C{count} calls."""
    start = time.process_time()
    for n in range(count):
        operation(n)
    return (time.process_time() - start) / count


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--count", type=int, default=2000)
    args = p.parse_args(argv)
    count = 100 if args.quick else args.count
    node = Peer(Identity.generate(), task.Clock())
    service = PairingService(node, MemoryTrustStore(), task.Clock(), psk=PSK, max_source_exchanges=count + 1)
    service.start()
    request = node.handler_for(MessageType.PAIR_REQUEST)
    respond = node.handler_for(MessageType.PAIR_RESPONSE)
    device = Identity.generate()
    w = proofs.psk_scalar(PSK)

    prepared = []
    for n in range(count):
        session = _Session(device, n)
        side = pake.SideA(w, device.public_key, node.identity.public_key, session.result.handshake_hash)
        prepared.append((session, side))

    def pair_request(n):
        session, side = prepared[n]
        request(session, {"method": "psk", "pake": side.share})

    def pair_response(n):
        session, side = prepared[n]
        confirm, _ = side.finish(session.sent[-1][1]["pake"])
        respond(session, {"method": "psk", "confirm": confirm})

    request_cost = per_call(pair_request, count)
    # The device's side (finish) runs in the loop too: subtract it.
    device_cost = per_call(lambda n: prepared[n][1].finish(prepared[n][0].sent[0][1]["pake"]), count)
    response_cost = per_call(pair_response, count) - device_cost
    handshake = bare_handshake_operation()
    anchor = per_call(lambda n: handshake(), max(20, count // 10))

    out(
        f"pairing: node CPU per PSK PairRequest {request_cost * 1e6:.0f} us, per PairResponse "
        f"{response_cost * 1e6:.0f} us; bare Noise XX handshake (both sides) {anchor * 1e6:.0f} us; "
        f"ratio PairRequest/handshake = {request_cost / anchor:.2f}"
    )
    try:
        from spake2 import SPAKE2_B
    except ImportError:
        return
    message_a = None

    def v1_pin_step(n):
        spake = SPAKE2_B(b"7K3MQ9TZ", idA=device.public_key, idB=node.identity.public_key)
        spake.start()
        spake.finish(message_a)

    from spake2 import SPAKE2_A

    message_a = SPAKE2_A(b"7K3MQ9TZ", idA=device.public_key, idB=node.identity.public_key).start()
    old = per_call(v1_pin_step, max(20, count // 10))
    out(f"pairing: version-1 PIN PairRequest (python-spake2) {old * 1e6:.0f} us; v2/v1 = {request_cost / old:.2f}")


if __name__ == "__main__":
    main()
