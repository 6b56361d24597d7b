"""
The C{twistd cairn-signal} command: the signaling server's options and service.

Settings come from the environment (L{cairn.config.Config}):
C{CAIRN_SIGNAL_LISTEN_ADDR} (C{host:port}, or a Twisted endpoint string
such as C{ssl:8443:privateKey=key.pem:certKey=cert.pem} for TLS) and the
optional bearer token C{CAIRN_SIGNAL_TOKEN} (or C{CAIRN_SIGNAL_TOKEN_FILE}).
The server keeps nothing on disk.
"""

from __future__ import annotations

import os
import re
from typing import ClassVar

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.logger import Logger
from twisted.python import usage

from cairn.config import Config, ConfigError

log = Logger()

#: Endpoint types accepted as they are; anything else must be host:port.
_ENDPOINT_TYPES = ("tcp", "tcp6", "ssl", "tls", "unix", "systemd")
_HOST_PORT = re.compile(r"^(?:\[([^\]]*)\]|([^:\[\]]*)):([0-9]{1,5})$")


def listen_endpoint(text: str) -> str:
    """
    Turn C{CAIRN_SIGNAL_LISTEN_ADDR} into a server endpoint string.

    C{"0.0.0.0:8443"} becomes C{"tcp:8443:interface=0.0.0.0"} (C{"[::1]:8443"}
    and C{":8443"} work too); a Twisted endpoint string is kept as it is.

    @raise ValueError: neither form.
    """
    text = text.strip()
    kind = text.split(":", 1)[0].lower()
    if kind in _ENDPOINT_TYPES and ":" in text:
        return text
    match = _HOST_PORT.match(text)
    if not match or int(match.group(3)) > 65535:
        raise ValueError(f"{text!r} is not host:port (use e.g. 0.0.0.0:8443) or an endpoint string")
    host = match.group(1) if match.group(1) is not None else match.group(2)
    port = match.group(3)
    if not host:
        return f"tcp:{port}"
    return f"tcp:{port}:interface={host.replace(':', chr(92) + ':')}"


class Options(usage.Options):
    """Options of C{twistd cairn-signal}."""

    longdesc = (
        "Run a cairn signaling server. It listens on CAIRN_SIGNAL_LISTEN_ADDR "
        "(host:port or a Twisted endpoint string, e.g. ssl:... for TLS), "
        "requires CAIRN_SIGNAL_TOKEN (or _FILE) as a bearer token when set, "
        "and keeps nothing on disk."
    )
    optParameters: ClassVar[list] = [
        ["listen", None, None, "Overrides CAIRN_SIGNAL_LISTEN_ADDR [default: 0.0.0.0:8443]."],
    ]

    def postOptions(self) -> None:
        try:
            config = Config.from_env(os.environ)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        raw = self["listen"] or config.signal_listen_addr
        try:
            self.endpoint = listen_endpoint(raw)
        except ValueError as e:
            where = "--listen" if self["listen"] else "CAIRN_SIGNAL_LISTEN_ADDR"
            raise usage.UsageError(f"{where}: {e}") from None
        self.token = config.signal_token


class SignalService(MultiService):
    """The signaling listener; logs the address it is bound to."""

    def __init__(self, endpoint: str, factory):
        super().__init__()
        self.factory = factory
        self.listener = strports.service(endpoint, factory)
        self.listener.setServiceParent(self)

    def startService(self):
        super().startService()
        # Twisted's private _waitingForPort (StreamServerEndpointService, no public accessor): the port's Deferred.
        self.listener._waitingForPort.addCallback(self._listening)

    @staticmethod
    def _listening(port):
        address = port.getHost()
        log.info(
            "listening: signaling on {host}:{port}",
            host=getattr(address, "host", address),
            port=getattr(address, "port", ""),
        )
        return port


def makeService(options: Options) -> IService:
    """The signaling server for parsed C{options}."""
    from twisted.internet import reactor

    from cairn.signaling.server import SignalingFactory

    return SignalService(options.endpoint, SignalingFactory(reactor, token=options.token))
