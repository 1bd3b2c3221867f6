"""A programmable LwM2M Bootstrap-Server peer (the suite's side of a client-under-test).

Like :class:`conformance.peers.server_peer.ServerPeer` it records every datagram and lets rules
script the answer to the client's requests. The Bootstrap-Request (``POST /bs?ep=NAME[&pct=N]``,
Core 1.1.1 §6.1.7.1, Transport 1.1.1 Table 6.1-1) is answered 2.04 Changed by default; the bootstrap
*sequence* is then driven by the test, one operation at a time, towards the address the request
came from (or any address, for Server Initiated Bootstrap, Core 1.1.1 §6.1.5):

==========================  ===============================================  ====================
operation (Core 1.1.1)      CoAP (Transport 1.1.1 Table 6.1-1)               success
==========================  ===============================================  ====================
Bootstrap-Discover §6.1.7.3 GET /{Obj} Accept: application/link-format       2.05 Content
Bootstrap-Read §6.1.7.4     GET /1[/x] or /2[/x] (Accept)                    2.05 Content
Bootstrap-Write §6.1.7.5    PUT /{Obj}[/x[/r]] with a payload                2.04 Changed
Bootstrap-Delete §6.1.7.6   DELETE /{Obj}[/x] or /                           2.02 Deleted
Bootstrap-Finish §6.1.7.2   POST /bs                                         2.04 Changed / 4.06
==========================  ===============================================  ====================

:meth:`BootstrapPeer.provision` runs the usual sequence (Delete ``/``, Write every Security and
Server instance of a :class:`reference.model.config.DeviceConfig`, Finish) and returns each step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from aiocoap import Message
from aiocoap.numbers.codes import Code

from conformance.peers.server_peer import (
    TEST_PARAMETERS,
    CoapReset,
    CoapTimeout,
    IncomingRequest,
    PeerBase,
    RequestKind,
    code_str,
    object_registry,
)
from reference.coap import TransmissionParameters
from reference.formats import encode as encode_values
from reference.model.config import DeviceConfig
from reference.model.path import Path
from reference.model.types import ContentFormat, Values


@dataclass
class BootstrapStep:
    """One operation of a bootstrap sequence and the client's answer ("timeout"/"reset" when none)."""

    op: str
    path: str
    code: str
    response: Message | None = None

    @property
    def ok(self) -> bool:
        return self.code.startswith("2.")

    def __str__(self) -> str:
        return f"{self.op} {self.path} -> {self.code}"


class BootstrapPeer(PeerBase):
    """The LwM2M Bootstrap-Server played by the suite against a client DUT."""

    name = "bootstrap"

    def __init__(self, *, name: str | None = None, params: TransmissionParameters = TEST_PARAMETERS) -> None:
        super().__init__(name=name, params=params)
        #: address of the latest Bootstrap-Request (where the sequence goes by default)
        self.client_remote: tuple[str, int] | None = None
        self.steps: list[BootstrapStep] = []

    async def default_response(self, req: IncomingRequest) -> Message | None:
        if req.kind == RequestKind.BOOTSTRAP_REQUEST:
            if not req.query.get("ep"):
                return Message(code=Code.BAD_REQUEST, payload=b"Unknown Endpoint Client Name")
            return Message(code=Code.CHANGED)
        return Message(code=Code.NOT_FOUND)

    def after_response(self, req: IncomingRequest) -> None:
        if req.kind == RequestKind.BOOTSTRAP_REQUEST:
            self.client_remote = req.remote

    async def wait_bootstrap_request(self, timeout: float, after: int = 0) -> IncomingRequest | None:
        """The next Bootstrap-Request (answered), or None within ``timeout``."""
        return await self.wait_request(RequestKind.BOOTSTRAP_REQUEST, timeout=timeout, after=after,
                                       answered=True)

    # ---- operations towards the client ------------------------------------------------------------
    def _target(self, remote: tuple[str, int] | None) -> tuple[str, int]:
        if remote is not None:
            return (str(remote[0]), int(remote[1]))
        if self.client_remote is None:
            raise RuntimeError("no Bootstrap-Request seen yet: give the client's address")
        return self.client_remote

    async def _step(self, op: str, path: str, msg: Message, remote: tuple[str, int] | None,
                    timeout: float) -> BootstrapStep:
        try:
            resp = await self.request(msg, self._target(remote), timeout=timeout)
            step = BootstrapStep(op, path, code_str(resp.code), resp)
        except CoapTimeout:
            step = BootstrapStep(op, path, "timeout")
        except CoapReset:
            step = BootstrapStep(op, path, "reset")
        self.steps.append(step)
        return step

    async def discover(self, path: str = "/", *, remote: tuple[str, int] | None = None,
                       timeout: float = 5.0) -> BootstrapStep:
        """Bootstrap-Discover (Core 1.1.1 §6.1.7.3)."""
        msg = Message(code=Code.GET, uri_path=Path.parse(path).uri_path())
        msg.opt.accept = int(ContentFormat.LINK_FORMAT)
        return await self._step("discover", path, msg, remote, timeout)

    async def read(self, path: str, *, accept: int | None = None, remote: tuple[str, int] | None = None,
                   timeout: float = 5.0) -> BootstrapStep:
        """Bootstrap-Read (Core 1.1.1 §6.1.7.4; only /1 and /2 are allowed targets)."""
        msg = Message(code=Code.GET, uri_path=Path.parse(path).uri_path())
        if accept is not None:
            msg.opt.accept = accept
        return await self._step("read", path, msg, remote, timeout)

    async def write(self, path: str, payload: bytes, content_format: int, *,
                    remote: tuple[str, int] | None = None, timeout: float = 5.0) -> BootstrapStep:
        """Bootstrap-Write: PUT with a payload (Core 1.1.1 §6.1.7.5)."""
        msg = Message(code=Code.PUT, uri_path=Path.parse(path).uri_path(), payload=payload)
        msg.opt.content_format = content_format
        return await self._step("write", path, msg, remote, timeout)

    async def write_values(self, path: str, values: Values, fmt: int = ContentFormat.LWM2M_TLV, *,
                           remote: tuple[str, int] | None = None, timeout: float = 5.0) -> BootstrapStep:
        payload = encode_values(fmt, values, Path.parse(path), object_registry())
        return await self.write(path, payload, int(fmt), remote=remote, timeout=timeout)

    async def delete(self, path: str = "/", *, remote: tuple[str, int] | None = None,
                     timeout: float = 5.0) -> BootstrapStep:
        """Bootstrap-Delete (Core 1.1.1 §6.1.7.6)."""
        msg = Message(code=Code.DELETE, uri_path=Path.parse(path).uri_path())
        return await self._step("delete", path, msg, remote, timeout)

    async def finish(self, *, remote: tuple[str, int] | None = None, timeout: float = 5.0) -> BootstrapStep:
        """Bootstrap-Finish: POST /bs (Core 1.1.1 §6.1.7.2)."""
        msg = Message(code=Code.POST, uri_path=("bs",))
        return await self._step("finish", "/bs", msg, remote, timeout)

    async def write_config(self, cfg: DeviceConfig, fmt: int = ContentFormat.LWM2M_TLV, *,
                           remote: tuple[str, int] | None = None, timeout: float = 5.0) -> list[BootstrapStep]:
        """Bootstrap-Write every Security then Server instance of ``cfg`` (one PUT per instance)."""
        steps = []
        for acc in cfg.security:
            steps.append(await self.write_values(f"/0/{acc.instance_id}", acc.to_values(), fmt,
                                                 remote=remote, timeout=timeout))
        for srv in cfg.servers:
            steps.append(await self.write_values(f"/1/{srv.instance_id}", srv.to_values(), fmt,
                                                 remote=remote, timeout=timeout))
        return steps

    async def provision(self, cfg: DeviceConfig, fmt: int = ContentFormat.LWM2M_TLV, *,
                        delete: Iterable[str] = ("/",), extra: Iterable[tuple[str, Values]] = (),
                        finish: bool = True, remote: tuple[str, int] | None = None,
                        timeout: float = 5.0) -> list[BootstrapStep]:
        """The usual sequence: Delete each of ``delete``, Write ``cfg``'s instances and ``extra``
        ``(path, values)`` (e.g. Access Control instances), then Finish. Stops at the first step
        that does not succeed (its step is the last one returned)."""
        steps: list[BootstrapStep] = []
        for p in delete:
            s = await self.delete(p, remote=remote, timeout=timeout)
            steps.append(s)
            if not s.ok:
                return steps
        for s in await self.write_config(cfg, fmt, remote=remote, timeout=timeout):
            steps.append(s)
            if not s.ok:
                return steps
        for path, values in extra:
            s = await self.write_values(path, values, fmt, remote=remote, timeout=timeout)
            steps.append(s)
            if not s.ok:
                return steps
        if finish:
            steps.append(await self.finish(remote=remote, timeout=timeout))
        return steps


def steps_text(steps: Iterable[BootstrapStep]) -> str:
    return "; ".join(str(s) for s in steps)


__all__ = ["BootstrapPeer", "BootstrapStep", "steps_text"]
