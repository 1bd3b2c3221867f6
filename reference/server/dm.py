"""Device Management & Service Enablement operations of the server (Core 1.1.1 §6.3, §6.4.1-2;
Transport 1.1.1 §6.3/§6.4) and how their results are presented.

Every operation returns a :class:`DmResponse`: the CoAP code, content format, raw payload and
the payload decoded with :mod:`reference.formats` (values keyed by path string), or the error
the decoder raised. Nothing here raises for a client's answer; only transport failures
(timeout, reset, unknown endpoint) raise :class:`DmError`.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from aiocoap import Message

from reference.model.path import Path
from reference.model.types import ObjLink, ResourceType, Value, Values

if TYPE_CHECKING:
    from reference.coap.endpoint import Observation
    from reference.server.registration import Registration

LINK_FORMAT = 40


class DmError(Exception):
    """A DM operation could not be carried out; ``status`` is the HTTP status the API uses
    (404 unknown endpoint, 400 bad input, 504 no answer, 502 reset by the client)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def code_text(code: int) -> str:
    """``"2.05"`` for 69 (RFC 7252 §12.1 "c.dd")."""
    return f"{code >> 5}.{code & 0x1F:02d}"


_TYPE_NAMES = {bytes: "opaque", bool: "boolean", int: "integer", float: "float", str: "string",
               ObjLink: "objlnk"}


def jsonable(v: Any) -> Any:
    """A resource value as JSON: bytes -> hex string, Objlnk -> "oid:iid"."""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, ObjLink):
        return str(v)
    return v


@dataclass
class DmResponse:
    """The outcome of one DM operation as the client answered it."""

    operation: str
    endpoint: str
    path: str
    code: int
    content_format: int | None = None
    payload: bytes = b""
    values: Values | None = None
    links: list[dict] | None = None
    decode_error: str | None = None
    observe: int | None = None
    location: str | None = None
    diagnostic: str | None = None
    time: float = field(default_factory=time.time)

    @property
    def code_text(self) -> str:
        return code_text(self.code)

    @property
    def success(self) -> bool:
        return self.code >> 5 == 2

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operation": self.operation, "endpoint": self.endpoint, "path": self.path,
            "code": self.code_text, "success": self.success,
            "content_format": self.content_format, "payload_hex": self.payload.hex(),
        }
        if self.values is not None:
            out["values"] = {str(p): jsonable(v) for p, v in sorted(self.values.items())}
            out["types"] = {str(p): _TYPE_NAMES.get(type(v), type(v).__name__)
                            for p, v in sorted(self.values.items())}
        if self.links is not None:
            out["links"] = self.links
        if self.decode_error is not None:
            out["decode_error"] = self.decode_error
        if self.observe is not None:
            out["observe"] = self.observe
        if self.location is not None:
            out["location"] = self.location
        if self.diagnostic is not None:
            out["diagnostic"] = self.diagnostic
        return out


def response_from(op: str, endpoint: str, path: Path, msg: Message, registry: Any) -> DmResponse:
    """Build a :class:`DmResponse` from a CoAP response, decoding the payload if it has one."""
    from reference import formats
    from reference.formats import linkformat

    cf = msg.opt.content_format
    cf = None if cf is None else int(cf)
    r = DmResponse(op, endpoint, str(path), int(msg.code), cf, bytes(msg.payload),
                   observe=msg.opt.observe)
    if msg.opt.location_path:
        r.location = "/" + "/".join(msg.opt.location_path)
    if not r.success:
        if msg.payload:
            r.diagnostic = msg.payload.decode("utf-8", "replace")
        return r
    if not msg.payload:
        return r
    try:
        if cf == LINK_FORMAT:
            r.links = [{"uri": link.target, "attributes": dict(link.params)}
                       for link in linkformat.parse(msg.payload, strict=False)]
        elif cf is None:
            r.decode_error = "response has a payload but no Content-Format"
        else:
            r.values = formats.decode(cf, msg.payload, path, registry)
    except formats.FormatError as e:
        r.decode_error = f"{type(e).__name__}: {e}"
    return r


# ---- JSON input -> resource values --------------------------------------------------------------
def coerce_value(v: Any, path: Path, registry: Any) -> Value:
    """Turn a JSON (or command-line string) value into the Python type the resource's
    definition asks for (Core 1.1.1 Appendix C). Without a definition JSON types are kept.
    Opaque takes a hex string (or ``{"hex": ...}``), Objlnk ``"oid:iid"``."""
    if isinstance(v, dict) and set(v) == {"hex"}:
        return bytes.fromhex(v["hex"])
    rdef = registry.resource_def(path) if registry is not None and path.depth >= 3 else None
    if rdef is None:
        return v
    t = rdef.type
    try:
        if t in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.TIME):
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError
            return int(v)
        if t == ResourceType.FLOAT:
            return float(v)
        if t == ResourceType.BOOLEAN:
            if isinstance(v, bool):
                return v
            if isinstance(v, str) and v.lower() in ("true", "1", "false", "0"):
                return v.lower() in ("true", "1")
            if v in (0, 1):
                return bool(v)
            raise ValueError
        if t == ResourceType.OPAQUE:
            return bytes.fromhex(v) if isinstance(v, str) else bytes(v)
        if t == ResourceType.OBJLNK:
            if isinstance(v, ObjLink):
                return v
            a, b = str(v).split(":")
            return ObjLink(int(a), int(b))
        if t in (ResourceType.STRING, ResourceType.CORELNK):
            return str(v)
    except (ValueError, TypeError):
        raise DmError(400, f"value {v!r} does not fit {path} ({t.value})") from None
    return v


def values_from_json(body: dict[str, Any], path: Path, registry: Any) -> Values:
    """``{"values": {"/1/0/1": 300, ...}}`` or ``{"value": 300}`` (for a resource path)."""
    out: Values = {}
    if "values" in body:
        vals = body["values"]
        if not isinstance(vals, dict):
            raise DmError(400, "'values' must be an object of path: value")
        for k, v in vals.items():
            try:
                p = Path.parse(k)
            except ValueError as e:
                raise DmError(400, str(e)) from None
            if not path.contains(p) or p.depth < 3:
                raise DmError(400, f"{p} is not a resource under {path}")
            out[p] = coerce_value(v, p, registry)
    elif "value" in body:
        if path.depth < 3:
            raise DmError(400, "'value' needs a resource or resource-instance path")
        out[path] = coerce_value(body["value"], path, registry)
    else:
        raise DmError(400, "body needs 'values', 'value' or 'payload_hex'")
    return out


class ServerObservation:
    """One observation the server holds on a client resource.

    Notifications are decoded into :class:`DmResponse` objects, published as ``notification``
    events on the server's bus and queued for ``async for resp in observation`` (bounded)."""

    _ids = itertools.count(1)

    def __init__(self, endpoint: str, path: Path, accept: int | None, coap_obs: "Observation",
                 registry: Any, on_notification: Callable[["ServerObservation", DmResponse], None],
                 on_end: Callable[["ServerObservation"], None]) -> None:
        self.id = str(next(self._ids))
        self.endpoint = endpoint
        self.path = path
        self.accept = accept
        self.coap = coap_obs
        self.registry = registry
        self.created = time.time()
        self.first: DmResponse | None = None
        self.count = 0
        self._on_notification = on_notification
        self._on_end = on_end
        self._queue: asyncio.Queue[DmResponse | None] = asyncio.Queue(maxsize=1000)
        self.active = True
        coap_obs.add_callback(self._notified)

    def _notified(self, msg: Message) -> None:
        resp = response_from("notify", self.endpoint, self.path, msg, self.registry)
        self.count += 1
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(resp)
        self._on_notification(self, resp)
        if self.coap.ended:
            self._finish()

    def _finish(self) -> None:
        if self.active:
            self.active = False
            if self._queue.full():
                self._queue.get_nowait()
            self._queue.put_nowait(None)
            self._on_end(self)

    def __aiter__(self) -> "ServerObservation":
        return self

    async def __anext__(self) -> DmResponse:
        item = await self._queue.get()
        if item is None:
            raise StopAsyncIteration
        return item

    async def next(self, timeout: float) -> DmResponse:
        """The next notification within ``timeout`` seconds (``asyncio.TimeoutError`` else)."""
        return await asyncio.wait_for(self.__anext__(), timeout)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "endpoint": self.endpoint, "path": str(self.path),
                "accept": self.accept, "active": self.active, "notifications": self.count,
                "created_at": self.created}

