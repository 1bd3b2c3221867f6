"""Free ports picked at run time (never fixed ports: tests run in parallel under pytest-xdist)."""
from __future__ import annotations

import asyncio
import socket

LOOPBACK = "127.0.0.1"


def free_port(kind: str = "udp", host: str = LOOPBACK) -> int:
    """A port that was free a moment ago on ``host`` (``kind`` udp|tcp).

    Prefer letting the DUT bind port 0 and report its ports on its READY line; this is for
    implementations that need a number up front. The kernel hands out ephemeral ports
    pseudo-randomly, so two xdist workers practically never collide.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    stype = socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM
    with socket.socket(family, stype) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def tcp_ready(host: str, port: int, timeout: float) -> bool:
    """True once a TCP connect to host:port succeeds within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), max(0.1, deadline - loop.time()))
            w.close()
            return True
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.05)
    return False


async def coap_ping_ready(host: str, port: int, timeout: float) -> bool:
    """True once a CoAP ping (empty CON, RFC 7252 §4.3) gets an RST or ACK within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got = asyncio.Event()

    class _P(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            # empty RST (type 3) or ACK (type 2) echoing our message ID 0x1234
            if len(data) >= 4 and (data[0] >> 6) == 1 and data[2:4] == b"\x12\x34":
                got.set()

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, _ = await loop.create_datagram_endpoint(_P, family=family, remote_addr=(host, port))
    try:
        while loop.time() < deadline and not got.is_set():
            transport.sendto(bytes([0x40, 0x00, 0x12, 0x34]))  # ver 1, CON, TKL 0, code 0.00, MID 0x1234
            try:
                await asyncio.wait_for(got.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
        return got.is_set()
    finally:
        transport.close()
