"""A large document whose top-level members are loaded one at a time.

A job service files every finished job into one day list, so a list can hold
hundreds of thousands of links. The store keeps such a document *keyed*
(:mod:`oada_jobs.server.store`): one SQLite row per top-level member, and a
small row for the rest (its *head*: ``_id``, ``_rev``, ``_type``, ``_meta``
and any other key starting with ``_``). In memory it is a :class:`KeyedDoc`:
a ``dict`` holding the head and the members used since the store last
trimmed its caches, which fetches any other member from SQLite the first
time it is looked up, so a write into the list costs the same whatever its
length, and its memory does not grow with it.

Only key-wise access goes through SQLite: ``in``, ``[]``, :meth:`get`,
assignment, ``del`` and :meth:`pop`, which is all the resource graph uses to
walk into, merge into and delete from a document. Iterating, ``len()`` or
encoding the dict itself sees only what is in memory; :meth:`whole` gives
the full document (one SQLite read of every member). This module owns the
in-memory side only; the store owns the rows and decides which documents are
keyed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["KeyedDoc", "MemberLoader", "is_member"]

#: Loads one member: ``(found, value)``. Called for a key not in memory.
MemberLoader = Callable[[str], tuple[bool, Any]]
_ABSENT = object()


def is_member(key: str) -> bool:
    """Whether *key* is stored as a row of its own in a keyed document (not ``_``-prefixed)."""
    return not key.startswith("_")


class KeyedDoc(dict[str, Any]):
    """A document of which only the head and the members in use are in memory.

    *load* fetches one member from storage. Members deleted since the last
    :meth:`committed` are remembered, so a later lookup does not fetch their
    old rows again before the delete is written.
    """

    __slots__ = ("_gone", "_load", "_whole")

    def __init__(
        self,
        head: dict[str, Any],
        load: MemberLoader,
        whole: Callable[[], Iterable[tuple[str, Any]]],
    ) -> None:
        super().__init__(head)
        self._load = load
        self._whole = whole
        self._gone: set[str] = set()

    # -- key-wise access, fetching members on first use --------------------------

    def _fetch(self, key: object) -> bool:
        """Bring *key* into memory if storage has it; whether it is there now."""
        if not isinstance(key, str) or not is_member(key) or key in self._gone:
            return False
        found, value = self._load(key)
        if found:
            dict.__setitem__(self, key, value)
        return found

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or self._fetch(key)

    def __getitem__(self, key: str) -> Any:
        value = dict.get(self, key, _ABSENT)
        if value is _ABSENT:
            if not self._fetch(key):
                raise KeyError(key)
            value = dict.__getitem__(self, key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = dict.get(self, key, _ABSENT)
        if value is _ABSENT:
            if not self._fetch(key):
                return default
            value = dict.__getitem__(self, key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if not dict.__contains__(self, key):
            # The old value (and its links) comes in first, so that the store
            # knows what this write replaces.
            self._fetch(key)
        self._gone.discard(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: str) -> None:
        if not self.__contains__(key):
            raise KeyError(key)
        dict.__delitem__(self, key)
        if is_member(key):
            self._gone.add(key)

    def pop(self, key: str, *default: Any) -> Any:
        if not self.__contains__(key):
            if default:
                return default[0]
            raise KeyError(key)
        value = dict.pop(self, key)
        if is_member(key):
            self._gone.add(key)
        return value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if not self.__contains__(key):
            self[key] = default
        return dict.__getitem__(self, key)

    # -- for the store ------------------------------------------------------------

    def head(self) -> dict[str, Any]:
        """The keys that are not members (stored in the resource's own row)."""
        return {k: v for k, v in dict.items(self) if not is_member(k)}

    def resident(self, key: str) -> bool:
        """Whether member *key* is in memory, or deleted and not yet written."""
        return dict.__contains__(self, key) or key in self._gone

    def state(self, key: str) -> tuple[bool, Any]:
        """``(True, value)`` of a member in memory; ``(False, None)`` if deleted."""
        value = dict.get(self, key, _ABSENT)
        return (False, None) if value is _ABSENT else (True, value)

    def members_in_memory(self) -> list[str]:
        """The members in memory now."""
        return [k for k in dict.keys(self) if is_member(k)]

    def unload(self) -> list[str]:
        """Drop every member from memory (they are all written); the keys dropped.

        The dict is emptied and refilled with the head rather than deleted
        from key by key: a dict keeps the table it grew to, and every later
        walk over it (:meth:`head`, :meth:`members_in_memory`, on each write)
        would go through the slots of members loaded once, 20,000 after a
        large PUT.
        """
        keys = self.members_in_memory()
        head = self.head()
        dict.clear(self)
        dict.update(self, head)
        return keys

    def committed(self) -> None:
        """Forget the deletes: the store has written them."""
        self._gone.clear()

    def whole(self) -> dict[str, Any]:
        """The full document as a plain dict: stored members, then what memory changed."""
        out = self.head()
        gone = self._gone
        for key, value in self._whole():
            if key not in gone:
                out[key] = value
        for key in self.members_in_memory():
            out[key] = dict.__getitem__(self, key)
        return out
