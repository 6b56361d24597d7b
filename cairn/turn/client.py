"""
The peer side of TURN credentials, over a client L{Session} with a node.

    from cairn.turn.client import request_relay
    relay = yield request_relay(session)          # or request_relay(session, ttl=600)
    relay["servers"], relay["username"], relay["password"], relay["expires_at"]

RelayResponse carries no request id: a node answers the RelayRequests of
one session in order, one response each, so replies are matched first in,
first out per session. A node that offers no TURN service answers with
the error form, and the Deferred fails with L{TurnUnavailable}; a session
that ends first fails it with its L{SessionClosed}.
"""

from collections import deque

from twisted.internet import defer
from twisted.logger import Logger

from cairn.turn import messages
from cairn.wire.constants import MessageType
from cairn.wire.schema import BodyError

log = Logger()


class TurnUnavailable(Exception):
    """The node has no TURN service to offer; C{reason} is its explanation."""

    def __init__(self, reason: str):
        super().__init__(f"no TURN relay: {reason}")
        self.reason = reason


class TurnClient:
    """The RelayResponse dispatcher of one client L{Peer}."""

    def __init__(self, peer):
        self.peer = peer
        self._waiting = {}  # session id -> deque of Deferreds
        # The client policy (cairn.session.guards.log_only); a bad body fails the request in _response itself.
        peer.register_guarded({MessageType.RELAY_RESPONSE: self._response}, "TURN client")
        peer.add_observer(self)

    def request(self, session, ttl=None):
        """Send a RelayRequest on C{session}; see the module docstring."""
        if session.closed is not None:
            return defer.fail(session.closed)
        body = messages.relay_request(ttl)
        messages.parse_relay_request(body)  # a bad ttl is the caller's error, raised here
        d = defer.Deferred()
        queue = self._waiting.setdefault(session.session_id, deque())
        queue.append(d)
        try:
            session.send(MessageType.RELAY_REQUEST, body)
        except BaseException:
            queue.remove(d)
            raise
        return d

    def _response(self, session, body):
        queue = self._waiting.get(session.session_id)
        if not queue:
            log.warn("TURN: a RelayResponse nobody asked for")
            return
        d = queue.popleft()
        if not queue:
            del self._waiting[session.session_id]
        try:
            relay = messages.parse_relay_response(body)
        except BodyError as e:
            d.errback(e)
            return
        if "error" in relay:
            d.errback(TurnUnavailable(relay["error"]))
        else:
            d.callback(relay)

    # Peer observer

    def session_closed(self, session):
        for d in self._waiting.pop(session.session_id, ()):
            d.errback(session.closed)


def turn_client(peer) -> TurnClient:
    """The L{TurnClient} of C{peer}, created on first use (also C{Client.turn})."""
    return peer.extension(TurnClient)


def request_relay(session, ttl=None):
    """
    Ask the node of C{session} for TURN servers and a credential.

    Fires with C{{"servers": [...], "username", "password", "ttl",
    "expires_at"}}, or fails with L{TurnUnavailable}.

    @param ttl: seconds the credential should last (the node caps it).
    """
    return turn_client(session.local).request(session, ttl)
