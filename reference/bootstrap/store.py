"""Durable state of the bootstrap server: per-endpoint device configurations and the event log.

Everything lives in one SQLite database, ``<state-dir>/bootstrap.sqlite3``. SQLite gives us
atomic bulk imports (one transaction: every configuration of a file lands, or none does),
survives restarts, and lets a CLI invocation against the state directory and a running server
share the data safely (WAL mode, short transactions; nothing is cached in memory).

The stored configuration of a device is exactly :meth:`DeviceConfig.to_dict` (the serialized
offline file format of :mod:`reference.model.config`), so exporting one is a plain read.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Iterable

from reference.model.config import ConfigError, DeviceConfig

DB_NAME = "bootstrap.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    endpoint TEXT PRIMARY KEY,
    config   TEXT NOT NULL,           -- DeviceConfig.to_dict() as JSON
    created  REAL NOT NULL,
    updated  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    ts       REAL NOT NULL,
    endpoint TEXT NOT NULL,
    kind     TEXT NOT NULL,
    detail   TEXT NOT NULL            -- JSON object
);
CREATE TABLE IF NOT EXISTS addresses (
    endpoint TEXT PRIMARY KEY,        -- last address a Bootstrap-Request came from
    address  TEXT NOT NULL,
    ts       REAL NOT NULL
);
"""


class DeviceExists(KeyError):
    """``add`` of an endpoint that is already configured (use ``replace=True``)."""


class UnknownDevice(KeyError):
    """No configuration for this endpoint."""


@dataclass(frozen=True)
class Event:
    """One entry of the bootstrap history. ``seq`` increases strictly (1, 2, ...)."""

    seq: int
    ts: float
    endpoint: str
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": self.ts, "endpoint": self.endpoint, "kind": self.kind,
                "detail": self.detail}


class DeviceStore:
    """Per-endpoint configurations and events in ``<state_dir>/bootstrap.sqlite3``.

    ``state_dir=None`` keeps everything in memory (tests, throw-away servers).
    All methods are synchronous and short; they are safe to call from the event loop.
    """

    def __init__(self, state_dir: str | FsPath | None) -> None:
        self.state_dir = FsPath(state_dir) if state_dir is not None else None
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            target = str(self.state_dir / DB_NAME)
        else:
            target = ":memory:"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(target, timeout=10.0, isolation_level=None, check_same_thread=False)
        if self.state_dir is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- devices ---------------------------------------------------------------------------
    def add(self, cfg: DeviceConfig, *, replace: bool = False) -> None:
        """Store one configuration. Raises :class:`DeviceExists` unless ``replace``."""
        self.add_many([cfg], replace=replace)

    def add_many(self, cfgs: Iterable[DeviceConfig], *, replace: bool = False) -> int:
        """Store several configurations in one transaction: all of them or none.

        Raises :class:`DeviceExists` (nothing stored) if one is already configured and
        ``replace`` is false, or if the batch itself names an endpoint twice.
        """
        cfgs = list(cfgs)
        seen: set[str] = set()
        for c in cfgs:
            if c.endpoint in seen:
                raise DeviceExists(f"endpoint {c.endpoint!r} appears twice")
            seen.add(c.endpoint)
        now = time.time()
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                for c in cfgs:
                    doc = json.dumps(c.to_dict(), sort_keys=True)
                    row = cur.execute("SELECT 1 FROM devices WHERE endpoint=?", (c.endpoint,)).fetchone()
                    if row and not replace:
                        raise DeviceExists(f"endpoint {c.endpoint!r} is already configured")
                    cur.execute(
                        "INSERT INTO devices(endpoint, config, created, updated) VALUES(?,?,?,?) "
                        "ON CONFLICT(endpoint) DO UPDATE SET config=excluded.config, updated=excluded.updated",
                        (c.endpoint, doc, now, now))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return len(cfgs)

    def get(self, endpoint: str) -> DeviceConfig | None:
        with self._lock:
            row = self._db.execute("SELECT config FROM devices WHERE endpoint=?", (endpoint,)).fetchone()
        if row is None:
            return None
        try:
            return DeviceConfig.from_dict(json.loads(row[0]), where=f"device {endpoint!r}")
        except (ConfigError, ValueError):
            return None  # a row someone corrupted by hand is treated as absent, never a crash

    def list(self) -> list[DeviceConfig]:
        """All configurations, by endpoint name."""
        with self._lock:
            rows = self._db.execute("SELECT endpoint FROM devices ORDER BY endpoint").fetchall()
        out = []
        for (ep,) in rows:
            cfg = self.get(ep)
            if cfg is not None:
                out.append(cfg)
        return out

    def endpoints(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT endpoint FROM devices ORDER BY endpoint")]

    def remove(self, endpoint: str) -> None:
        """Delete one configuration; :class:`UnknownDevice` if there is none."""
        with self._lock:
            cur = self._db.execute("DELETE FROM devices WHERE endpoint=?", (endpoint,))
        if cur.rowcount == 0:
            raise UnknownDevice(endpoint)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM devices").fetchone()[0])

    # ---- last known client addresses (for server-initiated bootstrap) ----------------------
    def set_address(self, endpoint: str, address: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO addresses(endpoint, address, ts) VALUES(?,?,?) ON CONFLICT(endpoint) "
                "DO UPDATE SET address=excluded.address, ts=excluded.ts", (endpoint, address, time.time()))

    def get_address(self, endpoint: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT address FROM addresses WHERE endpoint=?", (endpoint,)).fetchone()
        return None if row is None else str(row[0])

    # ---- events ----------------------------------------------------------------------------
    def append_event(self, endpoint: str, kind: str, detail: dict[str, Any] | None = None) -> Event:
        ts = time.time()
        doc = json.dumps(detail or {}, sort_keys=True, default=str)
        with self._lock:
            cur = self._db.execute("INSERT INTO events(ts, endpoint, kind, detail) VALUES(?,?,?,?)",
                                   (ts, endpoint, kind, doc))
            seq = int(cur.lastrowid or 0)
        return Event(seq, ts, endpoint, kind, json.loads(doc))

    def events_since(self, since: int = 0, *, endpoint: str | None = None, limit: int = 1000) -> list[Event]:
        """Events with ``seq > since`` in order (optionally only one endpoint's)."""
        q = "SELECT seq, ts, endpoint, kind, detail FROM events WHERE seq > ?"
        args: list[Any] = [since]
        if endpoint is not None:
            q += " AND endpoint = ?"
            args.append(endpoint)
        q += " ORDER BY seq LIMIT ?"
        args.append(max(1, limit))
        with self._lock:
            rows = self._db.execute(q, args).fetchall()
        return [Event(int(s), float(t), e, k, json.loads(d)) for s, t, e, k, d in rows]

    def last_seq(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM events").fetchone()
        return int(row[0] or 0)
