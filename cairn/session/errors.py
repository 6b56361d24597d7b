"""The exceptions the session layer raises and catches."""

from cairn.wire.constants import CloseCode


class ProtocolViolation(Exception):
    """The peer broke the protocol; the session ends with C{code}."""

    def __init__(self, code: CloseCode, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class SessionClosed(Exception):
    """The session has ended; C{code} and C{reason} say why."""

    def __init__(self, code: int, reason: str):
        super().__init__(f"session closed ({code}): {reason}")
        self.code = code
        self.reason = reason
