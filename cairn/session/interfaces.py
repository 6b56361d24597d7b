"""The seams between sessions, transports and the services above them."""

from zope.interface import Attribute, Interface


class IFrameTransport(Interface):
    """
    What a session needs from a byte transport (TCP stream or WebSocket).

    A transport adapter turns its wire unit into L{Envelope}s and hands
    them to L{IConnectionSink.envelope_received}; it sends whole envelopes
    through L{write_envelope}.
    """

    peer_address = Attribute("A printable peer address, for opt-in logging.")
    expected_peer_id = Attribute(
        "Optional. The peer id the transport was opened for (a relay circuit's"
        " other end), or None: a Reconnect arriving on it may resume only a"
        " session of that peer (docs/protocol.md §25.5)."
    )

    def write_envelope(data):
        """Send the bytes of exactly one envelope."""

    def lose(abort=False):
        """Close the transport (abort: drop without flushing)."""


class IConnectionSink(Interface):
    """What a transport adapter drives: one per transport connection."""

    def connection_made(transport):
        """The transport is up; C{transport} provides L{IFrameTransport}."""

    def envelope_received(envelope):
        """One whole envelope arrived."""

    def framing_error(code, reason):
        """The transport saw bytes that cannot be framed; it will be closed."""

    def connection_lost(reason):
        """The transport is gone."""


class ISession(Interface):
    """An established, authenticated session with one remote peer."""

    session_id = Attribute("16-byte session id.")
    remote_identity = Attribute("The remote peer's 32-byte Ed25519 key.")
    remote_peer_id = Attribute("The remote peer id (base58 multihash).")
    attached = Attribute("Whether a transport currently carries the session.")

    def send(type_code, body):
        """Seal and send a CBOR-encodable C{body} as an envelope of C{type_code}."""

    def open_channel(name):
        """Open a named channel; returns a L{Channel}."""

    def register_handler(type_code, handler):
        """Handle a custom type (0xF000-0xFFFF) on this session only."""

    def close(code=0, reason=""):
        """End the session with a Close carrying C{code}."""
