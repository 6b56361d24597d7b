"""
The WebSocket opening handshake's common case, read without autobahn's
general HTTP code (issue 19); every other case is autobahn's.

Why not autobahn's alone: measured in-process (an upgrade request fed to a
L{cairn.transport.websocket.ServerProtocol} over a string transport, and
cProfile of C{bench.handshake_instructions --child websocket}), reading
the upgrade request took about half of the node's CPU per WebSocket
handshake beyond a TCP one, and reading the upgrade response a similar
share of the client's: autobahn's C{processHandshake} is written for every
case it supports (proxies, Hixie versions, status pages, redirects,
Flash policy files, X-Forwarded-For, permessage-deflate offers, origins),
parses the whole block through C{parseHttpHeader} (a regex per line), the
request target with C{urllib.parse}, and then runs C{onConnect} through a
txaio future with two callbacks made per connection.

What this module reads is only the request cairn's own client sends
(C{GET /}, no C{Origin}, no extensions) and the response a cairn node
sends: one C{fullmatch} of a strict grammar over the whole block (ASCII
printable header values, token names, CRLF only: stricter than
C{parseHttpHeader}, so anything that passes here passes there), a dict of
the headers, and the same checks autobahn makes on them. Anything else --
a browser's request (it carries C{Origin} and offers permessage-deflate),
a repeated header, another path, another version, a refusal -- returns
C{None} and the caller hands the block to autobahn's C{processHandshake}
unchanged, so every refusal and its HTTP status are still autobahn's. On
success the protocol is left in the state autobahn's would leave it in
(the attributes it sets and later reads). A request (response) equal to
the last plain one but for its key (accept value) is read by comparing
bytes (L{LastPlain}). The node's 101 response is autobahn's
C{succeedHandshake}'s the first time for a subprotocol, then that one
with the new accept value (L{_PlainUpgradeServer._succeed}); wire bytes
are unchanged. There is no maintained HTTP/1.1 upgrade parser to call
instead that autobahn's protocol objects would accept (wsproto and h11
bring their own connection state machines).
"""

import base64
import hashlib
import os
import re

from autobahn.twisted.websocket import WebSocketClientProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest, ConnectionResponse

#: A header block (without its final empty line) of ASCII: the start line,
#: then lines of a token, a colon and printable ASCII, separated by CRLF.
_LINE = rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\x20-\x7e\t]*)*"
_REQUEST = re.compile(rb"GET / HTTP/1\.1" + _LINE)
_RESPONSE = re.compile(rb"HTTP/1\.1 101 Switching Protocols" + _LINE)
_BASE64 = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
#: RFC 6455 section 1.3 (autobahn's C{WebSocketProtocol._WS_MAGIC}).
_WS_MAGIC = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def _headers(lines):
    """The header lines as a dict by lower-case name, or None if a name repeats."""
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        name = name.lower()
        if name in headers:
            return None  # autobahn joins them; its own path decides
        headers[name] = value.strip(" \t")
    return headers


def _block(pattern, head):
    """
    C{(start line, headers)} of the header block C{head} if it matches
    C{pattern} whole (L{_REQUEST}, L{_RESPONSE}), with the headers as
    L{_headers} gives them (None if a name repeats); else C{(None, None)}.
    """
    if pattern.fullmatch(head) is None:
        return None, None
    lines = head.decode("ascii").split("\r\n")
    return lines[0], _headers(lines[1:])


def _has_token(value: str, token: str) -> bool:
    return any(part.strip().lower() == token for part in value.split(","))


class PlainRequest:
    """What a plain upgrade request said (L{plain_request})."""

    __slots__ = ("status_line", "headers", "host", "protocols", "key")

    def __init__(self, status_line, headers, host, protocols, key):
        self.status_line = status_line
        self.headers = headers
        self.host = host
        self.protocols = protocols
        self.key = key


def plain_request(head: bytes):
    """
    The upgrade request C{head} (up to, not including, its blank line) as
    a L{PlainRequest} if it is the plain case (C{GET /} over HTTP/1.1,
    version 13, no C{Origin}, no extensions, no repeated header, a valid
    key, C{Upgrade: websocket}, C{Connection: upgrade}, a C{Host} whose
    port, if any, is a number); otherwise None.
    """
    start, headers = _block(_REQUEST, head)
    if (
        headers is None
        or "origin" in headers
        or "sec-websocket-extensions" in headers
        or headers.get("sec-websocket-version") != "13"
        or not _has_token(headers.get("upgrade", ""), "websocket")
        or not _has_token(headers.get("connection", ""), "upgrade")
    ):
        return None
    host = headers.get("host")
    if host is None:
        return None
    if ":" in host and not host.endswith("]"):
        host, _, port = host.rpartition(":")
        if not port.strip().isdigit():
            return None
    key = headers.get("sec-websocket-key", "")
    if len(key) != 24 or key[-2:] != "==" or not _BASE64.issuperset(key[:-2]):
        return None
    protocols = []
    if "sec-websocket-protocol" in headers:
        protocols = [p.strip() for p in headers["sec-websocket-protocol"].split(",")]
        if len(set(protocols)) != len(protocols):
            return None
    return PlainRequest(start, headers, host, protocols, key)


def accept_value(key: bytes) -> str:
    """C{Sec-WebSocket-Accept} for a C{Sec-WebSocket-Key} (RFC 6455 section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _WS_MAGIC).digest()).decode()


def plain_response(head: bytes, key: bytes, offered):
    """
    The headers of the upgrade response C{head} (up to, not including, its
    blank line) if it is the plain case (101 over HTTP/1.1, C{Upgrade:
    websocket}, C{Connection: upgrade}, the right accept value for C{key},
    no extensions, no repeated header, a subprotocol among C{offered} or
    none); otherwise None.
    """
    start, headers = _block(_RESPONSE, head)
    if (
        headers is None
        or "sec-websocket-extensions" in headers
        or headers.get("upgrade", "").strip().lower() != "websocket"
        or not _has_token(headers.get("connection", ""), "upgrade")
        or headers.get("sec-websocket-accept") != accept_value(key)
    ):
        return None
    protocol = headers.get("sec-websocket-protocol", "")
    if protocol and protocol not in offered:
        return None
    return start, headers


class LastPlain:
    """
    The last plain request (a node's factory) or response (a client's
    template) read, split around the one value that differs from one
    connection to the next: the key in a request, the accept value in a
    response. cairn's client sends the same request bytes to a node but for
    its key, and a node answers with the same bytes but for the accept
    value; a head equal to the last one around that value is read by
    comparing bytes (L{repeat}), not by the grammar and header checks again
    (about a sixth of the node's upgrade read and of the client's, issue 19).
    The value itself is still checked: a key against the key's grammar, an
    accept value by computing it.
    """

    __slots__ = ("prefix", "suffix", "result")

    def __init__(self):
        self.prefix = self.suffix = self.result = None

    def repeat(self, head: bytes, size: int):
        """The C{size} bytes of C{head} where the last head had its value, if the rest is the same; else None."""
        prefix, suffix = self.prefix, self.suffix
        if (
            prefix is None
            or len(head) != len(prefix) + size + len(suffix)
            or not head.startswith(prefix)
            or not head.endswith(suffix)
        ):
            return None
        return head[len(prefix) : len(prefix) + size]

    def remember(self, head: bytes, value: bytes, result) -> None:
        """Keep C{result}, what C{head} said, if C{value} occurs in C{head} once (else keep the last)."""
        if head.count(value) == 1:
            self.prefix, _, self.suffix = head.partition(value)
            self.result = result


#: A C{Sec-WebSocket-Key} that L{plain_request} accepts: 22 base64 digits and C{==}.
_KEY = re.compile(rb"[A-Za-z0-9+/]{22}==")


def read_request(head: bytes, last: LastPlain):
    """
    L{plain_request}'s answer for C{head}, from C{last} (L{LastPlain}) when
    C{head} is the last plain request but for its key: the same answer with
    this key. Remembers each new plain request.
    """
    key = last.repeat(head, 24)
    if key is not None and _KEY.fullmatch(key):
        key = key.decode("ascii")
        known = last.result
        headers = dict(known.headers)
        headers["sec-websocket-key"] = key
        return PlainRequest(known.status_line, headers, known.host, list(known.protocols), key)
    request = plain_request(head)
    if request is not None:
        last.remember(head, request.key.encode("ascii"), request)
    return request


def read_response(head: bytes, key: bytes, offered, last: LastPlain):
    """
    L{plain_response}'s answer for C{head}, from C{last} (L{LastPlain}) when
    C{head} is the last plain response but for its accept value, which is
    the right one for C{key}. Remembers each new plain response.
    """
    accept = accept_value(key)
    value = last.repeat(head, len(accept))
    if value is not None and value == accept.encode("ascii"):
        start, headers = last.result
        headers = dict(headers)
        headers["sec-websocket-accept"] = accept
        return start, headers
    plain = plain_response(head, key, offered)
    if plain is not None:
        last.remember(head, accept.encode("ascii"), plain)
    return plain


class _PlainUpgradeServer:
    """The server side's opening handshake (L{cairn.transport.websocket.ServerProtocol})."""

    def processHandshake(self):
        """
        The plain upgrade request (L{cairn.transport.websocket_upgrade}) read
        here, then autobahn's C{succeedHandshake}; any other is autobahn's.
        """
        end = self.data.find(b"\r\n\r\n")
        request = None
        if end >= 0 and not (self.trustXForwardedFor or self.maxConnections or self.factory.externalPort):
            last = self.factory.last_request
            head = self.data[:end]
            request = plain_request(head) if last is None else read_request(head, last)
        if request is None:
            return super().processHandshake()
        # What autobahn's processHandshake sets and later reads.
        self.http_request_data = self.data[: end + 4]
        self.data = self.data[end + 4 :]
        self.http_status_line = request.status_line
        self.http_headers = request.headers
        self.http_request_uri = self.http_request_path = "/"
        self.http_request_params = {}
        self.http_request_host = request.host
        self.websocket_version = 13
        self.websocket_protocols = request.protocols
        self.websocket_origin = ""
        self.websocket_extensions = []
        self._wskey = request.key
        try:
            accepted = self.onConnect(
                ConnectionRequest(self.peer, request.headers, request.host, "/", {}, 13, "", request.protocols, [])
            )
        except ConnectionDeny as e:
            return self.failHandshake(e.reason, e.code)
        except Exception as e:  # autobahn's answer to a failing onConnect
            self.log.warn("Unexpected exception in onConnect ['{err}']", err=e)
            return self.failHandshake(f"Internal server error: {e}", ConnectionDeny.INTERNAL_SERVER_ERROR)
        self._succeed(accepted)

    def _succeed(self, accepted):
        """
        autobahn's C{succeedHandshake} for a plain request, C{accepted} the
        subprotocol C{onConnect} chose (or None): the response is the
        factory's last one for that subprotocol with this key's accept
        value (C{factory.responses}, learnt from autobahn's in L{_onOpen}),
        then what autobahn does once open. autobahn builds it line by line
        from the factory's server name and headers and the subprotocol,
        which are fixed once a factory serves (issue 19).
        """
        responses = self.factory.responses
        parts = None if responses is None or self.autoPingInterval else responses.get(accepted)
        if parts is None or (accepted is not None and accepted not in self.websocket_protocols):
            return self.succeedHandshake(accepted)
        self.websocket_protocol_in_use = accepted
        self.websocket_extensions_in_use = []
        self.http_response_data = response = accept_value(self._wskey.encode("ascii")).join(parts)
        self.sendData(response.encode("utf8"))
        self._open_state()
        self._opened()

    def _onOpen(self):
        # The first response autobahn sent without an extension for this
        # subprotocol becomes the factory's (L{_succeed}), before cairn's
        # onOpen drops it.
        responses, protocol = self.factory.responses, self.websocket_protocol_in_use
        if responses is not None and protocol not in responses and not self.websocket_extensions_in_use:
            response = self.http_response_data
            accept = accept_value(self._wskey.encode("ascii"))
            if isinstance(response, str) and response.count(accept) == 1:
                responses[protocol] = response.split(accept)
        super()._onOpen()


class _PlainUpgradeClient:
    """The client side's opening handshake (L{cairn.transport.websocket.ClientProtocol})."""

    def startHandshake(self):
        """
        The upgrade request: autobahn's for the first connection of a
        client factory template (L{client_factory}), then the same bytes
        with a fresh key for the others. autobahn builds it from the
        factory's options through C{onConnecting} (a txaio future, its
        callbacks and a C{ConnectingRequest} per connection) and formats a
        debug event's transport details whether or not anything logs them;
        cairn's options are fixed once the template is set up, so only the
        key (16 random bytes, base64, RFC 6455 section 4.1) differs.
        """
        request = self.factory.request_parts
        if request is None or type(self).onConnecting is not WebSocketClientProtocol.onConnecting:
            self._transport_details = self.transport_details  # passed to onConnecting
            return super().startHandshake()
        if not request:
            self._transport_details = self.transport_details  # logged by autobahn's
            result = super().startHandshake()
            data, key = getattr(self, "http_request_data", None), getattr(self, "websocket_key", None)
            if data is not None and key is not None and data.count(key) == 1:
                request.extend(data.split(key))
            return result
        self.websocket_key = base64.b64encode(os.urandom(16))
        self.http_request_data = request[0] + self.websocket_key + request[1]
        self.sendData(self.http_request_data)

    def processHandshake(self):
        """
        The plain upgrade response (L{cairn.transport.websocket_upgrade}) read
        here, then what autobahn's C{processHandshake} does on success; any
        other is autobahn's.
        """
        end = self.data.find(b"\r\n\r\n")
        plain = None
        if end >= 0 and not self.autoPingInterval:
            last = self.factory.last_response
            head = self.data[:end]
            if last is None:
                plain = plain_response(head, self.websocket_key, self.factory.protocols)
            else:
                plain = read_response(head, self.websocket_key, self.factory.protocols, last)
        if plain is None:
            return super().processHandshake()
        self.http_status_line, self.http_headers = plain
        self.http_response_data = self.data[: end + 4]
        self.data = self.data[end + 4 :]
        self.websocket_extensions_in_use = []
        self.websocket_protocol_in_use = self.http_headers.get("sec-websocket-protocol") or None
        self._open_state()
        self.websocket_version = self.version
        try:
            self._onConnect(
                ConnectionResponse(self.peer, self.http_headers, self.version, self.websocket_protocol_in_use, [])
            )
        except Exception as e:
            # autobahn's on_connect_failed
            self.log.error("onConnect failed with {fail}", fail=e)
            self._fail_connection(1000, f"{e}")
            return
        self._opened()
