"""
C{cairn-server status|peers|pending|approve|reject|revoke|mailbox|relay|sync|config}:
look after a running node from its own machine.

Each command is a function C{(api, args) -> (data, text)}: C{data} is what
C{--json} prints, C{text} what a human reads.  The API calls are in
L{cairn.cli.api}; exit statuses in L{cairn.cli.api.EXIT_CODES}.
"""

from __future__ import annotations

import argparse
import json

from cairn.cli.api import EXIT_CODES, EXIT_OK, AdminError, NodeAPI, connect
from cairn.cli.output import duration, size, table, when
from cairn.config_report import binds_every_interface, show


def status(api: NodeAPI, args) -> tuple:
    """Health, uptime, listeners, sessions, peers, queue, relay and sync totals."""
    health = api.get("/health")
    peers = api.get("/peers")
    pending = api.get("/peers/pending")
    mailbox = api.get("/mailbox")
    relay = api.get("/relay")
    sync = api.get("/sync")
    report = api.get("/config")
    settings = {row["name"]: row for row in report["settings"]}
    bound = report.get("listening") or {}
    listeners = {}
    for name, attribute in (("tcp", "listen"), ("websocket", "ws_listen"), ("management", "mgmt_listen")):
        configured = settings[attribute]["value"] if attribute in settings else None
        listeners[name] = bound.get(name) or configured
    data = {
        "url": api.url,
        "health": health,
        "listeners": listeners,
        "peers": {
            "paired": len(peers),
            "online": sum(1 for p in peers if p.get("connected")),
            "pending": len(pending),
        },
        "mailbox": {k: mailbox.get(k) for k in ("enabled", "messages", "bytes", "oldest_age")},
        "relay": {"circuits": relay.get("circuits"), "capacity": relay.get("capacity")},
        "sync": {"topics": len(sync.get("topics", [])), "updates": sync.get("updates", 0)},
    }
    shown = ", ".join(f"{name} {show(value)}" for name, value in listeners.items())
    capacity = relay.get("capacity")
    text = "\n".join(
        [
            f"cairn-server {health['version']} at {api.url}: {health['status']}, up {duration(health['uptime'])}",
            f"listeners  {shown}",
            f"sessions   {health['sessions']}",
            f"peers      {data['peers']['paired']} paired ({data['peers']['online']} online), "
            f"{data['peers']['pending']} pending",
            f"mailbox    {mailbox.get('messages', 0)} messages, {size(mailbox.get('bytes'))}"
            + (f", oldest {duration(mailbox['oldest_age'])}" if mailbox.get("oldest_age") is not None else "")
            + ("" if mailbox.get("enabled", True) else " (disabled)"),
            f"relay      {relay.get('circuits', 0)} circuits"
            + (f" of {capacity}" if capacity is not None else ""),
            f"sync       {data['sync']['topics']} topics, {data['sync']['updates']} updates",
        ]
    )
    return data, text


def peers(api: NodeAPI, args) -> tuple:
    """Paired peers: online or not, last seen, messages queued for each."""
    records = api.get("/peers")
    queued = {p["peer_id"]: p for p in api.get("/mailbox").get("peers", [])}
    data = []
    for record in records:
        held = queued.get(record["peer_id"], {})
        data.append({**record, "queued": held.get("messages", 0), "queued_bytes": held.get("bytes", 0)})
    rows = [
        (
            p["peer_id"],
            p.get("name") or "-",
            "online" if p.get("connected") else "offline",
            when(p.get("last_seen")),
            p["queued"],
            p.get("method") or "-",
        )
        for p in data
    ]
    return data, table(("peer id", "name", "status", "last seen", "queued", "paired by"), rows, "(no paired peers)")


def pending(api: NodeAPI, args) -> tuple:
    """Pairing requests waiting for approval."""
    data = api.get("/peers/pending")
    rows = [(p["peer_id"], p.get("name") or "-", when(p.get("requested_at"))) for p in data]
    return data, table(("peer id", "name", "requested"), rows, "(no pending requests)")


def approve(api: NodeAPI, args) -> tuple:
    """Approve a pending pairing request."""
    data = api.request("POST", "/peers/approve", {"peer_id": args.peer})
    return data, f"approved {args.peer}" + (f" ({data['name']})" if data.get("name") else "")


def reject(api: NodeAPI, args) -> tuple:
    """Reject a pending pairing request."""
    data = api.request("POST", "/peers/reject", {"peer_id": args.peer})
    return data, f"rejected {args.peer}"


def revoke(api: NodeAPI, args) -> tuple:
    """Unpair a peer: its sessions end, what the node holds for it is purged."""
    data = api.request("DELETE", f"/peers/{args.peer}")
    return data, f"revoked {args.peer}"


def mailbox(api: NodeAPI, args) -> tuple:
    """What the mailbox holds: per recipient, or for one peer."""
    if args.peer:
        data = api.get(f"/mailbox/{args.peer}")
        limits = data.get("limits", {})
        text = "\n".join(
            [
                f"peer       {data['peer_id']}",
                f"messages   {data['messages']} (limit {show(limits.get('max_messages'))})",
                f"bytes      {size(data['bytes'])}"
                + (f" (limit {size(limits['max_bytes'])})" if limits.get("max_bytes") else ""),
                f"oldest     {duration(data.get('oldest_age'))}",
            ]
        )
        return data, text
    data = api.get("/mailbox")
    rows = [
        (p["peer_id"], p["messages"], size(p["bytes"]), duration(p.get("oldest_age")))
        for p in data.get("peers", [])
    ]
    total = f"total: {data.get('messages', 0)} messages, {size(data.get('bytes'))}"
    if not data.get("enabled", True):
        total += " (the mailbox is disabled: CAIRN_FORWARD_ENABLED=false)"
    return data, table(("recipient", "messages", "bytes", "oldest"), rows, "(nothing queued)") + "\n" + total


def relay(api: NodeAPI, args) -> tuple:
    """Relay circuits and per-peer byte counts."""
    data = api.get("/relay")
    rows = [
        (
            c.get("circuit", "")[:12],
            c.get("state"),
            c.get("mode"),
            c.get("requester"),
            c.get("target"),
            size(c.get("bytes")),
            duration(c.get("age")),
        )
        for c in data.get("open", [])
    ]
    capacity = data.get("capacity")
    head = f"{data.get('circuits', 0)} circuits" + (f" of {capacity}" if capacity is not None else "")
    headers = ("circuit", "state", "mode", "requester", "target", "bytes", "age")
    return data, head + "\n" + table(headers, rows, "(no open circuits)")


def sync(api: NodeAPI, args) -> tuple:
    """Sync topics: head, size, devices and their lag."""
    data = api.get("/sync")
    rows = []
    for topic in data.get("topics", []):
        devices = topic.get("devices", [])
        lag = max((d.get("lag") or 0 for d in devices), default=0)
        rows.append(
            (topic.get("topic"), topic.get("head"), topic.get("updates"), size(topic.get("bytes")), len(devices), lag)
        )
    return data, table(("topic", "head", "updates", "bytes", "devices", "max lag"), rows, "(no topics)")


def config(api: NodeAPI, args) -> tuple:
    """The node's effective settings and where each came from."""
    data = api.get("/config")["settings"]
    rows = [(row["variable"], show(row["value"]), row["source"]) for row in data]
    return data, table(("variable", "value", "source"), rows)


COMMANDS = {
    "status": (status, "health, uptime, listeners, sessions and service totals"),
    "peers": (peers, "paired peers: online/offline, last seen, queued messages"),
    "pending": (pending, "pairing requests waiting for approval"),
    "approve": (approve, "approve a pending pairing request"),
    "reject": (reject, "reject a pending pairing request"),
    "revoke": (revoke, "unpair a peer (its sessions end, its queued data is purged)"),
    "mailbox": (mailbox, "store-and-forward queues (all recipients, or one PEER)"),
    "relay": (relay, "relay circuits"),
    "sync": (sync, "sync topics and device lag"),
    "config": (config, "the node's effective settings and their source (secrets redacted)"),
}

_EPILOG = (
    "The node is found like 'cairn-server pair' finds it: --url, CAIRN_MGMT_URL or CAIRN_MGMT_LISTEN; "
    "the token from --token-file, CAIRN_MGMT_TOKEN(_FILE) or <CAIRN_DATA_DIR>/mgmt.token. Exit status: "
    + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items())
    + "."
)


def add_commands(commands) -> None:
    """Add the admin commands to the C{cairn-server} subparsers C{commands}."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON (for scripts) instead of a table")
    common.add_argument("--url", help="management API URL (default: CAIRN_MGMT_URL, or derived from CAIRN_MGMT_LISTEN)")
    common.add_argument("--token-file", metavar="PATH", help="read the management token from PATH")
    common.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the node (default 10)")
    for name, (_, text) in COMMANDS.items():
        description = text[0].upper() + text[1:] + "."
        sub = commands.add_parser(name, parents=[common], help=text, description=description, epilog=_EPILOG)
        if name in ("approve", "reject", "revoke"):
            sub.add_argument("peer", metavar="PEER", help="the peer id")
        elif name == "mailbox":
            sub.add_argument("peer", metavar="PEER", nargs="?", help="one peer id (default: every recipient)")


def run(args, environ, out, err) -> int:
    """Run the admin command in C{args}; print its result or one line of error."""
    command, _ = COMMANDS[args.command]
    try:
        api = connect(environ, args.url, args.token_file, args.timeout)
        data, text = command(api, args)
    except AdminError as e:
        err.write(f"cairn-server {args.command}: {e}\n")
        return e.status
    if args.json:
        out.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        out.write(text + "\n")
    return EXIT_OK


def host_name_warning(environ, url=None) -> str | None:
    """
    The warning for C{pair --link}/C{--qr} when the node has no
    C{CAIRN_PUBLIC_ADDRESSES}: its links then name the machine's host name,
    which other devices may not resolve.  C{None} if all is well or unknown.
    """
    try:
        settings = connect(environ, url).get("/config")["settings"]
    except (AdminError, KeyError, TypeError):
        return None
    values = {row.get("name"): row.get("value") for row in settings if isinstance(row, dict)}
    listeners = (values.get("listen"), values.get("ws_listen"))
    if "public_addresses" in values and not values["public_addresses"] and any(
        map(binds_every_interface, listeners)
    ):
        return (
            "the link advertises this machine's host name (CAIRN_PUBLIC_ADDRESSES is unset on the node); "
            "if devices cannot resolve it, set CAIRN_PUBLIC_ADDRESSES to the address they dial"
        )
    return None
