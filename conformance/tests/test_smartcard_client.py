"""Bootstrap from Smartcard of a CLIENT under test, with the DM_SC indicators (seed 004).

Requirements: DM-SC-GEN-X (connect to the DM server autonomously after bootstrap from the card if
the card says so) with DM-SC-GEN-X.1 (post-condition: the card issuer learns the new card/device
combination) and DM-SC-GEN-X.2 (normal flow: further provisioning in that session); DM-SC-USE-X
(ask the user first if the card says so) with DM-SC-USE-X.1 (nothing before the answer, session
after "yes") and DM-SC-USE-X.2 (nothing after "no").

Specification: OMA-TS-LightweightM2M_Core-V1_1_1 §6.1.3.2 (Bootstrap from Smartcard: the client
"MUST retrieve and process the bootstrap data contained in the Smartcard as described in Appendix
G"), §6.1.4 (Bootstrap Sequence: the smartcard is tried first), Appendix G (UICC file layout:
PKCS#15 application, DODF entry with OID 2.23.43.9.1, EF LwM2M_Bootstrap framing of G.3.3).
The DM-SC indicators file is the project's extension (docs/smartcard.md, OID
``reference.smartcard.INDICATORS_OID``): ``autonomousConnect`` and ``askUser`` BOOLEANs.

How the suite drives a client DUT here: it *writes* a card (a card description -> card image,
``lwm2m-card build``), *inserts* it, and starts the DUT in its profile's ``[start.smartcard]``
mode with ``{card}`` = the card spec: ``pcsc:<reader>`` when the card sits in the real PC/SC
reader (pcscd + vsmartcard's vpcd + the project's emulator), else the image path. Transport
choice: environment ``LWM2M_CARD_TRANSPORT`` = ``pcsc`` (required), ``image``, or ``auto``
(default: PC/SC when pcscd, the vpcd driver and pyscard exist). The vpcd reader has one fixed
port, so PC/SC use is serialized machine-wide with a file lock (pytest-xdist workers take turns).
Every observation is made ON THE WIRE at the suite's server peer behind the recording proxy.
"""
from __future__ import annotations

import asyncio
import os
from pathlib import Path as FsPath
from typing import Any

import pytest
from aiocoap.numbers.codes import Code
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.evidence import step
from conformance.peers.client_lab import REGISTER_WITHIN, ClientLab
from conformance.peers.server_peer import ServerPeer, code_str
from conformance.profiles import placeholders
from conformance.verdicts import ConformanceError, check, error, fail
from reference.model.config import DeviceConfig, SecurityAccount, SecurityMode, ServerAccount
from reference.model.path import Path
from reference.smartcard import CardDescription, CardImage, build_image
from reference.smartcard.layout import Fid, encode_bootstrap_values

pytestmark = [pytest.mark.role("client"), pytest.mark.ics("smartcard")]

GEN, GEN_AWARE, GEN_FLOW = "DM-SC-GEN-X", "DM-SC-GEN-X.1", "DM-SC-GEN-X.2"
USE, USE_ASK, USE_NO = "DM-SC-USE-X", "DM-SC-USE-X.1", "DM-SC-USE-X.2"
ICCID_A = "8944500102030405067"
ICCID_B = "8944500102030405075"
#: how long "nothing arrives" is watched (s): well above a loopback Register (< 100 ms) plus a
#: process start; a DUT that connects "autonomously" connects within this window
QUIET = 3.0
PROMPT_WITHIN = 10.0
CARD_LOCK_TIMEOUT = 300.0


# ---- writing and inserting cards ------------------------------------------------------------------
class CardSlot:
    """Writes cards and inserts them for the DUT. ``await slot.insert(image, name) -> {card} spec``.

    PC/SC: the image runs in the project's emulator on vsmartcard's vpcd reader under pcscd
    (reference.smartcard.PcscEnvironment; its file lock serializes every PC/SC user of the
    machine for as long as this slot holds the reader). Image: the DUT gets the image path."""

    def __init__(self, workdir: FsPath, evidence: Any) -> None:
        self.workdir = workdir
        self.evidence = evidence
        self.env: Any = None
        self.card: Any = None
        mode = os.environ.get("LWM2M_CARD_TRANSPORT", "auto").lower()
        if mode not in ("auto", "pcsc", "image"):
            error(f"LWM2M_CARD_TRANSPORT={mode!r}: expected auto, pcsc or image")
        from reference.smartcard.pcsc_env import unavailable_reason

        reason = unavailable_reason()
        if mode == "pcsc" and reason:
            error(f"LWM2M_CARD_TRANSPORT=pcsc but real PC/SC is unavailable: {reason}")
        self.pcsc = mode == "pcsc" or (mode == "auto" and reason is None)
        evidence.note("card transport: " + ("PC/SC (pcscd + vpcd + emulator)" if self.pcsc
                                            else f"card image file ({reason or 'LWM2M_CARD_TRANSPORT=image'})"))

    async def insert(self, image: CardImage, name: str) -> str:
        path = self.workdir / f"card-{name}.json"
        image.save(path)
        self.evidence.add_file(f"card image {name}", path)
        if not self.pcsc:
            return str(path)
        from reference.smartcard import PcscEnvironment

        try:
            if self.env is None:
                env = PcscEnvironment(lock_timeout=CARD_LOCK_TIMEOUT)
                await asyncio.to_thread(env.__enter__)
                self.env = env
            if self.card is not None:
                await asyncio.to_thread(self.env.remove, self.card)
                self.card = None
            self.card = await asyncio.to_thread(self.env.insert, image)
        except Exception as e:  # noqa: BLE001 - NoReaderError, lock timeout, pcscd trouble
            raise ConformanceError(f"cannot insert the card into the PC/SC reader: {e}") from None
        self.evidence.note(f"card {name} inserted into PC/SC reader {self.env.reader!r}")
        return f"pcsc:{self.env.reader}"

    async def close(self) -> None:
        if self.env is not None:
            env, self.env = self.env, None
            await asyncio.to_thread(env.close)


@pytest.fixture
async def card_slot(evidence: Any) -> Any:
    """Request it before ``client_lab``: then the DUT is stopped before the card leaves the reader
    (and before the pcscd this slot may have started goes away)."""
    slot = CardSlot(evidence.dir, evidence)
    try:
        yield slot
    finally:
        await slot.close()


def card_config(peer: ServerPeer, *, ssid: int = 101, lifetime: int = 60, binding: str = "U",
                sec_iid: int = 1, srv_iid: int = 0) -> DeviceConfig:
    """One LwM2M Server account (NoSec) for ``peer`` as the card carries it (no endpoint)."""
    return DeviceConfig("", [SecurityAccount(sec_iid, peer.dut_uri, mode=SecurityMode.NOSEC, short_server_id=ssid)],
                        [ServerAccount(srv_iid, ssid, lifetime=lifetime, binding=binding)])


def card_image(cfg: DeviceConfig, *, autonomous: bool, ask: bool, iccid: str = ICCID_A) -> CardImage:
    return build_image(CardDescription(cfg, iccid, (autonomous, ask)))


def damaged_card_image(cfg: DeviceConfig, how: str) -> CardImage:
    """A card whose EF LwM2M_Bootstrap holds ``cfg`` (/0, /1) followed by an Access Control object
    (/2, Core 1.1.1 §E.3) that is ``truncated`` (the file ends inside it, the G.3.3 header still
    declares the full size) or ``corrupt`` (its TLV is malformed). The complete /0 and /1 alone
    would form a usable account: a client that trusts the damaged file registers with it."""
    ssid = cfg.servers[0].short_server_id
    acl = {Path(2, 0, 0): 1, Path(2, 0, 1): cfg.servers[0].instance_id, Path(2, 0, 2, ssid): 15,
           Path(2, 0, 3): ssid}
    data = bytearray(encode_bootstrap_values({**cfg.to_values(), **acl}))
    if how == "truncated":
        data = data[:-4]
    else:
        # the last TLV header of /2 says "resource with a 3-byte length field" over bytes that
        # cannot hold it: the object's TLV no longer parses (Core 1.1.1 §7.4.3)
        data[-3:] = b"\xd8\xff\xff"
    image = card_image(cfg, autonomous=True, ask=False)
    ef = image.find((Fid.MF, Fid.ADF_PKCS15, Fid.EF_LWM2M_BOOTSTRAP))
    assert ef is not None
    ef.data = bytes(data)
    return image


async def start_with_card(lab: ClientLab, card_spec: str, **values: Any) -> Any:
    dut = lab.client()
    with step(f"start the client DUT in smartcard mode (card {card_spec})"):
        await dut.start("smartcard", endpoint=lab.endpoint, card=card_spec, **values)
    return dut


async def nothing_arrives(dut: Any, peer: ServerPeer, seconds: float, *, after: int = 0) -> list[str]:
    """Watch ``peer`` for ``seconds``; the requests that came (empty = silence). DutCrashed if
    the DUT dies meanwhile (verdict error, not a pass)."""
    got = await peer.wait_request(None, timeout=0.0, after=after)
    if got is None:
        try:
            got = await dut.guard(peer.wait_request(None, timeout=seconds, after=after), seconds + 1.0,
                                  "silence towards the server")
        except asyncio.TimeoutError:
            got = None
    return [r.summary() for r in peer.requests[after:]]


def links_of(reg: Any) -> str:
    return str(getattr(reg, "links", ""))


# ---- DM-SC-GEN-X ----------------------------------------------------------------------------------
@pytest.mark.requirement(GEN, GEN_FLOW)
@pytest.mark.case("LWM2M-SC-001")
async def test_sc_001_autonomous_indicator_registers_without_trigger(card_slot: CardSlot, client_lab: ClientLab) -> None:
    """LWM2M-SC-001: card with autonomousConnect=TRUE, askUser=FALSE. After start the client
    registers with the card's LwM2M Server account with no other trigger (DM-SC-GEN-X), and the
    server can provision it in that session: a Write of the Server object's Lifetime succeeds and
    a later Read returns it (DM-SC-GEN-X.2, Core 1.1.1 §6.3.3 Write / §E.2 /1/x/1)."""
    srv = await client_lab.server()
    spec = await card_slot.insert(card_image(card_config(srv, lifetime=60), autonomous=True, ask=False), "autonomous")
    await start_with_card(client_lab, spec)
    with step("the client registers without any trigger"):
        reg = await client_lab.registered(srv, timeout=REGISTER_WITHIN, requirement=GEN)
        check(reg.endpoint == client_lab.endpoint, requirement=GEN, expected=f"ep={client_lab.endpoint}",
              actual=f"ep={reg.endpoint}", exchange=srv.exchange())
        check(reg.lifetime == 60, requirement=GEN, expected="lt=60 (the card's /1/0/1)",
              actual=f"lt={reg.lifetime}", exchange=srv.exchange())
    with step("further provisioning: Write /1/0/1 = 45, then Read it"):
        w = await srv.write("/1/0/1", b"45", 0)
        check(code_str(w.code) == "2.04", requirement=GEN_FLOW, expected="2.04 Changed to Write /1/0/1",
              actual=code_str(w.code), exchange=srv.exchange())
        r = await srv.read("/1/0/1", accept=0)
        check(code_str(r.code) == "2.05" and bytes(r.payload).strip() == b"45", requirement=GEN_FLOW,
              expected="2.05 Content '45'", actual=f"{code_str(r.code)} {bytes(r.payload)!r}", exchange=srv.exchange())


@pytest.mark.requirement(GEN)
@pytest.mark.case("LWM2M-SC-002")
async def test_sc_002_no_autonomous_indicator_nothing_until_triggered(card_slot: CardSlot, client_lab: ClientLab) -> None:
    """LWM2M-SC-002: card with autonomousConnect=FALSE (askUser=FALSE). The connection is
    established autonomously only "if indicated by Smart Card data" (DM-SC-GEN-X): for QUIET
    seconds after start nothing reaches the server; after the local trigger (profile
    ``[control.update]``) the client registers with the card's account."""
    srv = await client_lab.server()
    spec = await card_slot.insert(card_image(card_config(srv), autonomous=False, ask=False), "not-autonomous")
    dut = await start_with_card(client_lab, spec)
    with step(f"nothing reaches the server for {QUIET:g} s"):
        got = await nothing_arrives(dut, srv, QUIET)
        check(not got, requirement=GEN, expected="no request: the card does not indicate autonomous connection",
              actual="; ".join(got), exchange=srv.exchange())
    with step("local trigger, then the client registers"):
        mark = srv.mark()
        await dut.adapter.trigger_update()
        await client_lab.registered(srv, after=mark, requirement=GEN)


# ---- DM-SC-USE-X ----------------------------------------------------------------------------------
@pytest.mark.requirement(USE, USE_ASK)
@pytest.mark.case("LWM2M-SC-003")
async def test_sc_003_confirmation_before_any_request(card_slot: CardSlot, client_lab: ClientLab) -> None:
    """LWM2M-SC-003: card with autonomousConnect=TRUE, askUser=TRUE. The device asks its user
    (profile ``[control.confirmation_prompt]``) and sends NOTHING to the server before the answer
    (DM-SC-USE-X, DM-SC-USE-X.1); after "yes" it registers."""
    srv = await client_lab.server()
    spec = await card_slot.insert(card_image(card_config(srv), autonomous=True, ask=True), "ask-user")
    dut = await start_with_card(client_lab, spec)
    with step("the device asks for confirmation"):
        try:
            prompt = await dut.adapter.wait_confirmation_prompt(PROMPT_WITHIN)
        except ConformanceError:
            got = [r.summary() for r in srv.requests]
            fail("the device did not ask for user confirmation", requirement=USE,
                 expected=f"a confirmation prompt within {PROMPT_WITHIN:g} s",
                 actual="no prompt" + (f"; requests sent: {'; '.join(got)}" if got else ""), exchange=srv.exchange())
        client_lab.evidence.note(f"prompt: {prompt}")
    with step(f"nothing reaches the server while the prompt is open ({QUIET:g} s)"):
        got = await nothing_arrives(dut, srv, QUIET)
        check(not got, requirement=USE, expected="no request before the user answers",
              actual="; ".join(got), exchange=srv.exchange())
    with step("the user says yes; the client registers"):
        await dut.adapter.confirm(True)
        await client_lab.registered(srv, requirement=USE_ASK)


@pytest.mark.requirement(USE, USE_NO)
@pytest.mark.case("LWM2M-SC-004")
async def test_sc_004_refused_confirmation_no_session(card_slot: CardSlot, client_lab: ClientLab) -> None:
    """LWM2M-SC-004: card with autonomousConnect=TRUE, askUser=TRUE; the user answers "no".
    Nothing reaches the server, neither before nor after the answer (DM-SC-USE-X.2)."""
    srv = await client_lab.server()
    spec = await card_slot.insert(card_image(card_config(srv), autonomous=True, ask=True), "ask-user-no")
    dut = await start_with_card(client_lab, spec)
    with step("the device asks for confirmation; the user says no"):
        try:
            await dut.adapter.wait_confirmation_prompt(PROMPT_WITHIN)
        except ConformanceError:
            fail("the device did not ask for user confirmation", requirement=USE,
                 expected=f"a confirmation prompt within {PROMPT_WITHIN:g} s", actual="no prompt",
                 exchange=srv.exchange())
        await dut.adapter.confirm(False)
    with step(f"nothing reaches the server ({QUIET:g} s after the answer)"):
        got = await nothing_arrives(dut, srv, QUIET)
        check(not got, requirement=USE_NO, expected="no request at all after the user refused",
              actual="; ".join(got), exchange=srv.exchange())


# ---- DM-SC-GEN-X.1: the card issuer learns the combination -------------------------------------------
@pytest.mark.requirement(GEN_AWARE)
@pytest.mark.case("LWM2M-SC-005")
@pytest.mark.ics("object:504")
async def test_sc_005_server_learns_card_device_combination(card_slot: CardSlot, client_lab: ClientLab) -> None:
    """LWM2M-SC-005: the card issuer's server learns the new combination of card and device
    (post-condition of the DM_SC use case, DM-SC-GEN-X.1). After the autonomous registration the
    server reads the card identity /504/0/11 (Remote SIM Provisioning, ICCID, registry object 504)
    and the device identity /3/0/2 (Serial Number, Core 1.1.1 §E.4); both equal what the card and
    device hold. The user then moves a new card into the same device: after the re-start the server
    reads the new ICCID with the same serial number, i.e. a new combination it can record."""
    srv = await client_lab.server()
    spec = await card_slot.insert(card_image(card_config(srv), autonomous=True, ask=False, iccid=ICCID_A), "card-a")
    dut = await start_with_card(client_lab, spec)

    async def identities(mark: int) -> tuple[str, str]:
        reg = await client_lab.registered(srv, after=mark, requirement=GEN)
        check("</504/" in links_of(reg) or "</504>" in links_of(reg), requirement=GEN_AWARE,
              expected="the Register object links announce object 504 (card identity)",
              actual=links_of(reg), exchange=srv.exchange())
        r = await srv.read("/504/0/11")
        check(code_str(r.code) == "2.05", requirement=GEN_AWARE, expected="2.05 Content for /504/0/11",
              actual=code_str(r.code), exchange=srv.exchange())
        iccids = [str(v) for v in ServerPeer.decode(r, "/504/0/11").values()]
        s = await srv.read("/3/0/2")
        check(code_str(s.code) == "2.05", requirement=GEN_AWARE, expected="2.05 Content for /3/0/2",
              actual=code_str(s.code), exchange=srv.exchange())
        serials = [str(v) for v in ServerPeer.decode(s, "/3/0/2").values()]
        check(len(serials) == 1 and serials[0], requirement=GEN_AWARE, expected="one non-empty serial number",
              actual=serials, exchange=srv.exchange())
        return (iccids[0] if iccids else ""), serials[0]

    with step("card A: the server reads ICCID and serial number"):
        iccid, serial = await identities(0)
        check(iccid == ICCID_A, requirement=GEN_AWARE, expected=f"/504/0/11 = {ICCID_A} (the card's EF ICCID)",
              actual=iccid, exchange=srv.exchange())
    with step("card B in the same device: the server reads the new combination"):
        await dut.stop()
        mark = srv.mark()
        spec = await card_slot.insert(card_image(card_config(srv), autonomous=True, ask=False, iccid=ICCID_B), "card-b")
        await dut.start("smartcard", **{**dut.values, "card": spec})
        iccid2, serial2 = await identities(mark)
        check((iccid2, serial2) == (ICCID_B, serial), requirement=GEN_AWARE,
              expected=f"(ICCID, serial) = ({ICCID_B}, {serial}): new card, same device",
              actual=(iccid2, serial2), exchange=srv.exchange())


# ---- corrupt / truncated bootstrap file ------------------------------------------------------------------
async def _damaged_card_case(card_slot: CardSlot, client_lab: ClientLab, how: str) -> None:
    card_srv = await client_lab.server("card-server")
    extra: dict[str, Any] = {}
    fallback: Any = None
    uses = set().union(*(placeholders(t) for t in client_lab.client().profile.start["smartcard"].argv))
    if "server_uri" in uses or {"server_host", "server_port"} <= uses:
        fallback = await client_lab.server("fallback-server")
        extra["server_uri"] = fallback.dut_uri
    elif "bootstrap_uri" in uses:
        fallback = await client_lab.bootstrap("fallback-bootstrap")
        extra["bootstrap_uri"] = fallback.dut_uri
    spec = await card_slot.insert(damaged_card_image(card_config(card_srv), how), how)
    dut = await start_with_card(client_lab, spec, **extra)
    with step(f"no request reaches the server account of the {how} card ({QUIET:g} s)"):
        got = await nothing_arrives(dut, card_srv, QUIET)
        check(not got, requirement=GEN,
              expected=f"the {how} EF LwM2M_Bootstrap is rejected as a whole (Appendix G.3.3): no session "
                       "with the account it partly holds",
              actual="; ".join(got), exchange=card_srv.exchange())
    with step("the device is still running (it reported the card and fell back, it did not crash)"):
        dut.check_alive()
    if fallback is None:
        client_lab.evidence.note("fall-back not observable: the profile's [start.smartcard] gives the device "
                                 "no other bootstrap information")
        return
    with step(f"the device falls back to the next bootstrap mode ({fallback.name})"):
        if isinstance(fallback, ServerPeer):
            await client_lab.registered(fallback, requirement=GEN)
        else:
            await client_lab.bootstrap_request(fallback, requirement=GEN)


@pytest.mark.requirement(GEN)
@pytest.mark.case("LWM2M-SC-006")
async def test_sc_006_truncated_bootstrap_file_rejected(card_slot: CardSlot, client_lab: ClientLab) -> None:
    """LWM2M-SC-006: a card whose EF LwM2M_Bootstrap is truncated (the file ends inside its last
    object although the G.3.3 header declares the full size). The client MUST "process the
    bootstrap data" per Appendix G (Core 1.1.1 §6.1.3.2): the damaged file is not bootstrap data, so
    no session is set up with the account it partly holds, the device stays up, and (when the
    profile gives it other bootstrap information) it falls back to it (§6.1.4 Bootstrap Sequence)."""
    await _damaged_card_case(card_slot, client_lab, "truncated")


@pytest.mark.requirement(GEN)
@pytest.mark.case("LWM2M-SC-007")
async def test_sc_007_corrupt_bootstrap_file_rejected(card_slot: CardSlot, client_lab: ClientLab) -> None:
    """LWM2M-SC-007: as LWM2M-SC-006 with a malformed TLV (Core 1.1.1 §7.4.3) in the last object of
    EF LwM2M_Bootstrap instead of a truncation."""
    await _damaged_card_case(card_slot, client_lab, "corrupt")


# ---- property: generated bootstrap contents survive the card ------------------------------------------------
@st.composite
def server_accounts(draw: st.DrawFn) -> dict[str, Any]:
    return {"ssid": draw(st.integers(1, 65534)), "lifetime": draw(st.integers(30, 86400)),
            "binding": draw(st.sampled_from(["U", "UQ"])), "sec_iid": draw(st.integers(0, 9)),
            "srv_iid": draw(st.integers(0, 9)), "iccid": draw(st.from_regex(r"\A89[0-9]{17}\Z"))}


@pytest.mark.requirement(GEN, GEN_FLOW)
@pytest.mark.case("LWM2M-SC-008")
@settings(max_examples=3, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(acc=server_accounts())
async def test_sc_008_generated_card_contents_reach_the_client(card_slot: CardSlot, client_lab: ClientLab,
                                                              acc: dict[str, Any]) -> None:
    """LWM2M-SC-008 (property, bounded: 3 generated cards): a generated LwM2M Server account goes
    description -> card image -> APDU reads by the DUT (through real PC/SC where available) and
    arrives unchanged: the autonomous Register carries the card's lifetime and binding
    (Core 1.1.1 §6.2.1), and Reads of the Server object instance (/1/<iid>/0, /1/<iid>/1, /1/<iid>/7;
    §E.2) return the generated Short Server ID, Lifetime and Binding."""
    srv = client_lab.peers[0] if client_lab.peers else await client_lab.server()
    cfg = card_config(srv, ssid=acc["ssid"], lifetime=acc["lifetime"], binding=acc["binding"],
                      sec_iid=acc["sec_iid"], srv_iid=acc["srv_iid"])
    n = len(client_lab.duts)
    spec = await card_slot.insert(card_image(cfg, autonomous=True, ask=False, iccid=acc["iccid"]), f"gen{n}")
    dut = client_lab.client(label=f"client{n}")
    mark = srv.mark()
    with step(f"DUT #{n} with a generated card: {acc}"):
        await dut.start("smartcard", endpoint=client_lab.endpoint, card=spec)
        reg = await srv.wait_registered(REGISTER_WITHIN, after=mark)
        if reg is None:
            fail("no Register with the generated card", requirement=GEN,
                 expected=f"Register within {REGISTER_WITHIN:g} s", actual="nothing", exchange=srv.exchange())
        check((reg.lifetime, (reg.binding or "U") + ("Q" if reg.queue else "")) == (acc["lifetime"], acc["binding"]),
              requirement=GEN, expected=f"lt={acc['lifetime']} b={acc['binding']}",
              actual=f"lt={reg.lifetime} b={reg.binding} Q={reg.queue}", exchange=srv.exchange())
        base = f"/1/{acc['srv_iid']}"
        got = {}
        for rid in (0, 1, 7):
            r = await srv.read(f"{base}/{rid}", accept=0)
            got[rid] = bytes(r.payload).decode(errors="replace") if r.code == Code.CONTENT else code_str(r.code)
        check(got == {0: str(acc["ssid"]), 1: str(acc["lifetime"]), 7: acc["binding"]}, requirement=GEN_FLOW,
              expected={0: str(acc["ssid"]), 1: str(acc["lifetime"]), 7: acc["binding"]}, actual=got,
              exchange=srv.exchange())
        await dut.stop()
