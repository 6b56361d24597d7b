"""
Callbacks a store calls when something was written by another writer.

A store that does not own its data alone (the JetStream stores) tells
its service through these that, for example, a message for a recipient
was stored elsewhere, so that delivery does not depend on this process
having made the write. The local stores (SQLite, memory) are their data's
only writer and never call them.
"""

from twisted.logger import Logger

log = Logger()


class Watchers:
    """A set of callbacks, each called with the same arguments; one failing does not stop the others."""

    def __init__(self):
        self._callbacks = []

    def add(self, callback):
        self._callbacks.append(callback)

    def __call__(self, *args):
        for callback in list(self._callbacks):
            try:
                callback(*args)
            except Exception:
                log.failure("a store watcher failed")
