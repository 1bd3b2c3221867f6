"""application/cbor (Content-Format 60, Core 1.1.1 §7.4.3 / Appendix C): reference.formats.cbor.

Round trips over every resource type (hypothesis), cross-checks against the independent cbor2
codec (RFC 8949), known answers, every float width, the Time forms, and malformed input raising
the named FormatError subclasses (never anything else)."""
from __future__ import annotations

import math
import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reference.formats import SINGLE_VALUE, SUPPORTED, decode, encode, negotiate
from reference.formats.errors import FormatError, MalformedPayload, TypeMismatch, UnsupportedFormat
from reference.model import (ContentFormat as CF, ObjectDef, ObjectRegistry, ObjLink, Operations, Path,
                             ResourceDef, ResourceType as RT)

OID = 42001
TYPES = [RT.STRING, RT.INTEGER, RT.UNSIGNED_INTEGER, RT.FLOAT, RT.BOOLEAN, RT.OPAQUE, RT.TIME, RT.OBJLNK, RT.CORELNK]
SINGLE = {i: t for i, t in enumerate(TYPES)}
MULTI = {100 + i: t for i, t in enumerate(TYPES)}


def _registry() -> ObjectRegistry:
    res = {rid: ResourceDef(rid, f"s {t.value}", Operations.RW, False, False, t) for rid, t in SINGLE.items()}
    res.update({rid: ResourceDef(rid, f"m {t.value}", Operations.RW, True, False, t) for rid, t in MULTI.items()})
    reg = ObjectRegistry.default()
    reg.add(ObjectDef(OID, "cbor types", True, False, resources=res))
    return reg


REG = _registry()
RID = {t: rid for rid, t in SINGLE.items()}

VALUE = {
    RT.STRING: st.text(max_size=60),
    RT.CORELNK: st.text(max_size=60),
    RT.INTEGER: st.integers(-(2 ** 63), 2 ** 63 - 1),
    RT.TIME: st.integers(-(2 ** 63), 2 ** 63 - 1),
    RT.UNSIGNED_INTEGER: st.integers(0, 2 ** 64 - 1),
    RT.FLOAT: st.floats(allow_nan=False),
    RT.BOOLEAN: st.booleans(),
    RT.OPAQUE: st.binary(max_size=300),
    RT.OBJLNK: st.builds(ObjLink, st.integers(0, 65535), st.integers(0, 65535)),
}


def p(t: RT, riid: int | None = None) -> Path:
    return Path(OID, 0, RID[t]) if riid is None else Path(OID, 0, 100 + TYPES.index(t), riid)


def test_registered_as_single_value_format() -> None:
    assert CF.CBOR in SUPPORTED and CF.CBOR in SINGLE_VALUE
    assert negotiate(60, SUPPORTED, single_value=True) is CF.CBOR
    with pytest.raises(UnsupportedFormat):
        negotiate(60, SUPPORTED, single_value=False)  # an object instance is not one value


@settings(max_examples=60, deadline=None)
@given(data=st.data(), t=st.sampled_from(TYPES), instance=st.booleans())
def test_round_trip_and_cbor2_agrees(data: st.DataObject, t: RT, instance: bool) -> None:
    """encode -> decode is the identity, and the bytes are the CBOR cbor2 reads as the same value."""
    v = data.draw(VALUE[t])
    path = p(t, 7) if instance else p(t)
    payload = encode(CF.CBOR, {path: v}, path, REG)
    assert decode(CF.CBOR, payload, path, REG) == {path: v}
    if t is RT.TIME:  # tag 1 (epoch-based date/time) over the integer; cbor2 reads the integer
        assert payload[0] == 0xC1 and cbor2.loads(payload[1:]) == v
        return
    other = cbor2.loads(payload)
    if t is RT.OBJLNK:
        assert other == str(v)
    else:
        assert other == v and type(other) is type(v)


@settings(max_examples=60, deadline=None)
@given(t=st.sampled_from([RT.STRING, RT.INTEGER, RT.UNSIGNED_INTEGER, RT.FLOAT, RT.BOOLEAN, RT.OPAQUE]),
       data=st.data())
def test_decodes_what_cbor2_encodes(t: RT, data: st.DataObject) -> None:
    """An independent encoder's output (RFC 8949, non-canonical float widths included) decodes."""
    v = data.draw(VALUE[t])
    for canonical in (False, True):
        assert decode(CF.CBOR, cbor2.dumps(v, canonical=canonical), p(t), REG) == {p(t): v}


def test_known_answers() -> None:
    assert encode(CF.CBOR, {p(RT.UNSIGNED_INTEGER): 30}, p(RT.UNSIGNED_INTEGER), REG) == b"\x18\x1e"
    assert encode(CF.CBOR, {p(RT.INTEGER): -500}, p(RT.INTEGER), REG) == b"\x39\x01\xf3"
    assert encode(CF.CBOR, {p(RT.BOOLEAN): True}, p(RT.BOOLEAN), REG) == b"\xf5"
    assert encode(CF.CBOR, {p(RT.STRING): "U"}, p(RT.STRING), REG) == b"\x61U"
    assert encode(CF.CBOR, {p(RT.OPAQUE): b"\x01\x02"}, p(RT.OPAQUE), REG) == b"\x42\x01\x02"
    assert encode(CF.CBOR, {p(RT.OBJLNK): ObjLink(3, 0)}, p(RT.OBJLNK), REG) == b"\x633:0"
    assert encode(CF.CBOR, {p(RT.TIME): 1476186613}, p(RT.TIME), REG) == b"\xc1\x1a\x57\xfc\xd1\xf5"
    # floats: shortest exact width (RFC 8949 §4.2.2)
    assert encode(CF.CBOR, {p(RT.FLOAT): 1.5}, p(RT.FLOAT), REG) == b"\xf9\x3e\x00"
    assert encode(CF.CBOR, {p(RT.FLOAT): 100000.0}, p(RT.FLOAT), REG) == b"\xfa\x47\xc3\x50\x00"
    assert encode(CF.CBOR, {p(RT.FLOAT): 1.1}, p(RT.FLOAT), REG) == b"\xfb" + struct.pack(">d", 1.1)


@pytest.mark.parametrize("payload", [b"\xf9\x3e\x00", b"\xfa\x3f\xc0\x00\x00", b"\xfb\x3f\xf8\x00\x00\x00\x00\x00\x00"])
def test_every_float_width_is_accepted(payload: bytes) -> None:
    """Half, single and double precision all carry Float (RFC 8949 §3.3)."""
    assert decode(CF.CBOR, payload, p(RT.FLOAT), REG) == {p(RT.FLOAT): 1.5}


def test_float_specials() -> None:
    got = decode(CF.CBOR, b"\xf9\x7e\x00", p(RT.FLOAT), REG)[p(RT.FLOAT)]
    assert math.isnan(got)  # type: ignore[arg-type]
    assert decode(CF.CBOR, b"\xf9\x7c\x00", p(RT.FLOAT), REG) == {p(RT.FLOAT): math.inf}
    assert math.isnan(cbor2.loads(encode(CF.CBOR, {p(RT.FLOAT): math.nan}, p(RT.FLOAT), REG)))


@pytest.mark.parametrize("payload,want", [
    (b"\xc1\x1a\x57\xfc\xd1\xf5", 1476186613),                  # tag 1 over an integer
    (b"\x1a\x57\xfc\xd1\xf5", 1476186613),                      # untagged integer (LwM2M 1.2 Table C.2)
    (b"\xc1\xfb" + struct.pack(">d", 1476186613.0), 1476186613),  # tag 1 over an integral float
    (cbor2.dumps(cbor2.CBORTag(0, "2016-10-11T11:50:13Z")), 1476186613),       # tag 0, RFC 3339
    (cbor2.dumps(cbor2.CBORTag(0, "2016-10-11T13:50:13+02:00")), 1476186613),
    (b"\xc1\x20", -1),
])
def test_time_forms(payload: bytes, want: int) -> None:
    assert decode(CF.CBOR, payload, p(RT.TIME), REG) == {p(RT.TIME): want}


@pytest.mark.parametrize("t,payload,error", [
    (RT.INTEGER, b"", MalformedPayload),                      # no data item
    (RT.INTEGER, b"\x18", MalformedPayload),                  # truncated argument
    (RT.INTEGER, b"\x01\x02", MalformedPayload),              # trailing bytes
    (RT.INTEGER, b"\x1c", MalformedPayload),                  # reserved additional information 28
    (RT.INTEGER, b"\x1f", MalformedPayload),                  # indefinite unsigned integer
    (RT.INTEGER, b"\xff", MalformedPayload),                  # lone break
    (RT.STRING, b"\x63ab", MalformedPayload),                 # text shorter than its length
    (RT.STRING, b"\x62\xc3\x28", MalformedPayload),           # invalid UTF-8
    (RT.STRING, b"\x7f\x61a\x41b\xff", MalformedPayload),     # byte chunk inside a text string
    (RT.STRING, b"\x7f\x61a", MalformedPayload),              # indefinite string without break
    (RT.BOOLEAN, b"\xf8\x14", MalformedPayload),              # simple value 20 in two bytes
    (RT.INTEGER, b"\x3b\x80\x00\x00\x00\x00\x00\x00\x00", TypeMismatch),  # -2**63-1
    (RT.INTEGER, b"\xf9\x3c\x00", TypeMismatch),              # a float for an Integer
    (RT.INTEGER, b"\xc2\x41\x05", TypeMismatch),              # bignum tag
    (RT.UNSIGNED_INTEGER, b"\x20", TypeMismatch),             # negative
    (RT.FLOAT, b"\x01", TypeMismatch),                        # an integer for a Float
    (RT.BOOLEAN, b"\x01", TypeMismatch),
    (RT.BOOLEAN, b"\xf6", TypeMismatch),                      # null
    (RT.STRING, b"\x41a", TypeMismatch),                      # byte string for a String
    (RT.STRING, b"\x81\x01", TypeMismatch),                   # array
    (RT.STRING, b"\xa0", TypeMismatch),                       # map
    (RT.OPAQUE, b"\x61a", TypeMismatch),                      # text for Opaque
    (RT.OBJLNK, b"\x63\x33\x3a\x78", TypeMismatch),           # "3:x"
    (RT.OBJLNK, b"\x6770000:0", TypeMismatch),                # object id > 65535
    (RT.TIME, b"\xc1\xfb" + struct.pack(">d", 1.5), TypeMismatch),  # fractional seconds
    (RT.TIME, b"\xc1\x61\x31", TypeMismatch),                 # tag 1 over text
    (RT.TIME, cbor2.dumps(cbor2.CBORTag(0, "yesterday")), TypeMismatch),
    (RT.TIME, b"\xc1\xc1\x01", TypeMismatch),                 # nested tags
    (RT.TIME, b"\xc3\x41\x01", TypeMismatch),                 # another tag
])
def test_malformed_raises_named_errors(t: RT, payload: bytes, error: type[FormatError]) -> None:
    with pytest.raises(error):
        decode(CF.CBOR, payload, p(t), REG)


def test_indefinite_strings_are_accepted() -> None:
    assert decode(CF.CBOR, b"\x7f\x61a\x62bc\xff", p(RT.STRING), REG) == {p(RT.STRING): "abc"}
    assert decode(CF.CBOR, b"\x5f\x41\x01\x40\xff", p(RT.OPAQUE), REG) == {p(RT.OPAQUE): b"\x01"}


def test_shape_rules() -> None:
    with pytest.raises(UnsupportedFormat):
        encode(CF.CBOR, {p(RT.INTEGER): 1, p(RT.UNSIGNED_INTEGER): 2}, Path(OID, 0), REG)
    with pytest.raises(UnsupportedFormat):  # a multiple-instance resource is not one value
        decode(CF.CBOR, b"\x01", Path(OID, 0, 100 + TYPES.index(RT.INTEGER)), REG)
    with pytest.raises(TypeMismatch):
        encode(CF.CBOR, {p(RT.INTEGER): "x"}, p(RT.INTEGER), REG)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=40), t=st.sampled_from(TYPES))
def test_random_bytes_raise_only_format_errors(payload: bytes, t: RT) -> None:
    try:
        decode(CF.CBOR, payload, p(t), REG)
    except FormatError:
        pass
