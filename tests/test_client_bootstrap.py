"""Reference client: bootstrap interface, bootstrap order/fallback, persistence, CLI.

Stand-ins (reference.client.testing.StandInServer) play the Bootstrap-Server and LwM2M Servers over
real loopback sockets; the persistence test runs the real ``lwm2m-client`` CLI in a subprocess and
kills it with SIGKILL in the middle of a bootstrap.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest
from aiocoap import Code

from reference import formats
from reference.client import ClientOptions, LwM2MClient, StaticSource
from reference.client.testing import StandInServer
from reference.formats import linkformat
from reference.model.config import DeviceConfig, SecurityAccount, ServerAccount
from reference.model.path import Path
from reference.model.registry import ObjectRegistry
from reference.model.types import ContentFormat as CF

TLV = CF.LWM2M_TLV
REG = ObjectRegistry.default()


def bs_only_config(bs: StandInServer, endpoint: str = "ep-bs") -> DeviceConfig:
    return DeviceConfig(endpoint=endpoint, security=[SecurityAccount(instance_id=0, uri=bs.uri, bootstrap=True)])


def dm_accounts(server: StandInServer, ssid: int = 201, sec_iid: int = 1, srv_iid: int = 0,
                lifetime: int = 60) -> tuple[bytes, bytes]:
    """TLV bodies for Bootstrap-Write /0/sec_iid and /1/srv_iid."""
    sec = SecurityAccount(instance_id=sec_iid, uri=server.uri, short_server_id=ssid)
    srv = ServerAccount(instance_id=srv_iid, short_server_id=ssid, lifetime=lifetime)
    return (formats.encode(TLV, sec.to_values(), Path(0, sec_iid), REG),
            formats.encode(TLV, srv.to_values(), Path(1, srv_iid), REG))


async def start_client(cfg: DeviceConfig, **opts) -> LwM2MClient:
    o = dict(local_host="127.0.0.1", request_timeout=2.0, retry_delay=0.2, meter_period=None,
             bootstrap_timeout=5.0, bootstrap_retry_delay=0.2)
    o.update(opts)
    c = LwM2MClient(ClientOptions(**o), factory=StaticSource(cfg))
    await c.start()
    return c


@pytest.fixture
async def bs():
    s = await StandInServer().start()
    yield s
    await s.stop()


@pytest.fixture
async def dm():
    s = await StandInServer().start()
    yield s
    await s.stop()


async def test_client_initiated_bootstrap_full_sequence(bs, dm):
    script_done = asyncio.get_running_loop().create_future()
    results: dict[str, object] = {}

    async def script(rec):
        try:
            addr = rec.remote
            results["delete"] = (await bs.request(addr, Code.DELETE, "/")).code
            d = await bs.request(addr, Code.GET, "/", accept=CF.LINK_FORMAT)
            results["discover_after_delete"] = d.payload.decode()
            sec, srv = dm_accounts(dm)
            results["w0"] = (await bs.request(addr, Code.PUT, "/0/1", sec, content_format=TLV)).code
            results["w1"] = (await bs.request(addr, Code.PUT, "/1/0", srv, content_format=TLV)).code
            results["w_res"] = (await bs.request(addr, Code.PUT, "/1/0/1", b"77", content_format=CF.TEXT)).code
            d = await bs.request(addr, Code.GET, "/", accept=CF.LINK_FORMAT)
            results["discover"] = d.payload.decode()
            results["discover_ct"] = d.opt.content_format
            r = await bs.request(addr, Code.GET, "/1", accept=TLV)
            results["read1"] = (r.code, formats.decode(TLV, r.payload, Path(1), REG) if r.code == Code.CONTENT else None)
            results["read0"] = (await bs.request(addr, Code.GET, "/0/0", accept=TLV)).code
            results["read3"] = (await bs.request(addr, Code.GET, "/3/0", accept=TLV)).code
            results["del_bs"] = (await bs.request(addr, Code.DELETE, "/0/0")).code
            results["del_deep"] = (await bs.request(addr, Code.DELETE, "/1/0/1")).code
            results["finish"] = (await bs.request(addr, Code.POST, "/bs")).code
            script_done.set_result(True)
        except Exception as e:  # surface in the test
            script_done.set_exception(e)

    bs.on_bootstrap_request = script
    c = await start_client(bs_only_config(bs), preferred_content_format=CF.SENML_CBOR)
    try:
        req = await bs.wait_for(lambda r: r.path == ("bs",))
        assert req.code == Code.POST and req.q("ep") == "ep-bs" and req.q("pct") == str(int(CF.SENML_CBOR))
        await asyncio.wait_for(script_done, 10)
        assert results["delete"] == Code.DELETED
        # the bootstrap account survives Bootstrap-Delete on / (and carries no ssid/uri in Discover)
        links = {l.target: l for l in linkformat.parse(results["discover_after_delete"])}
        assert links["/"].get("lwm2m") == "1.1" and "/0/0" in links and links["/0/0"].params == {}
        assert "/1/0" not in links and "/3/0" in links
        assert results["w0"] == results["w1"] == results["w_res"] == Code.CHANGED
        links = {l.target: l for l in linkformat.parse(results["discover"])}
        assert results["discover_ct"] == CF.LINK_FORMAT
        assert links["/0/1"].get("ssid") == "201" and links["/0/1"].get("uri") == dm.uri
        assert '</0/1>;ssid=201;uri="' + dm.uri + '"' in results["discover"]
        assert links["/1/0"].get("ssid") == "201"
        assert links["/1"].get("ver") == "1.1"
        code, vals = results["read1"]
        assert code == Code.CONTENT and vals[Path(1, 0, 1)] == 77 and vals[Path(1, 0, 0)] == 201
        assert results["read0"] == Code.METHOD_NOT_ALLOWED and results["read3"] == Code.METHOD_NOT_ALLOWED
        assert results["del_bs"] == Code.BAD_REQUEST and results["del_deep"] == Code.BAD_REQUEST
        assert results["finish"] == Code.CHANGED
        await c.wait_event("bootstrap-finished", 3)
        reg = await dm.wait_for(lambda r: r.path == ("rd",))
        assert reg.q("ep") == "ep-bs" and reg.q("lt") == "77"
    finally:
        await c.stop()


async def test_bootstrap_finish_inconsistent_is_406_and_stays(bs, dm):
    finished = asyncio.get_running_loop().create_future()

    async def script(rec):
        addr = rec.remote
        try:
            sec, srv = dm_accounts(dm)
            await bs.request(addr, Code.PUT, "/1/0", srv, content_format=TLV)  # Server without Security
            first = (await bs.request(addr, Code.POST, "/bs"))
            live_servers = dict(c.tree.data[1])  # not committed
            await bs.request(addr, Code.PUT, "/0/1", sec, content_format=TLV)
            second = (await bs.request(addr, Code.POST, "/bs")).code
            finished.set_result((first, live_servers, second))
        except Exception as e:
            finished.set_exception(e)

    bs.on_bootstrap_request = script
    c = await start_client(bs_only_config(bs))
    try:
        first, live_servers, second = await asyncio.wait_for(finished, 10)
        assert first.code == Code.NOT_ACCEPTABLE and b"Security" in first.payload
        assert live_servers == {}, "writes go to the staging copy until a successful Finish"
        assert second == Code.CHANGED
        await dm.wait_for(lambda r: r.path == ("rd",))
    finally:
        await c.stop()


async def test_bootstrap_request_trigger_and_failed_bootstrap_keeps_config(bs, dm):
    cfg = DeviceConfig(endpoint="ep-trig", security=[
        SecurityAccount(instance_id=0, uri=bs.uri, bootstrap=True),
        SecurityAccount(instance_id=1, uri=dm.uri, short_server_id=301)],
        servers=[ServerAccount(instance_id=0, short_server_id=301)])

    async def script(rec):  # writes garbage then goes silent: no Finish
        await bs.request(rec.remote, Code.DELETE, "/")

    bs.on_bootstrap_request = script
    c = await start_client(cfg, bootstrap_timeout=1.0, bootstrap_attempts=1)
    try:
        await dm.wait_for(lambda r: r.path == ("rd",))
        assert (await dm.request(c.local_address, Code.POST, "/1/0/9")).code == Code.CHANGED
        await bs.wait_for(lambda r: r.path == ("bs",))
        f = await c.wait_event("bootstrap-failed", 4)
        assert "timeout" in f["reason"]
        assert c.staging is None and 0 in c.tree.data[1], "the failed bootstrap left the live config intact"
    finally:
        await c.stop()


async def test_fallback_to_bootstrap_when_registration_fails(bs, dm):
    dm.register_code = Code.FORBIDDEN
    cfg = DeviceConfig(endpoint="ep-fb", security=[
        SecurityAccount(instance_id=0, uri=bs.uri, bootstrap=True, client_hold_off=1),
        SecurityAccount(instance_id=1, uri=dm.uri, short_server_id=401)],
        servers=[ServerAccount(instance_id=0, short_server_id=401)])
    c = await start_client(cfg, register_attempts=2)
    try:
        regs_done = await c.wait_event("registration-failed", 3)
        assert regs_done["ssid"] == 401 and len(dm.registers()) == 2
        req = await bs.wait_for(lambda r: r.path == ("bs",), timeout=4)
        started = next(f for n, f in c.events if n == "bootstrap-started")
        assert started["hold_off"] == 1 and started["reason"] == "registration-failed"
        last_reg = dm.registers()[-1]
        assert req.at - last_reg.at >= 0.9, "Client Hold Off Time is honoured"
    finally:
        await c.stop()


# ------------------------------------------------------------------ CLI / persistence
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reference.client.cli", *args]


async def _read_until(proc: asyncio.subprocess.Process, needle: str, timeout: float, seen: list[str]) -> str:
    async def _go() -> str:
        while True:
            line = await proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise AssertionError(f"client exited before {needle!r}; output: {seen}")
            text = line.decode().strip()
            seen.append(text)
            if needle in text:
                return text
    return await asyncio.wait_for(_go(), timeout)


async def test_cli_help_lists_flags():
    proc = await asyncio.create_subprocess_exec(*_cli("--help"), stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode()
    for flag in ("--endpoint", "--server-uri", "--bootstrap-uri", "--psk-identity", "--psk-key", "--lifetime",
                 "--binding", "--lwm2m-version", "--local-host", "--local-port", "--state-dir", "--config",
                 "--card", "--object-dir", "--stdin-control", "--confirm-hook", "--log-level"):
        assert flag in text, flag
    assert proc.returncode == 0


async def test_cli_killed_mid_bootstrap_keeps_previous_config(tmp_path, bs, dm):
    """SIGKILL between Bootstrap-Write and Bootstrap-Finish: the restarted client still has the old
    account (state is replaced atomically only at a successful Finish)."""
    new_dm = await StandInServer().start()
    cfg = DeviceConfig(endpoint="ep-kill", security=[
        SecurityAccount(instance_id=0, uri=bs.uri, bootstrap=True),
        SecurityAccount(instance_id=1, uri=dm.uri, short_server_id=501)],
        servers=[ServerAccount(instance_id=0, short_server_id=501)])
    cfg_file = tmp_path / "factory.json"
    cfg.to_file(cfg_file)
    state = tmp_path / "state"
    args = _cli("--config", str(cfg_file), "--state-dir", str(state), "--local-host", "127.0.0.1",
                "--stdin-control", "--request-timeout", "2", "--meter-period", "0")
    written = asyncio.get_running_loop().create_future()

    async def script(rec):
        try:
            await bs.request(rec.remote, Code.DELETE, "/")
            sec, srv = dm_accounts(new_dm, ssid=502)
            await bs.request(rec.remote, Code.PUT, "/0/1", sec, content_format=TLV)
            await bs.request(rec.remote, Code.PUT, "/1/0", srv, content_format=TLV)
            written.set_result(rec.remote)
        except Exception as e:
            written.set_exception(e)

    bs.on_bootstrap_request = script
    seen: list[str] = []
    proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    try:
        ready = await _read_until(proc, "READY", 20, seen)
        assert "endpoint=ep-kill" in ready and "local=127.0.0.1:" in ready
        await _read_until(proc, "EVENT registered", 10, seen)
        before = json.loads((state / "client-state.json").read_text())
        proc.stdin.write(b"bootstrap\n")  # type: ignore[union-attr]
        await proc.stdin.drain()  # type: ignore[union-attr]
        await asyncio.wait_for(written, 10)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        after = json.loads((state / "client-state.json").read_text())
        assert after == before, "state changed before Bootstrap-Finish"
        assert not [p for p in os.listdir(state) if p != "client-state.json" and not p.startswith(".")]
        n_old = len(dm.registers())
        proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)
        await _read_until(proc, "EVENT registered", 20, seen)
        assert len(dm.registers()) == n_old + 1 and not new_dm.registers()
        # a completed bootstrap is persisted and survives a kill
        done = asyncio.get_running_loop().create_future()

        async def script2(rec):
            sec, srv = dm_accounts(new_dm, ssid=502)
            await bs.request(rec.remote, Code.PUT, "/0/1", sec, content_format=TLV)
            await bs.request(rec.remote, Code.PUT, "/1/0", srv, content_format=TLV)
            done.set_result((await bs.request(rec.remote, Code.POST, "/bs")).code)

        bs.on_bootstrap_request = script2
        proc.stdin.write(b"bootstrap\n")  # type: ignore[union-attr]
        await proc.stdin.drain()  # type: ignore[union-attr]
        assert await asyncio.wait_for(done, 10) == Code.CHANGED
        await _read_until(proc, "EVENT bootstrap-finished", 10, seen)
        await new_dm.wait_for(lambda r: r.path == ("rd",), timeout=10)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        n_new = len(new_dm.registers())
        proc = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)
        await _read_until(proc, "EVENT registered", 20, seen)
        await new_dm.wait_for(lambda r: r.path == ("rd",), since=n_new, timeout=5)
        proc.stdin.write(b"quit\n")  # type: ignore[union-attr]
        await proc.stdin.drain()  # type: ignore[union-attr]
        await _read_until(proc, "EVENT deregistered", 10, seen)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await new_dm.stop()


# ------------------------------------------------------------------ smartcard seam
async def test_card_first_with_user_confirmation(tmp_path, dm):
    """Core §6.1: the smartcard is tried before the factory configuration; the card's ask_user
    indicator routes through the user agent; a "no" falls back to the factory account."""
    from reference.client import CallbackUserAgent, open_card_source
    from reference.smartcard import CardDescription, build_image
    factory_srv = await StandInServer().start()
    card_cfg = DeviceConfig(endpoint="ep-card", security=[SecurityAccount(0, dm.uri, short_server_id=7)],
                            servers=[ServerAccount(0, 7)])
    img = tmp_path / "card.img"
    build_image(CardDescription(card_cfg, indicators=(True, True))).save(img)
    factory = DeviceConfig(endpoint="ep-card", security=[SecurityAccount(0, factory_srv.uri, short_server_id=8)],
                           servers=[ServerAccount(0, 8)])
    try:
        for answer, expected, other in ((True, dm, factory_srv), (False, factory_srv, dm)):
            asked: list[str] = []
            agent = CallbackUserAgent(lambda q, s, a=answer: asked.append(s) or a)
            c = LwM2MClient(ClientOptions(local_host="127.0.0.1", meter_period=None, request_timeout=2),
                            card=open_card_source(f"image:{img}", endpoint="ep-card"),
                            factory=StaticSource(factory), user_agent=agent)
            n_exp, n_other = len(expected.registers()), len(other.registers())
            await c.start()
            try:
                await expected.wait_for(lambda r: r.path == ("rd",), since=n_exp)
                assert asked == ["card"] and len(other.registers()) == n_other
            finally:
                await c.stop()
    finally:
        await factory_srv.stop()
