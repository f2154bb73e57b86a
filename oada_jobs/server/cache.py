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

    __slots__ = ("_bytes", "_entries", "_large", "_sizes", "budget", "max_entries")

    def __init__(self, budget: int, *, max_entries: int | None = None) -> None:
        self.budget = budget
        self.max_entries = max_entries
        # Values and their sizes in two maps rather than a (value, size) pair
        # per entry: the collector tracks a new tuple until a young
        # collection goes through it, which is rare once a cache churns at
        # its budget, and in a busy server's full collections these pairs
        # were more than half of all it went through (34,600 of 61,000).
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._sizes: dict[K, int] = {}
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
        return list(self._entries.values())

    def get(self, key: K) -> V | None:
        """The value of *key* (now the most recently used), or None."""
        entries = self._entries
        if key not in entries:
            return None
        entries.move_to_end(key)
        if key in self._large:
            self._large.move_to_end(key)
        return entries[key]

    def peek(self, key: K) -> V | None:
        """The value of *key*, leaving the order as it is."""
        return self._entries.get(key)

    def put(self, key: K, value: V, size: int) -> None:
        """Add or replace *key* as the most recently used entry, weighing *size* bytes."""
        entries = self._entries
        if key in entries:
            del entries[key]
            self._bytes -= self._sizes[key]
            self._large.pop(key, None)
        entries[key] = value
        self._sizes[key] = size
        self._bytes += size
        if size > self.budget // LARGE_FRACTION:
            self._large[key] = None

    def resize(self, key: K, size: int) -> None:
        """Account *key* at *size* bytes from now on (its place in the order stays)."""
        old = self._sizes.get(key)
        if old is None or old == size:
            return
        self._sizes[key] = size
        self._bytes += size - old
        if size > self.budget // LARGE_FRACTION:
            self._large[key] = None
        else:
            self._large.pop(key, None)

    def replace(self, key: K, value: V, size: int) -> None:
        """Give *key* a new value weighing *size* bytes, leaving its place in the order as it is."""
        if key in self._entries:
            self._entries[key] = value
            self.resize(key, size)

    def pop(self, key: K) -> V | None:
        """Remove *key*; its value, or None if it was not there."""
        entries = self._entries
        if key not in entries:
            return None
        self._bytes -= self._sizes.pop(key)
        self._large.pop(key, None)
        return entries.pop(key)

    def evict(self, dropped: Callable[[K, V], None] | None = None) -> int:
        """Drop entries until the budget (and *max_entries*) hold; how many were dropped.

        *dropped*, if given, is called with each key and value dropped.
        """
        entries = self._entries
        sizes = self._sizes
        limit = self.max_entries
        if self._bytes <= self.budget and (limit is None or len(entries) <= limit):
            return 0
        large = self._large
        count = 0
        while self._bytes > self.budget and large:
            key, _ = large.popitem(last=False)
            value = entries.pop(key)
            self._bytes -= sizes.pop(key)
            count += 1
            if dropped is not None:
                dropped(key, value)
        while entries and (
            self._bytes > self.budget or (limit is not None and len(entries) > limit)
        ):
            key, value = entries.popitem(last=False)
            self._bytes -= sizes.pop(key)
            large.pop(key, None)
            count += 1
            if dropped is not None:
                dropped(key, value)
        return count

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()
        self._sizes.clear()
        self._large.clear()
        self._bytes = 0
