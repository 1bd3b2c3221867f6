"""application/cbor (Content-Format 60): one resource value as a single CBOR data item.

Core 1.1.1 §7.4.3 ("CBOR": used for Read and Write of singular Resources or Resource Instances;
numbered §7.4.6 in some drafts), Table 7.4.-2 (application/cbor = 60) and Appendix C (Table C.2,
data type mapping); the CBOR encoding itself is RFC 8949 (was RFC 7049). Type mapping:

============================  ==================================================================
LwM2M type (Appendix C)       CBOR data item (RFC 8949 §3.1 major types)
============================  ==================================================================
Integer                       major type 0 or 1 (signed 64-bit range)
Unsigned Integer              major type 0 (0 .. 2**64-1)
Float                         major type 7, half (25), single (26) or double (27) precision;
                              all three are decoded (RFC 8949 §3.3); encoded as the shortest of
                              them that represents the value exactly (§4.2.2 preferred encoding)
Boolean                       major type 7, simple values false (20) / true (21)
String, Corelnk               major type 3 (UTF-8 text string)
Opaque                        major type 2 (byte string)
Time                          encoded as tag 1 (epoch-based date/time, RFC 8949 §3.4.2) over an
                              integer, as RFC 7049 §2.4.1 which Appendix C cites; decoded from
                              tag 1 (integer, or a float with an integral value), from an
                              untagged integer (LwM2M 1.2 Table C.2: "an unsigned integer") and
                              from tag 0 (RFC 3339 date/time string, §3.4.1: Appendix C
                              1.1.1 "date/time strings")
Objlnk                        major type 3, the text "oid:iid" (as the text format)
============================  ==================================================================

Strict decoding: the payload must be exactly one well-formed CBOR data item (no trailing bytes,
no truncation, no reserved additional information 28-30, no break outside an indefinite-length
string, well-formed indefinite-length strings made of chunks of the same major type); anything
else raises :class:`MalformedPayload`. An item of the wrong type for the resource (an array or
a map -- refused at its head, its content is not read --, null, undefined, another tag, a float
for an Integer, ...) raises :class:`TypeMismatch`. Only a single value at a resource (single-instance, depth 3) or
resource-instance (depth 4) path, as for text/plain; anything else is :class:`UnsupportedFormat`.
"""
from __future__ import annotations

import datetime as _dt
import math
import struct

from reference.formats._common import INT64_MAX, INT64_MIN, ResourceLookup, checked_items, objlnk_from_text
from reference.formats.errors import MalformedPayload, TypeMismatch, UnsupportedFormat
from reference.formats.text import _single_target
from reference.model.path import Path
from reference.model.types import ResourceType, Values

MEDIA = "application/cbor"
#: RFC 8949 §3.4.1 / §3.4.2: standard date/time string, epoch-based date/time.
TAG_DATETIME_STRING = 0
TAG_EPOCH = 1
_MAX_CHUNKS = 100_000  # bound the work on a hostile indefinite-length string


# ---- encoding ---------------------------------------------------------------------------------

def _head(major: int, arg: int) -> bytes:
    """The initial byte(s) of a data item with the shortest argument encoding (RFC 8949 §4.2.1)."""
    mt = major << 5
    if arg < 24:
        return bytes((mt | arg,))
    if arg <= 0xFF:
        return bytes((mt | 24, arg))
    if arg <= 0xFFFF:
        return bytes((mt | 25,)) + arg.to_bytes(2, "big")
    if arg <= 0xFFFFFFFF:
        return bytes((mt | 26,)) + arg.to_bytes(4, "big")
    return bytes((mt | 27,)) + arg.to_bytes(8, "big")


def _int(v: int) -> bytes:
    return _head(0, v) if v >= 0 else _head(1, -1 - v)


def _float(v: float) -> bytes:
    """Shortest of half/single/double that gives back exactly ``v`` (RFC 8949 §4.2.2)."""
    if math.isnan(v):
        return b"\xf9\x7e\x00"  # the canonical quiet NaN in half precision
    for fmt, ai in (("e", 25), ("f", 26)):
        try:
            packed = struct.pack(">" + fmt, v)
        except OverflowError:
            continue
        if struct.unpack(">" + fmt, packed)[0] == v:
            return bytes((0xE0 | ai,)) + packed
    return b"\xfb" + struct.pack(">d", v)


def _text(s: str) -> bytes:
    data = s.encode("utf-8")
    return _head(3, len(data)) + data


def encode(values: Values, base: Path, registry: ResourceLookup | None) -> bytes:
    """Encode exactly one value at ``base`` as one CBOR data item (table in the module docstring)."""
    rdef = _single_target(base, registry, MEDIA)
    items = checked_items(values, base, registry)
    if len(items) != 1:
        raise UnsupportedFormat(f"{MEDIA} carries exactly one value, got {len(items)}")
    v = items[0][2]
    t = rdef.type
    if t in (ResourceType.INTEGER, ResourceType.UNSIGNED_INTEGER):
        return _int(v)  # type: ignore[arg-type]
    if t is ResourceType.TIME:
        return _head(6, TAG_EPOCH) + _int(v)  # type: ignore[arg-type]
    if t is ResourceType.FLOAT:
        return _float(v)  # type: ignore[arg-type]
    if t is ResourceType.BOOLEAN:
        return b"\xf5" if v else b"\xf4"
    if t is ResourceType.OPAQUE:
        return _head(2, len(v)) + v  # type: ignore[arg-type, operator]
    if t is ResourceType.OBJLNK:
        return _text(str(v))
    return _text(v)  # type: ignore[arg-type]  # String, Corelnk


# ---- decoding ---------------------------------------------------------------------------------

class _Item:
    """One decoded data item: major type, value, tag (None when untagged)."""

    __slots__ = ("major", "value", "tag", "simple")

    def __init__(self, major: int, value: object, tag: int | None = None, simple: int | None = None) -> None:
        self.major = major
        self.value = value
        self.tag = tag
        self.simple = simple  # major type 7: the simple value (20 false, 21 true, 22 null, ...)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MalformedPayload(f"{MEDIA}: truncated data item (needs {end - len(self.data)} more bytes)")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def head(self) -> tuple[int, int, int | None]:
        """(major type, additional information, argument or None for indefinite length)."""
        b = self.take(1)[0]
        major, ai = b >> 5, b & 0x1F
        if ai < 24:
            return major, ai, ai
        if ai <= 27:
            return major, ai, int.from_bytes(self.take(1 << (ai - 24)), "big")
        if ai == 31:
            return major, ai, None
        raise MalformedPayload(f"{MEDIA}: reserved additional information {ai} (RFC 8949 §3)")

    def string(self, major: int, length: int | None) -> bytes:
        if length is not None:
            return self.take(length)
        chunks = []
        for _ in range(_MAX_CHUNKS):  # indefinite length: definite chunks of the same type until break
            if self.take(1) == b"\xff":
                return b"".join(chunks)
            self.pos -= 1
            m, _, n = self.head()
            if m != major or n is None:
                raise MalformedPayload(f"{MEDIA}: indefinite-length string chunk of major type {m} "
                                       "(RFC 8949 §3.2.3: definite chunks of the same type)")
            chunks.append(self.take(n))
        raise MalformedPayload(f"{MEDIA}: indefinite-length string has more than {_MAX_CHUNKS} chunks")

    def item(self) -> _Item:
        major, ai, arg = self.head()
        if major == 0:
            if arg is None:
                raise MalformedPayload(f"{MEDIA}: indefinite length on an unsigned integer")
            return _Item(0, arg)
        if major == 1:
            if arg is None:
                raise MalformedPayload(f"{MEDIA}: indefinite length on a negative integer")
            return _Item(1, -1 - arg)
        if major in (2, 3):
            raw = self.string(major, arg)
            if major == 2:
                return _Item(2, raw)
            try:
                return _Item(3, raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise MalformedPayload(f"{MEDIA}: text string is not valid UTF-8 ({e.reason})") from None
        if major in (4, 5):  # never a single LwM2M value: refused without walking its content
            raise TypeMismatch(f"{MEDIA}: an {'array' if major == 4 else 'map'} is not a single resource value")
        if major == 6:
            if arg is None:
                raise MalformedPayload(f"{MEDIA}: indefinite length on a tag")
            inner = self.item()
            if inner.tag is not None:
                raise TypeMismatch(f"{MEDIA}: nested tags {arg}({inner.tag}(...)) are not an LwM2M value")
            inner.tag = arg
            return inner
        # major 7: simple values and floats (RFC 8949 §3.3)
        if arg is None:
            raise MalformedPayload(f"{MEDIA}: break (0xff) outside an indefinite-length item")
        if ai == 25:
            return _Item(7, struct.unpack(">e", arg.to_bytes(2, "big"))[0])
        if ai == 26:
            return _Item(7, struct.unpack(">f", arg.to_bytes(4, "big"))[0])
        if ai == 27:
            return _Item(7, struct.unpack(">d", arg.to_bytes(8, "big"))[0])
        if ai == 24 and arg < 32:
            raise MalformedPayload(f"{MEDIA}: simple value {arg} in two bytes (RFC 8949 §3.3: not well-formed)")
        return _Item(7, None, simple=arg)


def _describe(it: _Item) -> str:
    names = {0: "unsigned integer", 1: "negative integer", 2: "byte string", 3: "text string"}
    if it.major == 7:
        d = {20: "false", 21: "true", 22: "null", 23: "undefined"}.get(it.simple, f"simple({it.simple})") \
            if it.simple is not None else f"float {it.value!r}"
    else:
        d = names[it.major]
    return d if it.tag is None else f"tag {it.tag} over {d}"


def _is_float(it: _Item) -> bool:
    return it.major == 7 and it.simple is None


def _time(it: _Item, path: Path) -> int:
    if it.tag is None or it.tag == TAG_EPOCH:
        if it.major in (0, 1):
            v = it.value
        elif it.tag == TAG_EPOCH and _is_float(it):
            f = it.value
            if not math.isfinite(f) or not f.is_integer():  # type: ignore[union-attr]
                raise TypeMismatch(f"{path}: epoch time {f!r} is not a whole number of seconds")
            v = int(f)  # type: ignore[arg-type]
        else:
            raise TypeMismatch(f"{path}: Time needs an integer or tag 1, got {_describe(it)}")
    elif it.tag == TAG_DATETIME_STRING and it.major == 3:
        text = it.value
        try:  # RFC 3339 date-time (RFC 8949 §3.4.1); Python's parser needs "+00:00" for "Z"
            stamp = _dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))  # type: ignore[union-attr]
        except ValueError:
            raise TypeMismatch(f"{path}: {text!r:.60} is not an RFC 3339 date/time") from None
        if stamp.tzinfo is None or "T" not in text.upper():  # type: ignore[union-attr]
            raise TypeMismatch(f"{path}: {text!r:.60} is not an RFC 3339 date/time with an offset")
        v = math.floor(stamp.timestamp())
    else:
        raise TypeMismatch(f"{path}: Time needs an integer, tag 1 or tag 0, got {_describe(it)}")
    if not INT64_MIN <= v <= INT64_MAX:  # type: ignore[operator]
        raise TypeMismatch(f"{path}: time {v} outside the signed 64-bit range")
    return v  # type: ignore[return-value]


def decode(payload: bytes, base: Path, registry: ResourceLookup | None) -> Values:
    """Decode the single data item of ``payload`` as the value of the resource at ``base``."""
    rdef = _single_target(base, registry, MEDIA)
    data = bytes(payload)
    if not data:
        raise MalformedPayload(f"{MEDIA}: empty payload (one data item expected)")
    reader = _Reader(data)
    it = reader.item()
    if reader.pos != len(data):
        raise MalformedPayload(f"{MEDIA}: {len(data) - reader.pos} bytes after the data item")
    t = rdef.type
    if t is ResourceType.TIME:
        return {base: _time(it, base)}
    if it.tag is not None:
        raise TypeMismatch(f"{base}: {t.value} is not tagged; got {_describe(it)}")
    if t is ResourceType.INTEGER and it.major in (0, 1):
        if not INT64_MIN <= it.value <= INT64_MAX:  # type: ignore[operator]
            raise TypeMismatch(f"{base}: {it.value} outside the signed 64-bit range")
        return {base: it.value}  # type: ignore[dict-item]
    if t is ResourceType.UNSIGNED_INTEGER and it.major == 0:  # an 8-byte argument is <= 2**64-1
        return {base: it.value}  # type: ignore[dict-item]
    if t is ResourceType.FLOAT and _is_float(it):
        return {base: float(it.value)}  # type: ignore[arg-type]
    if t is ResourceType.BOOLEAN and it.major == 7 and it.simple in (20, 21):
        return {base: it.simple == 21}
    if t is ResourceType.OPAQUE and it.major == 2:
        return {base: it.value}  # type: ignore[dict-item]
    if t in (ResourceType.STRING, ResourceType.CORELNK) and it.major == 3:
        return {base: it.value}  # type: ignore[dict-item]
    if t is ResourceType.OBJLNK and it.major == 3:
        return {base: objlnk_from_text(it.value, base)}  # type: ignore[arg-type]  # range-checked
    raise TypeMismatch(f"{base}: {t.value} cannot be {_describe(it)} in {MEDIA}")
