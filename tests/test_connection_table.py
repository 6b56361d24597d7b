"""The connection state machine's table (L{cairn.session.connection.TABLE}) is complete and closed."""

from twisted.trial import unittest

from cairn.session import connection
from cairn.session.connection import ANY, Connection


class TableTests(unittest.TestCase):
    def test_every_state_answers_every_envelope(self):
        """Every state an envelope can arrive in has a row for any envelope type."""
        states = {state for state, _ in connection.TABLE}
        self.assertEqual(
            states, {"await_first", "await_final", "attaching", "await_response", "await_reconnect", "established"}
        )
        for state in states:
            self.assertIn((state, ANY), connection.TABLE, state)

    def test_next_states_exist(self):
        """Every next state in the table is a state of the table, closed, or None (stays)."""
        states = {state for state, _ in connection.TABLE}
        for key, (handler, after) in connection.TABLE.items():
            self.assertIn(after, states | {"closed", None}, key)
            self.assertIs(getattr(Connection, handler.__name__), handler, key)

    def test_unexpected_names_what_is_awaited(self):
        """Each state whose catch-all row refuses names the envelope it awaits."""
        for (state, _type_code), (handler, _) in connection.TABLE.items():
            if handler is Connection._unexpected:
                self.assertIn(state, connection.AWAITED)

    def test_sole_rows_are_the_table_rows(self):
        """SOLE_ROW gives, for its states, the row the table gives every envelope type, and holds every such state."""
        states = {state for state, _ in connection.TABLE}
        for state in states:
            types = {type_code for s, type_code in connection.TABLE if s == state}
            if types == {ANY}:
                self.assertIs(connection.SOLE_ROW[state], connection.TABLE[state, ANY], state)
            else:
                self.assertNotIn(state, connection.SOLE_ROW)
        self.assertEqual(set(connection.SOLE_ROW), {"attaching", "established"})

    def test_types_bound_once_are_the_members(self):
        """The message types the per-envelope paths compare with are the MessageType members themselves."""
        from cairn.session import channels, receiving
        from cairn.wire.constants import MessageType

        self.assertIs(connection._CLOSE, MessageType.CLOSE)
        self.assertIs(channels._DATA, MessageType.DATA)
        self.assertEqual(
            (receiving._DATA, receiving._RECONNECT, receiving._KEEPALIVE),
            (MessageType.DATA, MessageType.RECONNECT, MessageType.KEEPALIVE),
        )
        for value in (receiving._DATA, receiving._RECONNECT, receiving._KEEPALIVE):
            self.assertIs(type(value), MessageType)
