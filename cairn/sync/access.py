"""
Which topics a paired device may read and write on the sync hub
(docs/protocol.md §24.9).

A rule list is a tuple of patterns: C{"*"} (every topic), C{"prefix*"}
(every topic starting with C{prefix}) or an exact topic name. A device
without its own L{Access} gets the node's default: L{ALL} (every paired
device reads and writes every topic, right for one person's devices, the
default) or L{NONE} (the operator grants each device its topics,
C{CAIRN_SYNC_ACCESS=none}).
"""

import attr
from twisted.internet import defer

#: Longest pattern list accepted for one device and mode.
MAX_PATTERNS = 256


@attr.s(frozen=True, auto_attribs=True)
class Access:
    """The topic patterns one device may read (subscribe to) and write (publish to)."""

    read: tuple = ()
    write: tuple = ()

    def may_read(self, topic: str) -> bool:
        return _matches(self.read, topic)

    def may_write(self, topic: str) -> bool:
        return _matches(self.write, topic)

    def to_json(self):
        return {"read": list(self.read), "write": list(self.write)}


ALL = Access(("*",), ("*",))
NONE = Access()
#: CAIRN_SYNC_ACCESS values.
DEFAULTS = {"all": ALL, "none": NONE}


def _matches(patterns, topic: str) -> bool:
    for pattern in patterns:
        if pattern.endswith("*"):
            if topic.startswith(pattern[:-1]):
                return True
        elif pattern == topic:
            return True
    return False


def parse_access(body) -> Access:
    """
    The L{Access} of a C{PUT /sync/{peer_id}/access} body
    C{{"read": [pattern], "write": [pattern]}} (a missing list is empty).

    @raise ValueError: naming what is wrong.
    """
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object with 'read' and 'write' lists, or null")
    unknown = sorted(set(body) - {"read", "write"})
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}: use 'read' and 'write'")
    lists = []
    for mode in ("read", "write"):
        patterns = body.get(mode, [])
        if not isinstance(patterns, list) or len(patterns) > MAX_PATTERNS:
            raise ValueError(f"'{mode}' must be a list of at most {MAX_PATTERNS} topic patterns")
        for pattern in patterns:
            if not isinstance(pattern, str) or not 1 <= len(pattern.encode("utf-8")) <= 255:
                raise ValueError(f"'{mode}': a pattern is a topic of 1 to 255 UTF-8 bytes, optionally ending in '*'")
            if "*" in pattern[:-1]:
                raise ValueError(f"'{mode}': '*' may only end a pattern ({pattern!r})")
        lists.append(tuple(dict.fromkeys(patterns)))
    return Access(*lists)


class Grants:
    """
    A sync store's cache of the grants, C{_access} ({device: L{Access}}):
    the part of L{cairn.sync.interfaces.ISyncStore} the stores share.
    """

    def access(self):
        return dict(self._access)

    def grant_of(self, device):
        return self._access.get(device)

    def _set_access(self, device, access):
        if access is None:
            self._access.pop(device, None)
        else:
            self._access[device] = access

    def catch_up_access(self, device):
        """The store is its data's only writer: what it holds is current."""
        return defer.succeed(True)
