"""cairn server node: an always-on cairn peer (mailbox, relay, sync hub)."""

__version__ = "0.1.0"
