"""
Node pinning on the device side (docs/protocol.md §20.7.1).

After its first successful pairing with a node, a device records the
node's peer id under the address it dialled; every later connection to
that address must reach the same peer id, or it fails with
L{NodeMismatch} naming both ids -- an impostor at the node's address
(evil-twin Wi-Fi, DNS or ARP spoofing, a stale address now held by
someone else) is refused before the device sends it anything.

L{MemoryPins} serves library users who pass no store; L{FilePins} keeps
the pins in a JSON file next to the device's identity key (the CLIs use
C{<identity>.pins}), mode 0600, replaced atomically on every change.
"""

import json
import os

from twisted.logger import Logger

log = Logger()


class NodeMismatch(Exception):
    """The node answering is not the one this device expects at that address."""

    def __init__(self, expected: str, actual: str, address: str = None):
        where = f" at {address}" if address else ""
        super().__init__(
            f"node identity mismatch{where}: expected {expected}, but the node answering is {actual} "
            "(if the node's identity really changed, remove the pin)"
        )
        self.expected = expected
        self.actual = actual
        self.address = address


class PinStoreError(Exception):
    """The pin file cannot be read or written; the message is one line."""


class MemoryPins:
    """Pins kept in memory: node address -> peer id."""

    def __init__(self, pins=None):
        self._pins = dict(pins or {})

    def get(self, address: str):
        """The peer id pinned for C{address}, or None."""
        return self._pins.get(address)

    def set(self, address: str, peer_id: str) -> None:
        """Pin C{peer_id} for C{address}."""
        self._pins[address] = peer_id

    def remove(self, address: str) -> None:
        self._pins.pop(address, None)

    def items(self):
        return dict(self._pins)


class FilePins(MemoryPins):
    """Pins in a JSON object file ({address: peer id}), written atomically with mode 0600."""

    def __init__(self, path: str):
        self.path = path
        super().__init__(self._read())

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise PinStoreError(f"cannot read the pin file {self.path}: {e}") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise PinStoreError(f"the pin file {self.path} is not a JSON object of address -> peer id")
        return data

    def set(self, address: str, peer_id: str) -> None:
        if self.get(address) == peer_id:
            return
        super().set(address, peer_id)
        self._write()

    def remove(self, address: str) -> None:
        super().remove(address)
        self._write()

    def _write(self):
        temporary = f"{self.path}.{os.getpid()}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(temporary, flags, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._pins, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except OSError as e:
            raise PinStoreError(f"cannot write the pin file {self.path}: {e.strerror}") from None


def pins_path(identity_path: str) -> str:
    """Where the CLIs keep the pins of the device whose key is at C{identity_path}."""
    return identity_path + ".pins"
