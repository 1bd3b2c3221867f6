"""application/vnd.oma.lwm2m+json (Content-Format 11543), the LwM2M 1.0 JSON format
(Core 1.0.2 §6.4.4; kept for 1.0 peers by Core 1.1.1 §7.4.6).

``{"bn": "/3/0/", "bt": <time>, "e": [{"n": "0", "sv": "Open Mobile Alliance"}, {"n": "6/0", "v": 1}, ...]}``

Each entry's path is ``bn`` + ``n``. Without ``bn`` the names are relative to the request's target
path (absolute names starting with "/" are taken as they are). Values: ``v`` (number) for Integer,
Unsigned Integer, Float and Time; ``bv`` Boolean; ``ov`` Objlnk "oid:iid"; ``sv`` String, Corelnk,
and Opaque as base64 (RFC 4648 §4). Timestamps (``bt``, ``t``) are validated and dropped. The
format's member set is fixed, so unknown members are rejected.
"""
from __future__ import annotations

import json
import math
from typing import Any

from reference.formats._common import (ResourceLookup, b64_decode, b64_encode, base_prefix, check_shape,
                                       check_under, checked_items, finite, lookup, number_to_int,
                                       objlnk_from_text, parse_name, put)
from reference.formats.errors import MalformedPayload, TypeMismatch
from reference.formats.senml import load_json
from reference.model.path import Path
from reference.model.types import ResourceDef, ResourceType, Value, Values

_TOP_KEYS = {"bn", "bt", "e"}
_ENTRY_KEYS = {"n", "t", "v", "sv", "bv", "ov"}
_VALUE_KEYS = ("v", "sv", "bv", "ov")


def _value_key(t: ResourceType) -> str:
    if t is ResourceType.BOOLEAN:
        return "bv"
    if t is ResourceType.OBJLNK:
        return "ov"
    if t in (ResourceType.STRING, ResourceType.CORELNK, ResourceType.OPAQUE):
        return "sv"
    return "v"


def encode(values: Values, base: Path, registry: ResourceLookup | None) -> bytes:
    items = checked_items(values, base, registry)
    bn, named = base_prefix(base, [p for p, _, _ in items])
    entries = []
    for path, rdef, v in items:
        e: dict[str, Any] = {}
        if named:
            e["n"] = str(path)[len(bn):] if bn is not None else str(path)
        key = _value_key(rdef.type)
        if rdef.type is ResourceType.OPAQUE:
            e[key] = b64_encode(v)  # type: ignore[arg-type]
        elif key == "ov":
            e[key] = str(v)
        elif isinstance(v, float):
            e[key] = finite(v, path)
        else:
            e[key] = v
        entries.append(e)
    doc: dict[str, Any] = {"bn": bn} if bn is not None else {}
    doc["e"] = entries
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _typed(rdef: ResourceDef, path: Path, key: str, raw: Any) -> Value:
    want = _value_key(rdef.type)
    if key != want:
        raise TypeMismatch(f"{path}: resource {rdef.id} is {rdef.type.value}, expected {want!r} not {key!r}")
    t = rdef.type
    if key == "v":
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise TypeMismatch(f"{path}: 'v' must be a finite number")
        if t is ResourceType.FLOAT:
            return float(raw)
        return number_to_int(raw, path, unsigned=t is ResourceType.UNSIGNED_INTEGER)
    if key == "bv":
        if not isinstance(raw, bool):
            raise TypeMismatch(f"{path}: 'bv' must be a boolean")
        return raw
    if not isinstance(raw, str):
        raise TypeMismatch(f"{path}: {key!r} must be a string")
    if key == "ov":
        return objlnk_from_text(raw, path)
    if t is ResourceType.OPAQUE:
        return b64_decode(raw, path)
    return raw


def decode(payload: bytes, base: Path, registry: ResourceLookup | None) -> Values:
    doc = load_json(payload, "LwM2M JSON payload")
    if not isinstance(doc, dict):
        raise MalformedPayload("LwM2M JSON payload must be a JSON object")
    extra = set(doc) - _TOP_KEYS
    if extra:
        raise MalformedPayload(f"LwM2M JSON has unknown members {sorted(extra)}")
    if "bt" in doc and (isinstance(doc["bt"], bool) or not isinstance(doc["bt"], (int, float))):
        raise MalformedPayload("'bt' must be a number")
    if "bn" in doc:
        if not isinstance(doc["bn"], str):
            raise MalformedPayload("'bn' must be a string")
        prefix, relative_to_base = doc["bn"], False
    else:
        prefix, relative_to_base = ("/" if base.depth == 0 else str(base) + "/"), True
    entries = doc.get("e")
    if not isinstance(entries, list):
        raise MalformedPayload("LwM2M JSON needs an 'e' array")
    out: Values = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise MalformedPayload(f"entry {i} is not a JSON object")
        extra = set(e) - _ENTRY_KEYS
        if extra:
            raise MalformedPayload(f"entry {i} has unknown members {sorted(extra)}")
        n = e.get("n", "")
        if not isinstance(n, str):
            raise MalformedPayload(f"entry {i}: 'n' must be a string")
        if "t" in e and (isinstance(e["t"], bool) or not isinstance(e["t"], (int, float))):
            raise MalformedPayload(f"entry {i}: 't' must be a number")
        if relative_to_base and n.startswith("/"):
            name = n
        elif relative_to_base and n == "":
            name = str(base)
        else:
            name = prefix + n
        path = parse_name(name)
        keys = [k for k in _VALUE_KEYS if k in e]
        if len(keys) != 1:
            raise MalformedPayload(f"entry {i} ({path}) has {len(keys)} values, expected exactly one")
        if path.depth not in (3, 4):
            raise MalformedPayload(f"entry {i}: {path} is not a resource or resource-instance path")
        check_under(base, path)
        rdef = lookup(registry, path)
        check_shape(rdef, path)
        put(out, path, _typed(rdef, path, keys[0], e[keys[0]]))
    return out
