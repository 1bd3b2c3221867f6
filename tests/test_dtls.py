"""DTLS 1.2 PSK bridges (reference/security/dtls.py), loopback only, free ports.

TLS_PSK_WITH_AES_128_CCM_8 is the mandatory PSK suite (OMA-TS-LightweightM2M_Transport-V1_1_1 §5.2,
RFC 7925 §4.2); cookie exchange per RFC 6347 §4.2.1, retransmission per §4.2.4.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from reference.security import (
    DEFAULT_CIPHERS,
    DtlsClientBridge,
    DtlsHandshakeError,
    DtlsServerBridge,
    DtlsSession,
)

CCM8 = "TLS-PSK-WITH-AES-128-CCM-8"
PSKS: dict[bytes, bytes] = {
    b"alice": bytes.fromhex("000102030405060708090a0b0c0d0e0f"),
    b"bob": b"bob-secret-key-0",
    b"carol": b"\xff" * 16,
    b"dave": b"dave's key",
    b"urn:imei:490154203237518": bytes(range(32)),
}
WAIT = 3.0  # upper bound for any single expected event on loopback


class Udp(asyncio.DatagramProtocol):
    """Plain UDP endpoint: records datagrams, optionally echoes them back prefixed."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.queue: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        src = (addr[0], addr[1])
        self.received.append((data, src))
        self.queue.put_nowait((data, src))
        if self.echo and self.transport is not None:
            self.transport.sendto(b"echo:" + data, addr)

    @property
    def addr(self) -> tuple[str, int]:
        assert self.transport is not None
        a = self.transport.get_extra_info("sockname")
        return (a[0], a[1])

    def send(self, data: bytes, dest: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, dest)

    async def recv(self, timeout: float = WAIT) -> tuple[bytes, tuple[str, int]]:
        return await asyncio.wait_for(self.queue.get(), timeout)


async def udp(echo: bool = False) -> Udp:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: Udp(echo), local_addr=("127.0.0.1", 0)
    )
    return proto


class Recorder:
    def __init__(self) -> None:
        self.lookups: list[bytes] = []
        self.opened: list[DtlsSession] = []
        self.closed: list[DtlsSession] = []
        self.closed_event = asyncio.Event()

    def psk(self, identity: bytes) -> bytes | None:
        self.lookups.append(identity)
        return PSKS.get(identity)

    def on_session(self, s: DtlsSession) -> None:
        self.opened.append(s)

    def on_close(self, s: DtlsSession) -> None:
        self.closed.append(s)
        self.closed_event.set()


@asynccontextmanager
async def server_stack(**kw: Any) -> AsyncIterator[tuple[DtlsServerBridge, Udp, Recorder]]:
    """Echo "CoAP" endpoint behind a DTLS server bridge."""
    echo = await udp(echo=True)
    rec = Recorder()
    bridge = DtlsServerBridge(
        ("127.0.0.1", 0), echo.addr, rec.psk, on_session=rec.on_session, on_close=rec.on_close,
        **kw,
    )
    await bridge.start()
    try:
        yield bridge, echo, rec
    finally:
        await bridge.close()
        assert echo.transport is not None
        echo.transport.close()


async def exchange(client: DtlsClientBridge, coap: Udp, payload: bytes) -> bytes:
    coap.send(payload, client.local_address)
    data, src = await coap.recv()
    assert src == client.local_address
    return data


async def wait_until(pred: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _close(u: Udp) -> None:
    assert u.transport is not None
    u.transport.close()


async def test_default_cipher_is_mandatory_lwm2m_psk_suite() -> None:
    assert DEFAULT_CIPHERS == (CCM8,)


async def test_handshake_and_echo_through_both_bridges() -> None:
    async with server_stack() as (server, echo, rec):
        coap = await udp()
        client = DtlsClientBridge(server.address, b"alice", PSKS[b"alice"], handshake_timeout=WAIT)
        try:
            await client.connect()
            assert client.connected
            assert await exchange(client, coap, b"hello") == b"echo:hello"
            assert await exchange(client, coap, b"\x40\x01\x12\x34") == b"echo:\x40\x01\x12\x34"

            # What the CoAP endpoint saw, and who is behind it.
            assert [d for d, _ in echo.received] == [b"hello", b"\x40\x01\x12\x34"]
            src = echo.received[0][1]
            session = server.session_for(src)
            assert session is not None
            assert session.identity == b"alice"
            assert session.peer == client.source_address
            assert session.local_addr == src
            assert server.session_for(("127.0.0.1", 1)) is None
            assert rec.opened == [session]
            assert rec.lookups == [b"alice"]
            # Negotiated suite on both ends: the LwM2M mandatory PSK suite.
            assert client.cipher == CCM8
            assert session.cipher == CCM8
            # The server answered the first cookie-less ClientHello with a HelloVerifyRequest.
            assert server.stats["hello_verify"] >= 1
        finally:
            await client.close()
            _close(coap)


async def test_concurrent_clients_get_their_own_identity() -> None:
    ids = [b"alice", b"bob", b"carol", b"dave", b"urn:imei:490154203237518"]
    async with server_stack() as (server, echo, _rec):
        clients = [DtlsClientBridge(server.address, i, PSKS[i], handshake_timeout=WAIT) for i in ids]
        coaps = [await udp() for _ in ids]
        try:
            await asyncio.gather(*(c.connect() for c in clients))
            assert len(server.sessions) == len(ids)
            replies = await asyncio.gather(
                *(exchange(c, u, b"from " + i) for c, u, i in zip(clients, coaps, ids))
            )
            assert replies == [b"echo:from " + i for i in ids]
            for data, src in echo.received:
                session = server.session_for(src)
                assert session is not None
                assert data == b"from " + session.identity
            # Server-initiated datagram to each session reaches only that session's client.
            for i in ids:
                session = next(s for s in server.sessions if s.identity == i)
                assert echo.transport is not None
                echo.transport.sendto(b"to " + i, session.local_addr)
            for c, u, i in zip(clients, coaps, ids):
                data, _ = await u.recv()
                assert data == b"to " + i
            await asyncio.sleep(0.05)
            assert all(u.queue.empty() for u in coaps)
        finally:
            for c in clients:
                await c.close()
            for u in coaps:
                _close(u)


@pytest.mark.parametrize(
    ("identity", "key"),
    [(b"alice", b"definitely-wrong"), (b"mallory", b"whatever-key-123")],
    ids=["wrong-key", "unknown-identity"],
)
async def test_bad_credentials_fail_and_forward_nothing(identity: bytes, key: bytes) -> None:
    async with server_stack() as (server, echo, rec):
        coap = await udp()
        client = DtlsClientBridge(server.address, identity, key, handshake_timeout=WAIT)
        try:
            t0 = time.monotonic()
            with pytest.raises(DtlsHandshakeError) as info:
                await client.connect()
            # Rejected by an alert, not by running into the timeout.
            assert time.monotonic() - t0 < WAIT
            assert "within" not in str(info.value)
            assert not client.connected
            assert rec.lookups == [identity]
            assert server.sessions == [] and rec.opened == []
            assert server.stats["handshakes_failed"] == 1
            # Plain data sent to the unconnected bridge goes nowhere.
            coap.send(b"must not pass", client.local_address)
            await asyncio.sleep(0.1)
            assert echo.received == []
            assert coap.queue.empty()
        finally:
            await client.close()
            _close(coap)


async def test_non_utf8_identity_is_rejected_up_front() -> None:
    with pytest.raises(ValueError):
        DtlsClientBridge(("127.0.0.1", 9), b"\xff\xfe", b"key")


async def test_garbage_does_not_kill_the_server() -> None:
    async with server_stack() as (server, echo, _rec):
        rnd = random.Random(7252)
        junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        junk.bind(("127.0.0.1", 0))
        try:
            hello_hdr = bytes([22, 0xFE, 0xFD, 0, 0]) + b"\x00" * 6
            datagrams = [
                b"",
                b"\x00",
                b"\x16\xfe\xfd",  # truncated record header
                hello_hdr + struct.pack("!H", 40) + b"\x01" + b"\x00" * 39,  # hollow ClientHello
                hello_hdr + struct.pack("!H", 4000) + b"\x01\x00",  # lying length
                bytes([23, 0xFE, 0xFD, 0, 1]) + b"\x00" * 6 + struct.pack("!H", 20) + b"x" * 20,
                b"\x40\x01\x00\x01",  # plain CoAP to a coaps port
                bytes(rnd.getrandbits(8) for _ in range(20000)),  # oversized
            ] + [bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 300))) for _ in range(200)]
            for d in datagrams:
                junk.sendto(d, server.address)
            await asyncio.sleep(0.2)
            assert server.sessions == []
            assert echo.received == []
            assert server.stats["dropped"] > 0
            # Still serving.
            coap = await udp()
            client = DtlsClientBridge(server.address, b"bob", PSKS[b"bob"], handshake_timeout=WAIT)
            try:
                await client.connect()
                assert await exchange(client, coap, b"alive?") == b"echo:alive?"
            finally:
                await client.close()
                _close(coap)
        finally:
            junk.close()


async def test_garbage_from_the_session_address_keeps_the_session() -> None:
    """Unauthenticated records on an established association are discarded (RFC 6347 §4.1.2.7)."""
    async with server_stack() as (server, _echo, _rec):
        coap = await udp()
        client = DtlsClientBridge(server.address, b"alice", PSKS[b"alice"], handshake_timeout=WAIT)
        try:
            await client.connect()
            # Inject from the client's own DTLS socket: forged app-data record and random bytes.
            assert client._public is not None
            client._public.send(bytes([23, 0xFE, 0xFD, 0, 1]) + b"\x00\x00\x00\x00\x00\x63"
                                + struct.pack("!H", 30) + b"\x55" * 30)
            client._public.send(b"\x99" * 50)
            await asyncio.sleep(0.1)
            assert len(server.sessions) == 1
            assert await exchange(client, coap, b"still here") == b"echo:still here"
        finally:
            await client.close()
            _close(coap)


async def test_rehandshake_from_same_address_replaces_session() -> None:
    async with server_stack() as (server, echo, rec):
        coap = await udp()
        client = DtlsClientBridge(server.address, b"carol", PSKS[b"carol"], handshake_timeout=WAIT)
        try:
            await client.connect()
            assert await exchange(client, coap, b"one") == b"echo:one"
            first = server.sessions[0]

            await client.reconnect()  # same source port: replaces the session
            assert len(server.sessions) == 1
            second = server.sessions[0]
            assert second.peer == first.peer and second.local_addr == first.local_addr
            assert second.established_at >= first.established_at
            assert rec.closed == [first] and len(rec.opened) == 2
            assert await exchange(client, coap, b"two") == b"echo:two"

            await client.reconnect(new_source_port=True)  # a new DTLS peer
            assert client.source_address != first.peer
            assert await exchange(client, coap, b"three") == b"echo:three"
            third = server.session_for(echo.received[-1][1])
            assert third is not None and third.peer == client.source_address
            assert third.identity == b"carol"
            assert len(server.sessions) == 2  # the old address lingers until its idle timeout
        finally:
            await client.close()
            _close(coap)


async def test_idle_session_times_out_and_client_auto_reconnects() -> None:
    async with server_stack(session_timeout=0.3) as (server, _echo, rec):
        coap = await udp()
        client = DtlsClientBridge(
            server.address, b"dave", PSKS[b"dave"], handshake_timeout=WAIT, auto_reconnect=True
        )
        try:
            await client.connect()
            assert await exchange(client, coap, b"ping") == b"echo:ping"
            local = server.sessions[0].local_addr
            await asyncio.wait_for(rec.closed_event.wait(), WAIT)
            assert server.session_for(local) is None and server.sessions == []
            # The close_notify reached the client.
            await wait_until(lambda: not client.connected)
            # Next datagram triggers a new handshake and is delivered after it.
            assert await exchange(client, coap, b"again") == b"echo:again"
            assert client.connected and len(server.sessions) == 1
        finally:
            await client.close()
            _close(coap)


async def test_client_close_sends_close_notify() -> None:
    async with server_stack() as (server, _echo, rec):
        client = DtlsClientBridge(server.address, b"bob", PSKS[b"bob"], handshake_timeout=WAIT)
        await client.connect()
        assert len(server.sessions) == 1
        await client.close()
        await asyncio.wait_for(rec.closed_event.wait(), WAIT)
        assert server.sessions == []


async def test_handshake_timeout_and_retransmission_against_silent_peer() -> None:
    silent = await udp()
    client = DtlsClientBridge(silent.addr, b"alice", PSKS[b"alice"], handshake_timeout=0.6,
                              retransmit_min=0.1)
    try:
        t0 = time.monotonic()
        with pytest.raises(DtlsHandshakeError):
            await client.connect()
        assert time.monotonic() - t0 < 0.6 + 0.5
        # ClientHello was retransmitted (initial + at least one retry; RFC 6347 §4.2.4).
        hellos = [d for d, _ in silent.received if d[0] == 22 and d[13] == 1]
        assert len(hellos) >= 2
    finally:
        await client.close()
        _close(silent)


class LossyProxy(asyncio.DatagramProtocol):
    """Client-facing UDP relay to the server that drops chosen server->client datagrams."""

    def __init__(self, server: tuple[str, int], drop_down: set[int]) -> None:
        self.server = server
        self.drop_down = drop_down
        self.down_count = 0
        self.dropped: list[bytes] = []
        self.client: Any = None
        self.transport: Any = None
        self.upstream: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.client = addr
        self.upstream.sendto(data)

    def from_server(self, data: bytes) -> None:
        self.down_count += 1
        if self.down_count in self.drop_down:
            self.dropped.append(data)
            return
        self.transport.sendto(data, self.client)


class _Up(asyncio.DatagramProtocol):
    def __init__(self, proxy: LossyProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.proxy.from_server(data)


@pytest.mark.parametrize(
    ("lost", "first_record"),
    [({1}, (22, 3)), ({2}, (22, 2)), ({3}, (20, None))],
    ids=["hello-verify", "server-hello", "ccs-finished"],
)
async def test_handshake_survives_lost_server_flight(
    lost: set[int], first_record: tuple[int, int | None]
) -> None:
    """Each server flight lost once; retransmission (RFC 6347 §4.2.4) must recover. The last case
    needs the *established* server to resend its final flight when the client retransmits."""
    loop = asyncio.get_running_loop()
    async with server_stack() as (server, _echo, _rec):
        _, proxy = await loop.create_datagram_endpoint(
            lambda: LossyProxy(server.address, lost), local_addr=("127.0.0.1", 0)
        )
        up, _ = await loop.create_datagram_endpoint(
            lambda: _Up(proxy), remote_addr=server.address
        )
        proxy.upstream = up
        coap = await udp()
        client = DtlsClientBridge(proxy.transport.get_extra_info("sockname"), b"alice",
                                  PSKS[b"alice"], handshake_timeout=WAIT, retransmit_min=0.1)
        try:
            await client.connect()
            assert len(proxy.dropped) == 1
            # The datagram dropped is the flight we meant: HelloVerifyRequest (handshake type 3),
            # ServerHello (2), or ChangeCipherSpec(+Finished).
            d = proxy.dropped[0]
            assert d[0] == first_record[0]
            if first_record[1] is not None:
                assert d[13] == first_record[1]
            assert await exchange(client, coap, b"after loss") == b"echo:after loss"
        finally:
            await client.close()
            _close(coap)
            up.close()
            proxy.transport.close()


async def test_server_abandons_handshake_of_vanished_peer() -> None:
    loop = asyncio.get_running_loop()
    async with server_stack(handshake_timeout=0.3) as (server, echo, _rec):
        # Everything after the HelloVerifyRequest is lost: the peer "disappears" mid-handshake.
        _, proxy = await loop.create_datagram_endpoint(
            lambda: LossyProxy(server.address, set(range(2, 1000))), local_addr=("127.0.0.1", 0)
        )
        up, _ = await loop.create_datagram_endpoint(lambda: _Up(proxy), remote_addr=server.address)
        proxy.upstream = up
        client = DtlsClientBridge(proxy.transport.get_extra_info("sockname"), b"alice",
                                  PSKS[b"alice"], handshake_timeout=0.5, retransmit_min=0.1)
        try:
            with pytest.raises(DtlsHandshakeError):
                await client.connect()
            await wait_until(lambda: server.pending_handshakes == 0)
            # >= 1: a retransmitted cookie-bearing ClientHello may open (and time out) another one.
            assert server.stats["handshakes_failed"] >= 1
            assert server.stats["handshakes_ok"] == 0
            assert server.sessions == [] and echo.received == []
        finally:
            await client.close()
            up.close()
            proxy.transport.close()


async def test_invalid_cipher_list_is_refused() -> None:
    with pytest.raises(ValueError):
        DtlsServerBridge(("127.0.0.1", 0), ("127.0.0.1", 9), lambda i: None, ciphers=("NOPE",))


# -- interoperability with an independent DTLS implementation (OpenSSL), when installed ----------

def _openssl_has_ccm8() -> bool:
    import shutil
    import subprocess

    exe = shutil.which("openssl")
    if exe is None:
        return False
    try:
        out = subprocess.run([exe, "ciphers", "PSK-AES128-CCM8"], capture_output=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and b"PSK-AES128-CCM8" in out.stdout


needs_openssl = pytest.mark.skipif(not _openssl_has_ccm8(), reason="openssl with PSK-AES128-CCM8")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await asyncio.wait_for(proc.communicate(), WAIT)


@needs_openssl
async def test_openssl_client_against_server_bridge() -> None:
    async with server_stack() as (server, echo, _rec):
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-dtls1_2", "-quiet", "-cipher", "PSK-AES128-CCM8",
            "-psk_identity", "alice", "-psk", PSKS[b"alice"].hex(),
            "-connect", f"{server.address[0]}:{server.address[1]}",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(b"hello from openssl\n")
            await proc.stdin.drain()
            data, src = await echo.recv()
            assert data == b"hello from openssl\n"
            session = server.session_for(src)
            assert session is not None and session.identity == b"alice"
            assert session.cipher == CCM8
            reply = await asyncio.wait_for(proc.stdout.readexactly(len(b"echo:" + data)), WAIT)
            assert reply == b"echo:hello from openssl\n"
        finally:
            await _stop(proc)


@needs_openssl
async def test_client_bridge_against_openssl_server() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # free port picked at run time
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_server", "-dtls1_2", "-quiet", "-nocert", "-cipher", "PSK-AES128-CCM8",
        "-psk_identity", "alice", "-psk", PSKS[b"alice"].hex(), "-accept", f"127.0.0.1:{port}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    coap = await udp()
    # No wait for s_server start-up: ClientHello retransmission covers it.
    client = DtlsClientBridge(("127.0.0.1", port), b"alice", PSKS[b"alice"],
                              handshake_timeout=WAIT, retransmit_min=0.1)
    try:
        await client.connect()
        assert client.cipher == CCM8
        coap.send(b"ping from bridge\n", client.local_address)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), WAIT)
        assert line == b"ping from bridge\n"
    finally:
        await client.close()
        _close(coap)
        await _stop(proc)
