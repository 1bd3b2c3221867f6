"""Initial instances of the objects the reference client implements, with real values.

Device (3), Connectivity Monitoring (4), Firmware Update (5, push delivery only), Connectivity
Statistics (7) and the Single-Phase Power Meter (10243) are created here; Security (0),
Server (1) and Access Control (2) come from bootstrap information (Core 1.1.1 §6.1). Resource IDs
are those of the shipped DDF files in ``reference/objects``.
"""
from __future__ import annotations

import enum
import hashlib
import math
import time
from dataclasses import dataclass, field

from reference.client.store import ObjectTree
from reference.model.config import DeviceConfig
from reference.model.path import Path


class Obj(enum.IntEnum):
    SECURITY = 0
    SERVER = 1
    ACCESS_CONTROL = 2
    DEVICE = 3
    CONN_MONITORING = 4
    FIRMWARE = 5
    CONN_STATS = 7
    OSCORE = 21
    POWER_METER = 10243


#: the objects that make up bootstrap information (persisted, staged during bootstrap)
BOOTSTRAP_OBJECTS = (Obj.SECURITY, Obj.SERVER, Obj.ACCESS_CONTROL, Obj.OSCORE)


class DeviceRes(enum.IntEnum):
    MANUFACTURER = 0
    MODEL = 1
    SERIAL = 2
    FIRMWARE_VERSION = 3
    REBOOT = 4
    FACTORY_RESET = 5
    POWER_SOURCES = 6
    POWER_VOLTAGE = 7
    POWER_CURRENT = 8
    BATTERY_LEVEL = 9
    MEMORY_FREE = 10
    ERROR_CODE = 11
    RESET_ERROR_CODE = 12
    CURRENT_TIME = 13
    UTC_OFFSET = 14
    TIMEZONE = 15
    SUPPORTED_BINDING = 16
    DEVICE_TYPE = 17
    HARDWARE_VERSION = 18
    SOFTWARE_VERSION = 19
    BATTERY_STATUS = 20
    MEMORY_TOTAL = 21


class FirmwareRes(enum.IntEnum):
    PACKAGE = 0
    PACKAGE_URI = 1
    UPDATE = 2
    STATE = 3
    UPDATE_RESULT = 5
    PKG_NAME = 6
    PKG_VERSION = 7
    PROTOCOL_SUPPORT = 8
    DELIVERY_METHOD = 9


class FirmwareState(enum.IntEnum):
    IDLE = 0
    DOWNLOADING = 1
    DOWNLOADED = 2
    UPDATING = 3


class FirmwareResult(enum.IntEnum):
    INITIAL = 0
    SUCCESS = 1
    INTEGRITY_FAILURE = 5
    INVALID_URI = 7
    FAILED = 8
    UNSUPPORTED_PROTOCOL = 9


class StatsRes(enum.IntEnum):
    SMS_TX = 0
    SMS_RX = 1
    TX_DATA = 2
    RX_DATA = 3
    MAX_MSG = 4
    AVG_MSG = 5
    START = 6
    STOP = 7
    COLLECTION_PERIOD = 8


@dataclass
class DeviceInfo:
    """Fixed identity of the simulated device."""

    manufacturer: str = "LwM2M Conformance Project"
    model: str = "reference-client"
    serial: str = ""
    firmware_version: str = "1.0.0"
    hardware_version: str = "1.0"
    software_version: str = "0.1.0"
    device_type: str = "reference client"
    supported_binding: str = "U"
    power_sources: dict[int, int] = field(default_factory=lambda: {0: 1, 1: 5})  # internal battery, USB
    time_offset: float = 0.0  # seconds added to the host clock (Current Time writes)


def populate_device_objects(tree: ObjectTree, info: DeviceInfo, endpoint: str) -> None:
    """Create /3/0, /4/0, /5/0, /7/0 and /10243/0 with their initial values (only for objects the
    registry defines)."""
    serial = info.serial or hashlib.sha1(endpoint.encode()).hexdigest()[:12].upper()
    if tree.objdef(Obj.DEVICE) is not None:
        tree.create_instance(Obj.DEVICE, 0, {
            DeviceRes.MANUFACTURER: info.manufacturer,
            DeviceRes.MODEL: info.model,
            DeviceRes.SERIAL: serial,
            DeviceRes.FIRMWARE_VERSION: info.firmware_version,
            DeviceRes.POWER_SOURCES: dict(info.power_sources),
            DeviceRes.POWER_VOLTAGE: {0: 3800, 1: 5000},
            DeviceRes.POWER_CURRENT: {0: 120, 1: 450},
            DeviceRes.BATTERY_LEVEL: 87,
            DeviceRes.MEMORY_FREE: 15 * 1024,
            DeviceRes.ERROR_CODE: {0: 0},
            DeviceRes.UTC_OFFSET: "+00:00",
            DeviceRes.TIMEZONE: "UTC",
            DeviceRes.SUPPORTED_BINDING: info.supported_binding,
            DeviceRes.DEVICE_TYPE: info.device_type,
            DeviceRes.HARDWARE_VERSION: info.hardware_version,
            DeviceRes.SOFTWARE_VERSION: info.software_version,
            DeviceRes.BATTERY_STATUS: 0,  # normal
            DeviceRes.MEMORY_TOTAL: 64 * 1024,
        }, notify=False)
        # Current Time is the host clock plus an offset set by writes to /3/0/13.
        tree.set_read_hook(Obj.DEVICE, DeviceRes.CURRENT_TIME,
                           lambda iid, rid: int(time.time() + info.time_offset))
    if tree.objdef(Obj.CONN_MONITORING) is not None:
        tree.create_instance(Obj.CONN_MONITORING, 0, {
            0: 41,            # Network Bearer: Ethernet
            1: {0: 41},       # Available Network Bearer
            2: -60,           # Radio Signal Strength (dBm)
            3: 100,           # Link Quality
            4: {0: "127.0.0.1"},
            5: {0: "127.0.0.1"},
            6: 5,             # Link Utilization (%)
        }, notify=False)
    if tree.objdef(Obj.FIRMWARE) is not None:
        tree.create_instance(Obj.FIRMWARE, 0, {
            FirmwareRes.PACKAGE_URI: "",
            FirmwareRes.STATE: int(FirmwareState.IDLE),
            FirmwareRes.UPDATE_RESULT: int(FirmwareResult.INITIAL),
            FirmwareRes.PKG_NAME: "",
            FirmwareRes.PKG_VERSION: "",
            FirmwareRes.DELIVERY_METHOD: 1,  # push only (Package resource)
        }, notify=False)
    if tree.objdef(Obj.CONN_STATS) is not None:
        tree.create_instance(Obj.CONN_STATS, 0, {
            StatsRes.SMS_TX: 0, StatsRes.SMS_RX: 0, StatsRes.TX_DATA: 0, StatsRes.RX_DATA: 0,
            StatsRes.MAX_MSG: 0, StatsRes.AVG_MSG: 0, StatsRes.COLLECTION_PERIOD: 0,
        }, notify=False)
    if tree.objdef(Obj.POWER_METER) is not None:
        tree.create_instance(Obj.POWER_METER, 0, power_meter_defaults(serial), notify=False)


def power_meter_defaults(serial: str = "PM-0") -> dict:
    return {
        0: "LwM2M Conformance Project", 1: "PM-1", 2: f"PM-{serial}", 3: "simulated single-phase meter",
        4: 230.0, 5: 1.0, 6: 0.2, 7: 0.05, 8: 0.05, 9: 0.0, 10: 0.23, 11: 0.95, 12: 0.02, 13: 0.03,
        14: 0.0, 15: 0.0, 16: 0.0, 17: 50.0,
    }


class PowerMeterSimulator:
    """Moves the power meter's readings along a smooth deterministic curve; energy integrates
    power. :meth:`step` writes through the tree, so observers are notified of each change."""

    def __init__(self, tree: ObjectTree) -> None:
        self.tree = tree
        self.t0 = time.monotonic()
        self.last = self.t0

    def step(self) -> None:
        now = time.monotonic()
        dt, self.last = now - self.last, now
        t = now - self.t0
        for iid in self.tree.instances(Obj.POWER_METER):
            phase = iid * 0.7
            volts = round(230.0 + 3.0 * math.sin(t / 7.0 + phase), 2)
            amps = round(1.0 + 0.5 * math.sin(t / 3.0 + phase), 3)
            pf = round(0.95 + 0.03 * math.sin(t / 11.0 + phase), 3)
            apparent = volts * amps / 1000.0
            active = round(apparent * pf, 4)
            reactive = round(math.sqrt(max(apparent ** 2 - active ** 2, 0.0)), 4)
            base = Path(Obj.POWER_METER, iid)
            energy = self.tree.get(base.child(14), 0.0) or 0.0
            upd = {4: volts, 5: amps, 6: active, 7: reactive, 8: reactive, 10: round(apparent, 4),
                   11: pf, 14: round(float(energy) + active * dt / 3600.0, 6),
                   17: round(50.0 + 0.05 * math.sin(t / 5.0 + phase), 3)}
            for rid, v in upd.items():
                if self.tree.resdef(Obj.POWER_METER, rid) is not None:
                    self.tree.set(base.child(rid), v)


def config_to_tree(tree: ObjectTree, cfg: DeviceConfig) -> None:
    """Replace /0 and /1 of ``tree`` with the accounts of ``cfg`` (Factory Bootstrap, §6.1.2)."""
    for oid in (Obj.SECURITY, Obj.SERVER):
        tree.data[oid] = {}
    for p, v in cfg.to_values().items():
        inst = tree.data[p.object_id].setdefault(p.instance_id, {})  # type: ignore[index]
        inst[p.resource_id] = v  # type: ignore[index]
