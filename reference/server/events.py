"""Server events a program can follow: registered, updated, deregistered, expired, notification.

Every event gets a sequence number (1, 2, 3, ...). The bus keeps the last ``history`` events so
that an HTTP client can long-poll "everything after seq N" and a reader that fell behind can
catch up; in-process consumers use callbacks or ``async for event in bus.subscribe()``.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)


class EventKind(str, enum.Enum):
    REGISTERED = "registered"
    UPDATED = "updated"
    DEREGISTERED = "deregistered"
    EXPIRED = "expired"
    NOTIFICATION = "notification"
    OBSERVATION_ENDED = "observation-ended"
    CARD_COMBINATION = "card-combination"  # smartcard hook (issue #5): reference/server/cards.py

    def __str__(self) -> str:
        return self.value


class Event:
    """One event. ``data`` is JSON-ready (the registration view, or the notification).

    ``data`` may be given as a zero-argument callable; it is then built on each access (the
    registration events pass a snapshot this way so that thousands of events in the history
    cost a tuple each, not a dict)."""

    __slots__ = ("seq", "kind", "endpoint", "time", "_data")

    def __init__(self, seq: int, kind: EventKind, endpoint: str,
                 data: "dict[str, Any] | Callable[[], dict[str, Any]]") -> None:
        self.seq = seq
        self.kind = kind
        self.endpoint = endpoint
        self.time = time.time()
        self._data = data

    @property
    def data(self) -> dict[str, Any]:
        d = self._data
        return d() if callable(d) else d

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind.value, "endpoint": self.endpoint,
                "time": self.time, "data": self.data}

    def __repr__(self) -> str:
        return f"<Event #{self.seq} {self.kind.value} {self.endpoint!r}>"


class EventSubscription:
    """An async iterator over new events, optionally filtered by kind and endpoint.

    Buffered up to ``maxsize`` events; when the consumer is slower the oldest are dropped and
    counted in ``dropped``. Close with :meth:`close` (or use as ``async with``)."""

    def __init__(self, bus: "EventBus", kinds: Iterable[EventKind | str] | None,
                 endpoint: str | None, maxsize: int) -> None:
        self._bus = bus
        self.kinds = None if kinds is None else {EventKind(k) for k in kinds}
        self.endpoint = endpoint
        self._queue: deque[Event] = deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future | None = None
        self.closed = False
        self.dropped = 0

    def _offer(self, ev: Event) -> None:
        if self.kinds is not None and ev.kind not in self.kinds:
            return
        if self.endpoint is not None and ev.endpoint != self.endpoint:
            return
        self._queue.append(ev)
        if len(self._queue) > self._maxsize:
            self._queue.popleft()
            self.dropped += 1
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __aiter__(self) -> "EventSubscription":
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._queue.popleft()

    async def get(self, timeout: float) -> Event:
        """The next event, or :class:`asyncio.TimeoutError` after ``timeout`` seconds."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def close(self) -> None:
        self.closed = True
        self._bus._subs.discard(self)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def __aenter__(self) -> "EventSubscription":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Publishes events to callbacks, subscriptions and long-poll waiters; keeps history."""

    def __init__(self, history: int = 10_000) -> None:
        self._seq = 0
        self._history: deque[Event] = deque(maxlen=history)
        self._callbacks: list[Callable[[Event], Any]] = []
        self._subs: set[EventSubscription] = set()
        self._waiters: list[asyncio.Future] = []

    @property
    def last_seq(self) -> int:
        return self._seq

    def emit(self, kind: EventKind, endpoint: str,
             data: "dict[str, Any] | Callable[[], dict[str, Any]]") -> Event:
        """Publish an event; ``data`` is a dict or a callable returning one (see :class:`Event`)."""
        self._seq += 1
        ev = Event(self._seq, kind, endpoint, data)
        self._history.append(ev)
        for cb in self._callbacks:
            try:
                cb(ev)
            except Exception:  # a faulty consumer must not break registration
                log.exception("event callback failed")
        for sub in self._subs:
            sub._offer(ev)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(None)
        return ev

    def add_callback(self, fn: Callable[[Event], Any]) -> None:
        """Call ``fn(event)`` synchronously for every event."""
        self._callbacks.append(fn)

    def remove_callback(self, fn: Callable[[Event], Any]) -> None:
        self._callbacks.remove(fn)

    def subscribe(self, kinds: Iterable[EventKind | str] | None = None,
                  endpoint: str | None = None, *, maxsize: int = 10_000) -> EventSubscription:
        """Events emitted from now on, as an async iterator."""
        sub = EventSubscription(self, kinds, endpoint, maxsize)
        self._subs.add(sub)
        return sub

    def since(self, seq: int, limit: int = 1000) -> list[Event]:
        """Events with a sequence number above ``seq`` still in the history (oldest first)."""
        hist = self._history
        if not hist or seq >= self._seq:
            return []
        first = hist[0].seq
        start = max(0, seq + 1 - first)
        out = []
        for i in range(start, min(len(hist), start + limit)):
            out.append(hist[i])
        return out

    async def wait_since(self, seq: int, timeout: float, limit: int = 1000) -> list[Event]:
        """Long-poll: events after ``seq``, waiting up to ``timeout`` s for the first one."""
        evs = self.since(seq, limit)
        if evs or timeout <= 0:
            return evs
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)
        return self.since(seq, limit)

    @property
    def oldest_seq(self) -> int:
        return self._history[0].seq if self._history else self._seq + 1
