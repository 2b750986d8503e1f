"""Prepared bundles held in memory, and engines waiting to be closed after a swap.

Where it sits: inside the changeover controller, between the store and ``service.activate``. A
bundle in the cache has verified hashes and signature, built and warmed-up engines and a passed
golden self-test, so switching to it is one reference assignment.

Why retire with a delay: the inspection thread reads the active reference once per frame, so a
frame that started just before a swap still runs on the old engines for up to one inference.
Closing them at once would turn that part into a fail-safe verdict; closing them
``retire_after_s`` later costs nothing but memory. Must never: close the active bundle's engines
or the rollback target's, or block the inspection thread (everything here runs on the swap worker).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lineguard.prepared import PreparedBundle

log = logging.getLogger(__name__)


class PreparedCache:
    """LRU of prepared bundles by id, plus the retirement list of evicted engines."""

    def __init__(self, *, capacity: int, retire_after_s: float, in_use: Callable[[PreparedBundle], bool]) -> None:
        self.capacity = capacity
        self._retire_after_s = retire_after_s
        self._in_use = in_use  # active or rollback target: never closed
        self._items: OrderedDict[str, PreparedBundle] = OrderedDict()
        self._retiring: list[tuple[float, PreparedBundle]] = []
        self.failed: dict[str, str] = {}  # bundle id -> why preparing it failed (not retried by preload)

    def __contains__(self, bundle_id: str) -> bool:
        return bundle_id in self._items

    def ids(self) -> list[str]:
        return list(self._items)

    def free_slots(self) -> int:
        return self.capacity - len(self._items)

    def take(self, bundle_id: str) -> PreparedBundle | None:
        """Remove and return a prepared bundle (it is about to become active)."""
        return self._items.pop(bundle_id, None)

    def put(self, prepared: PreparedBundle) -> None:
        """Keep a prepared bundle (most recent last); the least recently used beyond capacity retires."""
        bid = prepared.bundle.bundle_id
        self._items.pop(bid, None)
        if self.capacity == 0:
            self.release(prepared)
            return
        self._items[bid] = prepared
        while len(self._items) > self.capacity:
            _, old = self._items.popitem(last=False)
            self.release(old)

    def release(self, prepared: PreparedBundle) -> None:
        """Schedule a bundle's engines for closing unless someone still needs them."""
        if self._in_use(prepared) or prepared.bundle.bundle_id in self._items:
            return
        if any(p is prepared for _, p in self._retiring):
            return
        self._retiring.append((time.monotonic() + self._retire_after_s, prepared))

    def close_due(self, *, force: bool = False) -> int:
        """Close the engines whose grace period has passed; returns how many were closed."""
        now = time.monotonic()
        keep, closed = [], 0
        for due, p in self._retiring:
            if (force or due <= now) and not self._in_use(p):
                p.runner.close()
                closed += 1
                log.info("closed engines of bundle %s", p.bundle.bundle_id)
            elif not self._in_use(p):
                keep.append((due, p))
        self._retiring = keep
        return closed

    def close_all(self) -> None:
        """Service shutdown: everything not active goes."""
        for p in self._items.values():
            self.release(p)
        self._items.clear()
        self.close_due(force=True)
