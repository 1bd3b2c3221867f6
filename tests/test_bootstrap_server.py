"""Tests of the reference Bootstrap-Server and provisioning portal (reference/bootstrap/).

Everything runs over real loopback sockets: a small aiocoap stand-in client (``StandinClient``
below) sends the Bootstrap-Request and serves the Bootstrap-Server's DELETE/PUT/GET/POST, recording
what it receives. It is deliberately not the reference client: it accepts anything, so the tests
can inspect exactly what arrived on the wire.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path as FsPath

import aiocoap
import aiocoap.resource
import aiohttp
import pytest
from aiocoap import Code, Message

from reference import formats
from reference.bootstrap import (
    BootstrapPolicy,
    BootstrapServer,
    BootstrapService,
    DeviceStore,
    EventKind,
    ProvisioningError,
    UnknownDevice,
    parse_csv,
    parse_json,
)
from reference.bootstrap.server import parse_discover_links
from reference.model.config import DeviceConfig, SecurityAccount, SecurityMode, ServerAccount
from reference.model.path import Path
from reference.model.registry import ObjectRegistry

REGISTRY = ObjectRegistry.default()
REPO = FsPath(__file__).resolve().parent.parent


# ---- stand-in LwM2M client ---------------------------------------------------------------------
@dataclass
class Received:
    method: str
    path: str
    content_format: int | None
    accept: int | None
    payload: bytes


@dataclass
class StandinClient:
    """Answers: DELETE 2.02, PUT 2.04, GET / 2.05 with ``discover_links``, POST /bs ``finish_code``."""

    finish_code: Code = Code.CHANGED
    discover_links: str = "</>;lwm2m=1.1,</0/0>,</1>"
    delay: dict[str, float] = field(default_factory=dict)  # method -> seconds before answering
    received: list[Received] = field(default_factory=list)
    context: aiocoap.Context | None = None
    port: int = 0
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> "StandinClient":
        outer = self

        class Root(aiocoap.resource.Resource):
            async def render(self, request: Message) -> Message:
                return await outer._answer(request)

            async def needs_blockwise_assembly(self, request: Message) -> bool:
                return True

        self.context = await aiocoap.Context.create_server_context(
            Root(), bind=("127.0.0.1", 0), transports=["udp6"])
        mi = self.context.request_interfaces[0].token_interface.message_interface  # type: ignore[attr-defined]
        self.port = int(mi.transport.get_extra_info("socket").getsockname()[1])
        return self

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    async def _answer(self, request: Message) -> Message:
        method = request.code.name
        path = "/" + "/".join(request.opt.uri_path)
        self.received.append(Received(method, path, request.opt.content_format and int(request.opt.content_format),
                                      request.opt.accept and int(request.opt.accept), bytes(request.payload)))
        if method in self.delay:
            await asyncio.sleep(self.delay[method])
        if method == "DELETE":
            return Message(code=Code.DELETED)
        if method == "PUT":
            return Message(code=Code.CHANGED)
        if method == "GET" and path == "/":
            return Message(code=Code.CONTENT, payload=self.discover_links.encode(), content_format=40)
        if method == "POST" and path == "/bs":
            self.finished.set()
            return Message(code=self.finish_code)
        return Message(code=Code.NOT_FOUND)

    async def bootstrap_request(self, server_uri: str, query: str, timeout: float = 5.0) -> Message:
        """Send ``POST /bs?<query>`` from this client's socket; returns the response."""
        assert self.context is not None
        msg = Message(code=Code.POST, uri=f"{server_uri}/bs" + (f"?{query}" if query else ""))
        return await asyncio.wait_for(self.context.request(msg).response, timeout)

    async def request(self, server_uri: str, code: Code, path: str, timeout: float = 5.0) -> Message:
        assert self.context is not None
        msg = Message(code=code, uri=f"{server_uri}{path}")
        return await asyncio.wait_for(self.context.request(msg).response, timeout)

    def ops(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.received]

    async def stop(self) -> None:
        if self.context is not None:
            await self.context.shutdown()
            self.context = None


# ---- helpers -------------------------------------------------------------------------------------
PSK_KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def make_cfg(ep: str = "dev1", server_uri: str = "coaps://127.0.0.1:5684", ssid: int = 101,
             bs_identity: bytes = b"", bs_key: bytes = b"") -> DeviceConfig:
    bs_mode = SecurityMode.PSK if bs_key else SecurityMode.NOSEC
    return DeviceConfig(
        endpoint=ep,
        security=[
            SecurityAccount(0, "coap://127.0.0.1:5783", bootstrap=True, mode=bs_mode,
                            psk_identity=bs_identity, psk_key=bs_key),
            SecurityAccount(1, server_uri, mode=SecurityMode.PSK, psk_identity=f"{ep}-id".encode(),
                            psk_key=PSK_KEY, short_server_id=ssid),
        ],
        servers=[ServerAccount(0, ssid, lifetime=300, binding="U")],
    )


@pytest.fixture
async def bs():
    server = BootstrapServer(DeviceStore(None), policy=BootstrapPolicy(request_timeout=2.0, start_delay=0.0))
    await server.start("127.0.0.1", 0)
    yield server
    await server.stop()
    server.store.close()


@pytest.fixture
async def client():
    c = await StandinClient().start()
    yield c
    await c.stop()


def bs_uri(server: BootstrapServer) -> str:
    assert server.coap_address is not None
    return f"coap://127.0.0.1:{server.coap_address[1]}"


def writes(c: StandinClient) -> dict[str, Received]:
    return {r.path: r for r in c.received if r.method == "PUT"}


# ---- client-initiated bootstrap ----------------------------------------------------------------------
async def test_bootstrap_request_runs_delete_writes_finish_in_order(bs, client):
    cfg = make_cfg()
    bs.add_device(cfg)
    resp = await client.bootstrap_request(bs_uri(bs), "ep=dev1")
    assert resp.code == Code.CHANGED
    ev = await bs.wait_for_event(EventKind.FINISHED, "dev1", timeout=5)
    # Delete -> Writes (Security then Server; the bootstrap account is left alone) -> Finish
    assert client.ops() == [("DELETE", "/0"), ("DELETE", "/1"), ("PUT", "/0/1"), ("PUT", "/1/0"), ("POST", "/bs")]
    w = writes(client)
    for base, acc in ((Path(0, 1), cfg.security[1]), (Path(1, 0), cfg.servers[0])):
        r = w[str(base)]
        assert r.content_format == 11542  # TLV when the client states no preference
        assert formats.decode(11542, r.payload, base, REGISTRY) == acc.to_values()
    assert [s["op"] for s in ev.detail["steps"]] == ["delete", "delete", "write", "write", "finish"]
    assert all(s["ok"] for s in ev.detail["steps"])
    assert ev.detail["trigger"] == "client"
    kinds = [e.kind for e in bs.events_since(0, "dev1")]
    assert kinds == ["device-added", "bootstrap-requested", "bootstrap-finished"]
    assert bs.result("dev1").ok


@pytest.mark.parametrize("pct", [112, 110])
async def test_preferred_content_format_is_honoured(bs, client, pct):
    cfg = make_cfg()
    bs.add_device(cfg)
    resp = await client.bootstrap_request(bs_uri(bs), f"ep=dev1&pct={pct}")
    assert resp.code == Code.CHANGED
    await bs.wait_for_event(EventKind.FINISHED, "dev1", timeout=5)
    w = writes(client)
    assert {r.content_format for r in w.values()} == {pct}
    assert formats.decode(pct, w["/0/1"].payload, Path(0, 1), REGISTRY) == cfg.security[1].to_values()
    assert formats.decode(pct, w["/1/0"].payload, Path(1, 0), REGISTRY) == cfg.servers[0].to_values()


async def test_unknown_endpoint_is_refused_without_writes(bs, client):
    bs.add_device(make_cfg("known"))
    resp = await client.bootstrap_request(bs_uri(bs), "ep=stranger")
    assert resp.code == Code.BAD_REQUEST
    await asyncio.sleep(0.3)
    assert client.received == []
    ev = await bs.wait_for_event(EventKind.REJECTED, "stranger", timeout=1)
    assert ev.detail["code"] == "4.00"
    assert not [e for e in bs.events_since(0) if e.kind == "bootstrap-requested"]


@pytest.mark.parametrize("query,code", [
    ("", Code.BAD_REQUEST),                       # no ep at all
    ("ep=", Code.BAD_REQUEST),                    # empty ep
    ("ep=dev1&ep=dev1", Code.BAD_REQUEST),        # ep twice
    ("ep=dev1&pct=abc", Code.BAD_REQUEST),        # malformed pct
    ("ep=dev1&pct=0", Code.UNSUPPORTED_CONTENT_FORMAT),  # text cannot carry an object instance
])
async def test_malformed_bootstrap_requests(bs, client, query, code):
    bs.add_device(make_cfg())
    resp = await client.bootstrap_request(bs_uri(bs), query)
    assert resp.code == code
    await asyncio.sleep(0.1)
    assert client.received == []


async def test_wrong_methods_paths_and_garbage_do_not_hurt(bs, client):
    bs.add_device(make_cfg())
    uri = bs_uri(bs)
    assert (await client.request(uri, Code.GET, "/bs")).code == Code.METHOD_NOT_ALLOWED
    assert (await client.request(uri, Code.PUT, "/bs")).code == Code.METHOD_NOT_ALLOWED
    assert (await client.request(uri, Code.POST, "/rd?ep=dev1")).code == Code.NOT_FOUND
    assert (await client.request(uri, Code.GET, "/0/1")).code == Code.NOT_FOUND
    assert bs.coap_address is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for junk in (b"", b"\x00", b"\xff" * 40, b"\x40\x02\x00\x01\xff", b"\x44\x02\x00\x01\xb2bs\x0fzz" + os.urandom(30)):
            s.sendto(junk, ("127.0.0.1", bs.coap_address[1]))
    await asyncio.sleep(0.1)
    resp = await client.bootstrap_request(uri, "ep=dev1")
    assert resp.code == Code.CHANGED
    await bs.wait_for_event(EventKind.FINISHED, "dev1", timeout=5)


async def test_finish_not_acceptable_is_recorded_as_failure(bs, client):
    client.finish_code = Code.NOT_ACCEPTABLE
    bs.add_device(make_cfg())
    await client.bootstrap_request(bs_uri(bs), "ep=dev1")
    ev = await bs.wait_for_event(EventKind.FAILED, "dev1", timeout=5)
    assert "inconsistent" in ev.detail["reason"]
    last = ev.detail["steps"][-1]
    assert (last["op"], last["path"], last["code"], last["ok"]) == ("finish", "/bs", "4.06", False)
    assert not bs.result("dev1").ok


async def test_silent_client_times_out_bounded(client):
    server = BootstrapServer(DeviceStore(None), policy=BootstrapPolicy(request_timeout=0.4, start_delay=0.0))
    await server.start()
    try:
        client.delay["DELETE"] = 3.0  # answers far too late
        server.add_device(make_cfg())
        await client.bootstrap_request(bs_uri(server), "ep=dev1")
        ev = await server.wait_for_event(EventKind.FAILED, "dev1", timeout=3)
        assert "no response" in ev.detail["reason"]
        assert ev.detail["steps"][0]["code"] == "timeout"
        assert [r.method for r in client.received] == ["DELETE"]  # nothing after the failed step
    finally:
        await server.stop()


async def test_discover_first_and_bootstrap_account_instance_is_not_overwritten(client):
    server = BootstrapServer(DeviceStore(None),
                             policy=BootstrapPolicy(discover=True, request_timeout=2.0, start_delay=0.0))
    await server.start()
    try:
        # The client's Bootstrap-Server Account sits at /0/1 (no ssid), where the config wants its DM account.
        client.discover_links = '</>;lwm2m=1.1,</0/1>,</0/3>;ssid=7,</1/0>;ssid=7,</3/0>'
        cfg = make_cfg()
        server.add_device(cfg)
        await client.bootstrap_request(bs_uri(server), "ep=dev1")
        ev = await server.wait_for_event(EventKind.FINISHED, "dev1", timeout=5)
        first = client.received[0]
        assert (first.method, first.path, first.accept) == ("GET", "/", 40)
        puts = [r.path for r in client.received if r.method == "PUT"]
        # lowest ID used neither by the client's bootstrap account (1) nor by the configuration (0, 1)
        assert "/0/1" not in puts and puts == ["/0/2", "/1/0"]
        got = formats.decode(11542, writes(client)["/0/2"].payload, Path(0, 2), REGISTRY)
        assert got[Path(0, 2, 0)] == cfg.security[1].uri and got[Path(0, 2, 10)] == 101
        assert ev.detail["discovered"][:2] == ["/", "/0/1"]
    finally:
        await server.stop()


def test_parse_discover_links():
    links = parse_discover_links('lwm2m=1.0,</0/0>,</0/1>;ssid=101,</1/0>;ssid=101;uri="coap://x"')
    assert links == [("/0/0", {}), ("/0/1", {"ssid": "101"}), ("/1/0", {"ssid": "101", "uri": "coap://x"})]


async def test_per_device_delete_paths_override_default(bs, client):
    cfg = make_cfg()
    cfg.delete_paths = ["/"]
    bs.add_device(cfg)
    await client.bootstrap_request(bs_uri(bs), "ep=dev1")
    await bs.wait_for_event(EventKind.FINISHED, "dev1", timeout=5)
    assert client.ops()[0] == ("DELETE", "/")
    assert [m for m, _ in client.ops()].count("DELETE") == 1


async def test_server_initiated_bootstrap(bs, client):
    cfg = make_cfg()
    bs.add_device(cfg)
    result = await bs.bootstrap_client("dev1", client.uri, content_format=112)
    assert result.ok, result.reason
    assert client.ops() == [("DELETE", "/0"), ("DELETE", "/1"), ("PUT", "/0/1"), ("PUT", "/1/0"), ("POST", "/bs")]
    assert {r.content_format for r in writes(client).values()} == {112}
    req = (await bs.wait_for_event(EventKind.REQUESTED, "dev1", timeout=1))
    assert req.detail["trigger"] == "server" and req.detail["address"] == client.uri
    with pytest.raises(UnknownDevice):
        await bs.bootstrap_client("nobody", client.uri)
    with pytest.raises(ValueError):
        await bs.bootstrap_client("dev1", "http://127.0.0.1:1")


async def test_server_initiated_uses_last_known_address(bs, client):
    bs.add_device(make_cfg())
    await client.bootstrap_request(bs_uri(bs), "ep=dev1")
    await bs.wait_for_event(EventKind.FINISHED, "dev1", timeout=5)
    client.received.clear()
    result = await bs.bootstrap_client("dev1")
    assert result.ok and client.ops()[-1] == ("POST", "/bs")


class SkipFinish(BootstrapServer):
    """Fault injection through an override: never sends Bootstrap-Finish."""

    async def bootstrap_finish(self, target, result):  # type: ignore[override]
        return None


async def test_overridable_steps_allow_fault_injection(client):
    server = SkipFinish(DeviceStore(None), policy=BootstrapPolicy(start_delay=0.0))
    await server.start()
    try:
        server.add_device(make_cfg())
        await client.bootstrap_request(bs_uri(server), "ep=dev1")
        await server.wait_for_event(EventKind.FINISHED, "dev1", timeout=5)
        assert ("POST", "/bs") not in client.ops()
    finally:
        await server.stop()


# ---- provisioning: CSV / JSON / store ------------------------------------------------------------------
CSV_GOOD = """endpoint,server_uri,security_mode,psk_identity,psk_key_hex,short_server_id,lifetime,binding,bootstrap_server_uri,bootstrap_psk_identity,bootstrap_psk_key_hex
dev-a,coaps://127.0.0.1:5684,PSK,a-id,00112233,11,600,U,coaps://127.0.0.1:5784,a-bs,aabb
# a comment line
dev-b,coap://127.0.0.1:5683,,,,12,,,,,
"""


def test_csv_parses_into_device_configs():
    cfgs = parse_csv(CSV_GOOD, "devices.csv")
    a, b = cfgs
    assert a.endpoint == "dev-a" and b.endpoint == "dev-b"
    dm = [s for s in a.security if not s.bootstrap][0]
    assert (dm.instance_id, dm.uri, dm.mode, dm.psk_identity, dm.psk_key, dm.short_server_id) == \
        (1, "coaps://127.0.0.1:5684", SecurityMode.PSK, b"a-id", bytes.fromhex("00112233"), 11)
    bsa = [s for s in a.security if s.bootstrap][0]
    assert (bsa.instance_id, bsa.psk_identity, bsa.psk_key, bsa.mode) == (0, b"a-bs", b"\xaa\xbb", SecurityMode.PSK)
    assert (a.servers[0].short_server_id, a.servers[0].lifetime, a.servers[0].binding) == (11, 600, "U")
    assert b.security[0].mode == SecurityMode.NOSEC and b.servers[0].lifetime == 86400
    assert a.problems() == [] and b.problems() == []


def test_csv_bad_lines_are_all_reported_with_file_and_line(tmp_path):
    text = CSV_GOOD + ("dev-c,coap://127.0.0.1:5683,PSK,c-id,zz,1,,,,,\n"      # line 5: bad hex
                       "dev-d,ftp://example.org,,,,1,,,,,\n"                     # line 6: bad scheme
                       "dev-a,coap://127.0.0.1:5683,,,,1,,,,,\n"                 # line 7: duplicate
                       "dev-e,coap://127.0.0.1:5683,,,,notanumber,,,,,\n"        # line 8
                       "dev-f,coap://x\n")                                       # line 9: short row
    f = tmp_path / "devices.csv"
    f.write_text(text)
    with pytest.raises(ProvisioningError) as ei:
        parse_csv(text, str(f))
    errs = ei.value.errors
    assert [e.split(": ")[0] for e in errs] == [f"{f}:{n}" for n in (5, 6, 7, 8, 9)]
    assert "hexadecimal" in errs[0] and "scheme" in errs[1] and "line 2" in errs[2]


def test_csv_header_problems():
    with pytest.raises(ProvisioningError, match=r"d\.csv:1: unknown column\(s\) colour"):
        parse_csv("endpoint,server_uri,colour\n", "d.csv")
    with pytest.raises(ProvisioningError, match=r"d\.csv:1: missing column\(s\) server_uri"):
        parse_csv("endpoint\nx\n", "d.csv")


def test_json_bad_element_named_by_line():
    good = make_cfg("j1").to_dict()
    bad = make_cfg("j2").to_dict()
    bad["servers"][0]["short_server_id"] = 999   # no matching Security instance
    text = "[\n" + json.dumps(good) + ",\n\n" + json.dumps(bad) + ",\n" + '{"security": []}' + "\n]\n"
    with pytest.raises(ProvisioningError) as ei:
        parse_json(text, "devs.json")
    errs = ei.value.errors
    assert errs[0].startswith("devs.json:4: j2:") and "has no Security instance" in errs[0]
    assert errs[1].startswith("devs.json:5:") and "endpoint" in errs[1]
    with pytest.raises(ProvisioningError, match=r"devs\.json:2: invalid JSON"):
        parse_json("[\n{,]", "devs.json")
    assert [c.endpoint for c in parse_json(json.dumps([good]), "ok.json")] == ["j1"]


async def test_bulk_import_is_all_or_nothing(bs, tmp_path):
    f = tmp_path / "bulk.csv"
    f.write_text(CSV_GOOD + "dev-x,coap://127.0.0.1:5683,PSK,,,1,,,,,\n")  # PSK without identity/key
    with pytest.raises(ProvisioningError) as ei:
        bs.import_file(str(f))
    assert ei.value.errors[0].startswith(f"{f}:5:")
    assert bs.list_devices() == []
    f.write_text(CSV_GOOD)
    assert [c.endpoint for c in bs.import_file(str(f))] == ["dev-a", "dev-b"]
    # importing again without replace collides and changes nothing
    from reference.bootstrap import DeviceExists
    with pytest.raises(DeviceExists):
        bs.import_text(CSV_GOOD.replace("600", "700"), name="again.csv")
    assert bs.get_device("dev-a").servers[0].lifetime == 600
    bs.import_text(CSV_GOOD.replace("600", "700"), name="again.csv", replace=True)
    assert bs.get_device("dev-a").servers[0].lifetime == 700


def test_export_round_trip(tmp_path):
    server = BootstrapServer(DeviceStore(tmp_path / "state"))
    try:
        cfg = make_cfg(bs_identity=b"dev1-bs", bs_key=b"\x01\x02\x03")
        server.add_device(cfg)
        out = tmp_path / "dev1.json"
        server.export_device("dev1", str(out))
        loaded = DeviceConfig.from_file(out)
        assert loaded == cfg
        assert loaded.to_values() == cfg.to_values()
        with pytest.raises(UnknownDevice):
            server.export_device("nobody", str(tmp_path / "x.json"))
    finally:
        server.store.close()


async def test_state_survives_restart(tmp_path, client):
    state = tmp_path / "state"
    svc = BootstrapService(state_dir=state, http_port=None)
    await svc.start()
    assert svc.server is not None
    svc.server.add_device(make_cfg())
    svc.server.policy.start_delay = 0.0
    await client.bootstrap_request(svc.coap_uri, "ep=dev1")
    await svc.server.wait_for_event(EventKind.FINISHED, "dev1", timeout=5)
    last = svc.server.store.last_seq()
    await svc.stop()

    svc2 = BootstrapService(state_dir=state, http_port=None)
    await svc2.start()
    try:
        assert svc2.server is not None
        assert svc2.server.get_device("dev1") == make_cfg()
        assert [e.kind for e in svc2.server.events_since(0)][-1] == "bootstrap-finished"
        assert svc2.server.store.get_address("dev1") == client.uri
        svc2.server.remove_device("dev1")
        assert svc2.server.store.last_seq() == last + 1
    finally:
        await svc2.stop()


def test_add_device_rejects_inconsistent_unless_told():
    server = BootstrapServer(DeviceStore(None))
    try:
        cfg = make_cfg()
        cfg.servers[0].short_server_id = 5
        with pytest.raises(ProvisioningError, match="has no Server instance"):
            server.add_device(cfg)
        server.add_device(cfg, check=False)  # deliberately broken, e.g. to provoke 4.06 at Finish
        assert server.get_device("dev1") == cfg
    finally:
        server.store.close()


# ---- HTTP API ------------------------------------------------------------------------------------------
async def test_http_api(tmp_path, client):
    svc = BootstrapService(state_dir=tmp_path / "s", http_port=0,
                           policy=BootstrapPolicy(start_delay=0.0, request_timeout=2.0))
    await svc.start()
    base = svc.http_url
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            async with http.get(f"{base}/api/health") as r:
                assert (await r.json())["coap"][1] == svc.coap[1]
            async with http.post(f"{base}/api/devices", json=make_cfg().to_dict()) as r:
                assert r.status == 201
            async with http.post(f"{base}/api/devices", json=make_cfg().to_dict()) as r:
                assert r.status == 409
            broken = make_cfg("bad").to_dict()
            broken["servers"] = []
            async with http.post(f"{base}/api/devices", json=broken) as r:
                assert r.status == 400 and any("no Server instance" in e for e in (await r.json())["errors"])
            async with http.post(f"{base}/api/devices", data=b"{nope") as r:
                assert r.status == 400
            async with http.get(f"{base}/api/devices/dev1") as r:
                assert DeviceConfig.from_dict(await r.json()) == make_cfg()
            async with http.get(f"{base}/api/devices/nobody") as r:
                assert r.status == 404
            # bulk import: one bad line -> 400 naming the line, nothing imported
            bad_csv = CSV_GOOD + "dev-z,coap://127.0.0.1:1,,,,0,,,,,\n"
            async with http.post(f"{base}/api/devices/import?name=up.csv", data=bad_csv,
                                 headers={"Content-Type": "text/csv"}) as r:
                body = await r.json()
                assert r.status == 400 and body["errors"][0].startswith("up.csv:5:")
            async with http.get(f"{base}/api/devices") as r:
                assert [d["endpoint"] for d in await r.json()] == ["dev1"]
            async with http.post(f"{base}/api/devices/import", data=CSV_GOOD,
                                 headers={"Content-Type": "text/csv"}) as r:
                assert (await r.json()) == {"imported": 2, "endpoints": ["dev-a", "dev-b"]}
            async with http.post(f"{base}/api/devices/import",
                                 json=[make_cfg("dev-j").to_dict()]) as r:
                assert r.status == 200
            async with http.get(f"{base}/api/devices/dev-a/export") as r:
                assert "attachment" in r.headers["Content-Disposition"]
                exported = tmp_path / "dev-a.json"
                exported.write_bytes(await r.read())
            assert DeviceConfig.from_file(exported) == parse_csv(CSV_GOOD)[0]
            async with http.delete(f"{base}/api/devices/dev-b") as r:
                assert r.status == 204
            async with http.delete(f"{base}/api/devices/dev-b") as r:
                assert r.status == 404

            # long poll: wait for events after `last`, then trigger a server-initiated bootstrap
            async with http.get(f"{base}/api/events?since=0&timeout=0") as r:
                last = (await r.json())["last"]
            poll = asyncio.ensure_future(http.get(f"{base}/api/events?since={last}&timeout=5&endpoint=dev1"))
            await asyncio.sleep(0.1)
            assert not poll.done()
            async with http.post(f"{base}/api/bootstrap/dev1", json={"address": client.uri}) as r:
                assert r.status == 202 and (await r.json())["trigger"] == "server"
            async with await poll as r:
                evs = (await r.json())["events"]
                assert evs[0]["kind"] == "bootstrap-requested" and evs[0]["seq"] > last
            await svc.server.wait_for_event(EventKind.FINISHED, "dev1", since=last, timeout=5)
            async with http.get(f"{base}/api/bootstrap/dev1") as r:
                assert (await r.json())["state"] == "finished"
            async with http.post(f"{base}/api/bootstrap/nobody", json={"address": client.uri}) as r:
                assert r.status == 404
            async with http.post(f"{base}/api/bootstrap/dev-a", json={}) as r:
                assert r.status == 400  # no known address
            async with http.get(f"{base}/api/events?since=x") as r:
                assert r.status == 400
        assert client.ops()[-1] == ("POST", "/bs")
    finally:
        await svc.stop()


# ---- CLI -------------------------------------------------------------------------------------------------
def _cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reference.bootstrap.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_state_dir_commands(tmp_path):
    state = str(tmp_path / "st")
    f = tmp_path / "d.csv"
    f.write_text(CSV_GOOD + "bad,coap://x,,,,99999,,,,,\n")
    r = _cli("--state-dir", state, "import", str(f))
    assert r.returncode == 1 and f"{f}:5:" in r.stderr
    assert _cli("--state-dir", state, "list").stdout == ""
    f.write_text(CSV_GOOD)
    assert _cli("--state-dir", state, "import", str(f)).returncode == 0
    r = _cli("--state-dir", state, "add", "--endpoint", "dev-c", "--server-uri", "coap://127.0.0.1:5683",
             "--short-server-id", "3", "--lifetime", "120")
    assert r.returncode == 0, r.stderr
    assert [ln.split("\t")[0] for ln in _cli("--state-dir", state, "list").stdout.splitlines()] == \
        ["dev-a", "dev-b", "dev-c"]
    out = tmp_path / "c.json"
    assert _cli("--state-dir", state, "export", "dev-c", "-o", str(out)).returncode == 0
    c = DeviceConfig.from_file(out)
    assert c.servers[0].lifetime == 120 and c.security[0].short_server_id == 3
    assert _cli("--state-dir", state, "remove", "dev-c").returncode == 0
    assert _cli("--state-dir", state, "remove", "dev-c").returncode == 1
    assert _cli("--state-dir", state, "trigger", "dev-a").returncode == 1  # needs --url


async def test_cli_serve_ready_line_and_remote_commands(tmp_path, client):
    cfgfile = tmp_path / "devs.json"
    cfgfile.write_text(json.dumps([make_cfg().to_dict()]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reference.bootstrap.cli", "--coap-port", "0", "--http-port", "0",
        "--state-dir", str(tmp_path / "st"), "--config", str(cfgfile), cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        parts = line.split()
        assert parts[:2] == ["lwm2m-bootstrap-server", "READY"] and parts[3] == "coaps=-", line
        coap = parts[2].removeprefix("coap=")
        http = "http://" + parts[4].removeprefix("http=")
        resp = await client.bootstrap_request(f"coap://{coap}", "ep=dev1")
        assert resp.code == Code.CHANGED
        await asyncio.wait_for(client.finished.wait(), 5)
        r = await asyncio.to_thread(_cli, "--url", http, "list")
        assert r.stdout.split("\t")[0] == "dev1"
        r = await asyncio.to_thread(_cli, "--url", http, "trigger", "dev1", "--wait")
        assert r.returncode == 0 and json.loads(r.stdout)["state"] == "finished", r.stdout + r.stderr
        r = await asyncio.to_thread(_cli, "--url", http, "events", "--endpoint", "dev1")
        kinds = [json.loads(ln)["kind"] for ln in r.stdout.splitlines()]
        assert kinds.count("bootstrap-finished") == 2
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0


# ---- CoAPS (DTLS-PSK) port -------------------------------------------------------------------------------
BS_KEY = bytes.fromhex("0f0e0d0c0b0a09080706050403020100")


@pytest.fixture
async def secure_svc():
    svc = BootstrapService(coaps_port=0, http_port=None,
                           policy=BootstrapPolicy(start_delay=0.0, request_timeout=3.0))
    await svc.start()
    assert svc.server is not None
    svc.server.add_device(make_cfg("dev1", bs_identity=b"dev1-bs", bs_key=BS_KEY))
    svc.server.add_device(make_cfg("dev2", bs_identity=b"dev2-bs", bs_key=BS_KEY))
    yield svc
    await svc.stop()


async def _dtls_client(svc: BootstrapService, identity: bytes, key: bytes):
    from reference.security import DtlsClientBridge
    assert svc.coaps is not None
    bridge = DtlsClientBridge(svc.coaps, identity, key, handshake_timeout=3.0)
    await bridge.connect()
    host, port = bridge.local_address
    return bridge, f"coap://{host}:{port}"


async def test_coaps_bootstrap_with_the_endpoints_psk_identity(secure_svc, client):
    bridge, uri = await _dtls_client(secure_svc, b"dev1-bs", BS_KEY)
    try:
        resp = await client.bootstrap_request(uri, "ep=dev1")
        assert resp.code == Code.CHANGED
        await secure_svc.server.wait_for_event(EventKind.FINISHED, "dev1", timeout=5)
        assert client.ops() == [("DELETE", "/0"), ("DELETE", "/1"), ("PUT", "/0/1"), ("PUT", "/1/0"),
                                ("POST", "/bs")]
    finally:
        await bridge.close()


async def test_coaps_identity_of_another_endpoint_is_forbidden(secure_svc, client):
    bridge, uri = await _dtls_client(secure_svc, b"dev2-bs", BS_KEY)
    try:
        resp = await client.bootstrap_request(uri, "ep=dev1")
        assert resp.code == Code.FORBIDDEN
        ev = await secure_svc.server.wait_for_event(EventKind.REJECTED, "dev1", timeout=2)
        assert ev.detail["code"] == "4.03"
        await asyncio.sleep(0.2)
        assert client.received == []
    finally:
        await bridge.close()


async def test_secured_account_over_plain_coap_is_forbidden(secure_svc, client):
    resp = await client.bootstrap_request(secure_svc.coap_uri, "ep=dev1")
    assert resp.code == Code.FORBIDDEN
    await asyncio.sleep(0.2)
    assert client.received == []


async def test_coaps_unknown_identity_gets_no_session(secure_svc):
    from reference.security import DtlsClientBridge, DtlsHandshakeError
    assert secure_svc.coaps is not None
    bridge = DtlsClientBridge(secure_svc.coaps, b"nobody", BS_KEY, handshake_timeout=3.0)
    try:
        with pytest.raises(DtlsHandshakeError):
            await bridge.connect()
    finally:
        await bridge.close()
