"""The Registration Interface of the server side (Core 1.1.1 §6.2, Transport 1.1.1 §6.2/§6.7).

``/rd`` resource layout (Transport 1.1.1 Table 6.2.-1 / §6.2):

=================  ==============================================  ===========================
operation          CoAP                                            success / failure codes
=================  ==============================================  ===========================
Register           POST /rd?ep={name}&lt=&lwm2m=&b=&sms=&Q          2.01 Created + Location-Path
                   payload: link-format Objects and Instances      4.00, 4.03, 4.12
Update             POST /rd/{location}?lt=&b=&sms=&Q [payload]     2.04 Changed; 4.00, 4.04
De-register        DELETE /rd/{location}                           2.02 Deleted; 4.04
=================  ==============================================  ===========================

Other methods on ``/rd`` or ``/rd/{location}`` get 4.05 Method Not Allowed; other paths 4.04.
Failure responses carry a diagnostic payload (RFC 7252 §5.5.2).

Every decision is a method of :class:`RegistrationInterface` so that fault-injected subclasses
can change one behaviour (e.g. the Location-Path chosen or a response code).
"""
from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Any

from aiocoap import Message
from aiocoap.numbers.codes import Code

from reference.server.links import LinkFormatError, parse_links, validate_registration_links

if TYPE_CHECKING:
    from reference.server.server import LwM2MServer

LINK_FORMAT = 40  # application/link-format (RFC 6690 §7.2)
DEFAULT_LIFETIME = 86400  # Core 1.1.1 §6.2.1 / E.2: default Lifetime
_VERSION_RE = re.compile(r"[0-9]+\.[0-9]+")  # Core 1.1.1 §6.2.1: 1*DIGIT "." 1*DIGIT
_SMS_RE = re.compile(r"\+?[0-9]{1,20}")
_INTERN: dict[Any, Any] = {}


class _RandomPool:
    """Cryptographically random bytes from os.urandom, fetched 4 KiB at a time (one system
    call per ~800 location ids instead of one per registration)."""

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf, self._pos = os.urandom(4096), 0
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out


_RANDOM = _RandomPool()


def _intern(v: Any) -> Any:
    """Share equal small values (versions, bindings, lifetimes) between registrations."""
    if len(_INTERN) > 4096:
        return v
    return _INTERN.setdefault(v, v)


class Registration:
    """One registered LwM2M Client. Compact (``__slots__``); object links kept as raw text.

    Times are seconds since the epoch (they survive a restart). ``identity`` is the DTLS PSK
    identity the client registered with, ``None`` for NoSec.
    """

    __slots__ = ("endpoint", "location", "lifetime", "lwm2m", "binding", "sms", "queue",
                 "links", "host", "port", "registered", "updated", "expires", "identity",
                 "rowid")

    def __init__(self, endpoint: str, location: str, lifetime: int, lwm2m: str, binding: str,
                 sms: str | None, queue: bool, links: str, host: str, port: int,
                 registered: float, updated: float, expires: float,
                 identity: bytes | None = None, rowid: int | None = None) -> None:
        self.endpoint = endpoint
        self.location = location
        self.lifetime = lifetime
        self.lwm2m = lwm2m
        self.binding = binding
        self.sms = sms
        self.queue = queue
        self.links = links
        self.host = host
        self.port = port
        self.registered = registered
        self.updated = updated
        self.expires = expires
        self.identity = identity
        self.rowid = rowid  # key in the store's database, assigned by the store

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def secure(self) -> bool:
        return self.identity is not None

    @property
    def location_path(self) -> str:
        return f"/rd/{self.location}"

    def object_links(self) -> list[dict]:
        try:
            return parse_links(self.links)
        except LinkFormatError:
            return []

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (used by events and the HTTP API)."""
        return {
            "endpoint": self.endpoint, "location": self.location_path,
            "lifetime": self.lifetime, "lwm2m": self.lwm2m, "binding": self.binding,
            "sms": self.sms, "queue_mode": self.queue, "object_links": self.links,
            "address": f"{self.host}:{self.port}" if ":" not in self.host
            else f"[{self.host}]:{self.port}",
            "secure": self.secure,
            "identity": self.identity.decode("utf-8", "replace") if self.identity else None,
            "registered_at": self.registered, "updated_at": self.updated,
            "expires_at": self.expires,
        }

    def snapshot(self, **extra: Any) -> "RegistrationSnapshot":
        """A cheap frozen view: a callable that builds :meth:`to_dict` of the registration as
        it is now (plus ``extra``), for events kept in history."""
        return RegistrationSnapshot(self.row(), extra or None)

    def row(self) -> tuple:
        """The database row: (rowid, location, endpoint, lifetime, ...)."""
        return (self.rowid, self.location, self.endpoint, self.lifetime, self.lwm2m, self.binding,
                self.sms, int(self.queue), self.links, self.host, self.port, self.registered,
                self.updated, self.expires, self.identity)

    @classmethod
    def from_row(cls, row: tuple) -> "Registration":
        (rowid, loc, ep, lt, ver, b, sms, q, links, host, port, reg, upd, exp, ident) = row
        return cls(ep, loc, _intern(lt), _intern(ver), _intern(b), sms, bool(q), links, host,
                   port, reg, upd, exp, ident, rowid)

    def __repr__(self) -> str:
        return f"<Registration {self.endpoint!r} at /rd/{self.location} lt={self.lifetime}>"


class RegistrationSnapshot:
    """The state of a registration at one moment (a row tuple); calling it gives the dict."""

    __slots__ = ("row", "extra")

    def __init__(self, row: tuple, extra: dict[str, Any] | None) -> None:
        self.row = row
        self.extra = extra

    def __call__(self) -> dict[str, Any]:
        d = Registration.from_row(self.row).to_dict()
        if self.extra:
            d.update(self.extra)
        return d


class RegistrationError(Exception):
    """A request the interface refuses: ``code`` is the CoAP response, ``reason`` its diagnostic."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class RegisterParams:
    """The parsed query of a Register or Update (absent values are ``None``)."""

    __slots__ = ("endpoint", "lifetime", "lwm2m", "binding", "sms", "queue", "links")

    def __init__(self) -> None:
        self.endpoint: str | None = None
        self.lifetime: int | None = None
        self.lwm2m: str | None = None
        self.binding: str | None = None
        self.sms: str | None = None
        self.queue: bool | None = None
        self.links: str | None = None


class RegistrationInterface:
    """Handles requests to ``/rd`` for an :class:`~reference.server.server.LwM2MServer`.

    Class attributes are the policy: which versions and parameters are accepted. The methods
    ``parse_*``, ``check_*``, ``choose_location`` and ``*_response`` are the points a subclass
    overrides.
    """

    #: Core 1.1.1 §6.2.1: "An LwM2M Server MUST refuse a Client's Registration request, if it
    #: does not support the LwM2M Enabler version indicated" -> 4.12 (Transport Table 6.7.-2).
    supported_versions: frozenset[str] = frozenset({"1.0", "1.1"})
    #: Register parameters (Core 1.1.1 §6.2.1 Table); anything else is 4.00 ("unknown
    #: parameter is specified").
    register_params: frozenset[str] = frozenset({"ep", "lt", "lwm2m", "b", "sms", "Q"})
    #: Update parameters (Core 1.1.1 §6.2.2): Lifetime, Binding Mode, SMS Number, Queue Mode.
    update_params: frozenset[str] = frozenset({"lt", "b", "sms", "Q"})
    #: Binding letters (Core 1.1.1 §6.2.1.1 / Server object /1/x/7): U, T, S, N; "Q" is
    #: accepted in the binding for LwM2M 1.0 clients (UQ, SQ, UQS of Core 1.0 §5.3.1.1).
    binding_letters: frozenset[str] = frozenset("UTSNQ")
    default_lifetime: int = DEFAULT_LIFETIME
    max_lifetime: int = 0xFFFFFFFF
    location_bytes: int = 5  # 40 random bits -> 10 hex characters

    def __init__(self, server: "LwM2MServer") -> None:
        self.server = server

    # ---- dispatch -----------------------------------------------------------------------------
    async def handle(self, request: Message, remote: tuple, identity: bytes | None) -> Message:
        """Answer one request whose first Uri-Path segment is ``rd``. ``identity`` is the DTLS
        PSK identity of the sender, ``None`` when it came over the NoSec port."""
        path = request.opt.uri_path
        code = request.code
        try:
            if len(path) == 1:
                if code != Code.POST:
                    raise RegistrationError(Code.METHOD_NOT_ALLOWED, "only POST on /rd")
                return await self.register(request, remote, identity)
            if len(path) == 2:
                if code == Code.POST:
                    return await self.update(request, remote, path[1], identity)
                if code == Code.DELETE:
                    return await self.deregister(request, remote, path[1], identity)
                raise RegistrationError(Code.METHOD_NOT_ALLOWED, "only POST or DELETE on /rd/{id}")
            raise RegistrationError(Code.NOT_FOUND, "no such registration resource")
        except RegistrationError as e:
            return self.error_response(e.code, e.reason)

    # ---- Register -----------------------------------------------------------------------------
    async def register(self, request: Message, remote: tuple, identity: bytes | None) -> Message:
        p = self.parse_register(request)
        self.check_register_security(p.endpoint, identity)  # type: ignore[arg-type]
        now = time.time()
        lifetime = p.lifetime if p.lifetime is not None else self.default_lifetime
        store = self.server.store
        location = self.choose_location(p.endpoint)  # type: ignore[arg-type]
        reg = Registration(
            p.endpoint, location, lifetime, p.lwm2m, p.binding or "U",  # type: ignore[arg-type]
            p.sms, bool(p.queue), p.links, remote[0], remote[1], now, now,  # type: ignore[arg-type]
            now + lifetime, identity)
        replaced = store.get_by_endpoint(reg.endpoint)
        await self.server.commit_registration(reg, replaced)
        return self.register_response(reg)

    def parse_register(self, request: Message) -> RegisterParams:
        p = self.parse_query(request.opt.uri_query, self.register_params)
        if not p.endpoint:
            raise RegistrationError(Code.BAD_REQUEST, "missing Endpoint Client Name (ep)")
        if p.lwm2m is None:
            raise RegistrationError(Code.BAD_REQUEST, "missing LwM2M Version (lwm2m)")
        if p.lwm2m not in self.supported_versions:
            raise RegistrationError(Code.PRECONDITION_FAILED,
                                    f"LwM2M version {p.lwm2m} not supported")
        p.links = self.parse_links(request, required=True)
        return p

    def parse_query(self, queries: tuple[str, ...], allowed: frozenset[str]) -> RegisterParams:
        """Parse ``key=value`` Uri-Query options (Core 1.1.1 §6.2.1 / §6.2.2)."""
        p = RegisterParams()
        seen: set[str] = set()
        for q in queries:
            key, sep, value = q.partition("=")
            if key not in allowed:
                raise RegistrationError(Code.BAD_REQUEST, f"unknown parameter {key!r}")
            if key in seen:
                raise RegistrationError(Code.BAD_REQUEST, f"parameter {key!r} given twice")
            seen.add(key)
            if key == "Q":
                if sep:
                    raise RegistrationError(Code.BAD_REQUEST, "Queue Mode 'Q' takes no value")
                p.queue = True
                continue
            if not sep or value == "":
                raise RegistrationError(Code.BAD_REQUEST, f"parameter {key!r} without value")
            if key == "ep":
                p.endpoint = value
            elif key == "lt":
                if not value.isdigit() or not value.isascii():
                    raise RegistrationError(Code.BAD_REQUEST, f"lifetime {value!r} is not a number")
                lt = int(value)
                if lt < 1 or lt > self.max_lifetime:
                    raise RegistrationError(Code.BAD_REQUEST, f"lifetime {lt} out of range")
                p.lifetime = _intern(lt)
            elif key == "lwm2m":
                if _VERSION_RE.fullmatch(value) is None:
                    raise RegistrationError(Code.BAD_REQUEST, f"malformed LwM2M version {value!r}")
                p.lwm2m = _intern(value)
            elif key == "b":
                p.binding = _intern(self.parse_binding(value))
                if "Q" in value:
                    p.queue = True
            elif key == "sms":
                if _SMS_RE.fullmatch(value) is None:
                    raise RegistrationError(Code.BAD_REQUEST, f"malformed SMS number {value!r}")
                p.sms = value
        return p

    def parse_binding(self, value: str) -> str:
        letters = set(value)
        if len(letters) != len(value) or not letters <= self.binding_letters or value == "Q":
            raise RegistrationError(Code.BAD_REQUEST, f"invalid binding {value!r}")
        return value

    def parse_links(self, request: Message, *, required: bool) -> str | None:
        """The payload as text after validation, ``None`` when absent and not required."""
        payload = request.payload
        cf = request.opt.content_format
        if not payload:
            if required:
                raise RegistrationError(Code.BAD_REQUEST, "missing Objects and Object Instances")
            return None
        if cf is not None and int(cf) != LINK_FORMAT:
            raise RegistrationError(Code.BAD_REQUEST,
                                    f"payload must be application/link-format (40), not {int(cf)}")
        try:
            text = payload.decode("utf-8")
            validate_registration_links(text)
        except UnicodeDecodeError:
            raise RegistrationError(Code.BAD_REQUEST, "payload is not UTF-8") from None
        except LinkFormatError as e:
            raise RegistrationError(Code.BAD_REQUEST, f"malformed link-format: {e}") from None
        return text

    def choose_location(self, endpoint: str) -> str:
        """A fresh, unguessable location id (the ``{id}`` of ``/rd/{id}``)."""
        store = self.server.store
        while True:
            loc = _RANDOM.take(self.location_bytes).hex()
            if store.get_by_location(loc) is None:
                return loc

    def register_response(self, reg: Registration) -> Message:
        return Message(code=Code.CREATED, location_path=("rd", reg.location))

    # ---- Update -------------------------------------------------------------------------------
    async def update(self, request: Message, remote: tuple, location: str,
                     identity: bytes | None) -> Message:
        reg = self.lookup(location, identity)
        p = self.parse_query(request.opt.uri_query, self.update_params)
        links = self.parse_links(request, required=False)
        now = time.time()
        changed: dict[str, Any] = {}
        if p.lifetime is not None and p.lifetime != reg.lifetime:
            reg.lifetime = changed["lifetime"] = p.lifetime
        if p.binding is not None and p.binding != reg.binding:
            reg.binding = changed["binding"] = p.binding
        if p.sms is not None and p.sms != reg.sms:
            reg.sms = changed["sms"] = p.sms
        if p.queue is not None and p.queue != reg.queue:
            reg.queue = changed["queue_mode"] = p.queue
        if links is not None and links != reg.links:
            reg.links = changed["object_links"] = links
        if (remote[0], remote[1]) != (reg.host, reg.port):
            # Core 1.1.1 §6.2.2: the Update also refreshes the client's transport address
            reg.host, reg.port = remote[0], remote[1]
            changed["address"] = f"{reg.host}:{reg.port}"
        reg.updated = now
        reg.expires = now + reg.lifetime
        await self.server.commit_update(reg, changed)
        return self.update_response(reg)

    def update_response(self, reg: Registration) -> Message:
        return Message(code=Code.CHANGED)

    # ---- De-register --------------------------------------------------------------------------
    async def deregister(self, request: Message, remote: tuple, location: str,
                         identity: bytes | None) -> Message:
        reg = self.lookup(location, identity)
        await self.server.commit_deregistration(reg)
        return self.deregister_response(reg)

    def deregister_response(self, reg: Registration) -> Message:
        return Message(code=Code.DELETED)

    # ---- shared -------------------------------------------------------------------------------
    def lookup(self, location: str, identity: bytes | None) -> Registration:
        reg = self.server.store.get_by_location(location)
        if reg is None:
            raise RegistrationError(Code.NOT_FOUND, f"no registration at /rd/{location}")
        if reg.identity != identity:
            raise RegistrationError(Code.FORBIDDEN,
                                    "request not from the security context of the registration")
        return reg

    def check_register_security(self, endpoint: str, identity: bytes | None) -> None:
        """Delegate to the server's security policy (see :mod:`reference.server.security`)."""
        reason = self.server.security.check_register(endpoint, identity)
        if reason is not None:
            raise RegistrationError(Code.FORBIDDEN, reason)

    def error_response(self, code: Code, reason: str) -> Message:
        """Failure response with a diagnostic payload (RFC 7252 §5.5.2)."""
        return Message(code=code, payload=reason.encode("utf-8")[:200])
