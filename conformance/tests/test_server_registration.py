"""Registration Interface of a SERVER under test: Register, Update, De-register (the suite plays
the LwM2M Client).

Specification: OMA-TS-LightweightM2M_Core-V1_1_1 §6.2 (Client Registration Interface: §6.2.1
Register, §6.2.2 Update, §6.2.3 De-register) with the parameter tables of Register (Endpoint Client
Name ``ep`` mandatory, Lifetime ``lt`` optional with default 86400 s, LwM2M Version ``lwm2m``,
Binding Mode ``b``, SMS Number ``sms``, Queue Mode ``Q`` (1.1), Objects and Object Instances as a
link-format payload) and Update (every parameter optional); OMA-TS-LightweightM2M_Transport-V1_1_1
§6.2 (CoAP mapping: Register ``POST /rd?…`` -> 2.01 Created with Location-Path, Update
``POST /{location}`` -> 2.04 Changed, De-register ``DELETE /{location}`` -> 2.02 Deleted; 4.00
Bad Request when a mandatory parameter is missing or an unknown/malformed one is given; 4.04 Not
Found for a location that is not a registration; 4.12 Precondition Failed for an LwM2M version the
server does not support (1.1)); RFC 7252 §5.10.7 (each Location-Path option is one path segment).
Interop IDs from OMA-ETS-LightweightM2M-V1_0_1 (int-101 Initial Registration, int-102
Registration Update, int-103 Deregistration).
"""
from __future__ import annotations

import asyncio
import itertools
import secrets
from typing import Any

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from conformance.evidence import step
from conformance.peers.client_peer import DEFAULT_LINKS, ClientPeer, code_str
from conformance.tests.conftest_server import ServerSide
from conformance.verdicts import check, inconclusive, unsupported

pytestmark = [pytest.mark.role("server")]

HLF_REG = "LightweightM2M-HLF-00X1.6"
HLF_IP = "LightweightM2M-HLF-00X1.1"
HLF_DISCOVERY = "LightweightM2M-HLF-00X1.4"
HLF_NOMADIC = "LightweightM2M-HLF-00X1.3"
DEFAULT_LIFETIME = 86400  # Core 1.1.1 §6.2.1: lt absent -> 86400 s


def location_problems(resp: Message) -> list[str]:
    """What is wrong with the Location-Path of a Register response (empty list = fine)."""
    loc = tuple(resp.opt.location_path)
    out = []
    if not loc:
        out.append("no Location-Path option")
    for seg in loc:
        if "/" in seg:
            out.append(f"Location-Path segment {seg!r} contains '/' (RFC 7252 §5.10.7: one option per segment)")
        if seg in ("", ".", ".."):
            out.append(f"Location-Path segment {seg!r} is not a usable path segment")
    return out


def check_created(resp: Message, what: str, requirement: str = HLF_REG, *, strict: bool = False) -> None:
    """2.01 Created with a Location-Path. ``strict`` also checks the Location-Path encoding (one
    option per segment); only the cases about the Register response itself are strict, so that
    one encoding fault does not hide everything the other cases check."""
    check(resp.code == Code.CREATED, requirement=requirement,
          expected=f"{what}: 2.01 Created (Transport 1.1.1 §6.2)",
          actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")
    if not strict:
        check(bool(resp.opt.location_path), requirement=requirement,
              expected=f"{what}: a Location-Path naming the registration", actual="no Location-Path option")
        return
    problems = location_problems(resp)
    check(not problems, requirement=requirement,
          expected=f"{what}: a Location-Path naming the registration, one option per segment",
          actual="; ".join(problems) + f" (Location-Path options: {list(resp.opt.location_path)})")


def reported_int(rec: dict[str, Any] | None, key: str) -> int | None:
    if not rec or key not in rec:
        return None
    try:
        return int(str(rec[key]))
    except (TypeError, ValueError):
        return None


def bindings_for(side: ServerSide) -> list[str]:
    """Binding values the suite may send to this DUT (ICS bindings; 'Q' only in 1.0 syntax)."""
    claimed = list(side.profile.ics.bindings) or ["U"]
    out: list[str] = []
    for b in claimed:
        if side.lwm2m != "1.0":
            b = b.replace("Q", "")  # 1.1: queue mode is the separate Q parameter
        if b and b not in out:
            out.append(b)
    return out or ["U"]


async def registered_peer(side: ServerSide, **kw: Any) -> ClientPeer:
    peer = await side.peer()
    with step(f"{peer.endpoint} registers"):
        resp = await peer.register(lifetime=kw.pop("lifetime", 300), binding=kw.pop("binding", "U"), **kw)
        check_created(resp, "Register")
    return peer


# ---------------------------------------------------------------------------------------------

@pytest.mark.requirement(HLF_REG, HLF_IP, HLF_DISCOVERY)
@pytest.mark.case("LightweightM2M-1.0-int-101")
async def test_int_101_initial_registration(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-101 Initial Registration (server side): a Register
    ``POST /rd?ep=&lt=&lwm2m=&b=U`` with the Objects and Object Instances (Core 1.1.1 §6.2.1,
    Transport 1.1.1 §6.2) is answered 2.01 Created with a Location-Path; the server's user then sees
    the endpoint with its lifetime, and the location identifies the registration (an Update sent
    to it gets 2.04 Changed)."""
    side = server_side
    peer = await side.peer()
    with step("Register with ep, lt, lwm2m, b and the object links"):
        resp = await peer.register(lifetime=300, binding="U", links="</1/0>,</3/0>")
        check_created(resp, "Register", strict=True)
    with step("the server's user sees the registration"):
        rec = await side.wait_registered(peer.endpoint)
        check(rec is not None, requirement=HLF_DISCOVERY,
              expected=f"endpoint {peer.endpoint!r} listed by the server after 2.01",
              actual=f"registrations: {[e['endpoint'] for e in await side.registrations()]}")
        lt = reported_int(rec, "lifetime")
        if lt is not None:
            check(lt == 300, requirement=HLF_REG, expected="lifetime 300 as registered", actual=f"lifetime {lt}")
    with step("the Location-Path identifies the registration (Update -> 2.04)"):
        upd = await peer.update()
        check(upd.code == Code.CHANGED, requirement=HLF_REG,
              expected=f"2.04 Changed for an Update to the returned location /{'/'.join(peer.location or ())}",
              actual=f"{code_str(upd.code)} {upd.payload[:80]!r}")


@pytest.mark.requirement(HLF_REG, HLF_IP)
@pytest.mark.case("LWM2M-SRV-REG-001")
async def test_srv_reg_001_register_parameter_combinations(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-001 Register with every parameter combination the spec allows for this DUT:
    ``ep`` always, ``lwm2m`` always for 1.1 (Core 1.1.1 §6.2.1: mandatory) and present or absent
    for a 1.0 server (Core 1.0 §5.3.1: optional, default 1.0), the link-format payload always
    (mandatory), and each subset of the optional ``lt``, ``b`` (the ICS bindings), ``sms`` (if the
    ICS claims SMS) and ``Q`` (1.1 queue mode, if claimed). Each is answered 2.01 Created with a
    Location-Path; where the server reports the lifetime it is the given one or the default 86400 s."""
    side = server_side
    ics = side.profile.ics
    lts: list[int | None] = [None, 120]
    bs: list[str | None] = [None, *bindings_for(side)]
    if side.lwm2m == "1.0" and ics.queue_mode:
        bs.append("UQ")
    smss: list[str | None] = [None, "15551234567"] if ics.sms else [None]
    qs = [False, True] if (side.lwm2m != "1.0" and ics.queue_mode) else [False]
    versions: list[str | None] = [side.lwm2m, None] if side.lwm2m == "1.0" else [side.lwm2m]
    failures: list[str] = []
    combos = list(itertools.product(lts, bs, smss, qs, versions))
    for lt, b, sms, q, ver in combos:
        peer = await side.peer()
        label = f"lt={lt} b={b} sms={sms} Q={q} lwm2m={ver}"
        with step(f"Register {label}"):
            resp = await peer.register(lifetime=lt, binding=b, sms=sms, queue=q, lwm2m=ver)
            if resp.code != Code.CREATED or not resp.opt.location_path:
                failures.append(f"{label}: {code_str(resp.code)} Location-Path={list(resp.opt.location_path)} "
                                f"{resp.payload[:60]!r}")
                continue
            rec = await side.find(peer.endpoint)
            if rec is None:
                failures.append(f"{label}: 2.01 but the server does not list {peer.endpoint}")
                continue
            want = lt if lt is not None else DEFAULT_LIFETIME
            got = reported_int(rec, "lifetime")
            if got is not None and got != want:
                failures.append(f"{label}: server reports lifetime {got}, expected {want}")
            await peer.deregister()
    check(not failures, requirement=HLF_REG,
          expected=f"2.01 Created + Location-Path for all {len(combos)} allowed combinations",
          actual="\n".join(failures))


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LightweightM2M-1.0-int-102")
async def test_int_102_registration_update(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-102 Registration Update (server side): Update
    ``POST /{location}`` with each subset of ``lt``, ``b``, ``sms`` (if claimed), ``Q`` (1.1,
    if claimed) and with and without the Objects payload (Core 1.1.1 §6.2.2: all optional) is
    answered 2.04 Changed, and a new lifetime is what the server reports afterwards."""
    side = server_side
    ics = side.profile.ics
    peer = await registered_peer(side)
    current_lt = 300
    lts: list[int | None] = [None, 240]
    bs: list[str | None] = [None, bindings_for(side)[0]]
    smss: list[str | None] = [None, "15557654321"] if ics.sms else [None]
    qs = [False, True] if (side.lwm2m != "1.0" and ics.queue_mode) else [False]
    payloads: list[str | None] = [None, DEFAULT_LINKS]
    failures: list[str] = []
    combos = list(itertools.product(lts, bs, smss, qs, payloads))
    for i, (lt, b, sms, q, links) in enumerate(combos):
        new_lt = None if lt is None else lt + i  # a different value each time: a stale one shows
        label = f"lt={new_lt} b={b} sms={sms} Q={q} payload={'yes' if links else 'no'}"
        with step(f"Update {label}"):
            resp = await peer.update(lifetime=new_lt, binding=b, sms=sms, queue=q, links=links)
            if resp.code != Code.CHANGED:
                failures.append(f"{label}: {code_str(resp.code)} {resp.payload[:60]!r}")
                continue
            if new_lt is not None:
                current_lt = new_lt
            got = reported_int(await side.find(peer.endpoint), "lifetime")
            if got is not None and got != current_lt:
                failures.append(f"{label}: server reports lifetime {got}, expected {current_lt}")
    check(not failures, requirement=HLF_REG,
          expected=f"2.04 Changed (and the new lifetime applied) for all {len(combos)} Updates",
          actual="\n".join(failures))


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-002")
async def test_srv_reg_002_update_binding_applied(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-002 an Update's Binding Mode replaces the registered one (Core 1.1.1 §6.2.2:
    the Update carries the parameters that changed). Checked where the server reports the
    binding of a registration; without that view the verdict is inconclusive."""
    side = server_side
    peer = await registered_peer(side, binding="U")
    rec = await side.find(peer.endpoint)
    if not rec or "binding" not in rec:
        inconclusive("the server's profile does not report a registration's binding")
    target = "UQ" if side.lwm2m == "1.0" else None
    other = [b for b in bindings_for(side) if b != "U"]
    new_b = target or (other[0] if other else None)
    q = side.lwm2m != "1.0" and side.profile.ics.queue_mode and new_b is None
    if new_b is None and not q:
        unsupported("the ICS claims no second binding or queue mode to update to")
    with step(f"Update b={new_b} Q={q}"):
        resp = await peer.update(binding=new_b, queue=q)
        check(resp.code == Code.CHANGED, requirement=HLF_REG, expected="2.04 Changed", actual=code_str(resp.code))
    rec = await side.find(peer.endpoint)
    got = str((rec or {}).get("binding"))
    if new_b is not None:
        check(got.replace("Q", "") == new_b.replace("Q", "") and ("Q" in got) == ("Q" in new_b)
              or (new_b == "UQ" and got == "U" and bool((rec or {}).get("queue_mode"))),
              requirement=HLF_REG, expected=f"binding {new_b} after the Update", actual=f"binding {got} ({rec})")
    else:
        check(bool((rec or {}).get("queue_mode")), requirement=HLF_REG, expected="queue mode after Update with Q",
              actual=str(rec))


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LightweightM2M-1.0-int-103")
async def test_int_103_deregistration(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-103 Deregistration (server side): ``DELETE /{location}`` is
    answered 2.02 Deleted (Core 1.1.1 §6.2.3, Transport 1.1.1 §6.2), the endpoint is no longer
    registered, and a later Update to that location gets 4.04 Not Found."""
    side = server_side
    peer = await registered_peer(side)
    location = peer.location
    with step("De-register"):
        resp = await peer.deregister()
        check(resp.code == Code.DELETED, requirement=HLF_REG, expected="2.02 Deleted",
              actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")
    with step("the server's user no longer sees the endpoint"):
        rec = await side.wait_registered(peer.endpoint, present=False)
        check(rec is None, requirement=HLF_REG, expected=f"{peer.endpoint} not registered after 2.02",
              actual=f"still listed: {rec}")
    with step("an Update to the removed location gets 4.04"):
        resp = await peer.update(location=location)
        check(resp.code == Code.NOT_FOUND, requirement=HLF_REG, expected="4.04 Not Found",
              actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-003")
async def test_srv_reg_003_register_without_endpoint_name(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-003 a Register without the mandatory Endpoint Client Name ``ep`` is
    answered 4.00 Bad Request (Core 1.1.1 §6.2.1; Transport 1.1.1 §6.2: "mandatory parameter is
    not specified") and creates no registration."""
    side = server_side
    peer = await side.peer()
    before = len(await side.registrations())
    with step("Register without ep"):
        resp = await peer.register(endpoint=None, lifetime=300)
    check(resp.code == Code.BAD_REQUEST, requirement=HLF_REG, expected="4.00 Bad Request",
          actual=f"{code_str(resp.code)} Location-Path={list(resp.opt.location_path)}")
    after = len(await side.registrations())
    check(after == before, requirement=HLF_REG, expected=f"{before} registrations (none created)",
          actual=f"{after} registrations")


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-004")
@pytest.mark.parametrize("bad", ["lt=abc", "lt=-5", "lt=1.5", "lt=", "b=XYZ", "lwm2m=one"])
async def test_srv_reg_004_register_malformed_parameter(server_side: ServerSide, bad: str) -> None:
    """LWM2M-SRV-REG-004 a Register with a malformed parameter value (non-numeric or negative
    Lifetime, empty value, an unknown Binding Mode, a version that is not ``major.minor``) is
    answered 4.00 Bad Request (Core 1.1.1 §6.2.1 parameter formats; RFC 7252 §5.9.2.1) and not
    registered."""
    side = server_side
    peer = await side.peer()
    key = bad.split("=")[0]
    query = [f"ep={peer.endpoint}", f"lwm2m={side.lwm2m}", "lt=300", "b=U"]
    query = [q for q in query if not q.startswith(key + "=")] + [bad]
    with step(f"Register with {bad!r}"):
        resp = await peer.register(query=query)
    check(resp.code == Code.BAD_REQUEST, requirement=HLF_REG, expected=f"4.00 Bad Request for {bad!r}",
          actual=f"{code_str(resp.code)} Location-Path={list(resp.opt.location_path)}")
    check(await side.find(peer.endpoint) is None, requirement=HLF_REG,
          expected=f"{peer.endpoint} not registered", actual="the server lists it")


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-005")
async def test_srv_reg_005_register_without_objects(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-005 a Register without the mandatory Objects and Object Instances payload is
    answered 4.00 Bad Request (Core 1.1.1 §6.2.1: the link-format list is mandatory in Register)."""
    side = server_side
    peer = await side.peer()
    with step("Register without payload"):
        resp = await peer.register(lifetime=300, links=None)
    check(resp.code == Code.BAD_REQUEST, requirement=HLF_REG, expected="4.00 Bad Request",
          actual=f"{code_str(resp.code)} Location-Path={list(resp.opt.location_path)}")


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-006")
async def test_srv_reg_006_register_unknown_parameter(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-006 a Register with a parameter the Register operation does not define is
    answered 4.00 Bad Request (Transport 1.1.1 §6.2 Register: "unknown parameter is specified")."""
    side = server_side
    peer = await side.peer()
    with step("Register with foo=bar"):
        resp = await peer.register(lifetime=300, extra_query=["foo=bar"])
    check(resp.code == Code.BAD_REQUEST, requirement=HLF_REG, expected="4.00 Bad Request",
          actual=f"{code_str(resp.code)} Location-Path={list(resp.opt.location_path)}")


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-007")
@pytest.mark.ics("lwm2m_version:1.1")
async def test_srv_reg_007_register_unsupported_version(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-007 a Register claiming an LwM2M version the server does not support
    (``lwm2m=9.9``) is refused with 4.12 Precondition Failed (Core 1.1.1 §6.2.1: the server MUST
    refuse a Client's Register if it does not support the indicated version)."""
    side = server_side
    peer = await side.peer()
    with step("Register with lwm2m=9.9"):
        resp = await peer.register(lifetime=300, lwm2m="9.9")
    check(resp.code == Code.PRECONDITION_FAILED, requirement=HLF_REG, expected="4.12 Precondition Failed",
          actual=f"{code_str(resp.code)} Location-Path={list(resp.opt.location_path)}")


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-008")
async def test_srv_reg_008_unknown_location(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-008 Update and De-register of a location that is not a registration are
    answered 4.04 Not Found (Transport 1.1.1 §6.2: "URI of Update/De-register operation is not
    found"), and the real registration is untouched."""
    side = server_side
    peer = await registered_peer(side)
    assert peer.location is not None
    segments = "/".join(peer.location).split("/")  # tolerate a Location-Path given as one option
    bogus = (*segments[:-1], "nx" + secrets.token_hex(6))
    with step(f"Update /{'/'.join(bogus)}"):
        resp = await peer.update(location=bogus, lifetime=100)
        check(resp.code == Code.NOT_FOUND, requirement=HLF_REG, expected="4.04 Not Found for Update",
              actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")
    with step(f"De-register /{'/'.join(bogus)}"):
        resp = await peer.deregister(location=bogus)
        check(resp.code == Code.NOT_FOUND, requirement=HLF_REG, expected="4.04 Not Found for De-register",
              actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")
    with step("the real registration still works"):
        resp = await peer.update()
        check(resp.code == Code.CHANGED, requirement=HLF_REG, expected="2.04 for the real location",
              actual=code_str(resp.code))


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-009")
async def test_srv_reg_009_lifetime_expiry(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-009 lifetime expiry (Core 1.1.1 §6.2.1: the registration is removed when no
    Update arrives within its Lifetime): a registration with ``lt=2`` kept alive by Updates stays
    registered past its first lifetime; once the Updates stop it is removed (allowing 3 s for the
    server's expiry sweep), and an Update to the old location then gets 4.04 Not Found."""
    side = server_side
    keep = await registered_peer(side, lifetime=2)
    gone = await registered_peer(side, lifetime=2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with step("keep one registration alive with Updates every 0.8 s for 3.2 s"):
        while loop.time() - t0 < 3.2:
            await asyncio.sleep(0.8)
            resp = await keep.update()
            check(resp.code == Code.CHANGED, requirement=HLF_REG,
                  expected="2.04 for an Update within the lifetime", actual=code_str(resp.code))
    with step("the refreshed registration is still there"):
        check(await side.find(keep.endpoint) is not None, requirement=HLF_REG,
              expected=f"{keep.endpoint} registered (updated within its lifetime)", actual="not listed")
    with step("the other one is removed within lifetime + 3 s"):
        remaining = max(0.0, 2 + 3 - (loop.time() - t0))
        rec = await side.wait_registered(gone.endpoint, present=False, timeout=remaining)
        check(rec is None, requirement=HLF_REG,
              expected=f"{gone.endpoint} removed after its 2 s lifetime passed without Update",
              actual=f"still registered {loop.time() - t0:.1f} s after Register: {rec}")
    with step("an Update to the expired location gets 4.04"):
        resp = await gone.update()
        check(resp.code == Code.NOT_FOUND, requirement=HLF_REG, expected="4.04 Not Found",
              actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-010")
async def test_srv_reg_010_reregistration_replaces(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-010 a client that registers again with the same Endpoint Client Name (after a
    reboot, Core 1.1.1 §6.2.1) gets 2.01 Created with a working location, and the server holds one
    registration for that endpoint, not two."""
    side = server_side
    first = await registered_peer(side)
    second = await side.peer(first.endpoint)
    with step("the same endpoint registers again from a new address"):
        resp = await second.register(lifetime=300, binding="U")
        check_created(resp, "second Register")
    with step("the new location works"):
        resp = await second.update()
        check(resp.code == Code.CHANGED, requirement=HLF_REG, expected="2.04 for the new location",
              actual=code_str(resp.code))
    n = await side.count(first.endpoint)
    check(n == 1, requirement=HLF_REG, expected=f"exactly one registration of {first.endpoint}",
          actual=f"{n} registrations")


@pytest.mark.requirement(HLF_NOMADIC, HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-011")
async def test_srv_reg_011_update_from_new_address(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-011 a nomadic client (seed 000: fixed, nomadic and mobile devices) sends its
    Update from a new transport address: 2.04 Changed, and the server's next request to the client
    goes to the new address (Core 1.1.1 §6.2.2: the Update refreshes the client's address)."""
    side = server_side
    if not side.can("read"):
        unsupported("the profile has no [actions.read] to make the server contact the client")
    old = await registered_peer(side)
    moved = await side.peer(old.endpoint)
    moved.values = dict(old.values)
    with step("Update from a new source port"):
        resp = await moved.update(location=old.location)
        check(resp.code == Code.CHANGED, requirement=HLF_REG, expected="2.04 Changed", actual=code_str(resp.code))
    start_old, start_new = len(old.requests), len(moved.requests)
    with step("the server reads /3/0/0; the request must reach the new address"):
        res = await side.adapter.read(old.endpoint, "/3/0/0", None)
        got = await moved.wait_request(lambda r: r.uri == "/3/0/0", timeout=5, start=start_new)
    at_old = len(old.requests) - start_old
    if got is None and at_old == 0 and not res.ok:
        inconclusive(f"the server did not perform the Read at all ({res.detail}); cannot tell where it would go")
    check(got is not None, requirement=HLF_NOMADIC,
          expected="GET /3/0/0 at the address of the latest Update",
          actual=f"nothing at the new address; {at_old} request(s) at the old one ({res.detail})")
