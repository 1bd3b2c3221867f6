"""SMS-capable devices at registration (LightweightM2M-HLF-00X1.2: initial provisioning works for
non-IP devices that use SMS). Gated on the ICS ``sms`` claim: an implementation that does not
claim SMS gets the verdict *unsupported*, never a pass.

What the suite can check without an SMS bearer is the registration side of the SMS binding, which
travels over UDP like any Register:

* Core 1.0 §5.3.1 (Register) / §5.3.1.1: the Binding Mode ``b`` is one of U, UQ, S, SQ, US, UQS;
  ``sms`` is "the MSISDN where the LwM2M Client can be reached for use with the SMS binding".
  A client registering over UDP that can also be reached by SMS says ``b=US`` (``UQS`` in queue
  mode) and gives ``sms=<MSISDN>``.
* Core 1.1.1 §6.2.1 (Register parameters) / §6.2.1.1: ``b`` lists the client's supported
  bindings with the letters U, T, S, N (queue mode is the separate ``Q`` parameter, so
  ``b=US&sms=<MSISDN>``, plus ``Q`` in queue mode); ``sms`` is the MSISDN as in 1.0. §6.2.2
  (Update): ``b`` and ``sms`` may change with an Update.
* Transport 1.1.1 §7 (SMS binding) is the bearer itself; no case here sends an SMS.
"""
from __future__ import annotations

import re

import pytest
from aiocoap.numbers.codes import Code

from conformance.evidence import step
from conformance.peers.client_lab import RESPONSE_WITHIN, ClientLab, require
from conformance.peers.client_peer import code_str
from conformance.tests.conftest_server import ServerSide
from conformance.verdicts import check, inconclusive
from reference.model.types import ContentFormat

HLF_SMS = "LightweightM2M-HLF-00X1.2"
HLF_REG = "LightweightM2M-HLF-00X1.6"
#: an MSISDN (ITU-T E.164: at most 15 digits), optionally written with a leading "+"
MSISDN_RX = re.compile(r"^\+?[0-9]{1,15}$")


def sms_bindings(version: str, queue: bool) -> list[tuple[str, bool]]:
    """(b, Q) pairs of a client reachable over UDP and by SMS, as the given version writes them."""
    if version == "1.0":
        return [("US", False)] + ([("UQS", False)] if queue else [])  # Core 1.0 §5.3.1.1
    return [("US", False)] + ([("US", True)] if queue else [])  # Core 1.1.1 §6.2.1: Q is separate


@pytest.mark.role("server")
@pytest.mark.ics("sms")
@pytest.mark.requirement(HLF_SMS, HLF_REG)
@pytest.mark.case("LWM2M-SRV-SMS-001")
async def test_srv_sms_001_register_with_sms_binding(server_side: ServerSide) -> None:
    """LWM2M-SRV-SMS-001 a server claiming SMS accepts the Register of an SMS-capable client and
    records where it can reach it by SMS.

    Register ``b=US&sms=<MSISDN>`` (1.0 also ``b=UQS``; 1.1 ``b=US&Q`` when queue mode is claimed)
    over UDP (Core 1.0 §5.3.1 / §5.3.1.1, Core 1.1.1 §6.2.1): 2.01 Created with a Location-Path,
    and the server's registration record shows the MSISDN and a binding with S. Then an Update
    with a new ``sms`` (Core 1.1.1 §6.2.2) is answered 2.04 Changed and the record follows it.
    Without a registration view that reports ``sms`` and ``binding`` the verdict is inconclusive.
    """
    side = server_side
    queue = side.profile.ics.queue_mode
    for i, (b, q) in enumerate(sms_bindings(side.lwm2m, queue)):
        msisdn = f"1555{i}123456"
        peer = await side.peer()
        with step(f"Register lwm2m={side.lwm2m} b={b} sms={msisdn}" + (" Q" if q else "")):
            resp = await peer.register(binding=b, sms=msisdn, queue=q)
            check(resp.code == Code.CREATED and bool(resp.opt.location_path), requirement=HLF_SMS,
                  expected=f"2.01 Created with a Location-Path for b={b} sms={msisdn}",
                  actual=f"{code_str(resp.code)} Location-Path={list(resp.opt.location_path)} {resp.payload[:80]!r}")
        with step("the registration record reflects the MSISDN and the binding"):
            rec = await side.find(peer.endpoint)
            check(rec is not None, requirement=HLF_SMS, expected=f"{peer.endpoint} listed after 2.01",
                  actual="not listed")
            assert rec is not None
            if "sms" not in rec or "binding" not in rec:
                inconclusive("the server's profile does not report a registration's sms number and binding "
                             f"(record: {rec})")
            check(str(rec["sms"]).lstrip("+") == msisdn, requirement=HLF_SMS,
                  expected=f"sms {msisdn} as registered", actual=f"sms {rec['sms']!r}")
            check("S" in str(rec["binding"]) and "U" in str(rec["binding"]), requirement=HLF_SMS,
                  expected=f"a binding with U and S (registered b={b})", actual=f"binding {rec['binding']!r}")
        new = f"1555{i}654321"
        with step(f"Update sms={new}"):
            upd = await peer.update(sms=new)
            check(upd.code == Code.CHANGED, requirement=HLF_SMS, expected="2.04 Changed",
                  actual=f"{code_str(upd.code)} {upd.payload[:80]!r}")
            rec = await side.find(peer.endpoint) or {}
            check(str(rec.get("sms")).lstrip("+") == new, requirement=HLF_SMS,
                  expected=f"sms {new} after the Update", actual=f"sms {rec.get('sms')!r}")
        await peer.deregister()


@pytest.mark.role("client")
@pytest.mark.ics("sms", "binding:S")
@pytest.mark.requirement(HLF_SMS, HLF_REG)
@pytest.mark.case("LWM2M-CSMS-001")
async def test_register_carries_sms_parameters_csms_001(client_lab: ClientLab, dut_profile) -> None:
    """LWM2M-CSMS-001 a client claiming SMS tells the server how to reach it by SMS.

    Provisioned with the binding ``US`` (UDP and SMS, Server object /1/x/7), the client registers
    over UDP with: ``b`` containing U and S (Core 1.0 §5.3.1.1: exactly ``US``; Core 1.1.1 §6.2.1:
    the supported bindings, letters U, T, S, N, queue mode only as the separate ``Q``); ``sms``
    present and an MSISDN (Core §6.2.1: "the MSISDN where the LwM2M Client can be reached for use
    with the SMS binding", E.164: at most 15 digits); and its Device object's Supported Binding and
    Modes (/3/0/16, Core 1.1.1 §E.4) lists S as well, consistent with its ICS.
    """
    lab = client_lab
    srv = await lab.server()
    await lab.start_factory(srv, lifetime=30, binding="US")
    reg = await lab.registered(srv, requirement=HLF_SMS)
    q = reg.register_request.query
    ex = srv.exchange()
    version = q.get("lwm2m") or "1.0"
    with step("Register: binding and SMS number"):
        b = q.get("b") or ""
        check("U" in b and "S" in b, expected="b with U and S (provisioned binding US)", actual=f"b={b!r}", exchange=ex)
        if version == "1.0":
            check(b in ("US", "UQS"), expected="b=US or b=UQS (Core 1.0 §5.3.1.1)", actual=f"b={b!r}", exchange=ex)
        else:
            check(set(b) <= set("UTSN") and len(set(b)) == len(b),
                  expected="b made of the letters U, T, S, N, each once (Core 1.1.1 §6.2.1)",
                  actual=f"b={b!r}", exchange=ex)
        sms = q.get("sms")
        check(sms is not None, expected="sms=<MSISDN> in the Register", actual=str(reg.register_request.query_list),
              exchange=ex)
        check(MSISDN_RX.match(str(sms)) is not None, expected="an MSISDN (E.164, at most 15 digits)",
              actual=f"sms={sms!r}", exchange=ex)
    with step("Supported Binding and Modes /3/0/16 lists S"):
        resp = await srv.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN)
        require(resp, "2.05", what="Read /3/0/16", exchange=srv.exchange())
        supported = bytes(resp.payload).decode("utf-8", "replace")
        check("S" in supported, expected="S in /3/0/16 (the client claims SMS)", actual=repr(supported),
              exchange=srv.exchange())
