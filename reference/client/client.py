"""The reference LwM2M client (OMA-TS-LightweightM2M-Core 1.1.1) on aiocoap.

One UDP socket (aiocoap ``udp6`` transport) carries everything: the client's own requests
(Bootstrap-Request, Register, Update, De-register) and the requests of the (bootstrap) servers
(Bootstrap interface §5.2, Device Management and Service Enablement §5.4, Information Reporting
§5.5 / §6.4). The peer of an incoming request is identified by its source address: the address
the client itself sends to for each account (the server, or the DTLS bridge standing in for it).

Every protocol decision sits in an overridable method (``registration_payload``,
``registration_query``, ``update_due_in``, ``should_notify``, ``check_access``,
``notification_type``, ``bootstrap_problems``, ``default_format`` ...) so fault-injected variants
(``faulty/``) can break them one at a time.

Coverage (clauses of Core 1.1.1):

* §6.1 bootstrap order: smartcard (§6.1.3, via :class:`BootstrapSource`), persisted state /
  factory configuration (§6.1.2), Client Initiated Bootstrap (§6.1.4, POST /bs?ep=&pct=) honouring
  Client Hold Off Time (/0/x/11); fallback to bootstrap when registration fails with every server.
* §5.2.7 Bootstrap-Write/-Read/-Delete/-Discover/-Finish served against a *staging copy*; the new
  configuration replaces the live one only when Bootstrap-Finish passes the consistency check
  (else 4.06 Not Acceptable and the client stays in bootstrap), and it is persisted atomically.
* §5.3 / §6.2 Register, Update (before lifetime expiry; on lifetime/binding/object changes;
  Registration Update Trigger /1/x/8), De-register, Disable (/1/x/4, /1/x/5), re-Register after
  4.04 to an Update, one registration per Server object instance.
* §5.4 / §6.3 Read, Discover, Write (replace / partial update), Write-Attributes, Execute, Create,
  Delete with the response codes of the operation tables; §7.3 access control.
* §5.5 / §6.4 Observe / Notify / Cancel Observation (RFC 7641) with pmin/pmax/gt/lt/st (§5.1.2).
"""
from __future__ import annotations

import asyncio
import enum
import ipaddress
import logging
import math
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable
from urllib.parse import urlsplit

import aiocoap

from reference.coap import gate
from aiocoap import Code, Message
from aiocoap import interfaces as coap_interfaces
from aiocoap.numbers.types import CON, NON, RST

from reference import formats
from reference.client import access, attributes
from reference.client.access import AclRight
from reference.client.bootstrap import BootstrapSource, BootstrapSourceError, UserAgent, needs_confirmation
from reference.client.objects import (BOOTSTRAP_OBJECTS, DeviceInfo, DeviceRes, FirmwareRes, FirmwareResult,
                                      FirmwareState, Obj, PowerMeterSimulator, StatsRes, config_to_tree,
                                      populate_device_objects, power_meter_defaults)
from reference.client.state import StateError, StateStore
from reference.client.store import MAX_ID, ObjectTree, coerce
from reference.model.config import ConfigError, DeviceConfig, SecurityMode, SecurityRes, ServerRes
from reference.model.path import Path, PathError
from reference.model.types import ContentFormat, Operations, ResourceType, Value, Values

log = logging.getLogger("reference.client")

#: Link-format parameters of the Register payload (Core 1.1.1 §6.2.1 / §5.3.1 Table 5.3.1-1)
RT_LWM2M = 'rt="oma.lwm2m"'
#: RFC 7252 §4.8 EXCHANGE_LIFETIME: how long the client waits for Bootstrap-Finish (§6.1.4)
EXCHANGE_LIFETIME = 247.0
#: RFC 7967 No-Response value suppressing every response class (used to ignore a disabled server)
NO_RESPONSE_ALL = 2 | 8 | 16
#: Execute argument grammar, Core 1.1.1 §5.4.5: arg *( "," arg ), arg = DIGIT [ "=" "'" *CHAR "'" ]
_EXEC_ARGS = re.compile(r"^(?:[0-9](?:='[!#-&(-\[\]-~ ]*')?(?:,[0-9](?:='[!#-&(-\[\]-~ ]*')?)*)?$")
_BINDING = re.compile(r"^(?=.)U?T?S?N?Q?$")


class RequestError(Exception):
    """Aborts handling of a request with a CoAP error code (converted to the response)."""

    def __init__(self, code: Code, diagnostic: str = "") -> None:
        super().__init__(diagnostic or str(code))
        self.code = code
        self.diagnostic = diagnostic


class PeerKind(enum.Enum):
    BOOTSTRAP = "bootstrap"
    SERVER = "server"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Peer:
    kind: PeerKind
    ssid: int | None = None


@dataclass
class ClientOptions:
    """Knobs of one client. Times are in seconds."""

    endpoint: str | None = None
    lwm2m_version: str = "1.1"
    local_host: str = "::"
    local_port: int = 0
    state_dir: str | None = None
    object_dirs: list[str] = field(default_factory=list)
    request_timeout: float = 10.0        # bound on each CoAP exchange the client starts
    register_attempts: int = 3           # Register attempts per server before it counts as failed
    retry_delay: float = 2.0             # first back-off between attempts (doubles)
    bootstrap_timeout: float = EXCHANGE_LIFETIME  # silence after which a bootstrap session fails
    bootstrap_attempts: int = 3
    bootstrap_retry_delay: float = 5.0
    preferred_content_format: int | None = None   # pct of the Bootstrap-Request (§5.2.7.1)
    notify_con_every: int = 5            # every Nth notification is CON (RFC 7641 §4.5)
    meter_period: float | None = 1.0     # power meter simulation step; None disables
    deregister_timeout: float = 2.0
    device: DeviceInfo = field(default_factory=DeviceInfo)


@dataclass
class ServerSession:
    """Registration state towards one LwM2M Server (one Server object instance, §6.2)."""

    ssid: int
    server_iid: int
    security_iid: int
    uri: str
    remote: tuple[str, int] | None = None
    location: tuple[str, ...] | None = None
    registered: bool = False
    failed: bool = False
    disabled_until: float | None = None
    sent_lifetime: int | None = None
    sent_binding: str | None = None
    commands: asyncio.Queue = field(default_factory=asyncio.Queue)
    task: asyncio.Task | None = None
    bridge: Any = None
    registered_event: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Observation:
    """One RFC 7641 observation by one server (§6.4.1)."""

    ssid: int
    path: Path
    fmt: ContentFormat
    token: bytes
    remote_key: tuple[str, int]
    event: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False
    count: int = 0


class _Site(coap_interfaces.Resource):
    """aiocoap server site handing every request to the client."""

    def __init__(self, client: "LwM2MClient") -> None:
        super().__init__()
        self.client = client

    async def needs_blockwise_assembly(self, request: Message) -> bool:
        return True

    async def render(self, request: Message) -> Message:
        return await self.client.handle_request(request)

    async def render_to_pipe(self, pipe: Any) -> None:
        req = pipe.request
        if req.code == Code.GET and req.opt.observe == 0 and req.opt.accept != ContentFormat.LINK_FORMAT:
            await self.client.serve_observation(pipe)
        else:
            await coap_interfaces.Resource._render_to_pipe(self, pipe)


def addr_key(remote: Any) -> tuple[str, int]:
    """(ip, port) of an aiocoap remote, IPv4-mapped IPv6 addresses shown as IPv4."""
    sa = getattr(remote, "sockaddr", None)
    if sa is not None:
        host, port = sa[0], sa[1]
    else:
        hp = remote.hostinfo
        host, _, port = hp.rpartition(":")
        host = host.strip("[]")
    return norm_addr(host, int(port))


def norm_addr(host: str, port: int) -> tuple[str, int]:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return (str(ip), int(port))
    except ValueError:
        return (host, int(port))


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class LwM2MClient:
    """The reference LwM2M client. ``await start()``, then it runs by itself until ``stop()``.

    :param options: behaviour knobs (:class:`ClientOptions`)
    :param factory: Factory Bootstrap source (§6.1.2); used when nothing was persisted yet
    :param card: smartcard bootstrap source (§6.1.3); tried first when given
    :param user_agent: answers confirmation questions (card with ask_user / no autonomous connect)
    :param registry: object definitions (default: shipped objects plus ``options.object_dirs``)
    :param on_event: called as ``on_event(name, fields)`` for every client event
    """

    def __init__(self, options: ClientOptions, *, factory: BootstrapSource | None = None,
                 card: BootstrapSource | None = None, user_agent: UserAgent | None = None,
                 registry: Any = None, on_event: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.options = options
        self.factory = factory
        self.card = card
        self.user_agent = user_agent
        self.registry = registry if registry is not None else self._load_registry(options.object_dirs)
        self.on_event = on_event
        self.endpoint: str = options.endpoint or ""
        self.tree = ObjectTree(self.registry)
        self.tree.add_listener(self._on_tree_change)
        self.state = StateStore(options.state_dir) if options.state_dir else None
        self.ctx: aiocoap.Context | None = None
        self.local_address: tuple[str, int] | None = None
        self.sessions: dict[int, ServerSession] = {}       # by SSID
        self.attrs: dict[int, dict[Path, attributes.AttrSet]] = {}  # per SSID, per path (§5.1.1)
        self.observations: dict[tuple[tuple[str, int], bytes], Observation] = {}
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._event_waiters: list[tuple[str, Callable[[dict[str, Any]], bool], asyncio.Future]] = []
        self._non_notifications: dict[tuple[tuple[str, int], int], Observation] = {}
        self._obs_seq = int(time.time()) & 0xFFFF
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False
        self._meter: PowerMeterSimulator | None = None
        self._supported_formats: list[ContentFormat] = []
        # bootstrap session state (§6.1.4)
        self.staging: ObjectTree | None = None
        self._bs_remote: tuple[str, int] | None = None
        self._bs_activity = asyncio.Event()
        self._bs_finished: asyncio.Future | None = None
        self._bs_task: asyncio.Task | None = None
        self._bs_bridge: Any = None
        self._bootstrap_source = ""
        self._account_purge: asyncio.TimerHandle | None = None
        self._deferred_acl: DeviceConfig | None = None
        self.stats_collecting = False
        self._tx_bytes = 0
        self._rx_bytes = 0
        self._msg_count = 0

    # ================================================================ lifecycle
    @staticmethod
    def _load_registry(object_dirs: Iterable[str]) -> Any:
        from reference.model.registry import ObjectRegistry
        reg = ObjectRegistry.default()
        for d in object_dirs:
            reg.add_folder(d)
        return reg

    async def start(self) -> None:
        """Bind the CoAP socket, load bootstrap information (§6.1 order) and start registering."""
        self._supported_formats = self._probe_formats()
        for oid in (Obj.SECURITY, Obj.SERVER, Obj.ACCESS_CONTROL, Obj.OSCORE):
            if self.tree.objdef(oid) is not None:
                self.tree.ensure_object(oid)
        site = _Site(self)
        self.ctx = await aiocoap.Context.create_server_context(
            site, bind=(self.options.local_host, self.options.local_port), transports=["udp6"])
        self._hook_message_layer()
        gate.install(self.ctx)  # RFC 7252 format errors / critical options aiocoap lets through
        self.local_address = self._bound_address()
        cfg_loaded = await self.load_bootstrap_information()
        if not self.endpoint:
            raise ConfigError("no endpoint name: give one or load a configuration that has one")
        populate_device_objects(self.tree, self.options.device, self.endpoint)
        if self._deferred_acl is not None:
            self.default_acls_for_config(self._deferred_acl)
            self._deferred_acl = None
            self.persist()
        if self.options.meter_period:
            self._meter = PowerMeterSimulator(self.tree)
            self._spawn(self._meter_loop(), "meter")
        if cfg_loaded:
            self.start_sessions()
        else:
            self.emit("idle", reason="no-bootstrap-information")

    async def stop(self, deregister: bool = True) -> None:
        """De-register from every server (§5.3.3, bounded wait), cancel tasks, close the socket."""
        if self._stopping:
            return
        self._stopping = True
        await self.stop_sessions(deregister=deregister)
        for obs in list(self.observations.values()):
            self._cancel_observation(obs)
        if self._bs_task is not None:
            self._bs_task.cancel()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._account_purge is not None:
            self._account_purge.cancel()
        await self._close_bridge(self._bs_bridge)
        if self.ctx is not None:
            await self.ctx.shutdown()
            self.ctx = None

    def _spawn(self, coro: Any, name: str = "") -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name or None)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def _bound_address(self) -> tuple[str, int]:
        mi = self.ctx.request_interfaces[0].token_interface.message_interface  # type: ignore[union-attr]
        sock = mi.transport.get_extra_info("socket")
        host, port = sock.getsockname()[:2]
        return norm_addr(host, port)

    def _hook_message_layer(self) -> None:
        """Cancel observations on RST to a NON notification (RFC 7641 §3.6 / §4.5): aiocoap only
        matches RSTs against CON exchanges, so RSTs are looked at before it sees them."""
        mm = self.ctx.request_interfaces[0].token_interface  # type: ignore[union-attr]
        original = mm.dispatch_message

        def dispatch(message: Message) -> None:
            try:
                if message.mtype == RST:
                    obs = self._non_notifications.pop((addr_key(message.remote), message.mid), None)
                    if obs is not None:
                        self._cancel_observation(obs, reason="rst")
                else:
                    self._rx_bytes += len(message.payload or b"")
                    self._msg_count += 1
            except Exception:  # never let bookkeeping break the message layer
                log.exception("RST bookkeeping failed")
            original(message)

        mm.dispatch_message = dispatch

    def _probe_formats(self) -> list[ContentFormat]:
        """Value formats the codec layer actually supports (used for ``ct`` and negotiation)."""
        return sorted(formats.SUPPORTED)

    # ================================================================ events
    def emit(self, name: str, **fields: Any) -> None:
        """Record an event (registered, updated, deregistered, bootstrap-finished,
        bootstrap-failed, ...) and tell the callback and waiters."""
        self.events.append((name, fields))
        log.info("event %s %s", name, fields)
        if self.on_event is not None:
            try:
                self.on_event(name, fields)
            except Exception:
                log.exception("on_event callback failed")
        for entry in list(self._event_waiters):
            ename, pred, fut = entry
            if ename == name and not fut.done() and pred(fields):
                fut.set_result(fields)
                self._event_waiters.remove(entry)

    async def wait_event(self, name: str, timeout: float, predicate: Callable[[dict[str, Any]], bool] | None = None,
                         *, since: int = 0) -> dict[str, Any]:
        """Wait for event ``name`` (already recorded events from index ``since`` count)."""
        pred = predicate or (lambda f: True)
        for ename, f in self.events[since:]:
            if ename == name and pred(f):
                return f
        fut = asyncio.get_running_loop().create_future()
        entry = (name, pred, fut)
        self._event_waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if entry in self._event_waiters:
                self._event_waiters.remove(entry)

    # ================================================================ bootstrap information (§6.1)
    async def load_bootstrap_information(self) -> bool:
        """Core 1.1.1 §6.1 order: smartcard if present, else persisted state (the result of an
        earlier bootstrap), else the factory configuration. True when accounts were loaded."""
        if self.card is not None:
            try:
                cfg = await self.card.read()
            except Exception as e:  # no card / unreadable card: fall through to the next source
                self.emit("bootstrap-failed", source="card", reason=f"{type(e).__name__}: {e}")
                cfg = None
            if cfg is not None:
                if needs_confirmation(self.card) and not await self._confirm(
                        f"Use the LwM2M configuration on the smartcard for endpoint {cfg.endpoint}?", "card"):
                    self.emit("bootstrap-failed", source="card", reason="user-declined")
                else:
                    try:
                        self.apply_config(cfg, source="card")
                        return True
                    except ConfigError as e:
                        self.emit("bootstrap-failed", source="card", reason=str(e))
        if self.state is not None:
            try:
                loaded = self.state.load()
            except StateError as e:
                log.error("%s; ignoring persisted state", e)
                loaded = None
            if loaded is not None:
                endpoint, data, meta = loaded
                self.endpoint = self.options.endpoint or endpoint
                for oid in BOOTSTRAP_OBJECTS:
                    if self.tree.objdef(oid) is not None:
                        self.tree.data[oid] = data.get(int(oid), {})
                self._bootstrap_source = str(meta.get("source", "state"))
                self.emit("state-loaded", source=self._bootstrap_source)
                return True
        if self.factory is not None:
            try:
                cfg = await self.factory.read()
            except BootstrapSourceError as e:
                self.emit("bootstrap-failed", source="factory", reason=str(e))
                cfg = None
            if cfg is not None:
                if needs_confirmation(self.factory) and not await self._confirm(
                        "Use the factory LwM2M configuration?", "factory"):
                    self.emit("bootstrap-failed", source="factory", reason="user-declined")
                    return False
                self.apply_config(cfg, source="factory")
                return True
        return False

    async def _confirm(self, question: str, source: str) -> bool:
        if self.user_agent is None:
            return False
        self.emit("confirm-requested", source=source, question=question)
        ok = await self.user_agent.confirm(question, source=source)
        self.emit("confirm-answered", source=source, answer="yes" if ok else "no")
        return ok

    def apply_config(self, cfg: DeviceConfig, source: str) -> None:
        """Install a DeviceConfig as the live bootstrap information (factory / card) and persist it."""
        problems = cfg.problems()
        if problems:
            raise ConfigError(f"{source} configuration is inconsistent: {'; '.join(problems)}")
        if not self.options.endpoint:
            self.endpoint = cfg.endpoint
        config_to_tree(self.tree, cfg)
        self._deferred_acl = None
        if self.tree.objdef(Obj.ACCESS_CONTROL) is not None:
            self.tree.data[Obj.ACCESS_CONTROL] = {}
            if len(cfg.servers) > 1:
                if self.tree.data.get(Obj.DEVICE):
                    self.default_acls_for_config(cfg)
                else:  # device objects are created after the endpoint is known (start())
                    self._deferred_acl = cfg
        self._bootstrap_source = source
        self.persist(source=source)

    def default_acls_for_config(self, cfg: DeviceConfig) -> None:
        """Access Control instances for a multi-server configuration that came without any
        (factory file / card carry only /0 and /1). Owner MAX_ID marks them as bootstrap-created
        (§E.3); every server may Read/Write/Execute the device objects and Create instances; each
        server alone may use its own Server instance."""
        for oid in sorted(self.tree.data):
            if oid in (Obj.SECURITY, Obj.ACCESS_CONTROL, Obj.OSCORE):
                continue
            od = self.tree.objdef(oid)
            if od is None:
                continue
            if oid == Obj.SERVER:
                for iid, inst in self.tree.data[oid].items():
                    ssid = int(inst.get(ServerRes.SHORT_SERVER_ID, 0))
                    access.create_acl(self.tree, oid, iid, MAX_ID,
                                      {ssid: int(AclRight.READ | AclRight.WRITE | AclRight.EXECUTE)})
                continue
            for iid in self.tree.instances(oid):
                access.create_acl(self.tree, oid, iid, MAX_ID,
                                  {0: int(AclRight.READ | AclRight.WRITE | AclRight.EXECUTE)})
            if od.multiple:
                access.create_acl(self.tree, oid, MAX_ID, MAX_ID, {0: int(AclRight.CREATE)})

    def persist(self, source: str | None = None, data: dict | None = None) -> None:
        """Atomically save the bootstrap objects (live, or ``data``) to the state directory."""
        if self.state is None:
            return
        src = data if data is not None else self.tree.data
        objs = {int(o): src.get(int(o), {}) for o in BOOTSTRAP_OBJECTS if int(o) in src}
        self.state.save(self.endpoint, objs, {"source": source or self._bootstrap_source,
                                              "saved_at": int(time.time())})

    def current_config(self, tree: ObjectTree | None = None) -> DeviceConfig:
        """The /0 and /1 content of ``tree`` (default: live) as a DeviceConfig (raises ConfigError)."""
        t = tree or self.tree
        vals = {p: v for p, v in t.values(Path(), readable_only=False).items()
                if p.object_id in (Obj.SECURITY, Obj.SERVER)}
        return DeviceConfig.from_values(self.endpoint, vals)

    def security_accounts(self, tree: ObjectTree | None = None) -> dict[int, dict[int, Any]]:
        t = tree or self.tree
        return {iid: dict(inst) for iid, inst in t.data.get(Obj.SECURITY, {}).items()}

    def bootstrap_account(self, tree: ObjectTree | None = None) -> tuple[int, dict[int, Any]] | None:
        for iid, inst in sorted(self.security_accounts(tree).items()):
            if inst.get(SecurityRes.BOOTSTRAP_SERVER):
                return iid, inst
        return None

    # ================================================================ transport channels
    async def open_channel(self, uri: str, security: dict[int, Any]) -> tuple[tuple[str, int], Any]:
        """Where to send CoAP for a server URI: ``((host, port), bridge)``. ``coap://`` resolves
        the host; ``coaps://`` opens a :class:`reference.security.DtlsClientBridge` (PSK mode,
        identity /0/x/3, key /0/x/5) and returns its local plain address."""
        u = urlsplit(uri)
        if u.scheme not in ("coap", "coaps") or not u.hostname:
            raise ConnectionError(f"unsupported server URI {uri!r} (coap:// or coaps:// only)")
        port = u.port or (5684 if u.scheme == "coaps" else 5683)
        host = await self._resolve(u.hostname, port)
        if u.scheme == "coap":
            return (host, port), None
        mode = int(security.get(SecurityRes.SECURITY_MODE, SecurityMode.NOSEC))
        if mode != SecurityMode.PSK:
            raise ConnectionError(f"{uri}: only PSK mode is supported for coaps (mode {mode})")
        from reference.security import DtlsClientBridge
        identity = _as_bytes(security.get(SecurityRes.PUBLIC_KEY_OR_IDENTITY, b""))
        key = _as_bytes(security.get(SecurityRes.SECRET_KEY, b""))
        bridge = DtlsClientBridge((host, port), identity, key,
                                  handshake_timeout=max(1.0, self.options.request_timeout))
        try:
            await bridge.connect()
        except Exception as e:
            await self._close_bridge(bridge)
            raise ConnectionError(f"DTLS handshake with {uri} failed: {e}") from None
        return norm_addr(*bridge.local_address), bridge

    async def _resolve(self, host: str, port: int) -> str:
        try:
            ipaddress.ip_address(host)
            return norm_addr(host, port)[0]
        except ValueError:
            pass
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        if not infos:
            raise ConnectionError(f"cannot resolve {host}")
        return norm_addr(infos[0][4][0], port)[0]

    @staticmethod
    async def _close_bridge(bridge: Any) -> None:
        if bridge is not None:
            try:
                await asyncio.wait_for(bridge.close(), 2.0)
            except Exception:
                pass

    async def send_request(self, remote: tuple[str, int], msg: Message, timeout: float | None = None) -> Message:
        """Send ``msg`` to ``remote`` and wait (bounded) for the response."""
        assert self.ctx is not None
        msg.remote = None
        msg.unresolved_remote = f"{_fmt_host(remote[0])}:{remote[1]}"
        self._tx_bytes += len(msg.payload or b"")
        req = self.ctx.request(msg, handle_blockwise=True)
        # asyncio.timeout (not wait_for): a cancellation racing with the response must not be lost
        async with asyncio.timeout(timeout or self.options.request_timeout):
            return await req.response

    # ================================================================ peers
    def identify_peer(self, remote: Any) -> Peer:
        key = addr_key(remote)
        if self._bs_remote is not None and key == self._bs_remote:
            return Peer(PeerKind.BOOTSTRAP)
        for s in self.sessions.values():
            if s.remote == key:
                return Peer(PeerKind.SERVER, s.ssid)
        return Peer(PeerKind.UNKNOWN)

    # ================================================================ registration (§5.3, §6.2)
    def server_accounts(self) -> list[tuple[int, int, int, dict[int, Any], dict[int, Any]]]:
        """(ssid, server_iid, security_iid, server_res, security_res) for every usable account."""
        out = []
        secs = {int(r.get(SecurityRes.SHORT_SERVER_ID, -1)): (iid, r)
                for iid, r in self.security_accounts().items() if not r.get(SecurityRes.BOOTSTRAP_SERVER)}
        for iid, inst in sorted(self.tree.data.get(Obj.SERVER, {}).items()):
            ssid = inst.get(ServerRes.SHORT_SERVER_ID)
            if ssid is None or int(ssid) not in secs:
                continue
            siid, sres = secs[int(ssid)]
            out.append((int(ssid), iid, siid, inst, sres))
        return out

    def start_sessions(self) -> None:
        """One registration task per Server object instance that has a Security instance."""
        accounts = self.server_accounts()
        if not accounts:
            if self.bootstrap_account() is not None:
                self.request_bootstrap(reason="no-server-account")
            else:
                self.emit("idle", reason="no-server-account")
            return
        for ssid, siid, sec_iid, _srv, sec in accounts:
            if ssid in self.sessions:
                continue
            sess = ServerSession(ssid=ssid, server_iid=siid, security_iid=sec_iid,
                                 uri=str(sec.get(SecurityRes.URI, "")))
            self.sessions[ssid] = sess
            sess.task = self._spawn(self._run_session(sess), f"session-{ssid}")

    async def stop_sessions(self, deregister: bool = True, only: Iterable[int] | None = None) -> None:
        targets = [s for s in self.sessions.values() if only is None or s.ssid in set(only)]
        for s in targets:
            if s.task is not None:
                s.task.cancel()
        for s in targets:
            if s.task is not None:
                await asyncio.gather(s.task, return_exceptions=True)
        if deregister:
            await asyncio.gather(*(self._deregister(s) for s in targets if s.registered), return_exceptions=True)
        for s in targets:
            await self._close_bridge(s.bridge)
            self.sessions.pop(s.ssid, None)
            for obs in [o for o in self.observations.values() if o.ssid == s.ssid]:
                self._cancel_observation(obs, reason="session-ended")

    def server_resources(self, ssid: int) -> dict[int, Any]:
        s = self.sessions.get(ssid)
        if s is None:
            return {}
        return self.tree.data.get(Obj.SERVER, {}).get(s.server_iid, {})

    def lifetime_of(self, sess: ServerSession) -> int:
        return int(self.server_resources(sess.ssid).get(ServerRes.LIFETIME, 86400))

    def binding_of(self, sess: ServerSession) -> str:
        return str(self.server_resources(sess.ssid).get(ServerRes.BINDING, "U"))

    def update_due_in(self, lifetime: float) -> float:
        """Seconds after a successful Register/Update at which the next Update is sent: before the
        lifetime expires (§6.2.2) with a margin — the sooner of 90 % of the lifetime and 10 s before
        expiry, but never earlier than half the lifetime (short test lifetimes)."""
        if lifetime <= 0:
            return math.inf  # lifetime 0: no expiry (Server object 1.2 semantics); never periodic
        return max(min(lifetime * 0.9, lifetime - 10.0), lifetime * 0.5)

    def registration_query(self, sess: ServerSession) -> list[str]:
        """Register parameters (§5.3.1 Table 5.3.1-1 / §6.2.1): ep, lt, lwm2m, b (and Q)."""
        binding = self.binding_of(sess)
        q = [f"ep={self.endpoint}", f"lt={self.lifetime_of(sess)}", f"lwm2m={self.options.lwm2m_version}"]
        q.append(f"b={binding.replace('Q', '') or 'U'}")
        if "Q" in binding and self.options.lwm2m_version != "1.0":
            q.append("Q")  # 1.1 signals queue mode as its own parameter (§6.2.1)
        return q

    def registration_payload(self, sess: ServerSession | None = None) -> str:
        """Objects and object instances in CoRE Link Format (§6.2.1, §7.2.2): the root link with
        rt="oma.lwm2m" and the supported content formats (ct), ``ver`` for object versions other
        than 1.0, every instance; never the Security (0) or OSCORE (21) objects."""
        parts: list[str] = []
        if self.options.lwm2m_version != "1.0":
            cts = [int(f) for f in self._supported_formats]
            ct = str(cts[0]) if len(cts) == 1 else '"' + " ".join(str(c) for c in cts) + '"'
            parts.append(f"</>;{RT_LWM2M};ct={ct}")
        for oid in self.tree.supported_objects():
            if oid in (Obj.SECURITY, Obj.OSCORE):
                continue
            od = self.tree.objdef(oid)
            ver = f";ver={od.version}" if od is not None and od.version != "1.0" else ""
            iids = self.tree.instances(oid)
            if ver or not iids:
                parts.append(f"</{oid}>{ver}")
            parts.extend(f"</{oid}/{iid}>" for iid in iids)
        return ",".join(parts)

    async def _register(self, sess: ServerSession) -> bool:
        """Register (§5.3.1): POST /rd?ep=&lt=&lwm2m=&b= with the object list; 2.01 + Location-Path."""
        if sess.remote is None:
            sec = self.tree.data.get(Obj.SECURITY, {}).get(sess.security_iid, {})
            try:
                sess.remote, sess.bridge = await self.open_channel(sess.uri, sec)
            except (ConnectionError, OSError, ValueError) as e:
                self.emit("register-failed", ssid=sess.ssid, reason=str(e))
                return False
        msg = Message(code=Code.POST, uri_path=("rd",), uri_query=tuple(self.registration_query(sess)),
                      payload=self.registration_payload(sess).encode(), content_format=ContentFormat.LINK_FORMAT)
        try:
            resp = await self.send_request(sess.remote, msg)
        except (asyncio.TimeoutError, aiocoap.error.Error, OSError) as e:
            self.emit("register-failed", ssid=sess.ssid, reason=type(e).__name__)
            return False
        if resp.code != Code.CREATED or not resp.opt.location_path:
            self.emit("register-failed", ssid=sess.ssid, reason=str(resp.code))
            return False
        sess.location = tuple(resp.opt.location_path)
        sess.registered = True
        sess.failed = False
        sess.sent_lifetime = self.lifetime_of(sess)
        sess.sent_binding = self.binding_of(sess)
        sess.registered_event.set()
        self.emit("registered", ssid=sess.ssid, location="/" + "/".join(sess.location),
                  server=f"{_fmt_host(sess.remote[0])}:{sess.remote[1]}")
        return True

    async def _update(self, sess: ServerSession, params: set[str]) -> str:
        """Update (§5.3.2): POST to the registration location with the changed parameters and the
        object list when it changed. Returns "ok", "reregister" (4.04, §6.2.2) or "failed"."""
        q: list[str] = []
        lt, b = self.lifetime_of(sess), self.binding_of(sess)
        if "lt" in params or lt != sess.sent_lifetime:
            q.append(f"lt={lt}")
        if "b" in params or b != sess.sent_binding:
            q.append(f"b={b.replace('Q', '') or 'U'}")
            if "Q" in b and self.options.lwm2m_version != "1.0":
                q.append("Q")
        payload = self.registration_payload(sess).encode() if "objects" in params else b""
        msg = Message(code=Code.POST, uri_path=sess.location, uri_query=tuple(q), payload=payload)
        if payload:
            msg.opt.content_format = ContentFormat.LINK_FORMAT
        try:
            resp = await self.send_request(sess.remote, msg)  # type: ignore[arg-type]
        except (asyncio.TimeoutError, aiocoap.error.Error, OSError) as e:
            self.emit("update-failed", ssid=sess.ssid, reason=type(e).__name__)
            return "failed"
        if resp.code == Code.CHANGED:
            sess.sent_lifetime, sess.sent_binding = lt, b
            self.emit("updated", ssid=sess.ssid, params=",".join(q) or "-",
                      objects="yes" if payload else "no")
            return "ok"
        self.emit("update-failed", ssid=sess.ssid, reason=str(resp.code))
        if resp.code == Code.NOT_FOUND:
            return "reregister"
        return "failed"

    async def _deregister(self, sess: ServerSession) -> None:
        """De-register (§5.3.3): DELETE the registration location (bounded wait)."""
        if not sess.registered or sess.location is None or sess.remote is None:
            return
        sess.registered = False
        sess.registered_event.clear()
        try:
            resp = await self.send_request(sess.remote, Message(code=Code.DELETE, uri_path=sess.location),
                                           timeout=self.options.deregister_timeout)
            code = str(resp.code)
        except (asyncio.TimeoutError, aiocoap.error.Error, OSError) as e:
            code = type(e).__name__
        self.emit("deregistered", ssid=sess.ssid, response=code)

    async def _run_session(self, sess: ServerSession) -> None:
        """Register, keep the registration alive with Updates, react to commands (update, disable)."""
        attempts = 0
        loop = asyncio.get_running_loop()
        while True:
            if sess.disabled_until is not None:
                await asyncio.sleep(max(0.0, sess.disabled_until - loop.time()))
                sess.disabled_until = None
                self.emit("enabled", ssid=sess.ssid)
            if not await self._register(sess):
                attempts += 1
                if attempts >= self.options.register_attempts:
                    sess.failed = True
                    self.emit("registration-failed", ssid=sess.ssid, attempts=attempts)
                    self._on_session_failed()
                    await self._wait_command(sess, {"update", "register"}, math.inf)
                    attempts = 0
                    continue
                await asyncio.sleep(self.options.retry_delay * (2 ** (attempts - 1)))
                continue
            attempts = 0
            while sess.registered:
                due = self.update_due_in(self.lifetime_of(sess))
                cmd = await self._wait_command(sess, None, due)
                params: set[str] = set()
                if cmd is not None:
                    kind, arg = cmd
                    if kind == "disable":
                        await self._deregister(sess)
                        sess.disabled_until = loop.time() + float(arg)
                        self.emit("disabled", ssid=sess.ssid, seconds=arg)
                        break
                    if kind == "reregister":
                        await self._deregister(sess)
                        break
                    params = set(arg or ())
                    # coalesce queued update requests into one Update
                    while not sess.commands.empty():
                        nk, na = sess.commands.get_nowait()
                        if nk == "update":
                            params |= set(na or ())
                        else:
                            sess.commands.put_nowait((nk, na))
                            break
                result = await self._update(sess, params)
                if result == "reregister":
                    sess.registered = False
                    sess.registered_event.clear()
                elif result == "failed":
                    sess.registered = False
                    sess.registered_event.clear()

    async def _wait_command(self, sess: ServerSession, kinds: set[str] | None, timeout: float) -> tuple[str, Any] | None:
        end = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = end - asyncio.get_running_loop().time()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(None if math.isinf(remaining) else remaining):
                    cmd = await sess.commands.get()
            except TimeoutError:
                return None
            if kinds is None or cmd[0] in kinds:
                return cmd

    def request_update(self, ssid: int | None = None, params: Iterable[str] = ()) -> None:
        """Ask for an Update to one server (or all): params among "lt", "b", "objects"."""
        for s in self.sessions.values():
            if ssid is None or s.ssid == ssid:
                s.commands.put_nowait(("update", set(params)))

    def _on_session_failed(self) -> None:
        """§6.1: when registration failed with every configured server, fall back to Client
        Initiated Bootstrap (if there is a bootstrap account)."""
        if self.sessions and all(s.failed for s in self.sessions.values()):
            if self.bootstrap_account() is not None:
                self.request_bootstrap(reason="registration-failed")

    # ================================================================ client initiated bootstrap
    def request_bootstrap(self, reason: str = "") -> None:
        """Start Client Initiated Bootstrap (§6.1.4) unless one is already running."""
        if self._bs_task is not None and not self._bs_task.done():
            return
        self._bs_task = self._spawn(self._bootstrap_procedure(reason), "bootstrap")

    async def _bootstrap_procedure(self, reason: str) -> bool:
        for attempt in range(1, self.options.bootstrap_attempts + 1):
            ok = await self.client_initiated_bootstrap(reason, attempt)
            if ok:
                return True
            if attempt < self.options.bootstrap_attempts:
                await asyncio.sleep(self.options.bootstrap_retry_delay * attempt)
        self.emit("bootstrap-gave-up", attempts=self.options.bootstrap_attempts)
        return False

    async def client_initiated_bootstrap(self, reason: str = "", attempt: int = 1) -> bool:
        """One Client Initiated Bootstrap (§6.1.4): wait Client Hold Off Time (/0/x/11), send
        Bootstrap-Request POST /bs?ep=NAME[&pct=CF] (§5.2.7.1), expect 2.04, then serve bootstrap
        operations until Bootstrap-Finish succeeds or the bootstrap server goes silent for
        ``bootstrap_timeout`` seconds."""
        acc = self.bootstrap_account()
        if acc is None:
            self.emit("bootstrap-failed", reason="no-bootstrap-account")
            return False
        iid, sec = acc
        hold_off = int(sec.get(SecurityRes.CLIENT_HOLD_OFF_TIME, 0) or 0)
        self.emit("bootstrap-started", reason=reason or "-", attempt=attempt, hold_off=hold_off)
        if hold_off > 0:
            await asyncio.sleep(hold_off)
        uri = str(sec.get(SecurityRes.URI, ""))
        try:
            remote, bridge = await self.open_channel(uri, sec)
        except (ConnectionError, OSError, ValueError) as e:
            self.emit("bootstrap-failed", reason=str(e))
            return False
        await self._close_bridge(self._bs_bridge)
        self._bs_bridge = bridge
        self._bs_remote = remote
        self.begin_bootstrap_session()
        q = [f"ep={self.endpoint}"]
        if self.options.preferred_content_format is not None and self.options.lwm2m_version != "1.0":
            q.append(f"pct={int(self.options.preferred_content_format)}")
        try:
            resp = await self.send_request(remote, Message(code=Code.POST, uri_path=("bs",), uri_query=tuple(q)))
        except (asyncio.TimeoutError, aiocoap.error.Error, OSError) as e:
            self.abort_bootstrap_session(f"bootstrap-request {type(e).__name__}")
            return False
        if resp.code != Code.CHANGED:
            self.abort_bootstrap_session(f"bootstrap-request answered {resp.code}")
            return False
        fut = self._bs_finished
        while fut is not None and not fut.done():
            self._bs_activity.clear()
            try:
                async with asyncio.timeout(self.options.bootstrap_timeout):
                    await self._wait_activity_or(fut)
            except TimeoutError:
                self.abort_bootstrap_session("timeout waiting for bootstrap-finish")
                return False
        return fut is not None and fut.done() and not fut.cancelled() and bool(fut.result())

    async def _wait_activity_or(self, fut: asyncio.Future) -> None:
        act = asyncio.ensure_future(self._bs_activity.wait())
        try:
            await asyncio.wait({act, fut}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            act.cancel()

    def begin_bootstrap_session(self) -> None:
        """Enter bootstrap: bootstrap operations now go to a staging copy of the tree (§6.1)."""
        if self.staging is None:
            self.staging = self.tree.staging_copy()
            self._bs_finished = asyncio.get_running_loop().create_future()
            self.emit("bootstrap-session", state="open")

    def abort_bootstrap_session(self, reason: str) -> None:
        """Discard the staging copy; the live configuration stays as it was."""
        self.staging = None
        if self._bs_finished is not None and not self._bs_finished.done():
            self._bs_finished.set_result(False)
        self._bs_finished = None
        self.emit("bootstrap-failed", reason=reason)

    def bootstrap_problems(self, staging: ObjectTree) -> list[str]:
        """Consistency check of Bootstrap-Finish (§5.2.7.? / §6.1.7): every LwM2M Server account
        needs a matching Security instance and vice versa (DeviceConfig.problems), and the
        accounts must be parseable. Empty when the configuration is usable."""
        try:
            cfg = self.current_config(staging)
        except (ConfigError, ValueError, TypeError) as e:
            return [str(e)]
        probs = cfg.problems()
        if not cfg.servers and not any(a.bootstrap for a in cfg.security):
            probs.append("no LwM2M Server account and no Bootstrap-Server account")
        return probs

    def commit_bootstrap(self) -> None:
        """Make the staging copy the live configuration: persist first (atomic), then swap."""
        assert self.staging is not None
        staged = self.staging
        now = int(time.time())
        for inst in staged.data.get(Obj.SERVER, {}).values():
            if staged.resdef(Obj.SERVER, 12) is not None:
                inst[12] = now  # Last Bootstrapped (/1/x/12)
        self.persist(source="bootstrap-server", data=staged.data)
        for oid in set(self.tree.data) | set(staged.data):
            self.tree.data[oid] = staged.data.get(oid, {})
        self.staging = None
        self._bootstrap_source = "bootstrap-server"
        self.tree.notify(Path())

    async def _after_bootstrap_finish(self) -> None:
        """Re-register with the new configuration (§6.1.4 Step 3) and arm the Bootstrap-Server
        Account Timeout (/0/x/12)."""
        await self.stop_sessions(deregister=True)
        valid = {s for s, *_ in self.server_accounts()}
        for ssid in list(self.attrs):
            if ssid not in valid:
                del self.attrs[ssid]
        acc = self.bootstrap_account()
        if acc is not None:
            timeout = int(acc[1].get(SecurityRes.BOOTSTRAP_SERVER_ACCOUNT_TIMEOUT, 0) or 0)
            if timeout > 0:
                if self._account_purge is not None:
                    self._account_purge.cancel()
                self._account_purge = asyncio.get_running_loop().call_later(timeout, self._purge_bootstrap_account, acc[0])
        self.start_sessions()

    def _purge_bootstrap_account(self, iid: int) -> None:
        if self.tree.delete_instance(Obj.SECURITY, iid):
            self.persist()
            self.emit("bootstrap-account-purged", instance=iid)

    # ================================================================ request dispatch
    async def handle_request(self, request: Message) -> Message:
        """Entry point for every non-observe request (aiocoap already reassembled Block1)."""
        try:
            resp = await self._dispatch(request)
        except RequestError as e:
            resp = Message(code=e.code, payload=e.diagnostic.encode()[:200])
        except Exception as e:  # a bug must not kill the endpoint: answer 5.00
            log.exception("internal error handling %s", request)
            resp = Message(code=Code.INTERNAL_SERVER_ERROR, payload=str(e).encode()[:100])
        self._tx_bytes += len(resp.payload or b"")
        return resp

    async def _dispatch(self, request: Message) -> Message:
        peer = self.identify_peer(request.remote)
        path_segs = tuple(request.opt.uri_path)
        if peer.kind == PeerKind.BOOTSTRAP:
            self._bs_activity.set()
            if request.code == Code.POST and path_segs == ("bs",):
                return await self.op_bootstrap_finish(request)
            return await self.handle_bootstrap_request(request, self._parse_path(path_segs))
        if peer.kind == PeerKind.UNKNOWN:
            raise RequestError(Code.UNAUTHORIZED, "unknown peer")
        assert peer.ssid is not None
        sess = self.sessions.get(peer.ssid)
        if sess is not None and sess.disabled_until is not None:
            # §E.2 Disable: "ignore all the messages from the LwM2M Server for the period"
            m = Message(code=Code.SERVICE_UNAVAILABLE)
            m.opt.no_response = NO_RESPONSE_ALL
            return m
        return await self.handle_dm_request(request, peer.ssid, self._parse_path(path_segs))

    @staticmethod
    def _parse_path(segs: tuple[str, ...]) -> Path:
        try:
            return Path.parse(segs)
        except PathError as e:
            raise RequestError(Code.NOT_FOUND, str(e)) from None

    # ================================================================ DM interface (§5.4, §6.3)
    async def handle_dm_request(self, request: Message, ssid: int, path: Path) -> Message:
        code = request.code
        if code == Code.GET:
            if request.opt.accept == ContentFormat.LINK_FORMAT:
                return self.op_discover(request, ssid, path)
            return self.op_read(request, ssid, path)
        if code == Code.PUT:
            if not request.payload and request.opt.content_format is None and request.opt.uri_query:
                return self.op_write_attributes(request, ssid, path)
            return self.op_write(request, ssid, path, replace=True)
        if code == Code.POST:
            if path.depth == 1:
                return self.op_create(request, ssid, path)
            if path.depth == 3 and self._is_executable(path):
                return await self.op_execute(request, ssid, path)
            if path.depth in (2, 3):
                return self.op_write(request, ssid, path, replace=False)
            raise RequestError(Code.METHOD_NOT_ALLOWED, "POST target")
        if code == Code.DELETE:
            return self.op_delete(request, ssid, path)
        raise RequestError(Code.METHOD_NOT_ALLOWED, f"{code} not supported")

    def _is_executable(self, path: Path) -> bool:
        rd = self.tree.resdef(path.object_id, path.resource_id)  # type: ignore[arg-type]
        return rd is not None and rd.executable

    # ---- access control (§7.3) ----------------------------------------------------------------
    def acl_active(self) -> bool:
        """Access Control applies when more than one LwM2M Server account exists (§7.3)."""
        return len(self.tree.data.get(Obj.SERVER, {})) > 1

    def check_access(self, ssid: int, right: AclRight, oid: int, iid: int | None) -> bool:
        """May server ``ssid`` perform an operation needing ``right`` on /oid[/iid]? Security
        (0) is never accessible to DM servers; with several accounts the ACL object decides."""
        if oid == Obj.SECURITY or oid == Obj.OSCORE:
            return False
        if not self.acl_active():
            return True
        if oid == Obj.ACCESS_CONTROL:
            if right == AclRight.READ:
                return True
            if iid is None or right in (AclRight.CREATE, AclRight.DELETE):
                return False
            return self.tree.data.get(oid, {}).get(iid, {}).get(access.AclRes.OWNER) == ssid
        if right == AclRight.CREATE:
            return bool(access.rights(self.tree, ssid, oid, MAX_ID) & AclRight.CREATE)
        if iid is None:
            # object-level Read/Discover/Write-Attributes: allowed if any instance is readable
            insts = self.tree.instances(oid)
            return not insts or any(access.rights(self.tree, ssid, oid, i) & right for i in insts)
        return bool(access.rights(self.tree, ssid, oid, iid) & right)

    def _require(self, ssid: int, right: AclRight, path: Path) -> None:
        if path.depth >= 1 and not self.check_access(ssid, right, path.object_id, path.instance_id):  # type: ignore[arg-type]
            raise RequestError(Code.UNAUTHORIZED, "access denied")

    def _require_exists(self, path: Path) -> None:
        if not self.tree.exists(path):
            raise RequestError(Code.NOT_FOUND, f"{path} not found")

    # ---- Read ----------------------------------------------------------------------------------
    def default_format(self, path: Path, values: Values) -> ContentFormat:
        """Format when the request has no Accept (§7.4): plain text / opaque for one single-instance
        resource, else TLV (1.0) or SenML CBOR (1.1)."""
        if path.depth == 3:
            rd = self.tree.resdef(path.object_id, path.resource_id)  # type: ignore[arg-type]
            if rd is not None and not rd.multiple:
                return ContentFormat.OPAQUE if rd.type == ResourceType.OPAQUE else ContentFormat.TEXT
        if path.depth == 4:
            rd = self.tree.resdef(path.object_id, path.resource_id)  # type: ignore[arg-type]
            return ContentFormat.OPAQUE if rd is not None and rd.type == ResourceType.OPAQUE else ContentFormat.TEXT
        if self.options.lwm2m_version == "1.0" or ContentFormat.SENML_CBOR not in self._supported_formats:
            return ContentFormat.LWM2M_TLV
        return ContentFormat.SENML_CBOR

    def read_values(self, path: Path, tree: ObjectTree | None = None) -> Values:
        """Readable values under ``path``; 4.04 when it does not exist, 4.05 for an executable or
        write-only resource (§5.4.1)."""
        t = tree or self.tree
        if path.depth == 0:
            raise RequestError(Code.METHOD_NOT_ALLOWED, "Read on /")
        if not t.exists(path):
            raise RequestError(Code.NOT_FOUND, f"{path} not found")
        if path.depth >= 3:
            rd = t.resdef(path.object_id, path.resource_id)  # type: ignore[arg-type]
            if rd is None or rd.executable or not (rd.operations & Operations.R):
                raise RequestError(Code.METHOD_NOT_ALLOWED, "resource not readable")
        return t.values(path)

    def encode_values(self, request: Message, path: Path, values: Values) -> tuple[bytes, ContentFormat]:
        accept = request.opt.accept
        if accept is None:
            fmt = self.default_format(path, values)
        else:
            try:
                fmt = ContentFormat(int(accept))
            except ValueError:
                raise RequestError(Code.NOT_ACCEPTABLE, f"Accept {int(accept)} unsupported") from None
            if fmt not in self._supported_formats:
                raise RequestError(Code.NOT_ACCEPTABLE, f"Accept {int(accept)} unsupported")
        try:
            return formats.encode(fmt, values, path, self.registry), fmt
        except formats.FormatError as e:
            if accept is None:
                raise RequestError(Code.INTERNAL_SERVER_ERROR, str(e)) from None
            raise RequestError(Code.NOT_ACCEPTABLE, str(e)) from None

    def op_read(self, request: Message, ssid: int, path: Path) -> Message:
        """Read (§5.4.1): 2.05 with the value(s) in the negotiated format."""
        self._require(ssid, AclRight.READ, path)
        values = self.read_values(path)
        payload, fmt = self.encode_values(request, path, values)
        return Message(code=Code.CONTENT, payload=payload, content_format=int(fmt))

    # ---- Discover ------------------------------------------------------------------------------
    def op_discover(self, request: Message, ssid: int, path: Path) -> Message:
        """Discover (§5.4.2): link-format list of the target's instances/resources with the
        attributes this server attached (``ver`` on objects, ``dim`` on multiple resources)."""
        if path.depth == 0:
            raise RequestError(Code.METHOD_NOT_ALLOWED, "Discover needs an object")
        self._require(ssid, AclRight.READ, path)
        self._require_exists(path)
        depth_q = _query_param(request, "depth")
        max_depth = 3 if path.depth < 3 else 4
        if depth_q is not None:
            try:
                d = int(depth_q)
            except ValueError:
                raise RequestError(Code.BAD_REQUEST, "depth") from None
            if not 0 <= d <= 3:
                raise RequestError(Code.BAD_REQUEST, "depth")
            max_depth = min(4, path.depth + d)
        levels = self.attrs.get(ssid, {})
        links: list[str] = []
        oid = path.object_id
        od = self.tree.objdef(oid)

        def link(p: Path, extra: str = "") -> str:
            return f"<{p}>{extra}{attributes.format_attrs(levels.get(p, {}))}"

        if path.depth == 1:
            ver = f";ver={od.version}" if od is not None and od.version != "1.0" else ""
            links.append(link(path, ver))
        iids = [path.instance_id] if path.depth >= 2 else self.tree.instances(oid)  # type: ignore[arg-type, list-item]
        for iid in iids:
            ip = Path(oid, iid)
            if path.depth <= 2 and max_depth >= 2:
                links.append(link(ip))
            if max_depth < 3:
                continue
            inst = self.tree.data[oid][iid]  # type: ignore[index]
            rids = [path.resource_id] if path.depth >= 3 else self.tree.resource_ids(oid, iid)  # type: ignore[arg-type]
            for rid in rids:
                rd = od.resource(rid) if od else None  # type: ignore[arg-type]
                if rd is None:
                    continue
                rp = Path(oid, iid, rid)  # type: ignore[arg-type]
                val = inst.get(rid)  # type: ignore[arg-type]
                dim = f";dim={len(val)}" if rd.multiple and isinstance(val, dict) else ""
                if path.depth <= 3:
                    links.append(link(rp, dim))
                if rd.multiple and isinstance(val, dict) and (path.depth >= 3 and max_depth >= 4):
                    for riid in sorted(val):
                        links.append(link(rp.child(riid)))
        return Message(code=Code.CONTENT, payload=",".join(links).encode(),
                       content_format=ContentFormat.LINK_FORMAT)

    # ---- Write ---------------------------------------------------------------------------------
    def decode_payload(self, request: Message, base: Path) -> Values:
        """Decode a write payload: 4.00 without Content-Format, 4.15 for an unsupported one, 4.00
        for a malformed payload or a value that does not fit its resource."""
        cf = request.opt.content_format
        if cf is None:
            raise RequestError(Code.BAD_REQUEST, "Content-Format missing")
        try:
            fmt = ContentFormat(int(cf))
        except ValueError:
            raise RequestError(Code.UNSUPPORTED_CONTENT_FORMAT, f"Content-Format {int(cf)}") from None
        if fmt not in self._supported_formats:
            raise RequestError(Code.UNSUPPORTED_CONTENT_FORMAT, f"Content-Format {int(cf)}")
        try:
            return formats.decode(fmt, bytes(request.payload), base, self.registry)
        except formats.UnsupportedFormat as e:
            raise RequestError(Code.UNSUPPORTED_CONTENT_FORMAT, str(e)) from None
        except formats.FormatError as e:
            raise RequestError(Code.BAD_REQUEST, str(e)) from None

    def _group(self, values: Values, base: Path, tree: ObjectTree) -> dict[tuple[int, int], dict[int, Any]]:
        """``{(oid, iid): {rid: value | {riid: value}}}`` with values coerced to resource types."""
        out: dict[tuple[int, int], dict[int, Any]] = {}
        for p, v in values.items():
            if not base.contains(p) or p.depth < 3:
                raise RequestError(Code.BAD_REQUEST, f"{p} outside {base}")
            rd = tree.resdef(p.object_id, p.resource_id)  # type: ignore[arg-type]
            if rd is None:
                raise RequestError(Code.NOT_FOUND, f"{p}: unknown resource")
            try:
                cv = coerce(rd, v)
            except (ValueError, TypeError) as e:
                raise RequestError(Code.BAD_REQUEST, f"{p}: {e}") from None
            inst = out.setdefault((p.object_id, p.instance_id), {})  # type: ignore[arg-type]
            if p.depth == 4:
                inst.setdefault(p.resource_id, {})[p.resource_instance_id] = cv  # type: ignore[index, union-attr]
            else:
                inst[p.resource_id] = cv  # type: ignore[index]
        return out

    def op_write(self, request: Message, ssid: int, path: Path, replace: bool) -> Message:
        """Write (§5.4.3): PUT replaces (on an instance: optional writable resources not in the
        payload are removed, a missing mandatory writable one is 4.00), POST partially updates.
        Non-writable targets are 4.05."""
        if path.depth < 2:
            raise RequestError(Code.METHOD_NOT_ALLOWED, "Write needs an instance or resource")
        self._require(ssid, AclRight.WRITE, path)
        self._require_exists(path.parent if path.depth == 4 else Path.of(*path.parts[:2]))
        if path.depth >= 3:
            rd = self.tree.resdef(path.object_id, path.resource_id)  # type: ignore[arg-type]
            if rd is None:
                raise RequestError(Code.NOT_FOUND, f"{path}: unknown resource")
            if not (rd.operations & Operations.W):
                raise RequestError(Code.METHOD_NOT_ALLOWED, f"{path} is not writable")
        values = self.decode_payload(request, path)
        if not values and path.depth >= 3 and not replace:
            raise RequestError(Code.BAD_REQUEST, "empty payload")
        grouped = self._group(values, path, self.tree)
        for (oid, iid), res in grouped.items():
            if iid not in self.tree.data.get(oid, {}):
                raise RequestError(Code.NOT_FOUND, f"/{oid}/{iid} not found")
            for rid in res:
                rd = self.tree.resdef(oid, rid)
                if rd is None or not (rd.operations & Operations.W):
                    raise RequestError(Code.METHOD_NOT_ALLOWED, f"/{oid}/{iid}/{rid} is not writable")
        oid, iid = path.object_id, path.instance_id
        res = grouped.get((oid, iid), {})  # type: ignore[arg-type]
        od = self.tree.objdef(oid)
        if path.depth == 2 and replace:
            for rd in od.resources.values():  # type: ignore[union-attr]
                if rd.operations & Operations.W and not rd.executable and rd.id not in res and rd.mandatory:
                    raise RequestError(Code.BAD_REQUEST, f"mandatory resource {rd.id} missing in replace")
        self.validate_write(oid, iid, res)  # type: ignore[arg-type]
        for rid, v in res.items():
            rd = od.resource(rid)  # type: ignore[union-attr]
            rp = Path(oid, iid, rid)  # type: ignore[arg-type]
            if path.depth == 4:
                self.tree.set(path, v[path.resource_instance_id])
            elif rd.multiple and not replace:  # type: ignore[union-attr]
                cur = self.tree.get(rp) or {}
                merged = dict(cur) if isinstance(cur, dict) else {}
                merged.update(v)
                self.tree.set(rp, merged)
            else:
                self.tree.set(rp, v)
        if path.depth == 2 and replace:
            for rd in od.resources.values():  # type: ignore[union-attr]
                if rd.operations & Operations.W and not rd.executable and rd.id not in res and not rd.mandatory:
                    self.tree.remove_resource(oid, iid, rd.id)  # type: ignore[arg-type]
        self.after_write(ssid, oid, iid, set(res))  # type: ignore[arg-type]
        return Message(code=Code.CHANGED)

    def validate_write(self, oid: int, iid: int, res: dict[int, Any]) -> None:
        """Object-specific value checks (4.00): lifetime >= 0, a valid binding, periods >= 0."""
        if oid == Obj.SERVER:
            if ServerRes.LIFETIME in res and int(res[ServerRes.LIFETIME]) < 0:
                raise RequestError(Code.BAD_REQUEST, "negative lifetime")
            if ServerRes.BINDING in res and not _BINDING.match(str(res[ServerRes.BINDING])):
                raise RequestError(Code.BAD_REQUEST, "invalid binding")
            for rid in (ServerRes.DEFAULT_PMIN, ServerRes.DEFAULT_PMAX, ServerRes.DISABLE_TIMEOUT):
                if rid in res and int(res[rid]) < 0:
                    raise RequestError(Code.BAD_REQUEST, f"negative /1/x/{int(rid)}")
        if oid == Obj.DEVICE and DeviceRes.CURRENT_TIME in res and int(res[DeviceRes.CURRENT_TIME]) < 0:
            raise RequestError(Code.BAD_REQUEST, "negative time")

    def after_write(self, ssid: int, oid: int, iid: int, rids: set[int]) -> None:
        """Side effects of a DM write: lifetime/binding changes trigger an Update carrying the new
        lt / b (§6.2.2); Current Time sets the clock offset; Firmware Package/URI drive /5."""
        if oid == Obj.SERVER:
            srv_ssid = self.tree.data[oid][iid].get(ServerRes.SHORT_SERVER_ID)
            params = set()
            if ServerRes.LIFETIME in rids:
                params.add("lt")
            if ServerRes.BINDING in rids:
                params.add("b")
            if params and srv_ssid is not None:
                self.request_update(int(srv_ssid), params)
        elif oid == Obj.DEVICE and DeviceRes.CURRENT_TIME in rids:
            written = self.tree.data[oid][iid].pop(DeviceRes.CURRENT_TIME)
            self.options.device.time_offset = float(written) - time.time()
            self.tree.notify(Path(oid, iid, DeviceRes.CURRENT_TIME))
        elif oid == Obj.FIRMWARE:
            self._firmware_written(iid, rids)

    def _firmware_written(self, iid: int, rids: set[int]) -> None:
        """Firmware Update object (push delivery only): a non-empty Package means Downloaded; an
        empty Package or URI resets to Idle; a non-empty URI fails with Unsupported Protocol."""
        base = Path(Obj.FIRMWARE, iid)
        if FirmwareRes.PACKAGE in rids:
            pkg = self.tree.data[Obj.FIRMWARE][iid].pop(FirmwareRes.PACKAGE, b"")
            if pkg:
                self._fw_package = bytes(pkg)  # type: ignore[arg-type]
                self.tree.set(base.child(FirmwareRes.UPDATE_RESULT), int(FirmwareResult.INITIAL))
                self.tree.set(base.child(FirmwareRes.STATE), int(FirmwareState.DOWNLOADED))
            else:
                self._fw_package = b""
                self.tree.set(base.child(FirmwareRes.STATE), int(FirmwareState.IDLE))
                self.tree.set(base.child(FirmwareRes.UPDATE_RESULT), int(FirmwareResult.INITIAL))
        if FirmwareRes.PACKAGE_URI in rids:
            uri = str(self.tree.get(base.child(FirmwareRes.PACKAGE_URI), ""))
            self.tree.set(base.child(FirmwareRes.STATE), int(FirmwareState.IDLE))
            self.tree.set(base.child(FirmwareRes.UPDATE_RESULT),
                          int(FirmwareResult.UNSUPPORTED_PROTOCOL if uri else FirmwareResult.INITIAL))

    # ---- Write-Attributes ----------------------------------------------------------------------
    def op_write_attributes(self, request: Message, ssid: int, path: Path) -> Message:
        """Write-Attributes (§5.4.4): attach pmin/pmax/gt/lt/st/epmin/epmax for this server;
        invalid values or combinations are 4.00."""
        if path.depth == 0:
            raise RequestError(Code.METHOD_NOT_ALLOWED, "Write-Attributes on /")
        self._require(ssid, AclRight.READ, path)
        self._require_exists(path)
        try:
            changes = attributes.parse_query(list(request.opt.uri_query))
            rd = self.tree.resdef(path.object_id, path.resource_id) if path.depth >= 3 else None  # type: ignore[arg-type]
            levels = self.attrs.setdefault(ssid, {})
            new = attributes.apply(levels.get(path, {}), changes, path, rd)
        except attributes.AttributeError400 as e:
            raise RequestError(Code.BAD_REQUEST, str(e)) from None
        if new:
            levels[path] = new
        else:
            levels.pop(path, None)
        for obs in self.observations.values():
            if obs.ssid == ssid:
                obs.event.set()
        return Message(code=Code.CHANGED)

    # ---- Execute -------------------------------------------------------------------------------
    async def op_execute(self, request: Message, ssid: int, path: Path) -> Message:
        """Execute (§5.4.5): only on E resources (else 4.05); arguments must follow the grammar."""
        self._require(ssid, AclRight.EXECUTE, path)
        if not self.tree.exists(Path.of(*path.parts[:2])):
            raise RequestError(Code.NOT_FOUND, f"{path} not found")
        try:
            args = bytes(request.payload).decode("ascii")
        except UnicodeDecodeError:
            raise RequestError(Code.BAD_REQUEST, "arguments are not text") from None
        if not _EXEC_ARGS.match(args):
            raise RequestError(Code.BAD_REQUEST, "malformed execute arguments")
        await self.execute(ssid, path, args)
        return Message(code=Code.CHANGED)

    async def execute(self, ssid: int, path: Path, args: str) -> None:
        """Perform an executable resource. Effects that would disturb the response (bootstrap,
        disable, reboot) are scheduled to run after it (§E.2: "MUST send response ... and then")."""
        oid, iid, rid = path.object_id, path.instance_id, path.resource_id
        loop = asyncio.get_running_loop()
        if oid == Obj.SERVER:
            srv = self.tree.data[Obj.SERVER][iid]  # type: ignore[index]
            target_ssid = int(srv.get(ServerRes.SHORT_SERVER_ID, -1))
            if rid == ServerRes.DISABLE:
                timeout = int(srv.get(ServerRes.DISABLE_TIMEOUT, 86400))
                loop.call_soon(self._queue_cmd, target_ssid, ("disable", timeout))
            elif rid == ServerRes.REGISTRATION_UPDATE_TRIGGER:
                loop.call_soon(self.request_update, target_ssid, ())
            elif rid == ServerRes.BOOTSTRAP_REQUEST_TRIGGER:
                loop.call_soon(self.request_bootstrap, "bootstrap-request-trigger")
            return
        if oid == Obj.DEVICE:
            if rid == DeviceRes.REBOOT:
                loop.call_later(0.05, lambda: self._spawn(self.reboot(), "reboot"))
            elif rid == DeviceRes.FACTORY_RESET:
                loop.call_later(0.05, lambda: self._spawn(self.factory_reset(), "factory-reset"))
            elif rid == DeviceRes.RESET_ERROR_CODE:
                self.tree.set(Path(Obj.DEVICE, iid, DeviceRes.ERROR_CODE), {0: 0})  # type: ignore[arg-type]
            return
        if oid == Obj.FIRMWARE and rid == FirmwareRes.UPDATE:
            state = self.tree.get(Path(oid, iid, FirmwareRes.STATE))  # type: ignore[arg-type]
            if state != FirmwareState.DOWNLOADED:
                raise RequestError(Code.METHOD_NOT_ALLOWED, "no downloaded firmware package")
            self.tree.set(Path(oid, iid, FirmwareRes.STATE), int(FirmwareState.UPDATING))  # type: ignore[arg-type]
            loop.call_later(0.2, self._firmware_updated, iid)
            return
        if oid == Obj.CONN_STATS:
            if rid == StatsRes.START:
                self.stats_collecting = True
                self._tx_bytes = self._rx_bytes = self._msg_count = 0
                for r in (StatsRes.TX_DATA, StatsRes.RX_DATA, StatsRes.MAX_MSG, StatsRes.AVG_MSG):
                    self.tree.set(Path(oid, iid, r), 0)  # type: ignore[arg-type]
            elif rid == StatsRes.STOP:
                self._refresh_stats()
                self.stats_collecting = False
            return
        self.emit("executed", path=str(path), args=args or "-")

    def _firmware_updated(self, iid: int) -> None:
        if iid not in self.tree.data.get(Obj.FIRMWARE, {}):
            return
        base = Path(Obj.FIRMWARE, iid)
        pkg = getattr(self, "_fw_package", b"")
        version = pkg[:32].decode("ascii", "replace").strip() if pkg[:8].isascii() and pkg else "updated"
        self.options.device.firmware_version = version
        if 0 in self.tree.data.get(Obj.DEVICE, {}):
            self.tree.set(Path(Obj.DEVICE, 0, DeviceRes.FIRMWARE_VERSION), version)
        self.tree.set(base.child(FirmwareRes.STATE), int(FirmwareState.IDLE))
        self.tree.set(base.child(FirmwareRes.UPDATE_RESULT), int(FirmwareResult.SUCCESS))
        self.emit("firmware-updated", version=version)

    def _refresh_stats(self) -> None:
        if not self.stats_collecting or 0 not in self.tree.data.get(Obj.CONN_STATS, {}):
            return
        base = Path(Obj.CONN_STATS, 0)
        self.tree.set(base.child(StatsRes.TX_DATA), self._tx_bytes // 1024)
        self.tree.set(base.child(StatsRes.RX_DATA), self._rx_bytes // 1024)
        if self._msg_count:
            self.tree.set(base.child(StatsRes.AVG_MSG), (self._tx_bytes + self._rx_bytes) // max(1, self._msg_count))

    def _queue_cmd(self, ssid: int, cmd: tuple[str, Any]) -> None:
        s = self.sessions.get(ssid)
        if s is not None:
            s.commands.put_nowait(cmd)

    async def reboot(self) -> None:
        """Device Reboot (/3/0/4): de-register, reload persisted bootstrap information, register."""
        self.emit("reboot")
        await self.stop_sessions(deregister=True)
        if self.state is not None and self.state.exists():
            loaded = self.state.load()
            if loaded is not None:
                for oid in BOOTSTRAP_OBJECTS:
                    if self.tree.objdef(oid) is not None:
                        self.tree.data[oid] = loaded[1].get(int(oid), {})
        self.start_sessions()

    async def factory_reset(self) -> None:
        """Factory Reset (/3/0/5): forget bootstrapped state, reload the factory configuration."""
        self.emit("factory-reset")
        await self.stop_sessions(deregister=True)
        if self.state is not None:
            self.state.clear()
        for oid in BOOTSTRAP_OBJECTS:
            if oid in self.tree.data:
                self.tree.data[oid] = {}
        self.attrs.clear()
        if await self.load_bootstrap_information():
            self.start_sessions()

    # ---- Create --------------------------------------------------------------------------------
    def op_create(self, request: Message, ssid: int, path: Path) -> Message:
        """Create (§5.4.6): POST on an object with the new instance's resources, with or without
        the instance ID in the payload; 2.01 with Location-Path /oid/iid. An existing instance ID
        (or a single-instance object that already has its instance) is 4.00."""
        oid = path.object_id
        od = self.tree.objdef(oid)
        if od is None or oid not in self.tree.data:
            raise RequestError(Code.NOT_FOUND, f"object {oid} not supported")
        if oid in (Obj.SECURITY, Obj.OSCORE):
            raise RequestError(Code.UNAUTHORIZED, "access denied")
        if not self.check_access(ssid, AclRight.CREATE, oid, None):  # type: ignore[arg-type]
            raise RequestError(Code.UNAUTHORIZED, "create not allowed")
        new_iid = self.tree.free_instance_id(oid)  # type: ignore[arg-type]
        try:
            values = self.decode_payload(request, path)
        except RequestError as first:
            if first.code != Code.BAD_REQUEST:
                raise
            values = self.decode_payload(request, Path(oid, new_iid))  # payload without instance ID
        iids = {p.instance_id for p in values}
        if len(iids) > 1:
            raise RequestError(Code.BAD_REQUEST, "Create of more than one instance")
        iid = iids.pop() if iids else new_iid
        if iid is None or iid == MAX_ID:
            raise RequestError(Code.BAD_REQUEST, "invalid instance id")
        if iid in self.tree.data[oid] or (not od.multiple and self.tree.data[oid]):
            raise RequestError(Code.BAD_REQUEST, f"/{oid}/{iid} already exists")
        grouped = self._group(values, Path(oid), self.tree).get((oid, iid), {})  # type: ignore[arg-type]
        for rid in grouped:
            rd = od.resource(rid)
            if rd is None or not (rd.operations & Operations.W):
                if oid != Obj.ACCESS_CONTROL:
                    raise RequestError(Code.BAD_REQUEST, f"resource {rid} is not writable")
        for rd in od.resources.values():
            if rd.mandatory and rd.operations & Operations.W and not rd.executable and rd.id not in grouped:
                raise RequestError(Code.BAD_REQUEST, f"mandatory resource {rd.id} missing")
        self.validate_write(oid, iid, grouped)  # type: ignore[arg-type]
        initial = self.initial_instance_values(oid, iid)  # type: ignore[arg-type]
        initial.update(grouped)
        self.tree.create_instance(oid, iid, initial)  # type: ignore[arg-type]
        if self.acl_active() and oid != Obj.ACCESS_CONTROL:
            access.create_acl(self.tree, oid, iid, ssid)  # type: ignore[arg-type]
        self.request_update(None, {"objects"})
        return Message(code=Code.CREATED, location_path=(str(oid), str(iid)))

    def initial_instance_values(self, oid: int, iid: int) -> dict[int, Any]:
        """Client-set values of read-only resources of a new instance."""
        if oid == Obj.POWER_METER:
            vals = power_meter_defaults(f"{self.endpoint}-{iid}")
            return {k: v for k, v in vals.items() if self.tree.resdef(oid, k) is not None}
        return {}

    # ---- Delete --------------------------------------------------------------------------------
    def op_delete(self, request: Message, ssid: int, path: Path) -> Message:
        """Delete (§5.4.7): object instances only (else 4.05); not the Device instance or other
        mandatory single-instance objects, nor Server/Access Control instances (client- or
        bootstrap-managed) — 4.05."""
        if path.depth != 2:
            raise RequestError(Code.METHOD_NOT_ALLOWED, "Delete targets an object instance")
        self._require(ssid, AclRight.DELETE, path)
        self._require_exists(path)
        oid, iid = path.object_id, path.instance_id
        od = self.tree.objdef(oid)
        if od is None or (od.mandatory and not od.multiple) or oid in (Obj.SERVER, Obj.ACCESS_CONTROL):
            raise RequestError(Code.METHOD_NOT_ALLOWED, f"/{oid}/{iid} cannot be deleted")
        self.tree.delete_instance(oid, iid)  # type: ignore[arg-type]
        access.delete_acl_for(self.tree, oid, iid)  # type: ignore[arg-type]
        for s_attrs in self.attrs.values():
            for p in [p for p in s_attrs if path.contains(p)]:
                del s_attrs[p]
        self.request_update(None, {"objects"})
        return Message(code=Code.DELETED)

    # ================================================================ Bootstrap interface (§5.2.7)
    async def handle_bootstrap_request(self, request: Message, path: Path) -> Message:
        self.begin_bootstrap_session()
        code = request.code
        if code == Code.PUT:
            return self.op_bootstrap_write(request, path)
        if code == Code.DELETE:
            return self.op_bootstrap_delete(request, path)
        if code == Code.GET:
            if request.opt.accept == ContentFormat.LINK_FORMAT:
                return self.op_bootstrap_discover(request, path)
            return self.op_bootstrap_read(request, path)
        raise RequestError(Code.METHOD_NOT_ALLOWED, f"{code} not a bootstrap operation")

    def op_bootstrap_write(self, request: Message, path: Path) -> Message:
        """Bootstrap-Write (§5.2.7.3): PUT on /O, /O/I or /O/I/R into the staging copy; instances
        are created when missing, resources given overwrite (others are kept). Operations flags
        do not apply (the Security object has none)."""
        st = self.staging
        assert st is not None
        if path.depth == 0:
            raise RequestError(Code.METHOD_NOT_ALLOWED, "Bootstrap-Write on /")
        od = st.objdef(path.object_id)
        if od is None:
            raise RequestError(Code.NOT_FOUND, f"object {path.object_id} not supported")
        if path.depth >= 3 and od.resource(path.resource_id) is None:  # type: ignore[arg-type]
            raise RequestError(Code.NOT_FOUND, f"{path}: unknown resource")
        values = self.decode_payload(request, path)
        grouped = self._group(values, path, st)
        if not grouped:
            raise RequestError(Code.BAD_REQUEST, "empty Bootstrap-Write")
        for (oid, iid), res in grouped.items():
            for rid in res:
                rd = od.resource(rid)
                if rd is None or rd.executable:
                    raise RequestError(Code.BAD_REQUEST, f"/{oid}/{iid}/{rid} cannot be written")
            if iid not in st.data.setdefault(oid, {}):
                if not od.multiple and st.data[oid]:
                    raise RequestError(Code.BAD_REQUEST, f"object {oid} is single-instance")
                st.create_instance(oid, iid, {}, notify=False)
            inst = st.data[oid][iid]
            for rid, v in res.items():
                if path.depth == 4:
                    cur = inst.get(rid)
                    cur = dict(cur) if isinstance(cur, dict) else {}
                    cur.update(v)
                    inst[rid] = cur
                else:
                    inst[rid] = v
        self.emit("bootstrap-write", path=str(path))
        return Message(code=Code.CHANGED)

    def bootstrap_delete_preserves(self, oid: int, iid: int, staging: ObjectTree) -> bool:
        """Instances a Bootstrap-Delete leaves alone (§5.2.7.4): the Bootstrap-Server's Security
        instance (and an OSCORE instance it links to) and the Device object instance."""
        if oid == Obj.DEVICE:
            return True
        if oid == Obj.SECURITY:
            return bool(staging.data.get(oid, {}).get(iid, {}).get(SecurityRes.BOOTSTRAP_SERVER))
        if oid == Obj.OSCORE:
            for inst in staging.data.get(Obj.SECURITY, {}).values():
                link = inst.get(17)
                if inst.get(SecurityRes.BOOTSTRAP_SERVER) and getattr(link, "instance_id", None) == iid \
                        and getattr(link, "object_id", None) == Obj.OSCORE:
                    return True
        return False

    def op_bootstrap_delete(self, request: Message, path: Path) -> Message:
        """Bootstrap-Delete (§5.2.7.4) on /, /O or /O/I in the staging copy; preserved instances
        are skipped. Deeper targets are 4.00."""
        st = self.staging
        assert st is not None
        if path.depth > 2:
            raise RequestError(Code.BAD_REQUEST, "Bootstrap-Delete targets /, an object or an instance")
        if path.depth >= 1 and st.objdef(path.object_id) is None:
            raise RequestError(Code.NOT_FOUND, f"object {path.object_id} not supported")
        if path.depth == 2:
            if path.instance_id not in st.data.get(path.object_id, {}):  # type: ignore[arg-type]
                raise RequestError(Code.NOT_FOUND, f"{path} not found")
            if self.bootstrap_delete_preserves(path.object_id, path.instance_id, st):  # type: ignore[arg-type]
                raise RequestError(Code.BAD_REQUEST, f"{path} cannot be deleted")
        oids = [path.object_id] if path.depth >= 1 else list(st.data)
        for oid in oids:
            iids = [path.instance_id] if path.depth == 2 else list(st.data.get(oid, {}))  # type: ignore[list-item]
            for iid in iids:
                if not self.bootstrap_delete_preserves(oid, iid, st):  # type: ignore[arg-type]
                    st.delete_instance(oid, iid, notify=False)  # type: ignore[arg-type]
        self.emit("bootstrap-delete", path=str(path))
        return Message(code=Code.DELETED)

    def op_bootstrap_discover(self, request: Message, path: Path) -> Message:
        """Bootstrap-Discover (§5.2.7.2) on / or /O: ``</>;lwm2m=1.1`` then objects (``ver`` when
        not 1.0; bare when they have no instance) and instances; Security and Server instances
        carry ``ssid``, Security instances of LwM2M Servers also ``uri`` (quoted)."""
        st = self.staging or self.tree
        if path.depth > 1:
            raise RequestError(Code.BAD_REQUEST, "Bootstrap-Discover targets / or an object")
        if path.depth == 1 and (st.objdef(path.object_id) is None or path.object_id not in st.data):
            raise RequestError(Code.NOT_FOUND, f"object {path.object_id} not supported")
        links = [f"</>;lwm2m={self.options.lwm2m_version}"]
        oids = [path.object_id] if path.depth == 1 else st.supported_objects()
        for oid in oids:
            od = st.objdef(oid)
            iids = st.instances(oid)  # type: ignore[arg-type]
            ver = f";ver={od.version}" if od is not None and od.version != "1.0" else ""
            if ver or not iids:
                links.append(f"</{oid}>{ver}")
            for iid in iids:
                inst = st.data[oid][iid]  # type: ignore[index]
                extra = ""
                if oid == Obj.SECURITY:
                    if not inst.get(SecurityRes.BOOTSTRAP_SERVER):
                        if SecurityRes.SHORT_SERVER_ID in inst:
                            extra += f";ssid={int(inst[SecurityRes.SHORT_SERVER_ID])}"
                        uri = str(inst.get(SecurityRes.URI, "")).replace("\\", "\\\\").replace('"', '\\"')
                        extra += f';uri="{uri}"'
                elif oid == Obj.SERVER and ServerRes.SHORT_SERVER_ID in inst:
                    extra += f";ssid={int(inst[ServerRes.SHORT_SERVER_ID])}"
                elif oid == Obj.OSCORE:
                    for sinst in st.data.get(Obj.SECURITY, {}).values():
                        link = sinst.get(17)
                        if getattr(link, "object_id", None) == Obj.OSCORE and getattr(link, "instance_id", None) == iid \
                                and SecurityRes.SHORT_SERVER_ID in sinst:
                            extra += f";ssid={int(sinst[SecurityRes.SHORT_SERVER_ID])}"
                            break
                links.append(f"</{oid}/{iid}>{extra}")
        return Message(code=Code.CONTENT, payload=",".join(links).encode(),
                       content_format=ContentFormat.LINK_FORMAT)

    def bootstrap_read_allowed(self, path: Path) -> bool:
        """Bootstrap-Read (1.1, §5.2.7.? "restricted form of Read"): only the Server and Access
        Control objects are acceptable targets."""
        return path.depth >= 1 and path.object_id in (Obj.SERVER, Obj.ACCESS_CONTROL)

    def op_bootstrap_read(self, request: Message, path: Path) -> Message:
        if self.options.lwm2m_version == "1.0":
            raise RequestError(Code.METHOD_NOT_ALLOWED, "Bootstrap-Read is LwM2M 1.1")
        if not self.bootstrap_read_allowed(path):
            raise RequestError(Code.METHOD_NOT_ALLOWED, "Bootstrap-Read allowed on /1 and /2 only")
        st = self.staging or self.tree
        values = self.read_values(path, st)
        payload, fmt = self.encode_values(request, path, values)
        return Message(code=Code.CONTENT, payload=payload, content_format=int(fmt))

    async def op_bootstrap_finish(self, request: Message) -> Message:
        """Bootstrap-Finish (§5.2.7.5 / §6.1.4 step 2): 2.04 and commit when the staged
        configuration is consistent, else 4.06 Not Acceptable and stay in bootstrap."""
        self.begin_bootstrap_session()
        assert self.staging is not None
        problems = self.bootstrap_problems(self.staging)
        if problems:
            self.emit("bootstrap-finish-rejected", problems="; ".join(problems))
            return Message(code=Code.NOT_ACCEPTABLE, payload="; ".join(problems).encode()[:200])
        self.commit_bootstrap()
        if self._bs_finished is not None and not self._bs_finished.done():
            self._bs_finished.set_result(True)
        self._bs_finished = None
        self.emit("bootstrap-finished", servers=len(self.server_accounts()))
        asyncio.get_running_loop().call_soon(lambda: self._spawn(self._after_bootstrap_finish(), "after-bootstrap"))
        return Message(code=Code.CHANGED)

    # ================================================================ Observe / Notify (§6.4)
    def _on_tree_change(self, path: Path) -> None:
        for obs in self.observations.values():
            if obs.path.contains(path) or path.contains(obs.path):
                obs.event.set()

    def effective_attributes(self, obs: Observation) -> attributes.Effective:
        srv = self.server_resources(obs.ssid)
        dpmin = srv.get(ServerRes.DEFAULT_PMIN)
        dpmax = srv.get(ServerRes.DEFAULT_PMAX)
        return attributes.effective(self.attrs.get(obs.ssid, {}), obs.path,
                                    None if dpmin is None else float(dpmin),
                                    None if dpmax is None else float(dpmax))

    def should_notify(self, obs: Observation, last: Values, current: Values, eff: attributes.Effective) -> bool:
        """Whether a change from ``last`` (last notified) to ``current`` warrants a notification."""
        return attributes.should_notify_values(last, current, eff)

    def notification_type(self, obs: Observation) -> Any:
        """CON for every Nth notification (so a vanished observer is eventually detected, RFC 7641
        §4.5), NON otherwise."""
        n = max(1, self.options.notify_con_every)
        return CON if obs.count % n == 0 else NON

    def _next_seq(self) -> int:
        self._obs_seq = (self._obs_seq + 1) & 0xFFFFFF
        return self._obs_seq

    def _cancel_observation(self, obs: Observation, reason: str = "") -> None:
        if not obs.cancelled:
            obs.cancelled = True
            obs.event.set()
            if reason:
                self.emit("observe-cancelled", ssid=obs.ssid, path=str(obs.path), reason=reason)

    async def serve_observation(self, pipe: Any) -> None:
        """Observe (§5.5.1 / RFC 7641): answer like a Read with an Observe option, then notify
        according to the effective attributes until cancelled (RST, GET Observe=1, session end)."""
        req = pipe.request
        peer = self.identify_peer(req.remote)
        try:
            if peer.kind != PeerKind.SERVER:
                first = await self.handle_request(req)
                pipe.add_response(first, is_last=True)
                return
            ssid = peer.ssid
            assert ssid is not None
            sess = self.sessions.get(ssid)
            if sess is not None and sess.disabled_until is not None:
                pipe.add_response(await self.handle_request(req), is_last=True)
                return
            path = self._parse_path(tuple(req.opt.uri_path))
            self._require(ssid, AclRight.READ, path)
            values = self.read_values(path)
            payload, fmt = self.encode_values(req, path, values)
        except RequestError as e:
            pipe.add_response(Message(code=e.code, payload=e.diagnostic.encode()[:200]), is_last=True)
            return
        key = (addr_key(req.remote), bytes(req.token))
        old = self.observations.get(key)
        if old is not None:
            self._cancel_observation(old)
        obs = Observation(ssid=ssid, path=path, fmt=fmt, token=bytes(req.token), remote_key=key[0])
        self.observations[key] = obs
        loop = asyncio.get_running_loop()
        first = Message(code=Code.CONTENT, payload=payload, content_format=int(fmt), observe=self._next_seq())
        pipe.add_response(first, is_last=False)
        self.emit("observe-started", ssid=ssid, path=str(path))
        last_values, last_sent, pending = values, loop.time(), False
        try:
            while not obs.cancelled:
                eff = self.effective_attributes(obs)
                now = loop.time()
                pmin_at = last_sent + eff.pmin
                pmax_at = last_sent + eff.pmax if eff.pmax else math.inf
                if (pending and now >= pmin_at) or now >= pmax_at:
                    try:
                        cur = self.read_values(path)
                        body, _ = self.encode_values(req, path, cur)
                    except RequestError as e:  # the target vanished: final error notification
                        pipe.add_response(Message(code=e.code, observe=self._next_seq()), is_last=True)
                        return
                    obs.count += 1
                    note = Message(code=Code.CONTENT, payload=body, content_format=int(fmt),
                                   observe=self._next_seq())
                    note.mtype = self.notification_type(obs)
                    pipe.add_response(note, is_last=False)
                    if note.mtype == NON and note.mid is not None:
                        self._non_notifications[(obs.remote_key, note.mid)] = obs
                        if len(self._non_notifications) > 4096:
                            self._non_notifications.pop(next(iter(self._non_notifications)))
                    self._tx_bytes += len(body)
                    self.emit("notified", ssid=ssid, path=str(path), n=obs.count)
                    last_values, last_sent, pending = cur, loop.time(), False
                    continue
                wake = min(pmax_at, pmin_at if pending else math.inf,
                           now + eff.epmax if eff.epmax else math.inf)
                obs.event.clear()
                try:
                    async with asyncio.timeout(None if math.isinf(wake) else max(0.0, wake - now)):
                        await obs.event.wait()
                except TimeoutError:
                    pass
                if obs.cancelled:
                    break
                if not pending:
                    try:
                        cur = self.read_values(path)
                    except RequestError:
                        pending = True  # deliver the error at the next opportunity
                        continue
                    if self.should_notify(obs, last_values, cur, eff):
                        pending = True
            # cancelled locally (RST to NON, session end): end the pipe without sending anything
            silent = Message(code=Code.SERVICE_UNAVAILABLE)
            silent.opt.no_response = NO_RESPONSE_ALL
            pipe.add_response(silent, is_last=True)
        finally:
            if self.observations.get(key) is obs:
                del self.observations[key]
            for k in [k for k, o in self._non_notifications.items() if o is obs]:
                del self._non_notifications[k]
            if not obs.cancelled:
                obs.cancelled = True
                self.emit("observe-cancelled", ssid=ssid, path=str(path), reason="peer")

    # ================================================================ local control
    def set_local_value(self, path_text: str, value_text: str) -> None:
        """Change a resource value from the device side (``set /3/0/9 55`` on the control
        channel). Observers are notified. Raises ValueError for a bad path or value."""
        path = Path.parse(path_text)
        if path.depth not in (3, 4):
            raise ValueError("set needs a resource or resource-instance path")
        rd = self.tree.resdef(path.object_id, path.resource_id)  # type: ignore[arg-type]
        if rd is None or rd.executable:
            raise ValueError(f"{path}: no such value resource")
        if path.instance_id not in self.tree.data.get(path.object_id, {}):  # type: ignore[arg-type]
            raise ValueError(f"{path}: no such instance")
        if rd.type == ResourceType.OPAQUE and value_text.startswith("hex:"):
            v: Value = bytes.fromhex(value_text[4:])
        else:
            v = coerce(rd, value_text)
        if rd.multiple and path.depth == 3:
            self.tree.set(path, {0: v})
        else:
            self.tree.set(path, v)
        if path.object_id == Obj.DEVICE and path.resource_id == DeviceRes.CURRENT_TIME:
            self.after_write(0, Obj.DEVICE, path.instance_id, {DeviceRes.CURRENT_TIME})  # type: ignore[arg-type]

    async def _meter_loop(self) -> None:
        assert self._meter is not None and self.options.meter_period
        while True:
            await asyncio.sleep(self.options.meter_period)
            self._meter.step()
            self._refresh_stats()


def _query_param(request: Message, name: str) -> str | None:
    for q in request.opt.uri_query:
        k, _, v = q.partition("=")
        if k == name:
            return v
    return None


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    return str(v).encode()
