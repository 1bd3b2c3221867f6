"""A programmable LwM2M Client the suite plays against a Server or Bootstrap-Server under test.

Two levels:

High level (:class:`ClientPeer`)
    ``register`` / ``update`` / ``deregister`` with any combination of parameters (or a raw query
    list for forbidden ones), ``bootstrap_request``, and a small object tree (Security /0, Server
    /1, Device /3 by default) that serves the server's Read, Write, Execute, Discover,
    Write-Attributes, Create, Delete and Observe (RFC 7641) and the bootstrap server's
    Bootstrap-Discover/Delete/Write/Finish. Every request the DUT sends is recorded as a
    :class:`RecordedRequest`; tests wait for them with :meth:`ClientPeer.wait_request`. Every
    datagram in either direction is kept in :attr:`ClientPeer.trace` (shown as a verdict's
    "Exchange").

Packet level (:class:`RawCoap` and :meth:`ClientPeer.send_raw`)
    arbitrary bytes (built with ``scapy.contrib.coap`` or by hand) from a socket of its own,
    collecting whatever comes back, for the malformed-input cases of RFC 7252 §3/§4/§5.4.

The message layer is deliberately independent of the reference implementation's CoAP endpoint
(so a bug there cannot hide the same bug in the reference server): aiocoap's
:class:`~aiocoap.Message` is used only as the wire codec. It implements what a client needs of
RFC 7252: CON retransmission with exponential back-off (§4.2, §4.8; shortened timers are allowed
because loopback does not lose datagrams), piggybacked and separate responses (§5.2), duplicate
detection of incoming CONs with the same reply (§4.5), RST for unknown tokens and for CoAP ping
(§4.3), and notifications with an increasing Observe number (RFC 7641 §3.4, §4.4).

The peer talks to whatever address it is given: the DUT directly, the suite's recording proxy in
front of it, or the plain side of a :class:`reference.security.DtlsClientBridge` (DTLS-PSK).
"""
from __future__ import annotations

import asyncio
import enum
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from reference import formats
from reference.formats.errors import FormatError
from reference.model.config import DeviceConfig
from reference.model.path import Path, PathError
from reference.model.registry import ObjectRegistry
from reference.model.types import ContentFormat, Operations, Value, Values

Address = tuple[str, int]

CON, NON, ACK, RST = Type.CON, Type.NON, Type.ACK, Type.RST

#: Default Objects and Object Instances of a Register payload (Core 1.1.1 §6.2.1, link-format).
DEFAULT_LINKS = "</1/0>,</3/0>"
LINK_FORMAT = int(ContentFormat.LINK_FORMAT)

_REGISTRY: ObjectRegistry | None = None


def default_registry() -> ObjectRegistry:
    """The project's object definitions (shared, read-only)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = ObjectRegistry.default()
    return _REGISTRY


def code_str(code: Code | int | None) -> str:
    """``2.01`` style text of a CoAP code (``-`` for None)."""
    if code is None:
        return "-"
    c = int(code)
    return f"{c >> 5}.{c & 0x1F:02d}"



def _registration_params(lifetime: int | str | None, binding: str | None, sms: str | None,
                         queue: bool, lwm2m: str | None = None) -> list[str]:
    """The Uri-Query parameters shared by Register and Update (Core 1.1.1 §6.2.1, §6.2.2) in the
    order the suite sends them (lwm2m is Register's only); None (or False for Q) leaves one out."""
    q: list[str] = []
    if lifetime is not None:
        q.append(f"lt={lifetime}")
    if lwm2m is not None:
        q.append(f"lwm2m={lwm2m}")
    if binding is not None:
        q.append(f"b={binding}")
    if sms is not None:
        q.append(f"sms={sms}")
    if queue:
        q.append("Q")
    return q

class PeerError(Exception):
    """Base class of the errors a peer's own request can end with."""


class PeerTimeout(PeerError, TimeoutError):
    """No response to a request within its time limit (after the CON retransmissions)."""


class PeerReset(PeerError):
    """The DUT answered a request with a Reset message (RFC 7252 §4.2)."""


class PeerClosed(PeerError):
    """The peer was closed while the request was outstanding."""


# ---------------------------------------------------------------------------------------------
# recording
# ---------------------------------------------------------------------------------------------

def describe(data: bytes) -> str:
    """One line describing a datagram: decoded CoAP when it decodes, hex otherwise."""
    try:
        m = Message.decode(data)
    except Exception:  # noqa: BLE001 - malformed on purpose, show the bytes
        return f"(not decodable CoAP) {data[:48].hex()}{'…' if len(data) > 48 else ''} [{len(data)} B]"
    if m.code.is_request():
        parts = [m.mtype.name if m.mtype is not None else "?", _code_name(m.code).upper()]
    else:
        parts = [m.mtype.name if m.mtype is not None else "?", code_str(m.code), _code_name(m.code)]
    if m.code.is_request():
        path = "/" + "/".join(m.opt.uri_path)
        q = "&".join(m.opt.uri_query)
        parts.append(path + (f"?{q}" if q else ""))
    parts.append(f"mid={m.mid}")
    if m.token:
        parts.append(f"tok={m.token.hex()}")
    if m.opt.location_path:
        parts.append("loc=/" + "/".join(m.opt.location_path))
    if m.opt.content_format is not None:
        parts.append(f"cf={int(m.opt.content_format)}")
    if m.opt.accept is not None:
        parts.append(f"accept={int(m.opt.accept)}")
    if m.opt.observe is not None:
        parts.append(f"obs={m.opt.observe}")
    if m.payload:
        pl = m.payload[:40]
        try:
            text = pl.decode("utf-8")
            shown = text if text.isprintable() else pl.hex()
        except UnicodeDecodeError:
            shown = pl.hex()
        parts.append(f"payload={shown!r}{'…' if len(m.payload) > 40 else ''} [{len(m.payload)} B]")
    return " ".join(parts)


def _code_name(code: Code) -> str:
    try:
        return Code(int(code)).name.replace("_", " ").title() if int(code) else "Empty"
    except ValueError:
        return "(unknown code)"


@dataclass(frozen=True)
class Datagram:
    """One datagram the peer sent (``out``) or received (``in``)."""

    t: float
    direction: str
    data: bytes
    remote: Address

    def summary(self) -> str:
        arrow = "->" if self.direction == "out" else "<-"
        return f"{self.t:10.3f} {arrow} {self.remote[0]}:{self.remote[1]} {describe(self.data)}"


class Trace:
    """The datagrams of one peer, in order (a verdict's Exchange)."""

    def __init__(self, name: str, limit: int = 400) -> None:
        self.name = name
        self.items: list[Datagram] = []
        self.limit = limit
        self.t0 = time.monotonic()

    def add(self, direction: str, data: bytes, remote: Address) -> None:
        self.items.append(Datagram(time.monotonic() - self.t0, direction, bytes(data), tuple(remote[:2])))
        if len(self.items) > self.limit * 2:
            del self.items[: self.limit]

    def lines(self, last: int = 30) -> list[str]:
        return [f"[{self.name}] {d.summary()}" for d in self.items[-last:]]

    def __iter__(self):  # noqa: ANN204
        return iter(self.items)


@dataclass
class RecordedRequest:
    """A request the DUT sent to the peer, as received."""

    t: float
    code: Code
    path: tuple[str, ...]
    query: tuple[str, ...]
    content_format: int | None
    accept: int | None
    observe: int | None
    payload: bytes
    mtype: Type
    mid: int
    token: bytes
    remote: Address
    response_code: Code | None = None

    @property
    def method(self) -> str:
        return {Code.GET: "GET", Code.POST: "POST", Code.PUT: "PUT", Code.DELETE: "DELETE"}.get(
            self.code, code_str(self.code))

    @property
    def uri(self) -> str:
        return "/" + "/".join(self.path)

    def summary(self) -> str:
        extra = []
        if self.query:
            extra.append("?" + "&".join(self.query))
        if self.content_format is not None:
            extra.append(f" cf={self.content_format}")
        if self.accept is not None:
            extra.append(f" accept={self.accept}")
        if self.observe is not None:
            extra.append(f" observe={self.observe}")
        if self.payload:
            extra.append(f" [{len(self.payload)} B]")
        return (f"{self.method} {self.uri}{''.join(extra)} -> {code_str(self.response_code)}")


@dataclass
class Observation:
    """An observation the DUT registered at the peer (RFC 7641 §3.1)."""

    token: bytes
    path: Path
    accept: int | None
    remote: Address
    seq: int = 2
    cancelled: bool = False


# ---------------------------------------------------------------------------------------------
# the message layer
# ---------------------------------------------------------------------------------------------

@dataclass
class Timers:
    """RFC 7252 §4.8 parameters for the peer's own CONs (shortened defaults for loopback)."""

    ack_timeout: float = 1.0
    ack_random_factor: float = 1.5
    max_retransmit: int = 3
    response_timeout: float = 10.0   # bound on the whole exchange, separate response included


class _Pending:
    __slots__ = ("mid", "token", "data", "future", "handle", "count", "timeout", "acked", "remote")

    def __init__(self, mid: int, token: bytes, data: bytes, future: asyncio.Future, remote: Address) -> None:
        self.mid = mid
        self.token = token
        self.data = data
        self.future = future
        self.handle: asyncio.TimerHandle | None = None
        self.count = 0
        self.timeout = 0.0
        self.acked = False
        self.remote = remote


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "CoapPeerBase") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            self.owner._received(data, (addr[0], addr[1]))
        except Exception:  # noqa: BLE001 - a bad datagram must never break the peer
            import logging
            logging.getLogger(__name__).exception("client peer: failure processing a datagram")

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.
        self.owner.icmp_errors += 1


class CoapPeerBase:
    """UDP socket + the client side of the CoAP message layer (see module docstring)."""

    def __init__(self, remote: Address, *, name: str = "peer", local_host: str = "127.0.0.1",
                 timers: Timers | None = None) -> None:
        self.remote: Address = (remote[0], int(remote[1]))
        self.name = name
        self.local_host = local_host
        self.timers = timers or Timers()
        self.trace = Trace(name)
        self.transport: asyncio.DatagramTransport | None = None
        self.icmp_errors = 0
        self._mid = random.randrange(0x10000)
        self._by_mid: dict[int, _Pending] = {}
        self._by_token: dict[bytes, _Pending] = {}
        self._served: dict[tuple[Address, int], bytes | None] = {}  # dedup of incoming CONs (§4.5)
        self._closed = False
        self.capture: asyncio.Queue[tuple[bytes, Address]] | None = None

    async def start(self) -> "CoapPeerBase":
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.local_host, 0))
        return self

    @property
    def local_address(self) -> Address:
        assert self.transport is not None, "peer not started"
        return tuple(self.transport.get_extra_info("sockname")[:2])  # type: ignore[return-value]

    async def close(self) -> None:
        self._closed = True
        for p in list(self._by_mid.values()):
            if p.handle:
                p.handle.cancel()
            if not p.future.done():
                p.future.set_exception(PeerClosed("peer closed"))
        self._by_mid.clear()
        self._by_token.clear()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    async def __aenter__(self) -> "CoapPeerBase":
        if self.transport is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- ids / sending ------------------------------------------------------------------------
    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    @staticmethod
    def new_token() -> bytes:
        return random.getrandbits(64).to_bytes(8, "big")

    def send_raw(self, data: bytes, remote: Address | None = None) -> None:
        """Send bytes as they are from the peer's socket (recorded in the trace)."""
        if self.transport is None or self._closed:
            raise PeerClosed("peer closed")
        dest = remote or self.remote
        self.trace.add("out", data, dest)
        self.transport.sendto(data, dest)

    async def request(self, msg: Message, *, timeout: float | None = None, remote: Address | None = None,
                      keep_mid: bool = False, keep_token: bool = False) -> Message:
        """Send a request (CON unless ``msg.mtype`` is NON) and return the response message.

        MID and token are assigned unless ``keep_*``. Raises :class:`PeerTimeout` (no response
        within ``timeout`` / after the retransmissions), :class:`PeerReset`, :class:`PeerClosed`.
        """
        loop = asyncio.get_running_loop()
        mtype = NON if msg.mtype == NON else CON
        msg.mtype = mtype
        if not keep_mid or msg.mid is None:
            msg.mid = self.next_mid()
        if not keep_token or msg.token is None:
            msg.token = self.new_token()
        data = msg.encode()
        dest = remote or self.remote
        fut: asyncio.Future[Message] = loop.create_future()
        pend = _Pending(msg.mid, msg.token, data, fut, dest)
        self._by_mid[msg.mid] = pend
        self._by_token[msg.token] = pend
        t = self.timers
        if mtype == CON:
            pend.timeout = random.uniform(t.ack_timeout, t.ack_timeout * t.ack_random_factor)
            pend.handle = loop.call_later(pend.timeout, self._retransmit, pend)
        self.send_raw(data, dest)
        try:
            return await asyncio.wait_for(fut, timeout if timeout is not None else t.response_timeout)
        except asyncio.TimeoutError:
            raise PeerTimeout(f"{self.name}: no response to {describe(data)} from {dest[0]}:{dest[1]}") from None
        finally:
            if pend.handle:
                pend.handle.cancel()
            self._by_mid.pop(pend.mid, None)
            if self._by_token.get(pend.token) is pend:
                del self._by_token[pend.token]

    def _retransmit(self, pend: _Pending) -> None:
        if pend.future.done() or pend.acked or self._closed:
            return
        if pend.count >= self.timers.max_retransmit:
            if not pend.future.done():
                pend.future.set_exception(PeerTimeout(
                    f"{self.name}: no ACK after {pend.count} retransmissions of {describe(pend.data)}"))
            return
        pend.count += 1
        pend.timeout *= 2
        self.send_raw(pend.data, pend.remote)
        pend.handle = asyncio.get_running_loop().call_later(pend.timeout, self._retransmit, pend)

    # ---- receiving ----------------------------------------------------------------------------
    def _received(self, data: bytes, addr: Address) -> None:
        self.trace.add("in", data, addr)
        if self.capture is not None:
            self.capture.put_nowait((data, addr))
        if len(data) < 4 or data[0] >> 6 != 1:
            return  # RFC 7252 §3: not CoAP version 1 -> silently ignored
        mtype = (data[0] >> 4) & 3
        code = data[1]
        mid = (data[2] << 8) | data[3]
        if code == 0:
            if mtype == CON:
                self._send_empty(RST, mid, addr)  # CoAP ping (§4.3)
            elif mtype == ACK:
                p = self._by_mid.get(mid)
                if p is not None:
                    p.acked = True  # separate response will follow (§5.2.2)
                    if p.handle:
                        p.handle.cancel()
            elif mtype == RST:
                p = self._by_mid.get(mid)
                if p is not None and not p.future.done():
                    p.future.set_exception(PeerReset(f"{self.name}: RST for mid {mid}"))
                self._on_reset(mid)
            return
        try:
            msg = Message.decode(data, addr)
        except Exception:  # noqa: BLE001 - malformed: reject CON (§4.2), ignore others
            if mtype == CON:
                self._send_empty(RST, mid, addr)
            return
        if msg.code.is_request():
            self._on_request(msg, addr)
        else:
            self._on_response(msg, addr)

    def _send_empty(self, mtype: Type, mid: int, addr: Address) -> None:
        self.send_raw(bytes(((1 << 6) | (int(mtype) << 4), 0, mid >> 8, mid & 0xFF)), addr)

    def _on_response(self, msg: Message, addr: Address) -> None:
        if msg.mtype == ACK:
            p = self._by_mid.get(msg.mid)
            if p is not None and p.token == msg.token and not p.future.done():
                p.future.set_result(msg)
            return
        # separate response (CON or NON), matched by token (§5.3.2)
        p = self._by_token.get(msg.token)
        if msg.mtype == CON:
            key = (addr, msg.mid)
            if p is not None or key in self._served:
                self._send_empty(ACK, msg.mid, addr)  # acknowledge (again, for a duplicate)
            else:
                self._send_empty(RST, msg.mid, addr)  # unknown token: reject (§5.3.2, §4.2)
            self._served[key] = None
        elif p is None and self.capture is None:
            self._send_empty(RST, msg.mid, addr)  # NON for an unknown token: reject
        if p is not None and not p.future.done():
            p.future.set_result(msg)

    def _on_request(self, msg: Message, addr: Address) -> None:
        key = (addr, msg.mid)
        if key in self._served:
            cached = self._served[key]
            if msg.mtype == CON and cached is not None:
                self.send_raw(cached, addr)  # §4.5: the same reply again
            return
        self._served[key] = None
        if len(self._served) > 4096:
            for k in list(self._served)[:2048]:
                del self._served[k]
        asyncio.get_running_loop().create_task(self._serve(msg, addr, key))

    async def _serve(self, msg: Message, addr: Address, key: tuple) -> None:
        try:
            resp = await self.handle_request(msg, addr)
        except Exception as e:  # noqa: BLE001
            resp = Message(code=Code.INTERNAL_SERVER_ERROR, payload=f"{type(e).__name__}: {e}".encode()[:100])
        if resp is None:
            return
        resp.token = msg.token
        if msg.mtype == CON:
            resp.mtype, resp.mid = ACK, msg.mid
        else:
            resp.mtype, resp.mid = NON, self.next_mid()
        out = resp.encode()
        self._served[key] = out
        self.send_raw(out, addr)

    async def handle_request(self, msg: Message, addr: Address) -> Message | None:
        """Answer a request from the DUT (override). Default: 4.04."""
        return Message(code=Code.NOT_FOUND)

    def _on_reset(self, mid: int) -> None:
        """A RST for one of our messages (override: e.g. observation cancelled, RFC 7641 §3.6)."""


# ---------------------------------------------------------------------------------------------
# the LwM2M client
# ---------------------------------------------------------------------------------------------

class PeerMode(str, enum.Enum):
    DM = "dm"                # serving a LwM2M server
    BOOTSTRAP = "bootstrap"  # serving a bootstrap server (Bootstrap-Delete/Write/Finish allowed)


def default_objects(endpoint: str, lifetime: int = 300, binding: str = "U") -> Values:
    """A minimal client: Server /1/0 and Device /3/0 with the mandatory resources (Core 1.1.1 App. E)."""
    return {
        Path(1, 0, 0): 1, Path(1, 0, 1): lifetime, Path(1, 0, 6): False, Path(1, 0, 7): binding,
        Path(3, 0, 0): "LwM2M Conformance Suite", Path(3, 0, 1): "client-peer",
        Path(3, 0, 2): f"SN-{endpoint}", Path(3, 0, 3): "1.0", Path(3, 0, 9): 100,
        Path(3, 0, 11, 0): 0, Path(3, 0, 16): binding,
    }


_UNSET: Any = object()
RequestHook = Callable[[RecordedRequest, Message], "Message | None | Awaitable[Message | None]"]


class ClientPeer(CoapPeerBase):
    """A scriptable LwM2M client (see the module docstring).

    ``server`` is where requests go (DUT, proxy, or DTLS bridge). ``lwm2m`` the version it
    claims. ``objects`` the initial resource values (default :func:`default_objects`).
    ``default_format`` the format of Read answers without Accept on more than one resource
    (single resources are answered in text/plain, Core 1.1.1 §7.4 / §7.1).
    """

    def __init__(self, server: Address, endpoint: str = "conformance-peer", *, lwm2m: str = "1.1",
                 objects: Values | None = None, registry: ObjectRegistry | None = None,
                 default_format: ContentFormat = ContentFormat.LWM2M_TLV,
                 formats_supported: Iterable[int] = (0, 42, 11542, 110, 112, 11543),
                 timers: Timers | None = None, local_host: str = "127.0.0.1", name: str | None = None,
                 mode: PeerMode = PeerMode.DM) -> None:
        super().__init__(server, name=name or f"client {endpoint}", local_host=local_host, timers=timers)
        self.endpoint = endpoint
        self.lwm2m = lwm2m
        self.registry = registry or default_registry()
        self.values: Values = dict(objects) if objects is not None else default_objects(endpoint)
        self.instances: set[Path] = {Path(p.object_id, p.instance_id) for p in self.values}
        self.default_format = default_format
        self.formats_supported = frozenset(int(f) for f in formats_supported)
        self.mode = mode
        self.location: tuple[str, ...] | None = None  # Location-Path of the registration
        self.requests: list[RecordedRequest] = []
        self.observations: dict[bytes, Observation] = {}
        self.executed: list[tuple[str, bytes]] = []
        self.bootstrap_finished = asyncio.Event()
        self.hook: RequestHook | None = None
        self.finish_code: Code = Code.CHANGED
        self._new_request: asyncio.Event = asyncio.Event()
        self._notify_mids: dict[int, bytes] = {}  # MID of a CON notification -> observation token

    # ---- registration interface (Core 1.1.1 §6.2, Transport 1.1.1 §6.2) -----------------------
    def register_message(self, *, endpoint: str | None = _UNSET, lifetime: int | str | None = None,
                         lwm2m: str | None = _UNSET, binding: str | None = None, sms: str | None = None,
                         queue: bool = False, links: str | bytes | None = _UNSET,
                         content_format: int | None = LINK_FORMAT, query: Sequence[str] | None = None,
                         extra_query: Sequence[str] = (), path: Sequence[str] = ("rd",)) -> Message:
        """A Register request ``POST /rd?ep=…&lt=…&lwm2m=…&b=…&sms=…&Q`` with the link-format payload.

        Pass ``None`` for ``endpoint``/``lwm2m``/``links`` to omit them; ``query`` replaces the
        whole query (for forbidden combinations); ``extra_query`` appends items."""
        if query is None:
            q: list[str] = []
            ep = self.endpoint if endpoint is _UNSET else endpoint
            if ep is not None:
                q.append(f"ep={ep}")
            ver = self.lwm2m if lwm2m is _UNSET else lwm2m
            q.extend(_registration_params(lifetime, binding, sms, queue, ver))
            q.extend(extra_query)
        else:
            q = list(query)
        body = DEFAULT_LINKS if links is _UNSET else links
        payload = body.encode() if isinstance(body, str) else (body or b"")
        msg = Message(code=Code.POST, payload=payload)
        msg.opt.uri_path = tuple(path)
        msg.opt.uri_query = tuple(q)
        if content_format is not None and payload:
            msg.opt.content_format = content_format
        return msg

    async def register(self, *, timeout: float | None = None, **kw: Any) -> Message:
        """Send a Register (arguments of :meth:`register_message`); on 2.01 remember the location."""
        resp = await self.request(self.register_message(**kw), timeout=timeout)
        if resp.code == Code.CREATED and resp.opt.location_path:
            self.location = tuple(resp.opt.location_path)
        return resp

    def update_message(self, *, location: Sequence[str] | None = None, lifetime: int | str | None = None,
                       binding: str | None = None, sms: str | None = None, queue: bool = False,
                       links: str | bytes | None = None, content_format: int | None = LINK_FORMAT,
                       query: Sequence[str] | None = None) -> Message:
        """An Update ``POST /{location}?lt=…&b=…&sms=…&Q`` with optional link-format payload
        (Core 1.1.1 §6.2.2: every parameter optional)."""
        loc = tuple(location) if location is not None else self.location
        if loc is None:
            raise PeerError(f"{self.name}: no registration location (register first)")
        if query is None:
            q = _registration_params(lifetime, binding, sms, queue)
        else:
            q = list(query)
        payload = links.encode() if isinstance(links, str) else (links or b"")
        msg = Message(code=Code.POST, payload=payload)
        msg.opt.uri_path = loc
        msg.opt.uri_query = tuple(q)
        if payload and content_format is not None:
            msg.opt.content_format = content_format
        return msg

    async def update(self, *, timeout: float | None = None, **kw: Any) -> Message:
        return await self.request(self.update_message(**kw), timeout=timeout)

    async def deregister(self, *, location: Sequence[str] | None = None, timeout: float | None = None) -> Message:
        """De-register ``DELETE /{location}`` (Core 1.1.1 §6.2.3)."""
        loc = tuple(location) if location is not None else self.location
        if loc is None:
            raise PeerError(f"{self.name}: no registration location (register first)")
        msg = Message(code=Code.DELETE)
        msg.opt.uri_path = loc
        resp = await self.request(msg, timeout=timeout)
        if resp.code == Code.DELETED and location is None:
            self.location = None
        return resp

    # ---- bootstrap interface (Core 1.1.1 §6.1.7.1) ---------------------------------------------
    async def bootstrap_request(self, *, endpoint: str | None = _UNSET, pct: int | None = None,
                                query: Sequence[str] | None = None, timeout: float | None = None) -> Message:
        """Bootstrap-Request ``POST /bs?ep=…[&pct=…]``; switches the peer to bootstrap mode."""
        if query is None:
            q = []
            ep = self.endpoint if endpoint is _UNSET else endpoint
            if ep is not None:
                q.append(f"ep={ep}")
            if pct is not None:
                q.append(f"pct={pct}")
        else:
            q = list(query)
        self.mode = PeerMode.BOOTSTRAP
        self.bootstrap_finished.clear()
        msg = Message(code=Code.POST)
        msg.opt.uri_path = ("bs",)
        msg.opt.uri_query = tuple(q)
        return await self.request(msg, timeout=timeout)

    def device_config(self) -> DeviceConfig:
        """The Security/Server instances the peer holds now, as a :class:`DeviceConfig`."""
        return DeviceConfig.from_values(self.endpoint, {p: v for p, v in self.values.items()
                                                        if p.object_id in (0, 1)})

    # ---- requests from the DUT ----------------------------------------------------------------
    async def wait_request(self, predicate: Callable[[RecordedRequest], bool] | None = None, *,
                           timeout: float = 10.0, start: int = 0) -> RecordedRequest | None:
        """The first recorded request at index >= ``start`` satisfying ``predicate``, waiting up
        to ``timeout`` seconds; None if none came (the caller decides the verdict)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        i = start
        while True:
            while i < len(self.requests):
                r = self.requests[i]
                i += 1
                if predicate is None or predicate(r):
                    return r
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            ev = self._new_request
            try:
                await asyncio.wait_for(ev.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def handle_request(self, msg: Message, addr: Address) -> Message | None:
        rec = RecordedRequest(
            t=time.monotonic() - self.trace.t0, code=msg.code, path=tuple(msg.opt.uri_path),
            query=tuple(msg.opt.uri_query),
            content_format=int(msg.opt.content_format) if msg.opt.content_format is not None else None,
            accept=int(msg.opt.accept) if msg.opt.accept is not None else None,
            observe=msg.opt.observe, payload=bytes(msg.payload), mtype=msg.mtype, mid=msg.mid,
            token=bytes(msg.token), remote=addr)
        resp: Message | None = None
        if self.hook is not None:
            r = self.hook(rec, msg)
            resp = await r if asyncio.iscoroutine(r) else r  # type: ignore[assignment]
        if resp is None:
            resp = self._dispatch(rec, msg, addr)
        rec.response_code = resp.code if resp is not None else None
        self.requests.append(rec)
        ev, self._new_request = self._new_request, asyncio.Event()
        ev.set()
        return resp

    def _dispatch(self, rec: RecordedRequest, msg: Message, addr: Address) -> Message:
        if rec.path == ("bs",) and msg.code == Code.POST:
            return self._bootstrap_finish()
        try:
            path = Path.parse(rec.path) if rec.path else Path()
        except PathError:
            return Message(code=Code.NOT_FOUND, payload=b"not an LwM2M path")
        if msg.code == Code.GET:
            if rec.accept == LINK_FORMAT:
                return self._discover(path)
            if rec.observe == 0:
                return self._observe(path, rec, addr)
            if rec.observe == 1:
                self._cancel(rec.token)
            return self._read(path, rec.accept)
        if msg.code == Code.PUT:
            if not msg.payload:
                if rec.query:  # Write-Attributes (Core 1.1.1 §6.3.4 / Transport §6.3)
                    return Message(code=Code.CHANGED) if self._exists(path) else Message(code=Code.NOT_FOUND)
                return Message(code=Code.BAD_REQUEST, payload=b"Write without payload")
            return self._write(path, rec, replace=True)
        if msg.code == Code.POST:
            if path.depth == 3:
                return self._execute(path, rec)
            if path.depth in (1, 2):
                return self._create_or_update(path, rec)
            return Message(code=Code.METHOD_NOT_ALLOWED)
        if msg.code == Code.DELETE:
            return self._delete(path)
        return Message(code=Code.METHOD_NOT_ALLOWED)

    # ---- object tree --------------------------------------------------------------------------
    def _exists(self, path: Path) -> bool:
        if path.depth == 0:
            return True
        if path.depth == 1:
            return any(i.object_id == path.object_id for i in self.instances) or path.object_id in self.registry
        if path.depth == 2:
            return path in self.instances
        return any(path.contains(p) for p in self.values)

    def get(self, path: str | Path) -> Value | None:
        return self.values.get(Path.parse(path) if isinstance(path, str) else path)

    def set(self, path: str | Path, value: Value) -> None:
        p = Path.parse(path) if isinstance(path, str) else path
        self.values[p] = value
        self.instances.add(Path(p.object_id, p.instance_id))

    def _values_under(self, path: Path) -> Values:
        return {p: v for p, v in sorted(self.values.items()) if path.contains(p)}

    def _read(self, path: Path, accept: int | None) -> Message:
        vals = self._values_under(path)
        if not vals or (path.depth >= 3 and not self._readable(path)):
            if path.depth >= 3 and vals:
                return Message(code=Code.METHOD_NOT_ALLOWED)
            return Message(code=Code.NOT_FOUND)
        single = path.depth == 4 or (path.depth == 3 and len(vals) == 1 and path in vals)
        fmt = accept if accept is not None else (0 if single and not isinstance(vals.get(path), bytes)
                                                 else 42 if single else int(self.default_format))
        if fmt not in self.formats_supported or (fmt in (0, 42) and not single):
            return Message(code=Code.NOT_ACCEPTABLE)
        try:
            payload = formats.encode(fmt, vals, path, self.registry)
        except FormatError as e:
            return Message(code=Code.NOT_ACCEPTABLE, payload=str(e).encode()[:100])
        m = Message(code=Code.CONTENT, payload=payload)
        m.opt.content_format = fmt
        return m

    def _readable(self, path: Path) -> bool:
        rdef = self.registry.resource_def(Path(*path.parts[:3]))
        return rdef is None or Operations.R in rdef.operations

    def _discover(self, path: Path) -> Message:
        if not self._exists(path):
            return Message(code=Code.NOT_FOUND)
        links: list[str] = []
        if self.mode == PeerMode.BOOTSTRAP and path.depth == 0:
            links.append(f'</>;lwm2m={self.lwm2m}')
        for inst in sorted(self.instances):
            if not path.contains(inst) and not inst.contains(path):
                continue
            attrs = ""
            if inst.object_id in (0, 1) and self.mode == PeerMode.BOOTSTRAP:
                ssid = self.values.get(inst.child(10 if inst.object_id == 0 else 0))
                if ssid is not None:
                    attrs = f";ssid={ssid}"
            links.append(f"<{inst}>{attrs}")
            if path.depth >= 2:
                for p in sorted({Path(*q.parts[:3]) for q in self.values if inst.contains(q)}):
                    if path.contains(p):
                        links.append(f"<{p}>")
        m = Message(code=Code.CONTENT, payload=",".join(links).encode())
        m.opt.content_format = LINK_FORMAT
        return m

    def _write(self, path: Path, rec: RecordedRequest, *, replace: bool) -> Message:
        cf = rec.content_format
        if cf is None:
            return Message(code=Code.BAD_REQUEST, payload=b"Write without Content-Format")
        if cf not in self.formats_supported:
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        if path.depth == 0 or (path.depth == 1 and self.mode != PeerMode.BOOTSTRAP):
            return Message(code=Code.METHOD_NOT_ALLOWED)
        try:
            vals = formats.decode(cf, rec.payload, path, self.registry)
        except FormatError as e:
            return Message(code=Code.BAD_REQUEST, payload=str(e).encode()[:100])
        if self.mode != PeerMode.BOOTSTRAP:
            if not self._exists(path):
                return Message(code=Code.NOT_FOUND)
            for p in vals:
                rdef = self.registry.resource_def(Path(*p.parts[:3]))
                if rdef is not None and Operations.W not in rdef.operations:
                    return Message(code=Code.METHOD_NOT_ALLOWED)
        if replace and path.depth in (2, 3):
            for p in list(self.values):
                if path.contains(p):
                    del self.values[p]
        for p, v in vals.items():
            self.set(p, v)
        if path.depth >= 2:
            self.instances.add(Path(path.object_id, path.instance_id))
        return Message(code=Code.CHANGED)

    def _create_or_update(self, path: Path, rec: RecordedRequest) -> Message:
        if path.depth == 2:  # partial update (Core 1.1.1 §6.3.3)
            if path not in self.instances:
                return Message(code=Code.NOT_FOUND)
            return self._write(path, rec, replace=False)
        cf = rec.content_format
        if cf is None or cf not in self.formats_supported:
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT if cf is not None else Code.BAD_REQUEST)
        try:
            vals = formats.decode(cf, rec.payload, path, self.registry)
        except FormatError as e:
            return Message(code=Code.BAD_REQUEST, payload=str(e).encode()[:100])
        if not vals:
            return Message(code=Code.BAD_REQUEST)
        iids = {p.instance_id for p in vals}
        for p, v in vals.items():
            self.set(p, v)
        m = Message(code=Code.CREATED)
        if len(iids) == 1:
            m.opt.location_path = (str(path.object_id), str(next(iter(iids))))
        return m

    def _execute(self, path: Path, rec: RecordedRequest) -> Message:
        rdef = self.registry.resource_def(path)
        if Path(path.object_id, path.instance_id) not in self.instances or rdef is None:
            return Message(code=Code.NOT_FOUND)
        if not rdef.executable:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        self.executed.append((str(path), rec.payload))
        return Message(code=Code.CHANGED)

    def _delete(self, path: Path) -> Message:
        if self.mode == PeerMode.BOOTSTRAP:
            # Bootstrap-Delete (Core 1.1.1 §6.1.7.6): "/" deletes everything but the
            # Bootstrap-Server Account and the Device object; "/0" spares the bootstrap account.
            keep_bs = {Path(p.object_id, p.instance_id) for p, v in self.values.items()
                       if p.object_id == 0 and p.resource_id == 1 and v is True}
            doomed = [i for i in self.instances if path.contains(i) and i.object_id != 3 and i not in keep_bs]
            for inst in doomed:
                self.instances.discard(inst)
                for p in list(self.values):
                    if inst.contains(p):
                        del self.values[p]
            return Message(code=Code.DELETED)
        if path.depth != 2:
            return Message(code=Code.METHOD_NOT_ALLOWED)
        if path not in self.instances:
            return Message(code=Code.NOT_FOUND)
        self.instances.discard(path)
        for p in list(self.values):
            if path.contains(p):
                del self.values[p]
        return Message(code=Code.DELETED)

    def _bootstrap_finish(self) -> Message:
        """Bootstrap-Finish (Core 1.1.1 §6.1.7.2): 2.04, or whatever ``finish_code`` says."""
        self.bootstrap_finished.set()
        return Message(code=self.finish_code)

    # ---- observe (RFC 7641) -------------------------------------------------------------------
    def _observe(self, path: Path, rec: RecordedRequest, addr: Address) -> Message:
        resp = self._read(path, rec.accept)
        if resp.code != Code.CONTENT:
            return resp
        obs = Observation(rec.token, path, rec.accept, addr)
        self.observations[rec.token] = obs
        resp.opt.observe = obs.seq
        return resp

    def _cancel(self, token: bytes) -> None:
        obs = self.observations.pop(token, None)
        if obs is not None:
            obs.cancelled = True

    def _on_reset(self, mid: int) -> None:
        tok = self._notify_mids.pop(mid, None)
        if tok is not None:
            self._cancel(tok)  # RFC 7641 §3.6: RST to a notification cancels the observation

    def observations_of(self, path: str | Path) -> list[Observation]:
        p = Path.parse(path) if isinstance(path, str) else path
        return [o for o in self.observations.values() if not o.cancelled and o.path == p]

    async def notify(self, path: str | Path, value: Value | None = None, *, confirmable: bool = False,
                     timeout: float | None = None) -> int:
        """Set ``path`` to ``value`` (if given) and send a notification to every observation that
        covers it (RFC 7641 §4.2). Returns the number of notifications sent. With
        ``confirmable``, waits for each ACK (a RST cancels that observation, §3.6)."""
        p = Path.parse(path) if isinstance(path, str) else path
        if value is not None:
            self.set(p, value)
        sent = 0
        for obs in list(self.observations.values()):
            if obs.cancelled or not obs.path.contains(p):
                continue
            m = self._read(obs.path, obs.accept)
            obs.seq = (obs.seq + 1) & 0xFFFFFF
            m.opt.observe = obs.seq
            m.token = obs.token
            m.mtype = CON if confirmable else NON
            if confirmable:
                mid = self.next_mid()
                self._notify_mids[mid] = obs.token
                m.mid = mid
                try:
                    await self.request(m, timeout=timeout, remote=obs.remote, keep_mid=True, keep_token=True)
                except PeerReset:
                    self._cancel(obs.token)
                except PeerTimeout:
                    pass
            else:
                m.mid = self.next_mid()
                self.send_raw(m.encode(), obs.remote)
            sent += 1
        return sent


# ---------------------------------------------------------------------------------------------
# packet level
# ---------------------------------------------------------------------------------------------

class RawCoap(CoapPeerBase):
    """A socket for packet-level cases: send any bytes, collect what comes back.

    Responses are never matched or acknowledged automatically (except by :meth:`request`), so a
    test sees exactly what the DUT sends.
    """

    def __init__(self, remote: Address, *, name: str = "raw", local_host: str = "127.0.0.1",
                 timers: Timers | None = None) -> None:
        super().__init__(remote, name=name, local_host=local_host, timers=timers)
        self.capture = asyncio.Queue()

    def drain(self) -> list[tuple[bytes, Address]]:
        """Forget (and return) everything received so far."""
        out = []
        assert self.capture is not None
        while not self.capture.empty():
            out.append(self.capture.get_nowait())
        return out

    async def collect(self, window: float, *, first_timeout: float | None = None,
                      until: Callable[[bytes], bool] | None = None) -> list[bytes]:
        """Datagrams received within ``window`` seconds (or until one satisfies ``until``)."""
        assert self.capture is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (first_timeout if first_timeout is not None else window)
        got: list[bytes] = []
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return got
            try:
                data, _ = await asyncio.wait_for(self.capture.get(), remaining)
            except asyncio.TimeoutError:
                return got
            got.append(data)
            if until is not None and until(data):
                return got

    async def exchange(self, data: bytes, window: float = 0.5,
                       until: Callable[[bytes], bool] | None = None) -> list[bytes]:
        """Send ``data`` and collect the replies for ``window`` seconds."""
        self.drain()
        self.send_raw(data)
        return await self.collect(window, until=until)

    def _on_response(self, msg: Message, addr: Address) -> None:
        p = self._by_token.get(msg.token) if msg.mtype != ACK else self._by_mid.get(msg.mid)
        if p is not None and not p.future.done() and (msg.mtype != ACK or p.token == msg.token):
            if msg.mtype == CON:
                self._send_empty(ACK, msg.mid, addr)
            p.future.set_result(msg)

    async def handle_request(self, msg: Message, addr: Address) -> Message | None:
        return None


def decode_or_none(data: bytes) -> Message | None:
    """The datagram as a Message, or None if it does not decode."""
    try:
        return Message.decode(data)
    except Exception:  # noqa: BLE001
        return None
