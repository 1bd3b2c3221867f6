"""application/vnd.oma.lwm2m+tlv (Content-Format 11542), Core 1.1.1 §7.4.3.

Each TLV: a type byte (bits 7-6 identifier kind: 00 Object Instance, 01 Resource Instance,
10 Multiple Resource, 11 Resource with value; bit 5: 16-bit identifier; bits 4-3: length field
size 0/1/2/3 bytes; bits 2-0: the length itself when the length field size is 0), the identifier
(1 or 2 bytes), the length, then the value or nested TLVs.

Value encodings (Appendix C, TLV column): Integer/Time two's complement big-endian in 1, 2, 4 or 8
bytes; Unsigned Integer the same sizes, unsigned; Float IEEE 754 in 4 or 8 bytes; Boolean one
byte 0/1; Objlnk two 16-bit unsigned big-endian halves; String/Corelnk UTF-8; Opaque raw.

Layout by target depth (§7.4.3 and its examples §7.4.3.1-2): object -> Object Instance TLVs;
object instance -> resource TLVs (one Object Instance TLV with the target's ID is also accepted
when decoding); resource -> one Resource TLV, or one Multiple Resource TLV holding Resource
Instance TLVs (bare Resource Instance TLVs are accepted when decoding); resource instance ->
one Resource Instance TLV. The root cannot be expressed in TLV.
"""
from __future__ import annotations

import enum
import math
import struct
from dataclasses import dataclass

from reference.formats._common import (ResourceLookup, check_shape, check_under, checked_items, lookup, put)
from reference.formats.errors import MalformedPayload, PathMismatch, TypeMismatch, UnsupportedFormat
from reference.model.path import MAX_ID, Path
from reference.model.types import ObjLink, ResourceDef, ResourceType, Value, Values

MAX_LENGTH = 0xFFFFFF  # 24-bit length field


class TlvKind(enum.IntEnum):
    """Bits 7-6 of the TLV type byte (Core 1.1.1 Table 7.4.3-1)."""

    OBJECT_INSTANCE = 0b00
    RESOURCE_INSTANCE = 0b01
    MULTIPLE_RESOURCE = 0b10
    RESOURCE = 0b11


@dataclass
class Tlv:
    kind: TlvKind
    id: int
    value: bytes = b""            # leaf TLVs (Resource, Resource Instance)
    children: list["Tlv"] | None = None  # container TLVs (Object Instance, Multiple Resource)


# ---- wire level ---------------------------------------------------------------------------------

def pack(tlvs: list[Tlv]) -> bytes:
    out = bytearray()
    for t in tlvs:
        body = pack(t.children) if t.children is not None else t.value
        n = len(body)
        if n > MAX_LENGTH:
            raise UnsupportedFormat(f"TLV value of {n} bytes exceeds the 24-bit length field")
        typ = t.kind << 6
        ident = t.id.to_bytes(1, "big") if t.id <= 0xFF else t.id.to_bytes(2, "big")
        if t.id > 0xFF:
            typ |= 0x20
        if n <= 7:
            typ |= n
            length = b""
        elif n <= 0xFF:
            typ |= 0x08
            length = n.to_bytes(1, "big")
        elif n <= 0xFFFF:
            typ |= 0x10
            length = n.to_bytes(2, "big")
        else:
            typ |= 0x18
            length = n.to_bytes(3, "big")
        out += bytes([typ]) + ident + length + body
    return bytes(out)


def unpack(data: bytes, depth: int = 0) -> list[Tlv]:
    """Parse a TLV sequence; containers are parsed recursively (at most two levels deep)."""
    out: list[Tlv] = []
    i, n = 0, len(data)
    while i < n:
        typ = data[i]
        i += 1
        kind = TlvKind(typ >> 6)
        id_len = 2 if typ & 0x20 else 1
        len_len = (typ >> 3) & 0x03
        if i + id_len + len_len > n:
            raise MalformedPayload(f"TLV header truncated at byte {i - 1}")
        ident = int.from_bytes(data[i:i + id_len], "big")
        if ident > MAX_ID:
            raise MalformedPayload(f"TLV identifier {ident} at byte {i} exceeds {MAX_ID} (65535 is reserved)")
        i += id_len
        length = int.from_bytes(data[i:i + len_len], "big") if len_len else typ & 0x07
        i += len_len
        if i + length > n:
            raise MalformedPayload(f"TLV length {length} at byte {i} runs past the end of the payload ({n} bytes)")
        body = bytes(data[i:i + length])
        i += length
        if kind in (TlvKind.OBJECT_INSTANCE, TlvKind.MULTIPLE_RESOURCE):
            if depth >= 2:
                raise MalformedPayload(f"TLV nested too deeply (kind {kind.name} at level {depth})")
            out.append(Tlv(kind, ident, children=unpack(body, depth + 1)))
        else:
            out.append(Tlv(kind, ident, value=body))
    return out


# ---- values -------------------------------------------------------------------------------------

def _int_bytes(v: int, signed: bool) -> bytes:
    for size in (1, 2, 4, 8):
        try:
            return v.to_bytes(size, "big", signed=signed)
        except OverflowError:
            continue
    raise TypeMismatch(f"{v} does not fit 8 bytes")


def encode_value(rdef: ResourceDef, v: Value) -> bytes:
    t = rdef.type
    if t in (ResourceType.INTEGER, ResourceType.TIME):
        return _int_bytes(v, signed=True)  # type: ignore[arg-type]
    if t is ResourceType.UNSIGNED_INTEGER:
        return _int_bytes(v, signed=False)  # type: ignore[arg-type]
    if t is ResourceType.FLOAT:
        f = float(v)  # type: ignore[arg-type]
        single = struct.pack(">f", f) if (math.isfinite(f) and abs(f) <= 3.4028234663852886e38) else None
        if single is not None and struct.unpack(">f", single)[0] == f:
            return single
        return struct.pack(">d", f)
    if t is ResourceType.BOOLEAN:
        return b"\x01" if v else b"\x00"
    if t is ResourceType.OBJLNK:
        return struct.pack(">HH", v.object_id, v.instance_id)  # type: ignore[union-attr]
    if t is ResourceType.OPAQUE:
        return v  # type: ignore[return-value]
    return str(v).encode("utf-8")  # String, Corelnk


def decode_value(rdef: ResourceDef, path: Path, b: bytes) -> Value:
    t = rdef.type
    if t in (ResourceType.INTEGER, ResourceType.TIME, ResourceType.UNSIGNED_INTEGER):
        if len(b) not in (1, 2, 4, 8):
            raise TypeMismatch(f"{path}: integer TLV value of {len(b)} bytes (must be 1, 2, 4 or 8)")
        return int.from_bytes(b, "big", signed=t is not ResourceType.UNSIGNED_INTEGER)
    if t is ResourceType.FLOAT:
        if len(b) == 4:
            return struct.unpack(">f", b)[0]
        if len(b) == 8:
            return struct.unpack(">d", b)[0]
        raise TypeMismatch(f"{path}: float TLV value of {len(b)} bytes (must be 4 or 8)")
    if t is ResourceType.BOOLEAN:
        if b == b"\x00":
            return False
        if b == b"\x01":
            return True
        raise TypeMismatch(f"{path}: boolean TLV value must be one byte 0 or 1, got {b.hex()!r:.40}")
    if t is ResourceType.OBJLNK:
        if len(b) != 4:
            raise TypeMismatch(f"{path}: object link TLV value of {len(b)} bytes (must be 4)")
        return ObjLink(*struct.unpack(">HH", b))
    if t is ResourceType.OPAQUE:
        return b
    if t in (ResourceType.STRING, ResourceType.CORELNK):
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TypeMismatch(f"{path}: string value is not UTF-8 ({e.reason})") from None
    raise TypeMismatch(f"{path}: resource type {t.value} carries no value")


# ---- Values <-> TLV tree ------------------------------------------------------------------------

def _resource_tlvs(items: list[tuple[Path, ResourceDef, Value]]) -> list[Tlv]:
    out: list[Tlv] = []
    multi: dict[int, Tlv] = {}
    for path, rdef, v in items:
        if rdef.multiple:
            parent = multi.get(path.resource_id)  # type: ignore[arg-type]
            if parent is None:
                parent = multi[path.resource_id] = Tlv(TlvKind.MULTIPLE_RESOURCE, path.resource_id, children=[])  # type: ignore[arg-type]
                out.append(parent)
            parent.children.append(Tlv(TlvKind.RESOURCE_INSTANCE, path.resource_instance_id, encode_value(rdef, v)))  # type: ignore[union-attr, arg-type]
        else:
            out.append(Tlv(TlvKind.RESOURCE, path.resource_id, encode_value(rdef, v)))  # type: ignore[arg-type]
    return out


def encode(values: Values, base: Path, registry: ResourceLookup | None) -> bytes:
    if base.depth == 0:
        raise UnsupportedFormat("TLV cannot express a payload at the root path")
    items = checked_items(values, base, registry)
    if base.depth == 4:
        if len(items) != 1:
            raise UnsupportedFormat(f"a resource-instance target carries exactly one value, got {len(items)}")
        path, rdef, v = items[0]
        return pack([Tlv(TlvKind.RESOURCE_INSTANCE, path.resource_instance_id, encode_value(rdef, v))])  # type: ignore[arg-type]
    if base.depth == 3:
        rdef = lookup(registry, base)
        if not rdef.multiple and len(items) != 1:
            raise UnsupportedFormat(f"single-instance resource {base} carries exactly one value, got {len(items)}")
        if rdef.multiple:
            check_shape(rdef, base.child(0))
            return pack([Tlv(TlvKind.MULTIPLE_RESOURCE, base.resource_id, children=_resource_tlvs(items)[0].children  # type: ignore[arg-type]
                             if items else [])])
        return pack(_resource_tlvs(items))
    if base.depth == 2:
        return pack(_resource_tlvs(items))
    by_instance: dict[int, list] = {}
    for it in items:
        by_instance.setdefault(it[0].instance_id, []).append(it)  # type: ignore[arg-type]
    return pack([Tlv(TlvKind.OBJECT_INSTANCE, iid, children=_resource_tlvs(its)) for iid, its in by_instance.items()])


def _leaf(out: Values, path: Path, tlv: Tlv, registry: ResourceLookup | None) -> None:
    rdef = lookup(registry, path)
    check_shape(rdef, path)
    put(out, path, decode_value(rdef, path, tlv.value))


def _decode_resources(out: Values, inst: Path, tlvs: list[Tlv], registry: ResourceLookup | None) -> None:
    for t in tlvs:
        p = inst.child(t.id)
        if t.kind is TlvKind.RESOURCE:
            _leaf(out, p, t, registry)
        elif t.kind is TlvKind.MULTIPLE_RESOURCE:
            _decode_multiple(out, p, t, registry)
        else:
            raise MalformedPayload(f"{kind_name(t)} TLV where a resource TLV belongs (under {inst})")


def _decode_multiple(out: Values, res: Path, t: Tlv, registry: ResourceLookup | None) -> None:
    rdef = lookup(registry, res)
    if not rdef.multiple:
        raise TypeMismatch(f"{res}: Multiple Resource TLV for single-instance resource {rdef.id}")
    if any(p.parent == res for p in out):
        raise MalformedPayload(f"{res} appears twice in the payload")
    for c in t.children or []:
        if c.kind is not TlvKind.RESOURCE_INSTANCE:
            raise MalformedPayload(f"{kind_name(c)} TLV inside Multiple Resource TLV {res}")
        _leaf(out, res.child(c.id), c, registry)


def kind_name(t: Tlv) -> str:
    return t.kind.name.replace("_", " ").title()


def decode(payload: bytes, base: Path, registry: ResourceLookup | None) -> Values:
    if base.depth == 0:
        raise UnsupportedFormat("TLV cannot express a payload at the root path")
    tlvs = unpack(bytes(payload))
    out: Values = {}
    if base.depth == 1:
        seen: set[int] = set()
        for t in tlvs:
            if t.kind is not TlvKind.OBJECT_INSTANCE:
                raise MalformedPayload(f"{kind_name(t)} TLV where an Object Instance TLV belongs (target {base})")
            if t.id in seen:
                raise MalformedPayload(f"object instance {base}/{t.id} appears twice in the payload")
            seen.add(t.id)
            _decode_resources(out, base.child(t.id), t.children or [], registry)
    elif base.depth == 2:
        if len(tlvs) == 1 and tlvs[0].kind is TlvKind.OBJECT_INSTANCE:
            if tlvs[0].id != base.instance_id:
                raise PathMismatch(f"Object Instance TLV {tlvs[0].id} does not match target {base}")
            tlvs = tlvs[0].children or []
        _decode_resources(out, base, tlvs, registry)
    elif base.depth == 3:
        if not tlvs:
            raise MalformedPayload(f"empty TLV payload for resource {base}")
        rdef = lookup(registry, base)
        if all(t.kind is TlvKind.RESOURCE_INSTANCE for t in tlvs) and rdef.multiple:
            tlvs = [Tlv(TlvKind.MULTIPLE_RESOURCE, base.resource_id, children=tlvs)]  # type: ignore[arg-type]
        if len(tlvs) != 1 or tlvs[0].kind not in (TlvKind.RESOURCE, TlvKind.MULTIPLE_RESOURCE):
            raise MalformedPayload(f"a resource target takes one Resource or Multiple Resource TLV ({base})")
        if tlvs[0].id != base.resource_id:
            raise PathMismatch(f"TLV for resource {tlvs[0].id} does not match target {base}")
        _decode_resources(out, base.parent, tlvs, registry)
    else:
        if len(tlvs) != 1 or tlvs[0].kind is not TlvKind.RESOURCE_INSTANCE:
            raise MalformedPayload(f"a resource-instance target takes one Resource Instance TLV ({base})")
        if tlvs[0].id != base.resource_instance_id:
            raise PathMismatch(f"Resource Instance TLV {tlvs[0].id} does not match target {base}")
        _leaf(out, base, tlvs[0], registry)
    for p in out:
        check_under(base, p)
    return out
