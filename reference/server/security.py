"""Server-side security policy: which endpoint may register over which security context.

Core 1.1.1 §7.1 and Transport 1.1.1 §5: in PSK mode the client authenticates with its PSK
identity (Security object resource 0/x/3) and key (0/x/5). The server binds each identity to the
endpoint it belongs to, so:

* a Register over DTLS whose ``ep`` is not the endpoint of the session's PSK identity is refused
  with 4.03 Forbidden;
* a NoSec Register of an endpoint that has credentials is refused with 4.03 as well (otherwise a
  NoSec peer could take over a secured device's registration);
* Update and De-register must come from the security context (identity, or NoSec) of the
  registration (checked in :meth:`RegistrationInterface.lookup`).

The PSK table file (``--psk-file``) is either JSON::

    {"identity-1": {"endpoint": "dev-1", "key": "0011aabb..."}, ...}
    [{"identity": "identity-1", "endpoint": "dev-1", "key": "0011aabb..."}, ...]

or text, one entry per line, ``#`` comments::

    identity-1  dev-1  0011aabb...

Keys are hexadecimal. Identities are UTF-8 text (python-mbedtls takes them as str).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Iterable


class PskFileError(ValueError):
    """The PSK table file is malformed; the message names file and line/entry."""


@dataclass(frozen=True)
class PskEntry:
    identity: bytes
    endpoint: str
    key: bytes


class PskTable:
    """identity -> (endpoint, key), plus the reverse endpoint -> identities."""

    def __init__(self, entries: Iterable[PskEntry] = ()) -> None:
        self._by_identity: dict[bytes, PskEntry] = {}
        self._by_endpoint: dict[str, set[bytes]] = {}
        for e in entries:
            self.add(e)

    def add(self, entry: PskEntry) -> None:
        old = self._by_identity.get(entry.identity)
        if old is not None:
            self._by_endpoint.get(old.endpoint, set()).discard(entry.identity)
        self._by_identity[entry.identity] = entry
        self._by_endpoint.setdefault(entry.endpoint, set()).add(entry.identity)

    def key_for(self, identity: bytes) -> bytes | None:
        """The ``psk_lookup`` callable the DTLS bridge needs."""
        e = self._by_identity.get(bytes(identity))
        return e.key if e else None

    def endpoint_for(self, identity: bytes) -> str | None:
        e = self._by_identity.get(bytes(identity))
        return e.endpoint if e else None

    def has_credentials(self, endpoint: str) -> bool:
        return bool(self._by_endpoint.get(endpoint))

    def __len__(self) -> int:
        return len(self._by_identity)

    @classmethod
    def from_file(cls, path: str | FsPath) -> "PskTable":
        p = FsPath(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise PskFileError(f"{p}: cannot read: {e.strerror}") from None
        table = cls()
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                raise PskFileError(f"{p}:{e.lineno}:{e.colno}: invalid JSON: {e.msg}") from None
            items = ([dict(v, identity=k) if isinstance(v, dict) else v for k, v in doc.items()]
                     if isinstance(doc, dict) else doc)
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise PskFileError(f"{p}: entry {i}: not an object")
                try:
                    table.add(_entry(str(item["identity"]), str(item["endpoint"]), str(item["key"])))
                except KeyError as e:
                    raise PskFileError(f"{p}: entry {i}: missing {e}") from None
                except ValueError as e:
                    raise PskFileError(f"{p}: entry {i}: {e}") from None
            return table
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 3:
                raise PskFileError(f"{p}:{lineno}: expected 'identity endpoint hexkey'")
            try:
                table.add(_entry(*parts))
            except ValueError as e:
                raise PskFileError(f"{p}:{lineno}: {e}") from None
        return table


def _entry(identity: str, endpoint: str, key_hex: str) -> PskEntry:
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        raise ValueError(f"key {key_hex!r} is not hexadecimal") from None
    if not key:
        raise ValueError("empty key")
    if not identity or not endpoint:
        raise ValueError("empty identity or endpoint")
    return PskEntry(identity.encode("utf-8"), endpoint, key)


class SecurityPolicy:
    """Decides whether a Register is allowed in its security context (see module docstring).

    ``allow_nosec_for_credentialed`` relaxes the NoSec rule (for experiments only)."""

    def __init__(self, table: PskTable | None = None, *,
                 allow_nosec_for_credentialed: bool = False) -> None:
        self.table = table or PskTable()
        self.allow_nosec_for_credentialed = allow_nosec_for_credentialed

    def check_register(self, endpoint: str, identity: bytes | None) -> str | None:
        """``None`` if allowed, else the reason for 4.03 Forbidden."""
        if identity is None:
            if self.table.has_credentials(endpoint) and not self.allow_nosec_for_credentialed:
                return f"endpoint {endpoint!r} has credentials: register over DTLS"
            return None
        owner = self.table.endpoint_for(identity)
        if owner is None:
            return "PSK identity not in the server's table"
        if owner != endpoint:
            return f"PSK identity does not belong to endpoint {endpoint!r}"
        return None
