"""Client Registration Interface (Core 1.1.1 §5.3 / §6.2, Transport 1.1.1 §6.2) of a client DUT.

The suite plays the LwM2M Server (conformance/peers/server_peer.py) behind a recording proxy. Test
case IDs are those of OMA-ETS-LightweightM2M_INT 1.1 where one exists.
"""
from __future__ import annotations

import re

import pytest
from aiocoap import Code

from conformance.evidence import step
from conformance.peers.client_lab import RESPONSE_WITHIN, ClientLab, require
from conformance.peers.server_peer import RequestKind, code_str
from conformance.verdicts import check, fail, inconclusive
from reference.formats import FormatError
from reference.model.types import ContentFormat

pytestmark = [pytest.mark.role("client")]

_VERSION = re.compile(r"^[0-9]+\.[0-9]+$")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.6", "LightweightM2M-HLF-00X1.4", "LightweightM2M-HLF-DC3")
@pytest.mark.case("LightweightM2M-1.1-int-101")
async def test_initial_registration_int_101(client_lab: ClientLab, dut_profile) -> None:
    """LightweightM2M-1.1-int-101 Initial Registration.

    Core 1.1.1 §6.2.1 (Register) and Transport 1.1.1 §6.2: the Register is a CON ``POST /rd`` with
    Uri-Query ``ep`` (the endpoint name), ``lt`` (the provisioned lifetime), ``lwm2m`` (the enabler
    version), ``b`` (binding); Content-Format application/link-format (40) with the Objects and
    Object Instances. The Security object (0) and OSCORE object (21) MUST NOT be listed (§6.2.1);
    ``ver`` values are ``1*DIGIT "." 1*DIGIT`` (§6.2.1); content formats advertised with ``ct`` on
    the root link must be ones the client actually serves (checked with a Read per format).
    """
    lab = client_lab
    srv = await lab.server()
    await lab.start_factory(srv, lifetime=37)
    reg = await lab.registered(srv)
    req = reg.register_request
    ex = srv.exchange()
    with step("Register request: method, type, path, parameters"):
        check(req.confirmable, expected="Register sent as CON", actual="NON", exchange=ex)
        check(req.path == ("rd",), expected="Uri-Path /rd", actual="/" + "/".join(req.path), exchange=ex)
        q = req.query
        check(q.get("ep") == lab.endpoint, expected=f"ep={lab.endpoint}", actual=f"ep={q.get('ep')}", exchange=ex)
        check(q.get("lt") == "37", expected="lt=37 (the provisioned lifetime)", actual=f"lt={q.get('lt')}", exchange=ex)
        versions = dut_profile.ics.lwm2m_versions or ("1.1",)
        check(q.get("lwm2m") in versions, expected=f"lwm2m= one of the ICS versions {list(versions)}",
              actual=f"lwm2m={q.get('lwm2m')}", exchange=ex)
        check(q.get("b") is not None and "U" in (q.get("b") or ""), expected="b=U (provisioned binding)",
              actual=f"b={q.get('b')}", exchange=ex)
        check(req.content_format == ContentFormat.LINK_FORMAT, expected="Content-Format 40 (application/link-format)",
              actual=f"Content-Format {req.content_format}", exchange=ex)
    with step("Register payload: objects and instances in CoRE Link Format"):
        try:
            links = req.links()
        except FormatError as exc:
            fail("Register payload is not valid CoRE Link Format", expected="RFC 6690 link-format",
                 actual=f"{exc}: {req.payload[:200]!r}", exchange=ex)
        targets = [lk.target for lk in links]
        check(links, expected="a non-empty object list", actual="empty payload", exchange=ex)
        bad = [t for t in targets if re.match(r"^/(0|21)(/|$)", t)]
        check(not bad, expected="no Security (/0) or OSCORE (/21) object in the list (Core §6.2.1)",
              actual=f"listed: {bad}", exchange=ex)
        check("/1/0" in targets or any(t.startswith("/1/") for t in targets),
              expected="the Server object instance (/1/x)", actual=str(targets), exchange=ex)
        check("/3/0" in targets, expected="the Device object instance </3/0>", actual=str(targets), exchange=ex)
        bad_ver = [(lk.target, lk.get("ver")) for lk in links if "ver" in lk.params
                   and not _VERSION.match(str(lk.get("ver")))]
        check(not bad_ver, expected='ver="1*DIGIT.1*DIGIT"', actual=str(bad_ver), exchange=ex)
        root = [lk for lk in links if lk.target == "/"]
    if root and root[0].get("ct"):
        with step("content formats advertised with ct are served"):
            cts = str(root[0].get("ct")).split()
            for ct in cts:
                check(ct.isdigit(), expected="ct = space-separated Content-Format numbers", actual=repr(ct))
                fmt = int(ct)
                if fmt in (ContentFormat.TEXT, ContentFormat.OPAQUE, 60, ContentFormat.LINK_FORMAT):
                    path = "/3/0/16" if fmt != ContentFormat.OPAQUE else None  # mandatory string
                    if path is None:
                        continue  # no opaque resource is mandatory in Device
                else:
                    path = "/3/0"
                resp = await srv.read(path, accept=fmt, timeout=RESPONSE_WITHIN) if fmt != ContentFormat.LINK_FORMAT \
                    else await srv.discover("/3/0", timeout=RESPONSE_WITHIN)
                check(code_str(resp.code) == "2.05", requirement="LightweightM2M-HLF-00X1.4",
                      expected=f"Read {path} with Accept {fmt} (advertised in ct) -> 2.05",
                      actual=code_str(resp.code), exchange=srv.exchange())
    with step("registration accepted: the server can reach the client at the registered address"):
        resp = await srv.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN)
        require(resp, "2.05", what="Read /3/0/16 after registration", exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.6", "DM-CP-5")
@pytest.mark.case("LightweightM2M-1.1-int-102")
async def test_registration_update_int_102(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-102 Registration Update.

    Core 1.1.1 §6.2.2 (Update): when the Lifetime resource (/1/x/1) changes the client sends an
    Update (``POST`` to the Location-Path it was given, Transport 1.1.1 §6.2) carrying the new
    ``lt``; the server answers 2.04 Changed.
    """
    lab = client_lab
    srv, reg = await lab.factory_registered(lifetime=40)
    mark = srv.mark()
    with step("server writes Lifetime /1/0/1 = 41"):
        resp = await srv.write("/1/0/1", b"41", ContentFormat.TEXT, timeout=RESPONSE_WITHIN)
        require(resp, "2.04", what="Write /1/0/1", exchange=srv.exchange())
    with step("client sends an Update with lt=41 to its registration location"):
        upd = await srv.wait_request(RequestKind.UPDATE, timeout=RESPONSE_WITHIN, after=mark)
        if upd is None:
            other = srv.requests[mark:]
            fail("no Update after the lifetime changed", expected="POST /rd/<location>?lt=41 within 5 s",
                 actual="; ".join(r.summary() for r in other) or "nothing", exchange=srv.exchange())
        check(upd.path == ("rd", reg.location), expected=f"Update to /rd/{reg.location}",
              actual="/" + "/".join(upd.path), exchange=srv.exchange())
        check(upd.query.get("lt") == "41", expected="lt=41 in the Update", actual=str(upd.query_list),
              exchange=srv.exchange())
        check(upd.answered_with == "2.04", expected="the peer accepted the Update (2.04)", actual=upd.answered_with)


@pytest.mark.requirement("LightweightM2M-HLF-00X1.6", "DM-CP-5")
@pytest.mark.case("LightweightM2M-1.1-int-103")
async def test_deregistration_int_103(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-103 De-registration (via Disable).

    Core 1.1.1 §E.2 (Server object, Disable /1/x/4): on Execute the client de-registers
    (``DELETE`` on its registration location, Core §6.2.3, Transport §6.2) and stays disabled for
    Disable Timeout (/1/x/5) seconds, after which it registers again.
    """
    lab = client_lab
    srv, reg = await lab.factory_registered(lifetime=40)
    with step("server writes Disable Timeout /1/0/5 = 3"):
        require(await srv.write("/1/0/5", b"3", ContentFormat.TEXT, timeout=RESPONSE_WITHIN), "2.04",
                what="Write /1/0/5", exchange=srv.exchange())
    mark = srv.mark()
    with step("server executes Disable /1/0/4"):
        require(await srv.execute("/1/0/4", timeout=RESPONSE_WITHIN), "2.04", what="Execute /1/0/4",
                exchange=srv.exchange())
    with step("client de-registers"):
        dereg = await srv.wait_request(RequestKind.DEREGISTER, timeout=RESPONSE_WITHIN, after=mark)
        if dereg is None:
            fail("no De-register after Disable", expected=f"DELETE /rd/{reg.location} within 5 s",
                 actual="; ".join(r.summary() for r in srv.requests[mark:]) or "nothing", exchange=srv.exchange())
        check(dereg.path == ("rd", reg.location), expected=f"DELETE /rd/{reg.location}",
              actual="/" + "/".join(dereg.path), exchange=srv.exchange())
    with step("client stays disabled for the Disable Timeout, then registers again"):
        again = await srv.wait_request(RequestKind.REGISTER, timeout=3 + 10, after=dereg)
        if again is None:
            fail("the client did not register again after the Disable Timeout",
                 expected="Register within Disable Timeout (3 s) + 10 s", actual="nothing", exchange=srv.exchange())
        gap = again.t - dereg.t
        check(gap >= 3 - 0.5, expected="no Register before the 3 s Disable Timeout elapsed",
              actual=f"Register {gap:.2f} s after De-register", exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LightweightM2M-1.1-int-104")
async def test_registration_update_trigger_int_104(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-104 Registration Update Trigger.

    Core 1.1.1 §E.2 (Registration Update Trigger /1/x/8): on Execute the client answers 2.04 and
    performs an Update (§6.2.2) to the server.
    """
    lab = client_lab
    srv, reg = await lab.factory_registered(lifetime=40)
    mark = srv.mark()
    with step("server executes /1/0/8"):
        require(await srv.execute("/1/0/8", timeout=RESPONSE_WITHIN), "2.04", what="Execute /1/0/8",
                exchange=srv.exchange())
    with step("client sends an Update"):
        upd = await srv.wait_request(RequestKind.UPDATE, timeout=RESPONSE_WITHIN, after=mark)
        check(upd is not None, expected=f"POST /rd/{reg.location} within 5 s",
              actual="; ".join(r.summary() for r in srv.requests[mark:]) or "nothing", exchange=srv.exchange())
        assert upd is not None
        check(upd.path == ("rd", reg.location), expected=f"Update to /rd/{reg.location}",
              actual="/" + "/".join(upd.path), exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.6", "LightweightM2M-HLF-00X1")
@pytest.mark.case("LightweightM2M-1.1-int-105")
async def test_discarded_update_int_105(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-105 Discarded Register Update.

    Core 1.1.1 §6.2.2: "If the LwM2M Server responds with 4.04 Not Found to an Update, the LwM2M
    Client MUST re-register" -- a new Register (``POST /rd?ep=...``, not another Update).
    """
    lab = client_lab
    srv, reg = await lab.factory_registered(lifetime=40)
    srv.on_next(RequestKind.UPDATE, code=Code.NOT_FOUND)
    mark = srv.mark()
    with step("server forgets the registration: next Update answered 4.04"):
        require(await srv.execute("/1/0/8", timeout=RESPONSE_WITHIN), "2.04", what="Execute /1/0/8",
                exchange=srv.exchange())
        upd = await srv.wait_request(RequestKind.UPDATE, timeout=RESPONSE_WITHIN, after=mark, answered=True)
        if upd is None:
            inconclusive("the client sent no Update after the Registration Update Trigger (see int-104)")
        check(upd.answered_with == "4.04", expected="the scripted 4.04", actual=upd.answered_with)
    with step("client registers again"):
        again = await srv.wait_request(RequestKind.REGISTER, timeout=8, after=upd)
        if again is None:
            fail("no new Register after the Update was answered 4.04 Not Found",
                 expected="POST /rd?ep=... within 8 s",
                 actual="; ".join(r.summary() for r in srv.requests[upd.index + 1:]) or "nothing",
                 exchange=srv.exchange())
        check(again.query.get("ep") == lab.endpoint, expected=f"ep={lab.endpoint}", actual=str(again.query_list))


@pytest.mark.requirement("LightweightM2M-HLF-00X1.6", "DM-CP-5")
@pytest.mark.case("LightweightM2M-1.1-int-107")
async def test_lifetime_extension_int_107(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-107 Extending the lifetime of a registration.

    Core 1.1.1 §6.2.2: the client MUST send an Update before its registration lifetime expires
    ("lifetime" of §6.2.1, /1/x/1). The server writes a short Lifetime (5 s); the client must
    report it with an Update (lt=5) and then renew the registration with another Update before 5 s
    have passed since the previous one.
    """
    lab = client_lab
    srv, reg = await lab.factory_registered(lifetime=40)
    mark = srv.mark()
    with step("server writes Lifetime /1/0/1 = 5"):
        require(await srv.write("/1/0/1", b"5", ContentFormat.TEXT, timeout=RESPONSE_WITHIN), "2.04",
                what="Write /1/0/1", exchange=srv.exchange())
    first = await srv.wait_request(RequestKind.UPDATE, timeout=RESPONSE_WITHIN, after=mark)
    if first is None:
        fail("no Update after the lifetime changed", expected="Update with lt=5", actual="nothing",
             exchange=srv.exchange())
    check(first.query.get("lt") == "5", expected="lt=5", actual=str(first.query_list), exchange=srv.exchange())
    with step("client renews the registration before it expires"):
        second = await srv.wait_request(RequestKind.UPDATE, timeout=5.0, after=first)
        if second is None:
            fail("registration expired: no Update within the 5 s lifetime",
                 expected="an Update less than 5 s after the previous one", actual="nothing",
                 exchange=srv.exchange())
        check(second.t - first.t < 5.0, expected="< 5 s between Updates",
              actual=f"{second.t - first.t:.2f} s")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LightweightM2M-1.1-int-108")
@pytest.mark.ics("queue_mode")
async def test_queue_mode_on_int_108(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-108 Turn on Queue Mode.

    Core 1.1.1 §6.2.1 / Transport 1.1.1 §6.2: a client provisioned with queue mode (binding UQ)
    signals it in the Register with the ``Q`` parameter (LwM2M 1.1; the 1.0 form is ``b=UQ``).
    """
    lab = client_lab
    srv = await lab.server()
    await lab.start_factory(srv, lifetime=30, binding="UQ")
    reg = await lab.registered(srv)
    q = reg.register_request.query
    check("Q" in q or "Q" in (q.get("b") or ""), expected="Q (queue mode) in the Register parameters",
          actual=str(reg.register_request.query_list), exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LightweightM2M-1.1-int-109")
@pytest.mark.ics("queue_mode")
async def test_queue_mode_behaviour_int_109(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-109 Behaviour in Queue Mode.

    Core 1.1.1 §6.5 (Queue Mode): after sending an Update the client is reachable for the server's
    requests during its listening window (CoAP MAX_TRANSMIT_WAIT by default): a Read sent right
    after the Update is answered.
    """
    lab = client_lab
    srv = await lab.server()
    await lab.start_factory(srv, lifetime=30, binding="UQ")
    reg = await lab.registered(srv)
    mark = srv.mark()
    dut = lab.client()
    with step("client sends an Update (local trigger)"):
        res = await dut.adapter.trigger_update()
        if not res.ok:
            inconclusive(f"the client refused the local Update trigger: {res.detail}")
        upd = await srv.wait_request(RequestKind.UPDATE, timeout=RESPONSE_WITHIN, after=mark)
        check(upd is not None, expected="an Update", actual="nothing", exchange=srv.exchange())
    with step("a Read right after the Update is answered"):
        resp = await srv.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN)
        require(resp, "2.05", what="Read during the listening window", exchange=srv.exchange())
    check(reg.queue or "Q" in (reg.binding or ""), expected="registered in queue mode", actual=str(reg.register_request.query_list))


@pytest.mark.requirement("LightweightM2M-HLF-00X1.6", "LightweightM2M-HLF-00X1.1")
@pytest.mark.case("LWM2M-CREG-001")
async def test_register_retransmission_creg_001(client_lab: ClientLab) -> None:
    """LWM2M-CREG-001 The Register is retransmitted when it is not acknowledged.

    RFC 7252 §4.2 / §4.8 (Transport 1.1.1 §6: the UDP binding is CoAP): a CON that is not
    acknowledged is retransmitted with the same Message ID; the first timeout lies between
    ACK_TIMEOUT (2 s) and ACK_TIMEOUT x ACK_RANDOM_FACTOR (3 s). The server peer drops the first
    Register (no ACK) and measures when the copy arrives; the registration then completes.
    """
    lab = client_lab
    srv = await lab.server()
    srv.on_next(RequestKind.REGISTER, action="drop", drop_copies=False)
    await lab.start_factory(srv, lifetime=30)
    first = await srv.wait_wire(lambda r: r.direction == "in" and r.dropped, timeout=10.0)
    if first is None:
        fail("the client sent no Register", expected="POST /rd within 10 s", actual="nothing", exchange=srv.exchange())
    copy = await srv.wait_wire(lambda r: r.direction == "in" and not r.dropped and r.mid == first.mid
                               and r.data == first.data, timeout=3.0 + 1.0)
    if copy is None:
        later = [r.summary() for r in srv.wire if r.direction == "in" and r.t > first.t]
        fail("the unacknowledged Register was not retransmitted with the same Message ID",
             expected=f"the same CON (MID {first.mid}) again 2..3 s later", actual="; ".join(later) or "nothing",
             exchange=srv.exchange())
    gap = copy.t - first.t
    check(2.0 - 0.2 <= gap <= 3.0 + 0.5, expected="first retransmission after ACK_TIMEOUT..ACK_TIMEOUT*1.5 (2..3 s)",
          actual=f"{gap:.2f} s", exchange=srv.exchange())
    await lab.registered(srv)
