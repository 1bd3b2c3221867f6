"""Bulk provisioning input: device configurations from CSV or JSON files (the "M2M Portal" side).

Both readers are all-or-nothing: every bad line is reported as ``FILE:LINE: what is wrong`` in
one :class:`ProvisioningError`, and no configuration is returned when there is any error, so a
caller that stores the result in one transaction never half-imports a file.

CSV (RFC 4180, comma-separated, first line is the header; blank lines and lines whose first
cell starts with ``#`` are skipped). One row = one device with one LwM2M Server account and
optionally its Bootstrap-Server account:

=========================  ========  =============================================================
column                     required  meaning (Security /0 and Server /1 resources, Core 1.1.1 §E.1/E.2)
=========================  ========  =============================================================
endpoint                   yes       Endpoint Client Name (the ``ep`` of the Bootstrap-Request)
server_uri                 yes       /0/1/0 LwM2M Server URI, e.g. ``coaps://127.0.0.1:5684``
security_mode              no        /0/1/2: PSK, RPK, CERTIFICATE, NOSEC, CERTIFICATE_EST or 0..4;
                                     default PSK when ``psk_key_hex`` is set, else NOSEC
psk_identity               no        /0/1/3 PSK identity (UTF-8 text)
psk_key_hex                no        /0/1/5 PSK key, hexadecimal
short_server_id            no        /0/1/10 and /1/0/0, 1..65534, default 1
lifetime                   no        /1/0/1 seconds, default 86400
binding                    no        /1/0/7, default ``U``
default_pmin               no        /1/0/2 seconds
default_pmax               no        /1/0/3 seconds
bootstrap_server_uri       no        when set, adds the Bootstrap-Server account /0/0 (/0/0/1 true)
bootstrap_security_mode    no        /0/0/2, same spelling and default rule as ``security_mode``
bootstrap_psk_identity     no        /0/0/3: the identity the client uses towards this bootstrap
                                     server (also what the CoAPS port accepts for ``endpoint``)
bootstrap_psk_key_hex      no        /0/0/5
delete_paths               no        space- or ``;``-separated paths for Bootstrap-Delete
                                     (empty: the server's default)
=========================  ========  =============================================================

The LwM2M Server account is Security instance /0/1 and Server instance /1/0; the
Bootstrap-Server account is /0/0.

JSON: a list of :meth:`DeviceConfig.to_dict` objects (the ``format`` key may be omitted), or one
such object (an exported device file). Line numbers are those where each list element starts.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path as FsPath
from typing import Any

from reference.model.config import (
    ConfigError,
    DeviceConfig,
    SecurityAccount,
    SecurityMode,
    ServerAccount,
)
from reference.model.path import Path, PathError

CSV_COLUMNS: tuple[str, ...] = (
    "endpoint", "server_uri", "security_mode", "psk_identity", "psk_key_hex", "short_server_id",
    "lifetime", "binding", "default_pmin", "default_pmax", "bootstrap_server_uri",
    "bootstrap_security_mode", "bootstrap_psk_identity", "bootstrap_psk_key_hex", "delete_paths",
)
CSV_REQUIRED: tuple[str, ...] = ("endpoint", "server_uri")

#: URI schemes a Security object's Server URI may carry (Core 1.1.1 §E.1 and Transport 1.1.1 §6).
URI_SCHEMES = ("coap://", "coaps://", "coap+tcp://", "coaps+tcp://", "sms://", "lwm2m+nidd://")
_BINDING_LETTERS = set("UMHTSNQ")  # Q: LwM2M 1.0 queue-mode spelling (Core 1.0 §5.3.1.1)


class ProvisioningError(ConfigError):
    """One or more input lines are bad. ``errors`` holds every ``FILE:LINE: message``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        shown = "\n".join(self.errors[:50])
        more = f"\n... and {len(self.errors) - 50} more" if len(self.errors) > 50 else ""
        super().__init__(shown + more)


def validate(cfg: DeviceConfig) -> list[str]:
    """Everything that keeps ``cfg`` from being provisioned: consistency per
    :meth:`DeviceConfig.problems` (the same rule a client applies at Bootstrap-Finish,
    Core 1.1.1 §6.1.7.2) plus field checks a client would reject on Bootstrap-Write."""
    out = list(cfg.problems())
    if not cfg.endpoint or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in cfg.endpoint):
        out.append(f"endpoint {cfg.endpoint!r} is empty or contains spaces/control characters")
    if not any(not a.bootstrap for a in cfg.security):
        out.append("no LwM2M Server account (a Security instance with Bootstrap-Server false)")
    ids_sec = [a.instance_id for a in cfg.security]
    ids_srv = [s.instance_id for s in cfg.servers]
    if len(set(ids_sec)) != len(ids_sec):
        out.append(f"duplicate Security instance IDs {ids_sec}")
    if len(set(ids_srv)) != len(ids_srv):
        out.append(f"duplicate Server instance IDs {ids_srv}")
    for a in cfg.security:
        if not a.uri.startswith(URI_SCHEMES):
            out.append(f"/0/{a.instance_id}/0 URI {a.uri!r} has no LwM2M scheme ({', '.join(URI_SCHEMES)})")
        if a.short_server_id is not None and not (1 <= a.short_server_id <= 65534):
            out.append(f"/0/{a.instance_id}/10 Short Server ID {a.short_server_id} outside 1..65534")
        if not (0 <= a.instance_id <= 65534):
            out.append(f"Security instance ID {a.instance_id} outside 0..65534")
    for s in cfg.servers:
        if not (1 <= s.short_server_id <= 65534):
            out.append(f"/1/{s.instance_id}/0 Short Server ID {s.short_server_id} outside 1..65534")
        if s.lifetime < 0:
            out.append(f"/1/{s.instance_id}/1 lifetime {s.lifetime} is negative")
        if not s.binding or not set(s.binding) <= _BINDING_LETTERS:
            out.append(f"/1/{s.instance_id}/7 binding {s.binding!r} is not made of {''.join(sorted(_BINDING_LETTERS))}")
        if not (0 <= s.instance_id <= 65534):
            out.append(f"Server instance ID {s.instance_id} outside 0..65534")
    for p in cfg.delete_paths:
        try:
            Path.parse(p)
        except PathError as e:
            out.append(f"delete path {p!r}: {e}")
    return out


# ---- CSV ------------------------------------------------------------------------------------
def _mode(text: str, has_key: bool) -> SecurityMode:
    t = text.strip()
    if not t:
        return SecurityMode.PSK if has_key else SecurityMode.NOSEC
    if t.isdigit():
        return SecurityMode(int(t))
    return SecurityMode[t.upper()]


def _int(row: dict[str, str], col: str, default: int | None) -> int | None:
    t = (row.get(col) or "").strip()
    if not t:
        return default
    try:
        return int(t)
    except ValueError:
        raise ValueError(f"column {col!r}: {t!r} is not an integer") from None


def row_to_config(row: dict[str, str]) -> DeviceConfig:
    get = lambda c: (row.get(c) or "").strip()  # noqa: E731
    for c in CSV_REQUIRED:
        if not get(c):
            raise ValueError(f"column {c!r} is empty")
    try:
        key = bytes.fromhex(get("psk_key_hex"))
        bs_key = bytes.fromhex(get("bootstrap_psk_key_hex"))
    except ValueError:
        raise ValueError("psk_key_hex / bootstrap_psk_key_hex is not hexadecimal") from None
    try:
        mode = _mode(get("security_mode"), bool(key))
        bs_mode = _mode(get("bootstrap_security_mode"), bool(bs_key))
    except (KeyError, ValueError):
        raise ValueError(f"unknown security mode (use {', '.join(m.name for m in SecurityMode)})") from None
    ssid = _int(row, "short_server_id", 1)
    assert ssid is not None
    cfg = DeviceConfig(endpoint=get("endpoint"))
    if get("bootstrap_server_uri"):
        cfg.security.append(SecurityAccount(
            instance_id=0, uri=get("bootstrap_server_uri"), bootstrap=True, mode=bs_mode,
            psk_identity=get("bootstrap_psk_identity").encode(), psk_key=bs_key))
    cfg.security.append(SecurityAccount(
        instance_id=1, uri=get("server_uri"), bootstrap=False, mode=mode,
        psk_identity=get("psk_identity").encode(), psk_key=key, short_server_id=ssid))
    lifetime = _int(row, "lifetime", 86400)
    cfg.servers.append(ServerAccount(
        instance_id=0, short_server_id=ssid, lifetime=lifetime if lifetime is not None else 86400,
        binding=get("binding") or "U",
        default_pmin=_int(row, "default_pmin", None), default_pmax=_int(row, "default_pmax", None)))
    cfg.delete_paths = [p for p in get("delete_paths").replace(";", " ").split() if p]
    return cfg


def parse_csv(text: str, name: str = "<csv>") -> list[DeviceConfig]:
    """Parse a provisioning CSV document (columns in the module docstring).

    Raises :class:`ProvisioningError` listing ``name:LINE: problem`` for every bad row
    (unknown or missing header columns are reported on line 1) and returns nothing then.
    """
    errors: list[str] = []
    out: list[DeviceConfig] = []
    seen: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    try:
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields) or fields[0].lstrip().startswith("#"):
                continue
            if header is None:
                header = [f.strip().lower() for f in fields]
                unknown = [c for c in header if c not in CSV_COLUMNS]
                missing = [c for c in CSV_REQUIRED if c not in header]
                if unknown:
                    errors.append(f"{name}:{line}: unknown column(s) {', '.join(unknown)} "
                                  f"(known: {', '.join(CSV_COLUMNS)})")
                if missing:
                    errors.append(f"{name}:{line}: missing column(s) {', '.join(missing)}")
                if len(set(header)) != len(header):
                    errors.append(f"{name}:{line}: a column is named twice")
                if errors:
                    raise ProvisioningError(errors)
                continue
            if len(fields) != len(header):
                errors.append(f"{name}:{line}: {len(fields)} fields, header has {len(header)}")
                continue
            row = dict(zip(header, fields))
            try:
                cfg = row_to_config(row)
            except ValueError as e:
                errors.append(f"{name}:{line}: {e}")
                continue
            _accept(cfg, f"{name}:{line}", line, seen, out, errors)
    except csv.Error as e:
        errors.append(f"{name}:{reader.line_num}: CSV syntax: {e}")
    if header is None and not errors:
        errors.append(f"{name}:1: no header line")
    if errors:
        raise ProvisioningError(errors)
    return out


# ---- JSON -----------------------------------------------------------------------------------
def _element_lines(text: str) -> list[int]:
    """Line numbers where each element of a top-level JSON array starts (text is valid JSON)."""
    dec = json.JSONDecoder()
    i = text.index("[") + 1
    lines: list[int] = []
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return lines
        lines.append(text.count("\n", 0, i) + 1)
        _, i = dec.raw_decode(text, i)


def _accept(cfg: DeviceConfig, where: str, line: int, seen: dict[str, int], out: list[DeviceConfig],
            errors: list[str]) -> None:
    """Add a parsed configuration to ``out``, or its problems (inconsistent, or an endpoint already
    given on an earlier line) to ``errors``: the checks every bulk format shares."""
    problems = validate(cfg)
    if problems:
        errors.append(f"{where}: {cfg.endpoint}: " + "; ".join(problems))
    elif cfg.endpoint in seen:
        errors.append(f"{where}: endpoint {cfg.endpoint!r} already on line {seen[cfg.endpoint]}")
    else:
        seen[cfg.endpoint] = line
        out.append(cfg)


def parse_json(text: str, name: str = "<json>") -> list[DeviceConfig]:
    """Parse a JSON list of DeviceConfig dicts, or one DeviceConfig dict.

    Raises :class:`ProvisioningError` with ``name:LINE: problem`` per bad element.
    """
    try:
        doc: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProvisioningError([f"{name}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})"]) from None
    if isinstance(doc, dict):
        items, lines = [doc], [text.count("\n", 0, text.index("{")) + 1]
    elif isinstance(doc, list):
        items, lines = doc, _element_lines(text)
    else:
        raise ProvisioningError([f"{name}:1: top level must be a list of device objects or one object"])
    errors: list[str] = []
    out: list[DeviceConfig] = []
    seen: dict[str, int] = {}
    for item, line in zip(items, lines):
        where = f"{name}:{line}"
        if not isinstance(item, dict):
            errors.append(f"{where}: element is {type(item).__name__}, expected an object")
            continue
        try:
            cfg = DeviceConfig.from_dict(item, where=where)
        except ConfigError as e:
            errors.append(str(e))
            continue
        except (TypeError, ValueError) as e:  # from_dict is strict about shapes but not exhaustive
            errors.append(f"{where}: {e}")
            continue
        _accept(cfg, where, line, seen, out, errors)
    if errors:
        raise ProvisioningError(errors)
    return out


def sniff_format(text: str, name: str = "") -> str:
    """``"json"`` or ``"csv"``: by file extension when it says, else by the first character."""
    lower = name.lower()
    if lower.endswith(".json"):
        return "json"
    if lower.endswith(".csv"):
        return "csv"
    return "json" if text.lstrip()[:1] in ("[", "{") else "csv"


def parse_text(text: str, name: str = "<input>", fmt: str | None = None) -> list[DeviceConfig]:
    """Parse CSV or JSON provisioning input (``fmt`` None = sniff)."""
    fmt = fmt or sniff_format(text, name)
    if fmt == "json":
        return parse_json(text, name)
    if fmt == "csv":
        return parse_csv(text, name)
    raise ValueError(f"unknown provisioning format {fmt!r} (csv or json)")


def load_file(path: str | FsPath) -> list[DeviceConfig]:
    """Read and parse a provisioning file; errors name the file and line."""
    p = FsPath(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ProvisioningError([f"{p}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise ProvisioningError([f"{p}: not UTF-8 text: {e.reason}"]) from None
    return parse_text(text, str(p))
