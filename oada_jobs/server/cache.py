"""A least-recently-used map bounded by the bytes of its entries.

:class:`SizedLRU` owns only the bookkeeping: which entries there are, in what
order they were used, and what each is accounted to weigh. It never measures
anything itself (its owner says what an entry weighs, and says so again when
that changes) and never evicts on its own: its owner calls :meth:`SizedLRU.evict`
when dropping entries is safe (the store, for one, only once nothing
uncommitted is cached).

Large entries (over a sixteenth of the budget) are evicted before any small
one: one big document or change must not push out the thousands of small
ones a job service keeps using. Among large ones, and then among small ones,
the least recently used goes first. An entry larger than the whole budget is
dropped at the next :meth:`SizedLRU.evict`.

Imports nothing from the package; must not import the framework or the client.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["LARGE_FRACTION", "SizedLRU"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: An entry weighing more than ``budget // LARGE_FRACTION`` is evicted first.
LARGE_FRACTION = 16


class SizedLRU(Generic[K, V]):
    """Entries in order of use, with the sum of their sizes kept against a budget.

    *budget* is in bytes; *max_entries* (optional) bounds the count as well.

    >>> cache = SizedLRU[str, str](1024)
    >>> cache.put("a", "x", 100)
    >>> cache.get("a"), cache.bytes
    ('x', 100)
    """

    __slots__ = ("_bytes", "_entries", "_large", "budget", "max_entries")

    def __init__(self, budget: int, *, max_entries: int | None = None) -> None:
        self.budget = budget
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        #: Keys of the large entries, least recently used first.
        self._large: OrderedDict[K, None] = OrderedDict()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """The accounted size of every entry together."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[K]:
        """Keys, least recently used first."""
        return iter(self._entries)

    def values(self) -> list[V]:
        """Every value, least recently used first."""
        return [value for value, _ in self._entries.values()]

    def get(self, key: K) -> V | None:
        """The value of *key* (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        if key in self._large:
            self._large.move_to_end(key)
        return entry[0]

    def peek(self, key: K) -> V | None:
        """The value of *key*, leaving the order as it is."""
        entry = self._entries.get(key)
        return entry[0] if entry is not None else None

    def put(self, key: K, value: V, size: int) -> None:
        """Add or replace *key* as the most recently used entry, weighing *size* bytes."""
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
            self._large.pop(key, None)
        entries[key] = (value, size)
        self._bytes += size
        if size > self.budget // LARGE_FRACTION:
            self._large[key] = None

    def resize(self, key: K, size: int) -> None:
        """Account *key* at *size* bytes from now on (its place in the order stays)."""
        entry = self._entries.get(key)
        if entry is None or entry[1] == size:
            return
        self._entries[key] = (entry[0], size)
        self._bytes += size - entry[1]
        if size > self.budget // LARGE_FRACTION:
            self._large[key] = None
        else:
            self._large.pop(key, None)

    def replace(self, key: K, value: V, size: int) -> None:
        """Give *key* a new value weighing *size* bytes, leaving its place in the order as it is."""
        if key in self._entries:
            self._entries[key] = (value, self._entries[key][1])
            self.resize(key, size)

    def pop(self, key: K) -> V | None:
        """Remove *key*; its value, or None if it was not there."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._bytes -= entry[1]
        self._large.pop(key, None)
        return entry[0]

    def evict(self, dropped: Callable[[K, V], None] | None = None) -> int:
        """Drop entries until the budget (and *max_entries*) hold; how many were dropped.

        *dropped*, if given, is called with each key and value dropped.
        """
        entries = self._entries
        limit = self.max_entries
        if self._bytes <= self.budget and (limit is None or len(entries) <= limit):
            return 0
        large = self._large
        count = 0
        while self._bytes > self.budget and large:
            key, _ = large.popitem(last=False)
            value, size = entries.pop(key)
            self._bytes -= size
            count += 1
            if dropped is not None:
                dropped(key, value)
        while entries and (
            self._bytes > self.budget or (limit is not None and len(entries) > limit)
        ):
            key, (value, size) = entries.popitem(last=False)
            self._bytes -= size
            large.pop(key, None)
            count += 1
            if dropped is not None:
                dropped(key, value)
        return count

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._large.clear()
        self._bytes = 0
