"""
Pairing PINs and links shared by the nodes of a deployment (L{ICodeStore}).

Bucket C{<prefix>_pairing} (file storage, the deployment's replicas, a
TTL past the longest code's life plus the time a spent one is remembered):
key C{pin} (the one active PIN) and C{link.<id hex>} (each link), the
value a small JSON object (the code's key, expiry, failures, used). Every
node mirrors the bucket into its books through a watch, in KV revision
order with its own writes (L{KVCodes._changes}), so a PIN created
through node 1's API is tried on node 2 from memory. Spending is a
compare-and-set on the key's revision: of two nodes spending one code at
once, one wins and the other answers ALREADY_USED. Failed attempts are
added the same way, so a code is burned after C{max_code_failures} wrong
answers in the whole deployment, not per node.

What the bucket holds is what pairs a device with this server (a PIN, a
link's derived key) for minutes: NATS access must be the deployment's
alone (docs/scaling.md). The node's identity key is never stored here.
"""

import json

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from cairn.cluster.common import one_line, open_bucket
from cairn.cluster.kv_whole import Followed
from cairn.cluster.watch import Watchers
from cairn.pairing.code_store import Code, ICodeStore
from cairn.storeservice import observe

log = Logger()

#: Compare-and-set attempts before a spend or a failure count gives up.
ATTEMPTS = 8


def _encode(code):
    return json.dumps(
        {"key": code.key.hex(), "expires_at": code.expires_at, "failures": code.failures, "used": code.used}
    ).encode()


def _decode(value):
    data = json.loads(value)
    return Code(bytes.fromhex(data["key"]), data["expires_at"], 0, int(data["failures"]), bool(data["used"]))


@implementer(ICodeStore)
class KVCodes:
    """
    @param jet: the node's L{cairn.cluster.connection.JetStream}.
    @param ttl: seconds a key lives in the bucket.
    """

    def __init__(self, jet, ttl):
        self.jet = jet
        self.ttl = ttl
        self.bucket = f"{jet.prefix}_pairing"
        self.kv = None
        self.watchers = Watchers()
        self._watcher = None
        self._saving = set()
        # On the reactor: the newest KV revision applied per key (the watch's, or this node's own
        # write's), this node's saves not answered yet per key, and the newest entry the watch
        # brought of a key meanwhile (L{_changes}).
        self._revisions, self._writes, self._held = {}, {}, {}

    def watch(self, callback):
        self.watchers.add(callback)

    def start(self):
        d = self.jet.when_ready()
        d.addCallback(lambda _: self.jet.run(self._open))
        return d.addCallback(self._changes)

    async def _open(self):

        from nats.js.api import KeyValueConfig, StorageType

        config = KeyValueConfig(
            bucket=self.bucket,
            description="cairn pairing PINs and links",
            history=1,
            ttl=self.ttl,
            replicas=self.jet.settings.replicas,
            storage=StorageType.FILE,
        )
        self.kv = await open_bucket(self.jet.js, config, self.jet.nc)
        self._watcher = Followed(
            self.jet, self.kv, lambda entries, _: self.jet.thread.to_reactor(self._changes, entries)
        )
        return await self._watcher.start()

    def _changes(self, entries):
        """
        Entries of the bucket (the start-up load's, then the watch's), in
        revision order: applied only when newer than what this node holds.
        While a save of the key made here is not answered, they wait for
        it: the books hold the saved code already, and an older value the
        watch brings meanwhile (this node's previous PIN, made just before)
        replaced it until the watch brought the new one (a PIN made twice
        in quick succession went back to the first for milliseconds). The
        wait is kept (docs/scaling.md, "Pairing on any node"): until the
        answer, the write's revision is unknown, so no entry can be placed
        against it; it lasts one PubAck, and a spend is decided in the
        bucket, never from the books.
        """
        for entry in entries:
            if self._writes.get(entry.key):
                held = self._held.get(entry.key)
                if held is None or entry.revision > held.revision:
                    self._held[entry.key] = entry
                continue
            if entry.revision <= self._revisions.get(entry.key, 0):
                continue  # this node's own write, or older than it: the books hold it or newer
            self._revisions[entry.key] = entry.revision
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                code = None
            else:
                try:
                    code = _decode(entry.value)
                except (ValueError, KeyError, TypeError):
                    log.warn("pairing: ignoring a malformed code under {key}", key=entry.key)
                    continue
            self.watchers(entry.key, code)

    def stop(self):
        watcher = self._watcher
        if watcher is not None:
            self.jet.thread.call(watcher.cancel)
        return self.flushed()

    def flushed(self):
        return defer.DeferredList([observe(d) for d in list(self._saving)]).addCallback(lambda _: None)

    def save(self, name, code):
        value = _encode(code)

        async def put():
            return await self.kv.put(name, value)

        self._writes[name] = self._writes.get(name, 0) + 1
        d = self.jet.run(put)
        self._saving.add(d)

        def done(result):
            self._saving.discard(d)
            if isinstance(result, int):  # its revision: what the books hold from now on
                self._revisions[name] = max(self._revisions.get(name, 0), result)
            self._writes[name] -= 1
            if not self._writes[name]:
                del self._writes[name]
                held = self._held.pop(name, None)
                if held is not None:
                    self._changes([held])  # newer than this write (another node's since): applied
            return None if isinstance(result, int) else result

        d.addBoth(done)
        # The operator was shown the code: if NATS cannot take it, it works on this node only.
        d.addErrback(
            lambda f: log.warn("pairing: a code was not shared with other nodes ({why})", why=one_line(f.value))
        )
        return d

    def spend(self, name, code):
        def change(held):
            if held.used:
                return None  # spent elsewhere first
            held.used = True
            return held

        d = self.jet.run(self._update, name, change)
        d.addCallback(lambda changed: changed is not None)

        def failed(failure):
            # Cannot tell whether another node spent it: refuse (the device retries with a new code).
            log.warn("pairing: could not spend a code ({why})", why=one_line(failure.value))
            return False

        return d.addErrback(failed)

    def failed(self, name, code):
        def change(held):
            held.failures += 1  # one more, whichever node counted the others
            return held

        d = self.jet.run(self._update, name, change)
        return d.addErrback(lambda f: log.warn("pairing: a failed attempt not shared ({why})", why=one_line(f.value)))

    async def _update(self, name, change):
        """Compare-and-set C{change(code) -> code or None} on C{name}; the code written, or None."""
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

        for _ in range(ATTEMPTS):
            try:
                entry = await self.kv.get(name)
            except KeyNotFoundError:
                return None  # replaced or expired: nothing to spend
            if not entry.value:
                return None
            changed = change(_decode(entry.value))
            if changed is None:
                return None
            try:
                await self.kv.update(name, _encode(changed), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            return changed
        raise RuntimeError(f"{name}: too many concurrent writers")
