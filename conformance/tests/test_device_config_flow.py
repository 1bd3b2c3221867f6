"""The device-configuration use case of seed 002 end to end, against a BOOTSTRAP-SERVER (the
"M2M Configuration Server" with its portal API) and a SERVER (the "M2M Platform") under test;
the suite plays the user's portal request and the device.

Normal flow (002 §1.1.6): 1-2 the portal registers the device and has the configuration server
initialize its settings (profile action ``configure``), 3-6 the device contacts the configuration
server and receives its settings (Client Initiated Bootstrap, Core 1.1.1 §6.1.7.1/.5/.2), 7 it
disconnects, 8-9 it registers with the platform using exactly the settings it was given
(Core 1.1.1 §6.2.1 Register with the written Server URI, lifetime and binding).
Alternative flow (002 §1.1.7): the configuration server provides the settings as serialized data
through the portal (profile action ``export``) and the device, configured offline with it,
registers without contacting the configuration server.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import pytest
from aiocoap.numbers.codes import Code

from conformance.evidence import step
from conformance.peers.client_peer import code_str
from conformance.tests.conftest_server import BootstrapSide, ServerSide, new_endpoint
from conformance.tests.test_bootstrap_server_flow import bootstrap, check_provisioned, device_config, dm_accounts
from conformance.verdicts import check, inconclusive, unsupported
from reference.model.config import ConfigError, DeviceConfig

pytestmark = [pytest.mark.role("bootstrap-server", "server")]

DC_ACCEPT = "LightweightM2M-HLF-DC1"
DC_DISCOVER = "LightweightM2M-HLF-DC2"
DC_USE = "LightweightM2M-HLF-DC3"
DC_OFFLINE = "LightweightM2M-HLF-DC4"
HLF = "LightweightM2M-HLF-00X1"


async def register_with(server: ServerSide, cfg: DeviceConfig, requirement: str) -> None:
    """Register a fresh device socket at the Server URI / lifetime / binding of ``cfg`` and check
    the platform accepted and lists it."""
    acc = dm_accounts(cfg)[0]
    srv = next(s for s in cfg.servers if s.short_server_id == acc.short_server_id)
    u = urlparse(acc.uri)
    check(u.scheme == "coap" and (u.hostname, u.port) == server.address, requirement=requirement,
          expected=f"the device was given the platform's address coap://{server.address[0]}:{server.address[1]}",
          actual=acc.uri)
    peer = await server.peer(cfg.endpoint, address=(u.hostname, int(u.port)))
    with step(f"the device registers at {acc.uri} with lt={srv.lifetime} b={srv.binding}"):
        resp = await peer.register(lifetime=srv.lifetime, binding=srv.binding)
        check(resp.code == Code.CREATED, requirement=requirement, expected="2.01 Created from the platform",
              actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")
    with step("the platform lists the device"):
        rec = await server.wait_registered(cfg.endpoint)
        check(rec is not None, requirement=requirement, expected=f"{cfg.endpoint} registered at the platform",
              actual="not listed")
        lt = (rec or {}).get("lifetime")
        if lt is not None and str(lt).isdigit():
            check(int(lt) == srv.lifetime, requirement=requirement,
                  expected=f"the configured lifetime {srv.lifetime}", actual=f"lifetime {lt}")


@pytest.mark.requirement(DC_ACCEPT, DC_DISCOVER, DC_USE, HLF)
@pytest.mark.case("LWM2M-DC-001")
async def test_dc_001_portal_configuration_end_to_end(bootstrap_side: BootstrapSide, server_side: ServerSide) -> None:
    """LWM2M-DC-001 device configuration, normal flow (seed 002): the portal request configures
    the device at the configuration server, the device fetches its settings with a Bootstrap-Request
    (Core 1.1.1 §6.1.7.1) and gets them written (§6.1.7.5) and finished (§6.1.7.2), closes that
    connection, and registers with the platform (the server under test) using exactly those
    settings (§6.2.1): 2.01 Created and the platform lists it with the configured lifetime."""
    bs, server = bootstrap_side, server_side
    ep = new_endpoint("dc")
    want = device_config(ep, server.uri, lifetime=345, ssid=7)
    with step("portal: register the new device and initialize its settings"):
        res = await bs.configure(ep, want.to_dict())
        check(res.ok, requirement=DC_ACCEPT, expected="the configuration server accepts the request",
              actual=res.detail)
    device = await bs.peer(ep)
    await bootstrap(bs, device, DC_DISCOVER)
    got = check_provisioned(device, want, DC_ACCEPT)
    with step("the device disconnects from the configuration server"):
        await device.close()
    await register_with(server, got, DC_USE)


@pytest.mark.requirement(DC_OFFLINE, DC_USE)
@pytest.mark.case("LWM2M-DC-002")
async def test_dc_002_offline_serialized_configuration(bootstrap_side: BootstrapSide, server_side: ServerSide) -> None:
    """LWM2M-DC-002 device configuration, alternative flow (seed 002 §1.1.7): the configuration
    server provides the device's settings as serialized data through the portal (``export``); a
    device configured offline with that data registers with the platform (Core 1.1.1 §6.2.1)
    without any exchange with the configuration server."""
    bs, server = bootstrap_side, server_side
    if not bs.adapter.can("export"):
        unsupported(f"the {bs.profile.name} profile has no [actions.export] (no offline configuration)")
    ep = new_endpoint("off")
    want = device_config(ep, server.uri, lifetime=456, ssid=9)
    await bs.configure(ep, want.to_dict())
    with step("portal: export the serialized configuration"):
        res = await bs.adapter.export(ep)
        check(res.ok, requirement=DC_OFFLINE, expected="the serialized configuration", actual=res.detail)
    doc: Any = res.value
    try:
        cfg = DeviceConfig.from_dict(doc, where="export") if isinstance(doc, dict) else None
    except ConfigError as e:
        cfg = None
        inconclusive(f"the exported document is not a lwm2m-device-config/1 document the suite can load: {e}")
    if cfg is None:
        inconclusive(f"the exported data is not a JSON object the suite can load: {res.text[:200]}")
    with step("the offline configuration carries the settings"):
        acc = dm_accounts(cfg)[0]
        check(acc.uri == server.uri and cfg.servers and cfg.servers[0].lifetime == 456, requirement=DC_OFFLINE,
              expected=f"Server URI {server.uri} and lifetime 456", actual=str(cfg.to_dict())[:300])
    # the device below never talks to the configuration server: registering proves the data suffices
    await register_with(server, cfg, DC_USE)
