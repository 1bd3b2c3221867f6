"""Tests of the reference LwM2M server (reference.server) over loopback sockets.

Registration requests come from aiocoap (an independent CoAP stack) or hand-built datagrams;
Device Management targets a small fake LwM2M client (``FakeDevice``) built on the project's CoAP
endpoint, which answers with payloads encoded by reference.formats.
"""
from __future__ import annotations

import asyncio
import json
import os
import time

import aiocoap
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from reference import formats
from reference.coap import CoapEndpoint, TransmissionParameters
from reference.model.path import Path
from reference.model.registry import ObjectRegistry
from reference.model.types import ContentFormat
from reference.server import (
    DmError,
    EventKind,
    LwM2MServer,
    PskFileError,
    PskTable,
    RegistrationInterface,
)
from reference.server.links import LinkFormatError, parse_links, validate_registration_links
from reference.server.registration import Registration

FAST = TransmissionParameters(ack_timeout=0.2, ack_random_factor=1.0, max_retransmit=2,
                              exchange_lifetime_override=3.0)
LINKS = b"</1/0>,</3/0>,</5/0>"
REGISTRY = ObjectRegistry.default()


# ---- helpers -----------------------------------------------------------------------------------
class FakeDevice:
    """A minimal LwM2M client: /1/0 and /3/0 values, answering Read/Write/Execute/Create/Delete/
    Discover/Write-Attributes/Observe with reference.formats payloads (default TLV)."""

    def __init__(self) -> None:
        self.values: dict[Path, object] = {
            Path(1, 0, 0): 1, Path(1, 0, 1): 300, Path(1, 0, 7): "U",
            Path(3, 0, 0): "ACME", Path(3, 0, 1): "Model-7", Path(3, 0, 9): 90,
        }
        self.executed: list[tuple[str, bytes]] = []
        self.attributes: list[tuple[str, tuple[str, ...]]] = []
        self.observers: dict[Path, tuple[tuple, bytes]] = {}
        self.seq = 1
        self.ep: CoapEndpoint | None = None
        self.notify_mid = 0x7000

    async def start(self) -> "FakeDevice":
        self.ep = await CoapEndpoint.create("127.0.0.1", 0, self.handle, params=FAST)
        return self

    def close(self) -> None:
        if self.ep is not None:
            self.ep.close()

    async def register(self, server_addr: tuple, ep: str, lt: int = 60, extra: tuple = ()) -> Message:
        req = Message(code=Code.POST, uri_path=("rd",),
                      uri_query=(f"ep={ep}", f"lt={lt}", "lwm2m=1.1", "b=U", *extra),
                      payload=LINKS, content_format=40)
        return await self.ep.request(req, server_addr, timeout=3)  # type: ignore[union-attr]

    async def handle(self, req: Message, remote: tuple) -> Message:
        try:
            path = Path.parse(req.opt.uri_path)
        except ValueError:
            return Message(code=Code.NOT_FOUND)
        code = req.code
        if code == Code.GET:
            if req.opt.accept == 40:
                links = ",".join(f"<{p}>" for p in sorted(self.values) if path.contains(p))
                return Message(code=Code.CONTENT, payload=f"<{path}>,{links}".encode(),
                               content_format=40)
            vals = {p: v for p, v in self.values.items() if path.contains(p)}
            if not vals:
                return Message(code=Code.NOT_FOUND)
            fmt = req.opt.accept if req.opt.accept is not None else int(ContentFormat.LWM2M_TLV)
            try:
                payload = formats.encode(int(fmt), vals, path, REGISTRY)
            except formats.FormatError:
                return Message(code=Code.NOT_ACCEPTABLE)
            resp = Message(code=Code.CONTENT, payload=payload, content_format=int(fmt))
            if req.opt.observe == 0:
                self.observers[path] = (remote, req.token)
                resp.opt.observe = self.seq
            elif req.opt.observe == 1:
                self.observers.pop(path, None)
            return resp
        if code == Code.PUT:
            if req.opt.uri_query:
                self.attributes.append((str(path), req.opt.uri_query))
                return Message(code=Code.CHANGED)
            try:
                vals = formats.decode(int(req.opt.content_format), req.payload, path, REGISTRY)
            except formats.FormatError:
                return Message(code=Code.BAD_REQUEST)
            self.values.update(vals)
            return Message(code=Code.CHANGED)
        if code == Code.POST:
            if path.depth == 3:
                self.executed.append((str(path), req.payload))
                return Message(code=Code.CHANGED)
            vals = formats.decode(int(req.opt.content_format), req.payload, path, REGISTRY)
            self.values.update(vals)
            if path.depth == 1:
                iid = next(iter(vals)).instance_id
                return Message(code=Code.CREATED, location_path=(str(path.object_id), str(iid)))
            return Message(code=Code.CHANGED)
        if code == Code.DELETE:
            gone = [p for p in self.values if path.contains(p)]
            for p in gone:
                del self.values[p]
            return Message(code=Code.DELETED if gone else Code.NOT_FOUND)
        return Message(code=Code.METHOD_NOT_ALLOWED)

    def notify(self, path: Path, value: object, confirmable: bool = True) -> None:
        """Change a value and send a notification to the observer of ``path``."""
        self.values[path] = value
        remote, token = self.observers[path]
        self.seq += 1
        self.notify_mid += 1
        m = Message(code=Code.CONTENT, observe=self.seq, content_format=int(ContentFormat.LWM2M_TLV),
                    payload=formats.encode(ContentFormat.LWM2M_TLV, {path: value}, path, REGISTRY))
        m.mtype = Type.CON if confirmable else Type.NON
        m.mid, m.token = self.notify_mid, token
        self.ep.send_raw(m.encode(), remote)  # type: ignore[union-attr]


async def make_server(tmp_path=None, **kw) -> LwM2MServer:
    kw.setdefault("coap_port", 0)
    kw.setdefault("params", FAST)
    kw.setdefault("expiry_interval", 0.1)
    kw.setdefault("registry", REGISTRY)
    s = LwM2MServer(state_dir=tmp_path, **kw)
    await s.start()
    return s


@pytest.fixture
async def server(tmp_path):
    s = await make_server(tmp_path / "state")
    yield s
    await s.stop()


@pytest.fixture
async def coap():
    ctx = await aiocoap.Context.create_client_context()
    yield ctx
    await ctx.shutdown()


@pytest.fixture
async def device():
    d = await FakeDevice().start()
    yield d
    d.close()


def uri(server: LwM2MServer, path: str) -> str:
    host, port = server.coap_address
    return f"coap://{host}:{port}{path}"


async def post(ctx, server: LwM2MServer, path: str, payload: bytes = LINKS, cf: int | None = 40,
               code: Code = Code.POST) -> Message:
    m = Message(code=code, uri=uri(server, path), payload=payload)
    if cf is not None:
        m.opt.content_format = cf
    return await asyncio.wait_for(ctx.request(m).response, 5)


async def register(ctx, server: LwM2MServer, ep: str = "dev-1", lt: int = 60, **kw) -> Message:
    return await post(ctx, server, f"/rd?ep={ep}&lt={lt}&lwm2m=1.1&b=U", **kw)


# ---- link validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "</1/0>,</3/0>", "</1>", '</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>', "</3/0>;ver=1.1,</5>",
    '</>;rt="oma.lwm2m";ct=11543,</1/0>', "</65534/0>",
])
def test_valid_registration_links(text: str) -> None:
    validate_registration_links(text)


@pytest.mark.parametrize("text", [
    "", "garbage", "</1/0>,", "<1/0>", "</1/0>;", "</a/0>", "</1/0/1/2>", "</65535/0>",
    "</1/0> ,</3/0>", '</x>;rt="oma.lwm2m",</1/0>', "</01/0>",
    '</a>;rt="oma.lwm2m",</b>;rt="oma.lwm2m"',
])
def test_invalid_registration_links(text: str) -> None:
    with pytest.raises(LinkFormatError):
        validate_registration_links(text)


def test_parse_links() -> None:
    assert parse_links('</3/0>;ver="1.1";obs,</5>') == [
        {"uri": "/3/0", "attributes": {"ver": "1.1", "obs": None}}, {"uri": "/5", "attributes": {}}]


# ---- Registration interface ------------------------------------------------------------------------
async def test_register_update_deregister(server: LwM2MServer, coap) -> None:
    sub = server.events.subscribe()
    resp = await register(coap, server, "dev-1", lt=60)
    assert resp.code == Code.CREATED
    assert resp.opt.location_path[0] == "rd" and len(resp.opt.location_path) == 2
    loc = "/" + "/".join(resp.opt.location_path)
    reg = server.get_client("dev-1")
    assert reg is not None and reg.location_path == loc and reg.lifetime == 60
    assert reg.lwm2m == "1.1" and reg.binding == "U" and reg.links == LINKS.decode()
    ev = await sub.get(1)
    assert ev.kind == EventKind.REGISTERED and ev.endpoint == "dev-1"
    assert ev.data["location"] == loc and ev.data["object_links"] == LINKS.decode()

    resp = await post(coap, server, f"{loc}?lt=120&b=UQ", payload=b"</1/0>,</3/0>,</4/0>")
    assert resp.code == Code.CHANGED
    assert reg.lifetime == 120 and reg.binding == "UQ" and reg.queue and "</4/0>" in reg.links
    ev = await sub.get(1)
    assert ev.kind == EventKind.UPDATED and ev.data["changed"]["lifetime"] == 120

    resp = await post(coap, server, loc, payload=b"", cf=None)  # empty Update: refresh only
    assert resp.code == Code.CHANGED
    assert (await sub.get(1)).data["changed"] == {}

    resp = await post(coap, server, loc, payload=b"", cf=None, code=Code.DELETE)
    assert resp.code == Code.DELETED
    assert server.get_client("dev-1") is None
    assert (await sub.get(1)).kind == EventKind.DEREGISTERED
    for code in (Code.POST, Code.DELETE):
        assert (await post(coap, server, loc, b"", None, code)).code == Code.NOT_FOUND
    sub.close()


@pytest.mark.parametrize("query,payload,cf,expected", [
    ("lt=60&lwm2m=1.1", LINKS, 40, Code.BAD_REQUEST),                # missing ep
    ("ep=&lt=60&lwm2m=1.1", LINKS, 40, Code.BAD_REQUEST),            # empty ep
    ("ep=a&lt=abc&lwm2m=1.1", LINKS, 40, Code.BAD_REQUEST),          # non-numeric lifetime
    ("ep=a&lt=-5&lwm2m=1.1", LINKS, 40, Code.BAD_REQUEST),
    ("ep=a&lt=0&lwm2m=1.1", LINKS, 40, Code.BAD_REQUEST),
    ("ep=a&lwm2m=1.1&b=X", LINKS, 40, Code.BAD_REQUEST),             # unknown binding letter
    ("ep=a&lwm2m=1.1&b=UU", LINKS, 40, Code.BAD_REQUEST),
    ("ep=a&lwm2m=1", LINKS, 40, Code.BAD_REQUEST),                   # malformed version
    ("ep=a&lwm2m=v1.1", LINKS, 40, Code.BAD_REQUEST),
    ("ep=a&lt=60", LINKS, 40, Code.BAD_REQUEST),                     # missing version
    ("ep=a&lwm2m=2.0", LINKS, 40, Code.PRECONDITION_FAILED),        # unsupported version
    ("ep=a&lwm2m=1.1", b"</1/0>,garbage", 40, Code.BAD_REQUEST),     # malformed links
    ("ep=a&lwm2m=1.1", b"", None, Code.BAD_REQUEST),                 # no object list
    ("ep=a&lwm2m=1.1", LINKS, 0, Code.BAD_REQUEST),                  # not link-format
    ("ep=a&lwm2m=1.1", b"\xff\xfe", 40, Code.BAD_REQUEST),           # not UTF-8
    ("ep=a&lwm2m=1.1&foo=1", LINKS, 40, Code.BAD_REQUEST),           # unknown parameter
    ("ep=a&ep=b&lwm2m=1.1", LINKS, 40, Code.BAD_REQUEST),            # repeated parameter
    ("ep=a&lwm2m=1.1&Q=1", LINKS, 40, Code.BAD_REQUEST),             # Q takes no value
    ("ep=a&lwm2m=1.1&sms=abc", LINKS, 40, Code.BAD_REQUEST),
])
async def test_register_rejections(server: LwM2MServer, coap, query, payload, cf, expected) -> None:
    resp = await post(coap, server, f"/rd?{query}", payload, cf)
    assert resp.code == expected, resp.payload
    assert resp.payload  # diagnostic payload (RFC 7252 §5.5.2)
    assert len(server.store) == 0


async def test_register_optional_params(server: LwM2MServer, coap) -> None:
    resp = await post(coap, server, "/rd?ep=q1&lwm2m=1.0&sms=%2B4912345&Q&b=US", LINKS, None)
    assert resp.code == Code.CREATED
    reg = server.get_client("q1")
    assert reg.lifetime == 86400 and reg.sms == "+4912345" and reg.queue and reg.binding == "US"


async def test_update_rejections(server: LwM2MServer, coap) -> None:
    loc = "/" + "/".join((await register(coap, server, "u1")).opt.location_path)
    for q in ("lt=abc", "ep=u1", "lwm2m=1.1", "b=Z", "x=1"):
        resp = await post(coap, server, f"{loc}?{q}", b"", None)
        assert resp.code == Code.BAD_REQUEST, q
    assert (await post(coap, server, loc, b"not links", 40)).code == Code.BAD_REQUEST
    assert (await post(coap, server, "/rd/doesnotexist?lt=5", b"", None)).code == Code.NOT_FOUND
    assert server.get_client("u1").lifetime == 60


async def test_wrong_methods_and_paths(server: LwM2MServer, coap) -> None:
    loc = "/" + "/".join((await register(coap, server, "m1")).opt.location_path)
    assert (await post(coap, server, "/rd", b"", None, Code.GET)).code == Code.METHOD_NOT_ALLOWED
    assert (await post(coap, server, "/rd", b"", None, Code.DELETE)).code == Code.METHOD_NOT_ALLOWED
    assert (await post(coap, server, loc, b"", None, Code.GET)).code == Code.METHOD_NOT_ALLOWED
    assert (await post(coap, server, loc, b"", None, Code.PUT)).code == Code.METHOD_NOT_ALLOWED
    assert (await post(coap, server, "/rd/a/b", b"", None)).code == Code.NOT_FOUND
    assert (await post(coap, server, "/other", b"", None, Code.GET)).code == Code.NOT_FOUND


async def test_register_again_replaces(server: LwM2MServer, coap) -> None:
    loc1 = "/" + "/".join((await register(coap, server, "r1")).opt.location_path)
    sub = server.events.subscribe([EventKind.REGISTERED])
    loc2 = "/" + "/".join((await register(coap, server, "r1", lt=30)).opt.location_path)
    assert loc1 != loc2 and len(server.store) == 1
    assert server.get_client("r1").location_path == loc2
    assert (await sub.get(1)).data["replaced_location"] == loc1
    assert (await post(coap, server, f"{loc1}?lt=5", b"", None)).code == Code.NOT_FOUND
    assert (await post(coap, server, f"{loc2}?lt=5", b"", None)).code == Code.CHANGED


async def test_duplicate_con_register(server: LwM2MServer) -> None:
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[bytes] = asyncio.Queue()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            q.put_nowait(data)
    tr, _ = await loop.create_datagram_endpoint(P, remote_addr=server.coap_address)
    try:
        m = Message(code=Code.POST, uri_path=("rd",), uri_query=("ep=dup", "lwm2m=1.1"),
                    payload=LINKS, content_format=40)
        m.mtype, m.mid, m.token = Type.CON, 4242, b"dupl"
        data = m.encode()
        tr.sendto(data)
        first = await asyncio.wait_for(q.get(), 2)
        tr.sendto(data)
        second = await asyncio.wait_for(q.get(), 2)
        assert first == second  # the same 2.01 with the same Location-Path (RFC 7252 §4.5)
        assert Message.decode(first).code == Code.CREATED
        assert len(server.store) == 1
        # and a malformed datagram on the registration port is rejected without harm
        tr.sendto(b"\x40\x02\x00\x07\xff")
        assert await asyncio.wait_for(q.get(), 2) == b"\x70\x00\x00\x07"
    finally:
        tr.close()


async def test_lifetime_expiry(server: LwM2MServer, coap) -> None:
    sub = server.events.subscribe([EventKind.EXPIRED])
    await register(coap, server, "short", lt=1)
    await register(coap, server, "long", lt=60)
    ev = await sub.get(3)
    assert ev.endpoint == "short" and ev.kind == EventKind.EXPIRED
    assert server.get_client("short") is None and server.get_client("long") is not None


async def test_update_extends_lifetime(server: LwM2MServer, coap) -> None:
    loc = "/" + "/".join((await register(coap, server, "ext", lt=1)).opt.location_path)
    await asyncio.sleep(0.6)
    assert (await post(coap, server, f"{loc}?lt=2", b"", None)).code == Code.CHANGED
    await asyncio.sleep(0.8)
    assert server.get_client("ext") is not None  # would have expired without the Update


async def test_restart_keeps_registrations(tmp_path, coap) -> None:
    state = tmp_path / "state"
    s1 = await make_server(state)
    loc = "/" + "/".join((await register(coap, s1, "persist", lt=300)).opt.location_path)
    await register(coap, s1, "gone", lt=1)
    await s1.stop()
    assert (state / "registrations.sqlite3").exists()
    await asyncio.sleep(1.1)
    s2 = await make_server(state)
    try:
        reg = s2.get_client("persist")
        assert reg is not None and reg.location_path == loc and reg.links == LINKS.decode()
        assert s2.get_client("gone") is None  # expired while the server was down
        assert [e.endpoint for e in s2.events.since(0)] == ["gone"]
        assert (await post(coap, s2, f"{loc}?lt=10", b"", None)).code == Code.CHANGED
    finally:
        await s2.stop()
    s3 = await make_server(state)
    try:
        assert s3.get_client("persist").lifetime == 10  # the Update was persisted too
    finally:
        await s3.stop()


async def test_registration_interface_is_overridable(tmp_path, coap) -> None:
    class Fixed(RegistrationInterface):
        def choose_location(self, endpoint: str) -> str:
            return "fixed-" + endpoint

        def register_response(self, reg: Registration) -> Message:
            return Message(code=Code.CREATED, location_path=("rd", reg.location))
    s = await make_server(None, registration_interface=Fixed)
    try:
        resp = await register(coap, s, "ov")
        assert resp.opt.location_path == ("rd", "fixed-ov")
    finally:
        await s.stop()


# ---- security policy ---------------------------------------------------------------------------
def test_psk_table_files(tmp_path) -> None:
    t = tmp_path / "psk.txt"
    t.write_text("# identity endpoint key\nid-1 dev-1 00112233\n\nid-2 dev-2 aabb  # note\n")
    table = PskTable.from_file(t)
    assert table.key_for(b"id-1") == bytes.fromhex("00112233")
    assert table.endpoint_for(b"id-2") == "dev-2" and table.has_credentials("dev-1")
    j = tmp_path / "psk.json"
    j.write_text(json.dumps({"id-3": {"endpoint": "dev-3", "key": "0102"}}))
    assert PskTable.from_file(j).endpoint_for(b"id-3") == "dev-3"
    j.write_text(json.dumps([{"identity": "id-4", "endpoint": "dev-4", "key": "03"}]))
    assert PskTable.from_file(j).key_for(b"id-4") == b"\x03"
    for bad in ("id dev", "id dev nothex", '{"x": {"endpoint": "e"}}', "[1]", "{"):
        t.write_text(bad)
        with pytest.raises(PskFileError):
            PskTable.from_file(t)
    with pytest.raises(PskFileError):
        PskTable.from_file(tmp_path / "missing")


async def test_nosec_register_of_credentialed_endpoint_forbidden(tmp_path, coap) -> None:
    table = PskTable.from_file(_psk_file(tmp_path))
    s = await make_server(None, psk_table=table)
    try:
        resp = await register(coap, s, "secure-dev")
        assert resp.code == Code.FORBIDDEN
        assert (await register(coap, s, "plain-dev")).code == Code.CREATED
    finally:
        await s.stop()


def _psk_file(tmp_path) -> str:
    p = tmp_path / "psk.txt"
    p.write_text("secure-id secure-dev 000102030405060708090a0b0c0d0e0f\n")
    return str(p)


async def test_dtls_registration_and_dm(tmp_path) -> None:
    from reference.security import DtlsClientBridge

    table = PskTable.from_file(_psk_file(tmp_path))
    s = await make_server(None, psk_table=table, coaps_port=0,
                          dtls_options={"retransmit_min": 0.2, "handshake_timeout": 5})
    dev = await FakeDevice().start()
    key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    bridge = DtlsClientBridge(s.coaps_address, b"secure-id", key, retransmit_min=0.2,
                              handshake_timeout=5)
    try:
        await asyncio.wait_for(bridge.connect(), 6)
        resp = await dev.register(bridge.local_address, "secure-dev")
        assert resp.code == Code.CREATED
        reg = s.get_client("secure-dev")
        assert reg.identity == b"secure-id" and reg.secure
        # DM over the DTLS session, through both bridges
        r = await s.read("secure-dev", "/3/0/0", timeout=3)
        assert r.code_text == "2.05" and r.values == {Path(3, 0, 0): "ACME"}
        # the identity belongs to another endpoint -> 4.03
        resp = await dev.register(bridge.local_address, "other-dev")
        assert resp.code == Code.FORBIDDEN
        # an Update of the secure registration over NoSec -> 4.03
        m = Message(code=Code.POST, uri_path=("rd", reg.location), uri_query=("lt=5",))
        assert (await dev.ep.request(m, s.coap_address, timeout=3)).code == Code.FORBIDDEN
    finally:
        await bridge.close()
        dev.close()
        await s.stop()


# ---- Device Management through the Python API ------------------------------------------------------
async def test_dm_operations(server: LwM2MServer, device: FakeDevice) -> None:
    assert (await device.register(server.coap_address, "dm-1")).code == Code.CREATED
    r = await server.read("dm-1", "/3/0/0")
    assert r.code_text == "2.05" and r.content_format == ContentFormat.LWM2M_TLV
    assert r.values == {Path(3, 0, 0): "ACME"} and r.payload
    j = r.to_json()
    assert j["values"] == {"/3/0/0": "ACME"} and j["payload_hex"] == r.payload.hex()

    r = await server.read("dm-1", "/3/0", accept=ContentFormat.SENML_JSON)
    assert r.content_format == ContentFormat.SENML_JSON and r.values[Path(3, 0, 9)] == 90

    r = await server.write("dm-1", "/1/0/1", {"/1/0/1": 120})
    assert r.code_text == "2.04" and device.values[Path(1, 0, 1)] == 120
    r = await server.write("dm-1", "/1/0", {Path(1, 0, 1): 77}, replace=False,
                           fmt=ContentFormat.SENML_JSON)
    assert r.code_text == "2.04" and device.values[Path(1, 0, 1)] == 77

    r = await server.execute("dm-1", "/3/0/4", "0='now'")
    assert r.code_text == "2.04" and device.executed == [("/3/0/4", b"0='now'")]

    r = await server.create("dm-1", "/1", {"/1/5/0": 9, "/1/5/1": 60})
    assert r.code_text == "2.01" and r.location == "/1/5" and device.values[Path(1, 5, 0)] == 9
    r = await server.delete("dm-1", "/1/5")
    assert r.code_text == "2.02" and Path(1, 5, 0) not in device.values

    r = await server.discover("dm-1", "/3/0")
    assert r.content_format == 40 and {"uri": "/3/0/9", "attributes": {}} in r.links

    r = await server.write_attributes("dm-1", "/3/0/9", {"pmin": 10, "pmax": 60, "gt": 1.5})
    assert r.code_text == "2.04" and device.attributes == [("/3/0/9", ("pmin=10", "pmax=60", "gt=1.5"))]

    r = await server.read("dm-1", "/3/0/5")
    assert r.code_text == "4.04" and not r.success and r.values is None

    with pytest.raises(DmError) as e:
        await server.read("nobody", "/3/0/0")
    assert e.value.status == 404
    with pytest.raises(DmError) as e:
        await server.read("dm-1", "/3/x")
    assert e.value.status == 400
    with pytest.raises(DmError):
        await server.write_attributes("dm-1", "/3/0/9", {"bogus": 1})


async def test_dm_decode_error_is_reported(server: LwM2MServer, device: FakeDevice) -> None:
    await device.register(server.coap_address, "dm-2")

    async def broken(req: Message, remote: tuple) -> Message:
        return Message(code=Code.CONTENT, payload=b"\xff\xff", content_format=int(ContentFormat.LWM2M_TLV))
    device.ep.handler = broken
    r = await server.read("dm-2", "/3/0/0")
    assert r.code_text == "2.05" and r.values is None and r.decode_error
    assert r.payload == b"\xff\xff"


async def test_dm_timeout(server: LwM2MServer, device: FakeDevice) -> None:
    await device.register(server.coap_address, "dm-3")
    device.close()  # the client went away
    with pytest.raises(DmError) as e:
        await server.read("dm-3", "/3/0/0")
    assert e.value.status in (502, 504)


async def test_observe_notifications_and_cancel(server: LwM2MServer, device: FakeDevice) -> None:
    await device.register(server.coap_address, "ob-1")
    events = server.events.subscribe([EventKind.NOTIFICATION, EventKind.OBSERVATION_ENDED])
    obs, first = await server.observe("ob-1", "/3/0/9")
    assert obs is not None and first.values == {Path(3, 0, 9): 90} and first.observe is not None
    device.notify(Path(3, 0, 9), 80)
    n = await obs.next(2)
    assert n.values == {Path(3, 0, 9): 80}
    ev = await events.get(2)
    assert ev.kind == EventKind.NOTIFICATION and ev.data["observation"] == obs.id
    assert ev.data["values"] == {"/3/0/9": 80}
    device.notify(Path(3, 0, 9), 70, confirmable=False)
    assert (await obs.next(2)).values == {Path(3, 0, 9): 70}
    assert server.find_observation("ob-1", "/3/0/9") is obs
    assert (await events.get(2)).data["values"] == {"/3/0/9": 70}
    r = await server.cancel_observe(obs)
    assert r is not None and r.code_text == "2.05" and Path(3, 0, 9) not in device.observers
    assert (await events.get(2)).kind == EventKind.OBSERVATION_ENDED
    assert obs.id not in server.observations and not obs.active


async def test_observations_end_with_registration(server: LwM2MServer, device: FakeDevice, coap) -> None:
    resp = await device.register(server.coap_address, "ob-2")
    obs, _ = await server.observe("ob-2", "/3/0/9")
    loc = "/".join(resp.opt.location_path)
    m = Message(code=Code.DELETE, uri_path=tuple(loc.split("/")))
    assert (await device.ep.request(m, server.coap_address, timeout=2)).code == Code.DELETED
    assert not obs.active and not server.observations


async def test_event_history_since(server: LwM2MServer, coap) -> None:
    for i in range(3):
        await register(coap, server, f"h{i}")
    evs = server.events.since(0)
    assert [e.seq for e in evs] == [1, 2, 3] and [e.endpoint for e in evs] == ["h0", "h1", "h2"]
    assert [e.endpoint for e in server.events.since(2)] == ["h2"]
    t0 = time.monotonic()
    assert await server.events.wait_since(3, 0.2) == []
    assert time.monotonic() - t0 >= 0.15
    waiter = asyncio.ensure_future(server.events.wait_since(3, 3))
    await register(coap, server, "h3")
    assert [e.endpoint for e in await waiter] == ["h3"]


def test_registration_memory_is_compact() -> None:
    reg = Registration("ep", "0011223344", 60, "1.1", "U", None, False, "</1/0>", "127.0.0.1",
                       5683, 1.0, 1.0, 61.0)
    assert not hasattr(reg, "__dict__")
    assert Registration.from_row(reg.row()).to_dict() == reg.to_dict()


_ = os  # tmp paths come from pytest


async def test_store_shards_and_reshard(tmp_path) -> None:
    from reference.server.store import RegistrationStore

    path = tmp_path / "s" / "registrations.sqlite3"
    store = RegistrationStore(path, shards=3)
    await store.open()
    regs = [Registration(f"e{i}", f"loc{i}", 60, "1.1", "U", None, False, "</1/0>", "127.0.0.1",
                         5000 + i, 1.0, 1.0, time.time() + 60) for i in range(12)]
    await asyncio.gather(*(store.put(r) for r in regs))
    newer = Registration("e0", "loc-new", 30, "1.1", "U", None, False, "</3/0>", "127.0.0.1",
                         6000, 2.0, 2.0, time.time() + 30)
    await store.put(newer, regs[0])          # re-registration across shards
    await store.delete(regs[1])
    assert store.commits >= 3 and len(store) == 11
    await store.close()
    assert sorted(p.name for p in path.parent.glob("*.sqlite3")) == [
        "registrations-1.sqlite3", "registrations-2.sqlite3", "registrations.sqlite3"]
    again = RegistrationStore(path, shards=1)  # fewer shards: rows move into the first file
    loaded = await again.open()
    assert sorted(r.endpoint for r in loaded) == sorted(f"e{i}" for i in range(12) if i != 1)
    assert again.get_by_endpoint("e0").location == "loc-new"
    await again.close()
    third = RegistrationStore(path, shards=1)
    assert len(await third.open()) == 11
    await third.close()


async def test_failed_commit_leaves_no_phantom_registration(server: LwM2MServer, coap, monkeypatch) -> None:
    """A Register whose durable commit fails is answered 5.00 (RFC 7252 §5.9.3.1) and is not
    listed; an endpoint's previous registration, still in the database, stays in force."""
    assert (await register(coap, server, "keep")).code == Code.CREATED
    old_location = server.get_client("keep").location_path

    from reference.server import store as store_mod

    def broken_commit(self) -> None:  # noqa: ANN001
        self.db.execute("ROLLBACK")
        raise store_mod.StoreError("disk full (simulated)")

    monkeypatch.setattr(store_mod._Shard, "_commit", broken_commit)
    assert (await register(coap, server, "ghost")).code == Code.INTERNAL_SERVER_ERROR
    assert server.get_client("ghost") is None
    assert (await register(coap, server, "keep", lt=30)).code == Code.INTERNAL_SERVER_ERROR
    assert server.get_client("keep").location_path == old_location
    assert [r.endpoint for r in server.clients()] == ["keep"]
