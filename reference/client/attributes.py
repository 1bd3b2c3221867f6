"""Notification attributes (Core 1.1.1 §5.1.2, Table 5.1.2-1) and their evaluation (§6.4 / RFC 7641).

Attributes are attached per LwM2M Server (§5.1.1) to an object, object instance, resource or
resource instance with Write-Attributes (§5.4.4). For an observation the effective value of each
attribute is the one attached at the deepest level on the observed path (resource instance >
resource > object instance > object, §5.1.1 "precedence"); pmin/pmax fall back to the Server
object's Default Minimum/Maximum Period (/1/x/2, /1/x/3), pmin to 0 when that is absent too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from reference.model.path import Path
from reference.model.types import ResourceDef, ResourceType, Value, Values

#: attribute names understood by this client (Core 1.1.1 Table 5.1.2-1)
PERIOD_ATTRS = ("pmin", "pmax", "epmin", "epmax")
VALUE_ATTRS = ("gt", "lt", "st")
ALL_ATTRS = PERIOD_ATTRS + VALUE_ATTRS

NUMERIC_TYPES = (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER, ResourceType.FLOAT)

AttrSet = dict[str, float]


class AttributeError400(ValueError):
    """Write-Attributes request that must be answered with 4.00 Bad Request."""


def parse_query(query: list[str]) -> dict[str, float | None]:
    """Parse Uri-Query options of a Write-Attributes request. A name without ``=value`` unsets the
    attribute (value None). Unknown names and malformed numbers raise AttributeError400."""
    out: dict[str, float | None] = {}
    for q in query:
        name, eq, raw = q.partition("=")
        if name not in ALL_ATTRS:
            raise AttributeError400(f"unknown attribute {name!r}")
        if name in out:
            raise AttributeError400(f"attribute {name!r} given twice")
        if not eq:
            out[name] = None
            continue
        try:
            v = float(raw)
        except ValueError:
            raise AttributeError400(f"{name}={raw!r} is not a number") from None
        if not math.isfinite(v):
            raise AttributeError400(f"{name}={raw!r} is not finite")
        if name in PERIOD_ATTRS:
            if not v.is_integer() or v < 0:
                raise AttributeError400(f"{name} must be a non-negative integer number of seconds")
        if name == "st" and v < 0:
            raise AttributeError400("st must not be negative")
        out[name] = v
    return out


def apply(existing: AttrSet, changes: Mapping[str, float | None], path: Path,
          rd: ResourceDef | None) -> AttrSet:
    """The attribute set of one level after a Write-Attributes, validated (raises
    AttributeError400): gt/lt/st only on numeric resources (Table 5.1.2-1 "Level: Resource");
    pmin <= pmax; epmin <= epmax; lt < gt and lt + 2*st < gt when present (§5.1.2)."""
    new = dict(existing)
    for k, v in changes.items():
        if v is None:
            new.pop(k, None)
        else:
            new[k] = v
    if any(k in changes and changes[k] is not None for k in VALUE_ATTRS):
        if path.depth < 3:
            raise AttributeError400("gt/lt/st can only be attached to a resource")
        if rd is None or rd.type not in NUMERIC_TYPES:
            raise AttributeError400("gt/lt/st need a numeric resource")
    if "pmin" in new and "pmax" in new and new["pmax"] < new["pmin"]:
        raise AttributeError400("pmax is less than pmin")
    if "epmin" in new and "epmax" in new and new["epmax"] < new["epmin"]:
        raise AttributeError400("epmax is less than epmin")
    if "lt" in new and "gt" in new:
        if not new["lt"] < new["gt"]:
            raise AttributeError400("lt must be less than gt")
        if "st" in new and not new["lt"] + 2 * new["st"] < new["gt"]:
            raise AttributeError400("lt + 2*st must be less than gt")
    return new


@dataclass(frozen=True)
class Effective:
    """The attributes governing one observation at one moment."""

    pmin: float = 0.0
    pmax: float | None = None
    gt: float | None = None
    lt: float | None = None
    st: float | None = None
    epmin: float | None = None
    epmax: float | None = None

    @property
    def has_value_conditions(self) -> bool:
        return self.gt is not None or self.lt is not None or self.st is not None


def effective(levels: Mapping[Path, AttrSet], path: Path, default_pmin: float | None,
              default_pmax: float | None) -> Effective:
    """Resolve attributes for an observation of ``path`` from one server's attached attributes."""
    chain = [Path.of(*path.parts[:d]) for d in range(path.depth, 0, -1)]  # deepest first
    got: dict[str, float] = {}
    for p in chain:
        for k, v in levels.get(p, {}).items():
            got.setdefault(k, v)
    pmin = got.get("pmin", default_pmin if default_pmin is not None else 0.0)
    pmax = got.get("pmax", default_pmax)
    if pmax is not None and (pmax <= 0 or pmax < pmin):
        pmax = None  # pmax 0 / below pmin: no maximum period
    value_attrs = {k: got.get(k) for k in VALUE_ATTRS} if path.depth >= 3 else {}
    return Effective(pmin=float(pmin), pmax=pmax, epmin=got.get("epmin"), epmax=got.get("epmax"),
                     **value_attrs)


def _num(v: Value | None) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def should_notify_values(last: Values, current: Values, eff: Effective) -> bool:
    """Core 1.1.1 §5.1.2: without gt/lt/st any change of the observed content notifies; with them
    (single numeric value) a notification is due when the value crosses gt or lt (either
    direction) or has moved by at least st from the last notified value."""
    if current == last:
        return False
    if not eff.has_value_conditions or len(current) != 1 or len(last) != 1:
        return True
    new = _num(next(iter(current.values())))
    old = _num(next(iter(last.values())))
    if new is None or old is None:
        return True
    if eff.gt is not None and (old <= eff.gt) != (new <= eff.gt):
        return True
    if eff.lt is not None and (old < eff.lt) != (new < eff.lt):
        return True
    if eff.st is not None and abs(new - old) >= eff.st:
        return True
    return False


def format_attrs(attrs: Mapping[str, float]) -> str:
    """``;pmin=10;gt=5.5`` for link-format output (integers without a decimal point)."""
    out = []
    for k in ALL_ATTRS:
        if k in attrs:
            v = attrs[k]
            out.append(f";{k}={int(v) if float(v).is_integer() else v}")
    return "".join(out)
