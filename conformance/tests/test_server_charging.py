"""Charging records of a SERVER under test (requirement LightweightM2M-HLF-SG4, seed 001, smart
grid: "The network operator should be able to charge smart grid utility back office").

The suite's client registers, updates and answers the server's reads through the recording proxy,
then asks the server (profile action ``[actions.charging_records]``, ICS ``charging_records``)
for its records of that endpoint and compares them with what the proxy saw on the wire.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiocoap.numbers.codes import Code

from conformance.evidence import step
from conformance.peers.client_peer import code_str
from conformance.tests.conftest_server import ServerSide
from conformance.verdicts import check, error, fail, unsupported

pytestmark = [pytest.mark.role("server")]

SG4 = "LightweightM2M-HLF-SG4"
UPDATES = 3
READS = 2
FIELDS = ("uplink_messages", "uplink_bytes", "downlink_messages", "downlink_bytes")


def _record(value: Any, endpoint: str) -> dict[str, Any] | None:
    """The record object in the action's value: the object itself, or the one for ``endpoint``
    in a list / under "records"."""
    if isinstance(value, dict) and isinstance(value.get("records"), list):
        value = value["records"]
    if isinstance(value, list):
        value = next((r for r in value if isinstance(r, dict) and r.get("endpoint") == endpoint), None)
    return value if isinstance(value, dict) else None


@pytest.mark.requirement(SG4)
@pytest.mark.case("LWM2M-SRV-CHG-001")
@pytest.mark.ics("charging_records")
async def test_srv_chg_001_records_match_the_wire(server_side: ServerSide) -> None:
    """LWM2M-SRV-CHG-001 the server's charging records of an endpoint equal its traffic on the wire.

    Scenario: the suite's client Registers (Core 1.1.1 §6.2.1), sends 3 Registration Updates
    (§6.2.2), answers 2 Reads of /3/0/0 the server's user asks for (§6.3.1), and De-registers
    (§6.2.3), all over NoSec CoAP through the recording proxy. Then the profile's
    ``charging_records`` action fetches the server's record of the endpoint.

    Expected, exactly: ``uplink_messages`` / ``uplink_bytes`` = the number of CoAP messages the
    proxy forwarded from the client to the server and the sum of their sizes; ``downlink_messages``
    / ``downlink_bytes`` = the same for server to client. A message's size is the UDP payload,
    i.e. the whole CoAP message (RFC 7252 §3: 4-byte header, token, options, payload marker and
    payload), excluding the IP and UDP headers. Every datagram counts (piggybacked responses,
    Empty ACKs, retransmissions, if any). ``registrations`` = 1 and ``updates`` = 3 when the
    record has them. The record must still be retrievable after the De-register: traffic is
    charged after the device has left.
    """
    side = server_side
    if not side.can("charging_records"):
        unsupported(f"the {side.profile.name} profile has no [actions.charging_records]")
    if not side.can("read"):
        unsupported(f"the {side.profile.name} profile has no [actions.read] to make the server send requests")
    peer = await side.peer()
    start = len(side.proxy.datagrams)
    with step("the client registers"):
        resp = await peer.register(lifetime=300, binding="U")
        check(resp.code == Code.CREATED, requirement="LightweightM2M-HLF-00X1.6", expected="2.01 Created",
              actual=code_str(resp.code))
    with step(f"the client sends {UPDATES} Updates"):
        for i in range(UPDATES):
            resp = await peer.update()
            check(resp.code == Code.CHANGED, requirement="LightweightM2M-HLF-00X1.6",
                  expected=f"2.04 Changed for Update {i + 1}", actual=code_str(resp.code))
    with step(f"the server's user reads /3/0/0 {READS} times; the client answers"):
        for i in range(READS):
            before = len(peer.requests)
            res = await asyncio.wait_for(side.adapter.read(peer.endpoint, "/3/0/0", None), 15)
            req = await peer.wait_request(lambda r: r.method == "GET" and r.uri == "/3/0/0", timeout=5, start=before)
            if req is None:
                error(f"read {i + 1}: the read action did not make the server send GET /3/0/0 "
                      f"({res.detail} {res.text[:200]})")
    with step("the client de-registers"):
        resp = await peer.deregister()
        check(resp.code == Code.DELETED, requirement="LightweightM2M-HLF-00X1.6", expected="2.02 Deleted",
              actual=code_str(resp.code))
    await asyncio.sleep(0.3)  # nothing more is due; let any straggler reach the proxy first
    wire = side.proxy.datagrams[start:]
    observed = {
        "uplink_messages": sum(1 for d in wire if d.direction == "to-dut"),
        "uplink_bytes": sum(len(d.data) for d in wire if d.direction == "to-dut"),
        "downlink_messages": sum(1 for d in wire if d.direction == "from-dut"),
        "downlink_bytes": sum(len(d.data) for d in wire if d.direction == "from-dut"),
    }
    # the scenario itself: at least one message each way per operation (sanity of the measurement)
    operations = 1 + UPDATES + READS + 1
    if observed["uplink_messages"] < operations or observed["downlink_messages"] < operations:
        error(f"the proxy recorded fewer messages than operations ({observed}); the measurement is void")
    with step("the operator retrieves the endpoint's charging record"):
        res = await side.adapter.charging_records(peer.endpoint)
    rec = _record(res.value, peer.endpoint) if res.ok else None
    if rec is None:
        fail(f"no charging record of {peer.endpoint} after its traffic", requirement=SG4,
             expected="the server's record of the endpoint (ok, an object with the traffic counts)",
             actual=f"{res.detail}: {res.text[:300]}")
    assert rec is not None
    missing = [f for f in FIELDS if not isinstance(rec.get(f), int) or isinstance(rec.get(f), bool)]
    check(not missing, requirement=SG4, expected=f"integer fields {', '.join(FIELDS)}",
          actual=f"missing/not integers: {missing} in {rec}")
    got = {f: rec[f] for f in FIELDS}
    side.evidence.note(f"on the wire: {observed}; the server's record: {rec}")
    check(got == observed, requirement=SG4,
          expected=f"the traffic on the wire (CoAP messages and bytes excluding IP/UDP headers): {observed}",
          actual=f"the server's record: {got}")
    for name, want in (("registrations", 1), ("updates", UPDATES)):
        if name in rec:
            check(rec[name] == want, requirement=SG4, expected=f"{name} = {want}", actual=f"{name} = {rec[name]}")
