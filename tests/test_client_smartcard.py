"""Smartcard bootstrap of the reference client (reference/client/smartcard.py) against the reference
server, and the server's card-issuer awareness (reference/server/cards.py).

Cards are card images read through the emulator with the APDUs of Appendix G (ImageCardSource),
or through real PC/SC (pcscd + vpcd) where available. Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path as FsPath
from typing import Any, AsyncIterator

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference.client.bootstrap import CallbackUserAgent, StaticSource
from reference.client.client import ClientOptions, LwM2MClient
from reference.client.smartcard import (CardBootstrapSource, SmartcardClient, open_bootstrap_source,
                                        parse_card_spec)
from reference.model.config import DeviceConfig, SecurityAccount, SecurityMode, ServerAccount
from reference.model.path import Path
from reference.server.server import LwM2MServer
from reference.smartcard import CardDescription, ImageCardSource, build_image
from reference.smartcard.layout import Fid

ICCID_A = "8944500102030405067"
ICCID_B = "8944500102030405075"
T = 5.0  # bound on every wait for an event


@pytest.fixture
async def server(tmp_path: FsPath) -> AsyncIterator[LwM2MServer]:
    srv = LwM2MServer(coap_port=0, http_port=0, state_dir=tmp_path / "server")
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def card_config(server: LwM2MServer, lifetime: int = 60, bootstrap: bool = False) -> DeviceConfig:
    h, p = server.coap_address
    sec = [SecurityAccount(0, f"coap://{h}:{p}", mode=SecurityMode.NOSEC, short_server_id=101)]
    if bootstrap:
        sec.append(SecurityAccount(1, "coap://127.0.0.1:9", bootstrap=True))
    return DeviceConfig("", sec, [ServerAccount(0, 101, lifetime=lifetime, binding="U")])


def write_card(path: FsPath, cfg: DeviceConfig, iccid: str = ICCID_A,
               indicators: tuple[bool, bool] | None = (True, False), truncate: int = 0) -> FsPath:
    """A card image file; ``truncate`` cuts that many bytes off EF LwM2M_Bootstrap."""
    image = build_image(CardDescription(cfg, iccid, indicators))
    if truncate:
        ef = image.find((Fid.MF, Fid.ADF_PKCS15, Fid.EF_LWM2M_BOOTSTRAP))
        assert ef is not None
        ef.data = ef.data[:-truncate]
    tmp = path.with_suffix(".tmp")
    image.save(tmp)
    os.replace(tmp, path)  # a card swap is atomic for the reader
    return path


def make_client(tmp_path: FsPath, card_path: FsPath | None, *, agent: Any = None, factory: Any = None,
                cls: type = SmartcardClient, endpoint: str = "sc-ep") -> tuple[LwM2MClient, list[tuple[str, dict]]]:
    events: list[tuple[str, dict]] = []
    opts = ClientOptions(endpoint=endpoint, local_host="127.0.0.1", state_dir=str(tmp_path / "client"),
                         meter_period=None, request_timeout=3.0, register_attempts=2, retry_delay=0.2)
    card = open_bootstrap_source(str(card_path)) if card_path is not None else None
    client = cls(opts, card=card, factory=factory, user_agent=agent,
                 on_event=lambda n, f: events.append((n, dict(f))))
    return client, events


def names(events: list[tuple[str, dict]]) -> list[str]:
    return [n for n, _ in events]


# ---- spec ---------------------------------------------------------------------------------------------
def test_card_spec_grammar() -> None:
    assert parse_card_spec("pcsc").kind == "pcsc" and parse_card_spec("pcsc").target is None
    assert parse_card_spec("pcsc:Virtual PCD 00 00").target == "Virtual PCD 00 00"
    assert parse_card_spec("image:/x/c.json") == parse_card_spec("/x/c.json")
    with pytest.raises(ValueError):
        parse_card_spec("  ")


# ---- DM-SC-GEN-X ---------------------------------------------------------------------------------------
async def test_autonomous_card_registers_without_trigger_and_server_learns_combination(
        tmp_path: FsPath, server: LwM2MServer) -> None:
    card = write_card(tmp_path / "card.json", card_config(server))
    client, events = make_client(tmp_path, card)
    sub = server.events.subscribe(["card-combination"])
    try:
        await client.start()
        await client.wait_event("registered", T)
        assert names(events)[:2] == ["card-bootstrapped", "registered"]
        # the ICCID is exposed as /504/0/11/0 and announced in the Register links
        reg = server.get_client("sc-ep")
        assert reg is not None and "</504/0>" in reg.links
        resp = await server.read("sc-ep", "/504/0/11", timeout=3)
        assert resp.success and ICCID_A in resp.values.values()
        ev = await sub.get(T)
        assert ev.data["iccid"] == ICCID_A and ev.data["reason"] == "new-card-new-device"
        serial = (await server.read("sc-ep", "/3/0/2", timeout=3)).values[Path(3, 0, 2)]
        assert ev.data["serial"] == serial
        # visible over HTTP too
        host, port = server.http_address  # type: ignore[misc]
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async with http.get(f"http://{host}:{port}/api/events?kind=card-combination") as r:
                body = await r.json()
            assert [e["data"]["iccid"] for e in body["events"]] == [ICCID_A]
            async with http.get(f"http://{host}:{port}/api/cards") as r:
                cards = (await r.json())["combinations"]
            assert [(c["iccid"], c["serial"]) for c in cards] == [(ICCID_A, serial)]
    finally:
        sub.close()
        await client.stop()


async def test_card_without_autonomous_indicator_waits_for_a_trigger(tmp_path: FsPath, server: LwM2MServer) -> None:
    card = write_card(tmp_path / "card.json", card_config(server), indicators=(False, False))
    client, events = make_client(tmp_path, card)
    try:
        await client.start()
        await client.wait_event("card-waiting", T)
        await asyncio.sleep(1.0)
        assert server.get_client("sc-ep") is None and "registered" not in names(events)
        assert client.tree.data[1], "the card configuration is applied although nothing is sent"
        client.request_update()  # the local trigger (CLI 'update')
        await client.wait_event("registered", T)
        assert server.get_client("sc-ep") is not None
    finally:
        await client.stop()


# ---- DM-SC-USE-X ---------------------------------------------------------------------------------------
async def test_confirmation_asked_before_anything_is_sent(tmp_path: FsPath, server: LwM2MServer) -> None:
    card = write_card(tmp_path / "card.json", card_config(server), indicators=(True, True))
    answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    asked: list[str] = []

    async def cb(question: str, source: str) -> bool:
        asked.append(source)
        return await answer

    client, events = make_client(tmp_path, card, agent=CallbackUserAgent(cb, timeout=T))
    try:
        await client.start()
        await client.wait_event("confirm-requested", T)
        await asyncio.sleep(1.0)
        assert asked == ["card"]
        assert server.get_client("sc-ep") is None and client._msg_count == 0 and not client.sessions
        answer.set_result(True)
        await client.wait_event("registered", T)
        assert names(events).index("confirm-answered") < names(events).index("registered")
    finally:
        await client.stop()


async def test_refused_confirmation_means_no_session_at_all(tmp_path: FsPath, server: LwM2MServer) -> None:
    card = write_card(tmp_path / "card.json", card_config(server), indicators=(True, True))
    # a factory configuration exists, yet a refusal must not lead to any session either
    factory_cfg = card_config(server)
    factory_cfg.endpoint = "sc-ep"
    factory = StaticSource(factory_cfg)
    client, events = make_client(tmp_path, card, agent=CallbackUserAgent(lambda q, s: False), factory=factory)
    try:
        await client.start()
        await client.wait_event("card-declined", T)
        client.request_update()
        await asyncio.sleep(1.0)
        assert server.get_client("sc-ep") is None and not client.sessions
        assert "registered" not in names(events) and not client.tree.data.get(1)
    finally:
        await client.stop()


# ---- corrupt / truncated cards --------------------------------------------------------------------------
async def test_truncated_card_is_reported_and_client_falls_back_keeping_its_configuration(
        tmp_path: FsPath, server: LwM2MServer) -> None:
    # first run: factory configuration, persisted
    factory_cfg = card_config(server, lifetime=77)
    factory_cfg.endpoint = "sc-ep"
    client, _ = make_client(tmp_path, None, factory=StaticSource(factory_cfg))
    await client.start()
    await client.wait_event("registered", T)
    await client.stop()
    # second run with a card whose bootstrap file is truncated
    card = write_card(tmp_path / "card.json", card_config(server, lifetime=11), truncate=3)
    client, events = make_client(tmp_path, card)
    try:
        await client.start()
        err = await client.wait_event("card-error", T)
        assert "EF LwM2M_Bootstrap" in err["reason"]
        await client.wait_event("registered", T)
        assert client.tree.data[1][0][1] == 77, "the previous (factory) configuration is kept"
        assert server.get_client("sc-ep").lifetime == 77
        assert "card-bootstrapped" not in names(events)
    finally:
        await client.stop()


async def test_corrupt_card_without_fallback_leaves_client_idle_not_crashed(tmp_path: FsPath, server: LwM2MServer) -> None:
    card = tmp_path / "card.json"
    write_card(card, card_config(server))
    doc = json.loads(card.read_text())
    for f in doc["files"]:
        if f.get("name") == "EF LwM2M_Bootstrap":
            f["data"] = "0001FFFF" + f["data"][8:]  # header declares more bytes than there are
    card.write_text(json.dumps(doc))
    client, events = make_client(tmp_path, card)
    try:
        await client.start()
        await client.wait_event("card-error", T)
        await client.wait_event("idle", T)
        assert server.get_client("sc-ep") is None
    finally:
        await client.stop()


# ---- re-check on Register / Update (Core 1.1.1 §6.1.3.2) ---------------------------------------------------
async def test_changed_card_rebootstraps_and_reregisters(tmp_path: FsPath, server: LwM2MServer) -> None:
    card = write_card(tmp_path / "card.json", card_config(server))
    client, events = make_client(tmp_path, card)
    sub = server.events.subscribe(["card-combination", "deregistered"])
    try:
        await client.start()
        await client.wait_event("registered", T)
        first = await sub.get(T)
        assert first.data["iccid"] == ICCID_A
        mark = len(client.events)
        write_card(card, card_config(server, lifetime=99), iccid=ICCID_B)
        client.request_update()
        ch = await client.wait_event("card-changed", T, since=mark)
        assert (ch["old_iccid"], ch["new_iccid"]) == (ICCID_A, ICCID_B)
        await client.wait_event("registered", T, since=mark)
        seq = names(events)[mark:]
        assert seq.index("deregistered") < seq.index("card-bootstrapped") < seq.index("registered")
        assert server.get_client("sc-ep").lifetime == 99
        kinds = [(await sub.get(T)) for _ in range(2)]
        combo = next(e for e in kinds if e.kind.value == "card-combination")
        assert combo.data["iccid"] == ICCID_B and combo.data["reason"] == "new-card-in-known-device"
        assert combo.data["previous_iccids"] == [ICCID_A]
    finally:
        sub.close()
        await client.stop()


async def test_removed_card_deletes_card_information_and_falls_back(tmp_path: FsPath, server: LwM2MServer) -> None:
    card = write_card(tmp_path / "card.json", card_config(server))
    factory_cfg = card_config(server, lifetime=55)
    factory_cfg.endpoint = "sc-ep"
    client, events = make_client(tmp_path, card, factory=StaticSource(factory_cfg))
    try:
        await client.start()
        await client.wait_event("registered", T)
        assert client.state is not None and client.state.load()[2]["source"] == "card"
        mark = len(client.events)
        card.unlink()
        client.request_update()
        await client.wait_event("card-removed", T, since=mark)
        await client.wait_event("card-information-deleted", T, since=mark)
        await client.wait_event("registered", T, since=mark)
        seq = names(events)[mark:]
        assert seq.index("deregistered") < seq.index("registered")
        assert client.state.load()[2]["source"] == "factory"
        assert 504 not in client.tree.data, "no card, no ICCID"
        assert server.get_client("sc-ep").lifetime == 55
    finally:
        await client.stop()


async def test_unchanged_card_keeps_the_registration(tmp_path: FsPath, server: LwM2MServer) -> None:
    card = write_card(tmp_path / "card.json", card_config(server))
    client, events = make_client(tmp_path, card)
    try:
        await client.start()
        await client.wait_event("registered", T)
        mark = len(client.events)
        client.request_update()
        await client.wait_event("updated", T, since=mark)
        assert not {"card-changed", "card-removed", "deregistered"} & set(names(events)[mark:])
    finally:
        await client.stop()


# ---- property: description -> image -> APDU reads -> client state ----------------------------------------
_u31 = st.integers(0, 2**31 - 1)


@st.composite
def usable_configs(draw: st.DrawFn) -> DeviceConfig:
    ssids = draw(st.lists(st.integers(1, 65534), unique=True, min_size=1, max_size=3))
    iids = draw(st.lists(st.integers(0, 100), unique=True, min_size=len(ssids) + 1, max_size=len(ssids) + 1))
    sec = [SecurityAccount(iids[-1], f"coap://127.0.0.1:{draw(st.integers(1, 65535))}", bootstrap=True,
                           client_hold_off=draw(_u31), bootstrap_account_timeout=draw(_u31))]
    for iid, ssid in zip(iids, ssids):
        psk = draw(st.booleans())
        sec.append(SecurityAccount(iid, f"coap{'s' if psk else ''}://127.0.0.1:{draw(st.integers(1, 65535))}",
                                   mode=SecurityMode.PSK if psk else SecurityMode.NOSEC,
                                   psk_identity=draw(st.binary(min_size=1, max_size=24)) if psk else b"",
                                   psk_key=draw(st.binary(min_size=1, max_size=32)) if psk else b"",
                                   short_server_id=ssid, client_hold_off=draw(_u31)))
    srv_iids = draw(st.lists(st.integers(0, 100), unique=True, min_size=len(ssids), max_size=len(ssids)))
    servers = [ServerAccount(i, s, lifetime=draw(st.integers(1, 2**31 - 1)),
                             binding=draw(st.sampled_from(["U", "UQ", "T"])),
                             default_pmin=draw(st.none() | _u31), default_pmax=draw(st.none() | _u31),
                             disable_timeout=draw(_u31), notification_storing=draw(st.booleans()))
               for i, s in zip(srv_iids, ssids)]
    return DeviceConfig("", sorted(sec, key=lambda a: a.instance_id), sorted(servers, key=lambda s: s.instance_id))


def tree_values(client: LwM2MClient) -> dict[Path, Any]:
    out: dict[Path, Any] = {}
    for oid in (0, 1):
        for iid, inst in client.tree.data.get(oid, {}).items():
            for rid, v in inst.items():
                out[Path(oid, iid, rid)] = v
    return out


async def _bootstrap_from(source: CardBootstrapSource) -> LwM2MClient:
    client = SmartcardClient(ClientOptions(endpoint="prop-ep", meter_period=None), card=source)
    assert await client.load_bootstrap_information()
    return client


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=usable_configs(), iccid=st.from_regex(r"\A[0-9]{19,20}\Z"))
def test_generated_card_contents_become_the_client_state(cfg: DeviceConfig, iccid: str) -> None:
    image = build_image(CardDescription(cfg, iccid, (False, False)))
    client = asyncio.run(_bootstrap_from(CardBootstrapSource(ImageCardSource(image, endpoint="prop-ep"))))
    assert tree_values(client) == cfg.to_values()
    assert client.tree.data[504][0][11] == {0: iccid}


@pytest.fixture(scope="module")
def pcsc() -> Any:
    from reference.smartcard import PcscEnvironment
    from reference.smartcard.pcsc_env import unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(f"real PC/SC unavailable: {reason}")
    with PcscEnvironment(lock_timeout=120) as env:
        yield env


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(cfg=usable_configs(), iccid=st.from_regex(r"\A[0-9]{19,20}\Z"))
def test_generated_card_through_real_pcsc_becomes_the_client_state(pcsc: Any, cfg: DeviceConfig, iccid: str) -> None:
    from reference.smartcard import PcscCardSource

    card = pcsc.insert(build_image(CardDescription(cfg, iccid, (True, False))))
    try:
        src = CardBootstrapSource(PcscCardSource(reader=pcsc.reader, endpoint="prop-ep", timeout=10))
        client = asyncio.run(_bootstrap_from(src))
        assert tree_values(client) == cfg.to_values()
        assert src.iccid == iccid and src.autonomous_connect
    finally:
        pcsc.remove(card)
