"""
TURN credentials for paired peers (docs/protocol.md §22).

The node hands each paired peer the TURN servers of C{CAIRN_TURN_SERVERS}
and short-lived credentials in the TURN REST API form (coturn's
C{use-auth-secret}): username C{"<expiry>:<peer id>"}, password
C{base64(HMAC-SHA1(CAIRN_TURN_SECRET, username))}.

  - L{cairn.turn.credentials}: the derivation;
  - L{cairn.turn.messages}: RelayRequest / RelayResponse bodies;
  - L{cairn.turn.service}: the node side (L{TurnService});
  - L{cairn.turn.client}: the peer side (L{request_relay}).
"""
