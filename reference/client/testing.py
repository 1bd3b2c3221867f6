"""A small recording stand-in for an LwM2M Server / Bootstrap-Server on aiocoap, for tests.

It answers Register (POST /rd → 2.01 + Location-Path rd/N), Update (POST /rd/N → 2.04), De-register
(DELETE /rd/N → 2.02) and Bootstrap-Request (POST /bs → 2.04), records every request it receives,
and can send requests (DM / bootstrap operations, Observe) to the client from the same socket, as
a real server does. Response codes are configurable to exercise failure paths. This is a test
utility, not a server implementation (see reference/server for that).
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import aiocoap
from aiocoap import Code, Message
from aiocoap import interfaces as coap_interfaces
from aiocoap.numbers.types import CON, NON, RST
from aiocoap.numbers.codes import EMPTY


@dataclass
class Recorded:
    code: Code
    path: tuple[str, ...]
    query: tuple[str, ...]
    payload: bytes
    content_format: int | None
    remote: tuple[str, int]
    at: float = field(default_factory=time.monotonic)

    def q(self, name: str) -> str | None:
        """Value of query parameter ``name`` ("" for a flag without value), None when absent."""
        for item in self.query:
            k, eq, v = item.partition("=")
            if k == name:
                return v if eq else ""
        return None


@dataclass
class Notification:
    code: Code
    payload: bytes
    content_format: int | None
    observe: int | None
    mtype: Any
    at: float


class _Site(coap_interfaces.Resource):
    def __init__(self, owner: "StandInServer") -> None:
        super().__init__()
        self.owner = owner

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return True

    async def render(self, request: Message) -> Message:
        return await self.owner._render(request)


class StandInServer:
    """Recording stand-in server bound to ``host`` on a free port."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.ctx: aiocoap.Context | None = None
        self.requests: list[Recorded] = []
        self.register_code = Code.CREATED
        self.update_code = Code.CHANGED
        self.deregister_code = Code.DELETED
        self.bootstrap_code = Code.CHANGED
        self.silent = False  # drop everything (no response at all)
        self.on_bootstrap_request: Callable[[Recorded], Any] | None = None
        self._ids = itertools.count(1)
        self._cond = asyncio.Condition()
        self.rst_tokens: set[bytes] = set()  # answer NON notifications on these tokens with RST
        self.rst_sent = 0

    @property
    def uri(self) -> str:
        return f"coap://{self.host}:{self.port}"

    async def start(self) -> "StandInServer":
        self.ctx = await aiocoap.Context.create_server_context(_Site(self), bind=(self.host, 0), transports=["udp6"])
        mi = self.ctx.request_interfaces[0].token_interface.message_interface
        self.port = mi.transport.get_extra_info("socket").getsockname()[1]
        mm = self.ctx.request_interfaces[0].token_interface
        orig = mm.dispatch_message

        def dispatch(message: Message) -> None:
            if message.code.is_response() and message.mtype in (NON, CON) and bytes(message.token) in self.rst_tokens:
                rst = Message(code=EMPTY, payload=b"")
                rst.mtype, rst.mid = RST, message.mid
                rst.remote = message.remote.as_response_address()
                mm._send_initially(rst)
                self.rst_sent += 1
                return
            orig(message)

        mm.dispatch_message = dispatch
        return self

    async def stop(self) -> None:
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None

    async def _render(self, request: Message) -> Message:
        sa = request.remote.sockaddr
        import ipaddress
        ip = ipaddress.ip_address(sa[0])
        host = str(ip.ipv4_mapped) if getattr(ip, "ipv4_mapped", None) else str(ip)
        rec = Recorded(request.code, tuple(request.opt.uri_path), tuple(request.opt.uri_query),
                       bytes(request.payload), request.opt.content_format, (host, sa[1]))
        async with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
        if self.silent:
            await asyncio.sleep(3600)
        path = rec.path
        if path == ("rd",) and request.code == Code.POST:
            if self.register_code != Code.CREATED:
                return Message(code=self.register_code)
            return Message(code=Code.CREATED, location_path=("rd", str(next(self._ids))))
        if len(path) == 2 and path[0] == "rd":
            if request.code == Code.POST:
                return Message(code=self.update_code)
            if request.code == Code.DELETE:
                return Message(code=self.deregister_code)
        if path == ("bs",) and request.code == Code.POST:
            if self.on_bootstrap_request is not None and self.bootstrap_code == Code.CHANGED:
                res = self.on_bootstrap_request(rec)
                if asyncio.iscoroutine(res):
                    asyncio.get_running_loop().create_task(res)
            return Message(code=self.bootstrap_code)
        return Message(code=Code.NOT_FOUND)

    # ---- waiting ------------------------------------------------------------------------------
    async def wait_for(self, pred: Callable[[Recorded], bool], timeout: float = 5.0, since: int = 0) -> Recorded:
        """The first recorded request from index ``since`` matching ``pred`` (bounded wait)."""
        async def _wait() -> Recorded:
            async with self._cond:
                while True:
                    for r in self.requests[since:]:
                        if pred(r):
                            return r
                    await self._cond.wait()
        return await asyncio.wait_for(_wait(), timeout)

    def registers(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == ("rd",) and r.code == Code.POST]

    def updates(self) -> list[Recorded]:
        return [r for r in self.requests if len(r.path) == 2 and r.path[0] == "rd" and r.code == Code.POST]

    # ---- requests to the client -------------------------------------------------------------
    async def request(self, client: tuple[str, int], code: Code, path: str, payload: bytes = b"", *,
                      content_format: int | None = None, accept: int | None = None,
                      query: tuple[str, ...] = (), timeout: float = 5.0) -> Message:
        assert self.ctx is not None
        segs = tuple(s for s in path.split("/") if s)
        msg = Message(code=code, uri=f"coap://{client[0]}:{client[1]}", uri_path=segs, uri_query=query, payload=payload)
        if content_format is not None:
            msg.opt.content_format = content_format
        if accept is not None:
            msg.opt.accept = accept
        return await asyncio.wait_for(self.ctx.request(msg).response, timeout)

    def send_raw(self, remote: Any, msg: Message) -> None:
        """Put a NON request with a chosen token on the wire from this server's socket (e.g. a
        GET with Observe=1 on an observation's token, RFC 7641 §3.6)."""
        assert self.ctx is not None
        msg.mtype = NON
        msg.remote = remote
        self.ctx.request_interfaces[0].token_interface.send_message(msg, lambda: None)

    async def observe(self, client: tuple[str, int], path: str, *, accept: int | None = None,
                      timeout: float = 5.0) -> "ObservationHandle":
        assert self.ctx is not None
        segs = tuple(s for s in path.split("/") if s)
        msg = Message(code=Code.GET, uri=f"coap://{client[0]}:{client[1]}", uri_path=segs, observe=0)
        if accept is not None:
            msg.opt.accept = accept
        req = self.ctx.request(msg)
        first = await asyncio.wait_for(req.response, timeout)
        return ObservationHandle(self, req, first, msg)


class ObservationHandle:
    """Collects notifications of one observation."""

    def __init__(self, server: StandInServer, req: Any, first: Message, msg: Message) -> None:
        self.server = server
        self.req = req
        self.first = first
        self.token = bytes(first.token)
        self.notifications: list[Notification] = []
        self.started = time.monotonic()
        self._new = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect()) if first.opt.observe is not None else None

    async def _collect(self) -> None:
        try:
            async for m in self.req.observation:
                self.notifications.append(Notification(m.code, bytes(m.payload), m.opt.content_format,
                                                       m.opt.observe, m.mtype, time.monotonic()))
                self._new.set()
        except Exception:
            pass

    async def next(self, timeout: float = 5.0) -> Notification:
        n = len(self.notifications)
        async def _wait() -> Notification:
            while len(self.notifications) <= n:
                self._new.clear()
                await self._new.wait()
            return self.notifications[n]
        return await asyncio.wait_for(_wait(), timeout)

    def forget(self) -> None:
        """Stop listening locally: later CON notifications get RST from aiocoap, NON ones get RST
        from the stand-in's hook (RFC 7641 §3.6)."""
        self.server.rst_tokens.add(self.token)
        self.remote = self.first.remote
        self.req.observation.cancel()
        if self._task is not None:
            self._task.cancel()
