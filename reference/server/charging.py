"""Charging records: per-endpoint counts of the LwM2M traffic the server exchanged with a client.

Requirement LightweightM2M-HLF-SG4 (seed 001, smart grid: "The network operator should be able
to charge smart grid utility back office"): the server keeps, per Endpoint Client Name, records an
operator can retrieve (HTTP ``GET /api/charging``, ``GET /api/clients/{ep}/charging``, CSV,
``lwm2m-server ctl charging``; docs/server-api.md).

What is counted (the contract the conformance case LWM2M-SRV-CHG-001 checks on the wire)
    Every CoAP message the server's CoAP endpoints receive or send -- requests, responses,
    notifications, Empty ACKs and RSTs, retransmissions and duplicates included -- counts as one
    message, with its size in bytes = the CoAP message (RFC 7252 §3: header, token, options,
    payload marker and payload; the UDP payload), excluding IP and UDP headers. Over DTLS the
    plain CoAP message is counted, not the DTLS record around it. *uplink* = client to server
    (Register, Update, De-register, notifications, responses to the server's requests), *downlink*
    = server to client (responses to those, DM requests). ``registrations``, ``updates`` and
    ``deregistrations`` count the accepted Register / Update / De-register operations.

Whose message it is
    * a request the server answers (Register, Update, De-register, anything else) and everything
      of its exchange -- the request and its duplicates, an Empty ACK for a separate response,
      the response (piggybacked, separate or NON, matched by token) -- belongs to the endpoint the
      request concerns: the endpoint it registers, or the registration it updates/de-registers
      (Core 1.1.1 §6.2). Requests that concern no registration (refused Register, unknown
      location) belong to the endpoint registered at the sender's address, if any;
    * every other message (the server's DM requests, the client's responses to them,
      notifications, their ACKs/RSTs) belongs to the endpoint whose registration holds the peer's
      transport address: the address of its last Register or Update (Core 1.1.1 §6.2.2);
    * what matches no endpoint is added to the ``unattributed`` record.
    Records outlive registrations (a de-registered endpoint keeps its record).

Cost and durability
    The hot path only adds to in-memory *deltas* (two wrapped socket callbacks and three
    registration hooks, a few µs per registration); only endpoints active since the last flush
    have one, so memory does not grow with the number of endpoints. Every ``flush_interval``
    seconds (default 1 s), and at a clean stop, the deltas are added to the totals in their own
    SQLite database (``charging.sqlite3`` next to the registration store; not the registration
    database, so they never wait for, or delay, a registration's group commit) by a writer
    thread. So the records survive a restart; a crash loses at most the last ``flush_interval``
    of counts. Queries read the database (in the writer thread) plus the pending deltas.
"""
from __future__ import annotations

import asyncio
import contextvars
import csv
import io
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:  # pragma: no cover
    from aiocoap import Message

    from reference.coap.endpoint import CoapEndpoint
    from reference.server.registration import Registration

log = logging.getLogger(__name__)

DB_NAME = "charging.sqlite3"
#: CSV / JSON field order.
FIELDS = ("endpoint", "uplink_messages", "uplink_bytes", "downlink_messages", "downlink_bytes",
          "registrations", "updates", "deregistrations", "first_at", "last_at")
UNATTRIBUTED = ""  # database key of the unattributed record
_SCHEMA = ("CREATE TABLE IF NOT EXISTS charging (endpoint TEXT PRIMARY KEY, uplink_messages INTEGER, "
           "uplink_bytes INTEGER, downlink_messages INTEGER, downlink_bytes INTEGER, registrations INTEGER, "
           "updates INTEGER, deregistrations INTEGER, first_at REAL, last_at REAL) WITHOUT ROWID")
# add a flush's deltas to the stored totals (first_at is kept, last_at replaced); multi-row
# statements: one sqlite3_step (one GIL hand-off of the writer thread) per _ROWS_PER_STATEMENT rows
_ROWS_PER_STATEMENT = 64
_ADD_HEAD = "INSERT INTO charging VALUES "
_ADD_TAIL = (" ON CONFLICT(endpoint) DO UPDATE SET "
        "uplink_messages = uplink_messages + excluded.uplink_messages, "
        "uplink_bytes = uplink_bytes + excluded.uplink_bytes, "
        "downlink_messages = downlink_messages + excluded.downlink_messages, "
        "downlink_bytes = downlink_bytes + excluded.downlink_bytes, "
        "registrations = registrations + excluded.registrations, updates = updates + excluded.updates, "
        "deregistrations = deregistrations + excluded.deregistrations, last_at = excluded.last_at")
_ADD_SQL: dict[int, str] = {}


def _add_sql(n: int) -> str:
    sql = _ADD_SQL.get(n)
    if sql is None:
        sql = _ADD_SQL[n] = _ADD_HEAD + ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * n) + _ADD_TAIL
    return sql
_ACK = 2
_MAX_PENDING = 10_000  # exchanges waiting for their handler / response (bounded under floods)
# delta layout: [uplink msgs, uplink bytes, downlink msgs, downlink bytes, registrations, updates,
#                deregistrations, first_at, last_at]
_UM, _UB, _DM, _DB, _REG, _UPD, _DEREG, _FIRST, _LAST = range(9)


def _new_delta() -> list:
    now = time.time()
    return [0, 0, 0, 0, 0, 0, 0, now, now]


def _as_dict(row: tuple) -> dict[str, Any]:
    return dict(zip(FIELDS, row))


class _Exchange:
    """One request being handled: its pending counts and the endpoint it turns out to concern."""

    __slots__ = ("remote", "token", "counts", "target")

    def __init__(self, remote: tuple, token: bytes, counts: list[int] | None) -> None:
        self.remote = remote
        self.token = token
        self.counts = counts  # [up msgs, up bytes, down msgs, down bytes] seen before the handler ran
        self.target: str | None = None


_CURRENT: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar("lwm2m_charging", default=None)


class ChargingRecords:
    """Per-endpoint traffic records of one server. ``path`` None = in memory only.

    Use: ``await open()``; ``install(endpoint)`` for every CoAP endpoint; around each request
    handler ``h = begin(request, remote)`` ... ``end(h)``; the hooks ``registered``, ``updated``,
    ``deregistered`` from the commits; queries ``await get(ep)`` / ``await all()``;
    ``await close()``. ``registrations`` (optional) lists the current registrations; it is used
    to drop addresses no registration holds any more from the address index."""

    def __init__(self, path: str | os.PathLike | None, *, flush_interval: float = 1.0,
                 registrations: "Callable[[], Iterable[Registration]] | None" = None) -> None:
        self.path = None if path in (None, ":memory:") else os.fspath(path)  # type: ignore[arg-type]
        self.flush_interval = flush_interval
        self.registrations = registrations
        self._pending: dict[str, list] = {}      # endpoint -> delta since the last flush
        self._by_addr: dict[tuple, str] = {}     # transport address -> endpoint holding it
        self._prune_at = 4096
        self._rx: dict[tuple, list[int]] = {}    # (remote, MID) of a received request -> counts
        self._tx: dict[tuple, str] = {}          # (remote, token) of a handled request -> endpoint
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task | None = None
        self._swaps = 0
        self.flushes = 0

    # ---- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> None:
        """Open (creating) the database and start the periodic flush."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="charging")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open_db)
        self._task = loop.create_task(self._flush_loop())

    def _open_db(self) -> None:
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        db = sqlite3.connect(self.path or ":memory:", isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        """Write the pending deltas, then close the database."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._executor is None:
            return
        await self.flush()
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:  # keep counting; the deltas were put back for the next flush
                log.exception("charging records: flush failed")

    async def flush(self) -> None:
        """Add the pending deltas to the stored totals (one transaction, in the writer thread)."""
        if not self._pending or self._executor is None:
            return
        pending, self._pending = self._pending, {}
        self._swaps += 1
        items = list(pending.items())
        batches = []
        for i in range(0, len(items), _ROWS_PER_STATEMENT):
            chunk = items[i:i + _ROWS_PER_STATEMENT]
            params: list[Any] = []
            for ep, d in chunk:
                params.append(ep)
                params.extend(d)
            batches.append((_add_sql(len(chunk)), params))
        # submitted at once (no await before): a query submitted later runs after this write
        fut = asyncio.get_running_loop().run_in_executor(self._executor, self._write, batches)
        try:
            await fut
        except BaseException:
            for ep, d in pending.items():  # not written: merge back for the next flush
                self._merge(ep, d)
            raise
        self.flushes += 1

    def _merge(self, ep: str, d: list) -> None:
        cur = self._pending.get(ep)
        if cur is None:
            self._pending[ep] = d
            return
        for i in range(_DEREG + 1):
            cur[i] += d[i]
        cur[_FIRST] = min(cur[_FIRST], d[_FIRST])

    def _write(self, batches: list[tuple[str, list]]) -> None:
        db = self._db
        if db is None:
            raise RuntimeError("charging database closed")
        db.execute("BEGIN")
        try:
            for sql, params in batches:
                db.execute(sql, params)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _read(self, endpoint: str | None) -> list[tuple]:
        db = self._db
        if db is None:
            raise RuntimeError("charging database closed")
        if endpoint is None:
            return db.execute("SELECT * FROM charging ORDER BY endpoint").fetchall()
        return db.execute("SELECT * FROM charging WHERE endpoint = ?", (endpoint,)).fetchall()

    # ---- queries ------------------------------------------------------------------------------
    async def _snapshot(self, endpoint: str | None) -> dict[str, tuple]:
        """Stored totals plus pending deltas (retried if a flush swapped deltas meanwhile)."""
        loop = asyncio.get_running_loop()
        for _ in range(10):
            swaps = self._swaps
            rows = await loop.run_in_executor(self._executor, self._read, endpoint)
            if swaps == self._swaps:
                break
        out = {r[0]: r for r in rows}
        pend = self._pending.items() if endpoint is None else (
            [(endpoint, self._pending[endpoint])] if endpoint in self._pending else [])
        for ep, d in pend:
            old = out.get(ep)
            if old is None:
                out[ep] = (ep, *d)
            else:
                out[ep] = (ep, *(old[1 + i] + d[i] for i in range(_DEREG + 1)), old[1 + _FIRST], d[_LAST])
        return out

    async def get(self, endpoint: str) -> dict[str, Any] | None:
        """The record of ``endpoint`` (FIELDS), None when it has none."""
        row = (await self._snapshot(endpoint)).get(endpoint)
        return _as_dict(row) if row is not None and endpoint != UNATTRIBUTED else None

    async def all(self) -> dict[str, Any]:
        """``{"count", "records": [...sorted by endpoint], "unattributed": {...}}``."""
        snap = await self._snapshot(None)
        un = snap.pop(UNATTRIBUTED, None) or (UNATTRIBUTED, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0)
        records = [_as_dict(snap[ep]) for ep in sorted(snap)]
        return {"count": len(records), "records": records, "unattributed": _as_dict(un)}

    @staticmethod
    def to_csv(records: Iterable[dict[str, Any]]) -> str:
        """RFC 4180 CSV with a header line (FIELDS)."""
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\r\n")
        w.writerow(FIELDS)
        for r in records:
            w.writerow([r[f] for f in FIELDS])
        return out.getvalue()

    # ---- the socket taps (hot path) -----------------------------------------------------------
    def install(self, endpoint: "CoapEndpoint") -> None:
        """Count every datagram ``endpoint`` receives and sends (wraps its two socket-level
        methods on the instance; the endpoint's behaviour is unchanged)."""
        receive: Callable[[bytes, Any], None] = endpoint.datagram_received
        send: Callable[[bytes, Any], None] = endpoint._send
        tap_in, tap_out = self.tap_in, self.tap_out

        def datagram_received(data: bytes, addr: Any) -> None:
            try:
                tap_in(data, addr)
            except Exception:  # bookkeeping must never stop a datagram
                log.exception("charging: receive tap failed")
            receive(data, addr)

        def _send(data: bytes, remote: Any) -> None:
            try:
                tap_out(data, remote)
            except Exception:
                log.exception("charging: send tap failed")
            send(data, remote)

        endpoint.datagram_received = datagram_received  # type: ignore[method-assign]
        endpoint._send = _send  # type: ignore[method-assign]

    def _delta(self, endpoint: str) -> list:
        d = self._pending.get(endpoint)
        if d is None:
            d = self._pending[endpoint] = _new_delta()
        else:
            d[_LAST] = time.time()
        return d

    def tap_in(self, data: bytes, addr: Any) -> None:
        n = len(data)
        if len(addr) != 2:
            addr = (addr[0], addr[1])
        # a request (code class 0, not Empty) in a CON or NON: held until its handler says whose
        if n >= 4 and 0 < data[1] < 32 and not data[0] & 0x20:
            key = (addr, (data[2] << 8) | data[3])
            c = self._rx.get(key)
            if c is None:
                if len(self._rx) >= _MAX_PENDING:
                    self._release_pending()
                self._rx[key] = [1, n, 0, 0]
            else:  # a duplicate while the request is being handled
                c[0] += 1
                c[1] += n
            return
        d = self._delta(self._by_addr.get(addr, UNATTRIBUTED))
        d[_UM] += 1
        d[_UB] += n

    def tap_out(self, data: bytes, remote: Any) -> None:
        n = len(data)
        b0 = data[0]
        code = data[1]
        if code >= 64:  # a response: to a request the server handled?
            ep = self._tx.pop((remote, data[4:4 + (b0 & 0x0F)]), None)
            if ep is not None:
                d = self._delta(ep)
                d[_DM] += 1
                d[_DB] += n
                return
        if (b0 >> 4) & 3 >= _ACK:  # ACK/RST answering a request not (yet) through its handler
            key = (remote, (data[2] << 8) | data[3])
            c = self._rx.get(key)
            if c is not None:
                if code == 0 and (b0 >> 4) & 3 == _ACK:  # Empty ACK: a separate response follows
                    c[2] += 1
                    c[3] += n
                    return
                del self._rx[key]  # answered by the message layer itself (4.02, RST, duplicate)
                d = self._delta(self._by_addr.get(remote, UNATTRIBUTED))
                d[_UM] += c[0]
                d[_UB] += c[1]
                d[_DM] += c[2] + 1
                d[_DB] += c[3] + n
                return
        d = self._delta(self._by_addr.get(remote, UNATTRIBUTED))
        d[_DM] += 1
        d[_DB] += n

    def _release_pending(self) -> None:
        """Too many requests without a handler outcome: charge them by address now."""
        for (remote, _), c in self._rx.items():
            d = self._delta(self._by_addr.get(remote, UNATTRIBUTED))
            for i in range(4):
                d[i] += c[i]
        self._rx.clear()

    # ---- request handling (called by the server around its handler) --------------------------
    def begin(self, request: "Message", remote: tuple) -> tuple[_Exchange, contextvars.Token]:
        ex = _Exchange(remote, request.token, self._rx.pop((remote, request.mid), None))
        return ex, _CURRENT.set(ex)

    def end(self, handle: tuple[_Exchange, contextvars.Token]) -> None:
        """The handler returned: charge the request to its endpoint; its response will follow."""
        ex, token = handle
        _CURRENT.reset(token)
        ep = ex.target if ex.target is not None else self._by_addr.get(ex.remote, UNATTRIBUTED)
        c = ex.counts
        if c is not None:
            d = self._delta(ep)
            for i in range(4):
                d[i] += c[i]
        if len(self._tx) >= _MAX_PENDING:
            self._tx.clear()
        self._tx[(ex.remote, ex.token)] = ep

    def _concerns(self, endpoint: str) -> list:
        """The running request (if any) concerns ``endpoint``; returns its delta."""
        ex = _CURRENT.get()
        if ex is not None:
            ex.target = endpoint
        return self._delta(endpoint)

    def _bind(self, address: tuple, endpoint: str) -> None:
        by_addr = self._by_addr
        by_addr[address] = endpoint
        if len(by_addr) > self._prune_at:  # addresses left behind by clients that moved
            if self.registrations is not None:
                live = {r.address: r.endpoint for r in self.registrations()}
                self._by_addr = {a: e for a, e in by_addr.items() if live.get(a) == e}
            self._prune_at = max(4096, 2 * len(self._by_addr))

    # ---- registration hooks (Core 1.1.1 §6.2) ------------------------------------------------
    def registered(self, reg: "Registration", replaced: "Registration | None" = None) -> None:
        """A Register was committed: the endpoint now holds the registration's address."""
        if replaced is not None and self._by_addr.get(replaced.address) == reg.endpoint:
            del self._by_addr[replaced.address]
        self._bind(reg.address, reg.endpoint)
        self._concerns(reg.endpoint)[_REG] += 1

    def updated(self, reg: "Registration") -> None:
        """An Update was committed (it may have moved the client's address, Core 1.1.1 §6.2.2)."""
        self._bind(reg.address, reg.endpoint)
        self._concerns(reg.endpoint)[_UPD] += 1

    def deregistered(self, reg: "Registration") -> None:
        """A De-register was committed: the address is released (the 2.02 still counts here)."""
        if self._by_addr.get(reg.address) == reg.endpoint:
            del self._by_addr[reg.address]
        self._concerns(reg.endpoint)[_DEREG] += 1

    # ---- HTTP API (docs/server-api.md) ------------------------------------------------------
    def routes(self) -> list[Any]:
        """``GET /api/charging[?format=csv]`` and ``GET /api/clients/{ep}/charging[?format=csv]``."""
        from aiohttp import web

        def _csv(text: str) -> web.Response:
            return web.Response(text=text, content_type="text/csv", charset="utf-8")

        def _wants_csv(request: web.Request) -> bool:
            fmt = request.query.get("format", "json")
            if fmt not in ("json", "csv"):
                raise web.HTTPBadRequest(text='{"error": "format must be json or csv"}',
                                         content_type="application/json")
            return fmt == "csv"

        async def all_records(request: web.Request) -> web.Response:
            csv_wanted = _wants_csv(request)
            doc = await self.all()
            return _csv(self.to_csv(doc["records"])) if csv_wanted else web.json_response(doc)

        async def one_record(request: web.Request) -> web.Response:
            ep = request.match_info["ep"]
            csv_wanted = _wants_csv(request)
            rec = await self.get(ep)
            if rec is None:
                return web.json_response({"error": f"no charging record for endpoint {ep!r}"}, status=404)
            return _csv(self.to_csv([rec])) if csv_wanted else web.json_response(rec)

        return [web.get("/api/charging", all_records), web.get("/api/clients/{ep}/charging", one_record)]
