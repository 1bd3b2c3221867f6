"""Content-format codecs: round trips over every resource type and depth, spec known answers,
targeted malformed inputs, and random-input robustness (reference.formats)."""
from __future__ import annotations

import json

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reference.formats import SUPPORTED, decode, encode, negotiate, senml, tlv
from reference.formats.errors import (FormatError, MalformedPayload, PathMismatch, TypeMismatch, UnknownResource,
                                      UnsupportedFormat)
from reference.model import (ContentFormat as CF, ObjectDef, ObjectRegistry, ObjLink, Operations, Path,
                             ResourceDef, ResourceType as RT)

# ---- a test object with one single and one multiple resource of every type ---------------------------------

TEST_OID = 42000
TYPES = [RT.STRING, RT.INTEGER, RT.UNSIGNED_INTEGER, RT.FLOAT, RT.BOOLEAN, RT.OPAQUE, RT.TIME, RT.OBJLNK, RT.CORELNK]
SINGLE = {i: t for i, t in enumerate(TYPES)}            # rid 0..8
MULTI = {300 + i: t for i, t in enumerate(TYPES)}       # rid 300..308 (16-bit TLV identifiers)
EXEC_RID = 20


def _test_object() -> ObjectDef:
    res = {rid: ResourceDef(rid, f"single {t.value}", Operations.RW, False, False, t) for rid, t in SINGLE.items()}
    res.update({rid: ResourceDef(rid, f"multi {t.value}", Operations.RW, True, False, t) for rid, t in MULTI.items()})
    res[EXEC_RID] = ResourceDef(EXEC_RID, "exec", Operations.E, False, False, RT.NONE)
    return ObjectDef(TEST_OID, "Every Type", True, False, resources=res)


REG = ObjectRegistry.default()
REG.add(_test_object())
ALL_TYPES = {**SINGLE, **MULTI}

VALUE = {
    RT.STRING: st.text(max_size=40),
    RT.CORELNK: st.text(max_size=40),
    RT.INTEGER: st.integers(-(2 ** 63), 2 ** 63 - 1),
    RT.TIME: st.integers(-(2 ** 63), 2 ** 63 - 1),
    RT.UNSIGNED_INTEGER: st.integers(0, 2 ** 64 - 1),
    RT.FLOAT: st.floats(allow_nan=False, allow_infinity=False),
    RT.BOOLEAN: st.booleans(),
    RT.OPAQUE: st.binary(max_size=300),  # > 255 exercises the 16-bit TLV length
    RT.OBJLNK: st.builds(ObjLink, st.integers(0, 65535), st.integers(0, 65535)),
}
ids = st.integers(0, 65534)
MULTI_VALUE_FORMATS = [CF.LWM2M_TLV, CF.LWM2M_JSON, CF.SENML_JSON, CF.SENML_CBOR]
ALL_FORMATS = sorted(SUPPORTED)


@st.composite
def resource_values(draw, inst: Path, rid: int):
    t = ALL_TYPES[rid]
    if rid in SINGLE:
        return {inst.child(rid): draw(VALUE[t])}
    riids = draw(st.lists(ids, max_size=4, unique=True))
    return {inst.child(rid).child(r): draw(VALUE[t]) for r in riids}


@st.composite
def instance_values(draw, inst: Path):
    out = {}
    for rid in draw(st.lists(st.sampled_from(sorted(ALL_TYPES)), max_size=6, unique=True)):
        out.update(draw(resource_values(inst, rid)))
    return out


@st.composite
def payload_case(draw):
    """(base, values) at object, object-instance, resource or resource-instance depth."""
    depth = draw(st.sampled_from([1, 2, 3, 4]))
    obj = Path(TEST_OID)
    if depth == 1:
        values = {}
        for iid in draw(st.lists(ids, min_size=1, max_size=3, unique=True)):
            values.update(draw(instance_values(obj.child(iid))))
        return obj, values
    inst = obj.child(draw(ids))
    if depth == 2:
        return inst, draw(instance_values(inst))
    if depth == 3:
        rid = draw(st.sampled_from(sorted(ALL_TYPES)))
        return inst.child(rid), draw(resource_values(inst, rid))
    rid = draw(st.sampled_from(sorted(MULTI)))
    p = inst.child(rid).child(draw(ids))
    return p, {p: draw(VALUE[MULTI[rid]])}


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("fmt", MULTI_VALUE_FORMATS)
@FAST
@given(case=payload_case())
def test_round_trip_structured(fmt, case):
    base, values = case
    data = encode(fmt, values, base, REG)
    assert decode(fmt, data, base, REG) == values
    assert encode(fmt, values, base, REG) == data  # deterministic


@pytest.mark.parametrize("fmt", [CF.TEXT] + MULTI_VALUE_FORMATS)
@FAST
@given(data=st.data())
def test_round_trip_single_value_every_type(fmt, data):
    rid = data.draw(st.sampled_from(sorted(ALL_TYPES)))
    inst = Path(TEST_OID, data.draw(ids))
    base = inst.child(rid) if rid in SINGLE else inst.child(rid).child(data.draw(ids))
    values = {base: data.draw(VALUE[ALL_TYPES[rid]])}
    assert decode(fmt, encode(fmt, values, base, REG), base, REG) == values


@FAST
@given(v=st.binary(max_size=500), riid=st.one_of(st.none(), ids))
def test_round_trip_opaque_format(v, riid):
    base = Path(TEST_OID, 0, 5) if riid is None else Path(TEST_OID, 0, 305, riid)
    data = encode(CF.OPAQUE, {base: v}, base, REG)
    assert data == v and decode(CF.OPAQUE, data, base, REG) == {base: v}


@pytest.mark.parametrize("fmt", [CF.SENML_JSON, CF.SENML_CBOR])
@FAST
@given(a=instance_values(Path(TEST_OID, 1)), b=st.fixed_dictionaries(
    {Path(3, 0, 0): st.text(max_size=10), Path(3, 0, 9): st.integers(0, 100)}))
def test_round_trip_composite_at_root(fmt, a, b):
    """Read-Composite style payloads: base "/" and absolute names across objects."""
    values = {**a, **b}
    assert decode(fmt, encode(fmt, values, Path(), REG), Path(), REG) == values


# ---- random input never escapes as anything but FormatError -------------------------------------------------

BASES = [Path(TEST_OID), Path(TEST_OID, 0), Path(TEST_OID, 0, 3), Path(TEST_OID, 0, 301), Path(TEST_OID, 0, 301, 7),
         Path(TEST_OID, 0, 5), Path(3, 0), Path()]


def _decode_or_format_error(fmt, payload, base):
    try:
        out = decode(fmt, payload, base, REG)
    except FormatError:
        return
    # anything decoded must be well-formed data under the target
    for p in out:
        assert base.contains(p) and p.depth in (3, 4)


@pytest.mark.parametrize("fmt", ALL_FORMATS + [CF.LINK_FORMAT, CF.CBOR, 9999])
@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=64), base=st.sampled_from(BASES))
def test_random_bytes_raise_only_format_errors(fmt, payload, base):
    _decode_or_format_error(fmt, payload, base)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["/42000/0/3", "42000/0/", "0", "301/2", "1:2", "AQI"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["bn", "n", "v", "vs", "vb", "vd", "vlo", "bt", "t", "e", "sv", "ov", "bv", "x", "x_"]),
        children, max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(doc=json_values, base=st.sampled_from(BASES))
def test_random_json_structures_raise_only_format_errors(doc, base):
    raw = json.dumps(doc).encode()
    for fmt in (CF.SENML_JSON, CF.LWM2M_JSON):
        _decode_or_format_error(fmt, raw, base)


@settings(max_examples=200, deadline=None)
@given(doc=json_values, labels=st.booleans(), base=st.sampled_from(BASES))
def test_random_cbor_structures_raise_only_format_errors(doc, labels, base):
    if labels and isinstance(doc, list):  # use the integer labels so the records get further in
        doc = [{senml.CBOR_KEYS.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in doc]
    _decode_or_format_error(CF.SENML_CBOR, cbor2.dumps(doc), base)


# ---- known answers from the specification ---------------------------------------------------------------------

# Core 1.1.1 §7.4.3.1: Read /3/0 in TLV (resources without an Object Instance wrapper).
DEVICE_TLV = bytes.fromhex(
    "C800144F70656E204D6F62696C6520416C6C69616E6365C801164C69676874776569676874204D324D20436C69656E74"
    "C80209333435303030313233C303312E30860641000141010588070842000ED842011388870841007D42010384C10964"
    "C10A0F830B410000C40D5182428FC60E2B30323A3030C11055")
DEVICE = {
    Path(3, 0, 0): "Open Mobile Alliance", Path(3, 0, 1): "Lightweight M2M Client", Path(3, 0, 2): "345000123",
    Path(3, 0, 3): "1.0", Path(3, 0, 6, 0): 1, Path(3, 0, 6, 1): 5, Path(3, 0, 7, 0): 3800, Path(3, 0, 7, 1): 5000,
    Path(3, 0, 8, 0): 125, Path(3, 0, 8, 1): 900, Path(3, 0, 9): 100, Path(3, 0, 10): 15, Path(3, 0, 11, 0): 0,
    Path(3, 0, 13): 1367491215, Path(3, 0, 14): "+02:00", Path(3, 0, 16): "U",
}
# Core 1.1.1 §7.4.5: the same Device instance in SenML CBOR (byte-exact, as printed in the spec).
DEVICE_SENML_CBOR = bytes.fromhex(
    "90a321652f332f302f00613003744f70656e204d6f62696c6520416c6c69616e6365a200613103764c6967687477656967"
    "6874204d324d20436c69656e74a20061320369333435303030313233a20061330363312e30a20063362f300201a2006336"
    "2f310205a20063372f3002190ed8a20063372f3102191388a20063382f3002187da20063382f3102190384a20061390218"
    "64a200623130020fa2006431312f300200a200623133021a5182428fa20062313403662b30323a3030a200623136036155")
# Core 1.1.1 §7.4.4: its SenML JSON form.
DEVICE_SENML_JSON = (
    '[{"bn":"/3/0/","n":"0","vs":"Open Mobile Alliance"},{"n":"1","vs":"Lightweight M2M Client"},'
    '{"n":"2","vs":"345000123"},{"n":"3","vs":"1.0"},{"n":"6/0","v":1},{"n":"6/1","v":5},{"n":"7/0","v":3800},'
    '{"n":"7/1","v":5000},{"n":"8/0","v":125},{"n":"8/1","v":900},{"n":"9","v":100},{"n":"10","v":15},'
    '{"n":"11/0","v":0},{"n":"13","v":1367491215},{"n":"14","vs":"+02:00"},{"n":"16","vs":"U"}]')


def test_tlv_device_example_both_ways():
    assert decode(CF.LWM2M_TLV, DEVICE_TLV, Path(3, 0), REG) == DEVICE
    assert encode(CF.LWM2M_TLV, DEVICE, Path(3, 0), REG) == DEVICE_TLV


def test_tlv_device_example_with_instance_wrapper():
    # Core 1.1.1 §7.4.3.2 A: the same resources inside one Object Instance TLV (08 00 79)
    wrapped = bytes.fromhex("080079") + DEVICE_TLV
    assert decode(CF.LWM2M_TLV, wrapped, Path(3), REG) == DEVICE
    assert decode(CF.LWM2M_TLV, wrapped, Path(3, 0), REG) == DEVICE
    assert encode(CF.LWM2M_TLV, DEVICE, Path(3), REG) == wrapped
    with pytest.raises(PathMismatch):
        decode(CF.LWM2M_TLV, wrapped, Path(3, 1), REG)


def test_tlv_access_control_example():
    # Core 1.1.1 §7.4.3.2 B: Read /2, two instances; ACL instance 310 uses a 16-bit identifier
    data = bytes.fromhex("08000EC10001C101008302417F07C1037F080212C10003C101008702417F0761013601C1037F")
    acl = {Path(2, 0, 0): 1, Path(2, 0, 1): 0, Path(2, 0, 2, 127): 7, Path(2, 0, 3): 127,
           Path(2, 2, 0): 3, Path(2, 2, 1): 0, Path(2, 2, 2, 127): 7, Path(2, 2, 2, 310): 1, Path(2, 2, 3): 127}
    assert decode(CF.LWM2M_TLV, data, Path(2), REG) == acl
    assert encode(CF.LWM2M_TLV, acl, Path(2), REG) == data


def test_tlv_server_example():
    # Core 1.1.1 §7.4.3.2 C: Read /1 with one instance
    data = bytes.fromhex("08000FC10001C40100015180C10601C10755")
    srv = {Path(1, 0, 0): 1, Path(1, 0, 1): 86400, Path(1, 0, 6): True, Path(1, 0, 7): "U"}
    assert decode(CF.LWM2M_TLV, data, Path(1), REG) == srv
    assert encode(CF.LWM2M_TLV, srv, Path(1), REG) == data


def test_tlv_multiple_resource_forms():
    assert decode(CF.LWM2M_TLV, bytes([0x86, 6, 0x41, 0, 1, 0x41, 1, 5]), Path(3, 0, 6), REG) == {
        Path(3, 0, 6, 0): 1, Path(3, 0, 6, 1): 5}
    # bare Resource Instance TLVs for a multiple resource target are accepted too
    assert decode(CF.LWM2M_TLV, bytes([0x41, 0, 1, 0x41, 1, 5]), Path(3, 0, 6), REG) == {
        Path(3, 0, 6, 0): 1, Path(3, 0, 6, 1): 5}


def test_senml_cbor_device_example_byte_exact():
    assert encode(CF.SENML_CBOR, DEVICE, Path(3, 0), REG) == DEVICE_SENML_CBOR
    assert decode(CF.SENML_CBOR, DEVICE_SENML_CBOR, Path(3, 0), REG) == DEVICE


def test_senml_json_device_example():
    assert encode(CF.SENML_JSON, DEVICE, Path(3, 0), REG) == DEVICE_SENML_JSON.encode()
    assert decode(CF.SENML_JSON, DEVICE_SENML_JSON.encode(), Path(3, 0), REG) == DEVICE
    assert decode(CF.SENML_JSON, DEVICE_SENML_JSON.encode(), Path(3), REG) == DEVICE
    assert decode(CF.SENML_JSON, DEVICE_SENML_JSON.encode(), Path(), REG) == DEVICE


def test_lwm2m_json_device_example():
    # Core 1.0.2 §6.4.4 layout: {"bn":"/3/0/","e":[{"n":"0","sv":...},...]}
    doc = json.loads(encode(CF.LWM2M_JSON, DEVICE, Path(3, 0), REG))
    assert doc["bn"] == "/3/0/" and doc["e"][0] == {"n": "0", "sv": "Open Mobile Alliance"}
    assert {"n": "6/1", "v": 5} in doc["e"] and {"n": "13", "v": 1367491215} in doc["e"]
    assert decode(CF.LWM2M_JSON, json.dumps(doc).encode(), Path(3, 0), REG) == DEVICE
    # without bn, names are relative to the target path
    nobn = json.dumps({"e": [{"n": "0", "sv": "x"}, {"n": "6/0", "v": 1}]}).encode()
    assert decode(CF.LWM2M_JSON, nobn, Path(3, 0), REG) == {Path(3, 0, 0): "x", Path(3, 0, 6, 0): 1}


def test_senml_value_keys_per_type():
    inst = Path(TEST_OID, 0)
    values = {inst.child(0): "s", inst.child(1): -5, inst.child(2): 7, inst.child(3): 1.5, inst.child(4): True,
              inst.child(5): b"\x01\x02\xff", inst.child(6): 1600000000, inst.child(7): ObjLink(3, 0),
              inst.child(8): "</3/0>"}
    recs = json.loads(encode(CF.SENML_JSON, values, inst, REG))
    assert recs == [{"bn": "/42000/0/", "n": "0", "vs": "s"}, {"n": "1", "v": -5}, {"n": "2", "v": 7},
                    {"n": "3", "v": 1.5}, {"n": "4", "vb": True}, {"n": "5", "vd": "AQL_"},
                    {"n": "6", "v": 1600000000}, {"n": "7", "vlo": "3:0"}, {"n": "8", "vs": "</3/0>"}]
    cb = cbor2.loads(encode(CF.SENML_CBOR, values, inst, REG))
    assert cb[0] == {-2: "/42000/0/", 0: "0", 3: "s"} and cb[5] == {0: "5", 8: b"\x01\x02\xff"}
    assert cb[7] == {0: "7", "vlo": "3:0"}


def test_text_forms():
    i = Path(TEST_OID, 0)
    cases = {0: ("héllo", b"h\xc3\xa9llo"), 1: (-12, b"-12"), 2: (2 ** 64 - 1, b"18446744073709551615"),
             3: (2.5, b"2.5"), 4: (True, b"1"), 5: (b"\x01\x02\x03\x04\x05", b"AQIDBAU="), 6: (1367491215, b"1367491215"),
             7: (ObjLink(66, 65535), b"66:65535")}
    for rid, (v, text) in cases.items():
        assert encode(CF.TEXT, {i.child(rid): v}, i.child(rid), REG) == text
        assert decode(CF.TEXT, text, i.child(rid), REG) == {i.child(rid): v}
    assert decode(CF.TEXT, b"0", i.child(4), REG) == {i.child(4): False}
    assert decode(CF.TEXT, b"1e3", i.child(3), REG) == {i.child(3): 1000.0}


def test_senml_composite_names_and_root_base():
    paths = [Path(3, 0, 0), Path(1, 0, 1), Path(TEST_OID, 1, 300, 2)]
    for cbor in (False, True):
        assert senml.decode_names(senml.encode_names(paths, cbor), cbor) == paths
    assert senml.decode_names(b'[{"bn":"/3/0/","n":"0"},{"n":"1"}]', False) == [Path(3, 0, 0), Path(3, 0, 1)]
    mixed = {Path(3, 0, 0): "x", Path(1, 0, 1): 300}
    data = encode(CF.SENML_JSON, mixed, Path(), REG)
    assert json.loads(data) == [{"n": "/1/0/1", "v": 300}, {"n": "/3/0/0", "vs": "x"}]
    assert decode(CF.SENML_JSON, data, Path(), REG) == mixed
    with pytest.raises(MalformedPayload):
        senml.decode_names(b'[{"n":"/3/0/0","v":1}]', False)


def test_senml_without_registry_types_by_value_key():
    data = b'[{"bn":"/9999/0/","n":"1","v":3},{"n":"2","v":2.5},{"n":"3","vb":false},{"n":"4","vlo":"1:2"},' \
           b'{"n":"5/0","vd":"AQI"},{"n":"6","vs":"x"}]'
    assert decode(CF.SENML_JSON, data, Path(9999), None) == {
        Path(9999, 0, 1): 3, Path(9999, 0, 2): 2.5, Path(9999, 0, 3): False, Path(9999, 0, 4): ObjLink(1, 2),
        Path(9999, 0, 5, 0): b"\x01\x02", Path(9999, 0, 6): "x"}
    with pytest.raises(UnknownResource):
        decode(CF.SENML_JSON, data, Path(9999), REG)
    with pytest.raises(UnknownResource):
        decode(CF.LWM2M_TLV, bytes([0xC1, 0, 1]), Path(3, 0), None)


def test_senml_base_name_carries_and_base_value_adds():
    data = b'[{"bn":"/3/0/","n":"9","v":1},{"n":"10","v":2},{"bn":"/1/0/","n":"1","v":5,"bt":1.5,"t":2},' \
           b'{"bn":"/3/0/","bv":100,"n":"7/0","v":5}]'
    assert decode(CF.SENML_JSON, data, Path(), REG) == {
        Path(3, 0, 9): 1, Path(3, 0, 10): 2, Path(1, 0, 1): 5, Path(3, 0, 7, 0): 105}


# ---- targeted malformed inputs --------------------------------------------------------------------------------

R = Path(TEST_OID, 0)


@pytest.mark.parametrize("rid, payload, error", [
    (1, b"abc", TypeMismatch), (1, b"", TypeMismatch), (1, b" 1", TypeMismatch), (1, b"1_000", TypeMismatch),
    (1, "\u0663".encode(), TypeMismatch),                    # a Unicode digit that int() would accept
    (1, b"9223372036854775808", TypeMismatch), (1, b"-9223372036854775809", TypeMismatch),
    (2, b"-1", TypeMismatch), (2, b"18446744073709551616", TypeMismatch),
    (3, b"nan", TypeMismatch), (3, b"inf", TypeMismatch), (3, b"1.5x", TypeMismatch), (3, b"1e999", TypeMismatch),
    (4, b"2", TypeMismatch), (4, b"true", TypeMismatch), (4, b"", TypeMismatch),
    (5, b"!!notbase64", TypeMismatch), (5, b"AQIDBA", TypeMismatch),
    (7, b"3", TypeMismatch), (7, b"3:65536", TypeMismatch), (7, b"a:b", TypeMismatch),
    (0, b"\xff\xfe", MalformedPayload), (0, b"\xed\xa0\x80", MalformedPayload),
])
def test_text_malformed(rid, payload, error):
    with pytest.raises(error):
        decode(CF.TEXT, payload, R.child(rid), REG)


def test_text_and_opaque_shape_rules():
    with pytest.raises(UnsupportedFormat):
        decode(CF.TEXT, b"1", Path(3, 0), REG)
    with pytest.raises(UnsupportedFormat):
        decode(CF.TEXT, b"1", Path(3, 0, 6), REG)  # multiple-instance resource
    with pytest.raises(UnsupportedFormat):
        encode(CF.OPAQUE, {R.child(0): "x"}, R.child(0), REG)
    with pytest.raises(UnsupportedFormat):
        decode(CF.OPAQUE, b"x", R.child(0), REG)
    with pytest.raises(TypeMismatch):
        decode(CF.TEXT, b"", R.child(EXEC_RID), REG)
    with pytest.raises(UnknownResource):
        decode(CF.TEXT, b"1", Path(3, 0, 99), REG)
    with pytest.raises(TypeMismatch):
        decode(CF.TEXT, b"1", Path(3, 0, 9, 0), REG)  # single resource has no instances
    with pytest.raises(UnsupportedFormat):
        encode(CF.TEXT, {}, R.child(1), REG)


@pytest.mark.parametrize("base, payload, error", [
    (R, bytes([0xC8, 0x00, 0x14]) + b"short", MalformedPayload),          # length runs past the buffer
    (R, bytes([0xC8]), MalformedPayload),                                 # truncated header
    (R, bytes([0xE1, 0x01]), MalformedPayload),                           # truncated 16-bit identifier
    (R, bytes([0xC8, 0x01, 0x03, 1, 2, 3]), TypeMismatch),                # 3-byte integer, 8-bit length field
    (R, bytes([0xC3, 0x01, 0, 0, 0]), TypeMismatch),                      # 3-byte integer
    (R, bytes([0xC1, 0x04, 0x02]), TypeMismatch),                         # boolean byte 2
    (R, bytes([0xC3, 0x03, 0, 0, 0]), TypeMismatch),                      # 3-byte float
    (R, bytes([0xC2, 0x07, 0, 1]), TypeMismatch),                         # 2-byte objlnk
    (R, bytes([0xC2, 0x00, 0xFF, 0xFE]), TypeMismatch),                   # String not UTF-8
    (R, bytes([0xC1, 0x63, 0x00]), UnknownResource),
    (R, bytes([0xE1, 0x01, 0x2C, 0x01]), TypeMismatch),                   # single TLV for multiple resource 300
    (R, bytes([0x83, 0x00, 0x41, 0x00, 0x41]), TypeMismatch),             # multiple TLV for single resource 0
    (R, bytes([0xC1, 0x01, 0x01, 0xC1, 0x01, 0x02]), MalformedPayload),   # duplicate resource
    (R, bytes([0x41, 0x00, 0x01]), MalformedPayload),                     # resource instance at instance level
    (Path(TEST_OID), bytes([0xC1, 0x01, 0x01]), MalformedPayload),        # resource at object level
    (Path(TEST_OID), bytes([0x00, 0x01, 0x00, 0x01]), MalformedPayload),  # duplicate object instance
    (R.child(1), bytes([0xC1, 0x02, 0x01]), PathMismatch),                # other resource than the target
    (R, bytes([0x03, 0x05, 0xC1, 0x01, 0x01]), PathMismatch),             # wrapper for instance 5, target 0
    (R, bytes([0xE1, 0xFF, 0xFF, 0x00]), MalformedPayload),               # identifier 65535 is reserved
    (Path(TEST_OID, 0, 301, 1), bytes([0x41, 0x02, 0x05]), PathMismatch),
    (R.child(1), b"", MalformedPayload),
    (Path(), bytes([0xC1, 0x01, 0x01]), UnsupportedFormat),
    (R, bytes([0xC1, EXEC_RID, 0x01]), TypeMismatch),                     # executable has no value
])
def test_tlv_malformed(base, payload, error):
    with pytest.raises(error):
        decode(CF.LWM2M_TLV, payload, base, REG)


def test_tlv_24_bit_length_and_16_bit_identifier():
    big = bytes(range(256)) * 300  # 76800 bytes needs the 3-byte length field
    p = Path(TEST_OID, 0, 305, 1000)
    data = encode(CF.LWM2M_TLV, {p: big}, Path(TEST_OID, 0, 305), REG)
    (outer,) = tlv.unpack(data)
    assert data[0] == 0b10_1_11_000 and outer.kind is tlv.TlvKind.MULTIPLE_RESOURCE and outer.id == 305
    assert data[6] == 0b01_1_11_000 and outer.children[0].id == 1000  # 16-bit id, 24-bit length
    assert decode(CF.LWM2M_TLV, data, Path(TEST_OID, 0, 305), REG) == {p: big}


def test_tlv_integer_sizes_and_float_sizes():
    i = R.child(1)
    assert encode(CF.LWM2M_TLV, {i: 127}, i, REG) == bytes([0xC1, 1, 0x7F])
    assert encode(CF.LWM2M_TLV, {i: 128}, i, REG) == bytes([0xC2, 1, 0x00, 0x80])
    assert encode(CF.LWM2M_TLV, {i: -129}, i, REG) == bytes([0xC2, 1, 0xFF, 0x7F])
    assert encode(CF.LWM2M_TLV, {i: 2 ** 31}, i, REG)[:2] == bytes([0xC8, 1])  # 8 bytes -> 8-bit length
    u = R.child(2)
    assert encode(CF.LWM2M_TLV, {u: 255}, u, REG) == bytes([0xC1, 2, 0xFF])
    assert decode(CF.LWM2M_TLV, bytes([0xC1, 2, 0xFF]), u, REG) == {u: 255}
    assert decode(CF.LWM2M_TLV, bytes([0xC1, 1, 0xFF]), i, REG) == {i: -1}
    f = R.child(3)
    assert len(encode(CF.LWM2M_TLV, {f: 1.5}, f, REG)) == 2 + 4
    assert len(encode(CF.LWM2M_TLV, {f: 0.1}, f, REG)) == 3 + 8


@pytest.mark.parametrize("payload, error", [
    (b"[]", MalformedPayload),                                   # not an object
    (b'{"e":{}}', MalformedPayload),
    (b'{"bn":"/42000/0/","e":[{"n":"1","v":1}],"x":1}', MalformedPayload),
    (b'{"bn":"/42000/0/","e":[{"n":"1","v":1,"foo":2}]}', MalformedPayload),
    (b'{"bn":"/42000/0/","e":[{"n":"1","sv":"1"}]}', TypeMismatch),
    (b'{"bn":"/42000/0/","e":[{"n":"1","v":1.5}]}', TypeMismatch),
    (b'{"bn":"/42000/0/","e":[{"n":"1","v":9223372036854775808}]}', TypeMismatch),
    (b'{"bn":"/42000/0/","e":[{"n":"4","bv":1}]}', TypeMismatch),
    (b'{"bn":"/42000/0/","e":[{"n":"1","v":1},{"n":"1","v":2}]}', MalformedPayload),
    (b'{"bn":"/42000/0/","e":[{"n":"1","v":1,"sv":"x"}]}', MalformedPayload),
    (b'{"bn":"/42000/0/","e":[{"n":"1"}]}', MalformedPayload),
    (b'{"bn":"/42000/1/","e":[{"n":"1","v":1}]}', PathMismatch),
    (b'{"bn":"/42000//","e":[{"n":"1","v":1}]}', MalformedPayload),
    (b'{"bn":"/42000/0/","e":[{"n":"1","v":NaN}]}', MalformedPayload),
    (b'{"bn":"/42000/0/","bn":"/42000/0/","e":[]}', MalformedPayload),
    (b'{"bn":"/42000/0/","e":[{"n":"5","sv":"@@"}]}', TypeMismatch),
    (b'{"bn":"/42000/0/","e":[{"n":"7","ov":"1-2"}]}', TypeMismatch),
    (b'{"bn":"/42000/0/","e":[{"n":"300","v":1}]}', TypeMismatch),    # multiple resource without instance
    (b'\xff{}', MalformedPayload),
    (b'{"e":[', MalformedPayload),
])
def test_lwm2m_json_malformed(payload, error):
    with pytest.raises(error):
        decode(CF.LWM2M_JSON, payload, R, REG)


SENML_BAD = [
    (b"{}", MalformedPayload),                                      # not an array
    (b"[1]", MalformedPayload),
    (b'[{"v":1}]', MalformedPayload),                               # neither name nor base name
    (b'[{"n":"/42000/0/1"}]', MalformedPayload),                    # no value
    (b'[{"n":"/42000/0/1","v":1,"vs":"1"}]', MalformedPayload),     # two values
    (b'[{"n":"/42000/0/1","v":1},{"n":"/42000/0/1","v":2}]', MalformedPayload),  # duplicate path
    (b'[{"n":"/42000/0","v":1}]', MalformedPayload),                # instance path
    (b'[{"n":"42000/0/1","v":1}]', MalformedPayload),               # not absolute
    (b'[{"n":"/42000/0/01","v":1}]', MalformedPayload),
    (b'[{"n":"/42000/0/1","vs":"1"}]', TypeMismatch),
    (b'[{"n":"/42000/0/1","v":"1"}]', TypeMismatch),
    (b'[{"n":"/42000/0/1","v":true}]', TypeMismatch),
    (b'[{"n":"/42000/0/1","v":1e300}]', TypeMismatch),
    (b'[{"n":"/42000/0/2","v":-1}]', TypeMismatch),
    (b'[{"n":"/42000/0/4","vb":0}]', TypeMismatch),
    (b'[{"n":"/42000/0/5","vd":"AQ=="}]', None),                    # padded base64url is accepted
    (b'[{"n":"/42000/0/5","vd":"A+=="}]', TypeMismatch),            # not the url alphabet
    (b'[{"n":"/42000/0/7","vlo":"1:"}]', TypeMismatch),
    (b'[{"n":"/42000/0/300/0","vs":"x"}]', None),
    (b'[{"n":"/42000/0/300","vs":"x"}]', TypeMismatch),
    (b'[{"n":"/42000/0/0/1","vs":"x"}]', TypeMismatch),
    (b'[{"n":"/42000/0/99","vs":"x"}]', UnknownResource),
    (b'[{"n":"/42000/1/0","vs":"x"}]', PathMismatch),
    (b'[{"n":"/42000/0/0","vs":"x","x_":1}]', MalformedPayload),   # must-understand label
    (b'[{"n":"/42000/0/0","vs":"x","bt":"now"}]', MalformedPayload),
    (b'[{"n":1,"vs":"x"}]', MalformedPayload),
    (b'[{"n":"/42000/0/0","vs":"x","bver":10},{"n":"/42000/0/1","v":1,"bver":11}]', MalformedPayload),
    (b'[{"n":"/42000/0/20","vs":"x"}]', TypeMismatch),              # executable
    (b'[{"n":"/65535/0/0","vs":"x"}]', MalformedPayload),
]


@pytest.mark.parametrize("payload, error", SENML_BAD)
def test_senml_json_malformed(payload, error):
    if error is None:
        assert decode(CF.SENML_JSON, payload, R, REG)
        return
    with pytest.raises(error):
        decode(CF.SENML_JSON, payload, R, REG)


@pytest.mark.parametrize("payload, error", [(p, e) for p, e in SENML_BAD if p not in (
    b'[{"n":"/42000/0/5","vd":"AQ=="}]', b'[{"n":"/42000/0/5","vd":"A+=="}]', b'[{"n":"/42000/0/0","vs":"x","x_":1}]')])
def test_senml_cbor_malformed_mirrors_json(payload, error):
    """The same documents with integer labels in CBOR give the same errors."""
    doc = json.loads(payload)
    if isinstance(doc, list):
        doc = [{senml.CBOR_KEYS.get(k, k): v for k, v in r.items()} if isinstance(r, dict) else r for r in doc]
    data = cbor2.dumps(doc)
    if error is None:
        assert decode(CF.SENML_CBOR, data, R, REG)
        return
    with pytest.raises(error):
        decode(CF.SENML_CBOR, data, R, REG)


@pytest.mark.parametrize("data, error", [
    (cbor2.dumps([{0: "/42000/0/5", 8: "AQ"}]), TypeMismatch),           # vd must be a byte string in CBOR
    (cbor2.dumps([{"n": "/42000/0/0", 3: "x"}]), MalformedPayload),      # text label where an integer belongs
    (cbor2.dumps([{0: "/42000/0/0", 3: "x"}]) + b"\x00", MalformedPayload),  # trailing bytes
    (cbor2.dumps([{0: "/42000/0/1", 2: 2 ** 64}]), TypeMismatch),        # bignum out of range
    (cbor2.dumps([{0: "/42000/0/1", 2: cbor2.CBORTag(1, 5)}]), MalformedPayload),  # tag value is a datetime
    (cbor2.dumps([{-99: 1, 0: "/42000/0/1", 2: 1}]), MalformedPayload),  # unknown base label
    (bytes([0x81, 0x5B]) + (2 ** 62).to_bytes(8, "big"), MalformedPayload),  # huge byte string length
    (bytes([0x9F]) * 5000, MalformedPayload),                            # deep nesting
])
def test_senml_cbor_specific_malformed(data, error):
    with pytest.raises(error):
        decode(CF.SENML_CBOR, data, R, REG)


# ---- encoder input checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", MULTI_VALUE_FORMATS)
@pytest.mark.parametrize("values, error", [
    ({R.child(1): "1"}, TypeMismatch),
    ({R.child(1): True}, TypeMismatch),
    ({R.child(1): 2 ** 63}, TypeMismatch),
    ({R.child(2): -1}, TypeMismatch),
    ({R.child(4): 1}, TypeMismatch),
    ({R.child(5): "x"}, TypeMismatch),
    ({R.child(7): ObjLink(1, 70000)}, TypeMismatch),
    ({R.child(0): "\ud800"}, TypeMismatch),
    ({R.child(300): "x"}, TypeMismatch),
    ({R.child(0).child(1): "x"}, TypeMismatch),
    ({R.child(99): "x"}, UnknownResource),
    ({Path(TEST_OID, 1, 0): "x"}, PathMismatch),
    ({R: "x"}, PathMismatch),
    ({R.child(EXEC_RID): "x"}, TypeMismatch),
    ({"/42000/0/1": 1}, PathMismatch),                      # keys must be Path objects
])
def test_encode_rejects_bad_values(fmt, values, error):
    with pytest.raises(error):
        encode(fmt, values, R, REG)


@pytest.mark.parametrize("fmt", [CF.LWM2M_JSON, CF.SENML_JSON])
def test_json_formats_refuse_non_finite_floats(fmt):
    with pytest.raises(TypeMismatch):
        encode(fmt, {R.child(3): float("nan")}, R, REG)


def test_tlv_carries_non_finite_floats():
    f = R.child(3)
    out = decode(CF.LWM2M_TLV, encode(CF.LWM2M_TLV, {f: float("inf")}, f, REG), f, REG)
    assert out == {f: float("inf")}


# ---- dispatch and negotiation ------------------------------------------------------------------------------

def test_supported_and_dispatch_errors():
    assert SUPPORTED == {CF.TEXT, CF.OPAQUE, CF.CBOR, CF.LWM2M_TLV, CF.LWM2M_JSON, CF.SENML_JSON, CF.SENML_CBOR}
    with pytest.raises(UnsupportedFormat):
        decode(9999, b"", R, REG)
    with pytest.raises(UnsupportedFormat):
        encode(CF.LINK_FORMAT, {}, R, REG)
    with pytest.raises(UnsupportedFormat):  # application/cbor carries one value, R is an instance
        decode(CF.CBOR, b"\x80", R, REG)


def test_negotiate():
    assert negotiate(None) is CF.SENML_CBOR
    assert negotiate(11542) is CF.LWM2M_TLV
    assert negotiate(0, single_value=True) is CF.TEXT
    assert negotiate(None, default=CF.TEXT, single_value=True) is CF.TEXT
    with pytest.raises(UnsupportedFormat):
        negotiate(0)  # text cannot carry an instance
    with pytest.raises(UnsupportedFormat):
        negotiate(11543, supported={CF.SENML_CBOR, CF.LWM2M_TLV})
    with pytest.raises(UnsupportedFormat):
        negotiate(1234)
