"""Bootstrap Interface of a BOOTSTRAP-SERVER under test (the suite plays the device).

The suite configures a device through the bootstrap server's provisioning API (profile action
``configure``, the neutral ``lwm2m-device-config/1`` document), then plays that device: it sends
the Bootstrap-Request and serves the bootstrap server's Bootstrap-Discover/Delete/Write/Finish,
recording each request, and finally checks what it was given.

Specification: Core 1.1.1 §6.1.7.1 Bootstrap-Request (``POST /bs?ep={name}``; 2.04 Changed; 4.00
Bad Request "Unknown Endpoint Client Name" / missing ``ep``), §6.1.7.5 Bootstrap-Write (PUT on
/0/x and /1/x with a Content-Format able to carry instances, Core §7.4), §6.1.7.2 Bootstrap-Finish
(``POST /bs`` ends the sequence; the client checks the configuration is consistent), §6.1.7.6
Bootstrap-Delete; Core 1.1.1 Appendix E.1/E.2 (Security and Server object resources);
Transport 1.1.1 §6.1 (CoAP mapping) and §5.2 (DTLS). Interop ID LightweightM2M-1.0-int-0 (Client
Initiated Bootstrap) from OMA-ETS-LightweightM2M-V1_0_1.
"""
from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiocoap.numbers.codes import Code

from conformance.evidence import step
from conformance.peers.client_peer import ClientPeer, RecordedRequest, code_str
from conformance.tests.conftest_server import BootstrapSide, new_endpoint
from conformance.verdicts import check, inconclusive
from reference.model.config import DeviceConfig, SecurityAccount, SecurityMode, ServerAccount

pytestmark = [pytest.mark.role("bootstrap-server")]

HLF = "LightweightM2M-HLF-00X1"
HLF_BOOTSTRAP = "LightweightM2M-HLF-00X1.5"
CP_PROVISION = "DM-CP-1"
CP_SECURE = "DM-CP-2"
DC_DISCOVER = "LightweightM2M-HLF-DC2"
#: Content formats that can carry an object instance (Core 1.1.1 §7.4: TLV, SenML JSON/CBOR, LwM2M JSON).
INSTANCE_FORMATS = {11542, 110, 112, 11543}
FINISH_TIMEOUT = 5.0  # loopback: a Bootstrap-Finish takes milliseconds; 5 s is generous


def device_config(endpoint: str, server_uri: str, *, lifetime: int = 321, ssid: int = 101,
                  binding: str = "U", bootstrap: SecurityAccount | None = None,
                  mode: SecurityMode = SecurityMode.NOSEC, psk_identity: bytes = b"", psk_key: bytes = b"") -> DeviceConfig:
    """One LwM2M Server account (Security /0/1 + Server /1/0) and optionally the bootstrap account."""
    cfg = DeviceConfig(endpoint=endpoint)
    if bootstrap is not None:
        cfg.security.append(bootstrap)
    cfg.security.append(SecurityAccount(instance_id=1, uri=server_uri, bootstrap=False, mode=mode,
                                        psk_identity=psk_identity, psk_key=psk_key, short_server_id=ssid))
    cfg.servers.append(ServerAccount(instance_id=0, short_server_id=ssid, lifetime=lifetime, binding=binding))
    return cfg


def dm_accounts(cfg: DeviceConfig) -> list[SecurityAccount]:
    return [a for a in cfg.security if not a.bootstrap]


def check_provisioned(peer: ClientPeer, want: DeviceConfig, requirement: str = CP_PROVISION) -> DeviceConfig:
    """The configuration the peer holds after Finish matches ``want`` (server URI, mode, SSID,
    lifetime, binding) and is consistent (Core 1.1.1 §6.1.7.2)."""
    try:
        got = peer.device_config()
    except Exception as e:  # noqa: BLE001 - what was written does not even form accounts
        check(False, requirement=requirement, expected="Security and Server instances forming accounts",
              actual=f"{type(e).__name__}: {e}; values {peer.values}")
        raise
    w, g = dm_accounts(want)[0], dm_accounts(got)
    check(len(g) >= 1, requirement=requirement, expected="a LwM2M Server Security instance (/0/x, Bootstrap-Server false)",
          actual=f"Security instances written: {[(a.instance_id, a.uri, a.bootstrap) for a in got.security]}")
    acc = next((a for a in g if a.short_server_id == w.short_server_id), g[0])
    check(acc.uri == w.uri, requirement=requirement, expected=f"LwM2M Server URI {w.uri!r} (/0/x/0)",
          actual=f"{acc.uri!r}")
    check(acc.mode == w.mode, requirement=requirement, expected=f"Security Mode {w.mode.name} (/0/x/2)",
          actual=acc.mode.name)
    if w.mode == SecurityMode.PSK:
        check(acc.psk_identity == w.psk_identity and acc.psk_key == w.psk_key, requirement=requirement,
              expected="the configured PSK identity and key (/0/x/3, /0/x/5)", actual=f"identity {acc.psk_identity!r}")
    srv = next((s for s in got.servers if s.short_server_id == acc.short_server_id), None)
    check(srv is not None, requirement=requirement,
          expected=f"a Server instance (/1/x) with Short Server ID {acc.short_server_id}",
          actual=f"Server instances: {[(s.instance_id, s.short_server_id) for s in got.servers]}")
    assert srv is not None
    ws = want.servers[0]
    check(srv.lifetime == ws.lifetime and srv.binding == ws.binding, requirement=requirement,
          expected=f"lifetime {ws.lifetime} and binding {ws.binding} (/1/x/1, /1/x/7)",
          actual=f"lifetime {srv.lifetime}, binding {srv.binding}")
    problems = got.problems()
    check(not problems, requirement=requirement, expected="a consistent configuration (Core 1.1.1 §6.1.7.2)",
          actual="; ".join(problems))
    return got


def check_sequence(peer: ClientPeer, start: int = 0, requirement: str = HLF_BOOTSTRAP) -> list[RecordedRequest]:
    """Writes on /0 and /1 instances in instance formats, Finish last and nothing after it."""
    reqs = peer.requests[start:]
    finish = [i for i, r in enumerate(reqs) if r.method == "POST" and r.uri == "/bs"]
    check(len(finish) == 1, requirement=requirement, expected="exactly one Bootstrap-Finish (POST /bs)",
          actual=f"{len(finish)}: " + "; ".join(r.summary() for r in reqs))
    writes = [r for r in reqs if r.method == "PUT"]
    check(bool(writes) and all(i < finish[0] for i, r in enumerate(reqs) if r.method in ("PUT", "DELETE")),
          requirement=requirement, expected="Bootstrap-Write(s) (PUT) and Deletes before the Finish",
          actual="; ".join(r.summary() for r in reqs))
    check(finish[0] == len(reqs) - 1, requirement=requirement, expected="nothing after Bootstrap-Finish",
          actual="; ".join(r.summary() for r in reqs[finish[0]:]))
    bad = [r.summary() for r in writes if r.content_format not in INSTANCE_FORMATS and len(r.path) == 2]
    check(not bad, requirement=requirement,
          expected=f"instance writes in a Content-Format able to carry instances {sorted(INSTANCE_FORMATS)}",
          actual="; ".join(bad))
    failed = [r.summary() for r in reqs if r.response_code is not None and not 64 <= int(r.response_code) < 96]
    check(not failed, requirement=requirement, expected="every bootstrap operation accepted by the device",
          actual="; ".join(failed))
    return reqs


async def bootstrap(side: BootstrapSide, peer: ClientPeer, requirement: str = HLF_BOOTSTRAP) -> None:
    with step("the device sends the Bootstrap-Request"):
        resp = await peer.bootstrap_request()
        check(resp.code == Code.CHANGED, requirement=requirement, expected="2.04 Changed (Core 1.1.1 §6.1.7.1)",
              actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")
    with step("the bootstrap server writes the accounts and finishes"):
        try:
            await asyncio.wait_for(peer.bootstrap_finished.wait(), FINISH_TIMEOUT)
        except asyncio.TimeoutError:
            check(False, requirement=requirement,
                  expected=f"Bootstrap-Finish (POST /bs) within {FINISH_TIMEOUT:g} s of the 2.04",
                  actual="requests received: " + ("; ".join(r.summary() for r in peer.requests) or "none"))
        await asyncio.sleep(0.3)  # anything sent after the Finish is a fault: give it time to show


# ---------------------------------------------------------------------------------------------

@pytest.mark.requirement(HLF_BOOTSTRAP, CP_PROVISION, DC_DISCOVER, HLF)
@pytest.mark.case("LightweightM2M-1.0-int-0")
async def test_int_0_client_initiated_bootstrap(bootstrap_side: BootstrapSide) -> None:
    """LightweightM2M-1.0-int-0 Client Initiated Bootstrap (bootstrap-server side): for a device
    configured through the provisioning API, a Bootstrap-Request ``POST /bs?ep=`` is answered 2.04
    Changed (Core 1.1.1 §6.1.7.1); the bootstrap server then writes the Security (/0/x) and Server
    (/1/x) instances in an instance Content-Format (§6.1.7.5) carrying exactly the configured
    Server URI, security mode, Short Server ID, lifetime and binding, and ends with one
    Bootstrap-Finish ``POST /bs`` after the writes (§6.1.7.2); the result is consistent."""
    side = bootstrap_side
    ep = new_endpoint("bs")
    want = device_config(ep, "coap://127.0.0.1:56831", lifetime=321, ssid=101)
    with step("provision the device through the portal API"):
        await side.configure(ep, want.to_dict())
    peer = await side.peer(ep)
    await bootstrap(side, peer)
    check_sequence(peer)
    check_provisioned(peer, want)


@pytest.mark.requirement(HLF_BOOTSTRAP, DC_DISCOVER)
@pytest.mark.case("LWM2M-BS-001")
async def test_bs_001_unknown_endpoint_refused(bootstrap_side: BootstrapSide) -> None:
    """LWM2M-BS-001 a Bootstrap-Request from an endpoint the bootstrap server has no configuration
    for is answered 4.00 Bad Request ("Unknown Endpoint Client Name", Core 1.1.1 §6.1.7.1) and no
    bootstrap operation follows."""
    side = bootstrap_side
    peer = await side.peer(new_endpoint("unknown"))
    with step("Bootstrap-Request from an unconfigured endpoint"):
        resp = await peer.bootstrap_request()
    check(resp.code == Code.BAD_REQUEST, requirement=HLF_BOOTSTRAP, expected="4.00 Bad Request",
          actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")
    req = await peer.wait_request(timeout=1.5)
    check(req is None, requirement=HLF_BOOTSTRAP, expected="no Bootstrap-Write/Delete/Finish to an unknown endpoint",
          actual=req.summary() if req else "")


@pytest.mark.requirement(HLF_BOOTSTRAP)
@pytest.mark.case("LWM2M-BS-002")
async def test_bs_002_missing_endpoint_name(bootstrap_side: BootstrapSide) -> None:
    """LWM2M-BS-002 a Bootstrap-Request without the mandatory ``ep`` parameter is answered 4.00 Bad
    Request (Core 1.1.1 §6.1.7.1) and no bootstrap operation follows."""
    side = bootstrap_side
    peer = await side.peer(new_endpoint("noep"))
    with step("Bootstrap-Request without ep"):
        resp = await peer.bootstrap_request(endpoint=None)
    check(resp.code == Code.BAD_REQUEST, requirement=HLF_BOOTSTRAP, expected="4.00 Bad Request",
          actual=f"{code_str(resp.code)} {resp.payload[:80]!r}")
    req = await peer.wait_request(timeout=1.5)
    check(req is None, requirement=HLF_BOOTSTRAP, expected="no bootstrap operation", actual=req.summary() if req else "")


@pytest.mark.requirement(HLF_BOOTSTRAP, CP_PROVISION)
@pytest.mark.case("LWM2M-BS-003")
async def test_bs_003_reconfiguration_applies(bootstrap_side: BootstrapSide) -> None:
    """LWM2M-BS-003 a configuration changed through the provisioning API is what the next
    bootstrap delivers (seed 003: "bootstrap provisioning of configuration data"; Core 1.1.1
    §6.1.7.5): a second device-side bootstrap after the change gets the new Server URI and
    lifetime, not the old ones."""
    side = bootstrap_side
    ep = new_endpoint("re")
    first = device_config(ep, "coap://127.0.0.1:56832", lifetime=400)
    await side.configure(ep, first.to_dict())
    peer = await side.peer(ep)
    await bootstrap(side, peer)
    check_provisioned(peer, first)
    second = device_config(ep, "coap://127.0.0.1:56833", lifetime=500)
    with step("change the configuration through the portal API"):
        await side.configure(ep, second.to_dict())
    again = await side.peer(ep)
    await bootstrap(side, again)
    check_provisioned(again, second)


@pytest.mark.requirement(CP_SECURE, HLF_BOOTSTRAP)
@pytest.mark.case("LWM2M-BS-004")
@pytest.mark.ics("security_mode:psk")
async def test_bs_004_bootstrap_over_dtls_psk(bootstrap_side: BootstrapSide, make_proxy: Any) -> None:
    """LWM2M-BS-004 secure transmission of configuration data (seed 003): a device whose
    Bootstrap-Server account is PSK bootstraps over DTLS 1.2 with its identity and key (Transport
    1.1.1 §5.2, TLS_PSK_WITH_AES_128_CCM_8): it gets the configured accounts, and the LwM2M Server
    PSK key it is given never appears in clear in any datagram; the same identity with a wrong key
    gets no DTLS session (Core 1.1.1 §7: mutual authentication before any exchange)."""
    from reference.security import DtlsClientBridge, DtlsHandshakeError

    side = bootstrap_side
    try:
        coaps = side.dut.address("coaps")
    except Exception:  # noqa: BLE001
        inconclusive("the profile reports no CoAPS port (readiness group coaps_port)")
    proxy = await make_proxy(coaps, name="bootstrap-dtls", dut_side="upstream", protocol="dtls")
    ep = new_endpoint("sec")
    bs_identity, bs_key = f"{ep}-bs".encode(), bytes(range(16))
    dm_key = bytes.fromhex("5ec7e7c0ffee00112233445566778899")
    bs_account = SecurityAccount(instance_id=0, uri=f"coaps://{coaps[0]}:{coaps[1]}", bootstrap=True,
                                 mode=SecurityMode.PSK, psk_identity=bs_identity, psk_key=bs_key)
    want = device_config(ep, "coaps://127.0.0.1:56834", bootstrap=bs_account, mode=SecurityMode.PSK,
                         psk_identity=ep.encode(), psk_key=dm_key)
    await side.configure(ep, want.to_dict())
    with step("a wrong key gets no DTLS session"):
        wrong = DtlsClientBridge(proxy.address, bs_identity, bytes(16), handshake_timeout=4.0, retransmit_min=0.5)
        refused = False
        try:
            await wrong.connect()
        except DtlsHandshakeError:
            refused = True
        finally:
            await wrong.close()
        check(refused, requirement=CP_SECURE, expected="the handshake with a wrong PSK fails",
              actual="a DTLS session was established with a wrong key")
    with step("the device bootstraps over DTLS with its bootstrap PSK"):
        bridge = DtlsClientBridge(proxy.address, bs_identity, bs_key, handshake_timeout=8.0, retransmit_min=0.5)
        await bridge.connect()
        try:
            peer = await side.peer(ep)
            peer.remote = bridge.local_address
            await bootstrap(side, peer, CP_SECURE)
            check_provisioned(peer, want, CP_SECURE)
        finally:
            await bridge.close()
    leaked = [d.summary() for d in proxy.datagrams if dm_key in d.data]
    check(not leaked, requirement=CP_SECURE, expected="the LwM2M Server PSK key never in clear on the wire",
          actual="\n".join(leaked))
