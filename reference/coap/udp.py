"""A lean UDP transport for the CoAP endpoint.

asyncio's datagram transport reads one datagram per readiness event, so every datagram costs a
full event-loop iteration (an epoll call and the scheduling around it). :class:`BatchUdpTransport`
drains up to ``batch`` datagrams per readiness event and sends with a direct non-blocking
``sendto`` (queued, in order, only when the kernel buffer is full). It offers the subset of
:class:`asyncio.DatagramTransport` the endpoint uses and calls the protocol's
``connection_made`` / ``datagram_received`` / ``error_received`` / ``connection_lost``.
"""
from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from typing import Any

_MAX_DATAGRAM = 65535
_MAX_QUEUE = 4096


class BatchUdpTransport(asyncio.DatagramTransport):
    """One bound, non-blocking UDP socket driven by ``loop.add_reader``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.DatagramProtocol, batch: int = 64) -> None:
        super().__init__()
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._batch = batch
        self._closing = False
        self._queue: deque[tuple[bytes, Any]] = deque()
        self._writing = False
        self._extra = {"socket": sock, "sockname": sock.getsockname()}
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._read_ready)
        protocol.connection_made(self)

    @classmethod
    def bind(cls, loop: asyncio.AbstractEventLoop, host: str, port: int,
             protocol: asyncio.DatagramProtocol, batch: int = 64) -> "BatchUdpTransport":
        """Bind ``(host, port)`` (IPv4 or IPv6 literal or name; port 0 = any free one)."""
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(info[0], socket.SOCK_DGRAM)
        try:
            sock.bind(info[4])
        except BaseException:
            sock.close()
            raise
        return cls(loop, sock, protocol, batch)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def _read_ready(self) -> None:
        sock = self._sock
        proto = self._protocol
        for _ in range(self._batch):
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ECONNREFUSED reported for an earlier sendto
                proto.error_received(e)
                continue
            proto.datagram_received(data, addr)
            if self._closing:
                return

    def sendto(self, data: bytes, addr: Any = None) -> None:  # type: ignore[override]
        if self._closing:
            return
        if not self._queue:
            try:
                self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as e:
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    self._protocol.error_received(e)
                    return
        if len(self._queue) < _MAX_QUEUE:  # beyond that, drop like a full network would
            self._queue.append((data, addr))
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._sock.fileno(), self._write_ready)

    def _write_ready(self) -> None:
        q = self._queue
        while q:
            data, addr = q[0]
            try:
                self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._protocol.error_received(e)
            q.popleft()
        self._loop.remove_writer(self._sock.fileno())
        self._writing = False

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        fd = self._sock.fileno()
        self._loop.remove_reader(fd)
        if self._writing:
            self._loop.remove_writer(fd)
        self._queue.clear()
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()
