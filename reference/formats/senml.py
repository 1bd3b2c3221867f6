"""SenML JSON (Content-Format 110) and SenML CBOR (112): Core 1.1.1 §7.4.4 / §7.4.5 with RFC 8428.

A payload is an array of records. Each record's name is the concatenation of the current base
name ``bn`` (it applies to its own and all later records until another ``bn``; RFC 8428 §4.5) and
its name ``n``; it must resolve to an absolute LwM2M path of a resource or resource instance.
Values by resource type (Core 1.1.1 Table 7.4.4-1): ``v`` for Integer, Unsigned Integer, Float
and Time (seconds); ``vb`` Boolean; ``vs`` String and Corelnk; ``vd`` Opaque (base64url without
padding in JSON, RFC 8428 §5; a byte string in CBOR); ``vlo`` Objlnk as "oid:iid" (LwM2M's
extension; the CBOR key is the text "vlo" since no integer label is registered).

CBOR labels (RFC 8428 Table 4 / §6): bver -1, bn -2, bt -3, bu -4, bv -5, bs -6, n 0, u 1, v 2,
vs 3, vb 4, s 5, t 6, ut 7, vd 8. Timestamps (bt/t) are validated and dropped: the flat
``Values`` mapping holds one value per path, so a path that appears twice is an error.
Labels ending in "_" are "must understand" (RFC 8428 §4.4) and are rejected; other unknown
labels are ignored. ``bv`` (base value) is added to ``v`` (RFC 8428 §4.6).

Encoding: records sorted by path; the first carries the base name (see
:func:`reference.formats._common.base_prefix`); keys in the order bn, n, value, which reproduces
the byte-exact SenML CBOR example of Core 1.1.1 §7.4.5.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any

import cbor2

from reference.formats._common import (ResourceLookup, b64_decode, b64_encode, base_prefix, check_shape,
                                       check_under, checked_items, finite, lookup, number_to_int,
                                       objlnk_from_text, parse_name, put, utf8)
from reference.formats.errors import MalformedPayload, TypeMismatch
from reference.model.path import Path
from reference.model.types import ResourceDef, ResourceType, Value, Values

CBOR_LABELS: dict[int, str] = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
                               0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}
CBOR_KEYS: dict[str, int] = {v: k for k, v in CBOR_LABELS.items()}
VALUE_KEYS = ("v", "vs", "vb", "vd", "vlo")
_NUMBER_FIELDS = ("bver", "bt", "bv", "bs", "s", "t", "ut")
_STRING_FIELDS = ("bn", "n", "bu", "u")


def _value_key(t: ResourceType) -> str:
    if t in (ResourceType.STRING, ResourceType.CORELNK):
        return "vs"
    if t is ResourceType.BOOLEAN:
        return "vb"
    if t is ResourceType.OPAQUE:
        return "vd"
    if t is ResourceType.OBJLNK:
        return "vlo"
    return "v"


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# ---- encoding -----------------------------------------------------------------------------------

def _records(values: Values, base: Path, registry: ResourceLookup | None, cbor: bool) -> list[dict[Any, Any]]:
    items = checked_items(values, base, registry)
    bn, named = base_prefix(base, [p for p, _, _ in items])
    records: list[dict[Any, Any]] = []
    for i, (path, rdef, v) in enumerate(items):
        rec: dict[str, Any] = {}
        if i == 0 and bn is not None:
            rec["bn"] = bn
        if named:
            rec["n"] = str(path)[len(bn):] if bn is not None else str(path)
        key = _value_key(rdef.type)
        if key == "vd":
            rec[key] = v if cbor else b64_encode(v, urlsafe=True)  # type: ignore[arg-type]
        elif key == "vlo":
            rec[key] = str(v)
        elif key == "v" and isinstance(v, float) and not cbor:
            rec[key] = finite(v, path)
        else:
            rec[key] = v
        records.append({CBOR_KEYS.get(k, k): x for k, x in rec.items()} if cbor else rec)
    return records


def encode_json(values: Values, base: Path, registry: ResourceLookup | None) -> bytes:
    recs = _records(values, base, registry, cbor=False)
    return json.dumps(recs, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def encode_cbor(values: Values, base: Path, registry: ResourceLookup | None) -> bytes:
    return cbor2.dumps(_records(values, base, registry, cbor=True))


# ---- decoding -----------------------------------------------------------------------------------

def _reject_constant(name: str) -> None:
    raise MalformedPayload(f"JSON constant {name} is not allowed")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise MalformedPayload(f"JSON object has key {k!r} twice")
        out[k] = v
    return out


def load_json(payload: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys; errors are MalformedPayload."""
    text = utf8(payload, what)
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise MalformedPayload(f"{what} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise MalformedPayload(f"{what} nests too deeply") from None


def _load_cbor(payload: bytes) -> Any:
    fp = io.BytesIO(bytes(payload))
    try:
        doc = cbor2.CBORDecoder(fp).decode()
    except RecursionError:
        raise MalformedPayload("SenML CBOR payload nests too deeply") from None
    except MalformedPayload:
        raise
    except Exception as e:  # cbor2 raises CBORDecodeError and, for odd semantic tags, assorted others
        raise MalformedPayload(f"SenML CBOR payload is not valid CBOR: {e}") from None
    if fp.tell() != len(payload):
        raise MalformedPayload(f"{len(payload) - fp.tell()} bytes after the CBOR data item")
    _plain(doc)
    return doc


_PLAIN = (str, bytes, int, float, bool, type(None))


def _plain(doc: Any) -> None:
    """Only the plain CBOR data model belongs in SenML; cbor2 maps semantic tags to Python objects
    (datetime, Decimal, ...), which are refused here."""
    stack = [doc]
    while stack:
        x = stack.pop()
        if isinstance(x, list):
            stack.extend(x)
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif not isinstance(x, _PLAIN):
            raise MalformedPayload(f"SenML CBOR payload holds a {type(x).__name__} (a CBOR tag or simple value)")


def _cbor_record(i: int, rec: Any) -> dict[str, Any]:
    if not isinstance(rec, dict):
        raise MalformedPayload(f"record {i} is not a CBOR map")
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if isinstance(k, bool) or not isinstance(k, (int, str)):
            raise MalformedPayload(f"record {i}: key {k!r:.40} is neither an integer label nor text")
        if isinstance(k, int):
            if k not in CBOR_LABELS:
                if k < 0:  # unknown base labels could change the meaning of later records
                    raise MalformedPayload(f"record {i}: unknown CBOR base label {k}")
                continue
            name = CBOR_LABELS[k]
        else:
            if k in CBOR_KEYS:
                raise MalformedPayload(f"record {i}: label {k!r} must be the integer {CBOR_KEYS[k]} in SenML CBOR")
            name = k
        out[name] = v
    return out


def _typed(rdef: ResourceDef | None, path: Path, key: str, raw: Any, cbor: bool) -> Value:
    """Convert one record value; with ``rdef`` None the value key alone decides the type."""
    if key == "v":
        if not _is_number(raw):
            raise TypeMismatch(f"{path}: 'v' must be a number")
        if isinstance(raw, float) and not math.isfinite(raw):
            raise TypeMismatch(f"{path}: 'v' is not finite")
    elif key in ("vs", "vlo") or (key == "vd" and not cbor):
        if not isinstance(raw, str):
            raise TypeMismatch(f"{path}: {key!r} must be a string")
    elif key == "vd":
        if not isinstance(raw, bytes):
            raise TypeMismatch(f"{path}: 'vd' must be a byte string in SenML CBOR")
    elif key == "vb" and not isinstance(raw, bool):
        raise TypeMismatch(f"{path}: 'vb' must be a boolean")
    if rdef is None:
        if key == "vd":
            return raw if cbor else b64_decode(raw, path, urlsafe=True)
        if key == "vlo":
            return objlnk_from_text(raw, path)
        return raw
    want = _value_key(rdef.type)
    if key != want:
        raise TypeMismatch(f"{path}: resource {rdef.id} is {rdef.type.value}, expected {want!r} not {key!r}")
    t = rdef.type
    if t in (ResourceType.INTEGER, ResourceType.TIME):
        return number_to_int(raw, path)
    if t is ResourceType.UNSIGNED_INTEGER:
        return number_to_int(raw, path, unsigned=True)
    if t is ResourceType.FLOAT:
        return float(raw)
    if t is ResourceType.OPAQUE:
        return raw if cbor else b64_decode(raw, path, urlsafe=True)
    if t is ResourceType.OBJLNK:
        return objlnk_from_text(raw, path)
    return raw


def _resolve(records: list[dict[str, Any]]) -> list[tuple[int, Path, dict[str, Any], Any]]:
    """Apply base fields; yield (index, path, record, base value) per record."""
    out = []
    bn = ""
    bver: Any = None
    bv: Any = None
    for i, rec in enumerate(records):
        for k, v in rec.items():
            if k.endswith("_"):
                raise MalformedPayload(f"record {i}: must-understand label {k!r} is not supported")
            if k in _NUMBER_FIELDS and not _is_number(v):
                raise MalformedPayload(f"record {i}: {k!r} must be a number")
            if k in _STRING_FIELDS and not isinstance(v, str):
                raise MalformedPayload(f"record {i}: {k!r} must be a string")
        if "bver" in rec:
            if bver is not None and rec["bver"] != bver:
                raise MalformedPayload(f"record {i}: 'bver' differs from an earlier record")
            bver = rec["bver"]
        if "bn" in rec:
            bn = rec["bn"]
        if "bv" in rec:
            bv = rec["bv"]
        if "n" not in rec and bn == "":
            raise MalformedPayload(f"record {i} has neither a name nor a base name")
        out.append((i, parse_name(bn + rec.get("n", "")), rec, bv))
    return out


def _parse_records(fmt_name: str, payload: bytes, cbor: bool) -> list[dict[str, Any]]:
    doc = _load_cbor(payload) if cbor else load_json(payload, "SenML JSON payload")
    if not isinstance(doc, list):
        raise MalformedPayload(f"{fmt_name} payload must be an array of records")
    if cbor:
        return [_cbor_record(i, r) for i, r in enumerate(doc)]
    for i, r in enumerate(doc):
        if not isinstance(r, dict):
            raise MalformedPayload(f"record {i} is not a JSON object")
    return doc


def _decode(payload: bytes, base: Path, registry: ResourceLookup | None, cbor: bool) -> Values:
    fmt_name = "SenML CBOR" if cbor else "SenML JSON"
    out: Values = {}
    for i, path, rec, bv in _resolve(_parse_records(fmt_name, payload, cbor)):
        keys = [k for k in VALUE_KEYS if k in rec]
        if len(keys) != 1:
            raise MalformedPayload(f"record {i} ({path}) has {len(keys)} values, expected exactly one")
        if path.depth not in (3, 4):
            raise MalformedPayload(f"record {i}: {path} is not a resource or resource-instance path")
        check_under(base, path)
        rdef = lookup(registry, path) if registry is not None else None
        if rdef is not None:
            check_shape(rdef, path)
        raw = rec[keys[0]]
        if bv is not None and keys[0] == "v" and _is_number(raw):
            raw = raw + bv
        put(out, path, _typed(rdef, path, keys[0], raw, cbor))
    return out


def decode_json(payload: bytes, base: Path, registry: ResourceLookup | None) -> Values:
    """Decode SenML JSON. ``registry=None`` decodes without definitions, typing by value key."""
    return _decode(payload, base, registry, cbor=False)


def decode_cbor(payload: bytes, base: Path, registry: ResourceLookup | None) -> Values:
    """Decode SenML CBOR. ``registry=None`` decodes without definitions, typing by value key."""
    return _decode(payload, base, registry, cbor=True)


def decode_names(payload: bytes, cbor: bool) -> list[Path]:
    """The paths of a Read-Composite / Observe-Composite request body (Core 1.1.1 §5.4.6):
    records with names and no values, in payload order. Raises MalformedPayload."""
    paths: list[Path] = []
    fmt_name = "SenML CBOR" if cbor else "SenML JSON"
    for i, path, rec, _ in _resolve(_parse_records(fmt_name, payload, cbor)):
        if any(k in rec for k in VALUE_KEYS):
            raise MalformedPayload(f"record {i} ({path}) carries a value in a path-only request")
        if path in paths:
            raise MalformedPayload(f"{path} appears twice in the payload")
        paths.append(path)
    return paths


def encode_names(paths: list[Path], cbor: bool) -> bytes:
    """Inverse of :func:`decode_names`: ``[{"n": "/3/0/1"}, ...]`` with absolute names."""
    recs = [{(0 if cbor else "n"): str(p)} for p in paths]
    return cbor2.dumps(recs) if cbor else json.dumps(recs, separators=(",", ":")).encode()
