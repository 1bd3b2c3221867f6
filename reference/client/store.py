"""The client's object tree: object instances and their resource values (Core 1.1.1 §7.1 Resource Model).

Storage is plain data so it can be deep-copied (bootstrap staging, Core 1.1.1 §6.1) and persisted:

``data[object_id][instance_id][resource_id]`` is a :data:`~reference.model.types.Value` for a
single-instance resource or a ``dict[resource_instance_id, Value]`` for a multiple-instance one.

Definitions (types, operations, mandatory flags, object versions) come from the DDF registry
(:class:`reference.model.registry.ObjectRegistry`); the tree never invents a resource the
definition does not have. Dynamic values (current time) are computed by *read hooks*;
anything else that changes (the power meter, battery level) is written through :meth:`set`, which
tells the listeners (the observation engine) what changed.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Iterable

from reference.model.path import Path
from reference.model.types import ObjectDef, ObjLink, Operations, ResourceDef, ResourceType, Value, Values

#: The Access Control object's "Object Instance ID" value that designates the object itself
#: (Create rights, Core 1.1.1 §E.3 / §7.3) and the owner value meaning "the Bootstrap-Server".
MAX_ID = 65535

ResourceData = Value | dict[int, Value]
InstanceData = dict[int, ResourceData]
TreeData = dict[int, dict[int, InstanceData]]

ReadHook = Callable[[int, int], Value]  # (instance_id, resource_id) -> value


class ObjectTree:
    """Object instances and resource values, plus the definitions that give them meaning.

    Not thread-safe; all calls happen on the client's event loop.
    """

    def __init__(self, registry: Any, data: TreeData | None = None) -> None:
        self.registry = registry
        self.data: TreeData = data if data is not None else {}
        self._read_hooks: dict[tuple[int, int], ReadHook] = {}
        self._listeners: list[Callable[[Path], None]] = []

    # ---- definitions -------------------------------------------------------------------------
    def objdef(self, oid: int | None) -> ObjectDef | None:
        return None if oid is None else self.registry.get(oid)

    def resdef(self, oid: int, rid: int) -> ResourceDef | None:
        od = self.objdef(oid)
        return None if od is None else od.resource(rid)

    def supported_objects(self) -> list[int]:
        """Object IDs this client implements: defined in the registry and present in the tree."""
        return sorted(oid for oid in self.data if self.objdef(oid) is not None)

    # ---- listeners / hooks ---------------------------------------------------------------------
    def add_listener(self, cb: Callable[[Path], None]) -> None:
        self._listeners.append(cb)

    def notify(self, path: Path) -> None:
        for cb in list(self._listeners):
            cb(path)

    def set_read_hook(self, oid: int, rid: int, hook: ReadHook) -> None:
        """Compute resource ``rid`` of every instance of ``oid`` on read (e.g. Current Time)."""
        self._read_hooks[(oid, rid)] = hook

    # ---- structure ----------------------------------------------------------------------------
    def ensure_object(self, oid: int) -> None:
        self.data.setdefault(oid, {})

    def instances(self, oid: int) -> list[int]:
        return sorted(self.data.get(oid, {}))

    def exists(self, path: Path) -> bool:
        """True when the object (supported), instance, resource (with a value) or resource
        instance named by ``path`` exists. The root always exists."""
        if path.depth == 0:
            return True
        if path.object_id not in self.data or self.objdef(path.object_id) is None:
            return False
        if path.depth == 1:
            return True
        inst = self.data[path.object_id].get(path.instance_id)  # type: ignore[arg-type]
        if inst is None:
            return False
        if path.depth == 2:
            return True
        if path.resource_id not in self.resource_ids(path.object_id, path.instance_id):  # type: ignore[arg-type]
            return False
        if path.depth == 3:
            return True
        res = inst.get(path.resource_id)  # type: ignore[arg-type]
        return isinstance(res, dict) and path.resource_instance_id in res

    def resource_ids(self, oid: int, iid: int) -> list[int]:
        """Resources present in an instance: stored values, computed (hooked) ones and the
        executable resources of the definition (they carry no value but exist)."""
        inst = self.data.get(oid, {}).get(iid)
        od = self.objdef(oid)
        if inst is None or od is None:
            return []
        rids = set(inst) | {r for (o, r) in self._read_hooks if o == oid}
        rids |= {r.id for r in od.resources.values() if r.executable}
        return sorted(r for r in rids if od.resource(r) is not None)

    def resource_exists(self, oid: int, iid: int, rid: int) -> bool:
        return self.exists(Path(oid, iid, rid))

    def free_instance_id(self, oid: int) -> int:
        used = set(self.data.get(oid, {}))
        iid = 0
        while iid in used:
            iid += 1
        return iid

    def create_instance(self, oid: int, iid: int, resources: InstanceData | None = None,
                        notify: bool = True) -> None:
        self.ensure_object(oid)
        self.data[oid][iid] = dict(resources or {})
        if notify:
            self.notify(Path(oid, iid))

    def delete_instance(self, oid: int, iid: int, notify: bool = True) -> bool:
        inst = self.data.get(oid, {}).pop(iid, None)
        if inst is not None and notify:
            self.notify(Path(oid, iid))
        return inst is not None

    # ---- values -------------------------------------------------------------------------------
    def get(self, path: Path, default: Any = None) -> Any:
        """Raw stored value of a resource (depth 3) or resource instance (depth 4), hooks applied."""
        if path.depth < 3:
            raise ValueError(f"{path} is not a resource path")
        hook = self._read_hooks.get((path.object_id, path.resource_id))  # type: ignore[arg-type]
        inst = self.data.get(path.object_id, {}).get(path.instance_id)  # type: ignore[arg-type]
        if inst is None:
            return default
        if hook is not None and path.depth == 3:
            return hook(path.instance_id, path.resource_id)  # type: ignore[arg-type]
        val = inst.get(path.resource_id, default)  # type: ignore[arg-type]
        if path.depth == 4:
            return val.get(path.resource_instance_id, default) if isinstance(val, dict) else default
        return val

    def set(self, path: Path, value: ResourceData, notify: bool = True) -> None:
        """Store a resource (depth 3; a dict for multiple-instance resources) or resource-instance
        (depth 4) value. The instance must exist. Listeners are told unless ``notify`` is False
        or the value did not change."""
        if path.depth < 3:
            raise ValueError(f"{path} is not a resource path")
        inst = self.data[path.object_id][path.instance_id]  # type: ignore[index]
        if path.depth == 3:
            old = inst.get(path.resource_id)  # type: ignore[arg-type]
            inst[path.resource_id] = copy.deepcopy(value) if isinstance(value, dict) else value  # type: ignore[index]
        else:
            res = inst.setdefault(path.resource_id, {})  # type: ignore[arg-type]
            if not isinstance(res, dict):
                res = inst[path.resource_id] = {}  # type: ignore[index]
            old = res.get(path.resource_instance_id)  # type: ignore[arg-type]
            res[path.resource_instance_id] = value  # type: ignore[index]
        if notify and not _same(old, value):
            self.notify(path)

    def remove_resource(self, oid: int, iid: int, rid: int, notify: bool = True) -> None:
        inst = self.data.get(oid, {}).get(iid)
        if inst is not None and inst.pop(rid, None) is not None and notify:
            self.notify(Path(oid, iid, rid))

    def values(self, path: Path, readable_only: bool = True) -> Values:
        """Flat ``{Path: Value}`` of everything below ``path`` (codec input, see
        :mod:`reference.formats`). With ``readable_only`` only resources whose operations include
        R are returned (the Security object has no operations and is returned only when
        ``readable_only`` is False, i.e. for internal use)."""
        out: Values = {}
        oids = [path.object_id] if path.depth >= 1 else sorted(self.data)
        for oid in oids:
            od = self.objdef(oid)
            if od is None or oid not in self.data:
                continue
            iids = [path.instance_id] if path.depth >= 2 else sorted(self.data[oid])
            for iid in iids:
                inst = self.data[oid].get(iid)  # type: ignore[arg-type]
                if inst is None:
                    continue
                rids = set(inst) | {r for (o, r) in self._read_hooks if o == oid}
                if path.depth >= 3:
                    rids = {path.resource_id} & rids  # type: ignore[arg-type]
                for rid in sorted(rids):
                    rd = od.resource(rid)
                    if rd is None or rd.executable:
                        continue
                    if readable_only and not (rd.operations & Operations.R):
                        continue
                    val = self.get(Path(oid, iid, rid))  # type: ignore[arg-type]
                    if val is None:
                        continue
                    if isinstance(val, dict):
                        for riid in sorted(val):
                            if path.depth == 4 and riid != path.resource_instance_id:
                                continue
                            out[Path(oid, iid, rid, riid)] = val[riid]  # type: ignore[arg-type]
                    elif path.depth < 4:
                        out[Path(oid, iid, rid)] = val  # type: ignore[arg-type]
        return out

    # ---- copies -------------------------------------------------------------------------------
    def snapshot(self, oids: Iterable[int] | None = None) -> TreeData:
        keys = list(self.data) if oids is None else [o for o in oids if o in self.data]
        return {oid: copy.deepcopy(self.data[oid]) for oid in keys}

    def staging_copy(self) -> "ObjectTree":
        """An independent tree over a deep copy of the data (no listeners): bootstrap staging."""
        t = ObjectTree(self.registry, copy.deepcopy(self.data))
        t._read_hooks = dict(self._read_hooks)
        return t


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


# ---- value coercion -------------------------------------------------------------------------
def coerce(rd: ResourceDef, value: Any) -> Value:
    """Convert a value decoded from a payload (or typed on the control channel) to the resource's
    declared type (Core 1.1.1 Appendix C). Raises ValueError/TypeError when it does not fit."""
    t = rd.type
    if t in (ResourceType.INTEGER, ResourceType.TIME):
        if isinstance(value, bool):
            raise TypeError("boolean for integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(f"{value} is not an integer")
            return int(value)
        if isinstance(value, (bytes, str)):
            return int(value.decode() if isinstance(value, bytes) else value)
        return int(value)
    if t == ResourceType.UNSIGNED_INTEGER:
        v = coerce(ResourceDef(rd.id, rd.name, rd.operations, rd.multiple, rd.mandatory, ResourceType.INTEGER), value)
        if int(v) < 0:
            raise ValueError("negative unsigned integer")
        return v
    if t == ResourceType.FLOAT:
        if isinstance(value, bool):
            raise TypeError("boolean for float")
        if isinstance(value, (bytes, str)):
            return float(value.decode() if isinstance(value, bytes) else value)
        return float(value)
    if t == ResourceType.BOOLEAN:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, (str, bytes)):
            s = value.decode() if isinstance(value, bytes) else value
            if s in ("1", "true"):
                return True
            if s in ("0", "false"):
                return False
        raise ValueError(f"{value!r} is not a boolean")
    if t == ResourceType.OPAQUE:
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):
            return value.encode()
        raise TypeError(f"{value!r} is not opaque")
    if t == ResourceType.OBJLNK:
        if isinstance(value, ObjLink):
            return value
        s = value.decode() if isinstance(value, bytes) else str(value)
        a, _, b = s.partition(":")
        return ObjLink(int(a), int(b))
    if t in (ResourceType.STRING, ResourceType.CORELNK):
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, (bool, ObjLink)):
            return str(value).lower() if isinstance(value, bool) else str(value)
        return str(value)
    raise TypeError(f"resource {rd.id} has no value type")


# ---- JSON-safe encoding for persistence -----------------------------------------------------
def value_to_json(v: ResourceData) -> Any:
    if isinstance(v, dict):
        return {"m": {str(k): value_to_json(x) for k, x in v.items()}}
    if isinstance(v, bool):
        return {"b": v}
    if isinstance(v, int):
        return {"i": v}
    if isinstance(v, float):
        return {"f": v}
    if isinstance(v, bytes):
        return {"o": v.hex()}
    if isinstance(v, ObjLink):
        return {"l": str(v)}
    return {"s": str(v)}


def value_from_json(d: Any) -> ResourceData:
    (k, x), = d.items()
    if k == "m":
        return {int(r): value_from_json(y) for r, y in x.items()}  # type: ignore[misc]
    if k == "b":
        return bool(x)
    if k == "i":
        return int(x)
    if k == "f":
        return float(x)
    if k == "o":
        return bytes.fromhex(x)
    if k == "l":
        a, _, b = x.partition(":")
        return ObjLink(int(a), int(b))
    return str(x)


def tree_to_json(data: TreeData) -> dict[str, Any]:
    return {str(oid): {str(iid): {str(rid): value_to_json(v) for rid, v in inst.items()}
                       for iid, inst in insts.items()} for oid, insts in data.items()}


def tree_from_json(d: dict[str, Any]) -> TreeData:
    return {int(oid): {int(iid): {int(rid): value_from_json(v) for rid, v in inst.items()}
                       for iid, inst in insts.items()} for oid, insts in d.items()}


def now() -> int:
    return int(time.time())
