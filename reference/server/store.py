"""Registration store: an in-memory index over an embedded SQLite database (WAL, group commit).

Durability contract: the coroutine returned by :meth:`RegistrationStore.put` /
:meth:`~RegistrationStore.delete` completes only after the change is committed (with
``synchronous=FULL`` by default, i.e. fsynced), so the server sends 2.01/2.04/2.02 after the
commit. Changes are applied to the in-memory index at once (later requests see them) and
written in *group commits*: every change that arrives while its shard's commit is running, or
within ``commit_window`` seconds, goes into that shard's next single transaction, so thousands
of registrations per second need only a few hundred fsyncs. The statements run on the event
loop; the COMMIT (fsync) runs in a writer thread so the loop keeps serving meanwhile; WAL
checkpoints run in another thread so no commit waits for one. Optionally (``shards > 1``)
several database files commit in parallel; on this project's VM disk one shard was as fast.

Expiry (Core 1.1.1 §6.2.1: a registration not updated within its Lifetime is removed) uses one
heap of ``(expires, location)`` entries with lazy deletion, popped by :meth:`pop_expired`, not
a task or timer per client.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import os
import sqlite3
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

from reference.server.registration import Registration

log = logging.getLogger(__name__)

# Rows are keyed by an increasing integer (the Registration's ``rowid``), not by the random
# location: new registrations then append to the end of the B-tree, so a group commit of dozens
# of registrations writes a few pages instead of one page per row (the fsync cost grows with the
# bytes written). Location and endpoint uniqueness are kept by the in-memory index; SQL indexes
# would cost every insert.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS registrations (
    id INTEGER PRIMARY KEY,
    location TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    lifetime INTEGER NOT NULL,
    lwm2m TEXT NOT NULL,
    binding TEXT NOT NULL,
    sms TEXT,
    queue INTEGER NOT NULL,
    links TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL,
    registered REAL NOT NULL,
    updated REAL NOT NULL,
    expires REAL NOT NULL,
    identity BLOB
);
"""
_UPSERT_HEAD = "INSERT OR REPLACE INTO registrations VALUES "
_ROW_PLACEHOLDERS = "(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
_DELETE = "DELETE FROM registrations WHERE id = ?"
_PUT, _DEL = 0, 1


class StoreError(RuntimeError):
    """The database could not commit a change."""


class _Shard:
    """One SQLite database file with its own writer thread and group-commit pipeline."""

    def __init__(self, store: "RegistrationStore", path: str | None) -> None:
        self.store = store
        self.path = path
        self.db: sqlite3.Connection | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.checkpointer: _Checkpointer | None = None
        self.pending: list[tuple] = []
        self.pending_fut: asyncio.Future | None = None
        self.flushing = False
        self.flush_task: asyncio.Task | None = None
        self.commits = 0
        self.rows_written = 0
        self.stage_seconds = 0.0
        self.commit_seconds = 0.0
        self.commit_max = 0.0
        self.commit_inner_seconds = 0.0  # inside the writer thread: the COMMIT statement alone

    async def open(self) -> list[tuple]:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="regstore")
        return await self.store._loop.run_in_executor(self.executor, self._open_db)  # type: ignore[union-attr]

    def _open_db(self) -> list[tuple]:
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        db = sqlite3.connect(self.path or ":memory:", isolation_level=None,
                             check_same_thread=False)
        # small pages: a commit rewrites whole pages, and the fsync cost grows with the bytes
        # (only effective for a new database; WAL mode fixes the page size afterwards)
        db.execute(f"PRAGMA page_size={self.store.page_size}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.store.synchronous}")
        cols = [r[1] for r in db.execute("PRAGMA table_info(registrations)")]
        if cols and "id" not in cols:  # database of an earlier layout (keyed by location)
            db.execute("ALTER TABLE registrations RENAME TO registrations_old")
            db.execute(_SCHEMA)
            db.execute("INSERT INTO registrations SELECT NULL, * FROM registrations_old")
            db.execute("DROP TABLE registrations_old")
        db.execute(_SCHEMA)
        self.db = db
        if self.path is not None:
            # Checkpoints (copying the WAL into the database file, with its own fsync) run in a
            # separate thread and connection, so no group commit ever waits for one.
            db.execute("PRAGMA wal_autocheckpoint=0")
            self.checkpointer = _Checkpointer(self.path, self.store.checkpoint_interval)
            self.checkpointer.start()
        return db.execute("SELECT * FROM registrations").fetchall()

    def schedule(self, op: tuple) -> asyncio.Future:
        self.pending.append(op)
        fut = self.pending_fut
        if fut is None:
            fut = self.pending_fut = self.store._loop.create_future()  # type: ignore[union-attr]
            fut.add_done_callback(_consume_exception)
            if not self.flushing:
                self._start_flush()
        return fut

    def _start_flush(self) -> None:
        self.flushing = True
        self.flush_task = self.store._loop.create_task(self._flush())  # type: ignore[union-attr]

    async def _flush(self) -> None:
        loop = self.store._loop
        try:
            while self.pending:
                if self.store.commit_window > 0:
                    await asyncio.sleep(self.store.commit_window)
                else:
                    await asyncio.sleep(0)  # let this loop iteration's datagrams join
                ops, fut = self.pending, self.pending_fut
                self.pending, self.pending_fut = [], None
                try:
                    # statements run here (cheap, no lock hand-offs); the COMMIT, which waits
                    # for the fsync, runs in the writer thread so the event loop keeps serving
                    # requests meanwhile
                    t0 = time.perf_counter()
                    self._stage(ops)
                    t1 = time.perf_counter()
                    if self.store.writer_thread:
                        await loop.run_in_executor(self.executor, self._commit)  # type: ignore[union-attr]
                    else:
                        self._commit()
                except Exception as e:
                    log.exception("registration store commit failed")
                    if fut is not None and not fut.done():
                        fut.set_exception(StoreError(str(e)))
                else:
                    t2 = time.perf_counter()
                    self.stage_seconds += t1 - t0
                    self.commit_seconds += t2 - t1
                    self.commit_max = max(self.commit_max, t2 - t1)
                    self.commits += 1
                    self.rows_written += len(ops)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
        finally:
            self.flushing = False
            self.flush_task = None
            if self.pending:  # arrived during the final await
                self._start_flush()

    def _stage(self, ops: list[tuple]) -> None:
        """BEGIN and execute ``ops`` (in order); the transaction stays open for :meth:`_commit`."""
        db = self.db
        if db is None:
            raise StoreError("store closed")
        db.execute("BEGIN")
        try:
            puts: list[tuple] = []
            for kind, arg in ops:
                if kind == _PUT:
                    puts.append(arg)
                else:
                    if puts:
                        _upsert(db, puts)
                        puts = []
                    db.execute(_DELETE, (arg,))
            if puts:
                _upsert(db, puts)
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _commit(self) -> None:
        db = self.db
        if db is None:
            raise StoreError("store closed")
        try:
            t0 = time.perf_counter()
            db.execute("COMMIT")
            self.commit_inner_seconds += time.perf_counter() - t0
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        while self.flushing or self.pending:
            if self.flush_task is not None:
                await asyncio.shield(self.flush_task)
            elif self.pending:
                self._start_flush()
            else:
                await asyncio.sleep(0)
        loop = self.store._loop
        if self.checkpointer is not None:
            cp, self.checkpointer = self.checkpointer, None
            await loop.run_in_executor(None, cp.stop)  # type: ignore[union-attr]
        if self.executor is not None:
            db = self.db

            def _close() -> None:
                if db is not None:
                    try:
                        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    except sqlite3.Error:
                        pass
                    db.close()
            await loop.run_in_executor(self.executor, _close)  # type: ignore[union-attr]
            self.executor.shutdown(wait=True)
            self.executor = None
            self.db = None


class RegistrationStore:
    """Registrations by endpoint and by location, persisted under ``path`` (``None`` or
    ``":memory:"`` = not persisted).

    Persistence is split over ``shards`` SQLite files (``path``, ``path``-1, ...; a row lives in
    the shard ``crc32(location) % shards``), each with its own writer thread, so several group
    commits (and their fsyncs) are in flight at once and a change rarely waits for another
    commit to finish first.

    Use: ``store = RegistrationStore(path); loaded = await store.open()``; then ``get_*``
    (synchronous, in-memory), ``await store.put(reg)``, ``await store.delete(reg)``,
    ``store.pop_expired(now)`` and finally ``await store.close()``.
    """

    def __init__(self, path: str | os.PathLike | None, *, synchronous: str = "FULL",
                 commit_window: float = 0.0, writer_thread: bool = True,
                 checkpoint_interval: float = 0.5, shards: int = 1,
                 page_size: int = 1024) -> None:
        self.path = None if path in (None, ":memory:") else os.fspath(path)  # type: ignore[arg-type]
        self.synchronous = synchronous
        self.commit_window = commit_window
        self.writer_thread = writer_thread
        self.checkpoint_interval = checkpoint_interval
        self.page_size = page_size
        self.nshards = max(1, shards) if self.path is not None else 1
        self._by_ep: dict[str, Registration] = {}
        self._by_loc: dict[str, Registration] = {}
        self._heap: list[tuple[float, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._shards: list[_Shard] = []
        self._next_rowid = 1

    def _shard_path(self, i: int) -> str | None:
        if self.path is None:
            return None
        if i == 0:
            return self.path
        root, ext = os.path.splitext(self.path)
        return f"{root}-{i}{ext}"

    def _shard(self, location: str) -> _Shard:
        return self._shards[zlib.crc32(location.encode()) % self.nshards]

    # ---- statistics (summed over shards) -------------------------------------------------------
    @property
    def commits(self) -> int:
        return sum(s.commits for s in self._shards)

    @property
    def rows_written(self) -> int:
        return sum(s.rows_written for s in self._shards)

    @property
    def stage_seconds(self) -> float:
        """Time spent executing statements (event-loop thread)."""
        return sum(s.stage_seconds for s in self._shards)

    @property
    def commit_seconds(self) -> float:
        """Time from COMMIT start to its completion, fsync included (writer threads)."""
        return sum(s.commit_seconds for s in self._shards)

    @property
    def commit_inner_seconds(self) -> float:
        """Time the COMMIT statements themselves took in the writer threads."""
        return sum(s.commit_inner_seconds for s in self._shards)

    @property
    def commit_max(self) -> float:
        return max((s.commit_max for s in self._shards), default=0.0)

    # ---- lifecycle ----------------------------------------------------------------------------
    async def open(self) -> list[Registration]:
        """Open (creating if needed) the databases and load every stored registration."""
        self._loop = asyncio.get_running_loop()
        self._shards = [_Shard(self, self._shard_path(i)) for i in range(self.nshards)]
        if self.path is not None:  # shards of an earlier run with more shards
            i = self.nshards
            while os.path.exists(self._shard_path(i)):  # type: ignore[arg-type]
                self._shards.append(_Shard(self, self._shard_path(i)))
                i += 1
        rows_by_shard = [await shard.open() for shard in self._shards]
        loaded = []
        moved: list[tuple[_Shard, Registration]] = []
        for shard, rows in zip(self._shards, rows_by_shard):
            for row in rows:
                reg = Registration.from_row(row)
                self._next_rowid = max(self._next_rowid, reg.rowid + 1)  # type: ignore[operator]
                old = self._by_ep.get(reg.endpoint)
                if old is not None:  # crash between two shards' commits: keep the newer one
                    if old.registered >= reg.registered:
                        shard.schedule((_DEL, reg.rowid))
                        continue
                    self._unindex(old)
                    self._shard(old.location).schedule((_DEL, old.rowid))
                self._index(reg)
                loaded.append(reg)
                if self._shard(reg.location) is not shard:
                    moved.append((shard, reg))
        for shard, reg in moved:  # the shard count changed: move rows to their shard
            shard.schedule((_DEL, reg.rowid))
            reg.rowid = self._new_rowid()  # ids are unique per run across shards
            self._shard(reg.location).schedule((_PUT, reg.row()))
        extra = self._shards[self.nshards:]
        if extra:
            for shard in extra:
                await shard.close()
            del self._shards[self.nshards:]
        return [r for r in loaded if self._by_loc.get(r.location) is r]

    async def close(self) -> None:
        """Commit what is pending, then close the databases."""
        for shard in self._shards:
            await shard.close()

    # ---- reads (in memory) --------------------------------------------------------------------
    def get_by_endpoint(self, endpoint: str) -> Registration | None:
        return self._by_ep.get(endpoint)

    def get_by_location(self, location: str) -> Registration | None:
        return self._by_loc.get(location)

    def __len__(self) -> int:
        return len(self._by_loc)

    def __iter__(self) -> Iterator[Registration]:
        return iter(list(self._by_loc.values()))

    # ---- writes -------------------------------------------------------------------------------
    def _index(self, reg: Registration) -> None:
        self._by_ep[reg.endpoint] = reg
        self._by_loc[reg.location] = reg
        heapq.heappush(self._heap, (reg.expires, reg.location))

    def put(self, reg: Registration, replaces: Registration | None = None) -> "asyncio.Future[Any]":
        """Insert or update ``reg`` (and remove ``replaces``, the same endpoint's older
        registration). The index changes now; the returned future completes after commit."""
        fut_old = None
        if replaces is not None and replaces is not reg:
            self._unindex(replaces)
            fut_old = self._shard(replaces.location).schedule((_DEL, replaces.rowid))
        if reg.rowid is None:
            reg.rowid = self._new_rowid()
        if self._by_loc.get(reg.location) is not reg:
            self._by_ep[reg.endpoint] = reg
            self._by_loc[reg.location] = reg
        heapq.heappush(self._heap, (reg.expires, reg.location))
        fut = self._shard(reg.location).schedule((_PUT, reg.row()))
        if fut_old is not None and fut_old is not fut:
            return asyncio.gather(fut_old, fut)
        return fut

    def forget(self, reg: Registration) -> None:
        """Drop ``reg`` from the in-memory index only (its commit failed: it was never durable)."""
        self._unindex(reg)

    def restore(self, reg: Registration) -> None:
        """Put ``reg`` back in the in-memory index (the commit that was to replace it failed, so
        the database still holds it)."""
        self._index(reg)

    def touch(self, reg: Registration) -> asyncio.Future:
        """Persist changed fields of an indexed registration (Update) and its new expiry."""
        heapq.heappush(self._heap, (reg.expires, reg.location))
        return self._shard(reg.location).schedule((_PUT, reg.row()))

    def delete(self, reg: Registration) -> asyncio.Future:
        self._unindex(reg)
        return self._shard(reg.location).schedule((_DEL, reg.rowid))

    def _new_rowid(self) -> int:
        rid = self._next_rowid
        self._next_rowid = rid + 1
        return rid

    def _unindex(self, reg: Registration) -> None:
        if self._by_loc.get(reg.location) is reg:
            del self._by_loc[reg.location]
        if self._by_ep.get(reg.endpoint) is reg:
            del self._by_ep[reg.endpoint]

    def pop_expired(self, now: float) -> list[Registration]:
        """Remove and return the registrations whose ``expires`` is before ``now`` (their
        deletion is committed in the background)."""
        heap = self._heap
        out = []
        while heap and heap[0][0] < now:
            exp, loc = heapq.heappop(heap)
            reg = self._by_loc.get(loc)
            if reg is not None and reg.expires == exp:  # stale heap entries are skipped
                out.append(reg)
                self.delete(reg)
        if len(heap) > 4 * len(self._by_loc) + 1024:  # compact after many Updates
            self._heap = [(r.expires, r.location) for r in self._by_loc.values()]
            heapq.heapify(self._heap)
        return out


class _Checkpointer(threading.Thread):
    """Runs ``PRAGMA wal_checkpoint(PASSIVE)`` every ``interval`` seconds on its own connection
    (PASSIVE never blocks the writer; SQLite restarts the WAL once it is fully checkpointed)."""

    def __init__(self, path: str, interval: float) -> None:
        super().__init__(name="regstore-checkpoint", daemon=True)
        self.path = path
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            log.exception("checkpointer cannot open %s", self.path)
            return
        try:
            while not self._stop_event.wait(self.interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as e:
                    log.warning("WAL checkpoint failed: %s", e)
        finally:
            db.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)


_ROWS_PER_STATEMENT = 64  # 64 * 15 parameters stays below SQLite's classic 999 limit
_MULTI: dict[int, str] = {}


def _upsert(db: sqlite3.Connection, rows: list[tuple]) -> None:
    """Write rows with multi-row INSERT statements: one sqlite3_step per 64 rows instead of one
    per row (each step releases and re-takes the GIL, which the event loop thread feels)."""
    for i in range(0, len(rows), _ROWS_PER_STATEMENT):
        chunk = rows[i:i + _ROWS_PER_STATEMENT]
        n = len(chunk)
        sql = _MULTI.get(n)
        if sql is None:
            sql = _MULTI[n] = _UPSERT_HEAD + ",".join([_ROW_PLACEHOLDERS] * n)
        db.execute(sql, [v for row in chunk for v in row])


def _consume_exception(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()  # avoid "exception was never retrieved" when nobody awaited

