"""
Hypothesis strategies for cairn bodies: a valid body (with the value its
parser must return) for every parser in L{targets.BODY_PARSERS}, mutations
of valid bodies, and arbitrary CBOR values.

The example budget is C{CAIRN_FUZZ_EXAMPLES} (default 150 per test); see
docs/reliability.md.
"""

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from cairn.crypto.identity import Identity
from cairn.pairing import messages as pairing
from cairn.wire.constants import MessageType

#: Examples per property; raise it with CAIRN_FUZZ_EXAMPLES for a long run.
EXAMPLES = int(os.environ.get("CAIRN_FUZZ_EXAMPLES", "150"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

U16, U32, U63, U64 = 2**16 - 1, 2**32 - 1, 2**63 - 1, 2**64 - 1

PEER_IDS = [Identity.from_seed(bytes([i]) * 32).peer_id for i in (11, 12, 13)]

# Arbitrary CBOR (what a decoder can hand to a parser)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), U64),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=40),
)
keys = st.one_of(st.text(max_size=12), st.integers(-5, 5), st.binary(max_size=4))
cbor_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=6)),
    max_leaves=20,
)

# Field values

uints = st.integers(0, U64)
u63 = st.integers(0, U63)
ids16 = st.binary(min_size=16, max_size=16)
b32 = st.binary(min_size=32, max_size=32)
peer_ids = st.sampled_from(PEER_IDS)
numbers = st.one_of(st.integers(0, 2**53), st.floats(0, 1e12))


def split(data: bytes, cuts) -> list:
    """C{data} cut at the offsets C{cuts} (those inside it), in order: the chunks a stream may bring."""
    out, pos = [], 0
    for cut in sorted(set(cuts)):
        if pos < cut < len(data):
            out.append(data[pos:cut])
            pos = cut
    out.append(data[pos:])
    return out


def text(max_bytes, min_size=0, alphabet=None):
    chars = st.characters(blacklist_categories=("Cs",)) if alphabet is None else alphabet
    return st.text(chars, min_size=min_size, max_size=max_bytes // 4).filter(
        lambda t: len(t.encode("utf-8")) <= max_bytes
    )


names = text(pairing.MAX_NAME, alphabet=st.characters(blacklist_categories=("Cc", "Cs")))
topics = text(255, min_size=1)


def _with(expected, body):
    return st.tuples(st.just(body), st.just(expected))


@st.composite
def _handshake(draw):
    noise = draw(st.binary(max_size=200))
    return {"noise": noise}, noise


@st.composite
def _keepalive(draw):
    ack = draw(st.none() | uints)
    return ({} if ack is None else {"ack": ack}), ack


@st.composite
def _close(draw):
    code, reason = draw(st.integers(0, U16)), draw(text(1024))
    return {"code": code, "reason": reason}, (code, reason)


@st.composite
def _reconnect(draw):
    n = draw(uints)
    return {"last_received": n}, n


@st.composite
def _key_update(draw):
    n = draw(uints)
    return {"epoch": n}, n


@st.composite
def _data(draw):
    cid, dr = draw(st.integers(0, U32)), draw(st.dictionaries(st.text(max_size=4), scalars, max_size=4))
    return {"channel": cid, "dr": dr}, (cid, dr)


@st.composite
def _channel_init(draw):
    cid, name = draw(st.integers(1, U32)), draw(text(255))
    return {"channel": cid, "name": name}, (cid, name)


@st.composite
def _relay_request(draw):
    ttl = draw(st.none() | st.integers(1, U32))
    return ({} if ttl is None else {"ttl": ttl}), ttl


@st.composite
def _relay_response(draw):
    servers = draw(st.lists(text(1024, min_size=1), max_size=4))
    if draw(st.booleans()):
        body = {"servers": servers, "error": draw(text(1024))}
    else:
        body = {
            "servers": servers,
            "username": draw(text(512)),
            "password": draw(text(256)),
            "ttl": draw(uints),
            "expires_at": draw(uints),
        }
    return body, body


@st.composite
def _pair_request(draw):
    method = draw(st.sampled_from(pairing.METHODS))
    name = draw(names)
    body = {"method": method, "name": name}
    fields = {}
    if method == pairing.LINK:
        fields["proof"] = draw(b32)
        fields["link_id"] = draw(ids16)
    if method in pairing.PAKE_METHODS:
        fields["pake"] = draw(b32)
    body.update(fields)
    return body, pairing.PairRequest(method, name, **fields)


@st.composite
def _pair_challenge(draw):
    if draw(st.booleans()):
        return {"method": "approval"}, ("approval", None)
    method, share = draw(st.sampled_from(pairing.PAKE_METHODS)), draw(b32)
    return {"method": method, "pake": share}, (method, share)


@st.composite
def _pair_response(draw):
    method, mac = draw(st.sampled_from(pairing.PAKE_METHODS)), draw(b32)
    return {"method": method, "confirm": mac}, (method, mac)


@st.composite
def _pair_confirm(draw):
    method, proof, already = draw(st.sampled_from(pairing.METHODS)), draw(st.none() | b32), draw(st.booleans())
    return pairing.pair_confirm(method, proof, already), (method, already, proof)


@st.composite
def _pair_reject(draw):
    code, reason, method = draw(st.integers(0, U16)), draw(text(256)), draw(st.sampled_from(pairing.METHODS))
    return pairing.pair_reject(code, reason, method), (code, reason, method)


@st.composite
def _forward_request(draw):
    to, mid, payload = draw(peer_ids), draw(ids16), draw(st.binary(min_size=1, max_size=64))
    return {"to": to, "id": mid, "payload": payload}, (to, mid, payload)


@st.composite
def _request_id(draw):
    body, (_, mid, _) = draw(_forward_request())
    return body, mid


@st.composite
def _forward_ack(draw):
    mid, status, reason = draw(ids16), draw(uints), draw(text(64))
    return {"id": mid, "status": status, "reason": reason}, (mid, status, reason)


@st.composite
def _forward_deliver(draw):
    mid, sender, seq, at, payload = (
        draw(ids16),
        draw(peer_ids),
        draw(st.integers(1, U63)),
        draw(numbers),
        draw(st.binary(max_size=64)),
    )
    return {"id": mid, "from": sender, "seq": seq, "stored_at": at, "payload": payload}, (
        mid,
        sender,
        seq,
        float(at),
        payload,
    )


@st.composite
def _forward_purge(draw):
    seqs, receipts = (
        draw(st.lists(st.integers(1, U63 - 1), max_size=8)),
        draw(st.lists(st.integers(1, U63 - 1), max_size=8)),
    )
    return {"seqs": seqs, "receipts": receipts}, (seqs, receipts)


@st.composite
def _deliveries(draw):
    items = draw(st.lists(_forward_deliver(), min_size=1, max_size=4, unique_by=lambda pair: pair[1][2]))
    items.sort(key=lambda pair: pair[1][2])
    return {"messages": [body for body, _ in items]}, [expected for _, expected in items]


@st.composite
def _receipts(draw):
    items = draw(st.lists(_forward_receipt(), min_size=1, max_size=4))
    return {"receipts": [body for body, _ in items]}, [expected for _, expected in items]


@st.composite
def _purge_with_upto(draw):
    body, expected = draw(_forward_purge())
    upto = draw(st.none() | st.integers(1, U63 - 1))
    if upto is not None:
        body["upto"] = upto
    return body, (expected, upto or 0)


@st.composite
def _forward_receipt(draw):
    mid, to, rseq, status, at = (
        draw(ids16),
        draw(peer_ids),
        draw(st.integers(1, U63)),
        draw(st.integers(0, 3)),
        draw(numbers),
    )
    return {"id": mid, "to": to, "rseq": rseq, "status": status, "at": at}, (mid, to, rseq, status, float(at))


@st.composite
def _peer_key_request(draw):
    peer = draw(peer_ids)
    return {"peer": peer}, peer


@st.composite
def _peer_key_response(draw):
    peer, key, retry = draw(peer_ids), draw(st.none() | b32), draw(st.none() | st.booleans())
    body = {"peer": peer, "key": key}
    if retry is not None:
        body["retry"] = retry
    return body, (peer, key, bool(retry) and key is None)


@st.composite
def _route_request(draw):
    target, req, attach = draw(peer_ids), draw(uints), draw(st.none() | st.booleans())
    body = {"target": target, "req": req}
    if attach is not None:
        body["attach"] = attach
    return body, (target, req, bool(attach))


@st.composite
def _route_offer(draw):
    sender, circuit, token = draw(peer_ids), draw(ids16), draw(st.none() | st.binary(min_size=32, max_size=32))
    body = {"from": sender, "circuit": circuit}
    if token is not None:
        body["token"] = token
    return body, (sender, circuit, token)


@st.composite
def _relay_attach(draw):
    circuit, token = draw(ids16), draw(st.binary(min_size=32, max_size=32))
    return {"circuit": circuit, "token": token}, (circuit, token)


@st.composite
def _route_response(draw):
    status, circuit, req, reason = (
        draw(st.integers(0, 6)),
        draw(st.none() | ids16),
        draw(st.none() | uints),
        draw(text(256)),
    )
    body = {"status": status, "reason": reason}
    if circuit is not None:
        body["circuit"] = circuit
    if req is not None:
        body["req"] = req
    return body, (status, circuit, req, reason)


@st.composite
def _relay_data(draw):
    circuit, data = draw(ids16), draw(st.binary(max_size=64))
    return {"circuit": circuit, "data": data}, (circuit, data)


@st.composite
def _relay_ack(draw):
    circuit, credit = draw(ids16), draw(uints)
    return {"circuit": circuit, "credit": credit}, (circuit, credit)


@st.composite
def _relay_close(draw):
    circuit, reason, final = draw(ids16), draw(text(256)), draw(st.none() | st.booleans())
    body = {"circuit": circuit, "reason": reason}
    if final is not None:
        body["final"] = final
    return body, (circuit, reason, bool(final))


@st.composite
def _subscribe(draw):
    wanted = draw(st.dictionaries(topics, st.none() | u63, min_size=1, max_size=5))
    cursors = {k: v for k, v in wanted.items() if v is not None}
    body = {"topics": list(wanted)}
    if cursors or draw(st.booleans()):
        body["cursors"] = cursors
    return body, wanted


@st.composite
def _publish(draw):
    topic, uid, payload = draw(topics), draw(ids16), draw(st.binary(max_size=64))
    return {"topic": topic, "id": uid, "payload": payload}, (topic, uid, payload)


@st.composite
def _publish_id(draw):
    body, (_, uid, _) = draw(_publish())
    return body, uid


@st.composite
def _ack(draw):
    uid, status, seq, reason = draw(ids16), draw(st.integers(0, 4)), draw(st.none() | u63), draw(text(64))
    return {"id": uid, "status": status, "seq": seq, "reason": reason}, (uid, status, seq, reason)


@st.composite
def _update(draw):
    topic, seq, sender, uid, payload, at = (
        draw(topics),
        draw(u63),
        draw(peer_ids),
        draw(ids16),
        draw(st.binary(max_size=64)),
        draw(numbers),
    )
    body = {"topic": topic, "seq": seq, "from": sender, "id": uid, "payload": payload, "at": at}
    return body, (topic, seq, sender, uid, payload, float(at))


@st.composite
def _cursor(draw):
    topic, seq = draw(topics), draw(u63)
    return {"topic": topic, "seq": seq}, (topic, seq)


@st.composite
def _reset(draw):
    topic, oldest, reason = draw(topics), draw(u63), draw(text(64))
    return {"topic": topic, "oldest_seq": oldest, "reason": reason}, (topic, oldest, reason)


@st.composite
def _denied(draw):
    topic, reason = draw(topics), draw(text(64))
    return {"topic": topic, "reason": reason}, (topic, reason)


#: parser name (L{targets.BodyParser.name}) -> strategy of (body, expected result)
VALID = {
    "wire.parse_handshake": _handshake(),
    "wire.parse_keepalive": _keepalive(),
    "wire.parse_close": _close(),
    "wire.parse_reconnect": _reconnect(),
    "wire.parse_key_update": _key_update(),
    "wire.parse_data": _data(),
    "wire.parse_channel_init": _channel_init(),
    "turn.parse_relay_request": _relay_request(),
    "turn.parse_relay_response": _relay_response(),
    "pairing.parse_pair_request": _pair_request(),
    "pairing.parse_pair_challenge": _pair_challenge(),
    "pairing.parse_pair_response": _pair_response(),
    "pairing.parse_pair_confirm": _pair_confirm(),
    "pairing.parse_pair_reject": _pair_reject(),
    "pairing.parse_pair_revoke": st.tuples(st.dictionaries(st.text(max_size=4), scalars, max_size=3), st.none()),
    "mailbox.parse_forward_request": _forward_request(),
    "mailbox.request_id": _request_id(),
    "mailbox.parse_forward_ack": _forward_ack(),
    "mailbox.parse_forward_deliver": _forward_deliver(),
    "mailbox.parse_forward_purge": _forward_purge(),
    "mailbox.parse_forward_receipt": _forward_receipt(),
    "mailbox.parse_deliveries": _deliveries(),
    "mailbox.parse_receipts": _receipts(),
    "fuzz.purge_with_upto": _purge_with_upto(),
    "mailbox.parse_peer_key_request": _peer_key_request(),
    "mailbox.parse_peer_key_response": _peer_key_response(),
    "relay.parse_route_request": _route_request(),
    "relay.parse_route_offer": _route_offer(),
    "relay.parse_route_response": _route_response(),
    "relay.parse_relay_data": _relay_data(),
    "relay.parse_relay_ack": _relay_ack(),
    "relay.parse_relay_close": _relay_close(),
    "relay.parse_relay_attach": _relay_attach(),
    "sync.parse_subscribe": _subscribe(),
    "sync.parse_publish": _publish(),
    "sync.publish_id": _publish_id(),
    "sync.parse_ack": _ack(),
    "sync.parse_update": _update(),
    "sync.parse_cursor": _cursor(),
    "sync.parse_reset": _reset(),
    "sync.parse_denied": _denied(),
}


@st.composite
def mutated(draw, body):
    """C{body} with a few keys replaced by arbitrary values, dropped, or added."""
    body = dict(body)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "drop", "add", "retype"]))
        present = sorted(body, key=repr)
        if action == "add" or not present:
            body[draw(keys)] = draw(cbor_values)
            continue
        key = draw(st.sampled_from(present))
        if action == "replace":
            body[key] = draw(cbor_values)
        elif action == "drop":
            del body[key]
        else:
            body[key] = draw(_retyped(body[key]))
    return body


def _retyped(value):
    """Values near C{value} that a careless parser might confuse with it."""
    if isinstance(value, bool):
        return st.sampled_from([0, 1, None, "true"])
    if isinstance(value, int):
        return st.sampled_from([-1, value + 1, 2**64 - 1, 2**63, float(value), True, str(value), None])
    if isinstance(value, (bytes, str)):
        shorter, longer = value[:-1], value + value[:1] * 2
        other = value.decode("latin-1") if isinstance(value, bytes) else value.encode("utf-8")
        return st.sampled_from([shorter, longer, other, [value], None])
    if isinstance(value, list):
        return st.sampled_from([value[:1] + [None], value * 2, {}, None, [-1], [0]])
    return st.sampled_from([None, [], {}, 0, b""])


#: Every type code, a few unknown codes and custom codes.
type_codes = st.one_of(st.sampled_from(list(MessageType)), st.integers(0, 0xFFFF), st.integers(0xF000, 0xFFFF))
