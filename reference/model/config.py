"""Bootstrap information as data: the Security (/0) and Server (/1) accounts a device needs.

One model serves every provisioning route of the project: a factory configuration file
(Core 1.1.1 §6.1.2 "Factory Bootstrap"), the serialized configuration the bootstrap server
exports for offline loading (the alternative flow of the device-configuration use case),
the bootstrap server's per-endpoint configuration, and the contents of a smartcard
(Core 1.1.1 §6.1.3 and its appendix on the UICC).

Resource IDs are those of the Security object (Core 1.1.1 §E.1) and Server object (§E.2).
"""
from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path as FsPath
from typing import Any

from reference.model.path import Path
from reference.model.types import Values

FORMAT_TAG = "lwm2m-device-config/1"


class ConfigError(ValueError):
    """A configuration document is malformed. The message names the file and field."""


class SecurityMode(enum.IntEnum):
    """/0/x/2 Security Mode (Core 1.1.1 §E.1)."""

    PSK = 0
    RPK = 1
    CERTIFICATE = 2
    NOSEC = 3
    CERTIFICATE_EST = 4


class SecurityRes(enum.IntEnum):
    URI = 0
    BOOTSTRAP_SERVER = 1
    SECURITY_MODE = 2
    PUBLIC_KEY_OR_IDENTITY = 3
    SERVER_PUBLIC_KEY = 4
    SECRET_KEY = 5
    SHORT_SERVER_ID = 10
    CLIENT_HOLD_OFF_TIME = 11
    BOOTSTRAP_SERVER_ACCOUNT_TIMEOUT = 12


class ServerRes(enum.IntEnum):
    SHORT_SERVER_ID = 0
    LIFETIME = 1
    DEFAULT_PMIN = 2
    DEFAULT_PMAX = 3
    DISABLE = 4
    DISABLE_TIMEOUT = 5
    NOTIFICATION_STORING = 6
    BINDING = 7
    REGISTRATION_UPDATE_TRIGGER = 8
    BOOTSTRAP_REQUEST_TRIGGER = 9


@dataclass
class SecurityAccount:
    """One Security object instance: how to reach and authenticate to one (bootstrap) server."""

    instance_id: int
    uri: str
    bootstrap: bool = False
    mode: SecurityMode = SecurityMode.NOSEC
    psk_identity: bytes = b""
    psk_key: bytes = b""
    short_server_id: int | None = None  # absent for the bootstrap account
    client_hold_off: int = 0
    bootstrap_account_timeout: int = 0

    def to_values(self) -> Values:
        base = Path(0, self.instance_id)
        v: Values = {
            base.child(SecurityRes.URI): self.uri,
            base.child(SecurityRes.BOOTSTRAP_SERVER): self.bootstrap,
            base.child(SecurityRes.SECURITY_MODE): int(self.mode),
            base.child(SecurityRes.PUBLIC_KEY_OR_IDENTITY): self.psk_identity,
            base.child(SecurityRes.SERVER_PUBLIC_KEY): b"",
            base.child(SecurityRes.SECRET_KEY): self.psk_key,
            base.child(SecurityRes.CLIENT_HOLD_OFF_TIME): self.client_hold_off,
        }
        if self.short_server_id is not None:
            v[base.child(SecurityRes.SHORT_SERVER_ID)] = self.short_server_id
        if self.bootstrap:
            v[base.child(SecurityRes.BOOTSTRAP_SERVER_ACCOUNT_TIMEOUT)] = self.bootstrap_account_timeout
        return v


@dataclass
class ServerAccount:
    """One Server object instance: registration parameters towards one LwM2M server."""

    instance_id: int
    short_server_id: int
    lifetime: int = 86400
    binding: str = "U"
    default_pmin: int | None = None
    default_pmax: int | None = None
    disable_timeout: int = 86400
    notification_storing: bool = True

    def to_values(self) -> Values:
        base = Path(1, self.instance_id)
        v: Values = {
            base.child(ServerRes.SHORT_SERVER_ID): self.short_server_id,
            base.child(ServerRes.LIFETIME): self.lifetime,
            base.child(ServerRes.DISABLE_TIMEOUT): self.disable_timeout,
            base.child(ServerRes.NOTIFICATION_STORING): self.notification_storing,
            base.child(ServerRes.BINDING): self.binding,
        }
        if self.default_pmin is not None:
            v[base.child(ServerRes.DEFAULT_PMIN)] = self.default_pmin
        if self.default_pmax is not None:
            v[base.child(ServerRes.DEFAULT_PMAX)] = self.default_pmax
        return v


@dataclass
class DeviceConfig:
    """Everything a device needs to reach its servers: Security and Server instances to write,
    paths to delete first (Bootstrap-Delete), and the endpoint name they belong to."""

    endpoint: str
    security: list[SecurityAccount] = field(default_factory=list)
    servers: list[ServerAccount] = field(default_factory=list)
    delete_paths: list[str] = field(default_factory=list)

    # ---- values ---------------------------------------------------------------------------
    def to_values(self) -> Values:
        """All /0 and /1 resources as a flat value mapping (what a Bootstrap-Write carries)."""
        out: Values = {}
        for acc in self.security:
            out.update(acc.to_values())
        for srv in self.servers:
            out.update(srv.to_values())
        return out

    @classmethod
    def from_values(cls, endpoint: str, values: Values) -> "DeviceConfig":
        """Rebuild accounts from /0 and /1 resource values (e.g. a card's bootstrap file)."""
        sec: dict[int, dict[int, Any]] = {}
        srv: dict[int, dict[int, Any]] = {}
        for p, val in values.items():
            if p.depth != 3:
                continue
            target = sec if p.object_id == 0 else srv if p.object_id == 1 else None
            if target is not None:
                target.setdefault(p.instance_id, {})[p.resource_id] = val
        cfg = cls(endpoint=endpoint)
        for iid, r in sorted(sec.items()):
            if SecurityRes.URI not in r:
                raise ConfigError(f"/0/{iid}: Security instance without a Server URI (/0/{iid}/0)")
            cfg.security.append(SecurityAccount(
                instance_id=iid, uri=str(r[SecurityRes.URI]),
                bootstrap=bool(r.get(SecurityRes.BOOTSTRAP_SERVER, False)),
                mode=SecurityMode(int(r.get(SecurityRes.SECURITY_MODE, SecurityMode.NOSEC))),
                psk_identity=_as_bytes(r.get(SecurityRes.PUBLIC_KEY_OR_IDENTITY, b"")),
                psk_key=_as_bytes(r.get(SecurityRes.SECRET_KEY, b"")),
                short_server_id=r.get(SecurityRes.SHORT_SERVER_ID),
                client_hold_off=int(r.get(SecurityRes.CLIENT_HOLD_OFF_TIME, 0)),
                bootstrap_account_timeout=int(r.get(SecurityRes.BOOTSTRAP_SERVER_ACCOUNT_TIMEOUT, 0)),
            ))
        for iid, r in sorted(srv.items()):
            if ServerRes.SHORT_SERVER_ID not in r:
                raise ConfigError(f"/1/{iid}: Server instance without a Short Server ID (/1/{iid}/0)")
            cfg.servers.append(ServerAccount(
                instance_id=iid, short_server_id=int(r[ServerRes.SHORT_SERVER_ID]),
                lifetime=int(r.get(ServerRes.LIFETIME, 86400)),
                binding=str(r.get(ServerRes.BINDING, "U")),
                default_pmin=r.get(ServerRes.DEFAULT_PMIN), default_pmax=r.get(ServerRes.DEFAULT_PMAX),
                disable_timeout=int(r.get(ServerRes.DISABLE_TIMEOUT, 86400)),
                notification_storing=bool(r.get(ServerRes.NOTIFICATION_STORING, True)),
            ))
        return cfg

    # ---- consistency (Core 1.1.1 §5.2.5.3 Bootstrap-Finish) --------------------------------
    def problems(self) -> list[str]:
        """What makes this configuration unusable; empty when consistent. Each LwM2M server
        account needs a Security instance with a matching Short Server ID and vice versa."""
        out: list[str] = []
        dm_security = [a for a in self.security if not a.bootstrap]
        ssids_sec = {a.short_server_id for a in dm_security}
        ssids_srv = {s.short_server_id for s in self.servers}
        if not dm_security and not any(a.bootstrap for a in self.security):
            out.append("no Security instance at all")
        for a in dm_security:
            if a.short_server_id is None:
                out.append(f"/0/{a.instance_id} has no Short Server ID")
            elif a.short_server_id not in ssids_srv:
                out.append(f"/0/{a.instance_id} (SSID {a.short_server_id}) has no Server instance")
            if a.mode == SecurityMode.PSK and (not a.psk_identity or not a.psk_key):
                out.append(f"/0/{a.instance_id} is PSK mode without identity or key")
        for s in self.servers:
            if s.short_server_id not in ssids_sec:
                out.append(f"/1/{s.instance_id} (SSID {s.short_server_id}) has no Security instance")
        return out

    # ---- serialization ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for acc in d["security"]:
            acc["mode"] = SecurityMode(acc["mode"]).name
            acc["psk_identity"] = acc["psk_identity"].decode("utf-8", "surrogateescape")
            acc["psk_key"] = acc["psk_key"].hex()
        return {"format": FORMAT_TAG, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "<config>") -> "DeviceConfig":
        try:
            if d.get("format", FORMAT_TAG) != FORMAT_TAG:
                raise ConfigError(f"{where}: format {d.get('format')!r}, expected {FORMAT_TAG!r}")
            endpoint = d["endpoint"]
            if not isinstance(endpoint, str) or not endpoint:
                raise ConfigError(f"{where}: 'endpoint' must be a non-empty string")
            security = []
            for i, a in enumerate(d.get("security", [])):
                a = dict(a)
                try:
                    a["mode"] = SecurityMode[a.get("mode", "NOSEC")] if isinstance(a.get("mode", "NOSEC"), str) else SecurityMode(a["mode"])
                    a["psk_identity"] = str(a.get("psk_identity", "")).encode()
                    a["psk_key"] = bytes.fromhex(a.get("psk_key", ""))
                    security.append(SecurityAccount(**a))
                except (KeyError, ValueError, TypeError) as e:
                    raise ConfigError(f"{where}: security[{i}]: {e}") from None
            servers = []
            for i, s in enumerate(d.get("servers", [])):
                try:
                    servers.append(ServerAccount(**s))
                except TypeError as e:
                    raise ConfigError(f"{where}: servers[{i}]: {e}") from None
            return cls(endpoint=endpoint, security=security, servers=servers,
                       delete_paths=list(d.get("delete_paths", [])))
        except KeyError as e:
            raise ConfigError(f"{where}: missing field {e}") from None
        except AttributeError as e:
            raise ConfigError(f"{where}: wrong structure: {e}") from None

    def to_file(self, path: str | FsPath) -> None:
        FsPath(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_file(cls, path: str | FsPath) -> "DeviceConfig":
        p = FsPath(path)
        try:
            doc = json.loads(p.read_text())
        except OSError as e:
            raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{p}: top level must be an object")
        return cls.from_dict(doc, where=str(p))


def _as_bytes(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    return str(v).encode()
