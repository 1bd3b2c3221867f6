"""DTLS 1.2 pre-shared-key bridges for the reference LwM2M stack.

LwM2M secures the UDP binding with DTLS 1.2 [RFC 6347]; in Pre-Shared Key mode the cipher suite
TLS_PSK_WITH_AES_128_CCM_8 [RFC 6655] is mandatory to implement (OMA-TS-LightweightM2M_Core-V1_1_1
§7.1.9 and OMA-TS-LightweightM2M_Transport-V1_1_1 §5.2, following the IoT profile of RFC 7925 §4.2).
The PSK identity is the Security Object's "Public Key or Identity" resource (0/x/3) and the key its
"Secret Key" (0/x/5).

Layering: the CoAP code never sees DTLS. Two asyncio "bridges" terminate DTLS and forward plain CoAP
datagrams over loopback UDP:

* :class:`DtlsServerBridge` listens on the public ``coaps`` address, runs DTLS server handshakes for
  many peers at once and, per established session, opens a dedicated loopback UDP socket that
  forwards decrypted datagrams to the plain CoAP endpoint (``forward_to``) and encrypts whatever that
  endpoint sends back. :meth:`DtlsServerBridge.session_for` maps the source address the CoAP endpoint
  sees to the authenticated PSK identity and the real DTLS peer.
* :class:`DtlsClientBridge` connects to a DTLS server with (identity, key) and exposes a local plain
  UDP address that a CoAP client sends to.

The DTLS engine is python-mbedtls (Mbed TLS 2.28) driven through its memory-BIO API
(``TLSWrappedBuffer``: ``receive_from_network`` / ``peek_outgoing`` / ``consume_outgoing``), so one
non-blocking socket serves every peer and no thread is needed. Cookie exchange (HelloVerifyRequest,
RFC 6347 §4.2.1) is done by Mbed TLS with the per-configuration cookie key python-mbedtls installs;
the server keeps **no state** for a ClientHello that it answers with a HelloVerifyRequest, and a
handshake only becomes "pending" once a ClientHello with a valid cookie has proven the source address.
Handshake flights are retransmitted by Mbed TLS's own timer (RFC 6347 §4.2.4: initial
``retransmit_min`` seconds, doubling) which the bridges poll while a handshake is in progress; every
handshake is bounded by ``handshake_timeout``.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mbedtls import tls
from mbedtls.exceptions import TLSError

__all__ = [
    "DEFAULT_CIPHERS",
    "DtlsClientBridge",
    "DtlsError",
    "DtlsHandshakeError",
    "DtlsServerBridge",
    "DtlsSession",
    "PskLookup",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]
"""A (host, port) pair; IPv6 flowinfo/scope are dropped."""

PskLookup = Callable[[bytes], "bytes | None"]
"""``psk_lookup(identity) -> key``; return None (or raise) for an unknown identity."""

#: Mandatory PSK cipher suite of LwM2M 1.1 (Transport §5.2) / RFC 7925 §4.2, in Mbed TLS naming.
DEFAULT_CIPHERS: tuple[str, ...] = ("TLS-PSK-WITH-AES-128-CCM-8",)

# A DTLS record header is 13 bytes (RFC 6347 §4.1); a handshake header 12 more (§4.2.2).
_RECORD_HEADER_LEN = 13
# Mbed TLS's default input buffer holds 16 KiB of content plus overhead; anything larger cannot be
# one record-aligned datagram it could process, so it is dropped before reaching the engine.
_MAX_DATAGRAM = 16384 + 512
_MAX_PLAINTEXT = 16384
# Interval at which a handshake in progress is stepped so that Mbed TLS can retransmit its flight.
_HANDSHAKE_POLL = 0.05
# Bound on engine steps per event, so a misbehaving engine can never spin the event loop.
_MAX_STEPS = 64
_RECV_BATCH = 64
# Alert "close_notify" surfaces as MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY.
_ERR_PEER_CLOSE_NOTIFY = 0x7880


class ContentType(enum.IntEnum):
    """DTLS record content types (RFC 6347 §4.1 / RFC 5246 §6.2.1)."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23


class HandshakeType(enum.IntEnum):
    """Handshake message types used for routing (RFC 6347 §4.3.2)."""

    CLIENT_HELLO = 1
    HELLO_VERIFY_REQUEST = 3


class DtlsError(Exception):
    """Base class of the errors raised by this module."""


class DtlsHandshakeError(DtlsError):
    """A DTLS handshake failed: alert from the peer (e.g. unknown PSK identity, bad Finished MAC
    because of a wrong key), local failure, or no completion within the handshake timeout."""


@dataclass(frozen=True)
class DtlsSession:
    """An established DTLS session as seen by :class:`DtlsServerBridge`.

    ``identity`` is the PSK identity the peer authenticated with, ``peer`` its public (host, port),
    ``local_addr`` the loopback address the forwarded plain datagrams come from (what the CoAP
    endpoint sees as the source), ``cipher`` the negotiated suite in Mbed TLS naming.
    """

    identity: bytes
    peer: Address
    local_addr: Address = ("", 0)
    cipher: str = ""
    established_at: float = field(default=0.0, compare=False)


def _addr(a: Any) -> Address:
    return (str(a[0]), int(a[1]))


def _looks_like_client_hello(data: bytes) -> bool:
    """True for a DTLS record carrying an epoch-0 ClientHello (RFC 6347 §4.1, §4.2.2).

    Only the header is checked; this is routing, not validation (the engine validates)."""
    if len(data) < _RECORD_HEADER_LEN + 1:
        return False
    return (
        data[0] == ContentType.HANDSHAKE
        and data[1] == 0xFE  # DTLS major version byte (1.0 = 0xfeff, 1.2 = 0xfefd)
        and data[3:5] == b"\x00\x00"  # epoch 0: no keys yet
        and data[_RECORD_HEADER_LEN] == HandshakeType.CLIENT_HELLO
    )


def _loopback_for(host: str) -> str:
    """Loopback host of the same address family as ``host``."""
    try:
        family = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][0]
    except OSError:
        family = socket.AF_INET
    return "::1" if family == socket.AF_INET6 else "127.0.0.1"


def _dtls_configuration(
    ciphers: Sequence[str],
    retransmit_min: float,
    handshake_timeout: float,
    **kwargs: Any,
) -> tls.DTLSConfiguration:
    unknown = [c for c in ciphers if c not in tls.ciphers_available()]
    if not ciphers or unknown:
        raise ValueError(f"cipher suites not available in Mbed TLS: {unknown or 'none given'}")
    return tls.DTLSConfiguration(
        ciphers=tuple(ciphers),
        lowest_supported_version=tls.DTLSVersion.DTLSv1_2,
        highest_supported_version=tls.DTLSVersion.DTLSv1_2,
        validate_certificates=False,  # PSK only: no certificates are exchanged
        handshake_timeout_min=retransmit_min,
        handshake_timeout_max=max(retransmit_min, handshake_timeout),
        **kwargs,
    )


class _Udp:
    """A non-blocking UDP socket read through ``loop.add_reader`` (no per-socket task)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        bind: Address,
        on_datagram: Callable[[bytes, Address], None],
        connect: Address | None = None,
    ) -> None:
        family, _, _, _, sockaddr = socket.getaddrinfo(bind[0], bind[1], type=socket.SOCK_DGRAM)[0]
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(sockaddr)
            if connect is not None:
                sock.connect(connect)
        except BaseException:
            sock.close()
            raise
        self._loop = loop
        self._sock = sock
        self.on_datagram = on_datagram
        self.sockname: Address = _addr(sock.getsockname())
        self.closed = False
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(_RECV_BATCH):
            if self.closed:
                return
            try:
                data, src = self._sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable on a connected socket
                log.debug("udp %s: recv error %r", self.sockname, exc)
                continue
            try:
                self.on_datagram(data, _addr(src))
            except Exception:  # never let one datagram kill the reader
                log.exception("udp %s: datagram handler failed", self.sockname)

    def send(self, data: bytes, dest: Address | None = None) -> bool:
        """Send one datagram; returns False (and drops it) on a transient socket error."""
        if self.closed or not data:
            return False
        try:
            if dest is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, dest)
            return True
        except OSError as exc:  # UDP: best effort, never raise into protocol code
            log.debug("udp %s: send to %s failed: %r", self.sockname, dest, exc)
            return False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._loop.remove_reader(self._sock.fileno())
        except (ValueError, OSError):
            pass
        self._sock.close()


class _HandshakeResult(enum.Enum):
    DONE = "done"
    WAIT = "wait"  # flight sent (or nothing to do), waiting for the peer or a retransmit timer
    HELLO_VERIFY = "hello-verify"  # server answered a cookie-less ClientHello statelessly


class _PeerClosed(Exception):
    """The peer sent close_notify."""


class _Engine:
    """One DTLS association over python-mbedtls memory buffers.

    Every operation flushes what Mbed TLS produced through ``send`` as one datagram (records of a
    flight may share a datagram, RFC 6347 §4.1.1)."""

    def __init__(self, buffer: tls.TLSWrappedBuffer, send: Callable[[bytes], Any]) -> None:
        self.buffer = buffer
        self._send = send
        self.identity: bytes | None = None

    @property
    def established(self) -> bool:
        return self.buffer._handshake_state is tls.HandshakeStep.HANDSHAKE_OVER

    @property
    def cipher(self) -> str:
        return self.buffer.cipher() or ""

    def _flush(self) -> None:
        pending = len(self.buffer._output_buffer)
        if pending:
            data = self.buffer.peek_outgoing(pending)
            self.buffer.consume_outgoing(pending)
            self._send(data)

    def _discard_leftover_input(self) -> None:
        # Datagram boundaries are lost in the ring buffer; never let a remainder of one datagram be
        # read as the start of the next one.
        inbuf = self.buffer._input_buffer
        if not inbuf.empty():
            inbuf.clear()

    def feed(self, datagram: bytes) -> None:
        self.buffer.receive_from_network(datagram)

    def handshake(self) -> _HandshakeResult:
        """Advance the handshake as far as possible. Raises TLSError on failure (after sending the
        alert Mbed TLS produced)."""
        try:
            for _ in range(_MAX_STEPS):
                if self.established:
                    return _HandshakeResult.DONE
                try:
                    self.buffer.do_handshake()
                except tls.WantWriteError:
                    self._flush()
                except tls.WantReadError:
                    return _HandshakeResult.WAIT
                except tls.HelloVerifyRequest:
                    return _HandshakeResult.HELLO_VERIFY
            raise TLSError(msg="handshake made no progress")
        finally:
            self._flush()
            self._discard_leftover_input()

    def read_records(self) -> list[bytes]:
        """Decrypt what was fed; one list element per application-data record. Records failing
        authentication are silently discarded by Mbed TLS (RFC 6347 §4.1.2.7). Raises _PeerClosed on
        close_notify and TLSError on a fatal error."""
        out: list[bytes] = []
        buf = bytearray(_MAX_PLAINTEXT)
        try:
            for _ in range(_MAX_STEPS):
                try:
                    n = self.buffer.readinto(buf, len(buf))
                except tls.WantReadError:
                    break
                except tls.WantWriteError:
                    self._flush()
                    continue
                except tls.RaggedEOF:
                    raise _PeerClosed() from None
                except TLSError as exc:
                    if getattr(exc, "err", None) == _ERR_PEER_CLOSE_NOTIFY:
                        raise _PeerClosed() from None
                    raise
                out.append(bytes(buf[:n]))
        finally:
            self._flush()
            self._discard_leftover_input()
        return out

    def write(self, plaintext: bytes) -> None:
        """Encrypt ``plaintext`` as one application-data record and send it."""
        try:
            self.buffer.write(plaintext)
        finally:
            self._flush()

    def close_notify(self) -> None:
        """Send a close_notify alert (best effort)."""
        try:
            self.buffer.shutdown()
            self._flush()
        except Exception as exc:
            log.debug("close_notify failed: %r", exc)


class _PskStore(Mapping[str, bytes]):
    """Adapts ``psk_lookup`` to the Mapping python-mbedtls queries from Mbed TLS's PSK callback.

    python-mbedtls decodes the identity as UTF-8 before the lookup; a non-UTF-8 identity therefore
    never reaches ``psk_lookup`` and is treated as unknown. The engine whose handshake is being
    driven (``current``) records the identity that was accepted."""

    def __init__(self, lookup: PskLookup) -> None:
        self._lookup = lookup
        self.current: _Engine | None = None

    def __getitem__(self, identity: str) -> bytes:
        raw = identity.encode("utf-8")
        try:
            key = self._lookup(raw)
        except Exception:
            log.exception("psk_lookup(%r) raised; treating identity as unknown", raw)
            raise KeyError(identity) from None
        if not key:
            log.info("DTLS: unknown PSK identity %r", raw)
            raise KeyError(identity)
        if self.current is not None:
            self.current.identity = raw
        return bytes(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass
class _Pending:
    engine: _Engine
    deadline: float
    timer: asyncio.TimerHandle | None = None


@dataclass
class _Peer:
    engine: _Engine
    session: DtlsSession
    local: _Udp
    last_activity: float


SessionCallback = Callable[[DtlsSession], Any]


class DtlsServerBridge:
    """DTLS 1.2 PSK server terminator in front of a plain CoAP endpoint.

    Contract:

    * ``await start()`` binds ``listen`` (port 0 allowed) and returns the actual public address.
    * A peer whose handshake completes with an identity ``psk_lookup`` knows and the matching key
      gets a :class:`DtlsSession`; its application data is forwarded, one datagram per record, from a
      dedicated loopback socket (``session.local_addr``) to ``forward_to``; datagrams that
      ``forward_to`` sends to that socket are encrypted to the peer. Datagrams from other sources
      on that socket are ignored (the socket is connected to ``forward_to``).
    * Unknown identity or wrong key: the handshake fails, no session exists, nothing is forwarded.
    * A new handshake from an address that has a session replaces that session when (and only when)
      it completes; the replacement keeps the same ``local_addr`` so the CoAP layer sees the same
      source (as it would on a single-socket DTLS server), ``on_close`` fires for the old session
      and ``on_session`` for the new one.
    * Sessions idle (no authenticated data either way) for ``session_timeout`` seconds get a
      close_notify and are closed; a peer's close_notify or fatal alert closes its session too.
    * Garbage datagrams, failed handshakes and vanished peers never raise out of the bridge.
    """

    def __init__(
        self,
        listen: Address,
        forward_to: Address,
        psk_lookup: PskLookup,
        *,
        ciphers: Sequence[str] = DEFAULT_CIPHERS,
        session_timeout: float = 300.0,
        handshake_timeout: float = 10.0,
        retransmit_min: float = 1.0,
        max_pending_handshakes: int = 1024,
        on_session: SessionCallback | None = None,
        on_close: SessionCallback | None = None,
    ) -> None:
        if session_timeout <= 0 or handshake_timeout <= 0 or retransmit_min <= 0:
            raise ValueError("timeouts must be positive")
        self._listen = _addr(listen)
        self._forward_to = _addr(forward_to)
        self._psk = _PskStore(psk_lookup)
        self._ctx = tls.ServerContext(
            _dtls_configuration(
                ciphers, retransmit_min, handshake_timeout, pre_shared_key_store=self._psk
            )
        )
        self.session_timeout = session_timeout
        self.handshake_timeout = handshake_timeout
        self.max_pending_handshakes = max_pending_handshakes
        self.on_session = on_session
        self.on_close = on_close
        self._public: _Udp | None = None
        self._pending: dict[Address, _Pending] = {}
        self._peers: dict[Address, _Peer] = {}
        self._by_local: dict[Address, _Peer] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Counters for diagnostics and tests.
        self.stats: dict[str, int] = {
            "dropped": 0,
            "hello_verify": 0,
            "handshakes_ok": 0,
            "handshakes_failed": 0,
            "forwarded_up": 0,
            "forwarded_down": 0,
        }

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> Address:
        """Bind the public socket and start the idle-session sweeper; returns the public address."""
        if self._public is not None:
            return self._public.sockname
        self._loop = asyncio.get_running_loop()
        self._public = _Udp(self._loop, self._listen, self._on_public)
        self._sweeper = self._loop.create_task(self._sweep())
        log.info("DTLS server bridge %s -> %s", self._public.sockname, self._forward_to)
        return self._public.sockname

    async def close(self) -> None:
        """Send close_notify to every peer, close all sockets. Idempotent."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        for addr in list(self._pending):
            self._drop_pending(addr)
        for peer in list(self._peers.values()):
            self._close_peer(peer, notify=True, reason="bridge closed")
        if self._public is not None:
            self._public.close()
            self._public = None

    async def __aenter__(self) -> DtlsServerBridge:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- public queries --------------------------------------------------------------------------

    @property
    def address(self) -> Address:
        """The public (coaps) address; only valid after :meth:`start`."""
        if self._public is None:
            raise RuntimeError("bridge not started")
        return self._public.sockname

    @property
    def forward_to(self) -> Address:
        return self._forward_to

    def session_for(self, local_addr: Any) -> DtlsSession | None:
        """The session behind a forwarded datagram, given its source address as the CoAP endpoint
        sees it; None if that address is not (or no longer) a session's forwarding socket."""
        peer = self._by_local.get(_addr(local_addr))
        return peer.session if peer else None

    def session_by_peer(self, peer: Any) -> DtlsSession | None:
        """The session of a public DTLS peer address, if any."""
        p = self._peers.get(_addr(peer))
        return p.session if p else None

    @property
    def sessions(self) -> list[DtlsSession]:
        return [p.session for p in self._peers.values()]

    @property
    def pending_handshakes(self) -> int:
        """Handshakes past the cookie exchange and not yet completed (each bounded in time)."""
        return len(self._pending)

    def close_session(self, peer: Any) -> bool:
        """Close the session of ``peer`` with a close_notify; False if there was none."""
        p = self._peers.get(_addr(peer))
        if p is None:
            return False
        self._close_peer(p, notify=True, reason="closed by application")
        return True

    # -- public socket ---------------------------------------------------------------------------

    def _on_public(self, data: bytes, src: Address) -> None:
        if not (_RECORD_HEADER_LEN <= len(data) <= _MAX_DATAGRAM):
            self.stats["dropped"] += 1
            return
        pending = self._pending.get(src)
        if pending is not None:
            pending.engine.feed(data)
            self._advance_pending(src, pending)
            return
        if _looks_like_client_hello(data):
            self._start_handshake(src, data)
            return
        peer = self._peers.get(src)
        if peer is not None:
            self._from_peer(peer, data)
            return
        self.stats["dropped"] += 1

    def _send_public(self, dest: Address) -> Callable[[bytes], bool]:
        def send(data: bytes) -> bool:
            return self._public.send(data, dest) if self._public is not None else False

        return send

    def _drive(self, engine: _Engine) -> _HandshakeResult | None:
        """Step a server handshake; None on failure. The PSK store learns which engine asks."""
        self._psk.current = engine
        try:
            return engine.handshake()
        except TLSError as exc:
            log.info("DTLS handshake failed: %s", exc)
            return None
        finally:
            self._psk.current = None

    def _start_handshake(self, src: Address, data: bytes) -> None:
        if len(self._pending) >= self.max_pending_handshakes:
            self.stats["dropped"] += 1
            return
        engine = _Engine(self._ctx.wrap_buffers(), self._send_public(src))
        # Cookie is bound to the transport address (RFC 6347 §4.2.1).
        engine.buffer.setcookieparam(f"{src[0]}:{src[1]}".encode())
        engine.feed(data)
        result = self._drive(engine)
        if result is None:
            self.stats["handshakes_failed"] += 1
        elif result is _HandshakeResult.HELLO_VERIFY:
            self.stats["hello_verify"] += 1  # stateless: nothing is kept for this peer
        elif result is _HandshakeResult.DONE:  # cannot happen in one flight; handled for safety
            self._established(src, engine)
        else:
            assert self._loop is not None
            pending = _Pending(engine, self._loop.time() + self.handshake_timeout)
            self._pending[src] = pending
            pending.timer = self._loop.call_later(_HANDSHAKE_POLL, self._tick, src)

    def _tick(self, src: Address) -> None:
        pending = self._pending.get(src)
        if pending is None:
            return
        pending.timer = None
        self._advance_pending(src, pending)

    def _advance_pending(self, src: Address, pending: _Pending) -> None:
        assert self._loop is not None
        if self._loop.time() > pending.deadline:
            log.info("DTLS handshake with %s timed out", src)
            self.stats["handshakes_failed"] += 1
            self._drop_pending(src)
            return
        result = self._drive(pending.engine)
        if result is _HandshakeResult.WAIT:
            if pending.timer is None:
                pending.timer = self._loop.call_later(_HANDSHAKE_POLL, self._tick, src)
            return
        self._drop_pending(src)
        if result is _HandshakeResult.DONE:
            self._established(src, pending.engine)
        else:
            self.stats["handshakes_failed"] += 1

    def _drop_pending(self, src: Address) -> None:
        pending = self._pending.pop(src, None)
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()

    def _established(self, src: Address, engine: _Engine) -> None:
        assert self._loop is not None
        if engine.identity is None:  # PSK callback never accepted anything: refuse to forward
            log.error("DTLS handshake with %s completed without a PSK identity", src)
            self.stats["handshakes_failed"] += 1
            return
        old = self._peers.pop(src, None)
        if old is not None:
            local = old.local
            self._by_local.pop(local.sockname, None)
            self._notify(self.on_close, old.session)
        else:
            try:
                local = _Udp(
                    self._loop,
                    (_loopback_for(self._forward_to[0]), 0),
                    self._on_local_placeholder,
                    connect=self._forward_to,
                )
            except OSError as exc:
                log.error("cannot open forwarding socket for %s: %r", src, exc)
                self.stats["handshakes_failed"] += 1
                return
        local_addr = local.sockname
        local.on_datagram = lambda data, _src, la=local_addr: self._from_local(la, data)
        session = DtlsSession(
            identity=engine.identity,
            peer=src,
            local_addr=local_addr,
            cipher=engine.cipher,
            established_at=time.time(),
        )
        peer = _Peer(engine, session, local, self._loop.time())
        self._peers[src] = peer
        self._by_local[local_addr] = peer
        self.stats["handshakes_ok"] += 1
        log.info("DTLS session %r from %s via %s (%s)", session.identity, src, local_addr,
                 session.cipher)
        self._notify(self.on_session, session)
        self._from_peer(peer, b"")  # application data may have shared the last datagram

    @staticmethod
    def _on_local_placeholder(data: bytes, src: Address) -> None:
        pass

    # -- data path -------------------------------------------------------------------------------

    def _from_peer(self, peer: _Peer, data: bytes) -> None:
        if data:
            peer.engine.feed(data)
        try:
            records = peer.engine.read_records()
        except _PeerClosed:
            self._close_peer(peer, notify=False, reason="close_notify from peer")
            return
        except TLSError as exc:
            self._close_peer(peer, notify=False, reason=f"fatal: {exc}")
            return
        if records and self._loop is not None:
            peer.last_activity = self._loop.time()
        for rec in records:
            if peer.local.send(rec):
                self.stats["forwarded_up"] += 1

    def _from_local(self, local_addr: Address, data: bytes) -> None:
        peer = self._by_local.get(local_addr)
        if peer is None:
            self.stats["dropped"] += 1
            return
        if len(data) > _MAX_PLAINTEXT:
            log.warning("dropping %d-byte datagram for %s: too large for one record", len(data),
                        peer.session.peer)
            self.stats["dropped"] += 1
            return
        try:
            peer.engine.write(data)
        except TLSError as exc:
            self._close_peer(peer, notify=False, reason=f"write failed: {exc}")
            return
        self.stats["forwarded_down"] += 1
        if self._loop is not None:
            peer.last_activity = self._loop.time()

    def _close_peer(self, peer: _Peer, *, notify: bool, reason: str) -> None:
        if self._peers.get(peer.session.peer) is peer:
            del self._peers[peer.session.peer]
        if self._by_local.get(peer.local.sockname) is peer:
            del self._by_local[peer.local.sockname]
        if notify:
            peer.engine.close_notify()
        peer.local.close()
        log.info("DTLS session %r from %s closed: %s", peer.session.identity, peer.session.peer,
                 reason)
        self._notify(self.on_close, peer.session)

    def _notify(self, cb: SessionCallback | None, session: DtlsSession) -> None:
        if cb is None:
            return
        try:
            cb(session)
        except Exception:
            log.exception("session callback failed")

    async def _sweep(self) -> None:
        assert self._loop is not None
        interval = max(0.02, min(self.session_timeout / 4, 5.0))
        while True:
            await asyncio.sleep(interval)
            now = self._loop.time()
            for peer in list(self._peers.values()):
                if now - peer.last_activity > self.session_timeout:
                    self._close_peer(peer, notify=True, reason="idle timeout")


class DtlsClientBridge:
    """DTLS 1.2 PSK client terminator behind a plain CoAP client.

    Contract:

    * ``await connect()`` opens a UDP socket towards ``server`` and a plain loopback socket
      (:attr:`local_address`) and completes a handshake with (identity, key) within
      ``handshake_timeout`` seconds, else raises :class:`DtlsHandshakeError` (alert from the server,
      e.g. unknown identity; wrong key; timeout).
    * Datagrams the CoAP client sends to :attr:`local_address` are encrypted to the server, one record
      each; records from the server are decrypted and sent to the CoAP client's address: ``coap_peer``
      if given (then only that source is accepted), else the source of the most recent datagram
      received on :attr:`local_address`. Server-initiated datagrams arriving before any CoAP client
      is known are dropped.
    * While not connected, plain datagrams are dropped, unless ``auto_reconnect`` is set: then they
      are queued (bounded) and a new handshake is started.
    * ``await reconnect()`` performs a new handshake (for re-registration), from the same source port
      by default so the server replaces the session; :attr:`local_address` never changes.
    * ``await close()`` sends close_notify and closes both sockets.
    """

    _QUEUE_LIMIT = 32

    def __init__(
        self,
        server: Address,
        identity: bytes,
        key: bytes,
        *,
        local: Address = ("127.0.0.1", 0),
        coap_peer: Address | None = None,
        ciphers: Sequence[str] = DEFAULT_CIPHERS,
        handshake_timeout: float = 10.0,
        retransmit_min: float = 1.0,
        auto_reconnect: bool = False,
        on_close: Callable[[], Any] | None = None,
    ) -> None:
        if handshake_timeout <= 0 or retransmit_min <= 0:
            raise ValueError("timeouts must be positive")
        if not key:
            raise ValueError("empty PSK")
        try:
            identity_text = bytes(identity).decode("utf-8")
        except UnicodeDecodeError:
            # python-mbedtls only takes the identity as str (it encodes it as UTF-8).
            raise ValueError("PSK identity must be valid UTF-8 with python-mbedtls") from None
        self._server = _addr(server)
        self.identity = bytes(identity)
        self._ctx = tls.ClientContext(
            _dtls_configuration(
                ciphers, retransmit_min, handshake_timeout,
                pre_shared_key=(identity_text, bytes(key)),
            )
        )
        self._local_bind = _addr(local)
        self._pinned_peer = _addr(coap_peer) if coap_peer is not None else None
        self._coap_peer = self._pinned_peer
        self.handshake_timeout = handshake_timeout
        self.auto_reconnect = auto_reconnect
        self.on_close = on_close
        self._loop: asyncio.AbstractEventLoop | None = None
        self._public: _Udp | None = None
        self._local: _Udp | None = None
        self._engine: _Engine | None = None
        self._hs_engine: _Engine | None = None
        self._hs_future: asyncio.Future[None] | None = None
        self._hs_timer: asyncio.TimerHandle | None = None
        self._lock = asyncio.Lock()
        self._queue: list[bytes] = []
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        self.stats: dict[str, int] = {"dropped": 0, "sent": 0, "received": 0, "handshakes": 0}

    # -- properties ------------------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        """Plain UDP address the CoAP client sends to (valid after :meth:`connect`)."""
        if self._local is None:
            raise RuntimeError("bridge not connected")
        return self._local.sockname

    @property
    def source_address(self) -> Address:
        """Address of the socket talking DTLS to the server (what the server sees as the peer)."""
        if self._public is None:
            raise RuntimeError("bridge not connected")
        return self._public.sockname

    @property
    def server(self) -> Address:
        return self._server

    @property
    def connected(self) -> bool:
        return self._engine is not None

    @property
    def cipher(self) -> str | None:
        """Negotiated cipher suite (Mbed TLS naming) of the current session, None if not connected."""
        return self._engine.cipher if self._engine is not None else None

    @property
    def coap_peer(self) -> Address | None:
        return self._coap_peer

    # -- lifecycle -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the sockets if needed and handshake; no-op if already connected."""
        async with self._lock:
            if self._closed:
                raise DtlsError("bridge closed")
            self._open_sockets()
            if self._engine is None:
                await self._handshake()

    async def reconnect(self, *, new_source_port: bool = False, close_old: bool = False) -> None:
        """New handshake. ``close_old`` sends close_notify on the current session first;
        ``new_source_port`` handshakes from a fresh UDP source port (a new DTLS peer address)."""
        async with self._lock:
            if self._closed:
                raise DtlsError("bridge closed")
            self._open_sockets()
            if self._engine is not None and close_old:
                self._engine.close_notify()
            self._engine = None
            if new_source_port and self._public is not None:
                self._public.close()
                self._public = None
                self._open_sockets()
            await self._handshake()

    async def close(self) -> None:
        """close_notify to the server (if connected) and close both sockets. Idempotent."""
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            try:
                await self._reconnect_task
            except (asyncio.CancelledError, DtlsError):
                pass
            self._reconnect_task = None
        self._cancel_hs_timer()
        if self._hs_future is not None and not self._hs_future.done():
            self._hs_future.set_exception(DtlsHandshakeError("bridge closed"))
        if self._engine is not None:
            self._engine.close_notify()
            self._engine = None
        for s in (self._public, self._local):
            if s is not None:
                s.close()
        self._public = self._local = None

    async def __aenter__(self) -> DtlsClientBridge:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- internals -------------------------------------------------------------------------------

    def _open_sockets(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._public is None:
            self._public = _Udp(
                self._loop, (_source_host_for(self._server[0]), 0), self._on_public,
                connect=self._server,
            )
        if self._local is None:
            self._local = _Udp(self._loop, self._local_bind, self._on_local)

    def _cancel_hs_timer(self) -> None:
        if self._hs_timer is not None:
            self._hs_timer.cancel()
            self._hs_timer = None

    async def _handshake(self) -> None:
        assert self._loop is not None and self._public is not None
        public = self._public
        engine = _Engine(self._ctx.wrap_buffers(None), public.send)
        fut: asyncio.Future[None] = self._loop.create_future()
        self._hs_engine, self._hs_future = engine, fut
        self._advance_handshake()
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.handshake_timeout)
        except asyncio.TimeoutError:
            raise DtlsHandshakeError(
                f"no DTLS handshake with {self._server} within {self.handshake_timeout} s"
            ) from None
        finally:
            self._cancel_hs_timer()
            if self._hs_engine is engine:
                self._hs_engine = None
            self._hs_future = None
            if not fut.done():
                fut.cancel()
        self.stats["handshakes"] += 1
        self._flush_queue()

    def _advance_handshake(self) -> None:
        engine, fut = self._hs_engine, self._hs_future
        if engine is None or fut is None or fut.done():
            return
        self._hs_timer = None
        try:
            result = engine.handshake()
        except TLSError as exc:
            self._hs_engine = None
            fut.set_exception(DtlsHandshakeError(f"DTLS handshake with {self._server} failed: {exc}"))
            return
        if result is _HandshakeResult.DONE:
            self._hs_engine = None
            self._engine = engine
            log.info("DTLS connected to %s as %r (%s)", self._server, self.identity, engine.cipher)
            fut.set_result(None)
            self._from_server(b"")  # application data may have shared the last datagram
        else:
            assert self._loop is not None
            self._cancel_hs_timer()
            self._hs_timer = self._loop.call_later(_HANDSHAKE_POLL, self._advance_handshake)

    def _on_public(self, data: bytes, src: Address) -> None:
        if not (_RECORD_HEADER_LEN <= len(data) <= _MAX_DATAGRAM):
            self.stats["dropped"] += 1
            return
        if self._hs_engine is not None:
            self._hs_engine.feed(data)
            self._cancel_hs_timer()
            self._advance_handshake()
        elif self._engine is not None:
            self._from_server(data)
        else:
            self.stats["dropped"] += 1

    def _from_server(self, data: bytes) -> None:
        engine = self._engine
        if engine is None:
            return
        if data:
            engine.feed(data)
        try:
            records = engine.read_records()
        except (_PeerClosed, TLSError) as exc:
            log.info("DTLS session with %s ended: %r", self._server, exc)
            self._engine = None
            if self.on_close is not None:
                try:
                    self.on_close()
                except Exception:
                    log.exception("on_close callback failed")
            return
        for rec in records:
            if self._coap_peer is None or self._local is None:
                self.stats["dropped"] += 1
                continue
            if self._local.send(rec, self._coap_peer):
                self.stats["received"] += 1

    def _on_local(self, data: bytes, src: Address) -> None:
        if self._pinned_peer is not None and src != self._pinned_peer:
            self.stats["dropped"] += 1
            return
        self._coap_peer = src
        if self._engine is not None:
            self._send_plain(data)
            return
        if self.auto_reconnect and not self._closed and len(self._queue) < self._QUEUE_LIMIT:
            self._queue.append(data)
            if self._hs_future is None and (self._reconnect_task is None
                                            or self._reconnect_task.done()):
                assert self._loop is not None
                self._reconnect_task = self._loop.create_task(self._auto_reconnect())
            return
        self.stats["dropped"] += 1

    async def _auto_reconnect(self) -> None:
        try:
            await self.connect()
        except DtlsError as exc:
            log.warning("DTLS auto-reconnect to %s failed: %s", self._server, exc)
            self.stats["dropped"] += len(self._queue)
            self._queue.clear()

    def _flush_queue(self) -> None:
        queued, self._queue = self._queue, []
        for data in queued:
            self._send_plain(data)

    def _send_plain(self, data: bytes) -> None:
        engine = self._engine
        if engine is None or len(data) > _MAX_PLAINTEXT:
            self.stats["dropped"] += 1
            return
        try:
            engine.write(data)
            self.stats["sent"] += 1
        except TLSError as exc:
            log.info("DTLS write to %s failed: %s", self._server, exc)
            self._engine = None
            self.stats["dropped"] += 1


def _source_host_for(host: str) -> str:
    """Bind host for a socket talking to ``host``: loopback for a loopback server (keeps test
    traffic on lo), else the wildcard of the server's address family."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return "0.0.0.0"
    v6 = infos[0][0] == socket.AF_INET6
    if all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos):
        return "::1" if v6 else "127.0.0.1"
    return "::" if v6 else "0.0.0.0"
