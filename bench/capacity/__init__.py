"""
Capacity bench (issues 7 and 20): many idle sessions, a reconnect storm
and a handshake flood, each against a node in a child process.

    python -m bench.capacity idle  [--sessions 10000] [--clients 2] [--keepalive 5] [--window 20] [--types]
                                   [--floor twisted,asyncio[,twisted-direct] | none] [--node-keepalive S]
                                   [--profile PATH]
                                   [--tracemalloc] [--only tcp|websocket] [--per-address 10000]
                                   [--hold SECONDS] [--storm N] [--messages 1] [--backlog N]
                                   [--attempts 8] [--lockstep]
    python -m bench.capacity storm [--sessions 2000] [--messages 1] [--data 1] [--backlog N]
                                   [--attempts 8] [--lockstep]
    python -m bench.capacity flood [--sessions 100] [--rate 200] [--seconds 10] [--concurrency 64]
                                   [--per-source N]
    python -m bench.capacity churn [--cycles 10000] [--concurrency 32] [--legacy | --bounds TTL:TOTAL:PER_SOURCE]

idle
    N sessions, half TCP and half WebSocket, each from its own identity,
    paired with the node's PSK beforehand (C{--unpaired}: not), opened by
    C{--clients} client processes; node and clients send a
    Keepalive every C{--keepalive} seconds. Measured on the node, from
    C{/proc/PID}: VmRSS before and after (bytes per session), and CPU
    (utime + stime) over a window, as a share of a core and per Keepalive
    handled (sent plus received, counted from the sessions' sequence
    numbers), against the same figure of bare servers with as many
    connections (L{floor}, measured first; C{--floor none}: not).
    C{--types} also reports the node's new objects by type,
    C{--tracemalloc} its traced memory growth by file and by line. Then
    (C{--hold}) the sessions are held while a bystander (two paired peers
    of the bench's own) sends itself a mailbox message every
    C{--bystander-every} seconds: its round trip percentiles; and
    (C{--storm N}) N of them drop at once, C{--messages} mailbox messages
    are queued for each, and all resume (as in storm): sessions resumed, messages
    delivered (and lost), the bystander's round trip meanwhile.
storm
    N sessions (half TCP, half WebSocket), each its own peer paired with
    the node's PSK. All transports are dropped at once; while the sessions
    are detached, a sender forwards C{--messages} mailbox messages to each
    (stored by the node) and each session sends C{--data} Data on a channel
    (kept in its resend buffer). Then all resume, each as cairn.client's
    automatic resume would (backoff with jitter; C{--lockstep}: all at
    once, the worst case): time until every
    session is resumed, until every mailbox message reached its recipient
    and until every Data reached the node.
flood
    K established sessions each send one echo request (Data on a channel)
    in turn, C{--rate} per second in all; another process opens new TCP
    handshakes as fast as it can (C{--concurrency} in flight). Measured:
    handshakes per second accepted, and the requests served per second and
    their latency before, during and after the flood.
churn
    C{--cycles} handshake-and-drop cycles, each from a fresh identity that
    is not paired, the transport aborted without a Close (issue 13). The
    node keeps the sessions its unpaired-peer bounds allow (defaults;
    C{--legacy}: the bounds lifted and the detached TTL an hour, as before
    them). Measured: sessions held and node RSS after the flood (bytes per
    session held), and again once the unpaired TTL has passed.

Every process raises its descriptor limit as the node does at start-up
(L{cairn.fdlimit}: with privilege both limits to C{fs.nr_open}, else the
soft one to the hard one) and prints what it got; when that is too low for
the sessions asked for, the bench opens fewer and says so. idle's client
processes bind to 127.0.0.2, 127.0.0.3, ... (one per C{--per-address}
sessions), so that one source address's ephemeral ports are not the
bound; the other scenarios dial from 127.0.0.1. idle and storm lift the
node's per-source limits, flood keeps the node's default unless given
C{--per-source}.

Modules: L{children} (the JSON-line child processes), L{floor} (the
bare servers and clients of the floor), L{node} and
L{clients} (the child roles C{node}, C{sessions}, C{handshakes}, run by the
bench itself), L{limits} (descriptors, source addresses), one per scenario
(L{idle}, L{storm}, L{flood} with churn), L{cli}. bench/README.rst has the
details and the figures.
"""
