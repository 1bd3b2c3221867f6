"""Security of the UDP channel (Transport 1.1.1 §5.2, Core 1.1.1 §7.1; DTLS 1.2 PSK, RFC 6347 /
RFC 7925) of a client DUT: registration and management over DTLS with the provisioned PSK, and no
session -- nor any clear-text fallback -- with a wrong key or an unknown identity.
"""
from __future__ import annotations

import asyncio
import secrets

import pytest

from conformance.coapview import is_dtls
from conformance.evidence import step
from conformance.peers.client_lab import RESPONSE_WITHIN, ClientLab, require
from conformance.verdicts import check, fail
from reference.model.types import ContentFormat

pytestmark = [pytest.mark.role("client"), pytest.mark.ics("security_mode:psk")]


def _from_dut(proxy) -> list:
    return [d for d in proxy.datagrams if d.direction == "from-dut"]


def _check_all_dtls(proxy, requirement: str) -> None:
    plain = [d for d in _from_dut(proxy) if not is_dtls(d.data)]
    check(not plain, requirement=requirement,
          expected="every datagram the client sends to a coaps:// server is a DTLS record",
          actual=f"{len(plain)} datagram(s) in clear: " + "; ".join(d.summary() for d in plain[:3]),
          exchange=[d.summary() for d in proxy.datagrams[-12:]])


@pytest.mark.requirement("LightweightM2M-HLF-SG3", "DM-CP-2")
@pytest.mark.case("LightweightM2M-1.1-int-401")
async def test_udp_channel_security_psk_int_401(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-401 UDP Channel Security - Pre-shared Key Mode.

    Transport 1.1.1 §5.2 / Core 1.1.1 §7.1.9: with a coaps:// server account in PSK mode the client
    performs a DTLS 1.2 handshake with its PSK identity and key, then registers and answers DM
    requests inside the DTLS session; nothing it sends to that server is clear-text CoAP.
    """
    lab = client_lab
    ident, key = f"{lab.endpoint}-psk".encode(), secrets.token_bytes(16)
    srv = await lab.server(psk={ident: key})
    await lab.start_factory(srv, lifetime=30, psk=(ident, key))
    with step("first datagrams from the client are DTLS"):
        try:
            await srv.proxy.wait_for(lambda d: d.direction == "from-dut", 10.0)
        except asyncio.TimeoutError:
            fail("the client sent nothing to its coaps:// server", expected="a DTLS ClientHello",
                 actual="no datagram within 10 s")
        _check_all_dtls(srv.proxy, "DM-CP-2")
    with step("registration inside a DTLS session with the provisioned identity"):
        await lab.registered(srv)
        idents = [s.identity for s in srv.dtls.sessions]
        check(ident in idents, expected=f"a DTLS session with identity {ident!r}", actual=str(idents))
    with step("device management over the session"):
        resp = await srv.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN)
        require(resp, "2.05", what="Read /3/0/16 over DTLS", exchange=srv.exchange())
        _check_all_dtls(srv.proxy, "LightweightM2M-HLF-SG3")


async def _rejected_handshake(lab: ClientLab, client_ident: bytes, client_key: bytes,
                              server_table: dict[bytes, bytes]) -> None:
    srv = await lab.server(psk=server_table)
    await lab.start_factory(srv, lifetime=30, psk=(client_ident, client_key))
    with step("the client tries to connect"):
        try:
            await srv.proxy.wait_for(lambda d: d.direction == "from-dut", 10.0)
        except asyncio.TimeoutError:
            fail("the client sent nothing to its coaps:// server", expected="a DTLS ClientHello",
                 actual="no datagram within 10 s")
    with step("no session, no registration, nothing in clear (watched 3 s)"):
        await asyncio.sleep(3.0)
        check(not srv.dtls.sessions, requirement="LightweightM2M-HLF-SG3", expected="no DTLS session",
              actual=str([s.identity for s in srv.dtls.sessions]))
        check(not srv.requests, requirement="LightweightM2M-HLF-SG3",
              expected="no CoAP request reaches the server", actual="; ".join(r.summary() for r in srv.requests))
        _check_all_dtls(srv.proxy, "DM-CP-2")
    lab.client().check_alive()


@pytest.mark.requirement("LightweightM2M-HLF-SG3", "DM-CP-2")
@pytest.mark.case("LWM2M-CSEC-001")
async def test_wrong_psk_no_session_csec_001(client_lab: ClientLab) -> None:
    """LWM2M-CSEC-001 Wrong pre-shared key: no session, no clear-text fallback.

    Transport 1.1.1 §5.2 / RFC 6347: a client holding the right identity but a wrong key fails the
    handshake (Finished MAC); it must not reach the server by any other means (no clear-text
    CoAP to the coaps:// port) and must keep running.
    """
    ident = f"{client_lab.endpoint}-psk".encode()
    await _rejected_handshake(client_lab, ident, secrets.token_bytes(16), {ident: secrets.token_bytes(16)})


@pytest.mark.requirement("LightweightM2M-HLF-SG3", "DM-CP-2")
@pytest.mark.case("LWM2M-CSEC-002")
async def test_unknown_identity_no_session_csec_002(client_lab: ClientLab) -> None:
    """LWM2M-CSEC-002 Unknown PSK identity: no session, no clear-text fallback.

    Transport 1.1.1 §5.2 / RFC 4279 §2: the server does not know the client's identity; the
    handshake fails, and the client neither registers nor sends clear-text CoAP.
    """
    key = secrets.token_bytes(16)
    await _rejected_handshake(client_lab, f"{client_lab.endpoint}-stranger".encode(), key,
                              {b"someone-else": key})
