"""Keep CPython's cyclic garbage collector off the registration path of a server process.

Why (measured, see ``benchmarks/registration.py`` and the README): every registered client is
one long-lived GC-tracked object (a :class:`~reference.server.registration.Registration`).
With CPython's default policy a *full* (generation 2) collection traverses all of them, and it
runs far more often than the "25 % growth" rule suggests: each young collection promotes the
short-lived objects of the ~32 requests in flight (tasks, futures, messages) into the old
generation, so the old generation's "pending" counter passes a quarter of its size every few
thousand registrations whatever the number of registered clients. Each full collection costs
time proportional to the number of registrations (measured: 1 ms at 10,000, 57 ms at 100,000,
up to 135 ms under CPU contention), so the per-registration cost of the collector, and the
stalls of the event loop, grew linearly with the number of registered clients: the registration
rate fell as the server filled up.

Policy (:func:`install`, for a process that *is* a server, i.e. the CLI; a library user embedding
:class:`~reference.server.server.LwM2MServer` keeps its own GC settings):

* after start-up, ``gc.collect()`` then ``gc.freeze()``: start-up objects (modules, classes,
  object definitions) are never traversed again;
* automatic collections are limited to the young generations (threshold of generation 2 set
  out of reach), which reclaim the cyclic garbage of request handling within a few hundred
  allocations; their cost does not depend on the number of registrations;
* a full collection runs every ``full_interval`` seconds (default 600) from the event loop, so
  cyclic garbage that reached the old generation is still reclaimed. Its pause is bounded by
  the number of live objects (about 60 ms at 100,000 registrations) and amortised over ten
  minutes it is well below 0.1 % of one core.

Registration objects themselves contain only strings, numbers and bytes and never form cycles:
they are freed by reference counting as soon as the store drops them.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

#: Generation-2 threshold that is never reached (the counter counts generation-1 collections).
_NEVER = 2**31 - 1


class GcPolicy:
    """The policy: :meth:`start` installs it on an event loop, :meth:`close` undoes it.
    ``full_collections`` / ``full_seconds`` count the periodic full collections."""

    def __init__(self, full_interval: float = 600.0) -> None:
        self.full_interval = full_interval
        self.full_collections = 0
        self.full_seconds = 0.0
        self._old_threshold = gc.get_threshold()
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        gc.collect()
        gc.freeze()
        t0, t1, _ = self._old_threshold
        gc.set_threshold(t0, t1, _NEVER)
        self._loop = loop
        if self.full_interval > 0:
            self._handle = loop.call_later(self.full_interval, self._full)

    def _full(self) -> None:
        t = time.perf_counter()
        found = gc.collect()
        dt = time.perf_counter() - t
        self.full_collections += 1
        self.full_seconds += dt
        log.debug("periodic full GC: %d unreachable objects, %.1f ms", found, dt * 1e3)
        if self._loop is not None and not self._loop.is_closed():
            self._handle = self._loop.call_later(self.full_interval, self._full)

    def close(self) -> None:
        """Stop the periodic collection, restore the thresholds, unfreeze."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        gc.set_threshold(*self._old_threshold)
        gc.unfreeze()


def install(full_interval: float = 600.0) -> GcPolicy:
    """Install the policy on the running event loop (call after the server started)."""
    policy = GcPolicy(full_interval)
    policy.start(asyncio.get_running_loop())
    return policy
