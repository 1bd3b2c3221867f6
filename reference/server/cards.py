"""Card-issuer awareness: which smart card sits in which device (DM_SC use case, seed 004).

The post-condition of the use case "Further Provisioning after Bootstrap from Smartcard" is
"Card issuer is aware of the new combination of Smart Card and Device" (requirement
DM-SC-GEN-X.1 in fixtures/requirements.toml). The reference server plays the card issuer's DM
server: every time a client registers (Core 1.1.1 §6.2.1 Register, also a re-registration after
a card change) and its object links (Core 1.1.1 §6.2.1, the Register payload) announce an
instance of object 504 (Remote SIM Provisioning), this module reads

* the card identity: ``/504/0/11`` ICCID (multiple-instance resource; instance 0 is the active
  profile per the object's definition, see reference/objects/504-remote-sim-provisioning.xml),
* the device identity: ``/3/0/2`` Serial Number, with ``/3/0/0`` Manufacturer and ``/3/0/1``
  Model Number as context (Core 1.1.1 Appendix E.4 Device object). The combination key is
  (ICCID, device), device = ``manufacturer/model/serial`` so that two vendors' equal serial
  numbers are not taken for one device,

records the pair in the SQLite table ``card_combinations`` (database ``cards.sqlite3`` next to
the server's registration store, or in memory) and emits a ``card-combination`` event (Python
:class:`~reference.server.events.EventBus` and ``GET /api/events?kind=card-combination``) when the
pair was never seen before. ``data.reason`` tells why it is new:

``new-card-in-known-device``   the device was seen with other card(s) (``previous_iccids``)
``known-card-in-new-device``   the card was seen in other device(s) (``previous_devices``)
``new-card-new-device``        neither was seen

A combination seen again only updates ``last_seen`` / ``endpoint``. A client that does not
expose /504 (or /3/0/2) is skipped with a ``log`` line: awareness is a SHOULD of the derived
requirement, not a registration precondition, so it never delays or refuses a registration.
The reads run in a task after the registration is committed, each bounded by ``read_timeout``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from reference.model.path import Path
from reference.server.events import Event, EventKind

if TYPE_CHECKING:  # pragma: no cover
    from reference.server.server import LwM2MServer

log = logging.getLogger(__name__)

DB_NAME = "cards.sqlite3"
#: Remote SIM Provisioning object (OMA registry 504) and its ICCID resource
RSP_OBJECT = 504
ICCID_PATH = Path(504, 0, 11)
DEVICE_MANUFACTURER = Path(3, 0, 0)
DEVICE_MODEL = Path(3, 0, 1)
DEVICE_SERIAL = Path(3, 0, 2)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS card_combinations (
    iccid TEXT NOT NULL,
    device TEXT NOT NULL,
    manufacturer TEXT NOT NULL,
    model TEXT NOT NULL,
    serial TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    PRIMARY KEY (iccid, device)
)
"""


@dataclass
class Combination:
    """One (card, device) pair the server has seen."""

    iccid: str
    device: str
    manufacturer: str
    model: str
    serial: str
    endpoint: str
    first_seen: float
    last_seen: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class CardCombinationStore:
    """The ``card_combinations`` table. Synchronous sqlite3 (a handful of rows per registration
    of a card-carrying device; the registration store's group commit is not needed here)."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = None if path in (None, ":memory:") else os.fspath(path)  # type: ignore[arg-type]
        self._db: sqlite3.Connection | None = None

    def open(self) -> None:
        if self.path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._db = sqlite3.connect(self.path or ":memory:", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _q(self, sql: str, args: tuple = ()) -> list[tuple]:
        if self._db is None:
            raise RuntimeError("card combination store is not open")
        return self._db.execute(sql, args).fetchall()

    def all(self) -> list[Combination]:
        return [Combination(*r) for r in self._q("SELECT * FROM card_combinations ORDER BY first_seen, iccid")]

    def devices_of(self, iccid: str) -> list[str]:
        return [r[0] for r in self._q("SELECT device FROM card_combinations WHERE iccid = ? ORDER BY first_seen", (iccid,))]

    def iccids_of(self, device: str) -> list[str]:
        return [r[0] for r in self._q("SELECT iccid FROM card_combinations WHERE device = ? ORDER BY first_seen", (device,))]

    def record(self, c: Combination) -> bool:
        """Insert ``c`` or refresh its last_seen/endpoint; True when the pair is new."""
        seen = self._q("SELECT 1 FROM card_combinations WHERE iccid = ? AND device = ?", (c.iccid, c.device))
        if seen:
            self._q("UPDATE card_combinations SET last_seen = ?, endpoint = ? WHERE iccid = ? AND device = ?",
                    (c.last_seen, c.endpoint, c.iccid, c.device))
            return False
        self._q("INSERT INTO card_combinations VALUES (?,?,?,?,?,?,?,?)",
                (c.iccid, c.device, c.manufacturer, c.model, c.serial, c.endpoint, c.first_seen, c.last_seen))
        return True


def _announces(links: str, oid: int) -> bool:
    """True if the Register object links name object ``oid`` or an instance of it."""
    for part in links.split(","):
        target = part.strip().split(";", 1)[0].strip().strip("<>")
        segs = [s for s in target.split("/") if s]
        if segs and segs[0] == str(oid):
            return True
    return False


def _text(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return "" if v is None else str(v)


class CardIssuerAwareness:
    """Follows ``registered`` events of ``server`` and records card/device combinations.

    Use: ``aware = CardIssuerAwareness(server); aware.open()`` (done by LwM2MServer.start);
    ``aware.close()`` on stop. ``await aware.wait_idle(timeout)`` waits for pending look-ups.
    """

    def __init__(self, server: "LwM2MServer", *, read_timeout: float = 5.0) -> None:
        self.server = server
        self.read_timeout = read_timeout
        state_dir = getattr(server, "state_dir", None)
        self.store = CardCombinationStore(os.path.join(state_dir, DB_NAME) if state_dir else None)
        self._tasks: set[asyncio.Task] = set()
        self._opened = False

    def open(self) -> None:
        self.store.open()
        self.server.events.add_callback(self._on_event)
        self._opened = True

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        try:
            self.server.events.remove_callback(self._on_event)
        except ValueError:
            pass
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.store.close()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (bounded) until no look-up is pending; True if idle."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._tasks and loop.time() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
        return not self._tasks

    def combinations(self) -> list[Combination]:
        return self.store.all()

    # ---- event follower -------------------------------------------------------------------------
    def _on_event(self, ev: Event) -> None:
        if ev.kind != EventKind.REGISTERED or not self._opened:
            return
        links = str(ev.data.get("object_links", ""))
        if not _announces(links, RSP_OBJECT):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(self._look_up(ev.endpoint))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_text(self, endpoint: str, path: Path) -> str | None:
        from reference.server.dm import DmError

        try:
            resp = await asyncio.wait_for(self.server.read(endpoint, path, timeout=self.read_timeout),
                                          self.read_timeout + 1.0)
        except (DmError, asyncio.TimeoutError) as e:
            log.info("card awareness: read %s of %s failed: %s", path, endpoint, e)
            return None
        if not resp.success or not resp.values:
            log.info("card awareness: read %s of %s: %s", path, endpoint, resp.code_text)
            return None
        # a multiple-instance resource decodes to /504/0/11/<i> entries: take instance 0 (the
        # active profile), else the lowest one
        vals = sorted(resp.values.items(), key=lambda kv: kv[0].parts)
        exact = [v for p, v in vals if p == path or (p.depth == 4 and p.resource_instance_id == 0)]
        return _text(exact[0] if exact else vals[0][1])

    async def _look_up(self, endpoint: str) -> Combination | None:
        iccid = await self._read_text(endpoint, ICCID_PATH)
        serial = await self._read_text(endpoint, DEVICE_SERIAL)
        if not iccid or not serial:
            log.info("card awareness: %s exposes no ICCID (%r) or serial number (%r)", endpoint, iccid, serial)
            return None
        manufacturer = await self._read_text(endpoint, DEVICE_MANUFACTURER) or ""
        model = await self._read_text(endpoint, DEVICE_MODEL) or ""
        return self.observe(endpoint, iccid, manufacturer, model, serial)

    def observe(self, endpoint: str, iccid: str, manufacturer: str, model: str, serial: str) -> Combination:
        """Record one sighting; emits ``card-combination`` if the pair is new. Public so that
        other inputs (e.g. a bootstrap server's log) can feed the same store."""
        now = time.time()
        device = f"{manufacturer}/{model}/{serial}"
        combo = Combination(iccid, device, manufacturer, model, serial, endpoint, now, now)
        if not self._opened:
            return combo
        prev_devices = self.store.devices_of(iccid)
        prev_iccids = self.store.iccids_of(device)
        if self.store.record(combo):
            reason = ("new-card-in-known-device" if prev_iccids else
                      "known-card-in-new-device" if prev_devices else "new-card-new-device")
            data = combo.to_json() | {"reason": reason, "previous_devices": prev_devices,
                                      "previous_iccids": prev_iccids}
            log.info("card awareness: new combination %s in %s (%s)", iccid, device, reason)
            self.server.events.emit(EventKind.CARD_COMBINATION, endpoint, data)
        return combo

    # ---- HTTP ------------------------------------------------------------------------------------
    def routes(self) -> list[Any]:
        """``GET /api/cards``: every recorded combination (JSON list)."""
        from aiohttp import web

        async def list_cards(request: web.Request) -> web.Response:
            return web.json_response({"combinations": [c.to_json() for c in self.combinations()]})

        return [web.get("/api/cards", list_cards)]
