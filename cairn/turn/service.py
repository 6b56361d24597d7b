"""
The node side of TURN credentials (docs/protocol.md §22).

L{TurnService} answers every RelayRequest of a paired peer with one
RelayResponse: the configured TURN server URLs and a credential for that
peer, valid for C{min(requested ttl, max_ttl)} seconds from the injected
clock. A node without servers or without a secret answers with the error
form. Its handler is registered with L{register_service}: unpaired peers
are closed with NOT_PAIRED, a malformed RelayRequest with BAD_CBOR.

The secret never leaves this object: it is not logged, not in a repr,
not in any error.
"""

from twisted.logger import Logger

from cairn.session.guards import register_service
from cairn.turn import messages
from cairn.turn.credentials import turn_credentials
from cairn.wire.constants import MessageType

log = Logger()

#: Default (and largest) credential lifetime, seconds (CAIRN_TURN_TTL).
DEFAULT_TTL = 3600

NOT_CONFIGURED = "this node has no TURN relay configured"


class TurnService:
    """
    Hands paired peers TURN servers and REST API credentials.

    @param peer: the node's L{Peer}; RelayRequest is registered on it.
    @param trust: the L{ITrustStore} deciding who is paired.
    @param clock: an C{IReactorTime}; expiry is C{int(clock.seconds()) + ttl}.
    @param servers: TURN/STUN URLs (C{CAIRN_TURN_SERVERS}).
    @param secret: the shared secret (C{CAIRN_TURN_SECRET}), or None.
    @param max_ttl: the longest lifetime granted, seconds (C{CAIRN_TURN_TTL});
        also what a request without C{"ttl"} gets.
    """

    def __init__(self, peer, trust, clock, *, servers=(), secret=None, max_ttl=DEFAULT_TTL):
        self.trust = trust
        self.clock = clock
        self.servers = tuple(servers)
        self._secret = secret or None
        self.max_ttl = max(1, int(max_ttl))
        #: RelayResponses sent with credentials, and with the error form.
        self.granted = 0
        self.refused = 0
        register_service(peer, {MessageType.RELAY_REQUEST: self._relay_request}, "TURN credentials", trust=trust)
        if self.servers and self._secret is None:
            log.warn("CAIRN_TURN_SERVERS is set but CAIRN_TURN_SECRET is not: peers get no TURN credentials")
        elif self._secret is not None and not self.servers:
            log.warn("CAIRN_TURN_SECRET is set but CAIRN_TURN_SERVERS is empty: peers get no TURN servers")

    def __repr__(self):
        secret = "<redacted>" if self._secret is not None else None
        return f"<TurnService servers={self.servers!r} secret={secret} max_ttl={self.max_ttl}>"

    @property
    def configured(self) -> bool:
        """True if peers get servers and credentials."""
        return bool(self.servers) and self._secret is not None

    def grant(self, peer_id: str, ttl=None) -> dict:
        """The RelayResponse body for C{peer_id} asking for C{ttl} seconds (None: the maximum)."""
        if not self.configured:
            return messages.relay_refused(NOT_CONFIGURED)
        ttl = self.max_ttl if ttl is None else min(ttl, self.max_ttl)
        expires_at = int(self.clock.seconds()) + ttl
        username, password = turn_credentials(self._secret, peer_id, expires_at)
        return messages.relay_granted(self.servers, username, password, ttl, expires_at)

    def _relay_request(self, session, body):
        ttl = messages.parse_relay_request(body)
        response = self.grant(session.remote_peer_id, ttl)
        if "error" in response:
            self.refused += 1
        else:
            self.granted += 1
            log.debug(
                "TURN credential for {peer} until {expires_at}",
                peer=session.remote_peer_id,
                expires_at=response["expires_at"],
            )
        session.send(MessageType.RELAY_RESPONSE, response)


def secret_from_config(config):
    """
    The TURN secret of C{config}: C{turn_secret}, else read from
    C{turn_secret_file} (a L{Config} built directly rather than with
    C{from_env}, which has already read it).

    @raise ConfigError: naming C{CAIRN_TURN_SECRET_FILE} and the path,
        never the contents.
    """
    if config.turn_secret is not None or config.turn_secret_file is None:
        return config.turn_secret
    from cairn.config import secret_from_file

    values = {"turn_secret": None, "turn_secret_file": config.turn_secret_file}
    return secret_from_file(values, "turn_secret", "CAIRN_TURN_SECRET", "turn_secret_file")


def make_turn_service(config, peer, trust, clock):
    """The L{TurnService} of a node configured by C{config}."""
    return TurnService(
        peer,
        trust,
        clock,
        servers=config.turn_servers,
        secret=secret_from_config(config),
        max_ttl=config.turn_ttl,
    )
