"""
Waiting until JetStream streams answer a publish (L{answering}).

C{add_stream} (and C{create_key_value}) returns once the meta leader has
assigned the stream, which can be before the stream has a leader and before
the server this client is connected to has its subject interest: a publish
then gets "no responders" (503) or no answer at all, and the mailbox would
answer the first ForwardRequests of a new deployment STORAGE_ERROR (seen
under load on a fresh R3 cluster). So start-up probes each stream through
the very path a publish takes -- its subject, this connection -- until the
stream answers.

The probe stores nothing: it carries C{Nats-Expected-Stream} naming no
stream (C{"-"} is not a valid stream name), which the stream checks before
storing and refuses with error 10060, naming itself in the answer. Nothing
a store or a watch reads sees it (a refused publish is not a message of the
stream), so the probe is safe on a stream that already holds data.

A stream whose account is over its JetStream limit refuses the probe for
want of room instead (at R3 its leader checks the account's limits before
the header: "resource limits exceeded for account", measured): it
answered all the same. Waiting for the header's refusal there kept a node
restarted in that state from ever starting, while the storage reserve
(L{cairn.cluster.reserve}) has it start full and drain.
"""

import asyncio
import json
import time

from cairn.cluster.layout import LayoutError

#: Seconds one start-up attempt waits for every stream to answer; past it
#: the attempt fails (not permanently) and the connection retries with its
#: own backoff (L{cairn.cluster.connection}).
READY_TIMEOUT = 30.0
#: Seconds one probe waits for its answer.
PROBE_TIMEOUT = 2.0
#: Seconds between probes of a stream that did not answer: doubling up to the cap.
PAUSE_FIRST, PAUSE_MAX = 0.05, 1.0
#: The header that makes a probe refused rather than stored.
PROBE_HEADERS = {"Nats-Expected-Stream": "-"}
#: The stream's refusal of a probe: "expected stream does not match".
_NOT_MATCHED = 10060


def probe_subject(subject):
    """A subject of the stream whose subjects include C{subject} (a filter ending in C{>} or C{*})."""
    head, _, last = subject.rpartition(".")
    return f"{head}.probe" if last in (">", "*") else subject


async def answering(nc, streams, timeout=READY_TIMEOUT, waiting=None, pause=asyncio.sleep, clock=time.monotonic):
    """
    Return once each stream of C{streams} (C{(name, subject)} pairs, the
    subject one that the stream takes) answers a probe sent to C{subject}
    on client C{nc}. C{waiting(reason)} is called once, the first time a
    stream does not answer, with one line saying which and why. Past
    C{timeout} seconds, a L{LayoutError} (not permanent) names the stream.
    """
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout

    end = clock() + timeout
    told = False
    for name, subject in streams:
        delay = PAUSE_FIRST
        while True:
            try:
                reply = await nc.request(subject, b"", timeout=PROBE_TIMEOUT, headers=PROBE_HEADERS)
                why = _refusal(reply.data, name)
            except NoRespondersError:
                why = "no responders"
            except (TimeoutError, NatsTimeout):
                why = f"no answer within {PROBE_TIMEOUT:g}s"
            if why is None:
                break
            if clock() >= end:
                raise LayoutError(f"JetStream stream {name} does not answer ({why}) after {timeout:g}s")
            if not told and waiting is not None:
                told = True
                waiting(f"waiting for JetStream stream {name} to answer ({why})")
            await pause(delay)
            delay = min(delay * 2, PAUSE_MAX)


def _refusal(data, name):
    """None if C{data} is stream C{name}'s refusal of a probe (or of any write, for want of room), else why not."""
    from cairn.cluster.pubacks import NO_ROOM_CODES

    try:
        answer = json.loads(data)
        error = answer.get("error") or {}
        if answer.get("stream") == name and error.get("err_code") in (_NOT_MATCHED, *NO_ROOM_CODES):
            return None
        return f"answered {(error.get('description') or 'unexpectedly')[:100]}"
    except (ValueError, AttributeError):
        return "answered with something other than JSON"
