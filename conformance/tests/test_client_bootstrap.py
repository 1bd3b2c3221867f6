"""Bootstrap Interface (Core 1.1.1 §5.2 / §6.1, Transport 1.1.1 §6.1) of a client DUT.

The suite plays the LwM2M Bootstrap-Server (conformance/peers/bootstrap_peer.py) and the LwM2M
Server, each behind a recording proxy.
"""
from __future__ import annotations

import secrets

import pytest

from conformance.evidence import step
from conformance.harness.ports import free_port
from conformance.peers.client_lab import RESPONSE_WITHIN, ClientLab, require
from conformance.peers.server_peer import RequestKind
from conformance.verdicts import check, unsupported
from reference.formats import FormatError, linkformat
from reference.model.config import DeviceConfig, SecurityAccount, SecurityMode, ServerAccount
from reference.model.types import ContentFormat

pytestmark = [pytest.mark.role("client")]


def _links(step_result) -> list[linkformat.Link]:
    try:
        return linkformat.parse(bytes(step_result.response.payload), strict=False)
    except (FormatError, AttributeError):
        return []


def _instances(links: list[linkformat.Link], oid: int) -> list[str]:
    return [lk.target for lk in links if lk.target.startswith(f"/{oid}/") and lk.target.count("/") == 2]


@pytest.mark.requirement("LightweightM2M-HLF-DC2", "LightweightM2M-HLF-00X1.5", "LightweightM2M-HLF-DC3", "DM-CP-1",
                         "DM-CP-4")
@pytest.mark.case("LightweightM2M-1.1-int-0")
@pytest.mark.ics("bootstrap_mode:client-initiated")
async def test_client_initiated_bootstrap_int_0(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-0 Client Initiated Bootstrap.

    Core 1.1.1 §6.1.4 / §6.1.7.1: a client holding only a Bootstrap-Server account sends a CON
    Bootstrap-Request ``POST /bs?ep=<endpoint>`` (Transport 1.1.1 Table 6.1-1), accepts the
    Bootstrap-Delete/-Write operations (2.02/2.04), answers Bootstrap-Finish with 2.04 and then
    registers with the LwM2M Server it was given, using the provisioned lifetime (§6.2.1).
    """
    lab = client_lab
    bs = await lab.bootstrap()
    srv = await lab.server()
    await lab.start_bootstrap(bs)
    with step("Bootstrap-Request"):
        req = await lab.bootstrap_request(bs, requirement="LightweightM2M-HLF-DC2")
        check(req.confirmable, expected="CON Bootstrap-Request", actual="NON", exchange=bs.exchange())
        check(req.query.get("ep") == lab.endpoint, expected=f"ep={lab.endpoint}", actual=str(req.query_list),
              exchange=bs.exchange())
        pct = req.query.get("pct")
        check(pct is None or (pct.isdigit() and int(pct) in [int(c) for c in ContentFormat]),
              expected="pct absent or a Content-Format number", actual=f"pct={pct}")
    with step("bootstrap sequence: Delete /, Write Security + Server, Finish"):
        await lab.provision(bs, lab.server_config((srv, 101), lifetime=33))
    with step("client registers with the provisioned server and lifetime"):
        reg = await lab.registered(srv, requirement="LightweightM2M-HLF-DC3")
        check(reg.lifetime == 33, requirement="LightweightM2M-HLF-DC3", expected="lt=33 (provisioned /1/x/1)",
              actual=f"lt={reg.lifetime}", exchange=srv.exchange())
        check(reg.endpoint == lab.endpoint, expected=f"ep={lab.endpoint}", actual=reg.endpoint)


@pytest.mark.requirement("DM-CP-2", "LightweightM2M-HLF-00X1.5", "LightweightM2M-HLF-SG3")
@pytest.mark.case("LightweightM2M-1.1-int-1")
@pytest.mark.ics("bootstrap_mode:client-initiated", "security_mode:psk")
async def test_bootstrap_psk_int_1(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-1 Client Initiated Bootstrap Full (PSK).

    Transport 1.1.1 §5.2 / Core 1.1.1 §7.1: the Bootstrap-Request and the whole bootstrap sequence
    run over DTLS 1.2 with the PSK of the Bootstrap-Server account; the LwM2M Server account it
    receives is PSK mode too (identity /0/x/3, key /0/x/5), and the client registers over DTLS with
    exactly that identity.
    """
    lab = client_lab
    bs_id, bs_key = lab.endpoint.encode(), secrets.token_bytes(16)
    dm_id, dm_key = f"{lab.endpoint}-dm".encode(), secrets.token_bytes(16)
    bs = await lab.bootstrap(psk={bs_id: bs_key})
    srv = await lab.server(psk={dm_id: dm_key})
    await lab.start_bootstrap(bs, psk=(bs_id, bs_key))
    with step("Bootstrap-Request over DTLS"):
        await lab.bootstrap_request(bs, requirement="DM-CP-2")
        sessions = [s.identity for s in bs.dtls.sessions]
        check(bs_id in sessions, requirement="DM-CP-2", expected=f"DTLS session with PSK identity {bs_id!r}",
              actual=f"sessions: {sessions}")
    with step("bootstrap writes a PSK server account"):
        cfg = DeviceConfig(lab.endpoint, security=[SecurityAccount(1, srv.dut_uri, mode=SecurityMode.PSK,
                                                                     psk_identity=dm_id, psk_key=dm_key,
                                                                     short_server_id=7)],
                           servers=[ServerAccount(0, 7, lifetime=30)])
        await lab.provision(bs, cfg, requirement="DM-CP-2")
    with step("client registers over DTLS with the provisioned identity"):
        await lab.registered(srv)
        sessions = [s.identity for s in srv.dtls.sessions]
        check(dm_id in sessions, requirement="DM-CP-2", expected=f"DTLS session with PSK identity {dm_id!r}",
              actual=f"sessions: {sessions}")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.5", "DM-CP-1")
@pytest.mark.case("LightweightM2M-1.1-int-4")
@pytest.mark.ics("bootstrap_mode:client-initiated", "lwm2m_version:1.1")
async def test_bootstrap_delete_int_4(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-4 Bootstrap Delete.

    Core 1.1.1 §6.1.7.6 (Bootstrap-Delete): ``DELETE /`` removes every Object Instance except the
    Bootstrap-Server account (and the Device instance); afterwards a Bootstrap-Discover (§6.1.7.3)
    lists no Server (/1) instance and exactly one Security (/0) instance, the Bootstrap-Server
    account the client keeps. A first bootstrap provisions a server account so there is something
    to delete.
    """
    lab = client_lab
    bs = await lab.bootstrap()
    srv = await lab.server()
    await lab.start_bootstrap(bs)
    await lab.bootstrap_request(bs)
    await lab.provision(bs, lab.server_config((srv, 101), lifetime=30), finish=False)
    with step("before: Discover shows the server account"):
        before = await bs.discover("/")
        check(before.code == "2.05", expected="Bootstrap-Discover / -> 2.05", actual=str(before))
        check(_instances(_links(before), 1), expected="a /1 instance after the Write", actual=str(_links(before)),
              exchange=bs.exchange())
    with step("Bootstrap-Delete /"):
        st = await bs.delete("/")
        check(st.code == "2.02", expected="2.02 Deleted", actual=str(st), exchange=bs.exchange())
    with step("after: only the Bootstrap-Server account is left"):
        after = await bs.discover("/")
        links = _links(after)
        check(after.code == "2.05", expected="Bootstrap-Discover / -> 2.05", actual=str(after))
        check(not _instances(links, 1), expected="no Server object instance after Delete /",
              actual=str(_instances(links, 1)), exchange=bs.exchange())
        check(len(_instances(links, 0)) == 1, expected="exactly one Security instance (the Bootstrap-Server account)",
              actual=str(_instances(links, 0)), exchange=bs.exchange())
    with step("a complete sequence still works afterwards"):
        await lab.provision(bs, lab.server_config((srv, 101), lifetime=30), delete=())
        await lab.registered(srv)


@pytest.mark.requirement("LightweightM2M-HLF-00X1.5", "DM-CP-1")
@pytest.mark.case("LightweightM2M-1.1-int-5")
@pytest.mark.ics("bootstrap_mode:client-initiated")
async def test_server_initiated_bootstrap_int_5(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-5 Server Initiated Bootstrap.

    Core 1.1.1 §E.2 (Bootstrap-Request Trigger /1/x/9) and §6.1.5: a registered client on which the
    server executes /1/x/9 answers 2.04 and starts a bootstrap with its Bootstrap-Server (a
    Bootstrap-Request); the new configuration takes effect (it registers with the new lifetime).
    /1/x/9 is an optional resource: a client answering 4.04 / 4.05 does not implement it (verdict
    unsupported); the test therefore needs only a Bootstrap-Server account (client-initiated ICS).
    """
    lab = client_lab
    bs = await lab.bootstrap()
    srv = await lab.server()
    await lab.start_bootstrap(bs)
    await lab.bootstrap_request(bs)
    await lab.provision(bs, lab.server_config((srv, 101), lifetime=30))
    await lab.registered(srv)
    bmark, smark = bs.mark(), srv.mark()
    with step("server executes Bootstrap-Request Trigger /1/0/9"):
        resp = await srv.execute("/1/0/9", timeout=RESPONSE_WITHIN)
        if resp.code.dotted in ("4.04", "4.05"):
            unsupported(f"the client does not implement the optional /1/0/9 ({resp.code.dotted})")
        require(resp, "2.04", what="Execute /1/0/9", exchange=srv.exchange())
    with step("client asks the Bootstrap-Server for a new configuration"):
        await lab.bootstrap_request(bs, after=bmark)
        await lab.provision(bs, lab.server_config((srv, 101), lifetime=31))
    with step("client registers with the new configuration"):
        reg = await lab.registered(srv, after=smark)
        check(reg.lifetime == 31, expected="lt=31 (the re-provisioned lifetime)", actual=f"lt={reg.lifetime}",
              exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1", "LightweightM2M-HLF-DC3", "DM-CP-4")
@pytest.mark.case("LightweightM2M-1.1-int-6")
@pytest.mark.ics("bootstrap_mode:client-initiated")
async def test_bootstrap_sequence_int_6(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-6 Bootstrap Sequence.

    Core 1.1.1 §6.1 (bootstrap modes, order): a client that already holds valid LwM2M Server
    bootstrap information does not bootstrap again on restart; it registers directly. Checked by
    provisioning through the Bootstrap-Server, restarting the client (same state) and observing a
    Register without a new Bootstrap-Request.
    """
    lab = client_lab
    bs = await lab.bootstrap()
    srv = await lab.server()
    dut = await lab.start_bootstrap(bs)
    await lab.bootstrap_request(bs)
    await lab.provision(bs, lab.server_config((srv, 101), lifetime=30))
    await lab.registered(srv)
    bmark, smark = bs.mark(), srv.mark()
    with step("restart the client (persisted state kept)"):
        await dut.restart()
    with step("client registers without bootstrapping again"):
        await lab.registered(srv, after=smark)
        again = bs.requests_of(RequestKind.BOOTSTRAP_REQUEST, after=bmark)
        check(not again, expected="no Bootstrap-Request: the server account is still valid",
              actual="; ".join(r.summary() for r in again), exchange=bs.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-00X1", "LightweightM2M-HLF-00X1.5")
@pytest.mark.case("LightweightM2M-1.1-int-7")
@pytest.mark.ics("bootstrap_mode:client-initiated")
async def test_fallback_to_bootstrap_int_7(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-7 Fallback to Bootstrap.

    Core 1.1.1 §6.1 / §6.2.1.1: when registration fails with every configured LwM2M Server, a
    client with a Bootstrap-Server account falls back to Client Initiated Bootstrap. The first
    bootstrap provisions a server URI where nothing listens (ICMP port unreachable); the client
    must send a new Bootstrap-Request, after which a reachable server is provisioned.
    """
    lab = client_lab
    bs = await lab.bootstrap()
    srv = await lab.server()
    await lab.start_bootstrap(bs)
    await lab.bootstrap_request(bs)
    dead = f"coap://127.0.0.1:{free_port('udp')}"
    cfg = DeviceConfig(lab.endpoint, security=[SecurityAccount(1, dead, short_server_id=101)],
                       servers=[ServerAccount(0, 101, lifetime=30)])
    bmark = bs.mark()
    with step(f"provision an unreachable server ({dead})"):
        await lab.provision(bs, cfg)
    with step("client falls back to bootstrap"):
        await lab.bootstrap_request(bs, after=bmark, timeout=45.0)
    with step("a reachable server is provisioned and the client registers"):
        await lab.provision(bs, lab.server_config((srv, 101), lifetime=30))
        await lab.registered(srv)


@pytest.mark.requirement("LightweightM2M-HLF-00X1.5", "DM-CP-5")
@pytest.mark.case("LightweightM2M-1.1-int-9")
@pytest.mark.ics("bootstrap_mode:client-initiated")
async def test_bootstrap_consistency_int_9(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-9 Bootstrap and Configuration Consistency.

    Core 1.1.1 §6.1.7.2 (Bootstrap-Finish): the client checks the configuration it received; if
    it is inconsistent (here: a Server instance whose Short Server ID has no Security instance) it
    answers Bootstrap-Finish with 4.06 Not Acceptable and does not use it (no Register). A
    corrected configuration is then accepted (2.04) and used.
    """
    lab = client_lab
    bs = await lab.bootstrap()
    srv = await lab.server()
    await lab.start_bootstrap(bs)
    await lab.bootstrap_request(bs)
    smark = srv.mark()
    with step("write a Server instance (SSID 55) without a Security instance, then Finish"):
        st = await bs.delete("/")
        check(st.ok, expected="Bootstrap-Delete / -> 2.02", actual=str(st))
        st = await bs.write_values("/1/0", ServerAccount(0, 55, lifetime=30).to_values())
        check(st.ok, expected="Bootstrap-Write /1/0 -> 2.04", actual=str(st), exchange=bs.exchange())
        fin = await bs.finish()
        check(fin.code == "4.06", expected="Bootstrap-Finish -> 4.06 Not Acceptable (inconsistent configuration)",
              actual=str(fin), exchange=bs.exchange())
    with step("the client does not register with a half configuration"):
        reg = await srv.wait_request(RequestKind.REGISTER, timeout=1.0, after=smark)
        check(reg is None, expected="no Register", actual=reg.summary() if reg else "")
    with step("a consistent configuration is accepted and used"):
        await lab.provision(bs, lab.server_config((srv, 55), lifetime=30))
        await lab.registered(srv, after=smark)


@pytest.mark.requirement("LightweightM2M-HLF-00X1.5", "LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LWM2M-CBS-001")
@pytest.mark.ics("bootstrap_mode:client-initiated", "lwm2m_version:1.1")
async def test_bootstrap_discover_cbs_001(client_lab: ClientLab) -> None:
    """LWM2M-CBS-001 Bootstrap-Discover.

    Core 1.1.1 §6.1.7.3 / §5.2.7.3: ``GET /`` (or ``/{Object}``) with Accept application/link-format
    during a bootstrap session returns 2.05 Content, Content-Format 40, listing the supported
    objects and their instances -- including the Bootstrap-Server account's Security instance and
    the Device instance; a Discover on ``/0`` lists only Security links (plus the ``</>;lwm2m=``
    version link).
    """
    lab = client_lab
    bs = await lab.bootstrap()
    await lab.start_bootstrap(bs)
    await lab.bootstrap_request(bs)
    with step("Bootstrap-Discover /"):
        st = await bs.discover("/")
        check(st.code == "2.05", expected="2.05 Content", actual=str(st), exchange=bs.exchange())
        cf = st.response.opt.content_format
        check(cf is not None and int(cf) == ContentFormat.LINK_FORMAT, expected="Content-Format 40",
              actual=str(cf), exchange=bs.exchange())
        links = _links(st)
        check(links, expected="a CoRE Link Format payload", actual=repr(bytes(st.response.payload)[:200]))
        check(len(_instances(links, 0)) >= 1, expected="the Bootstrap-Server account </0/x>",
              actual=str([lk.target for lk in links]), exchange=bs.exchange())
        check("/3/0" in [lk.target for lk in links], expected="the Device instance </3/0>",
              actual=str([lk.target for lk in links]), exchange=bs.exchange())
    with step("Bootstrap-Discover /0 lists only Security links"):
        st = await bs.discover("/0")
        check(st.code == "2.05", expected="2.05 Content", actual=str(st), exchange=bs.exchange())
        # the root link </>;lwm2m=... carries the enabler version (§5.2.7.3) and may accompany any target
        others = [lk.target for lk in _links(st) if lk.target not in ("/", "/0") and not lk.target.startswith("/0/")]
        check(not others, expected="only /0 links (besides the root version link)", actual=str(others),
              exchange=bs.exchange())
