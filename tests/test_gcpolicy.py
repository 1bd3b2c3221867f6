"""The server process's GC policy (reference/server/gcpolicy.py, issue #2)."""
from __future__ import annotations

import asyncio
import gc

from reference.server import gcpolicy


async def test_policy_disables_automatic_full_collections_and_runs_periodic_ones() -> None:
    before = gc.get_threshold()
    policy = gcpolicy.install(full_interval=0.05)
    try:
        t0, t1, t2 = gc.get_threshold()
        assert (t0, t1) == before[:2]  # young collections unchanged
        assert t2 >= 2**30  # generation 2 never collected automatically
        assert gc.get_freeze_count() > 0  # start-up objects frozen
        for _ in range(100):
            if policy.full_collections >= 2:
                break
            await asyncio.sleep(0.02)
        assert policy.full_collections >= 2  # the timer re-arms itself
    finally:
        policy.close()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_periodic_collection_reclaims_cycles_in_the_old_generation() -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    policy = gcpolicy.install(full_interval=0.05)
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a
        gc.collect(1)  # promote the cycle to the oldest generation
        count = sum(1 for o in gc.get_objects(2) if type(o) is Node)
        assert count == 2
        del a, b
        for _ in range(100):
            if not any(type(o) is Node for o in gc.get_objects(2)):
                break
            await asyncio.sleep(0.02)
        assert not any(type(o) is Node for o in gc.get_objects(2))
    finally:
        policy.close()
