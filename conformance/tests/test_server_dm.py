"""Device Management operations a SERVER under test issues through its profile (the suite plays
the registered client and records what arrives).

Each case makes the server's user ask for an operation through the profile's DM actions
(docs/profiles.md ``[actions.*]``), then checks at the packet level that the request reaching the
client has the right method, path and options, and at the user level that the client's answer
reaches the server's user.

Specification: Core 1.1.1 §6.3 (Device Management and Service Enablement Interface: Read §6.3.1,
Discover §6.3.2, Write §6.3.3, Write-Attributes §6.3.4, Execute §6.3.5) and §6.4 (Information
Reporting: Observe/Notify, RFC 7641); Transport 1.1.1 §6.3 (CoAP mapping: Read = GET /path with
Accept, Discover = GET with Accept: application/link-format (40), Write (replace) = PUT with
Content-Format, Write-Attributes = PUT /path?pmin=&pmax= without payload, Execute = POST
/oid/iid/rid) and §6.4 (Observe = GET with Observe 0); Core 1.1.1 §7.4 content formats.
Interop IDs from OMA-ETS-LightweightM2M-V1_0_1 (int-201, int-203, int-205, int-241, int-260,
int-301).
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiocoap.numbers.codes import Code

from conformance.adapters import ActionResult
from conformance.evidence import step
from conformance.peers.client_peer import ClientPeer, RecordedRequest, code_str
from conformance.tests.conftest_server import ServerSide
from conformance.verdicts import check, error, unsupported
from reference import formats
from reference.formats.errors import FormatError
from reference.model.path import Path

pytestmark = [pytest.mark.role("server")]

HLF_DISCOVERY = "LightweightM2M-HLF-00X1.4"
FURTHER = "DM-SC-GEN-X.2"
REPORTING = "LightweightM2M-HLF-SG2"
#: Content formats LwM2M 1.0/1.1 define for values (Core 1.1.1 Table 7.4.-1; 1.0 §6.4).
LWM2M_VALUE_FORMATS = {0, 42, 60, 110, 112, 11542, 11543}


async def registered(side: ServerSide) -> ClientPeer:
    peer = await side.peer()
    with step(f"{peer.endpoint} registers"):
        resp = await peer.register(lifetime=300, binding="U")
        check(resp.code == Code.CREATED, requirement="LightweightM2M-HLF-00X1.6", expected="2.01 Created",
              actual=code_str(resp.code))
    return peer


async def perform(side: ServerSide, peer: ClientPeer, action: str, coro: Any,
                  match: Any, timeout: float = 8.0) -> tuple[ActionResult, RecordedRequest | None]:
    """Run the profile action ``coro`` while waiting for the request it must cause at the peer."""
    if not side.can(action):
        unsupported(f"the {side.profile.name} profile has no [actions.{action}]")
    start = len(peer.requests)
    task = asyncio.ensure_future(coro)
    req = await peer.wait_request(match, timeout=timeout, start=start)
    try:
        res = await asyncio.wait_for(task, timeout)
    except asyncio.TimeoutError:
        error(f"the {action} action did not return within {timeout:g} s")
    if req is None and not res.ok:
        error(f"the server refused the {action} action and sent nothing to the client: {res.detail} "
              f"{res.text[:200]}")
    return res, req


def fmt_name(side: ServerSide, *wanted: str) -> str | None:
    """The first of ``wanted`` content-format names the DUT's ICS claims (None: none claimed)."""
    for w in wanted:
        if side.profile.ics.supports(f"content_format:{w}"):
            return w
    return None


# ---------------------------------------------------------------------------------------------

@pytest.mark.requirement(HLF_DISCOVERY)
@pytest.mark.case("LightweightM2M-1.0-int-201")
@pytest.mark.ics("content_format:text")
async def test_int_201_read_plain_text(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-201 Querying basic information in Plain Text (server side): the
    user's Read of /3/0/0 (Manufacturer) in text reaches the client as ``GET /3/0/0`` with
    Accept 0 or none (Core 1.1.1 §6.3.1, Transport 1.1.1 §6.3), and the client's value reaches
    the user."""
    side = server_side
    peer = await registered(side)
    res, req = await perform(side, peer, "read", side.adapter.read(peer.endpoint, "/3/0/0", "text"),
                             lambda r: True)
    check(req is not None, requirement=HLF_DISCOVERY, expected="a request at the client", actual="none")
    assert req is not None
    check(req.method == "GET" and req.uri == "/3/0/0", requirement=HLF_DISCOVERY,
          expected="GET /3/0/0", actual=req.summary())
    check(req.accept in (None, 0), requirement=HLF_DISCOVERY,
          expected="Accept: text/plain (0) or none for a text Read", actual=f"Accept {req.accept}")
    value = str(peer.get("/3/0/0"))
    check(res.ok and value in res.text, requirement=HLF_DISCOVERY,
          expected=f"the user gets the client's value {value!r}", actual=f"{res.detail}: {res.text[:200]}")


@pytest.mark.requirement(HLF_DISCOVERY)
@pytest.mark.case("LightweightM2M-1.0-int-203")
@pytest.mark.ics("content_format:tlv")
async def test_int_203_read_tlv(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-203 Querying basic information in TLV (server side): a Read of the
    Device object instance /3/0 in TLV reaches the client as ``GET /3/0`` with Accept 11542
    (Core 1.1.1 §6.3.1, §7.4.3), and the values of Manufacturer and Serial Number reach the user."""
    side = server_side
    peer = await registered(side)
    res, req = await perform(side, peer, "read", side.adapter.read(peer.endpoint, "/3/0", "tlv"), lambda r: True)
    check(req is not None, requirement=HLF_DISCOVERY, expected="a request at the client", actual="none")
    assert req is not None
    check(req.method == "GET" and req.uri == "/3/0", requirement=HLF_DISCOVERY, expected="GET /3/0",
          actual=req.summary())
    check(req.accept == 11542, requirement=HLF_DISCOVERY,
          expected="Accept: application/vnd.oma.lwm2m+tlv (11542)", actual=f"Accept {req.accept}")
    missing = [str(peer.get(p)) for p in ("/3/0/0", "/3/0/2") if str(peer.get(p)) not in res.text]
    check(res.ok and not missing, requirement=HLF_DISCOVERY,
          expected="the user gets the Manufacturer and Serial Number values",
          actual=f"missing {missing}; {res.detail}: {res.text[:300]}")


@pytest.mark.requirement(FURTHER)
@pytest.mark.case("LightweightM2M-1.0-int-205")
async def test_int_205_write_resource(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-205 Setting basic information (server side): the user's Write of
    120 to the Lifetime /1/0/1 reaches the client as ``PUT /1/0/1`` (Write-replace, Transport
    1.1.1 §6.3; POST on a resource would be Execute) with a Content-Format LwM2M defines for values
    (Core 1.1.1 §7.4) whose payload decodes to 120; the client applies it and the user learns it
    succeeded."""
    side = server_side
    peer = await registered(side)
    fmt = fmt_name(side, "text", "tlv", "senml-json", "senml-cbor", "lwm2m-json")
    res, req = await perform(side, peer, "write", side.adapter.write(peer.endpoint, "/1/0/1", 120, fmt),
                             lambda r: True)
    check(req is not None, requirement=FURTHER, expected="a request at the client", actual="none")
    assert req is not None
    check(req.method == "PUT" and req.uri == "/1/0/1", requirement=FURTHER,
          expected="PUT /1/0/1 (Write replace)", actual=req.summary())
    check(req.content_format in LWM2M_VALUE_FORMATS, requirement=FURTHER,
          expected=f"a Content-Format LwM2M defines for values {sorted(LWM2M_VALUE_FORMATS)}",
          actual=f"Content-Format {req.content_format}")
    try:
        decoded = formats.decode(req.content_format, req.payload, Path(1, 0, 1), peer.registry)
    except (FormatError, TypeError) as e:
        decoded = {"error": str(e)}
    check(decoded.get(Path(1, 0, 1)) == 120, requirement=FURTHER,
          expected="the payload, decoded in its declared Content-Format, is /1/0/1 = 120",
          actual=f"{decoded} from {req.payload[:60]!r} (cf {req.content_format})")
    check(req.response_code == Code.CHANGED and peer.get("/1/0/1") == 120, requirement=FURTHER,
          expected="the client applied the Write (2.04)", actual=f"{code_str(req.response_code)}, value {peer.get('/1/0/1')}")
    check(res.ok, requirement=FURTHER, expected="the user learns the Write succeeded", actual=f"{res.detail}: {res.text[:200]}")


@pytest.mark.requirement(FURTHER)
@pytest.mark.case("LightweightM2M-1.0-int-241")
async def test_int_241_execute_reboot(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-241 Executable Resource: rebooting the device (server side): the
    user's Execute of /3/0/4 reaches the client as ``POST /3/0/4`` (Core 1.1.1 §6.3.5, Transport
    1.1.1 §6.3) and the client's 2.04 reaches the user."""
    side = server_side
    peer = await registered(side)
    res, req = await perform(side, peer, "execute", side.adapter.execute(peer.endpoint, "/3/0/4", ""), lambda r: True)
    check(req is not None, requirement=FURTHER, expected="a request at the client", actual="none")
    assert req is not None
    check(req.method == "POST" and req.uri == "/3/0/4" and not req.query, requirement=FURTHER,
          expected="POST /3/0/4", actual=req.summary())
    check(peer.executed and peer.executed[-1][0] == "/3/0/4", requirement=FURTHER,
          expected="the client executed /3/0/4", actual=str(peer.executed))
    check(res.ok, requirement=FURTHER, expected="the user learns the Execute succeeded", actual=f"{res.detail}: {res.text[:200]}")


@pytest.mark.requirement(HLF_DISCOVERY)
@pytest.mark.case("LightweightM2M-1.0-int-260")
async def test_int_260_discover(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-260 Discover Command (server side): the user's Discover of /3/0
    reaches the client as ``GET /3/0`` with Accept: application/link-format (40) (Core 1.1.1
    §6.3.2, Transport 1.1.1 §6.3) and the link list reaches the user."""
    side = server_side
    peer = await registered(side)
    res, req = await perform(side, peer, "discover", side.adapter.discover(peer.endpoint, "/3/0"), lambda r: True)
    check(req is not None, requirement=HLF_DISCOVERY, expected="a request at the client", actual="none")
    assert req is not None
    check(req.method == "GET" and req.uri == "/3/0" and req.accept == 40, requirement=HLF_DISCOVERY,
          expected="GET /3/0 with Accept 40", actual=req.summary())
    check(res.ok and "/3/0/9" in res.text, requirement=HLF_DISCOVERY,
          expected="the user gets the client's links (e.g. </3/0/9>)", actual=f"{res.detail}: {res.text[:300]}")


@pytest.mark.requirement(REPORTING)
@pytest.mark.case("LWM2M-SRV-DM-001")
async def test_srv_dm_001_write_attributes(server_side: ServerSide) -> None:
    """LWM2M-SRV-DM-001 the user sets the reporting cycle (seed 001: "remotely configurable to
    set/change its reporting cycle") of /3/0/9 with pmin=5, pmax=60: the client receives
    ``PUT /3/0/9?pmin=5&pmax=60`` without payload (Write-Attributes, Core 1.1.1 §6.3.4, Transport
    1.1.1 §6.3)."""
    side = server_side
    peer = await registered(side)
    res, req = await perform(side, peer, "write_attributes",
                             side.adapter.write_attributes(peer.endpoint, "/3/0/9", {"pmin": 5, "pmax": 60}),
                             lambda r: True)
    check(req is not None, requirement=REPORTING, expected="a request at the client", actual="none")
    assert req is not None
    check(req.method == "PUT" and req.uri == "/3/0/9" and not req.payload, requirement=REPORTING,
          expected="PUT /3/0/9 without payload", actual=req.summary())
    check({"pmin=5", "pmax=60"} <= set(req.query), requirement=REPORTING,
          expected="Uri-Query pmin=5 and pmax=60", actual=str(req.query))
    check(res.ok, requirement=REPORTING, expected="the user learns it succeeded", actual=f"{res.detail}: {res.text[:200]}")


@pytest.mark.requirement(REPORTING)
@pytest.mark.case("LightweightM2M-1.0-int-301")
async def test_int_301_observe_and_notify(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-301 Observation and Notification (server side): the user's Observe of
    /3/0/9 reaches the client as ``GET /3/0/9`` with Observe 0 and a token (Core 1.1.1 §6.4.1,
    RFC 7641 §3.1); two notifications the client then sends (RFC 7641 §4.2, increasing Observe
    numbers) reach the user in order."""
    side = server_side
    peer = await registered(side)
    res, req = await perform(side, peer, "observe", side.adapter.observe(peer.endpoint, "/3/0/9", None), lambda r: True)
    check(req is not None, requirement=REPORTING, expected="a request at the client", actual="none")
    assert req is not None
    check(req.method == "GET" and req.uri == "/3/0/9" and req.observe == 0 and len(req.token) > 0,
          requirement=REPORTING, expected="GET /3/0/9 with Observe 0 and a non-empty token", actual=req.summary())
    check(res.ok, requirement=REPORTING, expected="the observation is established for the user",
          actual=f"{res.detail}: {res.text[:200]}")
    with step("the client notifies 41 then 57"):
        await peer.notify("/3/0/9", 41)
        await asyncio.sleep(0.3)
        await peer.notify("/3/0/9", 57)
    if not side.can("notifications"):
        unsupported(f"the {side.profile.name} profile has no [actions.notifications] to see what the user got")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    seen: list[Any] = []
    while loop.time() < deadline:
        got = await side.adapter.notifications(peer.endpoint, "/3/0/9")
        seen = leaf_values(got.value if got.value is not None else got.text)
        if in_order(seen, ["41", "57"]):
            break
        await asyncio.sleep(0.2)
    check(in_order(seen, ["41", "57"]), requirement=REPORTING,
          expected="the user sees the notified values 41 and 57, in that order", actual=str(seen)[:400])


def leaf_values(obj: Any) -> list[str]:
    """Every scalar of a JSON document, in document order, as text."""
    if isinstance(obj, dict):
        return [v for x in obj.values() for v in leaf_values(x)]
    if isinstance(obj, list):
        return [v for x in obj for v in leaf_values(x)]
    return [str(obj)]


def in_order(seen: list[str], wanted: list[str]) -> bool:
    i = 0
    for v in seen:
        if i < len(wanted) and v == wanted[i]:
            i += 1
    return i == len(wanted)
