"""Charging records of the reference server (reference/server/charging.py, LightweightM2M-HLF-SG4):
exact counts against the client's own trace, attribution, HTTP/CSV/ctl access, durability across
a restart, and the ``charging=False`` switch."""
from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import sys

import aiohttp
from aiocoap.numbers.codes import Code

from conformance.peers.client_peer import ClientPeer, RawCoap
from reference.server.server import LwM2MServer


def wire(peer: ClientPeer) -> dict[str, int]:
    """The peer's own view: messages/bytes it sent (uplink) and received (downlink)."""
    out = [d for d in peer.trace if d.direction == "out"]
    inc = [d for d in peer.trace if d.direction == "in"]
    return {"uplink_messages": len(out), "uplink_bytes": sum(len(d.data) for d in out),
            "downlink_messages": len(inc), "downlink_bytes": sum(len(d.data) for d in inc)}


def counts(rec: dict) -> dict[str, int]:
    return {k: rec[k] for k in ("uplink_messages", "uplink_bytes", "downlink_messages", "downlink_bytes")}


async def session(server: LwM2MServer, endpoint: str, updates: int = 2, reads: int = 1) -> ClientPeer:
    peer = ClientPeer(server.coap_address, endpoint)
    await peer.start()
    assert (await peer.register(lifetime=300)).code == Code.CREATED
    for _ in range(updates):
        assert (await peer.update()).code == Code.CHANGED
    for _ in range(reads):
        assert (await server.read(endpoint, "/3/0/0", timeout=5)).code_text == "2.05"
    return peer


async def test_records_equal_the_clients_traffic_and_survive_restart(tmp_path) -> None:
    state = tmp_path / "state"
    server = LwM2MServer(coap_port=0, http_port=0, state_dir=state)
    await server.start()
    try:
        a = await session(server, "dev-a", updates=2, reads=1)
        b = await session(server, "dev-b", updates=0, reads=2)
        assert (await a.deregister()).code == Code.DELETED
        ra, rb = await server.charging.get("dev-a"), await server.charging.get("dev-b")
        assert counts(ra) == wire(a)
        assert counts(rb) == wire(b)
        assert (ra["registrations"], ra["updates"], ra["deregistrations"]) == (1, 2, 1)
        assert (rb["registrations"], rb["updates"], rb["deregistrations"]) == (1, 0, 0)
        await server.charging.flush()  # the stored totals plus new deltas still add up
        assert await server.charging.get("dev-a") == ra
        # 1 Register + 2 Updates + 1 De-register + 1 read answer up; their answers + 1 GET down
        assert wire(a)["uplink_messages"] == 5 and wire(a)["downlink_messages"] == 5
        before = {ep: await server.charging.get(ep) for ep in ("dev-a", "dev-b")}
        await a.close()
        await b.close()
    finally:
        await server.stop()
    again = LwM2MServer(coap_port=0, http_port=0, state_dir=state)
    await again.start()
    try:
        assert {ep: await again.charging.get(ep) for ep in ("dev-a", "dev-b")} == before
    finally:
        await again.stop()


async def test_address_reuse_and_unattributed(tmp_path) -> None:
    """Two endpoints registering in turn from one socket: each Register exchange is its own
    endpoint's; a refused Register from an unknown address is unattributed."""
    server = LwM2MServer(coap_port=0, http_port=None, state_dir=None)
    await server.start()
    try:
        peer = ClientPeer(server.coap_address, "one")
        await peer.start()
        assert (await peer.register(lifetime=300)).code == Code.CREATED
        n1 = len(peer.trace.items)
        peer.endpoint = "two"
        peer.location = None
        assert (await peer.register(lifetime=300)).code == Code.CREATED
        first, second = peer.trace.items[:n1], peer.trace.items[n1:]
        for ep, items in (("one", first), ("two", second)):
            rec = await server.charging.get(ep)
            assert (rec["uplink_messages"], rec["uplink_bytes"]) == (
                1, sum(len(d.data) for d in items if d.direction == "out"))
            assert (rec["downlink_messages"], rec["downlink_bytes"]) == (
                1, sum(len(d.data) for d in items if d.direction == "in"))
        await peer.close()
        raw = RawCoap(server.coap_address)
        await raw.start()
        bad = bytes.fromhex("42020001abcd") + b"\xb2rd"  # CON POST /rd without ep: 4.00
        got = await raw.exchange(bad, window=0.5)
        assert got, "the server answered"
        un = (await server.charging.all())["unattributed"]
        assert un["uplink_messages"] == 1 and un["uplink_bytes"] == len(bad)
        assert un["downlink_messages"] == 1 and un["downlink_bytes"] == len(got[0])
        await raw.close()
    finally:
        await server.stop()


async def test_http_json_csv_and_ctl(tmp_path) -> None:
    server = LwM2MServer(coap_port=0, http_port=0, state_dir=tmp_path / "s")
    await server.start()
    try:
        peer = await session(server, "dev-1", updates=1, reads=0)
        host, port = server.http_address
        base = f"http://{host}:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/clients/dev-1/charging") as r:
                assert r.status == 200
                one = await r.json()
            assert counts(one) == wire(peer) and one["updates"] == 1 and one["endpoint"] == "dev-1"
            async with http.get(f"{base}/api/charging") as r:
                doc = await r.json()
            assert [x["endpoint"] for x in doc["records"]] == ["dev-1"] and doc["records"][0] == one
            async with http.get(f"{base}/api/charging?format=csv") as r:
                assert r.status == 200 and r.content_type == "text/csv"
                rows = list(csv.DictReader(io.StringIO(await r.text())))
            assert rows[0]["endpoint"] == "dev-1" and int(rows[0]["uplink_bytes"]) == one["uplink_bytes"]
            async with http.get(f"{base}/api/clients/nobody/charging") as r:
                assert r.status == 404
            async with http.get(f"{base}/api/charging?format=xml") as r:
                assert r.status == 400
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "reference.server.cli", "ctl", "--api", base, "charging", "dev-1", "--csv",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
        assert list(csv.DictReader(io.StringIO(out.decode())))[0]["downlink_bytes"] == str(one["downlink_bytes"])
        await peer.close()
    finally:
        await server.stop()


async def test_switched_off() -> None:
    server = LwM2MServer(coap_port=0, http_port=None, state_dir=None, charging=False)
    await server.start()
    try:
        peer = ClientPeer(server.coap_address, "dev-x")
        await peer.start()
        assert (await peer.register(lifetime=300)).code == Code.CREATED
        assert server.charging is None
        await peer.close()
    finally:
        await server.stop()


async def test_flush_many_endpoints_adds_to_stored_totals(tmp_path) -> None:
    """More endpoints than one multi-row statement holds; two flushes add up."""
    from reference.server.charging import ChargingRecords

    rec = ChargingRecords(tmp_path / "c.sqlite3")
    await rec.open()
    try:
        for round_ in range(2):
            for i in range(150):
                rec._bind(("127.0.0.1", 10000 + i), f"ep-{i:03d}")
                rec.tap_in(b"\x60\x45\x00\x01" + bytes(i), ("127.0.0.1", 10000 + i))  # an ACK, 4+i bytes
            await rec.flush()
        doc = await rec.all()
        assert doc["count"] == 150
        assert all(r["uplink_messages"] == 2 and r["uplink_bytes"] == 2 * (4 + i)
                   for i, r in enumerate(doc["records"]))
    finally:
        await rec.close()
