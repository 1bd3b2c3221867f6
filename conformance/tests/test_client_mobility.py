"""Nomadic and mobile devices (seed 000: initial provisioning "works for M2M devices with various
degree of mobility, such as fixed, nomadic, and mobile"; LightweightM2M-HLF-00X1.3): when the
client's transport address changes, its next Register/Update tells the server where it is now and
the server reaches it there (Core 1.1.1 §6.2.2: the Update refreshes the registration, the server
uses the source address of the latest Register/Update).
"""
from __future__ import annotations

import pytest

from conformance.evidence import step
from conformance.harness.ports import free_port
from conformance.peers.client_lab import RESPONSE_WITHIN, ClientLab, require
from conformance.peers.server_peer import RequestKind
from conformance.verdicts import check, fail
from reference.model.types import ContentFormat

pytestmark = [pytest.mark.role("client")]


@pytest.mark.requirement("LightweightM2M-HLF-00X1.3")
@pytest.mark.case("LWM2M-CMOB-001")
async def test_address_change_nat_rebinding_cmob_001(client_lab: ClientLab) -> None:
    """LWM2M-CMOB-001 The client's address changes under it (NAT rebinding).

    The proxy between client and server starts using a new source port for the client (as a NAT
    does after a timeout); the client does not know. Core 1.1.1 §6.2.2: it must still refresh its
    registration with an Update before the lifetime (6 s) expires; that Update reaches the server
    from the new address, keeps the registration location, and afterwards a Read sent to the new
    address is answered.
    """
    lab = client_lab
    srv, reg = await lab.factory_registered(lifetime=6)
    old = srv.client
    require(await srv.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN), "2.05",
            what="Read before the change", exchange=srv.exchange())
    mark = srv.mark()
    with step("the proxy rebinds: new upstream port for the client"):
        lab.rebind("server")
    with step("the client's next Update arrives from the new address"):
        upd = await srv.wait_request(RequestKind.UPDATE, timeout=6 + 1.5, after=mark)
        if upd is None:
            fail("no Update within the 6 s lifetime after the address change", requirement="LightweightM2M-HLF-00X1.3",
                 expected="an Update before the registration expires",
                 actual="; ".join(r.summary() for r in srv.requests[mark:]) or "nothing", exchange=srv.exchange())
        check(upd.remote != old, expected=f"a source address other than {old}", actual=str(upd.remote))
        check(upd.path == ("rd", reg.location), expected=f"Update to /rd/{reg.location}",
              actual="/" + "/".join(upd.path), exchange=srv.exchange())
    with step("the server reaches the client at the new address"):
        check(srv.client == upd.remote, expected="registration follows the Update's address", actual=str(srv.client))
        require(await srv.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN), "2.05",
                requirement="LightweightM2M-HLF-00X1.3", what="Read at the new address", exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.3", "LightweightM2M-HLF-00X1")
@pytest.mark.case("LWM2M-CMOB-002")
async def test_restart_on_new_port_cmob_002(client_lab: ClientLab) -> None:
    """LWM2M-CMOB-002 The device moves: restart on a new local port.

    The client is restarted with its persisted state on another UDP port (a nomadic device that
    comes back on a new network attachment). It must announce itself again -- a Register or an
    Update (Core 1.1.1 §6.2.1 / §6.2.2) -- from the new address, and answer a Read sent there.
    """
    lab = client_lab
    srv, _ = await lab.factory_registered(lifetime=30)
    old = srv.client
    mark = srv.mark()
    new_port = free_port("udp")
    with step(f"restart the client on local port {new_port}"):
        await lab.restart_client(local_port=new_port)
    with step("Register or Update from the new address"):
        req = await srv.wait_request(None, timeout=10.0, after=mark,
                                     where=lambda r: r.kind in (RequestKind.REGISTER, RequestKind.UPDATE))
        if req is None:
            fail("the client did not contact the server after moving", requirement="LightweightM2M-HLF-00X1.3",
                 expected="a Register or Update within 10 s", actual="nothing", exchange=srv.exchange())
        check(req.remote != old, expected=f"a source address other than {old}", actual=str(req.remote))
        await srv.wait_request(None, timeout=RESPONSE_WITHIN, after=mark, answered=True,
                               where=lambda r: r is req)
    with step("the server reaches the client at the new address"):
        check(srv.client == req.remote, expected="registration at the new address", actual=str(srv.client))
        require(await srv.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN), "2.05",
                requirement="LightweightM2M-HLF-00X1.3", what="Read at the new address", exchange=srv.exchange())
