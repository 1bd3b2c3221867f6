"""Implementation profiles: how the suite starts, stops and drives an implementation under test.

The format is documented in docs/profiles.md. :func:`load_profile` returns a validated
:class:`Profile` or raises :class:`~conformance.tomlsource.DataFileError` whose message is
``<file>:<line>: <what is wrong>``; the plugin calls it at configure time so that a malformed
profile stops the run before any test.
"""
from __future__ import annotations

import re
import shlex
import signal as _signal
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from conformance.tomlsource import DataFileError, TomlSource

ROOT = Path(__file__).resolve().parent.parent
PROFILE_DIR = ROOT / "fixtures" / "profiles"
BUNDLED = {
    "client": PROFILE_DIR / "reference-client.toml",
    "server": PROFILE_DIR / "reference-server.toml",
    "bootstrap-server": PROFILE_DIR / "reference-bootstrap-server.toml",
}

ROLES = ("client", "server", "bootstrap-server")
CLIENT_MODES = ("factory", "bootstrap", "smartcard")
SERVER_MODES = ("default",)

# Placeholders every start/stop/action template may use. Values are filled in by the harness
# (conformance/harness/dut.py documents where each comes from).
RUN_PLACEHOLDERS = frozenset({
    "endpoint", "server_uri", "server_host", "server_port", "bootstrap_uri", "bootstrap_host",
    "bootstrap_port", "psk_identity", "psk_key_hex", "lifetime", "local_port", "state_dir", "card",
    "binding", "config_file", "host", "profile_dir", "python",
})
SERVER_PLACEHOLDERS = frozenset({"coap_port", "coaps_port", "http_port", "http_host"})

# Actions: name -> placeholders the action adds to the run placeholders.
CLIENT_ACTIONS: dict[str, frozenset[str]] = {
    "set_value": frozenset({"path", "value"}),
    "confirm": frozenset({"answer"}),
    "update": frozenset(),
    "confirmation_prompt": frozenset(),  # watch-only: a stdout regex announcing a confirmation prompt
}
SERVER_ACTIONS: dict[str, frozenset[str]] = {
    "registrations": frozenset(),
    "registration": frozenset({"endpoint"}),
    "read": frozenset({"path", "format"}),
    "write": frozenset({"path", "value", "format"}),
    "execute": frozenset({"path", "args"}),
    "discover": frozenset({"path"}),
    "write_attributes": frozenset({"path", "attributes"}),
    "create": frozenset({"path", "value", "format"}),
    "delete": frozenset({"path"}),
    "observe": frozenset({"path", "format"}),
    "cancel_observe": frozenset({"path"}),
    "notifications": frozenset({"path"}),
    "charging_records": frozenset(),  # the per-endpoint traffic records of {endpoint} (HLF-SG4)
}
BOOTSTRAP_ACTIONS: dict[str, frozenset[str]] = {
    "configure": frozenset({"config"}),   # add/replace the device configuration of {endpoint}
    "export": frozenset(),                # serialized configuration for offline provisioning
    "remove": frozenset(),                # delete the configuration of {endpoint}
    "trigger": frozenset({"address"}),    # server-initiated bootstrap towards {address}
}
WATCH_ACTIONS = frozenset({"confirmation_prompt"})

CONTENT_FORMATS = {
    "text": 0, "link-format": 40, "opaque": 42, "cbor": 60, "senml-json": 110, "senml-cbor": 112,
    "tlv": 11542, "lwm2m-json": 11543,
}
ICS_SECURITY = ("nosec", "psk", "rpk", "x509", "est")
ICS_BOOTSTRAP = ("factory", "client-initiated", "server-initiated", "smartcard")
ICS_VERSIONS = ("1.0", "1.1", "1.2")
_BINDING = re.compile(r"^[UTSNQ]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# -- templates ---------------------------------------------------------------------------------

def placeholders(template: str) -> set[str]:
    """Names used by a ``{name}`` template; ValueError on format specs, indexing or bad braces."""
    names = set()
    for _, field_name, spec, conv in string.Formatter().parse(template):
        if field_name is None:
            continue
        if not field_name.isidentifier() or spec or conv:
            raise ValueError(f"placeholder {{{field_name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}} "
                             "must be a plain {name}")
        names.add(field_name)
    return names


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill a template; KeyError names a placeholder that has no value."""
    out = []
    for literal, field_name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if field_name is not None:
            if field_name not in values or values[field_name] is None:
                raise KeyError(field_name)
            out.append(str(values[field_name]))
    return "".join(out)


def render_structure(obj: Any, values: Mapping[str, Any], raw: Mapping[str, Any] | None = None) -> Any:
    """Render every string leaf of a TOML structure (an HTTP body, headers).

    A leaf that is exactly ``"{name}"`` becomes ``raw[name]`` when given (keeping its JSON type:
    numbers, objects, lists), else the string value; other leaves are string templates."""
    raw = raw or {}
    if isinstance(obj, str):
        m = re.fullmatch(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", obj)
        if m:
            name = m.group(1)
            if name in raw:
                return raw[name]
            if name not in values or values[name] is None:
                raise KeyError(name)
            return values[name]
        return render(obj, values)
    if isinstance(obj, list):
        return [render_structure(x, values, raw) for x in obj]
    if isinstance(obj, dict):
        return {k: render_structure(v, values, raw) for k, v in obj.items()}
    return obj


def _structure_placeholders(obj: Any) -> set[str]:
    if isinstance(obj, str):
        return placeholders(obj)
    if isinstance(obj, list):
        return set().union(*(_structure_placeholders(x) for x in obj)) if obj else set()
    if isinstance(obj, dict):
        return set().union(*(_structure_placeholders(v) for v in obj.values())) if obj else set()
    return set()


# -- model -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Command:
    """A process to run: argv tokens (each a template), extra env (templates), optional cwd."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass(frozen=True)
class Ready:
    """Readiness: a stdout regex (named groups report values such as ports) and/or a port poll."""

    stdout: re.Pattern[str] | None
    poll_port: str | None
    poll_protocol: str
    timeout: float


@dataclass(frozen=True)
class Stop:
    signal: int = int(_signal.SIGTERM)
    timeout: float = 5.0
    command: Command | None = None
    stdin: str | None = None


@dataclass(frozen=True)
class Http:
    method: str
    url: str
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    result: str = "json"
    ok_status: tuple[int, ...] = (200, 201, 202, 204)


@dataclass(frozen=True)
class Action:
    """How to perform one DM action / local control. ``kind`` is stdin|command|http|stdout."""

    name: str
    kind: str
    stdin: str | None = None
    command: Command | None = None
    http: Http | None = None
    expect: re.Pattern[str] | None = None
    stdout: re.Pattern[str] | None = None
    timeout: float = 10.0
    result: str = "text"


@dataclass(frozen=True)
class Ics:
    """Implementation Conformance Statement: what the implementation claims to support."""

    lwm2m_versions: tuple[str, ...] = ()
    content_formats: tuple[int, ...] = ()
    bindings: tuple[str, ...] = ()
    security_modes: tuple[str, ...] = ()
    bootstrap_modes: tuple[str, ...] = ()
    smartcard: bool = False
    sms: bool = False
    queue_mode: bool = False
    objects: tuple[int, ...] = ()
    charging_records: bool = False  # server: keeps per-endpoint traffic records (HLF-SG4)

    def supports(self, feature: str) -> bool:
        """True if the ICS claims ``feature`` (grammar: see :func:`parse_feature`)."""
        key, value = parse_feature(feature)
        if value is None:
            return bool(getattr(self, key))
        if key == "content_formats":
            return CONTENT_FORMATS.get(value, int(value) if value.isdigit() else -1) in self.content_formats
        if key == "objects":
            return int(value) in self.objects
        if key == "bindings":
            return any(set(value) <= set(b) for b in self.bindings)
        return value in getattr(self, key)

    def summary(self) -> str:
        fmts = {v: k for k, v in CONTENT_FORMATS.items()}
        flags = [k for k in _FLAG_KEYS if getattr(self, k)]
        return (f"versions={','.join(self.lwm2m_versions) or '-'} "
                f"formats={','.join(fmts.get(f, str(f)) for f in self.content_formats) or '-'} "
                f"bindings={','.join(self.bindings) or '-'} security={','.join(self.security_modes) or '-'} "
                f"bootstrap={','.join(self.bootstrap_modes) or '-'} objects={','.join(map(str, self.objects)) or '-'}"
                + (f" +{'+'.join(flags)}" if flags else ""))

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


_FEATURE_KEYS = {
    "lwm2m_version": "lwm2m_versions", "version": "lwm2m_versions",
    "content_format": "content_formats", "format": "content_formats",
    "binding": "bindings", "security_mode": "security_modes", "security": "security_modes",
    "bootstrap_mode": "bootstrap_modes", "bootstrap": "bootstrap_modes", "object": "objects",
}
_FLAG_KEYS = ("smartcard", "sms", "queue_mode", "charging_records")


def parse_feature(feature: str) -> tuple[str, str | None]:
    """``"smartcard"`` -> (smartcard, None); ``"security_mode:psk"`` -> (security_modes, "psk").

    Feature grammar: a flag (smartcard | sms | queue_mode | charging_records) or KEY:VALUE with KEY one of
    lwm2m_version, content_format (name from CONTENT_FORMATS or number), binding (letters),
    security_mode, bootstrap_mode, object (object ID). ValueError for anything else.
    """
    if ":" not in feature:
        if feature in _FLAG_KEYS:
            return feature, None
        raise ValueError(f"unknown ICS feature {feature!r} (flags: {', '.join(_FLAG_KEYS)}; "
                         f"or KEY:VALUE with KEY in {', '.join(sorted(set(_FEATURE_KEYS)))})")
    key, _, value = feature.partition(":")
    if key not in _FEATURE_KEYS or not value:
        raise ValueError(f"unknown ICS feature {feature!r} (KEY must be one of {', '.join(sorted(set(_FEATURE_KEYS)))})")
    attr = _FEATURE_KEYS[key]
    checks = {
        "lwm2m_versions": lambda v: v in ICS_VERSIONS,
        "content_formats": lambda v: v in CONTENT_FORMATS or v.isdigit(),
        "bindings": lambda v: bool(_BINDING.match(v)),
        "security_modes": lambda v: v in ICS_SECURITY,
        "bootstrap_modes": lambda v: v in ICS_BOOTSTRAP,
        "objects": lambda v: v.isdigit(),
    }
    if not checks[attr](value):
        raise ValueError(f"ICS feature {feature!r}: invalid value {value!r}")
    return attr, value


@dataclass(frozen=True)
class Profile:
    """A validated implementation profile (docs/profiles.md)."""

    path: Path
    name: str
    version: str
    role: str
    description: str
    adapter: str | None
    cwd: Path
    env: Mapping[str, str]
    start: Mapping[str, Command]
    ready: Ready
    stop: Stop
    actions: Mapping[str, Action]
    ics: Ics
    text: str = ""

    @property
    def id(self) -> str:
        """Label used in test IDs and the interoperability matrix."""
        return f"{self.name}-{self.version}"

    @property
    def modes(self) -> tuple[str, ...]:
        return tuple(self.start)

    def placeholders_for(self) -> frozenset[str]:
        return RUN_PLACEHOLDERS | (SERVER_PLACEHOLDERS if self.role != "client" else frozenset())


# -- loading -----------------------------------------------------------------------------------

_TOP = {"format", "implementation", "start", "ready", "stop", "control", "actions", "ics"}
_IMPL = {"name": str, "version": str, "role": str, "description": str, "adapter": str, "cwd": str, "env": dict}
_ICS = {"lwm2m_versions": list, "content_formats": list, "bindings": list, "security_modes": list,
        "bootstrap_modes": list, "smartcard": bool, "sms": bool, "queue_mode": bool, "objects": list,
        "charging_records": bool}


class _Ctx:
    def __init__(self, src: TomlSource) -> None:
        self.src = src

    def err(self, table: str, key: str | None, msg: str) -> DataFileError:
        line = self.src.key_line(table, key) if key else self.src.table_line(table)
        if not line and table:
            line = self.src.table_line(table.split(".")[0])
        where = f"[{table}]" + (f" {key}" if key else "") if table else (key or "")
        return DataFileError(self.src.path, line, f"{where}: {msg}")

    def typed(self, table: str, data: Mapping[str, Any], spec: Mapping[str, type], required: set[str]) -> None:
        for key, value in data.items():
            if key not in spec:
                raise self.err(table, key, f"unknown key {key!r} (allowed: {', '.join(spec)})")
            typ = spec[key]
            ok = isinstance(value, typ) and not (typ in (int, float) and isinstance(value, bool))
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                ok = True
            if not ok:
                raise self.err(table, key, f"must be {typ.__name__}, got {type(value).__name__} {value!r}")
        for key in sorted(required):
            if key not in data:
                raise self.err(table, None, f"missing required key {key!r}")


def _regex(ctx: _Ctx, table: str, key: str, value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as exc:
        raise ctx.err(table, key, f"invalid regular expression: {exc}") from None


def _check_template(ctx: _Ctx, table: str, key: str, template: Any, allowed: frozenset[str]) -> None:
    try:
        used = _structure_placeholders(template)
    except ValueError as exc:
        raise ctx.err(table, key, str(exc)) from None
    unknown = sorted(used - allowed)
    if unknown:
        raise ctx.err(table, key, f"unknown placeholder {{{unknown[0]}}} (known: "
                      f"{', '.join('{' + p + '}' for p in sorted(allowed))})")


def _command(ctx: _Ctx, table: str, data: Mapping[str, Any], allowed: frozenset[str]) -> Command:
    cmd = data.get("command")
    if isinstance(cmd, str):
        try:
            argv = tuple(shlex.split(cmd))
        except ValueError as exc:
            raise ctx.err(table, "command", f"cannot split command line: {exc}") from None
    elif isinstance(cmd, list) and cmd and all(isinstance(x, str) for x in cmd):
        argv = tuple(cmd)
    else:
        raise ctx.err(table, "command", "must be a non-empty list of strings (argv) or a command-line string")
    if not argv:
        raise ctx.err(table, "command", "empty command")
    _check_template(ctx, table, "command", list(argv), allowed)
    env = data.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ctx.err(table, "env", "must be a table of strings")
    _check_template(ctx, table, "env", env, allowed)
    cwd = data.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str):
            raise ctx.err(table, "cwd", "must be a string")
        _check_template(ctx, table, "cwd", cwd, allowed)
    return Command(argv, dict(env), cwd)


def _timeout(ctx: _Ctx, table: str, data: Mapping[str, Any], default: float) -> float:
    t = data.get("timeout", default)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t <= 0:
        raise ctx.err(table, "timeout", f"must be a positive number of seconds, got {t!r}")
    return float(t)


def _action(ctx: _Ctx, table: str, name: str, data: Any, allowed: frozenset[str]) -> Action:
    if not isinstance(data, dict):
        raise ctx.err(table, None, "must be a table")
    kinds = [k for k in ("stdin", "command", "http", "stdout") if k in data]
    known = {"stdin", "command", "http", "stdout", "expect", "timeout", "result", "env", "cwd"}
    for key in data:
        if key not in known:
            raise ctx.err(table, key, f"unknown key {key!r} (allowed: {', '.join(sorted(known))})")
    if len(kinds) != 1:
        raise ctx.err(table, None, "needs exactly one of stdin = \"line\", command = [...], http = {...}, stdout = \"regex\"")
    kind = kinds[0]
    if name in WATCH_ACTIONS and kind != "stdout":
        raise ctx.err(table, kind, f"{name!r} is observed, not performed: use stdout = \"regex\"")
    if name not in WATCH_ACTIONS and kind == "stdout":
        raise ctx.err(table, "stdout", f"{name!r} must be performed: use stdin, command or http")
    timeout = _timeout(ctx, table, data, 10.0)
    result = data.get("result", "text")
    if not isinstance(result, str) or not (result in ("text", "json", "status", "none") or result.startswith("json:")):
        raise ctx.err(table, "result", "must be \"text\", \"json\", \"json:/json/pointer\", \"status\" or \"none\"")
    expect = None
    if "expect" in data:
        if not isinstance(data["expect"], str):
            raise ctx.err(table, "expect", "must be a regex string")
        expect = _regex(ctx, table, "expect", data["expect"])
    if kind == "stdin":
        if not isinstance(data["stdin"], str):
            raise ctx.err(table, "stdin", "must be a string (one line, without newline)")
        _check_template(ctx, table, "stdin", data["stdin"], allowed)
        return Action(name, kind, stdin=data["stdin"], expect=expect, timeout=timeout, result=result)
    if kind == "command":
        return Action(name, kind, command=_command(ctx, table, data, allowed), expect=expect, timeout=timeout, result=result)
    if kind == "stdout":
        if not isinstance(data["stdout"], str):
            raise ctx.err(table, "stdout", "must be a regex string")
        return Action(name, kind, stdout=_regex(ctx, table, "stdout", data["stdout"]), timeout=timeout)
    http = data["http"]
    sub = f"{table}"
    if not isinstance(http, dict):
        raise ctx.err(table, "http", "must be a table { method, url, body?, headers?, result?, ok_status? }")
    hspec = {"method": str, "url": str, "body": object, "headers": dict, "result": str, "ok_status": list}
    for key in http:
        if key not in hspec:
            raise ctx.err(sub, "http", f"unknown http key {key!r} (allowed: {', '.join(hspec)})")
    if not isinstance(http.get("method"), str) or http["method"].upper() not in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        raise ctx.err(sub, "http", "http.method must be GET, POST, PUT, DELETE or PATCH")
    if not isinstance(http.get("url"), str) or not http["url"].startswith(("http://", "https://", "{")):
        raise ctx.err(sub, "http", "http.url must be an http(s) URL template")
    _check_template(ctx, sub, "http", {"url": http["url"], "body": http.get("body"), "headers": http.get("headers", {})}, allowed)
    hres = http.get("result", result)
    if not isinstance(hres, str) or not (hres in ("text", "json", "status", "none") or hres.startswith("json:")):
        raise ctx.err(sub, "http", "http.result must be \"text\", \"json\", \"json:/pointer\", \"status\" or \"none\"")
    ok = http.get("ok_status", [200, 201, 202, 204])
    if not isinstance(ok, list) or not all(isinstance(x, int) for x in ok):
        raise ctx.err(sub, "http", "http.ok_status must be a list of integers")
    headers = http.get("headers", {})
    if not all(isinstance(v, str) for v in headers.values()):
        raise ctx.err(sub, "http", "http.headers must be a table of strings")
    return Action(name, kind, http=Http(http["method"].upper(), http["url"], http.get("body"), dict(headers), hres, tuple(ok)),
                  expect=expect, timeout=timeout, result=hres)


def load_profile(path: Path | str) -> Profile:
    """Load and validate a profile; DataFileError (``file:line: problem``) if malformed."""
    src = TomlSource.load(path)
    ctx = _Ctx(src)
    data = src.data
    for key in data:
        if key not in _TOP:
            raise ctx.err("", key, f"unknown top-level key or table {key!r} (allowed: {', '.join(sorted(_TOP))})")
    if data.get("format", 1) != 1:
        raise ctx.err("", "format", "format must be 1")

    impl = data.get("implementation")
    if not isinstance(impl, dict):
        raise DataFileError(src.path, 0, "missing [implementation] table")
    ctx.typed("implementation", impl, _IMPL, {"name", "version", "role"})
    if not _NAME.match(impl["name"]):
        raise ctx.err("implementation", "name", "must match [A-Za-z0-9][A-Za-z0-9._+-]*")
    role = impl["role"]
    if role not in ROLES:
        raise ctx.err("implementation", "role", f"must be one of {', '.join(ROLES)}, got {role!r}")
    adapter = impl.get("adapter")
    if adapter is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", adapter):
        raise ctx.err("implementation", "adapter", "must be \"package.module:ClassName\"")
    allowed = RUN_PLACEHOLDERS | (SERVER_PLACEHOLDERS if role != "client" else frozenset())
    env = impl.get("env", {})
    if not all(isinstance(v, str) for v in env.values()):
        raise ctx.err("implementation", "env", "must be a table of strings")
    _check_template(ctx, "implementation", "env", env, allowed)
    cwd = (src.path.parent / impl["cwd"]).resolve() if "cwd" in impl else ROOT

    # start
    modes_allowed = CLIENT_MODES if role == "client" else SERVER_MODES
    start_data = data.get("start")
    if not isinstance(start_data, dict) or not start_data:
        raise DataFileError(src.path, 0, f"missing [start.<mode>] table(s); a {role} needs "
                            + " / ".join(f"[start.{m}]" for m in modes_allowed))
    start: dict[str, Command] = {}
    for mode, spec in start_data.items():
        table = f"start.{mode}"
        if mode not in modes_allowed:
            raise ctx.err(table, None, f"unknown start mode {mode!r} for role {role} (allowed: {', '.join(modes_allowed)})")
        if not isinstance(spec, dict):
            raise ctx.err(table, None, "must be a table with command = [...]")
        for key in spec:
            if key not in ("command", "env", "cwd"):
                raise ctx.err(table, key, f"unknown key {key!r} (allowed: command, env, cwd)")
        start[mode] = _command(ctx, table, spec, allowed)

    # ready
    rd = data.get("ready")
    if not isinstance(rd, dict):
        raise DataFileError(src.path, 0, "missing [ready] table (stdout = \"regex\" and/or poll = { port, protocol })")
    for key in rd:
        if key not in ("stdout", "poll", "timeout"):
            raise ctx.err("ready", key, f"unknown key {key!r} (allowed: stdout, poll, timeout)")
    if "stdout" not in rd and "poll" not in rd:
        raise ctx.err("ready", None, "needs stdout = \"regex\" or poll = { port = \"{...}\", protocol = \"tcp\"|\"coap\" }")
    rx = None
    if "stdout" in rd:
        if not isinstance(rd["stdout"], str):
            raise ctx.err("ready", "stdout", "must be a regex string")
        rx = _regex(ctx, "ready", "stdout", rd["stdout"])
    poll_port, poll_proto = None, "tcp"
    if "poll" in rd:
        p = rd["poll"]
        if not isinstance(p, dict) or not isinstance(p.get("port"), (str, int)) or set(p) - {"port", "protocol"}:
            raise ctx.err("ready", "poll", "must be { port = \"{placeholder}\" or number, protocol = \"tcp\"|\"coap\" }")
        poll_port = str(p["port"])
        _check_template(ctx, "ready", "poll", poll_port, allowed)
        poll_proto = p.get("protocol", "tcp")
        if poll_proto not in ("tcp", "coap"):
            raise ctx.err("ready", "poll", "protocol must be \"tcp\" or \"coap\"")
    ready = Ready(rx, poll_port, poll_proto, _timeout(ctx, "ready", rd, 15.0))

    # stop
    st = data.get("stop", {})
    if not isinstance(st, dict):
        raise ctx.err("stop", None, "must be a table")
    for key in st:
        if key not in ("signal", "timeout", "command", "stdin"):
            raise ctx.err("stop", key, f"unknown key {key!r} (allowed: signal, timeout, command, stdin)")
    sig = int(_signal.SIGTERM)
    if "signal" in st:
        name = st["signal"]
        if not isinstance(name, str) or not hasattr(_signal, name if name.startswith("SIG") else "SIG" + name):
            raise ctx.err("stop", "signal", f"unknown signal {name!r} (e.g. \"SIGTERM\", \"SIGINT\")")
        sig = int(getattr(_signal, name if name.startswith("SIG") else "SIG" + name))
    stop_cmd = _command(ctx, "stop", st, allowed) if "command" in st else None
    stdin_line = st.get("stdin")
    if stdin_line is not None and not isinstance(stdin_line, str):
        raise ctx.err("stop", "stdin", "must be a string")
    stop = Stop(sig, _timeout(ctx, "stop", st, 5.0), stop_cmd, stdin_line)

    # control (client) / actions (servers)
    actions: dict[str, Action] = {}
    if role == "client":
        if "actions" in data:
            raise ctx.err("", "actions", "[actions] is for servers; a client's local controls go in [control.<name>]")
        table_name, catalog = "control", CLIENT_ACTIONS
    else:
        if "control" in data:
            raise ctx.err("", "control", "[control] is for clients; a server's DM actions go in [actions.<name>]")
        table_name, catalog = "actions", SERVER_ACTIONS if role == "server" else BOOTSTRAP_ACTIONS
    section = data.get(table_name, {})
    if not isinstance(section, dict):
        raise ctx.err(table_name, None, "must be a table of actions")
    for name, spec in section.items():
        table = f"{table_name}.{name}"
        if name not in catalog:
            raise ctx.err(table, None, f"unknown {table_name} {name!r} for role {role} (known: {', '.join(catalog)})")
        extra = catalog[name] | ({"endpoint"} if role != "client" else frozenset())
        actions[name] = _action(ctx, table, name, spec, allowed | extra)

    # ics
    ics_d = data.get("ics")
    if not isinstance(ics_d, dict):
        raise DataFileError(src.path, 0, "missing [ics] table (the implementation conformance statement)")
    ctx.typed("ics", ics_d, _ICS, set())

    def strs(key: str, allowed_values: tuple[str, ...] | None = None, rx: re.Pattern[str] | None = None) -> tuple[str, ...]:
        vals = ics_d.get(key, [])
        for v in vals:
            if not isinstance(v, str) or (allowed_values and v not in allowed_values) or (rx and not rx.match(v)):
                hint = f"one of {', '.join(allowed_values)}" if allowed_values else f"matching {rx.pattern if rx else ''}"
                raise ctx.err("ics", key, f"invalid value {v!r} (each must be {hint})")
        return tuple(vals)

    fmts = []
    for v in ics_d.get("content_formats", []):
        if isinstance(v, str) and v in CONTENT_FORMATS:
            fmts.append(CONTENT_FORMATS[v])
        elif isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 65535:
            fmts.append(v)
        else:
            raise ctx.err("ics", "content_formats", f"invalid value {v!r} (a number or one of {', '.join(CONTENT_FORMATS)})")
    objs = []
    for v in ics_d.get("objects", []):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 65535:
            raise ctx.err("ics", "objects", f"invalid object ID {v!r}")
        objs.append(v)
    ics = Ics(
        lwm2m_versions=strs("lwm2m_versions", ICS_VERSIONS), content_formats=tuple(fmts),
        bindings=strs("bindings", None, _BINDING), security_modes=strs("security_modes", ICS_SECURITY),
        bootstrap_modes=strs("bootstrap_modes", ICS_BOOTSTRAP), smartcard=ics_d.get("smartcard", False),
        sms=ics_d.get("sms", False), queue_mode=ics_d.get("queue_mode", False), objects=tuple(objs),
        charging_records=ics_d.get("charging_records", False))

    # cross-checks: every claimed provisioning mode has a way to start it ("missing mode")
    if role == "client":
        need = {"factory": "factory", "client-initiated": "bootstrap", "server-initiated": "bootstrap",
                "smartcard": "smartcard"}
        for claim in ics.bootstrap_modes:
            if need[claim] not in start:
                raise ctx.err("ics", "bootstrap_modes", f"claims {claim!r} but the profile has no [start.{need[claim]}]")
        if ics.smartcard and "smartcard" not in start:
            raise ctx.err("ics", "smartcard", "claims smartcard = true but the profile has no [start.smartcard]")
        for mode in start:
            claims = [c for c, m in need.items() if m == mode]
            if not any(c in ics.bootstrap_modes for c in claims):
                raise ctx.err(f"start.{mode}", None, f"start mode {mode!r} is not claimed by ics.bootstrap_modes "
                              f"(add one of {', '.join(repr(c) for c in claims)})")
    elif "default" not in start:
        raise DataFileError(src.path, 0, f"a {role} profile needs [start.default]")
    if adapter is None and not ready.stdout and not ready.poll_port:
        raise ctx.err("ready", None, "no readiness condition")

    return Profile(path=src.path, name=impl["name"], version=impl["version"], role=role,
                   description=impl.get("description", ""), adapter=adapter, cwd=cwd, env=dict(env),
                   start=start, ready=ready, stop=stop, actions=actions, ics=ics, text=src.text)


def resolve_profile_arg(arg: str) -> Path:
    """``--dut`` value -> path: an existing file, or the name of a bundled profile (reference-client)."""
    p = Path(arg)
    if p.suffix == ".toml" or p.exists():
        return p
    cand = PROFILE_DIR / f"{arg}.toml"
    return cand if cand.exists() else p
