"""
The JetStream layout: the streams and KV buckets every store uses
(L{stream_configs}, L{BUCKETS}), set up idempotently by L{ensure} and
versioned. A key C{layout} in the C{<prefix>_meta} bucket records the
version; a node finding a newer one refuses to start with one line
(L{LayoutError}, permanent), an older one is upgraded by L{UPGRADES}
(idempotent and crash-safe: the version is recorded only once the upgrade
is done, and an interrupted one runs again at the next start). L{ensure}
returns only once every stream and bucket answers a publish on this
connection (L{cairn.cluster.ready}). Also the
check of the NATS server's C{max_payload} against C{CAIRN_MAX_PAYLOAD}
(L{check_max_payload}).
"""

from twisted.logger import Logger

log = Logger()

#: The layout version this code writes and reads (see docs/scaling.md):
#: 2 since a removed message's tombstone carries its receipt (mailbox_layout);
#: 3 since the stream C{<prefix>_reserve} holds the storage reserve (L{cairn.cluster.reserve}).
LAYOUT = 3


class LayoutError(Exception):
    """
    The streams cannot be set up now; C{str()} is one line for the operator.

    @ivar permanent: retrying cannot help (a newer layout): the node
        stays degraded; otherwise (e.g. "no suitable peers for placement"
        while a cluster forms, or too many replicas asked for) it retries.
    """

    def __init__(self, message, permanent=False):
        super().__init__(message)
        self.permanent = permanent


def stream_configs(jet):
    """{stream name: StreamConfig} of layout L{LAYOUT}."""
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    common = dict(
        storage=StorageType.FILE,
        num_replicas=jet.settings.replicas,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        # Expiry is the node's (it owes EXPIRED receipts): no server-side age.
        max_age=0,
        allow_direct=True,
    )
    mbox = jet.stream("mbox")
    sync = jet.stream("sync")
    reserve = jet.stream("reserve")
    return {
        mbox: StreamConfig(
            name=mbox,
            description=f"cairn mailbox, layout {LAYOUT}",
            # rcpt: layout 1's receipts (none once upgraded); rdone: the consumed markers.
            subjects=[jet.subject("mbox", ">"), jet.subject("rcpt", ">"), jet.subject("rdone", "*")],
            # An acknowledged message is replaced by its tombstone.
            allow_rollup_hdrs=True,
            **common,
        ),
        sync: StreamConfig(
            name=sync,
            description=f"cairn sync hub, layout {LAYOUT}",
            subjects=[jet.subject("sync", ">"), jet.subject("syncids", ">")],
            # One publish = the dedup id and the update, committed together.
            allow_atomic=True,
            **common,
        ),
        reserve: StreamConfig(
            name=reserve,
            description=f"cairn storage reserve, layout {LAYOUT}",
            # The ballast's pieces, one per subject: released at JetStream's storage limit.
            subjects=[jet.subject("reserve", "*")],
            max_msgs_per_subject=1,
            **common,
        ),
    }


#: KV bucket suffixes of layout L{LAYOUT}: overrides, cursors, trust, relay.
BUCKETS = ("limits", "cursors", "trust", "relay")


async def ensure(jet, nc):
    """
    Set up the streams and buckets of layout L{LAYOUT} (idempotent), after
    upgrading an older layout found in the C{meta} bucket; refuse a newer one.
    Then wait (bounded) until each of them answers a publish: a stream just
    made may not have a leader yet (L{cairn.cluster.ready}); meanwhile
    C{jet.waiting(reason)} is called on the reactor, once.
    """
    from nats.js.api import KeyValueConfig, StorageType
    from nats.js.errors import BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError

    js = jet.js
    replicas = jet.settings.replicas

    async def bucket(suffix):
        config = KeyValueConfig(bucket=f"{jet.prefix}_{suffix}", history=1, replicas=replicas, storage=StorageType.FILE)
        try:
            return await js.create_key_value(config=config)
        except BadRequestError as e:
            raise LayoutError(_layout_problem(e, replicas)) from None

    meta = jet.kv["meta"] = await bucket("meta")
    try:
        found = int((await meta.get("layout")).value)
    except KeyNotFoundError:
        found = None
    if found is not None and found > LAYOUT:
        raise LayoutError(
            f"the JetStream layout under prefix {jet.prefix!r} is version {found}, newer than this node's"
            f" {LAYOUT}: upgrade cairn-server (or set CAIRN_CLUSTER_PREFIX to a new deployment)",
            permanent=True,
        )
    for version in range(found or LAYOUT, LAYOUT):
        await UPGRADES[version](jet, nc)
    for config in stream_configs(jet).values():
        try:
            await js.add_stream(config=config)
        except BadRequestError as e:
            if "different configuration" not in str(e) and e.err_code != 10058:
                raise LayoutError(_layout_problem(e, replicas)) from None
            await js.update_stream(config=config)
    for suffix in BUCKETS:
        jet.kv[suffix] = await bucket(suffix)
    if found is None:
        try:
            await meta.create("layout", str(LAYOUT).encode())
        except KeyWrongLastSequenceError:
            pass  # another node wrote it first; the streams above are the same
    elif found < LAYOUT:
        await meta.put("layout", str(LAYOUT).encode())
    from cairn.cluster.ready import answering

    await answering(nc, probes(jet), waiting=lambda reason: jet.thread.to_reactor(jet.waiting, reason))


def probes(jet):
    """C{(stream, subject)} of every stream and bucket of layout L{LAYOUT}: a subject each one takes."""
    from cairn.cluster.ready import probe_subject

    streams = [(name, probe_subject(config.subjects[0])) for name, config in stream_configs(jet).items()]
    buckets = [f"{jet.prefix}_{suffix}" for suffix in ("meta", *BUCKETS)]
    return streams + [(f"KV_{bucket}", f"$KV.{bucket}.probe") for bucket in buckets]


async def _upgrade_1(jet, nc):
    from cairn.cluster.mailbox_layout import upgrade_from_1

    converted = await upgrade_from_1(jet, nc)
    jet.thread.to_reactor(lambda: log.info("cairn: JetStream layout 1 upgraded to 2 ({n} receipts moved)", n=converted))


async def _upgrade_2(jet, nc):
    """Layout 3 only adds the reserve stream, which L{ensure} makes (its ballast: L{cairn.cluster.reserve.prepare})."""


#: Upgrades from layout N to N + 1 (coroutine functions of the L{JetStream} and the client).
UPGRADES = {1: _upgrade_1, 2: _upgrade_2}


def check_max_payload(nats_limit, max_payload):
    """
    Refuse (a permanent L{LayoutError}) a NATS server whose C{max_payload}
    is below C{CAIRN_MAX_PAYLOAD}. A mailbox message, a sync update or a
    relayed message is one NATS message: its payload is at most
    C{CAIRN_MAX_PAYLOAD} less the envelope's overhead (256 bytes or more),
    which leaves room for the subject and headers the stores add
    (tests/test_cluster_payload.py checks the limit case on a real server).
    Without this check the largest messages would fail one by one, each
    answered STORAGE_ERROR as if JetStream were away.
    """
    if max_payload is not None and nats_limit < max_payload:
        raise LayoutError(
            f"CAIRN_MAX_PAYLOAD ({max_payload}) is above the NATS server's max_payload ({nats_limit}):"
            f" lower CAIRN_MAX_PAYLOAD or set max_payload to at least {max_payload} in nats-server.conf",
            permanent=True,
        )


def _layout_problem(error, replicas):
    text = getattr(error, "description", None) or str(error)
    if "insufficient resources" in text or "replicas" in text:
        return (
            f"NATS cannot place {replicas} replica(s) ({text}): set CAIRN_CLUSTER_REPLICAS to at most"
            " the number of JetStream servers"
        )
    return f"cannot set up the JetStream streams ({text})"
