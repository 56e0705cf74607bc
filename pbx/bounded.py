"""Bounded in-memory tables: every cache the server keeps has an expiry and a hard cap.

A table a peer can make grow (one entry per Call-ID, per user name, per address it sends from) must not grow
without end under hostile input, nor keep what it grew after the input stops. :class:`ExpiringCache` is the
shape every such cache takes here: entries expire ``ttl`` after they were stored, at most ``max_entries`` are
kept, and past the cap the oldest go first (in one pass of an eighth, so eviction costs O(1) per entry).
Evictions are counted (``evicted``) for the server's statistics. Pure: the caller passes ``now``.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Generic, TypeVar

__all__ = ["ExpiringCache"]

K = TypeVar("K")
V = TypeVar("V")

EVICT_FRACTION = 8  # past the cap, the oldest 1/8 of the entries go in one pass


class ExpiringCache(Generic[K, V]):
    """``key -> value`` kept ``ttl`` (in the caller's clock units) after it was stored, at most ``max_entries``.

    Insertion order is age order (a stored key moves to the end), so the oldest entries are the first ones.
    """

    def __init__(self, ttl: float, max_entries: int) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be positive and max_entries at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self.evicted = 0  # entries dropped by the cap before they expired
        self.expired = 0  # entries dropped by purge() because their time was up
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K, now: float) -> V | None:
        """The live value of ``key``, or None (absent or expired)."""
        entry = self._entries.get(key)
        if entry is None or now - entry[0] >= self.ttl:
            return None
        return entry[1]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def lookup(self, key: K, now: float) -> tuple[bool, V | None]:
        """``(found, value)``: tells a cached None from a miss."""
        entry = self._entries.get(key)
        if entry is None or now - entry[0] >= self.ttl:
            return False, None
        return True, entry[1]

    def put(self, key: K, value: V, now: float) -> None:
        self._entries.pop(key, None)  # re-inserted at the end: insertion order stays age order
        if len(self._entries) >= self.max_entries:
            drop = max(1, self.max_entries // EVICT_FRACTION)
            self.evicted += drop
            self._entries = dict(islice(self._entries.items(), drop, None))
        self._entries[key] = (now, value)

    def pop(self, key: K) -> None:
        self._entries.pop(key, None)

    def purge(self, now: float) -> int:
        """Drop every expired entry; returns how many went."""
        oldest_kept = now - self.ttl
        before = len(self._entries)
        self._entries = {k: e for k, e in self._entries.items() if e[0] > oldest_kept}
        gone = before - len(self._entries)
        self.expired += gone
        return gone

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._entries))
