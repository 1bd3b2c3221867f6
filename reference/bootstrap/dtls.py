"""CoAPS (DTLS 1.2 PSK) port of the bootstrap server (Transport 1.1.1 §5.2, RFC 7925).

A :class:`reference.security.DtlsServerBridge` terminates DTLS on the public CoAPS port and
forwards the plaintext datagrams of each session from its own loopback socket to the server's
plain CoAP port. :meth:`BootstrapServer.dtls_identity` maps that source address back to the
session's PSK identity, and :meth:`BootstrapServer.authorize` requires the identity to be the one
of the requesting endpoint's Bootstrap-Server account (else 4.03 Forbidden).

PSK keys come from the device configurations (every Security instance with Bootstrap-Server
``true`` and mode PSK contributes ``identity -> key``), looked up live so devices added later are
accepted, plus an optional extra table file (:func:`load_psk_table`).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path as FsPath
from typing import Any

from reference.bootstrap.server import BootstrapServer
from reference.bootstrap.store import DeviceStore
from reference.model.config import ConfigError, SecurityMode


def load_psk_table(path: str | FsPath) -> dict[bytes, bytes]:
    """Read ``identity -> key`` pairs from JSON (``{"identity": "key-hex", ...}``) or CSV
    (header ``identity,key_hex``). Raises :class:`ConfigError` naming file and line."""
    p = FsPath(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror}") from None
    table: dict[bytes, bytes] = {}
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}:{e.lineno}: invalid JSON: {e.msg}") from None
        for ident, key in doc.items():
            try:
                table[str(ident).encode()] = bytes.fromhex(str(key))
            except ValueError:
                raise ConfigError(f"{p}: key of {ident!r} is not hexadecimal") from None
        return table
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"identity", "key_hex"} <= set(reader.fieldnames):
        raise ConfigError(f"{p}:1: header must have columns identity,key_hex")
    for row in reader:
        try:
            table[(row.get("identity") or "").encode()] = bytes.fromhex(row.get("key_hex") or "")
        except ValueError:
            raise ConfigError(f"{p}:{reader.line_num}: key_hex is not hexadecimal") from None
    return table


class PskDirectory:
    """``psk_lookup(identity) -> key | None`` over the store's bootstrap accounts and an extra table."""

    def __init__(self, store: DeviceStore, extra: dict[bytes, bytes] | None = None) -> None:
        self.store = store
        self.extra = dict(extra or {})

    def __call__(self, identity: bytes) -> bytes | None:
        if identity in self.extra:
            return self.extra[identity]
        for cfg in self.store.list():
            for acc in cfg.security:
                if acc.bootstrap and acc.mode == SecurityMode.PSK and acc.psk_identity == identity and acc.psk_key:
                    return acc.psk_key
        return None


async def open_coaps(server: BootstrapServer, host: str, port: int,
                     extra_psk: dict[bytes, bytes] | None = None) -> tuple[Any, tuple[str, int]]:
    """Start a DTLS bridge on ``(host, port)`` in front of ``server``'s CoAP port and attach it.
    Returns ``(bridge, bound address)``; close with ``await bridge.close()``."""
    from reference.security import DtlsServerBridge

    if server.coap_address is None:
        raise RuntimeError("start the CoAP port first")
    coap_host, coap_port = server.coap_address
    if coap_host in ("", "0.0.0.0", "::"):  # a wildcard bind is reachable over loopback
        coap_host = "::1" if coap_host == "::" else "127.0.0.1"
    bridge = DtlsServerBridge(listen=(host, port), forward_to=(coap_host, coap_port),
                              psk_lookup=PskDirectory(server.store, extra_psk))
    addr = await bridge.start()
    server.dtls = bridge
    return bridge, (str(addr[0]), int(addr[1]))
