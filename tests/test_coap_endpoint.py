"""Tests of reference.coap (RFC 7252 message layer, RFC 7641 client side, RFC 7959 Block2) over
real loopback sockets: aiocoap as a well-behaved peer, hand-built datagrams for the rest."""
from __future__ import annotations

import asyncio
import random
import struct

import aiocoap
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from reference.coap import (
    CoapEndpoint,
    CoapReset,
    CoapTimeout,
    TransmissionParameters,
)
from reference.coap.wire import MessageFormatError, check_options, scan_options

FAST = TransmissionParameters(ack_timeout=0.05, ack_random_factor=1.0, max_retransmit=2,
                              exchange_lifetime_override=5.0)
CON, NON, ACK, RST = Type.CON, Type.NON, Type.ACK, Type.RST


class RawPeer(asyncio.DatagramProtocol):
    """A loopback UDP socket that sends bytes as given and queues what it receives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def open(cls) -> "RawPeer":
        loop = asyncio.get_running_loop()
        peer = cls()
        await loop.create_datagram_endpoint(lambda: peer, local_addr=("127.0.0.1", 0))
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.queue.put_nowait((data, addr))

    @property
    def address(self) -> tuple[str, int]:
        return self.transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]

    def send(self, data: bytes, to: tuple) -> None:
        self.transport.sendto(data, to)  # type: ignore[union-attr]

    async def recv(self, timeout: float = 1.0) -> bytes:
        data, _ = await asyncio.wait_for(self.queue.get(), timeout)
        return data

    async def recv_msg(self, timeout: float = 1.0) -> Message:
        return Message.decode(await self.recv(timeout))

    async def nothing(self, wait: float = 0.15) -> bool:
        try:
            await asyncio.wait_for(self.queue.get(), wait)
        except asyncio.TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.transport.close()  # type: ignore[union-attr]


def raw(mtype: int, code: int, mid: int, token: bytes = b"", rest: bytes = b"") -> bytes:
    return bytes(((1 << 6) | (mtype << 4) | len(token), code, mid >> 8, mid & 0xFF)) + token + rest


def encode(msg: Message, mtype: Type, mid: int, token: bytes = b"\x01") -> bytes:
    msg.mtype, msg.mid, msg.token = mtype, mid, token
    return msg.encode()


class Echo:
    """Handler recording calls; answers 2.05 with the path and payload."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[Message] = []
        self.delay = delay
        self.fail = fail

    async def __call__(self, request: Message, remote: tuple) -> Message:
        self.calls.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("handler failure (expected by the test)")
        return Message(code=Code.CONTENT, payload=b"/".join(p.encode() for p in request.opt.uri_path)
                       + b"|" + request.payload)


@pytest.fixture
async def server():
    handler = Echo()
    ep = await CoapEndpoint.create("127.0.0.1", 0, handler, params=FAST, separate_after=0.3)
    ep.test_handler = handler  # type: ignore[attr-defined]
    yield ep
    ep.close()


@pytest.fixture
async def peer():
    p = await RawPeer.open()
    yield p
    p.close()


# ---- wire helpers ------------------------------------------------------------------------------
def test_scan_options_and_format_errors() -> None:
    m = Message(code=Code.GET, uri_path=("a", "b"), uri_query=("x=1",), payload=b"p")
    data = encode(m, CON, 1)
    opts, pos = scan_options(data, 5)
    assert [n for n, _ in opts] == [11, 11, 15]
    assert data[pos:] == b"p"
    for bad in (b"\xff", b"\xf0", b"\x0f", b"\xd1", b"\x13ab"):
        with pytest.raises(MessageFormatError):
            scan_options(b"\x40\x01\x00\x01" + bad, 4)


def test_check_options_rules() -> None:
    crit = frozenset({11, 3, 7})
    assert check_options([(11, 3), (11, 0)], crit) == (None, [])
    assert check_options([(9, 1)], crit)[0] == 9            # unknown critical (OSCORE)
    assert check_options([(7, 3)], crit)[0] == 7            # Uri-Port longer than 2 bytes
    assert check_options([(3, 1), (3, 1)], crit)[0] == 3    # Uri-Host repeated
    assert check_options([(12, 1), (12, 1)], crit) == (None, [12])  # elective repeated: ignored
    assert check_options([(2000, 1)], crit) == (None, [])   # unknown elective: fine


# ---- requests to the endpoint ---------------------------------------------------------------------
async def test_piggybacked_response_with_aiocoap_client(server: CoapEndpoint) -> None:
    ctx = await aiocoap.Context.create_client_context()
    try:
        host, port = server.address
        req = Message(code=Code.POST, uri=f"coap://{host}:{port}/a/b", payload=b"hi")
        resp = await asyncio.wait_for(ctx.request(req).response, 5)
    finally:
        await ctx.shutdown()
    assert resp.code == Code.CONTENT
    assert resp.mtype == ACK
    assert resp.payload == b"a/b|hi"


async def test_non_request_gets_non_response(server: CoapEndpoint, peer: RawPeer) -> None:
    peer.send(encode(Message(code=Code.GET, uri_path=("x",)), NON, 0x1234, b"tk"), server.address)
    resp = await peer.recv_msg()
    assert resp.mtype == NON and resp.code == Code.CONTENT and resp.token == b"tk"
    assert resp.payload == b"x|"


async def test_duplicate_con_gets_same_bytes_handler_once(server: CoapEndpoint, peer: RawPeer) -> None:
    data = encode(Message(code=Code.POST, uri_path=("d",), payload=b"1"), CON, 77, b"t1")
    peer.send(data, server.address)
    first = await peer.recv()
    peer.send(data, server.address)
    second = await peer.recv()
    assert first == second
    assert len(server.test_handler.calls) == 1  # type: ignore[attr-defined]
    assert server.stats.duplicates == 1


async def test_duplicate_non_is_ignored(server: CoapEndpoint, peer: RawPeer) -> None:
    data = encode(Message(code=Code.GET, uri_path=("n",)), NON, 78, b"t2")
    peer.send(data, server.address)
    await peer.recv()
    peer.send(data, server.address)
    assert await peer.nothing()
    assert len(server.test_handler.calls) == 1  # type: ignore[attr-defined]


async def test_same_mid_from_other_port_is_not_a_duplicate(server: CoapEndpoint) -> None:
    a, b = await RawPeer.open(), await RawPeer.open()
    try:
        for p in (a, b):
            p.send(encode(Message(code=Code.GET, uri_path=("s",)), CON, 5, b"x"), server.address)
            assert (await p.recv_msg()).code == Code.CONTENT
        assert len(server.test_handler.calls) == 2  # type: ignore[attr-defined]
    finally:
        a.close()
        b.close()


async def test_empty_con_ping_gets_rst(server: CoapEndpoint, peer: RawPeer) -> None:
    peer.send(raw(CON, 0, 0x0102), server.address)
    assert await peer.recv() == raw(RST, 0, 0x0102)


@pytest.mark.parametrize("name,datagram", [
    ("token length 9", raw(CON, 1, 0x10, b"123456789")),
    ("reserved class 1", raw(CON, 0x21, 0x10, b"a")),
    ("reserved class 7", raw(CON, 0xE1, 0x10, b"a")),
    ("empty with token", raw(CON, 0, 0x10, b"a")),
    ("empty with bytes", raw(CON, 0, 0x10) + b"\xff"),
    ("marker without payload", raw(CON, 1, 0x10, b"a", b"\xb1x\xff")),
    ("option delta 15", raw(CON, 1, 0x10, b"a", b"\xf1x")),
    ("option length 15", raw(CON, 1, 0x10, b"a", b"\x1fx")),
    ("option runs past end", raw(CON, 1, 0x10, b"a", b"\xb5ab")),
    ("token truncated", raw(CON, 1, 0x10)[:4].replace(b"\x40", b"\x44", 1) + b"ab"),
])
async def test_format_errors_in_con_get_rst(server: CoapEndpoint, peer: RawPeer, name: str,
                                            datagram: bytes) -> None:
    peer.send(datagram, server.address)
    assert await peer.recv() == raw(RST, 0, 0x10), name
    assert not server.test_handler.calls  # type: ignore[attr-defined]


@pytest.mark.parametrize("datagram", [
    b"", b"\x40", b"\x40\x01\x00",                       # shorter than the header
    raw(CON, 1, 0x11, b"a").replace(b"\x41", b"\x81", 1),  # version 2
    raw(NON, 1, 0x11, b"123456789"),                     # format error in NON
    raw(NON, 0x21, 0x11, b"a"),                          # reserved class in NON
    raw(NON, 0, 0x11),                                   # empty NON
    raw(ACK, 1, 0x11, b"a", b"\xb1x"),                   # ACK carrying a request
    raw(RST, 0x45, 0x11, b"a"),                          # non-empty RST
    raw(ACK, 0, 0x11),                                   # unexpected empty ACK
    raw(RST, 0, 0x11),                                   # unexpected RST
])
async def test_silently_ignored(server: CoapEndpoint, peer: RawPeer, datagram: bytes) -> None:
    peer.send(datagram, server.address)
    assert await peer.nothing()
    assert not server.test_handler.calls  # type: ignore[attr-defined]


async def test_unrecognized_critical_option(server: CoapEndpoint, peer: RawPeer) -> None:
    # option 9 (OSCORE) is critical and not recognized by this endpoint
    con = raw(CON, int(Code.GET), 0x20, b"k", b"\x91\x00")
    peer.send(con, server.address)
    resp = await peer.recv_msg()
    assert resp.mtype == ACK and resp.mid == 0x20 and resp.code == Code.BAD_OPTION
    assert resp.token == b"k"
    peer.send(raw(NON, int(Code.GET), 0x21, b"k", b"\x91\x00"), server.address)
    assert await peer.recv() == raw(RST, 0, 0x21)
    # bad length of a critical option (Uri-Port, 3 bytes) and a repeated Uri-Host
    peer.send(raw(CON, int(Code.GET), 0x22, b"k", b"\x73\x00\x00\x01"), server.address)
    assert (await peer.recv_msg()).code == Code.BAD_OPTION
    peer.send(raw(CON, int(Code.GET), 0x23, b"k", b"\x31h\x01h"), server.address)
    assert (await peer.recv_msg()).code == Code.BAD_OPTION
    assert not server.test_handler.calls  # type: ignore[attr-defined]


async def test_unknown_elective_option_is_ignored(server: CoapEndpoint, peer: RawPeer) -> None:
    # option 2048 (elective, unknown) via extended delta; then a valid Uri-Path? deltas must
    # increase, so put Uri-Path first: Uri-Path "e" (11), then 2048
    rest = b"\xb1e" + bytes((0xE1,)) + struct.pack("!H", 2048 - 11 - 269) + b"v"
    peer.send(raw(CON, int(Code.GET), 0x24, b"k", rest), server.address)
    resp = await peer.recv_msg()
    assert resp.code == Code.CONTENT and resp.payload == b"e|"


async def test_repeated_elective_option_dropped(server: CoapEndpoint, peer: RawPeer) -> None:
    seen = {}

    async def handler(req: Message, remote: tuple) -> Message:
        seen["cf"] = req.opt.content_format
        return Message(code=Code.CHANGED)
    server.handler = handler
    # Content-Format (12) twice: the supernumerary occurrence is treated as unrecognized and,
    # being elective, ignored with its kind (RFC 7252 §5.4.5 / §5.4.1)
    peer.send(raw(CON, int(Code.POST), 0x25, b"k", b"\xc1\x28\x01\x00"), server.address)
    assert (await peer.recv_msg()).code == Code.CHANGED
    assert seen["cf"] is None


async def test_proxy_uri_gets_505(server: CoapEndpoint, peer: RawPeer) -> None:
    m = Message(code=Code.GET, proxy_uri="coap://example.invalid/x")
    peer.send(encode(m, CON, 0x26), server.address)
    assert (await peer.recv_msg()).code == Code.PROXYING_NOT_SUPPORTED


async def test_handler_exception_gives_500(peer: RawPeer) -> None:
    ep = await CoapEndpoint.create("127.0.0.1", 0, Echo(fail=True), params=FAST)
    try:
        peer.send(encode(Message(code=Code.GET, uri_path=("x",)), CON, 0x27), ep.address)
        resp = await peer.recv_msg()
        assert resp.code == Code.INTERNAL_SERVER_ERROR and resp.mtype == ACK
    finally:
        ep.close()


async def test_slow_handler_separate_response(peer: RawPeer) -> None:
    ep = await CoapEndpoint.create("127.0.0.1", 0, Echo(delay=0.3), params=FAST,
                                   separate_after=0.05)
    try:
        data = encode(Message(code=Code.GET, uri_path=("slow",)), CON, 0x30, b"sl")
        peer.send(data, ep.address)
        assert await peer.recv() == raw(ACK, 0, 0x30)           # Empty ACK first (§5.2.2)
        peer.send(data, ep.address)                              # duplicate: the same Empty ACK
        assert await peer.recv() == raw(ACK, 0, 0x30)
        resp = await peer.recv_msg(2)
        assert resp.mtype == CON and resp.token == b"sl" and resp.payload == b"slow|"
        again = await peer.recv_msg(1)                           # not ACKed -> retransmitted
        assert again.mid == resp.mid and again.mtype == CON
        peer.send(raw(ACK, 0, resp.mid), ep.address)
        assert await peer.nothing(0.3)                           # ACK stops retransmission
        assert ep.stats.separate_responses == 1
    finally:
        ep.close()


async def test_fuzz_never_kills_endpoint(server: CoapEndpoint, peer: RawPeer) -> None:
    rnd = random.Random(7252)
    for _ in range(1500):
        n = rnd.randrange(0, 40)
        data = bytes(rnd.randrange(256) for _ in range(n))
        if rnd.random() < 0.5 and n >= 4:  # make it look like CoAP v1 more often
            data = bytes(((1 << 6) | (data[0] & 0x3F),)) + data[1:]
        peer.send(data, server.address)
    await asyncio.sleep(0.3)
    while not peer.queue.empty():
        peer.queue.get_nowait()
    peer.send(encode(Message(code=Code.GET, uri_path=("alive",)), CON, 0xBEEF, b"ok"), server.address)
    for _ in range(5):  # fuzz replies may still trickle in; find ours
        m = await peer.recv_msg()
        if m.mid == 0xBEEF and m.code == Code.CONTENT:
            break
    else:
        pytest.fail("endpoint did not answer after fuzzing")
    assert m.payload == b"alive|"


# ---- requests from the endpoint -----------------------------------------------------------------
@pytest.fixture
async def client():
    ep = await CoapEndpoint.create("127.0.0.1", 0, None, params=FAST)
    yield ep
    ep.close()


async def test_request_to_aiocoap_server(client: CoapEndpoint) -> None:
    import aiocoap.resource as resource

    class Hello(resource.Resource):
        async def render_get(self, request: Message) -> Message:
            return Message(code=Code.CONTENT, payload=b"hello")

    site = resource.Site()
    site.add_resource(["hello"], Hello())
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a free port for aiocoap
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", port))
    try:
        resp = await client.request(Message(code=Code.GET, uri_path=("hello",)), ("127.0.0.1", port),
                                    timeout=3)
        assert resp.code == Code.CONTENT and resp.payload == b"hello"
    finally:
        await ctx.shutdown()


async def test_request_retransmits_then_times_out(client: CoapEndpoint, peer: RawPeer) -> None:
    task = asyncio.ensure_future(client.request(Message(code=Code.GET, uri_path=("x",)), peer.address))
    first = await peer.recv()
    retrans = [await peer.recv(1) for _ in range(FAST.max_retransmit)]
    assert all(r == first for r in retrans)                      # same MID and bytes (§4.2)
    with pytest.raises(CoapTimeout):
        await asyncio.wait_for(task, 2)
    assert await peer.nothing(0.2)


async def test_request_reset(client: CoapEndpoint, peer: RawPeer) -> None:
    task = asyncio.ensure_future(client.request(Message(code=Code.GET, uri_path=("x",)), peer.address))
    req = await peer.recv_msg()
    peer.send(raw(RST, 0, req.mid), client.address)
    with pytest.raises(CoapReset):
        await asyncio.wait_for(task, 2)


async def test_separate_response_is_acked(client: CoapEndpoint, peer: RawPeer) -> None:
    task = asyncio.ensure_future(client.request(Message(code=Code.GET, uri_path=("x",)), peer.address))
    req = await peer.recv_msg()
    peer.send(raw(ACK, 0, req.mid), client.address)
    assert await peer.nothing(0.2)                               # no retransmission after ACK
    sep = Message(code=Code.CONTENT, payload=b"late")
    peer.send(encode(sep, CON, 0x4000, req.token), client.address)
    assert await peer.recv() == raw(ACK, 0, 0x4000)
    resp = await asyncio.wait_for(task, 2)
    assert resp.payload == b"late"
    peer.send(encode(Message(code=Code.CONTENT, payload=b"late"), CON, 0x4000, req.token),
              client.address)                                    # duplicate -> same ACK again
    assert await peer.recv() == raw(ACK, 0, 0x4000)


async def test_response_with_unknown_token_gets_rst(client: CoapEndpoint, peer: RawPeer) -> None:
    peer.send(encode(Message(code=Code.CONTENT), CON, 0x4100, b"nope"), client.address)
    assert await peer.recv() == raw(RST, 0, 0x4100)
    peer.send(encode(Message(code=Code.CONTENT), NON, 0x4101, b"nope"), client.address)
    assert await peer.recv() == raw(RST, 0, 0x4101)


async def test_non_request(client: CoapEndpoint, peer: RawPeer) -> None:
    m = Message(code=Code.GET, uri_path=("x",))
    m.mtype = NON
    task = asyncio.ensure_future(client.request(m, peer.address))
    req = await peer.recv_msg()
    assert req.mtype == NON
    peer.send(encode(Message(code=Code.CONTENT, payload=b"n"), NON, 0x4200, req.token), client.address)
    assert (await asyncio.wait_for(task, 2)).payload == b"n"


async def test_block2_reassembly(client: CoapEndpoint, peer: RawPeer) -> None:
    body = bytes(range(256)) * 5  # 1280 bytes -> 80 blocks of 16 would be many; use szx 6 (1024)
    task = asyncio.ensure_future(client.request(Message(code=Code.GET, uri_path=("big",)), peer.address))
    for num in range(2):
        req = await peer.recv_msg()
        if num:
            assert req.opt.block2.block_number == num and req.opt.uri_path == ("big",)
        chunk = body[num * 1024:(num + 1) * 1024]
        resp = Message(code=Code.CONTENT, payload=chunk)
        resp.opt.block2 = BlockOption.BlockwiseTuple(num, num == 0, 6)
        peer.send(encode(resp, ACK, req.mid, req.token), client.address)
    full = await asyncio.wait_for(task, 2)
    assert full.payload == body and full.opt.block2 is None


async def test_ping(client: CoapEndpoint, server: CoapEndpoint, peer: RawPeer) -> None:
    assert await client.ping(server.address, timeout=1) is True
    assert await client.ping(peer.address, timeout=0.3) is False


# ---- observe (client side) ---------------------------------------------------------------------
async def test_observe_lifecycle(client: CoapEndpoint, peer: RawPeer) -> None:
    obs = client.observe(Message(code=Code.GET, uri_path=("3", "0", "9")), peer.address)
    req = await peer.recv_msg()
    assert req.opt.observe == 0
    first = Message(code=Code.CONTENT, payload=b"90", observe=5)
    peer.send(encode(first, ACK, req.mid, req.token), client.address)
    assert (await asyncio.wait_for(obs.response, 1)).payload == b"90"
    assert obs.established
    got: list[bytes] = []
    obs.add_callback(lambda m: got.append(m.payload))
    peer.send(encode(Message(code=Code.CONTENT, payload=b"80", observe=6), CON, 0x500, req.token),
              client.address)
    assert await peer.recv() == raw(ACK, 0, 0x500)                # CON notification ACKed
    peer.send(encode(Message(code=Code.CONTENT, payload=b"70", observe=7), NON, 0x501, req.token),
              client.address)
    peer.send(encode(Message(code=Code.CONTENT, payload=b"old", observe=6), NON, 0x502, req.token),
              client.address)                                     # stale (RFC 7641 §3.4)
    n1 = await asyncio.wait_for(obs.__anext__(), 1)
    n2 = await asyncio.wait_for(obs.__anext__(), 1)
    assert (n1.payload, n2.payload) == (b"80", b"70")
    await asyncio.sleep(0.05)
    assert got == [b"80", b"70"] and client.stats.stale_notifications == 1
    # proactive cancel: GET with Observe=1 and the same token (RFC 7641 §3.6)
    cancel = asyncio.ensure_future(obs.cancel(timeout=1))
    creq = await peer.recv_msg()
    assert creq.opt.observe == 1 and creq.token == req.token and creq.opt.uri_path == ("3", "0", "9")
    peer.send(encode(Message(code=Code.CONTENT, payload=b"60"), ACK, creq.mid, creq.token), client.address)
    assert (await asyncio.wait_for(cancel, 1)).payload == b"60"
    assert obs.ended
    peer.send(encode(Message(code=Code.CONTENT, payload=b"x", observe=9), CON, 0x503, req.token),
              client.address)
    assert await peer.recv() == raw(RST, 0, 0x503)               # no longer interested


async def test_observe_reactive_cancel_and_final(client: CoapEndpoint, peer: RawPeer) -> None:
    obs = client.observe(Message(code=Code.GET, uri_path=("1",)), peer.address)
    req = await peer.recv_msg()
    peer.send(encode(Message(code=Code.CONTENT, observe=1), ACK, req.mid, req.token), client.address)
    await asyncio.wait_for(obs.response, 1)
    obs.cancel_reactive()
    peer.send(encode(Message(code=Code.CONTENT, observe=2), NON, 0x600, req.token), client.address)
    assert await peer.recv() == raw(RST, 0, 0x600)
    # a notification with an error code ends an observation (RFC 7641 §3.2)
    obs2 = client.observe(Message(code=Code.GET, uri_path=("2",)), peer.address)
    req2 = await peer.recv_msg()
    peer.send(encode(Message(code=Code.CONTENT, observe=1), ACK, req2.mid, req2.token), client.address)
    await asyncio.wait_for(obs2.response, 1)
    peer.send(encode(Message(code=Code.NOT_FOUND), CON, 0x601, req2.token), client.address)
    await peer.recv()
    items = [m async for m in obs2]
    assert [m.code for m in items] == [Code.NOT_FOUND] and obs2.ended


async def test_observe_not_established(client: CoapEndpoint, peer: RawPeer) -> None:
    obs = client.observe(Message(code=Code.GET, uri_path=("1",)), peer.address)
    req = await peer.recv_msg()
    peer.send(encode(Message(code=Code.CONTENT, payload=b"v"), ACK, req.mid, req.token), client.address)
    assert (await asyncio.wait_for(obs.response, 1)).payload == b"v"
    assert not obs.established and obs.ended
