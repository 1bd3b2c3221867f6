"""HTTP JSON API and ``lwm2m-server`` command line of the reference server, over loopback."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import aiohttp
import pytest
from aiocoap.numbers.codes import Code

from reference.model.path import Path

try:  # the fake LwM2M client lives with the server tests
    from test_server import FakeDevice, make_server
except ImportError:  # pragma: no cover - package-style test import
    from tests.test_server import FakeDevice, make_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
async def api(tmp_path):
    s = await make_server(tmp_path / "state", http_port=0)
    dev = await FakeDevice().start()
    assert (await dev.register(s.coap_address, "web-1")).code == Code.CREATED
    host, port = s.http_address
    async with aiohttp.ClientSession(f"http://{host}:{port}",
                                     timeout=aiohttp.ClientTimeout(total=10)) as http:
        yield s, dev, http
    dev.close()
    await s.stop()


async def test_clients_and_client(api) -> None:
    s, dev, http = api
    async with http.get("/api/clients") as r:
        assert r.status == 200
        doc = await r.json()
    assert doc["count"] == 1
    c = doc["clients"][0]
    assert c["endpoint"] == "web-1" and c["lifetime"] == 60 and c["binding"] == "U"
    assert c["lwm2m"] == "1.1" and c["object_links"] == "</1/0>,</3/0>,</5/0>"
    assert c["location"].startswith("/rd/") and c["address"].endswith(f":{dev.ep.address[1]}")
    async with http.get("/api/clients/web-1") as r:
        one = await r.json()
    assert one["objects"][1] == {"uri": "/3/0", "attributes": {}}
    async with http.get("/api/clients/nobody") as r:
        assert r.status == 404 and "error" in await r.json()
    async with http.get("/api/server") as r:
        info = await r.json()
    assert info["registrations"] == 1 and info["coap"] == "%s:%d" % s.coap_address


async def test_dm_over_http(api) -> None:
    s, dev, http = api
    async with http.get("/api/clients/web-1/data/3/0/0") as r:
        doc = await r.json()
    assert r.status == 200 and doc["code"] == "2.05" and doc["values"] == {"/3/0/0": "ACME"}
    assert doc["content_format"] == 11542 and doc["types"] == {"/3/0/0": "string"}
    assert bytes.fromhex(doc["payload_hex"])
    async with http.get("/api/clients/web-1/data/3/0?format=senml-json") as r:
        doc = await r.json()
    assert doc["content_format"] == 110 and doc["values"]["/3/0/9"] == 90

    async with http.put("/api/clients/web-1/data/1/0/1", json={"value": "250"}) as r:
        doc = await r.json()
    assert doc["code"] == "2.04" and dev.values[Path(1, 0, 1)] == 250  # typed by the DDF
    async with http.patch("/api/clients/web-1/data/1/0",
                          json={"values": {"/1/0/1": 99}, "format": "senml-json"}) as r:
        assert (await r.json())["code"] == "2.04" and dev.values[Path(1, 0, 1)] == 99
    async with http.post("/api/clients/web-1/execute/3/0/4", json={"args": "5"}) as r:
        assert (await r.json())["code"] == "2.04" and dev.executed == [("/3/0/4", b"5")]
    async with http.post("/api/clients/web-1/data/1", json={"values": {"/1/3/0": 4, "/1/3/1": 30}}) as r:
        doc = await r.json()
    assert doc["code"] == "2.01" and doc["location"] == "/1/3"
    async with http.delete("/api/clients/web-1/data/1/3") as r:
        assert (await r.json())["code"] == "2.02"
    async with http.get("/api/clients/web-1/discover/3/0") as r:
        doc = await r.json()
    assert {"uri": "/3/0/0", "attributes": {}} in doc["links"]
    async with http.put("/api/clients/web-1/attributes/3/0/9", json={"pmin": 5, "pmax": 50}) as r:
        assert (await r.json())["code"] == "2.04"
    assert dev.attributes == [("/3/0/9", ("pmin=5", "pmax=50"))]
    async with http.put("/api/clients/web-1/data/1/0/1",
                        json={"payload_hex": "0a", "content_format": "text"}) as r:
        assert r.status == 200  # raw payload path: the device decides (text "\n" is no integer)
    async with http.get("/api/clients/web-1/data/3/0/5") as r:
        doc = await r.json()
    assert r.status == 200 and doc["code"] == "4.04" and doc["success"] is False


@pytest.mark.parametrize("method,url,body,status", [
    ("GET", "/api/clients/nobody/data/3/0/0", None, 404),
    ("GET", "/api/clients/web-1/data/3/0/0?format=bogus", None, 400),
    ("GET", "/api/clients/web-1/data/3/0/0?timeout=x", None, 400),
    ("PUT", "/api/clients/web-1/data/1/0/1", {"value": "abc"}, 400),      # not an Integer
    ("PUT", "/api/clients/web-1/data/1/0/1", {}, 400),
    ("PUT", "/api/clients/web-1/data/1/0/1", [1], 400),
    ("PUT", "/api/clients/web-1/attributes/3/0/9", {"nope": 1}, 400),
    ("POST", "/api/clients/web-1/execute/3/0", {}, 400),                   # not a resource
    ("DELETE", "/api/observations/999", None, 404),
    ("GET", "/api/events?since=x", None, 400),
    ("GET", "/api/events?kind=bogus", None, 400),
])
async def test_http_errors(api, method, url, body, status) -> None:
    _, _, http = api
    async with http.request(method, url, json=body) as r:
        assert r.status == status
        assert "error" in await r.json()


async def test_observe_over_http_and_events(api) -> None:
    s, dev, http = api
    async with http.get("/api/events?since=0") as r:
        doc = await r.json()
    assert [e["kind"] for e in doc["events"]] == ["registered"]
    assert doc["events"][0]["data"]["endpoint"] == "web-1"
    since = doc["last_seq"]
    async with http.post("/api/clients/web-1/observations/3/0/9") as r:
        doc = await r.json()
    oid = doc["observation"]["id"]
    assert doc["response"]["values"] == {"/3/0/9": 90}
    async with http.get("/api/observations") as r:
        assert [o["id"] for o in (await r.json())["observations"]] == [oid]

    poll = asyncio.ensure_future(http.get(f"/api/events?since={since}&timeout=5&kind=notification"))
    await asyncio.sleep(0.1)
    dev.notify(Path(3, 0, 9), 55)
    async with await poll as r:
        doc = await r.json()
    assert [e["data"]["values"] for e in doc["events"]] == [{"/3/0/9": 55}]
    assert doc["events"][0]["data"]["observation"] == oid

    # Server-Sent Events replay from the history
    async with http.get(f"/api/events/stream?since={since}&kind=notification") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = []
        while len(lines) < 3:
            lines.append((await asyncio.wait_for(r.content.readline(), 3)).decode().strip())
    assert lines[1] == "event: notification" and json.loads(lines[2][6:])["data"]["observation"] == oid

    async with http.delete(f"/api/clients/web-1/observations/3/0/9") as r:
        doc = await r.json()
    assert doc["cancelled"] == oid and doc["response"]["code"] == "2.05"
    assert not s.observations


async def test_long_poll_times_out_empty(api) -> None:
    s, _, http = api
    t0 = asyncio.get_running_loop().time()
    async with http.get(f"/api/events?since={s.events.last_seq}&timeout=0.3") as r:
        doc = await r.json()
    assert doc["events"] == [] and doc["last_seq"] == s.events.last_seq
    assert asyncio.get_running_loop().time() - t0 >= 0.25


# ---- command line ----------------------------------------------------------------------------
async def _spawn(*args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reference.server.cli", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _ctl(api_url: str, *args: str) -> tuple[int, str]:
    p = await _spawn("ctl", "--api", api_url, "--timeout", "5", *args)
    out, err = await asyncio.wait_for(p.communicate(), 30)
    return p.returncode, out.decode()  # type: ignore[return-value]


async def _start_cli(state: str) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    p = await _spawn("--coap-port", "0", "--http-port", "0", "--state-dir", state,
                     "--log-level", "WARNING")
    line = (await asyncio.wait_for(p.stdout.readline(), 20)).decode()  # type: ignore[union-attr]
    assert line.startswith("lwm2m-server READY "), line
    addrs = dict(kv.split("=", 1) for kv in line.split()[2:])
    assert set(addrs) == {"coap", "coaps", "http"} and addrs["coaps"] == "off"
    return p, addrs


async def _stop_cli(p: asyncio.subprocess.Process) -> int:
    p.send_signal(signal.SIGTERM)
    await asyncio.wait_for(p.communicate(), 20)
    return p.returncode  # type: ignore[return-value]


async def test_cli_serve_ctl_and_restart(tmp_path) -> None:
    state = str(tmp_path / "state")
    p, addrs = await _start_cli(state)
    dev = await FakeDevice().start()
    try:
        host, port = addrs["coap"].rsplit(":", 1)
        assert (await dev.register((host, int(port)), "cli-1")).code == Code.CREATED
        url = f"http://{addrs['http']}"
        rc, out = await _ctl(url, "clients")
        assert rc == 0 and json.loads(out)["clients"][0]["endpoint"] == "cli-1"
        rc, out = await _ctl(url, "read", "cli-1", "/3/0/0")
        assert rc == 0 and json.loads(out)["values"] == {"/3/0/0": "ACME"}
        rc, out = await _ctl(url, "write", "cli-1", "/1/0/1", "300")
        assert rc == 0 and dev.values[Path(1, 0, 1)] == 300
        rc, out = await _ctl(url, "read", "cli-1", "/3/0/5")
        assert rc == 3 and json.loads(out)["code"] == "4.04"  # the client's error code
        rc, _ = await _ctl(url, "read", "nobody", "/3/0/0")
        assert rc == 1
        obs = await _spawn("ctl", "--api", url, "observe", "cli-1", "/3/0/9", "--count", "1")
        first = json.loads(await asyncio.wait_for(obs.stdout.readline(), 10))  # type: ignore[union-attr]
        assert first["response"]["values"] == {"/3/0/9": 90}
        await asyncio.sleep(0.2)
        dev.notify(Path(3, 0, 9), 42)
        note = json.loads(await asyncio.wait_for(obs.stdout.readline(), 10))  # type: ignore[union-attr]
        assert note["kind"] == "notification" and note["data"]["values"] == {"/3/0/9": 42}
        await asyncio.wait_for(obs.wait(), 10)
        assert obs.returncode == 0
    finally:
        assert await _stop_cli(p) == 0
    p2, addrs2 = await _start_cli(state)
    try:
        rc, out = await _ctl(f"http://{addrs2['http']}", "client", "cli-1")
        assert rc == 0 and json.loads(out)["endpoint"] == "cli-1"  # survived the restart
    finally:
        dev.close()
        await _stop_cli(p2)


async def test_cli_help_and_unreachable() -> None:
    p = await _spawn("--help")
    out, _ = await asyncio.wait_for(p.communicate(), 20)
    text = out.decode()
    assert p.returncode == 0 and "--coaps-port" in text and "READY" in text and "ctl" in text
    p = await _spawn("ctl", "--help")
    out, _ = await asyncio.wait_for(p.communicate(), 20)
    assert p.returncode == 0 and "observe" in out.decode()
    rc, _ = await _ctl("http://127.0.0.1:9", "clients")
    assert rc == 2
