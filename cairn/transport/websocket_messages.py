"""
L{_EnvelopeMessages}: the message layer both cairn WebSocket protocols
(L{cairn.transport.websocket.ServerProtocol} and C{ClientProtocol}) share
-- one envelope per binary message, autobahn's per-message hooks and its
read and write paths cut to what cairn uses (issue 19), the Close on an
over-long message, L{IFrameTransport}'s writes and closes -- and the
shedding of autobahn's per-connection state once a WebSocket is open
(L{_shed}, issue 20).

Why separate: it is what a connection does once open, the same on both
sides; L{cairn.transport.websocket} keeps what differs per side (the
opening handshake's checks, the per-source limit, the output guard) and
the factories (#18: no module over 399 lines).
"""

import random

from autobahn.websocket.protocol import WebSocketProtocol

from cairn.transport.autobahn_compat import mask_payload
from cairn.transport.held import HeldFrames
from cairn.wire.constants import CloseCode
from cairn.wire.envelope import EnvelopeError, decode

#: autobahn's per-connection state that holds its initial value for an
#: open WebSocket's life (close, timeout and auto-ping bookkeeping): class
#: defaults here, deleted from the instance at open (see L{_shed}).
_AT_REST = {
    "wasClean": False,
    "closedByMe": False,
    "failedByMe": False,
    "droppedByMe": False,
    "wasNotCleanReason": None,
    "wasServerConnectionDropTimeout": False,
    "wasOpenHandshakeTimeout": False,
    "wasCloseHandshakeTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "openHandshakeTimeoutCall": None,
    "serverConnectionDropTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "autoPingTimeoutCall": None,
    "autoPingPending": None,
    "autoPingPendingCall": None,
    "autoPingPendingSeq": 0,
    "autoPingPendingSent": None,
    "trackedTimings": None,
    "_perMessageCompress": None,
    "ticket": None,
}
#: The states in which autobahn's parser reads frames (C{consumeData}).
_CLOSABLE = (WebSocketProtocol.STATE_OPEN, WebSocketProtocol.STATE_CLOSING)
#: What autobahn reads only during the opening handshake (autobahn 26.x).
_HANDSHAKE_ONLY = (
    "_wskey",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
)


def _shed(protocol):
    """
    Once a WebSocket is open, keep in its instance dict only what differs
    from L{_AT_REST} and is still read, in a dict sized to it: autobahn
    sets ~70 attributes per connection (a 1.6 KB dict), fewer than 43 fit
    in the next size down (0.8 KB; issue 20). Each attribute autobahn sets
    again later (at close) goes back into the instance.
    """
    state = protocol.__dict__
    # Only the few set on the instance (L{cairn.transport.websocket_setup}
    # sets none of them) are looked at.
    for name in _AT_REST.keys() & state.keys():
        if state[name] is _AT_REST[name]:
            del state[name]
    for name in _HANDSHAKE_ONLY:
        state.pop(name, None)
    protocol.__dict__ = dict(state)


class _EnvelopeMessages(HeldFrames):
    """What the server and client WebSocket protocols share (a read's writes sent at its end: L{HeldFrames})."""

    sink = None
    #: Closing is a handshake one side starts: after a cairn Close only its
    #: sender starts it (see L{cairn.session.connection}).
    closing_handshake = True
    #: A message's frames while it arrives (autobahn's hooks, below); none
    #: between messages, and none at all for a message taken whole by
    #: L{processData}.
    message_data = frame_data = None

    @property
    def peer_address(self) -> str:
        return str(self.peer)

    def onOpen(self):
        # Once open, autobahn keeps the upgrade request or response (raw
        # bytes and parsed headers) and an empty send queue (a 760-byte
        # deque) for the connection's life. cairn needs neither: the queue
        # is used only by sends with C{sync} or C{chopsize}, which cairn never
        # makes (an empty tuple answers the C{len} autobahn asks of it).
        # About 2 KB per WebSocket session (issue 20).
        self.http_headers = {}
        self.http_request_data = self.http_response_data = b""
        self.send_queue = ()
        _shed(self)
        self.sink.connection_made(self)

    #: While L{processData} delivers a read's whole frames: the bytes that
    #: arrive meanwhile (a transport calling C{dataReceived} from within
    #: C{onMessage}), kept to go behind them.
    _pending = None

    def _dataReceived(self, data):
        if self._pending is not None:
            self._pending.append(data)
            return
        self.handling(self._read, data)

    _read = WebSocketProtocol._dataReceived

    # Straight to autobahn's frame parser: its Twisted adapter's
    # dataReceived adds only a debug log event per read (three lazy
    # arguments built whether or not anything logs at debug level).
    dataReceived = _dataReceived

    def processData(self):
        """
        Whole binary frames -- what every cairn envelope is -- delivered
        straight to C{onMessage}; anything else by autobahn's frame parser.

        autobahn parses a frame in two passes (header, then payload), each
        through C{processData}, and passes it through C{onFrameBegin},
        C{onFrameData} and C{onFrameEnd} and the message hooks, with their
        checks for text, compression, fragments and control frames: 66,700
        instructions per 1,100-byte frame received (callgrind, 16 frames per
        read, the envelope decode not included; issue 19). Here a frame
        that is the whole of a binary message, masked as the side requires,
        within both size limits and entirely in the buffer, costs one header
        read and the unmask; the payload, the masking (as autobahn's
        C{create_xor_masker}, L{mask_payload}) and what C{onMessage} gets
        are the same. All such frames at the start of the buffer are taken
        in one call and the buffer is cut once after them: cut after each
        frame, the rest of a read was copied once per frame (about 35,000
        more instructions per 1,100-byte message at 64 frames per read, in
        memory). A whole close frame after them with a code and no reason
        goes straight to C{onCloseFrame} (L{_whole_close}). Everything else
        -- other control frames, text, fragments, compression, a frame over
        a limit or not yet whole, an unminimal length, a frame masked the
        wrong way, a WebSocket not open -- is autobahn's, so its checks and
        close codes are unchanged.
        """
        data = self.data
        size = len(data)
        pos = 0
        if (
            self.current_frame is not None
            or self.inside_message
            or self._perMessageCompress is not None
            or self.logFrames
            or self.autoPingTimeoutCall is not None
        ):
            return WebSocketProtocol.processData(self)
        # What cannot change while this read's whole frames are delivered
        # (only autobahn's parser and opening handshake set it), read once.
        server = self.factory.isServer
        limit = min(self.maxFramePayloadSize or size, self.maxMessagePayloadSize or size)
        pending = self._pending = []
        try:
            while (
                size - pos > 1
                and data[pos] == 0x82  # FIN, no RSV, binary
                and self.state == WebSocketProtocol.STATE_OPEN  # onMessage may close
            ):
                masked = data[pos + 1] & 0x80
                length = data[pos + 1] & 0x7F
                start = pos + 2
                if length == 126:  # 16-bit length; below 126 it is not minimal (autobahn's error)
                    length = int.from_bytes(data[start : start + 2], "big") if size - pos > 3 else 0
                    length = length if length >= 126 else 0
                    start += 2
                elif length == 127:  # 64-bit length: above cairn's limits
                    length = 0
                if masked:
                    start += 4
                end = start + length
                if not (bool(masked) == server and 0 < length <= limit and size >= end):
                    break
                payload = data[start:end]
                if masked:
                    payload = mask_payload(data[start - 4 : start], payload)
                pos = end
                self.onMessage(payload, True)
        finally:
            del self._pending
        close = self._whole_close(data, pos, size, server)
        if close is not None:
            pos, code = close
        elif pos == 0:
            return WebSocketProtocol.processData(self)
        self.data = b"".join((data[pos:], *pending)) if pending else data[pos:]
        if close is not None:
            self.onCloseFrame(code, None)  # what autobahn's processControlFrame calls
        return len(self.data) > 0

    def _whole_close(self, data, pos, size, server):
        """
        C{(end, code)} of a whole close frame at C{pos} in C{data} with a
        code and no reason, or no payload at all -- what cairn's closing
        handshake sends --, masked as the side requires, on an open or
        closing WebSocket; otherwise None (autobahn's parser reads it).
        autobahn reads such a frame in two passes through a frame header
        object, a masker and three hooks before C{onCloseFrame}, which
        checks the code (issue 19).
        """
        if size - pos < 2 or data[pos] != 0x88 or self.state not in _CLOSABLE:  # 0x88: FIN, no RSV, close
            return None
        masked, length = data[pos + 1] & 0x80, data[pos + 1] & 0x7F
        start = pos + 6 if masked else pos + 2
        end = start + length
        if bool(masked) != server or length not in (0, 2) or size < end:
            return None
        if not length:
            return end, None
        code = data[start:end]
        if masked:
            code = mask_payload(data[start - 4 : start], code)
        return end, int.from_bytes(code, "big")

    def sendData(self, data, sync=False, chopsize=None):
        # autobahn's, for the one way cairn sends (no sync, no chopsize,
        # nothing queued, no octet log): a transport write, without the
        # debug log event autobahn builds per write (three lazy arguments)
        # or its wire-level traffic counter, which cairn never reads.
        if sync or chopsize or self.send_queue or self.logOctets:
            WebSocketProtocol.sendData(self, data, sync, chopsize)
        else:
            self.transport.write(data)

    def sendFrame(self, opcode, payload=b"", fin=True, rsv=0, mask=None, payload_len=None, chopsize=None, sync=False):
        """
        autobahn's C{sendFrame} for the frames cairn sends (a whole frame,
        no reserved bits, a payload below 64 KiB, the mask drawn here):
        the same bytes, written at once (issue 19).

        autobahn's builds the frame through the checks and options of every
        case it supports (fuzzing lengths, explicit masks, frame logging,
        chopped or synchronous sends), counts it in its traffic statistics
        (which cairn never reads) and passes it through C{sendData}. The
        mask is drawn as autobahn draws it (C{random.getrandbits(32)}, big
        endian) and applied as C{create_xor_masker} would
        (L{cairn.transport.autobahn_compat.mask_payload}). Anything else is
        autobahn's.
        """
        length = len(payload)
        if (
            not fin
            or rsv
            or mask is not None
            or payload_len is not None
            or chopsize
            or sync
            or opcode > 15
            or length > 0xFFFF
            or self.logFrames
            or self.logOctets
            or self.send_queue
        ):
            return WebSocketProtocol.sendFrame(self, opcode, payload, fin, rsv, mask, payload_len, chopsize, sync)
        self._write_frame(opcode, payload, length)

    def _write_frame(self, opcode, payload, length):
        """L{sendFrame}'s own case: a whole frame without reserved bits, C{length} (of C{payload}) below 64 KiB."""
        if self.maskServerFrames if self.factory.isServer else self.maskClientFrames:
            key = random.getrandbits(32).to_bytes(4, "big")
            if length and self.applyMask:
                payload = mask_payload(key, payload)
            masked = 0x80
        else:
            key = b""
            masked = 0
        if length < 126:
            header = bytes((0x80 | opcode, masked | length))
        else:
            header = bytes((0x80 | opcode, masked | 126, length >> 8, length & 0xFF))
        frame = b"".join((header, key, payload))
        if not self.hold(frame):
            self.transport.write(frame)

    # autobahn's per-message hooks, without what cairn does not use. Its
    # defaults pass every message through two method layers each, collect
    # every frame in a list of its own before copying it into the message's,
    # and after C{onMessage} "fire" the message to observers (a txaio future
    # and an errback per message, about a tenth of autobahn's receive CPU):
    # cairn registers no observer and sets no timing tracking. The size
    # limits are autobahn's own check (C{onMessageFrameBegin}); a message's
    # frames are dropped once it is delivered (autobahn kept the last one).

    def _onMessageBegin(self, isBinary):
        self.message_is_binary = isBinary
        self.message_data = []
        self.message_data_total_length = 0

    _onMessageFrameBegin = WebSocketProtocol.onMessageFrameBegin

    def _onMessageFrameData(self, payload):
        if not self.failedByMe:
            self.message_data.append(payload)

    def _onMessageFrameEnd(self):
        self.frame_data = None

    def _onMessageEnd(self):
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            self.message_data = None
            self.onMessage(payload, self.message_is_binary)

    def onMessage(self, payload, isBinary):
        if not isBinary:
            self.sink.framing_error(CloseCode.MALFORMED_ENVELOPE, "text WebSocket message")
            return
        try:
            envelope = decode(payload, self.factory.settings.max_payload)
        except EnvelopeError as e:
            self.sink.framing_error(e.code, e.reason)
            return
        self.sink.envelope_received(envelope)
        if self.ticket is not None:  # not a call per message once the session is up (issue 19)
            self._envelope_handled()

    def _envelope_handled(self):
        """Hook of the server side while it holds a per-source handshake C{ticket}."""

    def onClose(self, wasClean, code, reason):
        if self.sink is not None:
            sink, self.sink = self.sink, None
            sink.connection_lost(reason)

    def _max_message_size_exceeded(self, msg_size, max_msg_size, reason):
        # autobahn's hook for an over-long message: say why in cairn terms
        # first, then let autobahn fail the WebSocket (close code 1009).
        if self.sink is not None:
            self.sink.framing_error(
                CloseCode.PAYLOAD_TOO_LARGE,
                f"message of {msg_size} bytes above maximum {max_msg_size}",
            )
        super()._max_message_size_exceeded(msg_size, max_msg_size, reason)

    # IFrameTransport

    def write_envelope(self, data: bytes) -> None:
        # Once the WebSocket is closing, autobahn raises Disconnected; the
        # session is about to detach (and resend after a Reconnect), so the
        # write is dropped like bytes written to a closing TCP socket.
        if self.state != self.STATE_OPEN:
            return
        length = len(data)
        if self._perMessageCompress is None and length <= self.maxMessagePayloadSize:
            # What sendMessage does for cairn's messages (binary, one frame:
            # autoFragmentSize 0, no compression negotiated), without its
            # argument asserts, counters and option checks (about 0.8 us);
            # sendFrame's own case without its call and option checks.
            if length <= 0xFFFF and not (self.logFrames or self.logOctets or self.send_queue):
                self._write_frame(2, data, length)
            else:
                self.sendFrame(opcode=2, payload=data)
        else:
            self.sendMessage(data, isBinary=True)  # compresses, or refuses an oversized one
        guard = getattr(self, "_guard", None)
        if guard is not None:
            guard.check()

    def lose(self, abort: bool = False) -> None:
        if abort:
            # The session decided this abort and logged why; without this
            # autobahn adds a warning "dropping connection ... : None" (its
            # wasClean is read only by that line and by onClose, which
            # ignores it).
            self.wasClean = True
            self.dropConnection(abort=True)
        else:
            self.sendClose(code=1000)


for _name, _value in _AT_REST.items():
    setattr(_EnvelopeMessages, _name, _value)
