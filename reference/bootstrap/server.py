"""The reference LwM2M Bootstrap-Server (OMA-TS-LightweightM2M-Core 1.1.1 §5.2, §6.1).

Client-initiated bootstrap (Core 1.1.1 §5.2, §6.1.7.1): a client sends the Bootstrap-Request
``POST /bs?ep=NAME[&pct=N]``. For a configured endpoint the server answers 2.04 Changed and then,
asynchronously and from the same UDP socket, runs the bootstrap sequence against the client's
address:

1. optional Bootstrap-Discover ``GET /`` with Accept: application/link-format (40) (§6.1.7.3),
2. Bootstrap-Delete of the configured paths (§6.1.7.6; default ``/0`` and ``/1``: a delete of
   ``/0`` spares the Bootstrap-Server Account and the one of ``/`` would also spare Device /3/0,
   everything else of the client would be gone, so the default is the narrower pair),
3. Bootstrap-Write of every Security (/0/x) and Server (/1/x) instance (§6.1.7.5), encoded in
   the client's preferred content format ``pct`` when given, TLV otherwise (the interoperable
   choice for a client that does not say, see OMA LwM2M issue #515),
4. Bootstrap-Finish ``POST /bs`` (§6.1.7.2): 2.04 Changed means the client accepted the
   configuration; 4.06 Not Acceptable means it found it inconsistent.

Unknown or missing ``ep``: 4.00 Bad Request ("Unknown Endpoint Client Name", §6.1.7.1) and no
operation towards the client. A ``pct`` the server cannot write instances in: 4.15 Unsupported
Content-Format. A client that came over the CoAPS port with a PSK identity that does not belong to
``ep``: 4.03 Forbidden (the server must not hand out another device's credentials).

Server-initiated bootstrap (Core 1.1.1 §5.2: the Bootstrap-Server configures a client it knows
the address of, without a preceding Bootstrap-Request, e.g. after it executed the Server object's
Bootstrap-Request Trigger /1/x/9): :meth:`BootstrapServer.bootstrap_client`.

Every step of the sequence is a method, so a fault-injected subclass can skip or distort one
(e.g. override :meth:`bootstrap_finish` to never finish, or :meth:`instances_to_write` to write a
wrong Server URI).
"""
from __future__ import annotations

import asyncio
import enum
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Protocol

import aiocoap
import aiocoap.error
import aiocoap.resource
from aiocoap import Code, Message

from reference.coap import gate
from reference.bootstrap.provisioning import ProvisioningError, load_file, parse_text, validate
from reference.bootstrap.store import DeviceStore, Event, UnknownDevice
from reference.model.config import DeviceConfig, SecurityMode
from reference.model.path import Path, PathError
from reference.model.types import ContentFormat, Values

log = logging.getLogger("lwm2m.bootstrap")

#: Content formats an Object Instance can be written in (Core 1.1.1 §7.4, Table 7.4.-1):
#: text and opaque only carry single resources and CBOR only single values.
INSTANCE_FORMATS: tuple[ContentFormat, ...] = (
    ContentFormat.LWM2M_TLV, ContentFormat.SENML_CBOR, ContentFormat.SENML_JSON, ContentFormat.LWM2M_JSON,
)

#: Bootstrap-Finish / Bootstrap-Request live on ``/bs`` (Core 1.1.1 §6.1.7.1, §6.1.7.2; Transport §6.1).
BS_PATH = ("bs",)


class EventKind(str, enum.Enum):
    """Kinds of entries in the bootstrap history."""

    REQUESTED = "bootstrap-requested"  # Bootstrap-Request accepted, or server-initiated flow started
    FINISHED = "bootstrap-finished"    # Bootstrap-Finish answered 2.04 Changed
    FAILED = "bootstrap-failed"        # a step failed, timed out, 4.06 at Finish, or superseded
    REJECTED = "bootstrap-rejected"    # Bootstrap-Request refused (unknown ep, bad pct, wrong PSK id)
    DEVICE_ADDED = "device-added"
    DEVICE_REMOVED = "device-removed"


class DtlsSessions(Protocol):
    """What the server needs of a DTLS bridge (:class:`reference.security.DtlsServerBridge`):
    for the plaintext source address a decrypted datagram came from, the PSK identity the peer
    authenticated with (``None`` if that address is not one of the bridge's sessions)."""

    def session_for(self, local_addr: Any) -> Any: ...


@dataclass
class BootstrapPolicy:
    """Server-wide defaults; per-device settings (``DeviceConfig.delete_paths``) override them."""

    delete_paths: list[str] = field(default_factory=lambda: ["/0", "/1"])
    discover: bool = False                  # send Bootstrap-Discover first (and avoid ID clashes)
    default_format: ContentFormat = ContentFormat.LWM2M_TLV
    write_bootstrap_account: bool = False   # the client already has the account it reached us with
    request_timeout: float = 10.0           # per request, covers CoAP retransmissions
    start_delay: float = 0.02               # let the 2.04 to the Bootstrap-Request leave first
    tolerate_delete_not_found: bool = True  # 4.04 on Delete: nothing there to delete
    require_dtls_for_secure_accounts: bool = True  # PSK/RPK/cert bootstrap account => CoAPS only


@dataclass
class Step:
    """One request of a bootstrap sequence and the client's answer."""

    op: str          # discover | delete | write | finish
    path: str
    code: str        # e.g. "2.04" or "timeout" / "error"
    ok: bool
    ms: float
    content_format: int | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"op": self.op, "path": self.path, "code": self.code, "ok": self.ok, "ms": round(self.ms, 2)}
        if self.content_format is not None:
            d["content_format"] = self.content_format
        if self.note:
            d["note"] = self.note
        return d


@dataclass
class BootstrapResult:
    """Outcome of one bootstrap sequence."""

    endpoint: str
    address: str
    trigger: str                          # "client" (Bootstrap-Request) or "server"
    content_format: int
    state: str = "running"                # running | finished | failed
    reason: str = ""
    steps: list[Step] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    ended: float | None = None
    discovered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state == "finished"

    def to_dict(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "address": self.address, "trigger": self.trigger,
                "content_format": self.content_format, "state": self.state, "reason": self.reason,
                "steps": [s.to_dict() for s in self.steps], "started": self.started, "ended": self.ended,
                "discovered": self.discovered}


class StepFailed(Exception):
    """A bootstrap step got an answer (or none) that ends the sequence."""


_LINK_RE = re.compile(r"<([^>]*)>((?:;[^,<]*)*)")


def parse_discover_links(text: str) -> list[tuple[str, dict[str, str]]]:
    """Minimal CoRE link-format (RFC 6690) reader for Bootstrap-Discover answers
    (Core 1.1.1 §6.1.7.3): ``[(uri, {attr: value})]``. Tolerates the historic leading
    ``lwm2m=1.0,`` without a URI that the §6.1.7.3 note allows servers to accept."""
    out: list[tuple[str, dict[str, str]]] = []
    for m in _LINK_RE.finditer(text):
        attrs: dict[str, str] = {}
        for part in m.group(2).split(";"):
            part = part.strip()
            if not part:
                continue
            k, _, v = part.partition("=")
            attrs[k.strip()] = v.strip().strip('"')
        out.append((m.group(1), attrs))
    return out


def _code_str(code: Code) -> str:
    return f"{int(code) >> 5}.{int(code) & 0x1F:02d}"


def _target_str(target: Any) -> str:
    if isinstance(target, str):
        return target
    base = getattr(target, "uri_base", None)
    return str(base) if base else str(target)


class _BsResource(aiocoap.resource.Resource):
    """``/bs``: only POST (Bootstrap-Request) is allowed; aiocoap answers other methods 4.05."""

    def __init__(self, server: "BootstrapServer") -> None:
        super().__init__()
        self._server = server

    async def render_post(self, request: Message) -> Message:
        try:
            return await self._server.handle_bootstrap_request(request)
        except Exception:  # never let a bug in a handler take the endpoint down
            log.exception("Bootstrap-Request handler failed")
            return Message(code=Code.INTERNAL_SERVER_ERROR)


Listener = Callable[[Event], None]


class BootstrapServer:
    """The Bootstrap-Server role on one aiocoap UDP context, plus the provisioning API.

    ``store`` holds configurations and history (durable when it has a state directory).
    ``dtls`` (optional) maps bridge-side source addresses to DTLS sessions (see
    :class:`DtlsSessions`); it is set by :mod:`reference.bootstrap.dtls` when a CoAPS port is open.
    """

    def __init__(self, store: DeviceStore, *, policy: BootstrapPolicy | None = None,
                 registry: Any = None) -> None:
        self.store = store
        self.policy = policy or BootstrapPolicy()
        if registry is None:
            from reference.model.registry import ObjectRegistry
            registry = ObjectRegistry.default()
        self.registry = registry
        self.dtls: DtlsSessions | None = None
        self.context: aiocoap.Context | None = None
        self.coap_address: tuple[str, int] | None = None
        self._flows: dict[str, asyncio.Task[BootstrapResult]] = {}
        self._results: dict[str, BootstrapResult] = {}
        self._listeners: list[Listener] = []
        self._new_event: asyncio.Event | None = None

    # ---- lifecycle --------------------------------------------------------------------------
    def build_site(self) -> aiocoap.resource.Site:
        """The CoAP resource tree; override to add resources. Unknown paths get 4.04."""
        site = aiocoap.resource.Site()
        site.add_resource(BS_PATH, _BsResource(self))
        return site

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Bind the CoAP UDP port (0 = any free one); returns the bound (host, port)."""
        self._new_event = asyncio.Event()
        self.context = await aiocoap.Context.create_server_context(
            self.build_site(), bind=(host, port), transports=["udp6"], loggername="lwm2m.bootstrap.coap")
        gate.install(self.context)  # RFC 7252 format errors / critical options aiocoap lets through
        mi = self.context.request_interfaces[0].token_interface.message_interface  # type: ignore[attr-defined]
        bound_port = int(mi.transport.get_extra_info("socket").getsockname()[1])
        self.coap_address = (host, bound_port)
        return self.coap_address

    async def stop(self) -> None:
        for t in list(self._flows.values()):
            t.cancel()
        for t in list(self._flows.values()):
            try:
                await asyncio.wait_for(asyncio.shield(t), 2.0)
            except BaseException:  # noqa: BLE001 - cancelled/failed flows are recorded already
                pass
        if self.context is not None:
            await self.context.shutdown()
            self.context = None

    # ---- provisioning API (the M2M portal) --------------------------------------------------
    def add_device(self, cfg: DeviceConfig, *, replace: bool = False, check: bool = True) -> None:
        """Store one configuration. With ``check`` (default) an inconsistent one raises
        :class:`ProvisioningError`; pass ``check=False`` to provision a deliberately broken one
        (e.g. to see a client refuse it at Bootstrap-Finish)."""
        if check:
            problems = validate(cfg)
            if problems:
                raise ProvisioningError([f"{cfg.endpoint}: {p}" for p in problems])
        self.store.add(cfg, replace=replace)
        self.emit(cfg.endpoint, EventKind.DEVICE_ADDED, {"replace": replace})

    def add_devices(self, cfgs: Iterable[DeviceConfig], *, replace: bool = False) -> int:
        """Store several configurations all-or-nothing (validated first)."""
        cfgs = list(cfgs)
        errors = [f"{c.endpoint}: {p}" for c in cfgs for p in validate(c)]
        if errors:
            raise ProvisioningError(errors)
        n = self.store.add_many(cfgs, replace=replace)
        for c in cfgs:
            self.emit(c.endpoint, EventKind.DEVICE_ADDED, {"replace": replace, "bulk": True})
        return n

    def import_file(self, path: str, *, replace: bool = False) -> list[DeviceConfig]:
        """Import a CSV or JSON provisioning file all-or-nothing; errors name file:line."""
        cfgs = load_file(path)
        self.add_devices(cfgs, replace=replace)
        return cfgs

    def import_text(self, text: str, *, name: str = "<upload>", fmt: str | None = None,
                    replace: bool = False) -> list[DeviceConfig]:
        cfgs = parse_text(text, name, fmt)
        self.add_devices(cfgs, replace=replace)
        return cfgs

    def remove_device(self, endpoint: str) -> None:
        """Remove a configuration; :class:`UnknownDevice` if there is none."""
        self.store.remove(endpoint)
        self.emit(endpoint, EventKind.DEVICE_REMOVED, {})

    def get_device(self, endpoint: str) -> DeviceConfig | None:
        return self.store.get(endpoint)

    def list_devices(self) -> list[DeviceConfig]:
        return self.store.list()

    def export_device(self, endpoint: str, path: str) -> DeviceConfig:
        """Write the device's configuration as a DeviceConfig JSON file (the offline
        provisioning alternative: the reference client loads it with ``--config FILE``)."""
        cfg = self.store.get(endpoint)
        if cfg is None:
            raise UnknownDevice(endpoint)
        cfg.to_file(path)
        return cfg

    # ---- events -----------------------------------------------------------------------------
    def add_listener(self, cb: Listener) -> None:
        """Call ``cb(event)`` for every new event (synchronously, exceptions are logged)."""
        self._listeners.append(cb)

    def emit(self, endpoint: str, kind: EventKind | str, detail: dict[str, Any]) -> Event:
        ev = self.store.append_event(endpoint, kind.value if isinstance(kind, EventKind) else kind, detail)
        log.info("event %d %s %s", ev.seq, ev.kind, ev.endpoint)
        for cb in list(self._listeners):
            try:
                cb(ev)
            except Exception:  # a faulty observer must not break the flow
                log.exception("event listener failed")
        if self._new_event is not None:
            self._new_event.set()
            self._new_event = asyncio.Event()
        return ev

    def events_since(self, since: int = 0, endpoint: str | None = None) -> list[Event]:
        return self.store.events_since(since, endpoint=endpoint)

    async def wait_events(self, since: int, timeout: float, endpoint: str | None = None) -> list[Event]:
        """Events after ``since``; waits up to ``timeout`` s for one if there is none yet (long poll)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            evs = self.store.events_since(since, endpoint=endpoint)
            remaining = deadline - time.monotonic()
            if evs or remaining <= 0:
                return evs
            waiter = self._new_event or asyncio.Event()
            if self._new_event is None:
                self._new_event = waiter
            try:
                await asyncio.wait_for(waiter.wait(), min(remaining, 1.0))
            except asyncio.TimeoutError:
                pass  # re-check the store: a CLI process may have appended events

    async def wait_for_event(self, kind: EventKind | str, endpoint: str | None = None, *,
                             since: int = 0, timeout: float = 5.0) -> Event:
        """The first event of ``kind`` (and ``endpoint``) after ``since``; TimeoutError otherwise."""
        k = kind.value if isinstance(kind, EventKind) else kind
        deadline = time.monotonic() + timeout
        while True:
            for ev in self.store.events_since(since, endpoint=endpoint):
                since = ev.seq
                if ev.kind == k:
                    return ev
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {k} event for {endpoint or 'any endpoint'} within {timeout}s")
            await self.wait_events(since, remaining, endpoint)

    def result(self, endpoint: str) -> BootstrapResult | None:
        """The latest (possibly running) bootstrap sequence of ``endpoint`` in this process."""
        return self._results.get(endpoint)

    # ---- Bootstrap-Request (Core 1.1.1 §6.1.7.1) ---------------------------------------------
    def parse_query(self, request: Message) -> tuple[str | None, int | None, str | None]:
        """``(ep, pct, error)`` from the Uri-Query options; ``error`` names what is malformed."""
        ep: str | None = None
        pct: int | None = None
        for q in request.opt.uri_query:
            k, sep, v = q.partition("=")
            if k == "ep":
                if ep is not None:
                    return None, None, "ep given twice"
                ep = v
            elif k == "pct":
                if pct is not None or not v.isdigit() or len(v) > 5:
                    return None, None, f"bad pct {v!r}"
                pct = int(v)
            # other parameters are not defined for Bootstrap-Request; they are ignored
        if not ep:
            return None, None, "missing ep (Endpoint Client Name)"
        return ep, pct, None

    def dtls_identity(self, request: Message) -> bytes | None:
        """The PSK identity of the DTLS session ``request`` came through, or None (plain CoAP)."""
        if self.dtls is None:
            return None
        sockaddr = getattr(request.remote, "sockaddr", None)
        if not sockaddr:
            return None
        host = str(sockaddr[0])
        if host.startswith("::ffff:"):
            host = host[7:]
        for addr in ((host, int(sockaddr[1])), tuple(sockaddr)):
            try:
                sess = self.dtls.session_for(addr)
            except Exception:  # noqa: BLE001 - an address unknown to the bridge
                sess = None
            if sess is not None:
                ident = getattr(sess, "identity", None)
                return ident.encode() if isinstance(ident, str) else ident
        return None

    def authorize(self, request: Message, cfg: DeviceConfig) -> str | None:
        """None if ``request`` may bootstrap ``cfg``, else why not. Over DTLS the PSK identity
        must be the one of the device's Bootstrap-Server account; a device whose bootstrap account
        is secured must come over DTLS when the server has a CoAPS port."""
        ident = self.dtls_identity(request)
        bs_accounts = [a for a in cfg.security if a.bootstrap]
        if ident is not None:
            if not any(a.psk_identity == ident for a in bs_accounts):
                return f"PSK identity {ident!r} does not belong to endpoint {cfg.endpoint!r}"
            return None
        if (self.dtls is not None and self.policy.require_dtls_for_secure_accounts
                and any(a.mode != SecurityMode.NOSEC for a in bs_accounts)):
            return f"endpoint {cfg.endpoint!r} has a secured bootstrap account but came over plain CoAP"
        return None

    def config_for(self, endpoint: str) -> DeviceConfig | None:
        """The configuration to provision ``endpoint`` with (override to generate one)."""
        return self.store.get(endpoint)

    async def handle_bootstrap_request(self, request: Message) -> Message:
        """Answer a Bootstrap-Request and, on 2.04, schedule the sequence towards its sender."""
        ep, pct, err = self.parse_query(request)
        address = _target_str(request.remote)
        if err is not None:
            self.emit(ep or "", EventKind.REJECTED, {"address": address, "code": "4.00", "reason": err})
            return Message(code=Code.BAD_REQUEST, payload=err.encode())
        assert ep is not None
        cfg = self.config_for(ep)
        if cfg is None:
            self.emit(ep, EventKind.REJECTED, {"address": address, "code": "4.00",
                                               "reason": "unknown endpoint client name"})
            return Message(code=Code.BAD_REQUEST, payload=b"Unknown Endpoint Client Name")
        if pct is not None and pct not in {int(f) for f in INSTANCE_FORMATS}:
            self.emit(ep, EventKind.REJECTED, {"address": address, "code": "4.15",
                                               "reason": f"preferred content format {pct} not supported"})
            return Message(code=Code.UNSUPPORTED_CONTENT_FORMAT)
        why = self.authorize(request, cfg)
        if why is not None:
            self.emit(ep, EventKind.REJECTED, {"address": address, "code": "4.03", "reason": why})
            return Message(code=Code.FORBIDDEN, payload=why.encode()[:200])
        fmt = ContentFormat(pct) if pct is not None else self.policy.default_format
        self.store.set_address(ep, address)
        self.start_flow(cfg, request.remote, fmt=fmt, trigger="client", delay=self.policy.start_delay)
        return Message(code=Code.CHANGED)

    # ---- sequences --------------------------------------------------------------------------
    def start_flow(self, cfg: DeviceConfig, target: Any, *, fmt: ContentFormat, trigger: str,
                   delay: float = 0.0) -> "asyncio.Task[BootstrapResult]":
        """Run :meth:`run_flow` as a task; a newer flow for the same endpoint supersedes an older one."""
        old = self._flows.get(cfg.endpoint)
        if old is not None and not old.done():
            old.cancel()
        result = BootstrapResult(cfg.endpoint, _target_str(target), trigger, int(fmt))
        self._results[cfg.endpoint] = result
        self.emit(cfg.endpoint, EventKind.REQUESTED,
                  {"address": result.address, "trigger": trigger, "content_format": int(fmt)})

        async def runner() -> BootstrapResult:
            if delay > 0:
                await asyncio.sleep(delay)
            return await self.run_flow(cfg, target, result)

        task = asyncio.get_running_loop().create_task(runner(), name=f"bootstrap:{cfg.endpoint}")
        self._flows[cfg.endpoint] = task
        task.add_done_callback(lambda t, ep=cfg.endpoint: self._flow_done(ep, t))
        return task

    def _flow_done(self, endpoint: str, task: "asyncio.Task[BootstrapResult]") -> None:
        if self._flows.get(endpoint) is task:
            del self._flows[endpoint]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:  # run_flow records its own failures; this is a last resort
            log.error("bootstrap task for %s died: %r", endpoint, exc)

    async def bootstrap_client(self, endpoint: str, address: str | None = None, *,
                               content_format: ContentFormat | int | None = None,
                               wait: bool = True) -> BootstrapResult:
        """Server-initiated bootstrap (Core 1.1.1 §5.2): provision ``endpoint`` at ``address``
        (``coap://host:port``; default: where its last Bootstrap-Request came from) without
        waiting for a Bootstrap-Request. Raises :class:`UnknownDevice` / ValueError up front;
        the sequence's outcome is in the returned result and the event log."""
        cfg = self.config_for(endpoint)
        if cfg is None:
            raise UnknownDevice(endpoint)
        address = address or self.store.get_address(endpoint)
        if not address:
            raise ValueError(f"no known address for {endpoint!r}; give one (coap://host:port)")
        if not address.startswith("coap://"):
            raise ValueError(f"address {address!r} must be coap://host:port")
        fmt = ContentFormat(int(content_format)) if content_format is not None else self.policy.default_format
        if fmt not in INSTANCE_FORMATS:
            raise ValueError(f"content format {int(fmt)} cannot carry object instances")
        task = self.start_flow(cfg, address.rstrip("/"), fmt=fmt, trigger="server")
        if not wait:
            return self._results[endpoint]
        return await asyncio.shield(task)

    async def run_flow(self, cfg: DeviceConfig, target: Any, result: BootstrapResult) -> BootstrapResult:
        """Discover? -> Delete(s) -> Write(s) -> Finish; records the outcome as an event."""
        fmt = ContentFormat(result.content_format)
        try:
            if self.policy.discover:
                links = await self.bootstrap_discover(target, result)
                cfg = self.adapt_to_discovery(cfg, links)
            for path in self.delete_paths_for(cfg):
                await self.bootstrap_delete(target, path, result)
            for base, values in self.instances_to_write(cfg):
                await self.bootstrap_write(target, base, values, fmt, result)
            await self.bootstrap_finish(target, result)
            result.state = "finished"
        except StepFailed as e:
            result.state, result.reason = "failed", str(e)
        except asyncio.CancelledError:
            result.state, result.reason = "failed", "cancelled (superseded by a new bootstrap or shutdown)"
            self._record_end(result)
            raise
        except Exception as e:  # encoder bugs etc.: fail the sequence, keep the server alive
            log.exception("bootstrap of %s failed", cfg.endpoint)
            result.state, result.reason = "failed", f"internal error: {type(e).__name__}: {e}"
        self._record_end(result)
        return result

    def _record_end(self, result: BootstrapResult) -> None:
        result.ended = time.time()
        kind = EventKind.FINISHED if result.ok else EventKind.FAILED
        detail = result.to_dict()
        del detail["endpoint"]
        self.emit(result.endpoint, kind, detail)

    # ---- overridable pieces of the sequence --------------------------------------------------
    def delete_paths_for(self, cfg: DeviceConfig) -> list[Path]:
        """Paths to Bootstrap-Delete: the device's own list, else the policy default."""
        return [Path.parse(p) for p in (cfg.delete_paths or self.policy.delete_paths)]

    def instances_to_write(self, cfg: DeviceConfig) -> list[tuple[Path, Values]]:
        """``[(instance path, values)]`` to Bootstrap-Write: Security instances then Server ones."""
        out: list[tuple[Path, Values]] = []
        for acc in sorted(cfg.security, key=lambda a: a.instance_id):
            if acc.bootstrap and not self.policy.write_bootstrap_account:
                continue
            out.append((Path(0, acc.instance_id), acc.to_values()))
        for srv in sorted(cfg.servers, key=lambda s: s.instance_id):
            out.append((Path(1, srv.instance_id), srv.to_values()))
        return out

    def encode_instance(self, base: Path, values: Values, fmt: ContentFormat) -> bytes:
        """Payload of a Bootstrap-Write on ``base`` (codecs of :mod:`reference.formats`)."""
        from reference import formats
        return formats.encode(fmt, values, base, self.registry)

    def adapt_to_discovery(self, cfg: DeviceConfig, links: list[tuple[str, dict[str, str]]]) -> DeviceConfig:
        """Move LwM2M Server Security instances off the instance ID that the client's own
        Bootstrap-Server Account occupies (a /0/x link without ``ssid``, §6.1.7.3): writing
        there would overwrite the account the client needs to come back to us."""
        bs_iids: set[int] = set()
        for uri, attrs in links:
            try:
                p = Path.parse(uri)
            except PathError:
                continue
            if p.depth == 2 and p.object_id == 0 and "ssid" not in attrs:
                bs_iids.add(p.instance_id)  # type: ignore[arg-type]
        clash = [a for a in cfg.security if not a.bootstrap and a.instance_id in bs_iids]
        if not clash:
            return cfg
        import copy
        cfg = copy.deepcopy(cfg)
        used = bs_iids | {a.instance_id for a in cfg.security}
        for acc in cfg.security:
            if not acc.bootstrap and acc.instance_id in bs_iids:
                new = next(i for i in range(65535) if i not in used)
                used.add(new)
                acc.instance_id = new
        return cfg

    async def send(self, target: Any, code: Code, path: Path | tuple[str, ...], *, payload: bytes = b"",
                   content_format: int | None = None, accept: int | None = None) -> Message:
        """Send one confirmable request to the client and wait (bounded) for its response."""
        if self.context is None:
            raise StepFailed("server not started")
        uri_path = path.uri_path() if isinstance(path, Path) else tuple(path)
        if isinstance(target, str):
            msg = Message(code=code, uri=target + "/", payload=payload)
        else:
            msg = Message(code=code, payload=payload)
            msg.remote = target
        msg.opt.uri_path = uri_path
        if content_format is not None:
            msg.opt.content_format = content_format
        if accept is not None:
            msg.opt.accept = accept
        req = self.context.request(msg)
        try:
            return await asyncio.wait_for(req.response, self.policy.request_timeout)
        except asyncio.TimeoutError:
            raise StepFailed(f"no response to {code.name} {'/' + '/'.join(uri_path)} "
                             f"within {self.policy.request_timeout}s") from None
        except aiocoap.error.Error as e:
            raise StepFailed(f"{code.name} {'/' + '/'.join(uri_path)}: {type(e).__name__}: {e}") from None

    async def _step(self, result: BootstrapResult, op: str, path: str, coro: Awaitable[Message],
                    ok_codes: tuple[Code, ...], content_format: int | None = None) -> Message:
        t0 = time.monotonic()
        try:
            resp = await coro
        except StepFailed as e:
            result.steps.append(Step(op, path, "timeout" if "no response" in str(e) else "error", False,
                                     (time.monotonic() - t0) * 1000, content_format, str(e)))
            raise
        ok = resp.code in ok_codes
        result.steps.append(Step(op, path, _code_str(resp.code), ok, (time.monotonic() - t0) * 1000,
                                 content_format, resp.payload[:200].decode("utf-8", "replace") if not ok else ""))
        return resp

    async def bootstrap_discover(self, target: Any, result: BootstrapResult) -> list[tuple[str, dict[str, str]]]:
        """Bootstrap-Discover ``GET /`` Accept 40 (Core 1.1.1 §6.1.7.3); 2.05 Content expected."""
        resp = await self._step(result, "discover", "/",
                                self.send(target, Code.GET, (), accept=int(ContentFormat.LINK_FORMAT)),
                                (Code.CONTENT,))
        if resp.code != Code.CONTENT:
            raise StepFailed(f"Bootstrap-Discover answered {_code_str(resp.code)}")
        text = resp.payload.decode("utf-8", "replace")
        links = parse_discover_links(text)
        result.discovered = [u for u, _ in links]
        return links

    async def bootstrap_delete(self, target: Any, path: Path, result: BootstrapResult) -> None:
        """Bootstrap-Delete (Core 1.1.1 §6.1.7.6); 2.02 Deleted expected."""
        ok = (Code.DELETED, Code.NOT_FOUND) if self.policy.tolerate_delete_not_found else (Code.DELETED,)
        resp = await self._step(result, "delete", str(path), self.send(target, Code.DELETE, path), ok)
        if resp.code not in ok:
            raise StepFailed(f"Bootstrap-Delete {path} answered {_code_str(resp.code)}")

    async def bootstrap_write(self, target: Any, base: Path, values: Values, fmt: ContentFormat,
                              result: BootstrapResult) -> None:
        """Bootstrap-Write ``PUT`` on an object instance (Core 1.1.1 §6.1.7.5); 2.04 expected."""
        payload = self.encode_instance(base, values, fmt)
        resp = await self._step(result, "write", str(base),
                                self.send(target, Code.PUT, base, payload=payload, content_format=int(fmt)),
                                (Code.CHANGED,), int(fmt))
        if resp.code != Code.CHANGED:
            raise StepFailed(f"Bootstrap-Write {base} answered {_code_str(resp.code)}")

    async def bootstrap_finish(self, target: Any, result: BootstrapResult) -> None:
        """Bootstrap-Finish ``POST /bs`` (Core 1.1.1 §6.1.7.2): 2.04 Changed = accepted;
        4.06 Not Acceptable = the client found the configuration inconsistent."""
        resp = await self._step(result, "finish", "/bs", self.send(target, Code.POST, BS_PATH), (Code.CHANGED,))
        if resp.code == Code.NOT_ACCEPTABLE:
            raise StepFailed("client reported an inconsistent configuration (4.06 Not Acceptable)")
        if resp.code != Code.CHANGED:
            raise StepFailed(f"Bootstrap-Finish answered {_code_str(resp.code)}")
