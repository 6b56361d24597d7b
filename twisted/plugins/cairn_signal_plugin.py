"""
The C{twistd cairn-signal} plugin: the signaling server.

Kept to one call, importing nothing from C{cairn}: twistd imports every
plugin module just to list them, and C{cairn.signal_tap} loads only when chosen.
"""

from twisted.application.service import ServiceMaker

cairn_signal = ServiceMaker(
    "cairn-signal",
    "cairn.signal_tap",
    "cairn signaling server: routes PeerAnnounce between paired peers",
    "cairn-signal",
)
