"""The reference LwM2M server: registration interface, store, DM operations, events, listeners.

Typical use::

    server = LwM2MServer(coap_port=0, http_port=0, state_dir="/tmp/state")
    await server.start()
    async for ev in server.events.subscribe(["registered"]):
        resp = await server.read(ev.endpoint, "/3/0/0")
        print(resp.code_text, resp.values)

Listeners: a NoSec CoAP port (``coap_host:coap_port``), optionally a CoAPS port through
:class:`reference.security.DtlsServerBridge` (``coaps_port``, needs a PSK table) and the HTTP
JSON API (``http_port``, see ``docs/server-api.md``). Ports may be 0 (any free one); the bound
addresses are in :attr:`coap_address`, :attr:`coaps_address`, :attr:`http_address`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Mapping

from aiocoap import Message
from aiocoap.numbers.codes import Code

from reference.coap.endpoint import CoapEndpoint, CoapReset, CoapTimeout, EndpointClosed
from reference.coap.params import DEFAULT_PARAMETERS, TransmissionParameters
from reference.model.path import Path, PathError
from reference.model.types import ContentFormat, Values
from reference.server.dm import DmError, DmResponse, ServerObservation, response_from
from reference.server.events import EventBus, EventKind
from reference.server.registration import Registration, RegistrationInterface
from reference.server.security import PskTable, SecurityPolicy
from reference.server.store import RegistrationStore

log = logging.getLogger(__name__)

DB_NAME = "registrations.sqlite3"
#: Write-Attributes parameters (Core 1.1.1 §5.1.2 Table 5.1.2-1 / §6.3.4 "Notification"
#: attributes): pmin, pmax, gt, lt, st and the 1.1 epmin, epmax.
ATTRIBUTE_NAMES = frozenset({"pmin", "pmax", "gt", "lt", "st", "epmin", "epmax"})


class LwM2MServer:
    """Reference LwM2M server. Construct, ``await start()``, ``await stop()``.

    ``state_dir``: directory for the SQLite store (``None`` = in memory, lost on stop).
    ``psk_table``: PSK identities (enables the security policy; required for ``coaps_port``).
    ``registration_interface``: class handling ``/rd`` (override for fault injection).
    ``params``: CoAP transmission parameters for server-initiated requests.
    ``expiry_interval``: how often expired registrations are swept (seconds).
    """

    def __init__(self, *, coap_host: str = "127.0.0.1", coap_port: int = 5683,
                 coaps_port: int | None = None, http_host: str = "127.0.0.1",
                 http_port: int | None = None, state_dir: str | os.PathLike | None = None,
                 psk_table: PskTable | None = None, registry: Any = None,
                 params: TransmissionParameters = DEFAULT_PARAMETERS,
                 registration_interface: type[RegistrationInterface] = RegistrationInterface,
                 expiry_interval: float = 1.0, store_synchronous: str = "FULL",
                 commit_window: float = 0.0, event_history: int = 10_000,
                 separate_after: float | None = 1.0, dtls_options: Mapping[str, Any] | None = None,
                 charging: bool = True) -> None:
        self.coap_host = coap_host
        self.coap_port = coap_port
        self.coaps_port = coaps_port
        self.http_host = http_host
        self.http_port = http_port
        self.state_dir = None if state_dir in (None, ":memory:") else os.fspath(state_dir)  # type: ignore[arg-type]
        self.params = params
        self.expiry_interval = expiry_interval
        self.separate_after = separate_after
        self.dtls_options = dict(dtls_options or {})
        if registry is None:
            from reference.model.registry import ObjectRegistry
            registry = ObjectRegistry.default()
        self.registry = registry
        self.psk_table = psk_table or PskTable()
        self.security = SecurityPolicy(self.psk_table)
        self.events = EventBus(event_history)
        self.store = RegistrationStore(
            os.path.join(self.state_dir, DB_NAME) if self.state_dir else None,
            synchronous=store_synchronous, commit_window=commit_window)
        self.registration = registration_interface(self)
        # --- smartcard hook (issue #5): card-issuer awareness, see reference/server/cards.py ---
        from reference.server.cards import CardIssuerAwareness
        self.cards = CardIssuerAwareness(self)
        # --- end smartcard hook ---
        # --- charging hook (LightweightM2M-HLF-SG4): per-endpoint traffic records, see charging.py ---
        from reference.server.charging import DB_NAME as CHARGING_DB, ChargingRecords
        self.charging: ChargingRecords | None = (ChargingRecords(
            os.path.join(self.state_dir, CHARGING_DB) if self.state_dir else None,
            registrations=lambda: iter(self.store)) if charging else None)
        # --- end charging hook ---
        self.coap: CoapEndpoint | None = None
        self.coap_secure: CoapEndpoint | None = None  # plain side of the DTLS bridge
        self.dtls_bridge: Any = None
        self._http_runner: Any = None
        self._http_address: tuple[str, int] | None = None
        self._expiry_task: asyncio.Task | None = None
        self.observations: dict[str, ServerObservation] = {}
        self._started = False

    # ---- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store (dropping registrations that expired while stopped), bind the
        listeners and start the expiry sweep."""
        loaded = await self.store.open()
        self.cards.open()  # smartcard hook (issue #5)
        if self.charging is not None:  # charging hook
            await self.charging.open()
        now = time.time()
        for reg in self.store.pop_expired(now):
            self.events.emit(EventKind.EXPIRED, reg.endpoint, reg.snapshot())
        log.info("loaded %d registrations (%d still valid)", len(loaded), len(self.store))
        self.coap = await CoapEndpoint.create(
            self.coap_host, self.coap_port, self.handle_plain, params=self.params,
            separate_after=self.separate_after, name="coap")
        if self.charging is not None:  # charging hook: count this endpoint's datagrams
            self.charging.install(self.coap)
        if self.coaps_port is not None:
            await self._start_dtls()
        if self.http_port is not None:
            from reference.server.http_api import start_http
            self._http_runner, self._http_address = await start_http(
                self, self.http_host, self.http_port)
        self._expiry_task = asyncio.get_running_loop().create_task(self._expiry_loop())
        self._started = True

    async def _start_dtls(self) -> None:
        """CoAPS: DtlsServerBridge on ``coaps_port`` forwarding to a loopback CoAP endpoint
        whose requests all carry the session's PSK identity (Transport 1.1.1 §5.2)."""
        from reference.security import DtlsServerBridge
        self.coap_secure = await CoapEndpoint.create(
            "127.0.0.1", 0, self.handle_secure, params=self.params,
            separate_after=self.separate_after, name="coaps-inner")
        if self.charging is not None:  # charging hook: the plain CoAP inside the DTLS sessions
            self.charging.install(self.coap_secure)
        self.dtls_bridge = DtlsServerBridge(
            (self.coap_host, self.coaps_port), self.coap_secure.address,
            self.psk_table.key_for, **self.dtls_options)
        await self.dtls_bridge.start()

    async def stop(self) -> None:
        """Stop listeners, cancel observations (reactively) and close the store after the
        pending commits."""
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            try:
                await self._expiry_task
            except asyncio.CancelledError:
                pass
            self._expiry_task = None
        if self._http_runner is not None:
            await self._http_runner.cleanup()
            self._http_runner = None
        for obs in list(self.observations.values()):
            obs.coap.cancel_reactive()
            obs._finish()
        if self.dtls_bridge is not None:
            await self.dtls_bridge.close()
            self.dtls_bridge = None
        for ep in (self.coap, self.coap_secure):
            if ep is not None:
                ep.close()
        await self.cards.close()  # smartcard hook (issue #5)
        if self.charging is not None:  # charging hook: write the last counts
            await self.charging.close()
        await self.store.close()
        self._started = False

    async def __aenter__(self) -> "LwM2MServer":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def coap_address(self) -> tuple[str, int]:
        assert self.coap is not None, "server not started"
        return self.coap.address

    @property
    def coaps_address(self) -> tuple[str, int] | None:
        return self.dtls_bridge.address if self.dtls_bridge is not None else None

    @property
    def http_address(self) -> tuple[str, int] | None:
        return self._http_address

    async def _expiry_loop(self) -> None:
        """Core 1.1.1 §6.2.1: remove registrations not updated within their Lifetime."""
        while True:
            await asyncio.sleep(self.expiry_interval)
            try:
                for reg in self.store.pop_expired(time.time()):
                    self._forget_client(reg)
                    self.events.emit(EventKind.EXPIRED, reg.endpoint, reg.snapshot())
            except Exception:
                log.exception("expiry sweep failed")

    # ---- CoAP request entry points ------------------------------------------------------------
    async def handle_plain(self, request: Message, remote: tuple) -> Message:
        """Requests arriving on the NoSec port."""
        return await self.handle_request(request, remote, None)

    async def handle_secure(self, request: Message, remote: tuple) -> Message:
        """Requests forwarded by the DTLS bridge; ``remote`` is the session's loopback socket."""
        session = self.dtls_bridge.session_for(remote) if self.dtls_bridge is not None else None
        if session is None:  # not (or no longer) a DTLS session: refuse
            return Message(code=Code.FORBIDDEN, payload=b"no DTLS session")
        return await self.handle_request(request, remote, session.identity)

    async def handle_request(self, request: Message, remote: tuple,
                             identity: bytes | None) -> Message:
        charge = self.charging.begin(request, remote) if self.charging is not None else None  # charging hook
        try:
            path = request.opt.uri_path
            if path and path[0] == "rd":
                return await self.registration.handle(request, remote, identity)
            return Message(code=Code.NOT_FOUND, payload=b"no such resource on this server")
        finally:
            if charge is not None:  # charging hook: the request's endpoint is known now
                self.charging.end(charge)  # type: ignore[union-attr]

    # ---- commits (called by the RegistrationInterface) ----------------------------------------
    async def commit_registration(self, reg: Registration, replaced: Registration | None) -> None:
        """Persist a new registration (replacing the endpoint's previous one), then announce."""
        if replaced is not None:
            self._forget_client(replaced)
        try:
            await self.store.put(reg, replaced)
        except Exception:
            # The group commit failed and rolled back: the Register is answered 5.00, so the
            # in-memory index must not keep a registration the database never got, and the
            # previous one (still in the database) stays the endpoint's registration.
            self.store.forget(reg)
            if replaced is not None:
                self.store.restore(replaced)
            raise
        if self.charging is not None:  # charging hook
            self.charging.registered(reg, replaced)
        snap = (reg.snapshot(replaced_location=replaced.location_path) if replaced is not None
                else reg.snapshot())
        self.events.emit(EventKind.REGISTERED, reg.endpoint, snap)

    async def commit_update(self, reg: Registration, changed: dict[str, Any]) -> None:
        await self.store.touch(reg)
        if self.charging is not None:  # charging hook
            self.charging.updated(reg)
        self.events.emit(EventKind.UPDATED, reg.endpoint, reg.snapshot(changed=changed))

    async def commit_deregistration(self, reg: Registration) -> None:
        self._forget_client(reg)
        await self.store.delete(reg)
        if self.charging is not None:  # charging hook
            self.charging.deregistered(reg)
        self.events.emit(EventKind.DEREGISTERED, reg.endpoint, reg.snapshot())

    def _forget_client(self, reg: Registration) -> None:
        """A registration ends: its observations end too (reactively: later notifications get
        RST, RFC 7641 §3.6)."""
        for obs in [o for o in self.observations.values() if o.endpoint == reg.endpoint]:
            obs.coap.cancel_reactive()
            obs._finish()

    # ---- clients ------------------------------------------------------------------------------
    def clients(self) -> list[Registration]:
        return sorted(self.store, key=lambda r: r.endpoint)

    def get_client(self, endpoint: str) -> Registration | None:
        return self.store.get_by_endpoint(endpoint)

    def _client(self, endpoint: str) -> tuple[Registration, CoapEndpoint]:
        reg = self.store.get_by_endpoint(endpoint)
        if reg is None:
            raise DmError(404, f"endpoint {endpoint!r} is not registered")
        ep = self.coap_secure if reg.identity is not None else self.coap
        if ep is None:
            raise DmError(503, "the listener of this registration is not running")
        return reg, ep

    @staticmethod
    def _path(path: str | Path) -> Path:
        if isinstance(path, Path):
            return path
        try:
            return Path.parse(path)
        except PathError as e:
            raise DmError(400, str(e)) from None

    async def _send(self, op: str, endpoint: str, path: Path, msg: Message,
                    timeout: float | None) -> DmResponse:
        reg, ep = self._client(endpoint)
        try:
            resp = await ep.request(msg, reg.address, timeout=timeout)
        except CoapTimeout as e:
            raise DmError(504, f"{op} {endpoint} {path}: {e}") from None
        except CoapReset as e:
            raise DmError(502, f"{op} {endpoint} {path}: {e}") from None
        except EndpointClosed as e:
            raise DmError(503, str(e)) from None
        return response_from(op, endpoint, path, resp, self.registry)

    # ---- DM operations (Core 1.1.1 §6.3; Transport 1.1.1 §6.3) -------------------------------
    async def read(self, endpoint: str, path: str | Path, accept: int | None = None, *,
                   timeout: float | None = None) -> DmResponse:
        """Read: GET /path, with Accept when given."""
        p = self._path(path)
        msg = Message(code=Code.GET, uri_path=p.uri_path())
        if accept is not None:
            msg.opt.accept = int(accept)
        return await self._send("read", endpoint, p, msg, timeout)

    async def discover(self, endpoint: str, path: str | Path, *,
                       timeout: float | None = None) -> DmResponse:
        """Discover: GET /path with Accept: application/link-format (Core 1.1.1 §6.3.1)."""
        p = self._path(path)
        msg = Message(code=Code.GET, uri_path=p.uri_path())
        msg.opt.accept = ContentFormat.LINK_FORMAT
        return await self._send("discover", endpoint, p, msg, timeout)

    def _payload(self, p: Path, values: Values | Mapping | None, payload: bytes | None,
                 fmt: int | None) -> tuple[bytes, int]:
        from reference import formats
        if payload is not None:
            if fmt is None:
                raise DmError(400, "a raw payload needs a content format")
            return bytes(payload), int(fmt)
        if values is None:
            raise DmError(400, "nothing to write")
        fmt = int(fmt) if fmt is not None else int(ContentFormat.LWM2M_TLV)
        vals: Values = {}
        for k, v in values.items():
            vals[self._path(k)] = v
        try:
            return formats.encode(fmt, vals, p, self.registry), fmt
        except formats.FormatError as e:
            raise DmError(400, f"cannot encode: {e}") from None

    async def write(self, endpoint: str, path: str | Path, values: Values | Mapping | None = None,
                    *, fmt: int | None = None, payload: bytes | None = None,
                    replace: bool = True, timeout: float | None = None) -> DmResponse:
        """Write: PUT (replace) or POST (partial update) with ``values`` encoded in ``fmt``
        (default TLV), or a raw ``payload`` in content format ``fmt`` (Core 1.1.1 §6.3.3)."""
        p = self._path(path)
        body, cf = self._payload(p, values, payload, fmt)
        msg = Message(code=Code.PUT if replace else Code.POST, uri_path=p.uri_path(),
                      payload=body)
        msg.opt.content_format = cf
        return await self._send("write" if replace else "write-partial", endpoint, p, msg, timeout)

    async def execute(self, endpoint: str, path: str | Path, args: str | bytes | None = None, *,
                      timeout: float | None = None) -> DmResponse:
        """Execute: POST /oid/iid/rid with optional arguments (Core 1.1.1 §5.4.5 syntax)."""
        p = self._path(path)
        if p.depth != 3:
            raise DmError(400, "execute needs a resource path /oid/iid/rid")
        msg = Message(code=Code.POST, uri_path=p.uri_path())
        if args:
            msg.payload = args.encode() if isinstance(args, str) else bytes(args)
            msg.opt.content_format = ContentFormat.TEXT
        return await self._send("execute", endpoint, p, msg, timeout)

    async def create(self, endpoint: str, path: str | Path, values: Values | Mapping | None = None,
                     *, fmt: int | None = None, payload: bytes | None = None,
                     timeout: float | None = None) -> DmResponse:
        """Create: POST /oid with the new instance's resources (Core 1.1.1 §6.3.6)."""
        p = self._path(path)
        if p.depth != 1:
            raise DmError(400, "create needs an object path /oid")
        body, cf = self._payload(p, values, payload, fmt)
        msg = Message(code=Code.POST, uri_path=p.uri_path(), payload=body)
        msg.opt.content_format = cf
        return await self._send("create", endpoint, p, msg, timeout)

    async def delete(self, endpoint: str, path: str | Path, *,
                     timeout: float | None = None) -> DmResponse:
        """Delete: DELETE /oid/iid (Core 1.1.1 §6.3.7)."""
        p = self._path(path)
        msg = Message(code=Code.DELETE, uri_path=p.uri_path())
        return await self._send("delete", endpoint, p, msg, timeout)

    async def write_attributes(self, endpoint: str, path: str | Path,
                               attributes: Mapping[str, float | int | None], *,
                               timeout: float | None = None) -> DmResponse:
        """Write-Attributes: PUT /path?pmin=..&pmax=.. without payload (Core 1.1.1 §6.3.4);
        a ``None`` value sends the bare name (removes the attribute)."""
        p = self._path(path)
        query = []
        for name, value in attributes.items():
            if name not in ATTRIBUTE_NAMES:
                raise DmError(400, f"unknown attribute {name!r}")
            if value is None:
                query.append(name)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DmError(400, f"attribute {name} must be a number")
            else:
                query.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
        if not query:
            raise DmError(400, "no attributes given")
        msg = Message(code=Code.PUT, uri_path=p.uri_path(), uri_query=query)
        return await self._send("write-attributes", endpoint, p, msg, timeout)

    async def observe(self, endpoint: str, path: str | Path, accept: int | None = None, *,
                      timeout: float | None = None) -> tuple[ServerObservation | None, DmResponse]:
        """Observe: GET with Observe=0 (Core 1.1.1 §6.4.1, RFC 7641 §3.1).

        Returns ``(observation, first_response)``; ``observation`` is ``None`` when the client
        did not establish it (error code or no Observe option in the response)."""
        p = self._path(path)
        reg, ep = self._client(endpoint)
        msg = Message(code=Code.GET, uri_path=p.uri_path())
        if accept is not None:
            msg.opt.accept = int(accept)
        try:
            coap_obs = ep.observe(msg, reg.address)
        except EndpointClosed as e:
            raise DmError(503, str(e)) from None
        try:
            first = await asyncio.wait_for(
                coap_obs.response,
                timeout if timeout is not None else self.params.exchange_lifetime)
        except (asyncio.TimeoutError, CoapTimeout):
            coap_obs.cancel_reactive()
            raise DmError(504, f"observe {endpoint} {p}: no response") from None
        except CoapReset as e:
            raise DmError(502, f"observe {endpoint} {p}: {e}") from None
        resp = response_from("observe", endpoint, p, first, self.registry)
        if not coap_obs.established:
            return None, resp
        obs = ServerObservation(endpoint, p, accept, coap_obs, self.registry,
                                self._notification, self._observation_ended)
        obs.first = resp
        self.observations[obs.id] = obs
        return obs, resp

    def _notification(self, obs: ServerObservation, resp: DmResponse) -> None:
        data = resp.to_json()
        data["observation"] = obs.id
        self.events.emit(EventKind.NOTIFICATION, obs.endpoint, data)

    def _observation_ended(self, obs: ServerObservation) -> None:
        if self.observations.pop(obs.id, None) is not None:
            self.events.emit(EventKind.OBSERVATION_ENDED, obs.endpoint,
                             {"observation": obs.id, "path": str(obs.path)})

    def find_observation(self, endpoint: str, path: str | Path) -> ServerObservation | None:
        p = self._path(path)
        for obs in self.observations.values():
            if obs.endpoint == endpoint and obs.path == p:
                return obs
        return None

    async def cancel_observe(self, observation: ServerObservation | str, *, proactive: bool = True,
                             timeout: float | None = None) -> DmResponse | None:
        """End an observation: proactively (GET with Observe=1, returns the client's answer) or
        reactively (forget it; the next notification is answered with RST). RFC 7641 §3.6."""
        obs = self.observations.get(observation) if isinstance(observation, str) else observation
        if obs is None or not obs.active:
            raise DmError(404, f"no active observation {observation!r}")
        if not proactive:
            obs.coap.cancel_reactive()
            obs._finish()
            return None
        try:
            resp = await obs.coap.cancel(timeout=timeout)
        except CoapTimeout as e:
            obs._finish()
            raise DmError(504, f"cancel-observe: {e}") from None
        except CoapReset as e:
            obs._finish()
            raise DmError(502, f"cancel-observe: {e}") from None
        obs._finish()
        return response_from("cancel-observe", obs.endpoint, obs.path, resp, self.registry)

