"""A programmable LwM2M Server peer (the suite's side of a client-under-test).

Built directly on :class:`reference.coap.CoapEndpoint` (the project's RFC 7252 message layer)
rather than on the reference server, because a conformance test must control the packet level:

* every datagram in and out is recorded with its arrival/send time (:class:`WireRecord`), so a
  failed check can show the exact exchange (and the framework's recording proxy, when the
  fixture puts one in front, keeps a pcap of the same traffic);
* the answer to a request can be scripted per request kind (:meth:`ServerPeer.on_next`): answer
  the next Update with 4.04, withhold the response (Empty ACK only), or drop the request
  entirely (no ACK: the client sees an unreachable server), or delay it;
* requests the client sends (Register, Update, De-register, anything else) are kept in order
  (:attr:`ServerPeer.requests`) with their options, payload, source address and arrival time, and
  can be awaited with a bound (:meth:`ServerPeer.wait_request`);
* Device Management operations (Core 1.1.1 §6.3, Transport 1.1.1 §6.3) and Observe (RFC 7641,
  Core §6.4) go to the address of the client's latest Register/Update (which is how a server
  follows a nomadic client, Core 1.1.1 §6.2.2), or to an explicit address;
* raw datagrams can be sent from the peer's own socket (:meth:`PeerBase.send_raw_and_collect`),
  which the packet-level tests use for malformed CoAP.

The default behaviour is a plain, spec-following registration interface (Transport 1.1.1 §6.2,
Core 1.1.1 §6.2): Register -> 2.01 Created + Location-Path ``rd/<id>``, Update of a known
location -> 2.04 Changed, De-register -> 2.02 Deleted, unknown location -> 4.04 Not Found.
"""
from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from reference.coap import CoapEndpoint, CoapReset, CoapTimeout, Observation, TransmissionParameters
from reference.formats import decode as decode_values
from reference.formats import encode as encode_values
from reference.formats import linkformat
from reference.model.path import Path
from reference.model.registry import ObjectRegistry
from reference.model.types import ContentFormat, Values

log = logging.getLogger("conformance.peers")

Remote = tuple[str, int]

#: Short transmission parameters for loopback tests (RFC 7252 §4.8 allows changing them): a lost
#: message is retried after ~0.5-0.75 s, an unanswered CON gives up after ~5 s.
TEST_PARAMETERS = TransmissionParameters(ack_timeout=0.5, ack_random_factor=1.5, max_retransmit=3,
                                         exchange_lifetime_override=30.0)

_TYPE_NAMES = {0: "CON", 1: "NON", 2: "ACK", 3: "RST"}
_registry: ObjectRegistry | None = None


def object_registry() -> ObjectRegistry:
    """The shipped object definitions (loaded once; used to encode/decode typed payloads)."""
    global _registry
    if _registry is None:
        _registry = ObjectRegistry.default()
    return _registry


def code_str(code: Any) -> str:
    """``"2.05"`` for a response code, ``"GET"``... for a method, ``"0.00"`` for Empty."""
    try:
        c = int(code)
    except (TypeError, ValueError):
        return str(code)
    if c == 0:
        return "0.00"
    if c < 32:
        return {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE", 5: "FETCH", 6: "PATCH", 7: "iPATCH"}.get(c, f"0.{c:02d}")
    return f"{c >> 5}.{c & 31:02d}"


def describe_datagram(data: bytes) -> str:
    """One line describing a CoAP datagram (or why it is not one), for evidence output."""
    if len(data) < 4:
        return f"<{len(data)} bytes, not CoAP: {data.hex()}>"
    ver, mtype, tkl = data[0] >> 6, (data[0] >> 4) & 3, data[0] & 15
    mid = (data[2] << 8) | data[3]
    head = f"{_TYPE_NAMES[mtype]} {code_str(data[1])} mid={mid}"
    if ver != 1 or tkl > 8:
        return f"{head} <malformed: version={ver} tkl={tkl}> {data[:24].hex()}"
    try:
        msg = Message.decode(data)
    except Exception as exc:  # noqa: BLE001 - evidence of a malformed datagram
        return f"{head} <undecodable: {exc}> {data[:24].hex()}"
    return describe_message(msg)


def describe_message(msg: Message) -> str:
    """One line describing a decoded CoAP message (incoming or outgoing)."""
    mtype = _TYPE_NAMES.get(int(msg.mtype), "?") if msg.mtype is not None else "?"
    mid = "-" if msg.mid is None else msg.mid
    parts = [f"{mtype} {code_str(msg.code)} mid={mid}"]
    if msg.token:
        parts.append(f"tok={msg.token.hex()}")
    if msg.opt.uri_path:
        parts.append("/" + "/".join(msg.opt.uri_path))
    if msg.opt.uri_query:
        parts.append("?" + "&".join(msg.opt.uri_query))
    if msg.opt.location_path:
        parts.append("loc=/" + "/".join(msg.opt.location_path))
    if msg.opt.observe is not None:
        parts.append(f"obs={msg.opt.observe}")
    if msg.opt.content_format is not None:
        parts.append(f"cf={int(msg.opt.content_format)}")
    if msg.opt.accept is not None:
        parts.append(f"accept={int(msg.opt.accept)}")
    if msg.opt.block2 is not None:
        parts.append(f"block2={msg.opt.block2}")
    if msg.payload:
        p = bytes(msg.payload)
        shown = p[:60].decode("utf-8", "replace") if _printable(p[:60]) else p[:30].hex()
        parts.append(f"[{len(p)} B] {shown}{'…' if len(p) > 60 else ''}")
    return " ".join(parts)


def _printable(b: bytes) -> bool:
    try:
        s = b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in s)


@dataclass
class WireRecord:
    """One datagram seen by a peer. ``t`` is seconds since the peer started (monotonic)."""

    t: float
    direction: str          # "in" (from the DUT) or "out" (to the DUT)
    remote: Remote
    data: bytes
    peer: str = "peer"
    dropped: bool = False   # an incoming datagram a rule dropped before the CoAP layer saw it

    @property
    def mid(self) -> int | None:
        return (self.data[2] << 8) | self.data[3] if len(self.data) >= 4 else None

    @property
    def mtype(self) -> int | None:
        return (self.data[0] >> 4) & 3 if self.data else None

    @property
    def code(self) -> int | None:
        return self.data[1] if len(self.data) >= 2 else None

    def message(self) -> Message | None:
        try:
            return Message.decode(self.data, self.remote)
        except Exception:  # noqa: BLE001
            return None

    def summary(self) -> str:
        arrow = "<-" if self.direction == "in" else "->"
        note = " (dropped by test rule)" if self.dropped else ""
        return (f"{self.t:8.3f} {self.peer} {arrow} {self.remote[0]}:{self.remote[1]} "
                f"{describe_datagram(self.data)}{note}")


class _RecordingEndpoint(CoapEndpoint):
    """CoapEndpoint that records every datagram and can drop incoming ones by rule."""

    owner: "PeerBase"

    def datagram_received(self, data: bytes, addr: Any) -> None:
        remote = (str(addr[0]), int(addr[1]))
        owner = self.owner
        drop = owner._should_drop(data, remote)
        owner._record("in", remote, data, dropped=drop)
        if not drop:
            super().datagram_received(data, addr)

    def send_raw(self, data: bytes, remote: Any) -> None:
        if self.transport is not None and not self._closed:
            self.owner._record("out", (str(remote[0]), int(remote[1])), data)
        super().send_raw(data, remote)

    _send = send_raw


class RequestKind(str, enum.Enum):
    """What a request from the DUT is, by method and path (Transport 1.1.1 Tables 6.1/6.2)."""

    REGISTER = "register"              # POST /rd?ep=...
    UPDATE = "update"                  # POST /rd/{location}
    DEREGISTER = "deregister"          # DELETE /rd/{location}
    BOOTSTRAP_REQUEST = "bootstrap-request"  # POST /bs?ep=...
    SEND = "send"                      # POST /dp (LwM2M 1.1 Send)
    OTHER = "other"


class _MessageView:
    """Accessors over the recorded CoAP message ``msg`` shared by requests and notifications."""

    msg: Message

    @property
    def payload(self) -> bytes:
        return bytes(self.msg.payload)

    @property
    def content_format(self) -> int | None:
        cf = self.msg.opt.content_format
        return None if cf is None else int(cf)


@dataclass
class IncomingRequest(_MessageView):
    """A request the DUT sent to a peer, with the peer's answer once given."""

    index: int
    t: float
    remote: Remote
    kind: RequestKind
    msg: Message
    response: Message | None = None
    answered_with: str = ""   # "2.01", "none" (Empty ACK only), "dropped", ...

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.msg.opt.uri_path)

    @property
    def query(self) -> dict[str, str | None]:
        """Uri-Query as a dict (``b``/``Q`` flags without ``=`` map to None). Repeated keys keep
        the last value; :attr:`query_list` has them all."""
        out: dict[str, str | None] = {}
        for q in self.msg.opt.uri_query:
            k, eq, v = q.partition("=")
            out[k] = v if eq else None
        return out

    @property
    def query_list(self) -> list[str]:
        return list(self.msg.opt.uri_query)

    @property
    def confirmable(self) -> bool:
        return self.msg.mtype == Type.CON

    def links(self) -> list[linkformat.Link]:
        """The payload parsed as CoRE Link Format (lenient about whitespace); [] if empty.
        Raises :class:`reference.formats.FormatError` when malformed."""
        if not self.msg.payload:
            return []
        return linkformat.parse(bytes(self.msg.payload), strict=False)

    def summary(self) -> str:
        return f"{self.t:8.3f} {self.kind.value} from {self.remote[0]}:{self.remote[1]}: " + \
            describe_message(self.msg) + (f" => {self.answered_with}" if self.answered_with else "")


@dataclass
class Rule:
    """A scripted answer for the next ``times`` requests of ``kind`` (None = any kind).

    ``action``: ``"code"`` (answer with ``code``, optional ``payload``/``location``),
    ``"none"`` (no response: a CON gets only an Empty ACK, RFC 7252 §5.2.2's first half),
    ``"drop"`` (the datagram -- and, with ``drop_copies``, its retransmissions -- never reaches the
    CoAP layer: no ACK at all),
    ``"respond"`` (``respond(request) -> Message | None`` decides). ``delay`` seconds pass before
    answering (codes/respond). ``where`` restricts matching further.
    """

    kind: RequestKind | None
    action: str
    code: Code | None = None
    payload: bytes = b""
    delay: float = 0.0
    times: int = 1
    respond: Callable[[IncomingRequest], Message | None] | None = None
    where: Callable[[Message], bool] | None = None
    used: int = 0
    drop_copies: bool = True


def classify(msg: Message) -> RequestKind:
    """Request kind by method and path (Transport 1.1.1 §6: /rd, /rd/{loc}, /bs, /dp)."""
    path = tuple(msg.opt.uri_path)
    code = msg.code
    if path[:1] == ("rd",):
        if code == Code.POST:
            return RequestKind.REGISTER if len(path) == 1 else RequestKind.UPDATE
        if code == Code.DELETE and len(path) > 1:
            return RequestKind.DEREGISTER
    if path == ("bs",) and code == Code.POST:
        return RequestKind.BOOTSTRAP_REQUEST
    if path == ("dp",) and code == Code.POST:
        return RequestKind.SEND
    return RequestKind.OTHER


class PeerBase:
    """Shared machinery of the server-role peers: endpoint, recording, rules, waiting."""

    name = "peer"

    def __init__(self, *, name: str | None = None, params: TransmissionParameters = TEST_PARAMETERS) -> None:
        if name:
            self.name = name
        self.params = params
        self.endpoint: _RecordingEndpoint | None = None
        self.wire: list[WireRecord] = []
        self.requests: list[IncomingRequest] = []
        self.rules: list[Rule] = []
        #: when True every incoming datagram is dropped (an unreachable server)
        self.offline = False
        self.dtls: Any = None  # reference.security.DtlsServerBridge when started with psk
        self._t0 = time.monotonic()
        self._new = asyncio.Event()
        self._dropped_exchanges: set[tuple[Remote, int]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0, *,
                    psk: Mapping[bytes, bytes] | None = None) -> "PeerBase":
        """Bind ``host:port`` (0 = free port). With ``psk`` (identity -> key) the peer is reached
        over DTLS 1.2 PSK (Transport 1.1.1 §5.2) through a :class:`DtlsServerBridge` and
        :attr:`uri` is ``coaps://``; the CoAP endpoint itself stays on loopback behind it."""
        self._loop = asyncio.get_running_loop()
        self._t0 = time.monotonic()
        ep = _RecordingEndpoint(self._handle, params=self.params, separate_after=None, name=self.name)
        ep.owner = self
        await self._loop.create_datagram_endpoint(lambda: ep, local_addr=(host, port if psk is None else 0))
        self.endpoint = ep
        if psk is not None:
            from reference.security import DtlsServerBridge

            table = {bytes(k): bytes(v) for k, v in psk.items()}
            bridge = DtlsServerBridge(listen=(host, port), forward_to=ep.address,
                                      psk_lookup=lambda ident: table.get(bytes(ident)),
                                      handshake_timeout=5.0, retransmit_min=0.5)
            await bridge.start()
            self.dtls = bridge
        return self

    async def close(self) -> None:
        if self.dtls is not None:
            try:
                await asyncio.wait_for(self.dtls.close(), 5)
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
            self.dtls = None
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    async def __aenter__(self) -> "PeerBase":
        if self.endpoint is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> Remote:
        """Where the DUT must send to: the DTLS bridge when secured, else the CoAP socket."""
        if self.dtls is not None:
            a = self.dtls.address
            return (str(a[0]), int(a[1]))
        assert self.endpoint is not None, "peer not started"
        return self.endpoint.address

    @property
    def coap_address(self) -> Remote:
        """The plain CoAP socket (behind the DTLS bridge when secured)."""
        assert self.endpoint is not None, "peer not started"
        return self.endpoint.address

    @property
    def uri(self) -> str:
        host, port = self.address
        scheme = "coaps" if self.dtls is not None else "coap"
        return f"{scheme}://{host if ':' not in host else '[' + host + ']'}:{port}"

    def now(self) -> float:
        """Seconds since the peer started (the time base of every record)."""
        return time.monotonic() - self._t0

    # ---- recording ------------------------------------------------------------------------------
    def _record(self, direction: str, remote: Remote, data: bytes, dropped: bool = False) -> None:
        self.wire.append(WireRecord(self.now(), direction, remote, bytes(data), self.name, dropped))
        self._wake()

    def _wake(self) -> None:
        ev = self._new
        self._new = asyncio.Event()
        ev.set()

    def mark(self) -> int:
        """A cursor into :attr:`requests`: pass it as ``after=`` to wait only for newer ones."""
        return len(self.requests)

    def wire_mark(self) -> int:
        return len(self.wire)

    def exchange(self, since: int = 0, limit: int = 60) -> list[str]:
        """The recorded datagrams from wire index ``since`` on (the last ``limit``), as lines."""
        recs = self.wire[since:]
        lines = [r.summary() for r in recs[-limit:]]
        if len(recs) > limit:
            lines.insert(0, f"... {len(recs) - limit} earlier datagrams omitted")
        return lines

    # ---- rules ----------------------------------------------------------------------------------
    def on_next(self, kind: RequestKind | str | None, *, code: Code | None = None, payload: bytes = b"",
                action: str | None = None, delay: float = 0.0, times: int = 1,
                respond: Callable[[IncomingRequest], Message | None] | None = None,
                where: Callable[[Message], bool] | None = None, drop_copies: bool = True) -> Rule:
        """Script the answer to the next ``times`` requests of ``kind`` (see :class:`Rule`).

        ``code=Code.NOT_FOUND`` answers 4.04; ``action="none"`` withholds the response (Empty
        ACK only); ``action="drop"`` drops the request and (``drop_copies``) its retransmissions."""
        if action is None:
            action = "respond" if respond is not None else "code" if code is not None else "none"
        if action not in ("code", "none", "drop", "respond"):
            raise ValueError(f"unknown rule action {action!r}")
        rule = Rule(RequestKind(kind) if kind is not None else None, action, code, payload, delay,
                    times, respond, where, drop_copies=drop_copies)
        self.rules.append(rule)
        return rule

    def clear_rules(self) -> None:
        self.rules.clear()

    def _match_rule(self, kind: RequestKind, msg: Message, actions: Iterable[str]) -> Rule | None:
        for rule in self.rules:
            if rule.used >= rule.times or rule.action not in actions:
                continue
            if rule.kind is not None and rule.kind != kind:
                continue
            if rule.where is not None:
                try:
                    if not rule.where(msg):
                        continue
                except Exception:  # noqa: BLE001 - a faulty predicate does not match
                    continue
            return rule
        return None

    def _should_drop(self, data: bytes, remote: Remote) -> bool:
        if self.offline:
            return True
        if len(data) < 4 or (data[0] >> 6) != 1 or ((data[0] >> 4) & 3) not in (0, 1) or not 0 < data[1] < 32:
            return False  # only requests (CON/NON, class 0, not Empty) can be dropped by a rule
        mid = (data[2] << 8) | data[3]
        if (remote, mid) in self._dropped_exchanges:
            return True  # a retransmission of a dropped request
        if not any(r.action == "drop" and r.used < r.times for r in self.rules):
            return False
        try:
            msg = Message.decode(data, remote)
        except Exception:  # noqa: BLE001
            return False
        kind = classify(msg)
        rule = self._match_rule(kind, msg, ("drop",))
        if rule is None:
            return False
        rule.used += 1
        if rule.drop_copies:
            self._dropped_exchanges.add((remote, mid))
        idx = len(self.requests)
        self.requests.append(IncomingRequest(idx, self.now(), remote, kind, msg, None, "dropped"))
        return True

    # ---- serving --------------------------------------------------------------------------------
    async def _handle(self, msg: Message, remote: Any) -> Message | None:
        remote = (str(remote[0]), int(remote[1]))
        kind = classify(msg)
        req = IncomingRequest(len(self.requests), self.now(), remote, kind, msg)
        self.requests.append(req)
        rule = self._match_rule(kind, msg, ("code", "none", "respond"))
        try:
            if rule is not None:
                rule.used += 1
                if rule.delay:
                    await asyncio.sleep(rule.delay)
                if rule.action == "none":
                    resp = None
                elif rule.action == "respond":
                    assert rule.respond is not None
                    resp = rule.respond(req)
                else:
                    resp = Message(code=rule.code, payload=rule.payload)
            else:
                resp = await self.default_response(req)
        except Exception:
            log.exception("%s: handler failed", self.name)
            resp = Message(code=Code.INTERNAL_SERVER_ERROR)
        req.response = resp
        req.answered_with = "none (Empty ACK)" if resp is None else code_str(resp.code)
        self.after_response(req)
        self._wake()
        return resp

    async def default_response(self, req: IncomingRequest) -> Message | None:
        """The spec behaviour when no rule applies (subclasses implement their interface)."""
        return Message(code=Code.NOT_FOUND)

    def after_response(self, req: IncomingRequest) -> None:
        """Hook run after the answer to ``req`` is decided (state changes of subclasses)."""

    # ---- waiting --------------------------------------------------------------------------------
    async def wait_request(self, kind: RequestKind | str | None = None, *, timeout: float,
                           after: int | IncomingRequest | None = None,
                           where: Callable[[IncomingRequest], bool] | None = None,
                           answered: bool = False) -> IncomingRequest | None:
        """The first request of ``kind`` with index >= ``after`` (a :meth:`mark` or a request,
        meaning "after that one"), or None if none arrives within ``timeout`` seconds.
        ``answered=True`` also waits until the peer has decided its answer."""
        k = RequestKind(kind) if kind is not None else None
        start = 0 if after is None else (after.index + 1 if isinstance(after, IncomingRequest) else after)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ev = self._new
            for r in self.requests[start:]:
                if (k is None or r.kind == k) and (where is None or where(r)) \
                        and (not answered or r.answered_with):
                    return r
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(ev.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def requests_of(self, kind: RequestKind | str, after: int = 0) -> list[IncomingRequest]:
        k = RequestKind(kind)
        return [r for r in self.requests[after:] if r.kind == k]

    async def wait_wire(self, predicate: Callable[[WireRecord], bool], *, timeout: float,
                        since: int = 0) -> WireRecord | None:
        """The first recorded datagram from wire index ``since`` on that matches, or None."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ev = self._new
            for r in self.wire[since:]:
                if predicate(r):
                    return r
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(ev.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # ---- raw datagrams ----------------------------------------------------------------------------
    async def send_raw_and_collect(self, data: bytes, remote: Remote, *, window: float = 1.0,
                                   mid: int | None = None, first_only: bool = True) -> list[WireRecord]:
        """Send ``data`` as is from the peer's socket to ``remote``; collect the datagrams that
        come back from ``remote`` within ``window`` seconds whose Message ID is ``mid`` (when
        given; else every datagram). With ``first_only`` return as soon as one arrived."""
        assert self.endpoint is not None
        since = len(self.wire)
        self.endpoint.send_raw(data, remote)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window

        def match(r: WireRecord) -> bool:
            return r.direction == "in" and r.remote == tuple(remote) and (mid is None or r.mid == mid)

        while True:
            got = [r for r in self.wire[since:] if match(r)]
            if got and first_only:
                return got
            remaining = deadline - loop.time()
            if remaining <= 0:
                return got
            ev = self._new
            try:
                await asyncio.wait_for(ev.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    # ---- requests to the DUT --------------------------------------------------------------------------
    async def request(self, msg: Message, remote: Remote, *, timeout: float = 5.0) -> Message:
        """Send a request to the DUT and return its response. Raises :class:`CoapTimeout`
        (no answer within ``timeout``), :class:`CoapReset` (the DUT rejected it with RST)."""
        assert self.endpoint is not None, "peer not started"
        return await self.endpoint.request(msg, remote, timeout=timeout)


@dataclass
class Registration:
    """The client's registration as the peer holds it (Core 1.1.1 §6.2.1 parameters)."""

    endpoint: str
    location: str
    lifetime: int | None
    lwm2m: str | None
    binding: str | None
    queue: bool
    sms: str | None
    links: str
    remote: Remote
    registered_at: float
    updated_at: float
    register_request: IncomingRequest
    updates: list[IncomingRequest] = field(default_factory=list)
    deregistered: bool = False


@dataclass
class Notification(_MessageView):
    """One notification of an observation (RFC 7641 §4.2) with its arrival time."""

    t: float
    msg: Message

    @property
    def observe(self) -> int | None:
        return self.msg.opt.observe

    @property
    def code(self) -> str:
        return code_str(self.msg.code)


class PeerObservation:
    """An observation the server peer holds on a client resource (RFC 7641 §3, Core §6.4.1)."""

    def __init__(self, peer: "ServerPeer", path: Path, obs: Observation, accept: int | None) -> None:
        self.peer = peer
        self.path = path
        self.accept = accept
        self.obs = obs
        self.started = peer.now()
        self.first_at: float | None = None
        self.first: Message | None = None
        self.notifications: list[Notification] = []
        self._new = asyncio.Event()
        obs.add_callback(self._on_notification)

    def _on_notification(self, msg: Message) -> None:
        self.notifications.append(Notification(self.peer.now(), msg))
        ev = self._new
        self._new = asyncio.Event()
        ev.set()

    async def response(self, timeout: float = 5.0) -> Message:
        """The first response (2.05 Content with Observe when established). Raises
        :class:`CoapTimeout` / :class:`CoapReset` like any request."""
        try:
            msg = await asyncio.wait_for(asyncio.shield(self.obs.response), timeout)
        except asyncio.TimeoutError:
            raise CoapTimeout(f"no response to Observe {self.path} within {timeout} s") from None
        if self.first is None:
            self.first, self.first_at = msg, self.peer.now()
        return msg

    @property
    def established(self) -> bool:
        return self.obs.established and not self.obs.ended

    async def wait_notifications(self, count: int, timeout: float) -> list[Notification]:
        """Wait until ``count`` notifications arrived in total (or ``timeout``); return them all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.notifications) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            ev = self._new
            try:
                await asyncio.wait_for(ev.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return list(self.notifications)

    async def next_notification(self, timeout: float) -> Notification | None:
        n = len(self.notifications)
        got = await self.wait_notifications(n + 1, timeout)
        return got[n] if len(got) > n else None

    async def cancel(self, timeout: float = 5.0) -> Message:
        """Proactive cancellation: GET with Observe=1 and the same token (RFC 7641 §3.6)."""
        return await self.obs.cancel(timeout=timeout)

    def forget(self) -> None:
        """Reactive cancellation: forget the token, so that the endpoint answers the next
        notification with RST (RFC 7641 §3.6; Core 1.1.1 §6.4.2 Cancel Observation)."""
        self.obs.cancel_reactive()


class ServerPeer(PeerBase):
    """The LwM2M Server played by the suite against a client DUT.

    Default behaviour: the Registration Interface of Transport 1.1.1 §6.2 (see module docstring).
    Every DM method returns the client's response :class:`aiocoap.Message` (or raises
    :class:`CoapTimeout` / :class:`CoapReset`); typed helpers decode payloads with the project's
    codecs.
    """

    name = "server"

    def __init__(self, *, name: str | None = None, params: TransmissionParameters = TEST_PARAMETERS,
                 location_prefix: tuple[str, ...] = ("rd",)) -> None:
        super().__init__(name=name, params=params)
        self.location_prefix = location_prefix
        self.registration: Registration | None = None
        self.history: list[Registration] = []
        self._loc_seq = itertools.count(1)

    # ---- registration interface -------------------------------------------------------------------
    def new_location(self) -> str:
        return f"{next(self._loc_seq)}{secrets.token_hex(2)}"

    async def default_response(self, req: IncomingRequest) -> Message | None:
        q = req.query
        if req.kind == RequestKind.REGISTER:
            if not q.get("ep"):
                return Message(code=Code.BAD_REQUEST, payload=b"missing ep")
            loc = self.new_location()
            lt = q.get("lt")
            reg = Registration(
                endpoint=str(q["ep"]), location=loc,
                lifetime=int(lt) if lt and lt.isdigit() else None, lwm2m=q.get("lwm2m"),
                binding=q.get("b"), queue="Q" in q, sms=q.get("sms"),
                links=req.payload.decode("utf-8", "replace"), remote=req.remote,
                registered_at=req.t, updated_at=req.t, register_request=req)
            self.registration = reg
            self.history.append(reg)
            return Message(code=Code.CREATED, location_path=(*self.location_prefix, loc))
        if req.kind in (RequestKind.UPDATE, RequestKind.DEREGISTER):
            reg = self.registration
            loc = "/".join(req.path)
            if reg is None or reg.deregistered or loc != "/".join((*self.location_prefix, reg.location)):
                return Message(code=Code.NOT_FOUND, payload=b"unknown registration")
            if req.kind == RequestKind.DEREGISTER:
                reg.deregistered = True
                return Message(code=Code.DELETED)
            lt = q.get("lt")
            if lt is not None:
                if not lt.isdigit():
                    return Message(code=Code.BAD_REQUEST, payload=b"bad lt")
                reg.lifetime = int(lt)
            if "b" in q:
                reg.binding = q["b"]
            if "Q" in q:
                reg.queue = True
            if req.payload:
                reg.links = req.payload.decode("utf-8", "replace")
            reg.remote = req.remote  # the server follows the client's address (Core §6.2.2)
            reg.updated_at = req.t
            reg.updates.append(req)
            return Message(code=Code.CHANGED)
        return Message(code=Code.NOT_FOUND)

    async def wait_registered(self, timeout: float, after: int = 0) -> Registration | None:
        """Wait for a Register answered 2.01 (index >= ``after``); the resulting registration."""
        req = await self.wait_request(RequestKind.REGISTER, timeout=timeout, after=after,
                                      where=lambda r: r.answered_with == "2.01", answered=True)
        if req is None:
            return None
        for reg in reversed(self.history):
            if reg.register_request is req:
                return reg
        return None

    @property
    def client(self) -> Remote:
        """The address of the client's latest Register/Update (where DM requests go)."""
        if self.registration is None:
            raise RuntimeError(f"{self.name}: the client has not registered")
        return self.registration.remote

    # ---- device management (Core 1.1.1 §6.3, Transport 1.1.1 Table 6.3-1) ---------------------------
    def _target(self, remote: Remote | None) -> Remote:
        return tuple(remote) if remote is not None else self.client  # type: ignore[return-value]

    @staticmethod
    def _path(path: Path | str) -> Path:
        return path if isinstance(path, Path) else Path.parse(path)

    async def read(self, path: Path | str, *, accept: int | None = None, remote: Remote | None = None,
                   timeout: float = 5.0) -> Message:
        """Read: GET path [Accept] (Core 1.1.1 §6.3.1)."""
        msg = Message(code=Code.GET, uri_path=self._path(path).uri_path())
        if accept is not None:
            msg.opt.accept = accept
        return await self.request(msg, self._target(remote), timeout=timeout)

    async def discover(self, path: Path | str, *, remote: Remote | None = None, timeout: float = 5.0,
                       depth: int | None = None) -> Message:
        """Discover: GET path, Accept application/link-format (Core 1.1.1 §6.3.2)."""
        msg = Message(code=Code.GET, uri_path=self._path(path).uri_path())
        msg.opt.accept = int(ContentFormat.LINK_FORMAT)
        if depth is not None:
            msg.opt.uri_query = (f"depth={depth}",)
        return await self.request(msg, self._target(remote), timeout=timeout)

    async def write(self, path: Path | str, payload: bytes, content_format: int, *, replace: bool = True,
                    remote: Remote | None = None, timeout: float = 5.0) -> Message:
        """Write: PUT (replace) or POST (partial update) with a payload (Core 1.1.1 §6.3.3)."""
        msg = Message(code=Code.PUT if replace else Code.POST, uri_path=self._path(path).uri_path(),
                      payload=payload)
        msg.opt.content_format = content_format
        return await self.request(msg, self._target(remote), timeout=timeout)

    async def write_values(self, path: Path | str, values: Values, fmt: int, *, replace: bool = True,
                           remote: Remote | None = None, timeout: float = 5.0) -> Message:
        """Write ``values`` encoded in ``fmt`` with the project's codecs."""
        p = self._path(path)
        payload = encode_values(fmt, values, p, object_registry())
        return await self.write(p, payload, fmt, replace=replace, remote=remote, timeout=timeout)

    async def execute(self, path: Path | str, args: bytes = b"", *, remote: Remote | None = None,
                      timeout: float = 5.0) -> Message:
        """Execute: POST on a resource, optional text arguments (Core 1.1.1 §6.3.5)."""
        msg = Message(code=Code.POST, uri_path=self._path(path).uri_path(), payload=args)
        if args:
            msg.opt.content_format = int(ContentFormat.TEXT)
        return await self.request(msg, self._target(remote), timeout=timeout)

    async def create(self, path: Path | str, payload: bytes, content_format: int, *,
                     remote: Remote | None = None, timeout: float = 5.0) -> Message:
        """Create: POST on an object with the new instance (Core 1.1.1 §6.3.6)."""
        msg = Message(code=Code.POST, uri_path=self._path(path).uri_path(), payload=payload)
        msg.opt.content_format = content_format
        return await self.request(msg, self._target(remote), timeout=timeout)

    async def delete(self, path: Path | str, *, remote: Remote | None = None, timeout: float = 5.0) -> Message:
        """Delete: DELETE an object instance (Core 1.1.1 §6.3.7)."""
        msg = Message(code=Code.DELETE, uri_path=self._path(path).uri_path())
        return await self.request(msg, self._target(remote), timeout=timeout)

    async def write_attributes(self, path: Path | str, attrs: Mapping[str, Any] | Iterable[str], *,
                               remote: Remote | None = None, timeout: float = 5.0) -> Message:
        """Write-Attributes: PUT with the attributes as Uri-Query, no payload (Core 1.1.1 §6.3.4).
        ``attrs`` is ``{"pmin": 1, "gt": 2.5, "st": None}`` (None = unset, sent as ``st``) or a
        list of raw query strings."""
        if isinstance(attrs, Mapping):
            query = tuple(k if v is None else f"{k}={_num(v)}" for k, v in attrs.items())
        else:
            query = tuple(attrs)
        msg = Message(code=Code.PUT, uri_path=self._path(path).uri_path(), uri_query=query)
        return await self.request(msg, self._target(remote), timeout=timeout)

    def observe(self, path: Path | str, *, accept: int | None = None,
                remote: Remote | None = None) -> PeerObservation:
        """Observe: GET with Observe=0 (RFC 7641 §3.1, Core 1.1.1 §6.4.1). Returns at once; await
        :meth:`PeerObservation.response` for the first response."""
        assert self.endpoint is not None, "peer not started"
        p = self._path(path)
        msg = Message(code=Code.GET, uri_path=p.uri_path())
        if accept is not None:
            msg.opt.accept = accept
        obs = self.endpoint.observe(msg, self._target(remote))
        return PeerObservation(self, p, obs, accept)

    # ---- typed helpers --------------------------------------------------------------------------------
    @staticmethod
    def decode(resp: Message, path: Path | str) -> Values:
        """Decode a Read response payload by its Content-Format with the project's codecs."""
        p = path if isinstance(path, Path) else Path.parse(path)
        cf = resp.opt.content_format
        if cf is None:
            raise ValueError("response has no Content-Format")
        return decode_values(int(cf), bytes(resp.payload), p, object_registry())


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


__all__ = [
    "CoapReset", "CoapTimeout", "IncomingRequest", "Notification", "PeerBase", "PeerObservation",
    "Registration", "RequestKind", "Rule", "ServerPeer", "TEST_PARAMETERS", "WireRecord", "classify",
    "code_str", "describe_datagram", "describe_message", "object_registry",
]
