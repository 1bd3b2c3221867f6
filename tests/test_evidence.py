"""Evidence: the recording UDP proxy, the pcap (decoded by tshark as CoAP), step(), CoAP descriptions."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from conformance.coapview import describe
from conformance.evidence import Recorder, UdpProxy, safe_name, set_current, step


class Peer(asyncio.DatagramProtocol):
    """A UDP endpoint recording what it receives; optionally answers every datagram."""

    def __init__(self, answer: bytes | None = None) -> None:
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.got.put_nowait((data, addr))
        if self.answer is not None and self.transport is not None:
            self.transport.sendto(self.answer, addr)


async def endpoint(local: tuple[str, int] = ("127.0.0.1", 0), answer: bytes | None = None) -> tuple[asyncio.DatagramTransport, Peer]:
    loop = asyncio.get_running_loop()
    tr, proto = await loop.create_datagram_endpoint(lambda: Peer(answer), local_addr=local)
    return tr, proto


def coap(code: Code, path: str = "", mid: int = 1, token: bytes = b"\x01", mtype: int = 0, **opts: object) -> bytes:
    m = Message(code=code, **opts)
    m.mid, m.token = mid, token
    from aiocoap.numbers.types import Type
    m.mtype = Type(mtype)
    if path:
        m.opt.uri_path = tuple(path.strip("/").split("/"))
    return m.encode()


async def test_proxy_keeps_one_upstream_per_downstream_address(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "ev", "t::x")
    srv_tr, srv = await endpoint(answer=coap(Code.CREATED, mid=7, mtype=2))
    proxy = await UdpProxy(rec, srv_tr.get_extra_info("sockname"), name="server").start()
    a_tr, a = await endpoint()
    b_tr, b = await endpoint()
    try:
        a_tr.sendto(coap(Code.POST, "rd", mid=7), proxy.address)
        b_tr.sendto(coap(Code.POST, "rd", mid=7), proxy.address)
        got = [await asyncio.wait_for(srv.got.get(), 2) for _ in range(2)]
        seen_by_server = {addr for _, addr in got}
        assert len(seen_by_server) == 2, "two DUT addresses must stay two addresses upstream"
        assert proxy.upstream_address(a_tr.get_extra_info("sockname")) in seen_by_server
        # answers go back to the right downstream peer
        data_a, _ = await asyncio.wait_for(a.got.get(), 2)
        data_b, _ = await asyncio.wait_for(b.got.get(), 2)
        assert describe(data_a).label == "2.01 Created" == describe(data_b).label
        assert sorted(proxy.peers) == sorted([a_tr.get_extra_info("sockname"), b_tr.get_extra_info("sockname")])
        dg = await proxy.wait_for(lambda d: d.direction == "to-dut", 1)
        assert dg.dst in proxy.peers and dg.src == proxy.address
    finally:
        for t in (a_tr, b_tr, srv_tr):
            t.close()
        await proxy.close()
    assert len(rec.datagrams) == 4
    assert [d.direction for d in rec.datagrams].count("from-dut") == 2


async def test_interceptor_can_tamper_and_drop(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "ev", "t::y")
    srv_tr, srv = await endpoint()
    proxy = await UdpProxy(rec, srv_tr.get_extra_info("sockname"), dut_side="upstream").start()
    proxy.interceptor = lambda direction, data: None if data.endswith(b"drop") else data.replace(b"A", b"B")
    c_tr, _ = await endpoint()
    try:
        c_tr.sendto(b"xxAxx", proxy.address)
        assert (await asyncio.wait_for(srv.got.get(), 2))[0] == b"xxBxx"
        c_tr.sendto(b"please drop", proxy.address)
        c_tr.sendto(b"last", proxy.address)
        assert (await asyncio.wait_for(srv.got.get(), 2))[0] == b"last"
    finally:
        c_tr.close()
        srv_tr.close()
        await proxy.close()
    # upstream DUT side: what reached the DUT is recorded, with the note
    assert [d.data for d in rec.datagrams] == [b"xxBxx", b"last"]
    assert rec.datagrams[0].note == "modified by test"


async def test_pcap_is_decoded_as_coap_by_tshark(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "ev", "conformance/tests/test_x.py::test_y[dut]")
    srv_tr, _ = await endpoint(answer=coap(Code.CREATED, mid=0x1234, token=b"\xab", mtype=2))
    proxy = await UdpProxy(rec, srv_tr.get_extra_info("sockname"), name="server").start()
    c_tr, c = await endpoint()
    try:
        c_tr.sendto(coap(Code.POST, "rd", mid=0x1234, token=b"\xab", uri_query=("ep=dev1", "lt=60")), proxy.address)
        await asyncio.wait_for(c.got.get(), 2)
    finally:
        c_tr.close()
        srv_tr.close()
        await proxy.close()
    result = rec.finish()
    assert Path(result["pcap"]).exists() and result["tshark"].startswith("tshark -d udp.port==")
    assert (rec.dir / "tshark.txt").read_text().strip() == result["tshark"]
    lines = [json.loads(x) for x in (rec.dir / "exchange.jsonl").read_text().splitlines()]
    assert [x["label"] for x in lines] == ["POST /rd?ep=dev1&lt=60", "2.01 Created"]
    assert "POST /rd?ep=dev1&amp;lt=60" in (rec.dir / "exchange.svg").read_text()
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    cmd = result["tshark"].split() + ["-T", "fields", "-e", "ip.src", "-e", "udp.dstport", "-e", "coap.code",
                                      "-e", "coap.opt.uri_path", "-e", "coap.opt.uri_query", "-e", "coap.mid"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    rows = [r.split("\t") for r in out.stdout.splitlines() if r.strip()]
    assert rows[0][0] == "127.0.0.1" and int(rows[0][1]) == proxy.address[1]
    assert rows[0][2:] == ["2", "rd", "ep=dev1,lt=60", "4660"]
    assert rows[1][2] == "65" and rows[1][5] == "4660"


def test_step_records_outcome_and_nesting(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "ev", "t::z")
    set_current(rec)
    try:
        with step("outer"):
            with step("inner"):
                rec.note("a note")
        with pytest.raises(ZeroDivisionError):
            with step("broken"):
                1 / 0
    finally:
        set_current(None)
    summary = [(s.title, s.outcome, s.depth) for s in rec.steps]
    assert summary == [("outer", "passed", 0), ("inner", "passed", 1), ("a note", "note", 2), ("broken", "failed", 0)]
    assert rec.steps[-1].error.startswith("ZeroDivisionError")
    with step("outside a conformance test"):  # no recorder: harmless
        pass


def test_describe_coap_and_dtls() -> None:
    d = describe(coap(Code.GET, "3/0/9", observe=0))
    assert d.kind == "coap" and d.label == "GET /3/0/9" and "Observe:0" in d.detail and d.is_request
    assert describe(bytes([0x40, 0, 0, 1])).label == "CoAP ping"
    hello = bytes([22, 0xFE, 0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 0])
    assert describe(hello).label == "DTLS ClientHello"
    assert describe(b"\x01").kind == "other"
    assert safe_name("a/b.py::test_x[p 1]").startswith("test_x_p_1-")
