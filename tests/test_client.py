"""Reference client: registration, device management and observation over real loopback sockets.

A recording aiocoap stand-in (reference.client.testing.StandInServer) plays the LwM2M Server.
"""
from __future__ import annotations

import asyncio
import time

import pytest
from aiocoap import Code

from reference import formats
from reference.client import ClientOptions, LwM2MClient, StaticSource
from reference.client.testing import StandInServer
from reference.formats import linkformat
from reference.model.config import DeviceConfig, SecurityAccount, ServerAccount
from reference.model.path import Path
from reference.model.types import ContentFormat as CF

TLV = CF.LWM2M_TLV


def config(*servers: StandInServer, lifetime: int = 60, endpoint: str = "ep-test", **srv_kw) -> DeviceConfig:
    cfg = DeviceConfig(endpoint=endpoint)
    for i, s in enumerate(servers):
        cfg.security.append(SecurityAccount(instance_id=i, uri=s.uri, short_server_id=101 + i))
        cfg.servers.append(ServerAccount(instance_id=i, short_server_id=101 + i, lifetime=lifetime, **srv_kw))
    return cfg


async def start_client(cfg: DeviceConfig, **opts) -> LwM2MClient:
    o = dict(local_host="127.0.0.1", request_timeout=2.0, retry_delay=0.2, meter_period=None)
    o.update(opts)
    c = LwM2MClient(ClientOptions(**o), factory=StaticSource(cfg))
    await c.start()
    return c


@pytest.fixture
async def server():
    s = await StandInServer().start()
    yield s
    await s.stop()


@pytest.fixture
async def client(server):
    c = await start_client(config(server))
    await server.wait_for(lambda r: r.path == ("rd",))
    yield c
    await c.stop()


def decode(resp, base: str, client: LwM2MClient):
    return formats.decode(resp.opt.content_format, resp.payload, Path.parse(base), client.registry)


# ------------------------------------------------------------------ registration
async def test_register_query_and_payload(server, client):
    reg = server.registers()[0]
    assert reg.q("ep") == "ep-test" and reg.q("lt") == "60" and reg.q("lwm2m") == "1.1" and reg.q("b") == "U"
    assert reg.content_format == CF.LINK_FORMAT
    links = {l.target: l for l in linkformat.parse(reg.payload)}
    root = links["/"]
    assert root.get("rt") == "oma.lwm2m"
    assert str(int(CF.SENML_CBOR)) in root.get("ct").split()
    assert not any(t.startswith(("/0", "/21")) for t in links), "Security/OSCORE must not be registered"
    assert links["/3"].get("ver") == "1.1" and "/3/0" in links
    assert links["/10243"].get("ver") == "2.0" and "/10243/0" in links
    assert "/5/0" in links and "/5" not in links  # version 1.0 objects: no object link needed
    assert "/1/0" in links


async def test_update_before_lifetime_expiry(server):
    c = await start_client(config(server, lifetime=2))
    try:
        reg = await server.wait_for(lambda r: r.path == ("rd",))
        u1 = await server.wait_for(lambda r: len(r.path) == 2 and r.code == Code.POST, timeout=3)
        u2 = await server.wait_for(lambda r: len(r.path) == 2 and r.code == Code.POST and r is not u1, timeout=3)
        assert 0.5 <= u1.at - reg.at < 2.0, "Update must come before the 2 s lifetime expires"
        assert 0.5 <= u2.at - u1.at < 2.0
        assert u1.path == ("rd", "1") and u1.query == () and u1.payload == b""
    finally:
        await c.stop()
    assert server.requests[-1].code == Code.DELETE and server.requests[-1].path == ("rd", "1")


async def test_lifetime_and_binding_write_trigger_update(server, client):
    addr = client.local_address
    n = len(server.requests)
    r = await server.request(addr, Code.PUT, "/1/0/1", b"45", content_format=CF.TEXT)
    assert r.code == Code.CHANGED
    up = await server.wait_for(lambda r: len(r.path) == 2 and r.code == Code.POST, since=n)
    assert up.q("lt") == "45" and up.q("b") is None
    n = len(server.requests)
    r = await server.request(addr, Code.PUT, "/1/0/7", b"U", content_format=CF.TEXT)
    assert r.code == Code.CHANGED
    up = await server.wait_for(lambda r: len(r.path) == 2 and r.code == Code.POST, since=n)
    assert up.q("b") == "U"
    r = await server.request(addr, Code.PUT, "/1/0/7", b"XYZ", content_format=CF.TEXT)
    assert r.code == Code.BAD_REQUEST


async def test_registration_update_trigger_and_reregister_after_404(server, client):
    addr = client.local_address
    n = len(server.requests)
    r = await server.request(addr, Code.POST, "/1/0/8")
    assert r.code == Code.CHANGED
    up = await server.wait_for(lambda r: len(r.path) == 2 and r.code == Code.POST, since=n)
    assert up.query == ()
    server.update_code = Code.NOT_FOUND
    n = len(server.requests)
    await server.request(addr, Code.POST, "/1/0/8")
    reg = await server.wait_for(lambda r: r.path == ("rd",), since=n)
    assert reg.q("ep") == "ep-test"


async def test_disable_deregisters_and_comes_back(server, client):
    addr = client.local_address
    assert (await server.request(addr, Code.PUT, "/1/0/5", b"1", content_format=CF.TEXT)).code == Code.CHANGED
    n = len(server.requests)
    assert (await server.request(addr, Code.POST, "/1/0/4")).code == Code.CHANGED
    dereg = await server.wait_for(lambda r: r.code == Code.DELETE, since=n)
    reg = await server.wait_for(lambda r: r.path == ("rd",), since=n, timeout=4)
    assert 0.9 <= reg.at - dereg.at < 3.0


async def test_dm_read_formats_and_errors(server, client):
    addr = client.local_address
    r = await server.request(addr, Code.GET, "/3/0/0")
    assert r.code == Code.CONTENT and r.opt.content_format == CF.TEXT and r.payload == b"LwM2M Conformance Project"
    for cf in (TLV, CF.SENML_JSON, CF.SENML_CBOR, CF.LWM2M_JSON):
        r = await server.request(addr, Code.GET, "/3/0", accept=cf)
        assert r.code == Code.CONTENT and r.opt.content_format == cf
        vals = decode(r, "/3/0", client)
        assert vals[Path(3, 0, 1)] == "reference-client" and vals[Path(3, 0, 6, 1)] == 5
        assert abs(vals[Path(3, 0, 13)] - time.time()) < 5
    assert (await server.request(addr, Code.GET, "/3/0", accept=CF.TEXT)).code == Code.NOT_ACCEPTABLE
    assert (await server.request(addr, Code.GET, "/3/0/0", accept=1234)).code == Code.NOT_ACCEPTABLE
    assert (await server.request(addr, Code.GET, "/3/0/99")).code == Code.NOT_FOUND
    assert (await server.request(addr, Code.GET, "/3/7")).code == Code.NOT_FOUND
    assert (await server.request(addr, Code.GET, "/4242")).code == Code.NOT_FOUND
    assert (await server.request(addr, Code.GET, "/3/0/4")).code == Code.METHOD_NOT_ALLOWED
    assert (await server.request(addr, Code.GET, "/0/0")).code == Code.UNAUTHORIZED
    assert (await server.request(addr, Code.GET, "/0")).code == Code.UNAUTHORIZED


async def test_dm_write_semantics(server, client):
    addr = client.local_address
    assert (await server.request(addr, Code.PUT, "/3/0/0", b"x", content_format=CF.TEXT)).code == Code.METHOD_NOT_ALLOWED
    assert (await server.request(addr, Code.PUT, "/1/0/1", b"abc", content_format=CF.TEXT)).code == Code.BAD_REQUEST
    assert (await server.request(addr, Code.PUT, "/1/0/1", b"30", content_format=4321)).code == Code.UNSUPPORTED_CONTENT_FORMAT
    assert (await server.request(addr, Code.PUT, "/1/0/1", b"30")).code == Code.BAD_REQUEST
    assert (await server.request(addr, Code.PUT, "/1/0/1", b"\xff\x01", content_format=TLV)).code == Code.BAD_REQUEST
    # Current Time write sets the clock
    r = await server.request(addr, Code.PUT, "/3/0/13", b"1000000000", content_format=CF.TEXT)
    assert r.code == Code.CHANGED
    r = await server.request(addr, Code.GET, "/3/0/13")
    assert abs(int(r.payload) - 1000000000) < 5
    # POST partial update of an instance keeps other resources
    body = formats.encode(TLV, {Path(1, 0, 2): 3}, Path(1, 0), client.registry)
    assert (await server.request(addr, Code.POST, "/1/0", body, content_format=TLV)).code == Code.CHANGED
    vals = decode(await server.request(addr, Code.GET, "/1/0", accept=TLV), "/1/0", client)
    assert vals[Path(1, 0, 2)] == 3 and vals[Path(1, 0, 1)] == 60
    # PUT replace of an instance drops optional writable resources not given, needs the mandatory ones
    body = formats.encode(TLV, {Path(1, 0, 1): 61, Path(1, 0, 6): True, Path(1, 0, 7): "U"}, Path(1, 0), client.registry)
    assert (await server.request(addr, Code.PUT, "/1/0", body, content_format=TLV)).code == Code.CHANGED
    vals = decode(await server.request(addr, Code.GET, "/1/0", accept=TLV), "/1/0", client)
    assert Path(1, 0, 2) not in vals and vals[Path(1, 0, 1)] == 61
    body = formats.encode(TLV, {Path(1, 0, 2): 1}, Path(1, 0), client.registry)
    assert (await server.request(addr, Code.PUT, "/1/0", body, content_format=TLV)).code == Code.BAD_REQUEST
    # writing a read-only resource inside an instance payload
    body = formats.encode(TLV, {Path(1, 0, 0): 5}, Path(1, 0), client.registry)
    assert (await server.request(addr, Code.POST, "/1/0", body, content_format=TLV)).code == Code.METHOD_NOT_ALLOWED


async def test_execute(server, client):
    addr = client.local_address
    assert (await server.request(addr, Code.POST, "/3/0/12", b"0='a',1")).code == Code.CHANGED
    assert (await server.request(addr, Code.POST, "/3/0/12", b"bad args")).code == Code.BAD_REQUEST
    assert (await server.request(addr, Code.POST, "/3/0/0")).code == Code.METHOD_NOT_ALLOWED  # not executable: write semantics on R
    assert (await server.request(addr, Code.POST, "/3/9/4")).code == Code.NOT_FOUND
    # firmware: no package -> Update not allowed; push a package -> Downloaded -> Update -> version
    assert (await server.request(addr, Code.POST, "/5/0/2")).code == Code.METHOD_NOT_ALLOWED
    assert (await server.request(addr, Code.PUT, "/5/0/0", b"2.0.0", content_format=CF.OPAQUE)).code == Code.CHANGED
    assert (await server.request(addr, Code.GET, "/5/0/3")).payload == b"2"
    assert (await server.request(addr, Code.POST, "/5/0/2")).code == Code.CHANGED
    await client.wait_event("firmware-updated", 3)
    assert (await server.request(addr, Code.GET, "/3/0/3")).payload == b"2.0.0"
    assert (await server.request(addr, Code.GET, "/5/0/5")).payload == b"1"


async def test_create_delete_and_object_list_update(server, client):
    addr = client.local_address
    reg = registry = client.registry
    # with instance ID in the payload (TLV object-instance wrapper)
    body = formats.encode(TLV, {}, Path(10243, 5), registry)
    n = len(server.requests)
    r = await server.request(addr, Code.POST, "/10243", body, content_format=TLV)
    assert r.code == Code.CREATED
    assert tuple(r.opt.location_path) in (("10243", "1"),)
    up = await server.wait_for(lambda r: len(r.path) == 2 and r.code == Code.POST and r.payload, since=n)
    assert "</10243/1>" in up.payload.decode()
    assert (await server.request(addr, Code.POST, "/3", b"", content_format=TLV)).code == Code.BAD_REQUEST
    assert (await server.request(addr, Code.POST, "/0", b"", content_format=TLV)).code == Code.UNAUTHORIZED
    assert (await server.request(addr, Code.POST, "/4242", b"", content_format=TLV)).code == Code.NOT_FOUND
    assert (await server.request(addr, Code.DELETE, "/10243/1")).code == Code.DELETED
    assert (await server.request(addr, Code.GET, "/10243/1")).code == Code.NOT_FOUND
    assert (await server.request(addr, Code.DELETE, "/10243/1")).code == Code.NOT_FOUND
    assert (await server.request(addr, Code.DELETE, "/3/0")).code == Code.METHOD_NOT_ALLOWED
    assert (await server.request(addr, Code.DELETE, "/10243")).code == Code.METHOD_NOT_ALLOWED
    # SenML with an explicit instance ID; an existing ID is 4.00
    body = formats.encode(CF.SENML_JSON, {Path(1, 0, 1): 100, Path(1, 0, 6): True, Path(1, 0, 7): "U"}, Path(1), reg)
    r = await server.request(addr, Code.POST, "/1", body, content_format=CF.SENML_JSON)
    assert r.code == Code.BAD_REQUEST, "instance already exists"
    body = formats.encode(CF.SENML_JSON, {Path(1, 8, 1): 100}, Path(1), reg)
    r = await server.request(addr, Code.POST, "/1", body, content_format=CF.SENML_JSON)
    assert r.code == Code.BAD_REQUEST, "mandatory writable resources missing"
    body = formats.encode(CF.SENML_JSON, {Path(1, 7, 1): 100, Path(1, 7, 6): True, Path(1, 7, 7): "U"}, Path(1), reg)
    r = await server.request(addr, Code.POST, "/1", body, content_format=CF.SENML_JSON)
    assert r.code == Code.CREATED and tuple(r.opt.location_path) == ("1", "7")


async def test_discover_and_write_attributes(server, client):
    addr = client.local_address
    assert (await server.request(addr, Code.PUT, "/3/0/9", query=("pmin=2", "pmax=20", "gt=50"))).code == Code.CHANGED
    assert (await server.request(addr, Code.PUT, "/3/0", query=("pmax=30",))).code == Code.CHANGED
    r = await server.request(addr, Code.GET, "/3", accept=CF.LINK_FORMAT)
    assert r.code == Code.CONTENT and r.opt.content_format == CF.LINK_FORMAT
    links = {l.target: l for l in linkformat.parse(r.payload)}
    assert links["/3"].get("ver") == "1.1"
    assert links["/3/0"].get("pmax") == "30"
    assert links["/3/0/9"].params == {"pmin": "2", "pmax": "20", "gt": "50"}
    assert links["/3/0/6"].get("dim") == "2" and "/3/0/4" in links
    r = await server.request(addr, Code.GET, "/3/0/6", accept=CF.LINK_FORMAT)
    assert [l.target for l in linkformat.parse(r.payload)] == ["/3/0/6", "/3/0/6/0", "/3/0/6/1"]
    for bad in (("lt=10", "gt=5"), ("gt=10", "lt=5", "st=3"), ("pmin=x",), ("foo=1",), ("pmin=-1",)):
        assert (await server.request(addr, Code.PUT, "/3/0/9", query=bad)).code == Code.BAD_REQUEST, bad
    assert (await server.request(addr, Code.PUT, "/3/0/0", query=("gt=1",))).code == Code.BAD_REQUEST
    assert (await server.request(addr, Code.PUT, "/3/0", query=("st=1",))).code == Code.BAD_REQUEST
    assert (await server.request(addr, Code.PUT, "/3/0/9", query=("pmax=1",))).code == Code.BAD_REQUEST  # < pmin 2
    assert (await server.request(addr, Code.PUT, "/3/0/9", query=("pmin",))).code == Code.CHANGED  # unset
    assert (await server.request(addr, Code.GET, "/0", accept=CF.LINK_FORMAT)).code == Code.UNAUTHORIZED


# ------------------------------------------------------------------ observe
async def test_observe_pmax_and_pmin(server, client):
    addr = client.local_address
    await server.request(addr, Code.PUT, "/3/0/9", query=("pmin=1", "pmax=2"))
    obs = await server.observe(addr, "/3/0/9")
    assert obs.first.code == Code.CONTENT and obs.first.opt.observe is not None and obs.first.payload == b"87"
    client.set_local_value("/3/0/9", "80")  # before pmin: delayed to pmin
    n1 = await obs.next(3)
    assert n1.payload == b"80" and 0.9 <= n1.at - obs.started < 1.6
    n2 = await obs.next(3)  # nothing changes: pmax
    assert n2.payload == b"80" and 1.8 <= n2.at - n1.at < 2.6
    assert n2.observe > n1.observe


async def test_observe_gt_lt_st_and_resource_beats_instance(server, client):
    addr = client.local_address
    await server.request(addr, Code.PUT, "/3/0", query=("pmax=1",))           # instance level
    await server.request(addr, Code.PUT, "/3/0/9", query=("gt=50", "pmax=10"))  # resource level wins
    obs = await server.observe(addr, "/3/0/9")
    client.set_local_value("/3/0/9", "86")  # no crossing: no notification
    await asyncio.sleep(1.3)
    assert obs.notifications == [], "resource pmax=10 must override instance pmax=1"
    client.set_local_value("/3/0/9", "40")  # crosses gt=50 downwards
    n = await obs.next(2)
    assert n.payload == b"40"


async def test_observe_cancel_by_rst_con_and_non(server):
    for every, label in ((1, "con"), (1000, "non")):
        c = await start_client(config(server), notify_con_every=every)
        try:
            await server.wait_for(lambda r: r.path == ("rd",) and r.q("ep") == "ep-test", since=len(server.requests) - 1)
            addr = c.local_address
            obs = await server.observe(addr, "/3/0/9")
            c.set_local_value("/3/0/9", "10")
            n = await obs.next(2)
            assert (n.mtype.name if hasattr(n.mtype, "name") else str(n.mtype)) == ("CON" if every == 1 else "NON")
            obs.forget()
            c.set_local_value("/3/0/9", "11")
            f = await c.wait_event("observe-cancelled", 3)
            assert f["path"] == "/3/0/9", label
            assert not c.observations
        finally:
            await c.stop()


async def test_observe_cancel_by_get_observe_1(server, client):
    addr = client.local_address
    obs = await server.observe(addr, "/3/0/9")
    from aiocoap import Message
    msg = Message(code=Code.GET, uri_path=("3", "0", "9"), observe=1)
    msg.token = obs.token  # same token as the observation (RFC 7641 §3.6)
    server.send_raw(obs.first.remote, msg)
    await client.wait_event("observe-cancelled", 3)
    assert not client.observations
    client.set_local_value("/3/0/9", "12")
    await asyncio.sleep(0.3)
    assert all(n.code == Code.CONTENT and n.observe is None for n in obs.notifications)


async def test_observe_instance_notifies_on_meter_change(server):
    c = await start_client(config(server), meter_period=0.2)
    try:
        await server.wait_for(lambda r: r.path == ("rd",))
        obs = await server.observe(c.local_address, "/10243/0", accept=CF.SENML_JSON)
        first = formats.decode(CF.SENML_JSON, obs.first.payload, Path(10243, 0), c.registry)
        n = await obs.next(2)
        later = formats.decode(CF.SENML_JSON, n.payload, Path(10243, 0), c.registry)
        assert later[Path(10243, 0, 14)] >= first[Path(10243, 0, 14)]
        assert later != first
    finally:
        await c.stop()


# ------------------------------------------------------------------ multiple servers / ACL
async def test_two_servers_and_access_control():
    a, b = await StandInServer().start(), await StandInServer().start()
    c = await start_client(config(a, b))
    try:
        await a.wait_for(lambda r: r.path == ("rd",))
        await b.wait_for(lambda r: r.path == ("rd",))
        addr = c.local_address
        # default (factory) ACLs: both read the device, each only its own Server instance
        assert (await a.request(addr, Code.GET, "/3/0/0")).code == Code.CONTENT
        assert (await b.request(addr, Code.GET, "/3/0/0")).code == Code.CONTENT
        assert (await a.request(addr, Code.GET, "/1/0/1")).code == Code.CONTENT
        assert (await a.request(addr, Code.GET, "/1/1/1")).code == Code.UNAUTHORIZED
        assert (await b.request(addr, Code.PUT, "/1/1/1", b"70", content_format=CF.TEXT)).code == Code.CHANGED
        # a creates an instance: a owns it, b has no access
        r = await a.request(addr, Code.POST, "/10243", formats.encode(TLV, {}, Path(10243, 3), c.registry),
                            content_format=TLV)
        assert r.code == Code.CREATED
        new = "/" + "/".join(r.opt.location_path)
        niid = int(r.opt.location_path[1])
        assert (await a.request(addr, Code.GET, f"{new}/4")).code == Code.CONTENT
        assert (await b.request(addr, Code.GET, f"{new}/4")).code == Code.UNAUTHORIZED
        assert (await b.request(addr, Code.DELETE, new)).code == Code.UNAUTHORIZED
        acl_iid = next(i for i, inst in c.tree.data[2].items() if inst.get(0) == 10243 and inst.get(1) == niid)
        acl = decode(await a.request(addr, Code.GET, f"/2/{acl_iid}", accept=TLV), f"/2/{acl_iid}", c)
        assert acl[Path(2, acl_iid, 3)] == 101
        # only the owner may grant: b tries, a grants b read access (ACL resource instance keyed by SSID)
        grant = formats.encode(TLV, {Path(2, acl_iid, 2, 102): 1}, Path(2, acl_iid, 2), c.registry)
        assert (await b.request(addr, Code.POST, f"/2/{acl_iid}/2", grant, content_format=TLV)).code == Code.UNAUTHORIZED
        assert (await a.request(addr, Code.POST, f"/2/{acl_iid}/2", grant, content_format=TLV)).code == Code.CHANGED
        assert (await b.request(addr, Code.GET, f"{new}/4")).code == Code.CONTENT
        assert (await b.request(addr, Code.PUT, f"{new}/4", b"1", content_format=CF.TEXT)).code in (
            Code.UNAUTHORIZED, Code.METHOD_NOT_ALLOWED)
        assert (await b.request(addr, Code.DELETE, new)).code == Code.UNAUTHORIZED
        assert (await a.request(addr, Code.DELETE, new)).code == Code.DELETED
    finally:
        await c.stop()
        await a.stop()
        await b.stop()


async def test_unknown_peer_is_refused(server, client):
    other = await StandInServer().start()
    try:
        assert (await other.request(client.local_address, Code.GET, "/3/0/0")).code == Code.UNAUTHORIZED
    finally:
        await other.stop()


async def test_register_and_read_over_dtls_psk(server):
    """coaps:// account: the client talks through reference.security.DtlsClientBridge (PSK)."""
    from reference.model.config import SecurityMode
    from reference.security import DtlsServerBridge
    keys = {b"ep-dtls-id": bytes.fromhex("00112233445566778899aabbccddeeff")}
    bridge = DtlsServerBridge(("127.0.0.1", 0), ("127.0.0.1", server.port), keys.get, handshake_timeout=5)
    host, port = await bridge.start()
    cfg = DeviceConfig(endpoint="ep-dtls", security=[SecurityAccount(
        instance_id=0, uri=f"coaps://127.0.0.1:{port}", short_server_id=1, mode=SecurityMode.PSK,
        psk_identity=b"ep-dtls-id", psk_key=keys[b"ep-dtls-id"])], servers=[ServerAccount(0, 1)])
    c = await start_client(cfg)
    try:
        reg = await server.wait_for(lambda r: r.path == ("rd",), timeout=8)
        assert reg.q("ep") == "ep-dtls"
        r = await server.request(reg.remote, Code.GET, "/3/0/1")
        assert r.code == Code.CONTENT and r.payload == b"reference-client"
    finally:
        await c.stop()
        await bridge.close()
