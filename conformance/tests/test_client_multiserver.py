"""Several management owners (seed 003: "segregation of management ownership between one or more
entities", DM-CP-6): a client provisioned by the suite's Bootstrap-Server with accounts for two
LwM2M Servers registers with both, keeps notification attributes per server (Core 1.1.1 §5.1.1) and
enforces the Access Control object between them (Core 1.1.1 §7.3, §E.3).
"""
from __future__ import annotations

import asyncio

import pytest

from conformance.evidence import step
from conformance.peers.client_lab import RESPONSE_WITHIN, ClientLab, require
from conformance.peers.server_peer import ServerPeer
from conformance.verdicts import check
from reference.formats import FormatError, linkformat
from reference.model.path import Path
from reference.model.types import ContentFormat

pytestmark = [pytest.mark.role("client"), pytest.mark.ics("bootstrap_mode:client-initiated", "object:2")]

SSID_A, SSID_B = 101, 102
R, W, E, D, C = 1, 2, 4, 8, 16  # ACL bits, Core 1.1.1 §E.3


def acl(iid: int, oid: int, oiid: int, rights: dict[int, int], owner: int) -> tuple[str, dict]:
    """An Access Control instance /2/iid for /oid/oiid (Core 1.1.1 §E.3): ACL keyed by SSID."""
    vals = {Path(2, iid, 0): oid, Path(2, iid, 1): oiid, Path(2, iid, 3): owner}
    for ssid, bits in rights.items():
        vals[Path(2, iid, 2, ssid)] = bits
    return f"/2/{iid}", vals


#: With several servers nothing is accessible without an Access Control instance (Core 1.1.1 §7.3),
#: so the Bootstrap-Server always provisions one for the Device instance: A owns it, B may Read.
DEVICE_ACL = acl(0, 3, 0, {SSID_B: R}, SSID_A)


async def two_servers(lab: ClientLab, extra: tuple = (DEVICE_ACL,)) -> tuple[ServerPeer, ServerPeer]:
    bs = await lab.bootstrap()
    a = await lab.server("server-a")
    b = await lab.server("server-b")
    await lab.start_bootstrap(bs)
    await lab.bootstrap_request(bs)
    cfg = lab.server_config((a, SSID_A), (b, SSID_B), lifetime=30)
    cfg.servers[1].lifetime = 35
    await lab.provision(bs, cfg, extra=extra)
    return a, b


@pytest.mark.requirement("DM-CP-6", "LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LightweightM2M-1.1-int-950")
async def test_register_two_servers_int_950(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-950 Registration to several LwM2M Servers.

    Core 1.1.1 §6.2.1: the client registers with every LwM2M Server it has an account for (one
    registration per Server object instance), with that account's parameters (lifetime 30 resp. 35),
    and each server can manage it.
    """
    lab = client_lab
    a, b = await two_servers(lab)
    ra = await lab.registered(a, requirement="DM-CP-6")
    rb = await lab.registered(b, requirement="DM-CP-6")
    check(ra.endpoint == rb.endpoint == lab.endpoint, expected=f"ep={lab.endpoint} at both", actual=f"{ra.endpoint}, {rb.endpoint}")
    check((ra.lifetime, rb.lifetime) == (30, 35), expected="lt=30 at server A, lt=35 at server B",
          actual=f"{ra.lifetime}, {rb.lifetime}")
    for srv in (a, b):
        resp = await srv.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN)
        require(resp, "2.05", requirement="DM-CP-6", what=f"Read by {srv.name}", exchange=srv.exchange())


@pytest.mark.requirement("DM-CP-6", "LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-951")
async def test_per_server_attributes_int_951(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-951 Notification attributes are kept per LwM2M Server.

    Core 1.1.1 §5.1.1: "Attributes ... are specific to the LwM2M Server": server A writes pmax=1 on
    a Device resource and server B pmax=30 (B holds Read rights, which cover Observe, Discover and
    Write-Attributes, §E.3); both observe it. A receives notifications every second, B none in
    3.5 s; A's Discover shows pmax=1, B's shows pmax=30.
    """
    lab = client_lab
    a, b = await two_servers(lab)
    await lab.registered(a)
    await lab.registered(b)
    path = "/3/0/9"
    if (await a.read(path, accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN)).code.dotted != "2.05":
        path = "/3/0/16"
    for srv, pmax in ((a, 1), (b, 30)):
        require(await srv.write_attributes(path, {"pmax": pmax}, timeout=RESPONSE_WITHIN), "2.04",
                requirement="DM-CP-6", what=f"Write-Attributes by {srv.name}", exchange=srv.exchange())
    obs_a = a.observe(path, accept=ContentFormat.TEXT)
    obs_b = b.observe(path, accept=ContentFormat.TEXT)
    require(await obs_a.response(), "2.05", what="Observe by A", exchange=a.exchange())
    require(await obs_b.response(), "2.05", what="Observe by B", exchange=b.exchange())
    with step("3.5 s of notifications"):
        await asyncio.sleep(3.5)
        check(len(obs_a.notifications) >= 2, requirement="DM-CP-6", expected="A (pmax=1): >= 2 notifications",
              actual=str(len(obs_a.notifications)), exchange=a.exchange())
        check(len(obs_b.notifications) == 0, requirement="DM-CP-6", expected="B (pmax=30): no notification",
              actual=str(len(obs_b.notifications)), exchange=b.exchange())
    with step("each server discovers its own attributes"):
        for srv, pmax in ((a, 1), (b, 30)):
            resp = await srv.discover(path, timeout=RESPONSE_WITHIN)
            require(resp, "2.05", what=f"Discover by {srv.name}", exchange=srv.exchange())
            try:
                link = next((lk for lk in linkformat.parse(bytes(resp.payload), strict=False) if lk.target == path), None)
            except FormatError:
                link = None
            got = link.get("pmax") if link else None
            check(got is not None and float(got) == pmax, requirement="DM-CP-6",
                  expected=f"{srv.name} sees pmax={pmax}", actual=f"pmax={got}", exchange=srv.exchange())
    await obs_a.cancel()
    await obs_b.cancel()


@pytest.mark.requirement("DM-CP-6")
@pytest.mark.case("LWM2M-CMS-002")
@pytest.mark.ics("object:2")
async def test_access_control_between_servers_cms_002(client_lab: ClientLab) -> None:
    """LWM2M-CMS-002 Access Control between two LwM2M Servers.

    Core 1.1.1 §7.3 / §E.3: with several servers each object instance is governed by its Access
    Control instance. The Bootstrap-Server gives server A (owner) full rights on the Device instance
    /3/0 and server B Read only: B's Read succeeds, B's Write and Execute are answered 4.01
    Unauthorized (and change nothing), A's Write succeeds.
    """
    lab = client_lab
    a, b = await two_servers(lab)
    await lab.registered(a)
    await lab.registered(b)
    target = "/3/0/14"  # UTC Offset (RW string, optional) when present, else Current Time /3/0/13
    resp = await a.read(target, accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN)
    if resp.code.dotted != "2.05":
        target = "/3/0/13"
    with step("server B (Read only)"):
        require(await b.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN), "2.05",
                requirement="DM-CP-6", what="Read by B (R granted)", exchange=b.exchange())
        value = b"+02:00" if target.endswith("/14") else b"1000000000"
        require(await b.write(target, value, ContentFormat.TEXT, timeout=RESPONSE_WITHIN), "4.01",
                requirement="DM-CP-6", what=f"Write {target} by B (W not granted)", exchange=b.exchange())
        require(await b.execute("/3/0/4", timeout=RESPONSE_WITHIN), "4.01", requirement="DM-CP-6",
                what="Execute /3/0/4 by B (E not granted)", exchange=b.exchange())
        now = await a.read(target, accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN)
        check(bytes(now.payload) != value, requirement="DM-CP-6", expected="B's refused Write changed nothing",
              actual=repr(bytes(now.payload)))
    with step("server A (owner)"):
        value = b"+03:00" if target.endswith("/14") else b"1100000000"
        require(await a.write(target, value, ContentFormat.TEXT, timeout=RESPONSE_WITHIN), "2.04",
                requirement="DM-CP-6", what=f"Write {target} by A (owner)", exchange=a.exchange())
