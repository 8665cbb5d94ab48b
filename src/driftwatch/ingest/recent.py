"""A window of recently seen keys, bounded by count and by age, for deduplication and short joins."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Hashable


class DedupWindow:
    """Keys seen recently, bounded by count and by age; memory stays constant. Optionally keeps a value per key."""

    __slots__ = ("max_entries", "max_age_s", "_clock", "_items")

    def __init__(self, max_entries: int, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self._clock = clock
        self._items: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: Hashable, value: Any = None) -> bool:
        """Remember key; return True if it was already there (a duplicate)."""
        items = self._items
        if key in items:
            return True
        now = self._clock()
        items[key] = (now, value)
        if len(items) > self.max_entries:
            items.popitem(last=False)
        horizon = now - self.max_age_s
        while items:
            first = next(iter(items.values()))
            if first[0] >= horizon:
                break
            items.popitem(last=False)
        return False

    def get(self, key: Hashable, default: Any = None) -> Any:
        item = self._items.get(key)
        if item is None or item[0] < self._clock() - self.max_age_s:
            return default
        return item[1]
