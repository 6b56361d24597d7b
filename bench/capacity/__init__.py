"""
Capacity bench (issue 7): many idle sessions, a reconnect storm and a
handshake flood, each against a node in a child process.

    python -m bench.capacity idle  [--sessions 10000] [--clients 2] [--keepalive 5] [--window 20] [--types]
                                   [--tracemalloc]
    python -m bench.capacity storm [--sessions 2000] [--messages 1] [--data 1] [--backlog N]
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
    numbers). C{--types} also reports the node's new objects by type,
    C{--tracemalloc} its traced memory growth by file and by line.
storm
    N sessions (half TCP, half WebSocket), each its own peer paired with
    the node's PSK. All transports are dropped at once; while the sessions
    are detached, a sender forwards C{--messages} mailbox messages to each
    (stored by the node) and each session sends C{--data} Data on a channel
    (kept in its resend buffer). Then all resume at once: time until every
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

Every process raises its soft RLIMIT_NOFILE to its hard limit and prints
what it got; when that is too low for the sessions asked for, the bench
opens fewer and says so. The clients all dial from 127.0.0.1: idle and
storm lift the node's per-source handshake limit, flood keeps the node's
default unless given C{--per-source}. The child roles (C{node},
C{sessions}, C{handshakes}) are run by the bench itself; bench/README.rst
has the details and the figures.
"""
