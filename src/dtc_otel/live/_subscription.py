"""One subscriber's bounded queue: events in order, or one ``Resync`` when it falls behind."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from types import TracebackType

from dtc_otel.live._events import LiveEvent, Resync

__all__ = ["Subscription"]


class Subscription:
    """Events for a set of topics, read with ``async for`` or :meth:`get`.

    Memory is bounded: when the queue contains ``max_queue - 1`` items, the next
    event is replaced by a single :class:`Resync` in the last slot, and every
    later event is dropped until the subscriber has read that marker, which
    leaves the queue empty. Close it (or leave its ``with`` block) to stop
    receiving; the broadcaster then removes it.

    Create it with :meth:`Broadcaster.subscribe`; use it from the event loop
    thread only.
    """

    def __init__(
        self, topics: frozenset[str] | None, max_queue: int, on_close: Callable[[Subscription], None]
    ) -> None:
        if max_queue < 2:
            raise ValueError(f"invalid max_queue {max_queue}: expected at least 2, one slot is kept for a resync")
        self.topics = topics
        self.max_queue = max_queue
        self.delivered = 0
        self.dropped = 0
        self.resyncs = 0
        self._items: deque[LiveEvent | Resync] = deque()
        # One future per wait rather than an asyncio.Event: a stream waits
        # once per event, and every object in that wait's chain outlives
        # young garbage collections, so fewer objects mean fewer full ones.
        self._waiter: asyncio.Future[None] | None = None
        self._behind = False
        self._last_id: int | None = None
        self._closed = False
        self._on_close = on_close

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        """Return the number of items waiting to be read."""
        return len(self._items)

    def offer(self, event: LiveEvent) -> bool:
        """Queue *event* without waiting; return False when it was dropped."""
        if self._closed:
            return False
        if self._behind:
            self.dropped += 1
            return False
        if len(self._items) >= self.max_queue - 1:
            self.dropped += 1
            self.mark_gap("slow_subscriber")
            return False

        self._items.append(event)
        self._last_id = event.id
        self.delivered += 1
        self._wake()

        return True

    def mark_gap(self, reason: str) -> None:
        """Queue one :class:`Resync` and drop events until it has been read."""
        if self._closed or self._behind:
            return

        self._behind = True
        self.resyncs += 1
        self._items.append(Resync(self._last_id, reason))
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self) -> LiveEvent | Resync | None:
        """Return the next item, or None when the queue is empty."""
        if not self._items:
            return None

        item = self._items.popleft()
        if isinstance(item, Resync):
            # The marker is the queue's last item, so the subscriber has caught up.
            self._behind = False

        return item

    async def get(self) -> LiveEvent | Resync:
        """Wait for the next item.

        Raises:
            StopAsyncIteration: the subscription was closed.
        """
        while True:
            item = self.get_nowait()
            if item is not None:
                return item
            if self._closed:
                raise StopAsyncIteration
            await self.wait()

    def wait(self) -> asyncio.Future[None]:
        """Return a future that completes when an item is waiting or the subscription is closed.

        It serves a reader that takes items with :meth:`get_nowait` and awaits
        this only when the queue is empty, which costs less per event than :meth:`get`.
        """
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
            if self._items or self._closed:
                self._waiter.set_result(None)

        return self._waiter

    def close(self) -> None:
        """Stop receiving; a reader waiting in :meth:`get` ends its iteration."""
        if self._closed:
            return

        self._closed = True
        self._items.clear()
        self._on_close(self)
        self._wake()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> LiveEvent | Resync:
        return await self.get()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
