"""Replacement policies for the RAM tier, weighted by bytes: S3-FIFO (default) and LRU.

S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023) keeps
a small FIFO queue (10% of the bytes) for new values, a main FIFO queue for the rest and a
*ghost* queue of recently dropped keys (no values). A new value enters the small queue;
when it leaves, it moves to the main queue only if it was read again meanwhile, else it is
dropped and its key remembered in the ghost. A key found in the ghost enters the main queue
directly. The main queue is a CLOCK: a value read since it last passed the tail goes round
once more (up to 3 times), others leave.

So a value read once (a scan) passes through the small queue and is gone, and a hot set
stays in the main queue, where LRU would let every scan larger than RAM flush it. A hit
only increments a counter: no reordering, which keeps the hit path short.

Both policies are not thread-safe on their own: the RAM tier holds its lock around them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["LRU", "S3FIFO", "make_policy"]

type OnEvict = Callable[[Any, Any], None]


class _Node:
    __slots__ = ("freq", "value", "weight")

    def __init__(self, value: Any, weight: int) -> None:
        self.value = value
        self.weight = weight
        self.freq = 0


class S3FIFO:
    """A byte-bounded S3-FIFO map: ``get``, ``put``, ``discard``; evictions call ``on_evict``.

    Examples
    --------
    >>> cache = S3FIFO(100)
    >>> cache.put("hot", "h", 10)
    >>> cache.get("hot")
    'h'
    >>> for i in range(50):  # a scan of values read once
    ...     cache.put(i, i, 10)
    >>> cache.get("hot"), cache.get(0)
    ('h', None)
    """

    def __init__(self, max_bytes: int, on_evict: OnEvict | None = None, small: float = 0.1):
        self.max_bytes = int(max_bytes)
        self.small_max = max(1, int(self.max_bytes * small))
        self.on_evict = on_evict
        self._small: OrderedDict[Hashable, _Node] = OrderedDict()
        self._main: OrderedDict[Hashable, _Node] = OrderedDict()
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()
        self.small_bytes = self.main_bytes = 0

    @property
    def nbytes(self) -> int:
        return self.small_bytes + self.main_bytes

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._small or key in self._main

    def get(self, key: Hashable) -> Any:
        node = self._small.get(key) or self._main.get(key)
        if node is None:
            return None
        if node.freq < 3:
            node.freq += 1
        return node.value

    def put(self, key: Hashable, value: Any, weight: int) -> None:
        """Insert or replace ``key``; values over ``max_bytes`` are not kept."""
        in_main = key in self._main
        self.discard(key)
        if weight > self.max_bytes:
            return
        node = _Node(value, weight)
        if in_main or self._ghost.pop(key, False) is None:  # (None: it was in the ghost)
            self._main[key] = node
            self.main_bytes += weight
        else:
            self._small[key] = node
            self.small_bytes += weight
        self._make_room()

    def discard(self, key: Hashable) -> None:
        node = self._small.pop(key, None)
        if node is not None:
            self.small_bytes -= node.weight
            return
        node = self._main.pop(key, None)
        if node is not None:
            self.main_bytes -= node.weight

    def clear(self) -> None:
        self._small.clear()
        self._main.clear()
        self._ghost.clear()
        self.small_bytes = self.main_bytes = 0

    def _make_room(self) -> None:
        while self.small_bytes + self.main_bytes > self.max_bytes:
            if self.small_bytes > self.small_max or not self._main:
                self._evict_small()
            else:
                self._evict_main()

    def _evict_small(self) -> None:
        key, node = self._small.popitem(last=False)
        self.small_bytes -= node.weight
        if node.freq > 0:  # read again while new: it earned a place in main
            node.freq = 0
            self._main[key] = node
            self.main_bytes += node.weight
            return
        self._ghost[key] = None
        while len(self._ghost) > max(64, len(self._main) + len(self._small)):
            self._ghost.popitem(last=False)
        self._dropped(key, node)

    def _evict_main(self) -> None:
        key, node = self._main.popitem(last=False)
        if node.freq > 0:
            node.freq -= 1
            self._main[key] = node  # once more round the clock
            return
        self.main_bytes -= node.weight
        self._dropped(key, node)

    def _dropped(self, key: Hashable, node: _Node) -> None:
        if self.on_evict is not None:
            self.on_evict(key, node.value)


class LRU:
    """A byte-bounded least-recently-used map with the same interface (the baseline)."""

    def __init__(self, max_bytes: int, on_evict: OnEvict | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.on_evict = on_evict
        self._data: OrderedDict[Hashable, _Node] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable) -> Any:
        node = self._data.get(key)
        if node is None:
            return None
        self._data.move_to_end(key)
        return node.value

    def put(self, key: Hashable, value: Any, weight: int) -> None:
        self.discard(key)
        if weight > self.max_bytes:
            return
        self._data[key] = _Node(value, weight)
        self.nbytes += weight
        while self.nbytes > self.max_bytes:
            old, node = self._data.popitem(last=False)
            self.nbytes -= node.weight
            if self.on_evict is not None:
                self.on_evict(old, node.value)

    def discard(self, key: Hashable) -> None:
        node = self._data.pop(key, None)
        if node is not None:
            self.nbytes -= node.weight

    def clear(self) -> None:
        self._data.clear()
        self.nbytes = 0


def make_policy(name: str, max_bytes: int, on_evict: OnEvict | None = None) -> S3FIFO | LRU:
    """The policy called ``name`` (``"s3fifo"`` or ``"lru"``)."""
    if name == "s3fifo":
        return S3FIFO(max_bytes, on_evict)
    if name == "lru":
        return LRU(max_bytes, on_evict)
    raise ValueError(f"unknown RAM tier policy {name!r}: use 's3fifo' or 'lru'")
