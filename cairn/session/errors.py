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


class Rejected(Exception):
    """
    A request the node answered with a refusal code: the one coded error
    of the client side, subclassed per family (C{ForwardRejected},
    C{PublishRejected}, C{PairingRejected}).

    @cvar codes: the C{IntEnum} of the family's codes; C{code} is one of
        its members, or the bare int if this version does not know it.
    @cvar what: names the request in the message.
    """

    codes = None
    what = "request"

    def __init__(self, code, reason: str = ""):
        if self.codes is not None:
            try:
                code = self.codes(code)
            except ValueError:
                pass
        super().__init__(f"{self.what} rejected ({getattr(code, 'name', code)}): {reason}")
        self.code = code
        self.reason = reason
