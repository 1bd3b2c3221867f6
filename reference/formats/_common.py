"""Helpers shared by the codecs: resource lookup, value/type checks (Core 1.1.1 Appendix C), path rules."""
from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Iterable, Protocol

from reference.formats.errors import MalformedPayload, PathMismatch, TypeMismatch, UnknownResource
from reference.model.path import Path, PathError
from reference.model.types import ObjLink, ResourceDef, ResourceType, Value, Values

INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1
UINT64_MAX = 2 ** 64 - 1
OBJLNK_MAX = 65535  # Objlnk halves are 16-bit; 65535:65535 is the "no instance" link (Appendix C)

_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_OBJLNK_RE = re.compile(r"([0-9]{1,5}):([0-9]{1,5})")


class ResourceLookup(Protocol):
    """What a codec needs from a registry (``ObjectRegistry`` satisfies it)."""

    def resource_def(self, path: Path) -> ResourceDef | None: ...


def lookup(registry: ResourceLookup | None, path: Path) -> ResourceDef:
    """The resource definition for ``path`` or :class:`UnknownResource`."""
    rdef = registry.resource_def(path) if registry is not None else None
    if rdef is None:
        raise UnknownResource(f"{path}: no such resource in the object definitions")
    return rdef


def check_under(base: Path, path: Path) -> None:
    if not base.contains(path):
        raise PathMismatch(f"{path} is not under the target path {base}")


def check_shape(rdef: ResourceDef, path: Path) -> None:
    """Single-instance resources take depth-3 paths, multiple-instance ones depth-4 paths."""
    if path.depth not in (3, 4):
        raise PathMismatch(f"{path}: a value needs a resource or resource-instance path")
    if rdef.type is ResourceType.NONE or rdef.executable:
        raise TypeMismatch(f"{path}: resource {rdef.id} ({rdef.name}) is executable and has no value")
    if rdef.multiple and path.depth == 3:
        raise TypeMismatch(f"{path}: resource {rdef.id} is multiple-instance; values go to resource instances")
    if not rdef.multiple and path.depth == 4:
        raise TypeMismatch(f"{path}: resource {rdef.id} is single-instance; it has no resource instances")


def parse_name(name: str) -> Path:
    """A SenML / LwM2M-JSON resolved name ("/3/0/1") as a Path; strict canonical form."""
    try:
        p = Path.parse(name)
    except PathError as e:
        raise MalformedPayload(f"name {name!r} is not an LwM2M path: {e}") from None
    if str(p) != name:
        raise MalformedPayload(f"name {name!r} is not a canonical LwM2M path (expected {str(p)!r})")
    return p


def check_value(rdef: ResourceDef, path: Path, value: object) -> Value:
    """Validate a Python value against the resource type; return it normalised (bytes, float).

    Raises :class:`TypeMismatch`. Python types per :mod:`reference.model.types`.
    """
    t = rdef.type
    if t in (ResourceType.STRING, ResourceType.CORELNK):
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise TypeMismatch(f"{path}: string is not encodable as UTF-8 (lone surrogate)") from None
            return value
    elif t in (ResourceType.INTEGER, ResourceType.TIME):
        if isinstance(value, int) and not isinstance(value, bool):
            if INT64_MIN <= value <= INT64_MAX:
                return value
            raise TypeMismatch(f"{path}: {value} outside the signed 64-bit range")
    elif t is ResourceType.UNSIGNED_INTEGER:
        if isinstance(value, int) and not isinstance(value, bool):
            if 0 <= value <= UINT64_MAX:
                return value
            raise TypeMismatch(f"{path}: {value} outside the unsigned 64-bit range")
    elif t is ResourceType.FLOAT:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t is ResourceType.BOOLEAN:
        if isinstance(value, bool):
            return value
    elif t is ResourceType.OPAQUE:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
    elif t is ResourceType.OBJLNK:
        if isinstance(value, ObjLink):
            if 0 <= value.object_id <= OBJLNK_MAX and 0 <= value.instance_id <= OBJLNK_MAX:
                return value
            raise TypeMismatch(f"{path}: object link {value} has a part outside 0..65535")
    raise TypeMismatch(f"{path}: {type(value).__name__} value {value!r:.60} does not fit type {t.value}")


def checked_items(values: Values, base: Path, registry: ResourceLookup | None
                  ) -> list[tuple[Path, ResourceDef, Value]]:
    """Validate every entry for encoding; return them sorted by path (deterministic output)."""
    out = []
    for path in values:
        if not isinstance(path, Path):
            raise PathMismatch(f"value key {path!r} is not a Path")
    # sort on the parts tuple: Path's own ordering compares None with int across depths
    for path in sorted(values, key=lambda p: p.parts):
        check_under(base, path)
        if path.depth not in (3, 4):
            raise PathMismatch(f"{path}: a value needs a resource or resource-instance path")
        rdef = lookup(registry, path)
        check_shape(rdef, path)
        out.append((path, rdef, check_value(rdef, path, values[path])))
    return out


def put(out: Values, path: Path, value: Value) -> None:
    if path in out:
        raise MalformedPayload(f"{path} appears twice in the payload")
    out[path] = value


# ---- text forms (Core 1.1.1 §7.4.1 / Appendix C "Text" column) -------------------------------

def int_from_text(text: str, path: Path, unsigned: bool = False) -> int:
    if not _INT_RE.fullmatch(text):
        raise TypeMismatch(f"{path}: {text!r:.60} is not a decimal integer")
    v = int(text)
    lo, hi = (0, UINT64_MAX) if unsigned else (INT64_MIN, INT64_MAX)
    if not lo <= v <= hi:
        raise TypeMismatch(f"{path}: {v} outside the {'unsigned' if unsigned else 'signed'} 64-bit range")
    return v


def float_from_text(text: str, path: Path) -> float:
    if not _FLOAT_RE.fullmatch(text):
        raise TypeMismatch(f"{path}: {text!r:.60} is not a decimal number")
    v = float(text)
    if not math.isfinite(v):
        raise TypeMismatch(f"{path}: {text!r:.60} overflows a 64-bit float")
    return v


def finite(v: float, path: Path) -> float:
    """JSON has no NaN/Infinity; the JSON-based formats refuse them."""
    if not math.isfinite(v):
        raise TypeMismatch(f"{path}: {v} cannot be represented in JSON")
    return v


def float_to_text(v: float, path: Path) -> str:
    if not math.isfinite(v):
        raise TypeMismatch(f"{path}: {v} has no decimal text form")
    return repr(float(v))


def objlnk_from_text(text: str, path: Path) -> ObjLink:
    m = _OBJLNK_RE.fullmatch(text)
    if not m or int(m.group(1)) > OBJLNK_MAX or int(m.group(2)) > OBJLNK_MAX:
        raise TypeMismatch(f"{path}: {text!r:.60} is not an object link 'oid:iid'")
    return ObjLink(int(m.group(1)), int(m.group(2)))


def b64_decode(text: str, path: Path, urlsafe: bool = False) -> bytes:
    """Strict base64 (RFC 4648 §4), or base64url (§5) where padding is optional (RFC 8428 §5)."""
    try:
        if urlsafe:
            if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
                raise ValueError("character outside the base64url alphabet")
            stripped = text.rstrip("=")
            if len(stripped) % 4 == 1 or (text != stripped and len(text) % 4):
                raise ValueError("bad length")
            return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as e:
        raise TypeMismatch(f"{path}: invalid base64{'url' if urlsafe else ''} data: {e}") from None


def b64_encode(data: bytes, urlsafe: bool = False) -> str:
    if urlsafe:
        return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")
    return base64.b64encode(data).decode("ascii")


def value_to_text(rdef: ResourceDef, path: Path, v: Value) -> str:
    """Appendix C text representation of an already-checked value."""
    t = rdef.type
    if t is ResourceType.BOOLEAN:
        return "1" if v else "0"
    if t is ResourceType.FLOAT:
        return float_to_text(v, path)  # type: ignore[arg-type]
    if t is ResourceType.OPAQUE:
        return b64_encode(v)  # type: ignore[arg-type]
    return str(v)  # String, Corelnk, Integer, Unsigned, Time, Objlnk ("oid:iid")


def value_from_text(rdef: ResourceDef, path: Path, text: str) -> Value:
    t = rdef.type
    if t in (ResourceType.STRING, ResourceType.CORELNK):
        return text
    if t in (ResourceType.INTEGER, ResourceType.TIME):
        return int_from_text(text, path)
    if t is ResourceType.UNSIGNED_INTEGER:
        return int_from_text(text, path, unsigned=True)
    if t is ResourceType.FLOAT:
        return float_from_text(text, path)
    if t is ResourceType.BOOLEAN:
        if text == "1":
            return True
        if text == "0":
            return False
        raise TypeMismatch(f"{path}: boolean text must be '0' or '1', not {text!r:.60}")
    if t is ResourceType.OPAQUE:
        return b64_decode(text, path)
    if t is ResourceType.OBJLNK:
        return objlnk_from_text(text, path)
    raise TypeMismatch(f"{path}: resource type {t.value} carries no value")


def number_to_int(v: int | float, path: Path, unsigned: bool = False) -> int:
    """A JSON/CBOR number for an integer-typed resource: integral, within range."""
    if isinstance(v, float):
        if not math.isfinite(v) or not v.is_integer():
            raise TypeMismatch(f"{path}: {v} is not an integer")
        v = int(v)
    lo, hi = (0, UINT64_MAX) if unsigned else (INT64_MIN, INT64_MAX)
    if not lo <= v <= hi:
        raise TypeMismatch(f"{path}: {v} outside the {'unsigned' if unsigned else 'signed'} 64-bit range")
    return v


def utf8(payload: bytes, what: str) -> str:
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedPayload(f"{what} is not valid UTF-8: {e.reason} at byte {e.start}") from None


def base_prefix(base: Path, paths: Iterable[Path]) -> tuple[str | None, bool]:
    """Choose the base name for SenML/LwM2M-JSON encoding.

    Returns ``(bn, names_present)``: for one value exactly at a resource/resource-instance ``base``
    the base name is the full path and records carry no name; otherwise ``bn`` is the base path
    with a trailing "/" and names are relative. At the root (composite operations) there is no
    base name and names are absolute, as in the Core 1.1.1 §7.4.4 composite examples.
    """
    ps = list(paths)
    if base.depth >= 3 and ps == [base]:
        return str(base), False
    if base.depth == 0:
        return None, True
    return str(base) + "/", True
