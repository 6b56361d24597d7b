"""
The C{twistd cairn} plugin.

Kept to one call, importing nothing from C{cairn}: twistd imports every
plugin module just to list them, and C{cairn.tap} loads only when chosen.
"""

from twisted.application.service import ServiceMaker

cairn = ServiceMaker(
    "cairn",
    "cairn.tap",
    "cairn server node: mailbox, relay, sync hub",
    "cairn",
)
