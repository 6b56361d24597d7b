"""
The web console: a few static files (HTML, CSS, JavaScript modules) served
by the management listener at C{/ui/}, talking to the management API with
the operator's bearer token.  See docs/console.md.
"""

from cairn.management.console.resource import ConsoleRoot

__all__ = ["ConsoleRoot"]
