"""
L{StreamWatch}: a watch of a stream from a chosen seq (nats-py's ordered
consumer) that loses nothing to a slow consumer.

nats-py drops a message that its subscription's pending limits do not
hold and tells only C{error_cb}; its ordered consumer has already taken
the message's seq as received, so none of its own resets brings it back
(L{cairn.cluster.kv_whole}). A watch's owner applies each message in
stream order, and a hole would stay a hole: the mailbox's depths and
read-ahead, the sync hub's updates. So L{StreamWatch} keeps the stream
seq after the last message its callback applied and, told of a drop by
the connection (L{cairn.cluster.nats_errors.Drops}), ends the
subscription (what nats-py still held for the callback is discarded
unread, so nothing after the hole is applied before it) and subscribes
anew from that seq: every message comes once, in order (docs/scaling.md,
"Slow consumers").
"""

import asyncio
import dataclasses

from twisted.logger import Logger

from cairn.cluster.common import one_line

log = Logger()

#: Seconds between attempts to subscribe again after a drop.
RETRY = 1.0


class StreamWatch:
    """
    C{callback(msg)} (a coroutine function, on the NATS loop) for each
    message of C{subject} from C{config}'s C{opt_start_seq} on, through an
    ordered consumer on C{jet}'s JetStream context (C{kwargs}: more of
    C{js.subscribe}'s arguments), resumed after the last message applied
    whenever nats-py drops messages of it.

    @ivar resumed: how many times it subscribed again so.
    """

    def __init__(self, jet, subject, callback, config, **kwargs):
        self.jet, self.subject, self.callback = jet, subject, callback
        self.config, self.kwargs = config, kwargs
        self.next = config.opt_start_seq  # the stream seq after the last message applied
        self.resumed = 0
        self._subscription = None

    async def start(self):
        """Subscribe (a failure goes up: the owner tries again)."""
        config = dataclasses.replace(self.config, opt_start_seq=self.next)
        self._subscription = subscription = await self.jet.js.subscribe(
            self.subject, cb=self._applied, ordered_consumer=True, config=config, **self.kwargs
        )
        self.jet.drops.add(subscription, self._dropped)

    async def _applied(self, msg):
        await self.callback(msg)
        # max: a reset of nats-py's from the stream's start brings older messages again.
        self.next = max(self.next, msg.metadata.sequence.stream + 1)

    def _dropped(self, error):
        # Within nats-py's read of the socket: nothing awaited here.
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return  # resuming already (a drop is told once per message)
        self.jet.drops.discard(subscription)
        log.warn("cairn: the watch of {subject} dropped messages (slow consumer): resuming it", subject=self.subject)
        asyncio.get_running_loop().create_task(self._resume(subscription))

    async def _resume(self, dropped):
        await end(dropped)  # its callback stops at once (what it still held is not applied): self.next is final
        while True:
            try:
                await self.start()
            except Exception as e:
                log.warn("cairn: resuming the watch of {subject} failed ({why})", subject=self.subject, why=one_line(e))
                await asyncio.sleep(RETRY)
                continue
            self.resumed += 1
            return


async def end(subscription):
    """
    Unsubscribe nats-py JetStream subscription C{subscription} for good.
    Its own C{unsubscribe} (nats-py 2.16) stops its callback and its
    heartbeat check (which would otherwise reset the consumer again), but
    names the sid it was made with, which an ordered consumer's reset
    replaced: the subscription's core, with the current sid, is ended too.
    Errors are not raised: a connection closing ends it anyway.
    """
    for each in (subscription, getattr(subscription, "_sub", None)):
        try:
            if each is not None:
                await each.unsubscribe()
        except Exception:
            pass
