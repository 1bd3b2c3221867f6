"""Automated provisioning at scale (seed 000: "Initial provisioning, including device discovery,
bootstrapping, and registration, is automated for service providers to handle a large number of
M2M devices"; seed 003: cost-effective administration).

``--scale N`` simulated devices (each its own UDP socket and endpoint name) are provisioned
through the bootstrap server's API, bootstrap concurrently (Core 1.1.1 §6.1.7.1/.5/.2) and
register concurrently at the server under test (§6.2.1). Every one must end registered, none
lost, none duplicated, each at its own location.
"""
from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from typing import Any

import pytest
from aiocoap.numbers.codes import Code

from conformance.evidence import step
from conformance.peers.client_peer import PeerError, code_str
from conformance.tests.conftest_server import BootstrapSide, ServerSide
from conformance.tests.test_bootstrap_server_flow import device_config, dm_accounts
from conformance.verdicts import check

HLF_SCALE = "LightweightM2M-HLF-00X1.7"
CP_ADMIN = "DM-CP-3"
HLF_REG = "LightweightM2M-HLF-00X1.6"
CONCURRENCY = 64  # outstanding exchanges at once (each device keeps NSTART=1 itself)


async def bounded(n: int, coros: list[Any]) -> list[Any]:
    """Run ``coros`` with at most ``n`` at once; exceptions are returned, not raised."""
    sem = asyncio.Semaphore(n)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return await asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


def _outcome(x: Any) -> str:
    if isinstance(x, BaseException):
        return f"{type(x).__name__}: {str(x)[:120]}"
    return str(x)


async def check_all_registered(server: ServerSide, endpoints: list[str], requirement: str) -> None:
    entries = await server.registrations()
    counts = Counter(e["endpoint"] for e in entries)
    lost = [ep for ep in endpoints if counts[ep] == 0]
    dup = [f"{ep} x{counts[ep]}" for ep in endpoints if counts[ep] > 1]
    check(not lost and not dup, requirement=requirement,
          expected=f"all {len(endpoints)} devices registered exactly once",
          actual=f"{len(lost)} lost {lost[:10]}; {len(dup)} duplicated {dup[:10]}")


@pytest.mark.role("server")
@pytest.mark.requirement(HLF_SCALE, HLF_REG)
@pytest.mark.case("LWM2M-SCALE-001")
async def test_scale_001_concurrent_registration(server_side: ServerSide, scale: int) -> None:
    """LWM2M-SCALE-001 ``--scale`` devices register concurrently at the server under test
    (Core 1.1.1 §6.2.1): each gets 2.01 Created with its own Location-Path, the server lists every
    one exactly once, and after concurrent De-registers (§6.2.3, 2.02) none remains."""
    server = server_side
    tag = secrets.token_hex(3)
    peers = [await server.peer(f"scale-{tag}-{i:05d}") for i in range(scale)]
    with step(f"{scale} devices register at once"):
        results = await bounded(CONCURRENCY, [p.register(lifetime=600, binding="U") for p in peers])
    bad = [f"{p.endpoint}: {_outcome(r) if isinstance(r, BaseException) else code_str(r.code)}"
           for p, r in zip(peers, results) if isinstance(r, BaseException) or r.code != Code.CREATED]
    check(not bad, requirement=HLF_SCALE, expected=f"2.01 Created for all {scale} Registers",
          actual=f"{len(bad)} not created: " + "; ".join(bad[:10]))
    locs = Counter("/".join(p.location or ()) for p in peers)
    shared = [loc for loc, n in locs.items() if n > 1]
    check(not shared, requirement=HLF_SCALE, expected="a distinct Location-Path per device",
          actual=f"shared locations: {shared[:10]}")
    await check_all_registered(server, [p.endpoint for p in peers], HLF_SCALE)
    with step(f"{scale} devices de-register at once"):
        results = await bounded(CONCURRENCY, [p.deregister() for p in peers])
    bad = [p.endpoint for p, r in zip(peers, results) if isinstance(r, BaseException) or r.code != Code.DELETED]
    check(not bad, requirement=HLF_SCALE, expected="2.02 Deleted for every De-register",
          actual=f"{len(bad)} failed: {bad[:10]}")
    left = [e["endpoint"] for e in await server.registrations() if e["endpoint"].startswith(f"scale-{tag}-")]
    check(not left, requirement=HLF_SCALE, expected="no registration left after the De-registers",
          actual=f"{len(left)} left: {left[:10]}")


@pytest.mark.role("bootstrap-server", "server")
@pytest.mark.requirement(HLF_SCALE, CP_ADMIN)
@pytest.mark.case("LWM2M-SCALE-002")
async def test_scale_002_bootstrap_and_register_many(bootstrap_side: BootstrapSide, server_side: ServerSide,
                                                     scale: int) -> None:
    """LWM2M-SCALE-002 automated provisioning of ``--scale`` devices: one provisioning-API call
    per device configures them (seed 003, cost-effective administration), then all devices
    bootstrap concurrently (Core 1.1.1 §6.1.7) and register concurrently at the server under test
    with the settings they were given (§6.2.1). Every device finishes its bootstrap and ends
    registered exactly once; none is lost or duplicated."""
    bs, server = bootstrap_side, server_side
    tag = secrets.token_hex(3)
    eps = [f"fleet-{tag}-{i:05d}" for i in range(scale)]
    with step(f"provision {scale} devices through the portal API"):
        res = await bounded(16, [bs.adapter.configure(ep, device_config(ep, server.uri, lifetime=900).to_dict())
                                 for ep in eps])
    refused = [f"{ep}: {_outcome(r) if isinstance(r, BaseException) else r.detail}" for ep, r in zip(eps, res)
               if isinstance(r, BaseException) or not r.ok]
    check(not refused, requirement=CP_ADMIN, expected=f"all {scale} configurations accepted",
          actual=f"{len(refused)} refused: " + "; ".join(refused[:5]))
    devices = [await bs.peer(ep) for ep in eps]

    async def provision(dev: Any) -> str:
        resp = await dev.bootstrap_request()
        if resp.code != Code.CHANGED:
            return f"Bootstrap-Request answered {code_str(resp.code)}"
        try:
            await asyncio.wait_for(dev.bootstrap_finished.wait(), 30)
        except asyncio.TimeoutError:
            return f"no Bootstrap-Finish ({len(dev.requests)} requests received)"
        cfg = dev.device_config()
        acc = dm_accounts(cfg)[0]
        srv = next(s for s in cfg.servers if s.short_server_id == acc.short_server_id)
        if acc.uri != server.uri:
            return f"given Server URI {acc.uri}, configured {server.uri}"
        await dev.close()
        peer = await server.peer(dev.endpoint)
        try:
            r = await peer.register(lifetime=srv.lifetime, binding=srv.binding)
        except (PeerError, AssertionError) as e:
            return f"Register: {e}"
        return "ok" if r.code == Code.CREATED else f"Register answered {code_str(r.code)}"

    with step(f"{scale} devices bootstrap and register at once"):
        outcomes = await bounded(CONCURRENCY, [provision(d) for d in devices])
    bad = [f"{d.endpoint}: {_outcome(o)}" for d, o in zip(devices, outcomes) if o != "ok"]
    check(not bad, requirement=HLF_SCALE, expected=f"all {scale} devices bootstrapped and registered",
          actual=f"{len(bad)} failed: " + "; ".join(bad[:10]))
    await check_all_registered(server, eps, HLF_SCALE)
