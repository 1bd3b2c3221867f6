"""DTLS-PSK registration to a SERVER under test that claims PSK security (ICS security_mode:psk).

The server DUT is started by its profile with one PSK credential: the harness's ``{endpoint}``,
``{psk_identity}`` and ``{psk_key_hex}`` placeholders (conformance/harness/dut.py). The suite's
client then registers over DTLS 1.2 (Transport 1.1.1 §5.2: TLS_PSK_WITH_AES_128_CCM_8, RFC 7925)
through a recording proxy.

Specification: Transport 1.1.1 §5.2 (DTLS binding, PSK), Core 1.1.1 §7 (the server MUST
authenticate the client before any exchange; in PSK mode the identity/key of Security /0/x/3 and
/0/x/5 are the client's credential, so a session authenticated as one endpoint cannot register
another), Core 1.1.1 §6.2.1 (Register). Interop ID LightweightM2M-1.0-int-401 (UDP Channel
Security - Pre-shared Key Mode) from OMA-ETS-LightweightM2M-V1_0_1.
"""
from __future__ import annotations

from typing import Any

import pytest
from aiocoap.numbers.codes import Code

from conformance.evidence import step
from aiocoap.numbers.types import Type

from conformance.peers.client_peer import ClientPeer, RawCoap, code_str, decode_or_none, describe
from conformance.profiles import placeholders
from conformance.tests.conftest_server import ServerSide, new_endpoint
from conformance.verdicts import check, unsupported

pytestmark = [pytest.mark.role("server")]

HLF_SECURE = "LightweightM2M-HLF-SG3"
CP_SECURE = "DM-CP-2"
HLF_REG = "LightweightM2M-HLF-00X1.6"


def psk_provisioned(side: ServerSide) -> bool:
    """Does the profile hand the harness's PSK credential to the server at start?"""
    cmd = side.profile.start["default"]
    used: set[str] = set()
    for tok in (*cmd.argv, *cmd.env.values(), *side.profile.env.values()):
        used |= placeholders(tok)
    return {"psk_identity", "psk_key_hex"} <= used


async def dtls_bridge(side: ServerSide, identity: bytes, key: bytes) -> tuple[Any, Any]:
    """A DTLS client bridge to the DUT's CoAPS port through a new recording proxy: (bridge, proxy)."""
    from reference.security import DtlsClientBridge

    proxy = await side.make_proxy(side.dut.address("coaps"), name="server-dtls", dut_side="upstream", protocol="dtls")
    bridge = DtlsClientBridge(proxy.address, identity, key, handshake_timeout=6.0, retransmit_min=0.5)
    side.bridges.append(bridge)
    return bridge, proxy


@pytest.mark.requirement(HLF_SECURE, CP_SECURE, HLF_REG)
@pytest.mark.case("LightweightM2M-1.0-int-401")
@pytest.mark.ics("security_mode:psk")
async def test_int_401_dtls_psk_registration(server_side: ServerSide) -> None:
    """LightweightM2M-1.0-int-401 UDP channel security, Pre-Shared Key mode (server side): with
    its PSK identity and key the client completes a DTLS 1.2 handshake and its Register over the
    session is answered 2.01 Created (Transport 1.1.1 §5.2, Core 1.1.1 §6.2.1); a Register of a
    different endpoint over that session is refused with a 4.xx and not registered (Core 1.1.1 §7:
    the identity authenticates one endpoint); the same identity with a wrong key gets no session."""
    from reference.security import DtlsHandshakeError

    side = server_side
    if not psk_provisioned(side):
        unsupported(f"the {side.profile.name} profile does not give the server a PSK credential "
                    "({psk_identity}/{psk_key_hex} in [start.default])")
    ep = str(side.dut.values["endpoint"])
    identity = str(side.dut.values["psk_identity"]).encode()
    key = bytes.fromhex(str(side.dut.values["psk_key_hex"]))
    with step("a wrong key gets no DTLS session"):
        wrong, _ = await dtls_bridge(side, identity, bytes(b ^ 0x5A for b in key))
        refused = False
        try:
            await wrong.connect()
        except DtlsHandshakeError:
            refused = True
        check(refused, requirement=HLF_SECURE, expected="the handshake with a wrong PSK fails",
              actual="a DTLS session was established with a wrong key")
    with step(f"DTLS handshake as {identity.decode()!r}"):
        bridge, _ = await dtls_bridge(side, identity, key)
        try:
            await bridge.connect()
        except DtlsHandshakeError as e:
            check(False, requirement=HLF_SECURE, expected="a DTLS 1.2 PSK session with the right key",
                  actual=f"handshake failed: {e}")
    peer = await side.peer(ep, address=bridge.local_address)
    with step(f"Register {ep} over DTLS"):
        resp = await peer.register(lifetime=300, binding="U")
        check(resp.code == Code.CREATED, requirement=HLF_REG, expected="2.01 Created over the DTLS session",
              actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")
    check(await side.find(ep) is not None, requirement=HLF_REG, expected=f"{ep} registered",
          actual="not listed")
    other = new_endpoint("impostor")
    intruder = await side.peer(other, address=bridge.local_address)
    with step(f"Register {other} over the session of {identity.decode()!r}"):
        resp = await intruder.register(lifetime=300, binding="U")
    check(resp.code.is_response() and 128 <= int(resp.code) < 160, requirement=HLF_SECURE,
          expected="a 4.xx refusal (4.03 Forbidden): the PSK identity belongs to another endpoint",
          actual=f"{code_str(resp.code)} Location-Path={list(resp.opt.location_path)}")
    check(await side.find(other) is None, requirement=HLF_SECURE, expected=f"{other} not registered",
          actual="the server registered it")


@pytest.mark.requirement(HLF_SECURE)
@pytest.mark.case("LWM2M-SRV-SEC-001")
@pytest.mark.ics("security_mode:psk")
async def test_srv_sec_001_tampered_record_rejected(server_side: ServerSide) -> None:
    """LWM2M-SRV-SEC-001 data integrity (seed 001: "the message must carry information to verify
    data integrity"): a Register whose DTLS application-data record was modified in transit (one
    ciphertext byte flipped by the recording proxy) is not processed, no answer and no
    registration (RFC 6347 §4.1.2.7: a record failing authentication is discarded; Transport 1.1.1
    §5.2); the untouched retransmission over the same session is then answered 2.01 Created."""
    side = server_side
    if not psk_provisioned(side):
        unsupported(f"the {side.profile.name} profile does not give the server a PSK credential")
    ep = str(side.dut.values["endpoint"])
    identity = str(side.dut.values["psk_identity"]).encode()
    key = bytes.fromhex(str(side.dut.values["psk_key_hex"]))
    bridge, proxy = await dtls_bridge(side, identity, key)
    await bridge.connect()
    tampered: list[int] = []

    def flip(direction: str, data: bytes) -> bytes:
        # DTLS record type 23 = application_data (RFC 6347 §4.1): flip the last byte (the CCM-8 tag)
        if direction == "to-dut" and data[:1] == b"\x17" and not tampered:
            tampered.append(len(data))
            return data[:-1] + bytes([data[-1] ^ 0x01])
        return data

    proxy.interceptor = flip
    raw = RawCoap(bridge.local_address, name="dtls-raw")
    side.peers.append(raw)
    await raw.start()
    msg = ClientPeer(side.address, ep, lwm2m=side.lwm2m).register_message(lifetime=300, binding="U")
    msg.mtype, msg.mid, msg.token = Type.CON, 0x3101, b"\x31\x01"
    data = msg.encode()
    with step("send a Register whose record is modified on the way"):
        replies = await raw.exchange(data, 1.5)
    check(bool(tampered), requirement=HLF_SECURE, expected="the proxy modified one application-data record",
          actual="no DTLS application-data record passed the proxy")
    check(not replies, requirement=HLF_SECURE, expected="no answer to the tampered record",
          actual="; ".join(describe(r) for r in replies))
    check(await side.find(ep) is None, requirement=HLF_SECURE, expected=f"{ep} not registered from a tampered record",
          actual="the server registered it")
    proxy.interceptor = None
    with step("the same Register, untouched, over the same session"):
        replies = await raw.exchange(data, 2.0, until=lambda d: True)
    msgs = [decode_or_none(r) for r in replies]
    check(any(m is not None and m.code == Code.CREATED for m in msgs), requirement=HLF_SECURE,
          expected="2.01 Created: the session survives a discarded record",
          actual="; ".join(describe(r) for r in replies) or "no answer")
