"""
Where the nats-servers' CPU per enqueued message goes (issue 14): raw
nats-py pipelined publish-with-ack of 1 KiB to the same R1/R3 cluster, in
shapes that go step by step from the raw anchor of bench/mailbox.py to
what the JetStream mailbox publishes for one message
(L{cairn.cluster.mailbox.JetStreamMailboxStore._publish_message}).

    python -m bench.js_publish_shapes [--replicas 3] [--messages 4000]
                                      [--rounds 3] [--inflight 64]

Each shape gets a stream of its own (created before, deleted after), the
shapes run one after the other in a rotated order each round, and each
prints its rate, the client's CPU and the servers' CPU per message
(from /proc), with medians over the rounds. The shapes:

  - C{anchor}: bench/_jetstream.py's raw anchor as is (one subject, no
    headers, its own stream config);
  - C{anchor-mbox}: the same on a stream configured as cairn's C{mbox};
  - C{subject}: one subject per message, C{cairn.mbox.<r>.<s>.<id>};
  - C{subject+expect}: plus C{Nats-Expected-Last-Subject-Sequence: 0};
  - C{subject+headers}: cairn's own headers without the expectation;
  - C{cairn}: the expectation and cairn's headers, as cairn sends them;
  - C{packed}: the expectation and cairn's headers packed into one;
  - C{body}: the expectation only, cairn's headers' values at the start
    of the body instead (the payload 70-odd bytes longer);
  - C{short}: one subject per message, but short (C{<prefix>.<8 hex>}),
    no headers: the subject's length apart from its being new;
  - C{compact}: as C{cairn}, but the subject's tokens shortened (the
    peers as 16 characters, the id as 22: base64url of a hash and of the
    16 bytes), 70-odd characters instead of 140-odd;
  - C{short-random}: as C{short}, the second token 32 random hex digits
    (a short subject whose ids share no prefix);
  - C{subject-v7}, C{cairn-v7}: as C{subject} and C{cairn}, the id a
    UUIDv7 as cairn's clients make them (time first: the ids of one
    millisecond share their first 12 hex digits) instead of 16 random
    bytes: the subject as the mailbox really writes it.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import statistics
import time
import uuid

from bench._jetstream import Servers, acked_publisher

SIZE = 1024
WEEK = 7 * 86400.0

SHAPES = (
    "anchor",
    "anchor-mbox",
    "subject",
    "subject+expect",
    "subject+headers",
    "cairn",
    "packed",
    "body",
    "short",
    "compact",
    "short-random",
    "subject-v7",
    "cairn-v7",
)


def _peer():
    """A peer id shaped like cairn's (base58 multihash, 46 characters)."""
    return "Qm" + uuid.uuid4().hex + uuid.uuid4().hex[:12]


def _uuid7_hex():
    """A message id as cairn's clients make them (UUIDv7: 48 bits of milliseconds, then random), in hex."""
    raw = bytearray(int(time.time() * 1000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return bytes(raw).hex()


def _short(peer):
    return base64.urlsafe_b64encode(hashlib.sha256(peer.encode()).digest()[:12]).decode()


def _config(name, subjects, mbox_like, replicas):
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    if not mbox_like:
        return StreamConfig(
            name=name, subjects=subjects, num_replicas=replicas, storage=StorageType.FILE, allow_direct=True
        )
    # As cairn/cluster/layout.py configures the mbox stream.
    return StreamConfig(
        name=name,
        subjects=subjects,
        num_replicas=replicas,
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=0,
        allow_direct=True,
        allow_rollup_hdrs=True,
    )


def _messages(shape, count, prefix):
    """[(subject, headers)] of C{count} messages of C{shape}."""
    recipient, writer = _peer(), uuid.uuid4().hex
    # (subject, headers, body prefix)
    senders = [_peer() for _ in range(8)]
    if shape == "compact":
        recipient, senders = _short(recipient), [_short(s) for s in senders]
    out = []
    for i in range(count):
        if shape.startswith("anchor"):
            out.append((f"{prefix}.r", None, b""))
            continue
        if shape == "short":
            out.append((f"{prefix}.{i:08x}", None, b""))
            continue
        if shape == "short-random":
            out.append((f"{prefix}.{os.urandom(16).hex()}", None, b""))
            continue
        if shape == "compact":
            mid = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
        elif shape.endswith("-v7"):
            mid = _uuid7_hex()
        else:
            mid = os.urandom(16).hex()
        subject = f"{prefix}.{recipient}.{senders[i % 8]}.{mid}"
        now = time.time()
        stored, expires = repr(now), repr(now + WEEK)
        if shape in ("subject", "subject-v7"):
            headers = None
        elif shape == "subject+expect":
            headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        elif shape == "subject+headers":
            headers = {"Cairn-Stored": stored, "Cairn-Expires": expires, "Cairn-Writer": writer}
        elif shape in ("cairn", "compact", "cairn-v7"):
            headers = {
                "Nats-Expected-Last-Subject-Sequence": "0",
                "Cairn-Stored": stored,
                "Cairn-Expires": expires,
                "Cairn-Writer": writer,
            }
        elif shape == "packed":
            headers = {"Nats-Expected-Last-Subject-Sequence": "0", "Cairn-M": f"{stored} {expires} {writer}"}
        elif shape == "body":
            headers = {"Nats-Expected-Last-Subject-Sequence": "0"}
        else:
            raise ValueError(shape)
        head = f"1 {stored} {expires} {writer}\n".encode() if shape == "body" else b""
        out.append((subject, headers, head))
    return out


async def _one(nc, servers, shape, count, inflight, replicas, number):
    js = nc.jetstream()
    name = f"shape_{number}"
    prefix = f"shape{number}.mbox"
    await js.add_stream(_config(name, [prefix + ".>"], shape != "anchor", replicas))
    messages = _messages(shape, count, prefix)
    payload = os.urandom(SIZE)
    publish, sub = await acked_publisher(nc, inflight)
    mine, theirs = time.process_time(), servers.cpu()
    start = time.perf_counter()
    await asyncio.gather(
        *(publish(subject, head + payload if head else payload, headers) for subject, headers, head in messages)
    )
    wall = time.perf_counter() - start
    figures = {
        "rate": count / wall,
        "client_us": (time.process_time() - mine) / count * 1e6,
        "servers_us": (servers.cpu() - theirs) / count * 1e6,
    }
    await sub.unsubscribe()
    await js.delete_stream(name)
    return figures


async def _main(servers, shapes, count, inflight, replicas, rounds):
    import nats

    nc = await nats.connect(servers.urls)
    results = {shape: [] for shape in shapes}
    number = 0
    try:
        for r in range(rounds):
            order = shapes[r % len(shapes) :] + shapes[: r % len(shapes)]
            load = os.getloadavg()[0]
            for shape in order:
                number += 1
                figures = await _one(nc, servers, shape, count, inflight, replicas, number)
                results[shape].append(figures)
                print(
                    f"round {r + 1} (load {load:.2f}) {shape:16} {figures['rate']:7.0f} msg/s"
                    f"  client {figures['client_us']:5.1f} us/msg  servers {figures['servers_us']:6.1f} us/msg",
                    flush=True,
                )
    finally:
        await nc.close()
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=3, choices=(1, 3))
    p.add_argument("--messages", type=int, default=4000)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, of " + ", ".join(SHAPES))
    args = p.parse_args(argv)
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}")
    servers = Servers(args.replicas)
    try:
        results = asyncio.run(_main(servers, shapes, args.messages, args.inflight, args.replicas, args.rounds))
    finally:
        servers.stop()
    anchor = statistics.median(f["servers_us"] for f in results[shapes[0]])
    print(
        f"\nmedians over {args.rounds} rounds, R{args.replicas}, {args.messages} x {SIZE} B, {args.inflight} in flight:"
    )
    for shape in shapes:
        rows = results[shape]
        servers_us = statistics.median(f["servers_us"] for f in rows)
        print(
            f"  {shape:16} {statistics.median(f['rate'] for f in rows):7.0f} msg/s"
            f"  client {statistics.median(f['client_us'] for f in rows):5.1f} us"
            f"  servers {servers_us:6.1f} us ({servers_us - anchor:+6.1f} against {shapes[0]})"
        )


if __name__ == "__main__":
    main()
