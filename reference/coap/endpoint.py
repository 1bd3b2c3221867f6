"""A fast CoAP-over-UDP endpoint for server roles (RFC 7252 message layer, RFC 7641, RFC 7959).

aiocoap's full stack answers a few thousand requests per second; a registration server must do
more. This module keeps aiocoap's :class:`aiocoap.Message` as the wire codec (option encoding and
decoding) and implements only the message layer on an :class:`asyncio.DatagramProtocol`:

Incoming (the server side)
    * requests are handed to ``handler(request, remote)``; the returned message is sent as a
      piggybacked response in the ACK of a CON request (§5.2.1), as a NON response to a NON
      request (§5.2.3), or, if the handler takes longer than ``separate_after`` seconds, the
      CON is acknowledged with an Empty ACK and the response follows as a separate CON (§5.2.2);
    * duplicates (same source and Message ID within EXCHANGE_LIFETIME) are detected; a duplicate
      CON gets the very same bytes again, a duplicate NON is ignored (§4.5);
    * an Empty CON ("CoAP ping") and a CON with a reserved code class (1, 6, 7) or a message
      format error are rejected with a RST; the same faults in NON/ACK/RST are silently ignored
      (§4.2, §4.3). Datagrams shorter than 4 bytes or with a version other than 1 are ignored (§3);
    * a CON request with an unrecognized critical option gets 4.02 Bad Option; a NON one is
      rejected with RST (§5.4.1, with §5.4.3 for lengths and §5.4.5 for repetition); bad
      elective options are dropped before the handler sees the request;
    * Proxy-Uri / Proxy-Scheme get 5.05 Proxying Not Supported (§5.7.2) unless ``proxy=True``.

Outgoing (the client side of server-initiated requests)
    * :meth:`CoapEndpoint.request` sends a CON (retransmitted with exponential back-off per
      §4.2 and §4.8) or NON request, matches the response by token (§5.3.2), accepts piggybacked
      and separate responses (ACKing CON responses), fails with :class:`CoapReset` on RST and
      :class:`CoapTimeout` when retransmissions are exhausted; it reassembles Block2 responses
      (RFC 7959 §2.4) unless told not to;
    * :meth:`CoapEndpoint.observe` registers an observation (RFC 7641 §3.1, Observe=0), delivers
      notifications in order (§3.4 freshness), ACKs CON notifications, answers notifications for
      unknown tokens with RST (§3.6) and cancels proactively (GET with Observe=1) or reactively.

No datagram, however crafted, raises out of :meth:`CoapEndpoint.datagram_received`.
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import deque
from typing import Any, Awaitable, Callable, Iterable

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import BlockOption

from reference.coap.params import DEFAULT_PARAMETERS, TransmissionParameters
from reference.coap.udp import BatchUdpTransport
from reference.coap.wire import (
    DEFAULT_RECOGNIZED_CRITICAL,
    MessageFormatError,
    check_options,
    empty,
    raw_response,
    scan_options,
)

log = logging.getLogger(__name__)

Remote = tuple  # (host, port) as given by the socket layer; IPv6 4-tuples are cut to 2
#: ``async def handle(request, remote) -> Message | None``. The request's ``opt``, ``code`` and
#: ``payload`` are decoded; ``None`` means "no response" (a CON still gets an Empty ACK).
RequestHandler = Callable[[Message, Remote], Awaitable["Message | None"]]

CON, NON, ACK, RST = Type.CON, Type.NON, Type.ACK, Type.RST
#: Critical options understood in responses: Block1/Block2 (RFC 7959). Others reject (§5.4.1).
RESPONSE_RECOGNIZED_CRITICAL = frozenset({int(OptionNumber.BLOCK2), int(OptionNumber.BLOCK1)})
_PROXY_OPTIONS = (int(OptionNumber.PROXY_URI), int(OptionNumber.PROXY_SCHEME))

_MISSING = object()
_PENDING = object()  # request is being handled; duplicates are ignored meanwhile
_DONE = object()     # NON handled / response already delivered; duplicates are ignored


class CoapError(Exception):
    """Base class of the errors an outgoing exchange can end with."""


class CoapTimeout(CoapError, TimeoutError):
    """No ACK after MAX_RETRANSMIT retransmissions, or no response within the timeout."""


class CoapReset(CoapError):
    """The peer answered with a Reset message (RFC 7252 §4.2)."""


class EndpointClosed(CoapError):
    """The endpoint was closed while the exchange was in progress."""


class BlockwiseError(CoapError):
    """A Block2 transfer was inconsistent (wrong block number, too large; RFC 7959 §2.4)."""


class EndpointStats:
    """Counters for what the endpoint received and did (cheap plain attributes)."""

    __slots__ = ("received", "requests", "responses", "duplicates", "dropped", "format_errors",
                 "resets_sent", "bad_options", "retransmissions", "timeouts", "handler_errors",
                 "separate_responses", "stale_notifications", "unexpected")

    def __init__(self) -> None:
        for s in self.__slots__:
            setattr(self, s, 0)

    def as_dict(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in self.__slots__}


class _DedupCache:
    """(remote, MID) -> cached reply, kept for at least ``lifetime`` seconds (RFC 7252 §4.5).

    Generational: entries live in the newest dict; every ``lifetime / generations`` seconds a
    new dict is started and the oldest dropped, so nothing is timestamped individually. When the
    newest generation exceeds its share of ``max_entries`` it is rotated early (memory bound
    under floods, at the cost of shorter duplicate detection)."""

    __slots__ = ("_gens", "_span", "_keep", "_next_rotate", "_max_per_gen")

    def __init__(self, lifetime: float, now: float, max_entries: int, generations: int = 4) -> None:
        self._span = max(lifetime / generations, 1e-3)
        self._keep = generations + 1
        self._gens: list[dict] = [{}]
        self._next_rotate = now + self._span
        self._max_per_gen = max(16, max_entries // self._keep)

    def tick(self, now: float) -> None:
        if now >= self._next_rotate:
            steps = min(self._keep, int((now - self._next_rotate) / self._span) + 1)
            for _ in range(steps):
                self._gens.insert(0, {})
            del self._gens[self._keep:]
            self._next_rotate = now + self._span

    def get(self, key: Any) -> Any:
        for g in self._gens:
            v = g.get(key, _MISSING)
            if v is not _MISSING:
                return v
        return _MISSING

    def put(self, key: Any, value: Any) -> None:
        g = self._gens[0]
        if len(g) >= self._max_per_gen and key not in g:
            self._gens.insert(0, {})
            del self._gens[self._keep:]
            g = self._gens[0]
        g[key] = value

    def __len__(self) -> int:
        return sum(len(g) for g in self._gens)


class _Outgoing:
    """A CON (or NON request) we sent and that may still be ACKed or Reset."""

    __slots__ = ("remote", "mid", "data", "timeout", "count", "handle", "exchange", "con")

    def __init__(self, remote: Remote, mid: int, data: bytes, exchange: "_Exchange | None",
                 con: bool) -> None:
        self.remote = remote
        self.mid = mid
        self.data = data
        self.timeout = 0.0
        self.count = 0
        self.handle: asyncio.TimerHandle | None = None
        self.exchange = exchange
        self.con = con


class _Exchange:
    """A request we sent, waiting for its response (matched by remote + token)."""

    __slots__ = ("remote", "token", "mid", "future")

    def __init__(self, remote: Remote, token: bytes, mid: int, future: asyncio.Future) -> None:
        self.remote = remote
        self.token = token
        self.mid = mid
        self.future = future

    def _deliver(self, msg: Message) -> bool:
        if not self.future.done():
            self.future.set_result(msg)
        return True  # one response ends a plain exchange

    def _fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Observation(_Exchange):
    """Client side of one observation (RFC 7641).

    ``await obs.response`` gives the first response. If it carries an Observe option and a
    success code the observation is *established*; every later notification is delivered in
    order to the callbacks (``obs.add_callback(fn)``, called with the :class:`Message`) and to
    ``async for msg in obs`` (a bounded buffer of ``buffer`` notifications; the oldest are
    dropped when nobody reads). A notification with an error code or without Observe ends the
    observation (RFC 7641 §3.2); so do :meth:`cancel` and :meth:`cancel_reactive`.
    """

    __slots__ = ("endpoint", "request", "response", "established", "ended", "_queue",
                 "_waiter", "_callbacks", "_v1", "_t1", "_buffer", "notifications")

    def __init__(self, endpoint: "CoapEndpoint", request: Message, remote: Remote, token: bytes,
                 mid: int, buffer: int = 1000) -> None:
        fut = endpoint._loop.create_future()
        super().__init__(remote, token, mid, fut)
        self.endpoint = endpoint
        self.request = request
        self.response: asyncio.Future[Message] = fut
        self.established = False
        self.ended = False
        self._queue: deque[Message] = deque()
        self._waiter: asyncio.Future | None = None
        self._callbacks: list[Callable[[Message], Any]] = []
        self._v1: int | None = None
        self._t1 = 0.0
        self._buffer = buffer
        self.notifications = 0

    def add_callback(self, fn: Callable[[Message], Any]) -> None:
        """Call ``fn(msg)`` for every notification (not for the first response)."""
        self._callbacks.append(fn)

    def _fresh(self, v2: int, t2: float) -> bool:
        """RFC 7641 §3.4: is notification number ``v2`` newer than the last one seen?"""
        v1 = self._v1
        if v1 is None:
            return True
        return ((v1 < v2 and v2 - v1 < 2 ** 23) or (v1 > v2 and v1 - v2 > 2 ** 23)
                or t2 > self._t1 + 128)

    def _deliver(self, msg: Message) -> bool:
        obs = msg.opt.observe
        ok = msg.code.is_successful()
        now = self.endpoint._loop.time()
        if not self.response.done():
            self.response.set_result(msg)
            if obs is not None and ok:
                self.established = True
                self._v1, self._t1 = obs, now
                return False
            self._end()
            return True
        if obs is not None and ok:
            if not self._fresh(obs, now):
                self.endpoint.stats.stale_notifications += 1
                return False
            self._v1, self._t1 = obs, now
            self._push(msg)
            return False
        self._push(msg)  # final notification (error or no Observe): §3.2
        self._end()
        return True

    def _push(self, msg: Message) -> None:
        self.notifications += 1
        self._queue.append(msg)
        if len(self._queue) > self._buffer:
            self._queue.popleft()
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)
        for fn in list(self._callbacks):
            try:
                fn(msg)
            except Exception:  # a faulty callback must not break the endpoint
                log.exception("observation callback failed")

    def _end(self) -> None:
        if not self.ended:
            self.ended = True
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        super()._fail(exc)
        self._end()

    def __aiter__(self) -> "Observation":
        return self

    async def __anext__(self) -> Message:
        while not self._queue:
            if self.ended:
                raise StopAsyncIteration
            self._waiter = self.endpoint._loop.create_future()
            await self._waiter
        return self._queue.popleft()

    def cancel_reactive(self) -> None:
        """Forget the observation locally; the next notification is answered with RST
        (RFC 7641 §3.6 "reactive" cancellation)."""
        self.endpoint._by_token.pop((self.remote, self.token), None)
        if not self.response.done():
            self.response.cancel()
        self._end()

    async def cancel(self, *, timeout: float | None = None) -> Message:
        """Proactive cancellation (RFC 7641 §3.6): a GET with the same token and options and
        Observe=1. Returns the server's response to it (normally without Observe)."""
        self.endpoint._by_token.pop((self.remote, self.token), None)
        if not self.response.done():
            self.response.cancel()
        self._end()
        msg = self.request.copy()
        msg.opt.observe = 1
        msg.mtype = CON
        return await self.endpoint._exchange_once(msg, self.remote, timeout, token=self.token)


class CoapEndpoint(asyncio.DatagramProtocol):
    """One UDP socket speaking CoAP. Create with ``await CoapEndpoint.create(host, port, handler)``.

    ``handler`` (``async def handle(request, remote) -> Message | None``) receives every new,
    well-formed request (duplicates never reach it). It must not modify the request's MID or
    token; the endpoint sets type, MID and token of the response. An exception in the handler
    is answered with 5.00 Internal Server Error.

    Parameters: ``params`` (RFC 7252 §4.8 transmission parameters), ``recognized_critical``
    (critical option numbers the handler understands; others get 4.02), ``separate_after``
    (seconds before a slow handler's CON is ACKed with an Empty ACK, ``None`` = never),
    ``dedup_max_entries`` (memory bound of the duplicate cache), ``proxy`` (whether Proxy-Uri
    / Proxy-Scheme reach the handler instead of getting 5.05).

    Subclasses may override :meth:`make_response_bytes` or :meth:`reject` for fault injection.
    """

    def __init__(self, handler: RequestHandler | None = None, *,
                 params: TransmissionParameters = DEFAULT_PARAMETERS,
                 recognized_critical: Iterable[int] = DEFAULT_RECOGNIZED_CRITICAL,
                 separate_after: float | None = 1.0, dedup_max_entries: int = 2_000_000,
                 proxy: bool = False, name: str = "coap") -> None:
        self.handler = handler
        self.params = params
        self.recognized_critical = frozenset(recognized_critical)
        self.separate_after = separate_after
        self.proxy = proxy
        self.name = name
        self.stats = EndpointStats()
        self.transport: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._dedup_max = dedup_max_entries
        self._dedup: _DedupCache = None  # type: ignore[assignment]
        self._mid = random.randrange(0x10000)
        self._token_seq = random.getrandbits(64)
        self._out: dict[tuple, _Outgoing] = {}          # (remote, mid) -> sent CON/NON
        self._by_token: dict[tuple, _Exchange] = {}     # (remote, token) -> waiting exchange
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self._hosts: dict[str, tuple[str, int]] = {}    # host -> (shared str, small id)
        self._host_seq = 0
        self._slow: dict[int, tuple] = {}               # key -> (start, remote, mid, state)
        self._slow_timer: asyncio.TimerHandle | None = None

    # ---- lifecycle ----------------------------------------------------------------------------
    @classmethod
    async def create(cls, host: str = "127.0.0.1", port: int = 0,
                     handler: RequestHandler | None = None, **kwargs: Any) -> "CoapEndpoint":
        """Bind a UDP socket on ``(host, port)`` (port 0 = any free one) and return the endpoint.

        The socket is driven by :class:`reference.coap.udp.BatchUdpTransport` (many datagrams
        per event-loop iteration)."""
        loop = asyncio.get_running_loop()
        ep = cls(handler, **kwargs)
        BatchUdpTransport.bind(loop, host, port, ep)
        return ep

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._loop = asyncio.get_running_loop()
        self._dedup = _DedupCache(self.params.exchange_lifetime, self._loop.time(), self._dedup_max)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:  # absorb bursts of registrations; the kernel caps the value
                    sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
                except OSError:
                    pass

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown()

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (e.g. port unreachable after a client went away) are not fatal.
        log.debug("%s: socket error %s", self.name, exc)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        assert self.transport is not None, "endpoint not bound"
        return tuple(self.transport.get_extra_info("sockname")[:2])  # type: ignore[return-value]

    def close(self) -> None:
        """Close the socket, fail every pending exchange with :class:`EndpointClosed` and cancel
        running handlers."""
        if self.transport is not None:
            self.transport.close()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._slow_timer is not None:
            self._slow_timer.cancel()
        for out in list(self._out.values()):
            if out.handle is not None:
                out.handle.cancel()
        self._out.clear()
        for exch in list(self._by_token.values()):
            exch._fail(EndpointClosed("endpoint closed"))
        self._by_token.clear()
        for t in list(self._tasks):
            t.cancel()

    # ---- ids ----------------------------------------------------------------------------------
    def next_mid(self) -> int:
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def new_token(self) -> bytes:
        self._token_seq = (self._token_seq + 1) & 0xFFFFFFFFFFFFFFFF
        return self._token_seq.to_bytes(8, "big")

    # ---- sending ------------------------------------------------------------------------------
    def send_raw(self, data: bytes, remote: Remote) -> None:
        """Send bytes as they are (tests and fault injection)."""
        if self.transport is not None and not self._closed:
            self.transport.sendto(data, remote)

    _send = send_raw

    def _start_out(self, remote: Remote, mid: int, data: bytes, exchange: _Exchange | None,
                   con: bool) -> _Outgoing:
        out = _Outgoing(remote, mid, data, exchange, con)
        self._out[(remote, mid)] = out
        if con:
            p = self.params
            out.timeout = random.uniform(p.ack_timeout, p.ack_timeout * p.ack_random_factor)
            out.handle = self._loop.call_later(out.timeout, self._retransmit, out)
        self._send(data, remote)
        return out

    def _retransmit(self, out: _Outgoing) -> None:
        """§4.2: retransmit with doubled timeout until MAX_RETRANSMIT, then give up."""
        if self._out.get((out.remote, out.mid)) is not out:
            return
        if out.count >= self.params.max_retransmit:
            del self._out[(out.remote, out.mid)]
            self.stats.timeouts += 1
            if out.exchange is not None:
                out.exchange._fail(CoapTimeout(
                    f"no ACK from {out.remote} after {out.count} retransmissions"))
                self._by_token.pop((out.remote, out.exchange.token), None)
            return
        out.count += 1
        out.timeout *= 2
        self.stats.retransmissions += 1
        self._send(out.data, out.remote)
        out.handle = self._loop.call_later(out.timeout, self._retransmit, out)

    def _stop_out(self, remote: Remote, mid: int) -> _Outgoing | None:
        out = self._out.pop((remote, mid), None)
        if out is not None and out.handle is not None:
            out.handle.cancel()
        return out

    # ---- outgoing requests --------------------------------------------------------------------
    def _send_request(self, msg: Message, remote: Remote, exch_factory: Callable[..., _Exchange],
                      token: bytes | None = None) -> _Exchange:
        if self._closed or self.transport is None:
            raise EndpointClosed("endpoint closed")
        remote = tuple(remote[:2])
        mtype = NON if msg.mtype == NON else CON
        msg.mtype = mtype
        msg.mid = mid = self.next_mid()
        msg.token = token = token if token is not None else self.new_token()
        data = msg.encode()
        exch = exch_factory(remote, token, mid)
        old = self._by_token.get((remote, token))
        if old is not None and old is not exch:
            old._fail(CoapError("superseded by a new request with the same token"))
        self._by_token[(remote, token)] = exch
        self._start_out(remote, mid, data, exch, mtype == CON)
        return exch

    async def _exchange_once(self, msg: Message, remote: Remote, timeout: float | None,
                             token: bytes | None = None) -> Message:
        exch = self._send_request(
            msg, remote, lambda r, t, m: _Exchange(r, t, m, self._loop.create_future()), token)
        if timeout is None:
            timeout = (self.params.exchange_lifetime if msg.mtype == CON
                       else self.params.non_lifetime)
        try:
            return await asyncio.wait_for(exch.future, timeout)
        except asyncio.TimeoutError:
            self.stats.timeouts += 1
            raise CoapTimeout(f"no response from {exch.remote} within {timeout} s") from None
        finally:
            self._stop_out(exch.remote, exch.mid)
            if self._by_token.get((exch.remote, exch.token)) is exch:
                del self._by_token[(exch.remote, exch.token)]

    async def request(self, msg: Message, remote: Remote, *, timeout: float | None = None,
                      follow_block2: bool = True, max_body: int = 1 << 20) -> Message:
        """Send ``msg`` (CON unless ``msg.mtype`` is NON) to ``remote``; return the response.

        MID and token are assigned here. ``timeout`` bounds each exchange (default: the
        EXCHANGE_LIFETIME for CON, NON_LIFETIME for NON; a CON also fails earlier when the
        retransmissions of §4.2 are exhausted). A response with Block2 and the M bit set is
        completed by requesting the following blocks (RFC 7959 §2.4) up to ``max_body`` bytes;
        the returned message then carries the whole body and no Block2 option.
        Raises :class:`CoapTimeout`, :class:`CoapReset`, :class:`EndpointClosed`,
        :class:`BlockwiseError`.
        """
        template = msg.copy() if follow_block2 else None
        resp = await self._exchange_once(msg, remote, timeout)
        b2 = resp.opt.block2
        if not follow_block2 or b2 is None or not b2.more:
            return resp
        parts = [resp.payload]
        size = len(resp.payload)
        num, szx = b2.block_number, b2.size_exponent
        while b2 is not None and b2.more:
            num = b2.block_number + 1
            nxt = template.copy()  # type: ignore[union-attr]
            nxt.opt.observe = None
            nxt.opt.block2 = BlockOption.BlockwiseTuple(num, 0, szx)
            r = await self._exchange_once(nxt, remote, timeout)
            if not r.code.is_successful():
                return r
            b2 = r.opt.block2
            if b2 is None or b2.block_number != num:
                raise BlockwiseError(f"expected block {num}, got {b2}")
            size += len(r.payload)
            if size > max_body:
                raise BlockwiseError(f"body exceeds {max_body} bytes")
            parts.append(r.payload)
            szx = b2.size_exponent
        resp.payload = b"".join(parts)
        resp.opt.block2 = None
        return resp

    def observe(self, msg: Message, remote: Remote, *, buffer: int = 1000) -> Observation:
        """Register an observation: send ``msg`` (a GET) with Observe=0 (RFC 7641 §3.1).

        Returns at once; ``await obs.response`` for the first response. The token stays bound
        to the observation until it ends or is cancelled."""
        msg.opt.observe = 0
        return self._send_request(  # type: ignore[return-value]
            msg, remote, lambda r, t, m: Observation(self, msg, r, t, m, buffer))

    async def ping(self, remote: Remote, *, timeout: float | None = None) -> bool:
        """CoAP ping (§4.3): an Empty CON; True when the peer answers with RST (or ACK)."""
        remote = tuple(remote[:2])
        mid = self.next_mid()
        exch = _Exchange(remote, b"", mid, self._loop.create_future())
        self._start_out(remote, mid, empty(CON, mid), exch, True)
        try:
            await asyncio.wait_for(exch.future, timeout or self.params.max_transmit_wait)
        except CoapReset:
            return True
        except (CoapTimeout, asyncio.TimeoutError):
            return False
        finally:
            self._stop_out(remote, mid)
        return True

    # ---- receiving ----------------------------------------------------------------------------
    def datagram_received(self, data: bytes, addr: Remote) -> None:  # noqa: C901 (hot path)
        try:
            self._receive(data, addr)
        except Exception:  # never let a datagram kill the endpoint
            self.stats.dropped += 1
            log.exception("%s: failure processing datagram from %s", self.name, addr)

    def _receive(self, data: bytes, addr: Remote) -> None:
        stats = self.stats
        stats.received += 1
        n = len(data)
        if n < 4:
            stats.dropped += 1  # too short to carry a Message ID: nothing to reject (§3)
            return
        b0 = data[0]
        if b0 >> 6 != 1:
            stats.dropped += 1  # §3: unknown version numbers MUST be silently ignored
            return
        host = addr[0]
        hinfo = self._hosts.get(host)
        if hinfo is None:
            if len(self._hosts) > 65536:
                self._hosts.clear()  # ids are never reused, so old dedup keys stay distinct
            self._host_seq += 1
            self._hosts[host] = hinfo = (host, self._host_seq)
        port = addr[1]
        remote = (hinfo[0], port)
        self._dedup.tick(self._loop.time())
        mtype = (b0 >> 4) & 3
        tkl = b0 & 0x0F
        code = data[1]
        mid = (data[2] << 8) | data[3]
        if code == 0:  # Empty message (§4.1)
            if tkl or n > 4:
                self._format_error(mtype, mid, remote)
            elif mtype == CON:
                stats.resets_sent += 1  # CoAP ping: §4.3 reject with RST
                self._send(empty(RST, mid), remote)
            elif mtype == ACK:
                self._on_empty_ack(remote, mid)
            elif mtype == RST:
                self._on_rst(remote, mid)
            return
        if tkl > 8:  # §3: token lengths 9-15 are a message format error
            self._format_error(mtype, mid, remote)
            return
        cls = code >> 5
        if cls in (1, 6, 7):  # reserved classes: reject (§4.2 / §4.3)
            self._format_error(mtype, mid, remote)
            return
        if mtype == RST:  # a non-empty RST is silently ignored (§4.2)
            stats.dropped += 1
            return
        if 4 + tkl > n:
            self._format_error(mtype, mid, remote)
            return
        try:
            opts, _ = scan_options(data, 4 + tkl)
        except MessageFormatError:
            self._format_error(mtype, mid, remote)
            return
        # duplicate-detection key (§4.5): source host, port and Message ID packed in one int
        key = (hinfo[1] << 32) | (port << 16) | mid
        if cls == 0:
            if mtype == ACK:  # an ACK carrying a request is rejected = ignored (§4.2)
                stats.dropped += 1
                return
            self._on_request(data, remote, mtype, mid, tkl, opts, key)
        else:
            self._on_response(data, remote, mtype, mid, tkl, opts, key)

    def _format_error(self, mtype: int, mid: int, remote: Remote) -> None:
        """Message format error / reserved code / bad Empty: RST for CON, else ignore (§4.2, §4.3)."""
        self.stats.format_errors += 1
        if mtype == CON:
            self.reject(mid, remote)

    def reject(self, mid: int, remote: Remote) -> None:
        """Send a RST matching ``mid`` (overridable for fault injection)."""
        self.stats.resets_sent += 1
        self._send(empty(RST, mid), remote)

    def _on_empty_ack(self, remote: Remote, mid: int) -> None:
        out = self._stop_out(remote, mid)
        if out is None:
            self.stats.unexpected += 1  # unexpected ACK: silently ignored
            return
        if out.exchange is not None and not out.exchange.token:  # ping answered by ACK
            out.exchange._deliver(None)  # type: ignore[arg-type]
        # otherwise a separate response will follow (§5.2.2)

    def _on_rst(self, remote: Remote, mid: int) -> None:
        out = self._stop_out(remote, mid)
        if out is None:
            self.stats.unexpected += 1
            return
        exch = out.exchange
        if exch is not None:
            exch._fail(CoapReset(f"RST from {remote} for MID {mid}"))
            if exch.token and self._by_token.get((remote, exch.token)) is exch:
                del self._by_token[(remote, exch.token)]

    # ---- incoming requests --------------------------------------------------------------------
    def _on_request(self, data: bytes, remote: Remote, mtype: int, mid: int, tkl: int,
                    opts: list[tuple[int, int]], key: int) -> None:
        stats = self.stats
        dedup = self._dedup
        cached = dedup.get(key)
        if cached is not _MISSING:
            stats.duplicates += 1
            if mtype == CON and cached.__class__ is bytes:
                self._send(cached, remote)  # §4.5: the same response again
            return
        token = data[4:4 + tkl]
        bad, ignore = check_options(opts, self.recognized_critical)
        if bad is not None:
            stats.bad_options += 1
            if mtype == CON:  # §5.4.1: 4.02 Bad Option, piggybacked
                out = raw_response(ACK, Code.BAD_OPTION, mid, token,
                                   f"unrecognized critical option {bad}".encode())
                dedup.put(key, out)
                self._send(out, remote)
            else:  # NON: reject (§5.4.1 -> §4.3)
                dedup.put(key, _DONE)
                self.reject(mid, remote)
            return
        try:
            msg = Message.decode(data, remote)
        except Exception:  # option values that do not decode (e.g. invalid UTF-8)
            stats.format_errors += 1
            if mtype == CON:
                out = raw_response(ACK, Code.BAD_REQUEST, mid, token, b"undecodable option value")
                dedup.put(key, out)
                self._send(out, remote)
            else:
                dedup.put(key, _DONE)
            return
        for number in ignore:  # §5.4.1/§5.4.3/§5.4.5: bad elective options are ignored
            occ = msg.opt._options.get(number)
            if occ:
                del msg.opt._options[number]
        stats.requests += 1
        if not self.proxy and (_PROXY_OPTIONS[0] in msg.opt._options
                               or _PROXY_OPTIONS[1] in msg.opt._options):
            self._reply_now(Message(code=Code.PROXYING_NOT_SUPPORTED), mtype, mid, token,
                            remote, key)
            return
        if self.handler is None:
            self._reply_now(Message(code=Code.NOT_FOUND), mtype, mid, token, remote, key)
            return
        dedup.put(key, _PENDING)
        task = self._loop.create_task(self._serve(msg, remote, mtype, mid, token, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _reply_now(self, resp: Message, mtype: int, mid: int, token: bytes, remote: Remote,
                   key: int) -> None:
        resp.token = token
        if mtype == CON:
            resp.mtype, resp.mid = ACK, mid
            out = resp.encode()
            self._dedup.put(key, out)
        else:
            resp.mtype, resp.mid = NON, self.next_mid()
            out = resp.encode()
            self._dedup.put(key, _DONE)
        self._send(out, remote)

    def _sweep_slow(self) -> None:
        """ACK the CON requests whose handler has run for ``separate_after`` seconds with an
        Empty ACK; their responses follow as separate CON responses (§5.2.2). One timer for all
        requests: ``_slow`` is in arrival order, so the scan stops at the first young entry."""
        self._slow_timer = None
        if self._closed:
            return
        now = self._loop.time()
        limit = now - self.separate_after  # type: ignore[operator]
        slow = self._slow
        for key, entry in list(slow.items()):
            if entry[0] > limit:
                break
            del slow[key]
            entry[3][0] = True
            ack = empty(ACK, entry[2])
            self._dedup.put(key, ack)
            self._send(ack, entry[1])
        if slow:
            first = next(iter(slow.values()))[0]
            self._slow_timer = self._loop.call_at(first + self.separate_after, self._sweep_slow)  # type: ignore[operator]

    async def _serve(self, msg: Message, remote: Remote, mtype: int, mid: int, token: bytes,
                     key: int) -> None:
        state = [False]
        slow = self._slow if (mtype == CON and self.separate_after is not None) else None
        if slow is not None:
            slow[key] = (self._loop.time(), remote, mid, state)
            if self._slow_timer is None:
                self._slow_timer = self._loop.call_later(self.separate_after, self._sweep_slow)  # type: ignore[arg-type]
        try:
            resp = await self.handler(msg, remote)  # type: ignore[misc]
        except asyncio.CancelledError:
            if slow is not None:
                slow.pop(key, None)
            raise
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s: request handler failed", self.name)
            resp = Message(code=Code.INTERNAL_SERVER_ERROR)
        if slow is not None:
            slow.pop(key, None)
        if self._closed:
            return
        try:
            self.make_response_bytes(resp, remote, mtype, mid, token, key, state[0])
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s: response could not be encoded", self.name)
            if mtype == CON and not state[0]:
                out = raw_response(ACK, Code.INTERNAL_SERVER_ERROR, mid, token)
                self._dedup.put(key, out)
                self._send(out, remote)

    def make_response_bytes(self, resp: Message | None, remote: Remote, mtype: int, mid: int,
                            token: bytes, key: int, acked: bool) -> None:
        """Type, number, encode and send the handler's response (overridable).

        CON request, not yet ACKed: piggybacked in the ACK (§5.2.1), cached for duplicates.
        CON request already ACKed: separate CON response with a fresh MID (§5.2.2).
        NON request: NON response with a fresh MID (§5.2.3). ``None``: Empty ACK / nothing.
        """
        dedup = self._dedup
        if resp is None:
            if mtype == CON and not acked:
                out = empty(ACK, mid)
                dedup.put(key, out)
                self._send(out, remote)
            elif mtype != CON:
                dedup.put(key, _DONE)
            return
        resp.token = token
        if mtype == CON:
            if not acked:
                resp.mtype = ACK
                resp.mid = mid
                out = resp.encode()
                dedup.put(key, out)
                self._send(out, remote)
                return
            self.stats.separate_responses += 1
            resp.mtype = CON
            resp.mid = m = self.next_mid()
            self._start_out(remote, m, resp.encode(), None, True)
            return
        resp.mtype = NON
        resp.mid = self.next_mid()
        dedup.put(key, _DONE)
        self._send(resp.encode(), remote)

    # ---- incoming responses -------------------------------------------------------------------
    def _on_response(self, data: bytes, remote: Remote, mtype: int, mid: int, tkl: int,
                     opts: list[tuple[int, int]], key: int) -> None:
        stats = self.stats
        token = data[4:4 + tkl]
        if mtype == ACK:
            out = self._out.get((remote, mid))
            if out is None or not out.con:
                stats.unexpected += 1  # unexpected ACK: silently ignored
                return
            bad, ignore = check_options(opts, RESPONSE_RECOGNIZED_CRITICAL)
            if bad is not None:
                stats.bad_options += 1  # rejecting an ACK = silently ignoring it (§4.2, §5.4.1)
                return
            try:
                msg = Message.decode(data, remote)
            except Exception:
                stats.format_errors += 1
                return
            self._strip(msg, ignore)
            self._stop_out(remote, mid)
            exch = out.exchange
            if exch is not None and exch.token == token:
                stats.responses += 1
                self._dispatch(exch, msg)
            else:
                stats.unexpected += 1
            return
        cached = self._dedup.get(key)
        if cached is not _MISSING:
            stats.duplicates += 1
            if mtype == CON and cached.__class__ is bytes:
                self._send(cached, remote)
            return
        exch = self._by_token.get((remote, token))
        bad, ignore = check_options(opts, RESPONSE_RECOGNIZED_CRITICAL)
        msg = None
        if exch is not None and bad is None:
            try:
                msg = Message.decode(data, remote)
            except Exception:
                stats.format_errors += 1
        if msg is None:
            # unknown token (§5.3.2; RFC 7641 §3.6), bad critical option (§5.4.1) or undecodable:
            # reject with RST (CON: MUST; NON: MAY, done so the peer stops notifying)
            if bad is not None:
                stats.bad_options += 1
            else:
                stats.unexpected += 1
            rst = empty(RST, mid)
            self._dedup.put(key, rst)
            stats.resets_sent += 1
            self._send(rst, remote)
            return
        self._strip(msg, ignore)
        if mtype == CON:
            ack = empty(ACK, mid)
            self._dedup.put(key, ack)
            self._send(ack, remote)
        else:
            self._dedup.put(key, _DONE)
        stats.responses += 1
        # a separate response also implies the request arrived: stop retransmitting (§5.2.2)
        out = self._out.get((remote, exch.mid))
        if out is not None and out.exchange is exch:
            self._stop_out(remote, exch.mid)
        self._dispatch(exch, msg)

    @staticmethod
    def _strip(msg: Message, ignore: list[int]) -> None:
        for number in ignore:
            msg.opt._options.pop(number, None)

    def _dispatch(self, exch: _Exchange, msg: Message) -> None:
        if exch._deliver(msg):
            if self._by_token.get((exch.remote, exch.token)) is exch:
                del self._by_token[(exch.remote, exch.token)]
