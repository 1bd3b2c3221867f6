"""What the card stores, byte for byte: the UICC/PKCS#15 files of Core 1.1.1 Appendix G
("Storage of LwM2M Bootstrap Information on the Smartcard") plus the project's DM-SC indicators.

File tree (FIDs are the card issuer's choice where Appendix G says so; these are the defaults the
builder uses and the values of OMA's own example and of deployed cards)::

    MF 3F00
    ├── EF DIR   2F00  linear fixed; record = PKCS#15 application template
    │                  61 { 4F <AID>, 50 <label>, 51 <path 3F00 5015> }  (G.1, ETSI TS 102 221 §13.1)
    ├── EF ICCID 2FE2  transparent, 10 bytes BCD, nibbles swapped, 'F' padded (TS 102 221 §13.2)
    └── ADF PKCS#15 (AID A0 00 00 00 63 50 4B 43 53 2D 31 35, FID 5015)       (G.2.1)
        ├── EF ODF            5031  A7 { 30 { 04 <path of DODF> } }            (G.3.1, PKCS#15 §5.5.1)
        ├── EF DODF-bootstrap 6430  one PKCS#15 data object per provisioning file (G.3.2)
        ├── EF LwM2M_Bootstrap 6432 <count:2><size:2> { <obj id:2><version:1|2><len:2><TLV> }* (G.3.3)
        └── EF DM-SC indicators 6433 (project extension, see INDICATORS_OID)

A DODF entry, as built (PKCS#15 v1.1 ``PKCS15Data`` choice ``oidDO [1]``)::

    A1 { 30 { 0C <label>, 03 01 00 (flags: not private, not modifiable) }   CommonObjectAttributes
         30 { 06 <applicationOID> }                                        CommonDataObjectAttributes
         A1 { 30 { 06 <OID>, 30 { 04 <path> } } } }                        [1] OidDO { id, value=Path }

The OID is carried both as CommonDataObjectAttributes.applicationOID (what G.3.2 names) and as the
OidDO ``id`` (where OMA's example and deployed readers look). The reader accepts an entry whose OID
appears in either place, also in the double-wrapped form ``06 06 06 04 67 2B 09 01`` that the
example in the TS shows, and also as an ``opaqueDO`` (untagged SEQUENCE) entry.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from reference.model.path import Path
from reference.model.types import ContentFormat, Values
from reference.smartcard import asn1
from reference.smartcard.errors import CardDataError

#: PKCS#15 application identifier (G.2.1; PKCS#15 v1.1 §5.4 "RID A0 00 00 00 63, PIX 'PKCS-15'").
PKCS15_AID = bytes.fromhex("A000000063504B43532D3135")
#: OID naming the LwM2M bootstrap provisioning object in the DODF (Core 1.1.1 Appendix G).
LWM2M_BOOTSTRAP_OID = "2.23.43.9.1"
#: The project's own OID for the DM-SC indicators file. Arc 2.25 (ITU-T X.667) lets anyone mint an
#: OID from a UUID without registration: 2.25.<UUID fd4201ba-...-as-integer>.1 is ours alone.
PROJECT_OID_ARC = "2.25.237828493017236680984006848819560220384"
INDICATORS_OID = PROJECT_OID_ARC + ".1"


class Fid(enum.IntEnum):
    """File identifiers (ETSI TS 102 221 §8.2 / §13; PKCS#15 v1.1 §5.5; Core 1.1.1 G.3)."""

    MF = 0x3F00
    EF_DIR = 0x2F00
    EF_ICCID = 0x2FE2
    ADF_PKCS15 = 0x5015
    CURRENT_ADF = 0x7FFF  # "the current application" in a path (TS 102 221 §8.4.2)
    EF_ODF = 0x5031
    EF_DODF = 0x6430
    EF_LWM2M_BOOTSTRAP = 0x6432
    EF_INDICATORS = 0x6433


#: Appendix G.3.3: "This file size is limited to 32KB".
MAX_BOOTSTRAP_FILE = 32 * 1024
#: Objects defined in the LwM2M Enabler itself (Core 1.1.1 Appendix E) may use IMPLICIT_VERSION.
ENABLER_OBJECTS = frozenset(range(0, 8))
LABEL_BOOTSTRAP = "LwM2M Bootstrap"
LABEL_INDICATORS = "LwM2M DM-SC indicators"


# ---- EF DIR ------------------------------------------------------------------------------------
def encode_dir_record(aid: bytes = PKCS15_AID, label: str = "PKCS#15 LwM2M",
                      path: bytes = bytes.fromhex("3F005015")) -> bytes:
    """One EF DIR record: the application template G.1 requires (AID tag 4F, Path tag 51)."""
    return asn1.tlv(0x61, asn1.tlv(0x4F, aid) + asn1.tlv(0x50, label.encode()) + asn1.tlv(0x51, path))


def decode_dir_record(record: bytes, where: str) -> tuple[bytes, bytes] | None:
    """``(aid, path)`` of an application template record, ``None`` for an empty (FF..) record."""
    elems = asn1.parse(record, where, padding_ok=True)
    if not elems:
        return None
    if elems[0].tag != 0x61:
        raise CardDataError(f"record starts with tag {elems[0].tag:#04x}, expected application template 0x61",
                            f"{where} offset 0")
    aid = path = b""
    for e in elems[0].children(where):
        if e.tag == 0x4F:
            aid = e.value
        elif e.tag == 0x51:
            path = e.value
    if not aid:
        raise CardDataError("application template without AID (tag 4F)", f"{where} offset 0")
    return aid, path


# ---- EF ODF --------------------------------------------------------------------------------------
def encode_odf(dodf_paths: list[bytes]) -> bytes:
    """EF ODF with one ``dataObjects [7]`` pointer per DODF (PKCS#15 v1.1 §6.2 ``PKCS15Objects``)."""
    return b"".join(asn1.tlv(0xA7, asn1.tlv(asn1.SEQUENCE, asn1.tlv(asn1.OCTET_STRING, p))) for p in dodf_paths)


def decode_odf(data: bytes, name: str = "EF ODF") -> list[bytes]:
    """Paths of the DODFs, in priority order (G.1: "the first DODF has the highest priority")."""
    paths: list[bytes] = []
    for e in asn1.parse(data, name, padding_ok=True):
        if e.tag != 0xA7:
            continue  # keys, certificates, auth objects: not ours
        kids = e.children(name)
        if not kids or kids[0].tag != asn1.SEQUENCE:
            raise CardDataError("dataObjects entry is not a Path SEQUENCE", f"{name} offset {e.offset}")
        path = [k for k in kids[0].children(name) if k.tag == asn1.OCTET_STRING]
        if not path or len(path[0].value) < 2 or len(path[0].value) % 2:
            raise CardDataError("dataObjects Path without a valid path OCTET STRING", f"{name} offset {kids[0].offset}")
        paths.append(path[0].value)
    return paths


# ---- EF DODF -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DodfEntry:
    """One data object of a DODF: its label, the OID(s) naming it (applicationOID and/or OidDO id)
    and the path of the file holding its value."""

    label: str
    oids: frozenset[str]
    path: bytes

    @classmethod
    def of(cls, label: str, oid: str, path: bytes) -> "DodfEntry":
        return cls(label, frozenset({oid}), path)

    def named(self, oid: str) -> bool:
        return oid in self.oids


def encode_dodf_entry(entry: DodfEntry) -> bytes:
    (oid_text,) = entry.oids
    common = asn1.tlv(asn1.SEQUENCE, asn1.tlv(asn1.UTF8_STRING, entry.label.encode())
                      + asn1.tlv(asn1.BIT_STRING, b"\x00"))
    oid = asn1.tlv(asn1.OID, asn1.encode_oid(oid_text))
    common_data = asn1.tlv(asn1.SEQUENCE, oid)
    oid_do = asn1.tlv(asn1.SEQUENCE, oid + asn1.tlv(asn1.SEQUENCE, asn1.tlv(asn1.OCTET_STRING, entry.path)))
    return asn1.tlv(0xA1, common + common_data + asn1.tlv(0xA1, oid_do))


def encode_dodf(entries: list[DodfEntry]) -> bytes:
    return b"".join(encode_dodf_entry(e) for e in entries)


def _oid_of(e: asn1.Element, name: str) -> str:
    value = e.value
    # The TS example double-wraps the OID (06 06 06 04 67 2B 09 01); unwrap once.
    if len(value) >= 2 and value[0] == asn1.OID and value[1] == len(value) - 2:
        value = value[2:]
    return asn1.decode_oid(value, f"{name} offset {e.offset}")


def decode_dodf(data: bytes, name: str = "EF DODF") -> list[DodfEntry]:
    """Every data object of a DODF that names a file on the card by path (ObjectValue
    ``indirect``); objects with a direct value or a URL are skipped (nothing to read here)."""
    out: list[DodfEntry] = []
    for obj in asn1.parse(data, name, padding_ok=True):
        if obj.tag not in (asn1.SEQUENCE, 0xA0, 0xA1):  # opaqueDO, externalIDO [0], oidDO [1]
            continue
        parts = obj.children(name)
        if len(parts) < 3 or parts[0].tag != asn1.SEQUENCE or parts[1].tag != asn1.SEQUENCE:
            raise CardDataError("data object is not { CommonObjectAttributes, CommonDataObjectAttributes, "
                                "[1] typeAttributes }", f"{name} offset {obj.offset}")
        label = ""
        for a in parts[0].children(name):
            if a.tag == asn1.UTF8_STRING:
                label = a.value.decode("utf-8", "replace")
        oids: set[str] = set()
        for a in parts[1].children(name):
            if a.tag == asn1.OID:
                oids.add(_oid_of(a, name))
            elif a.tag == asn1.UTF8_STRING and not label:  # applicationName, used as label by some cards
                label = a.value.decode("utf-8", "replace")
        type_attr = next((p for p in parts[2:] if p.tag == 0xA1), None)
        if type_attr is None:
            raise CardDataError("data object without typeAttributes [1]", f"{name} offset {obj.offset}")
        inner = type_attr.children(name)
        if not inner:
            raise CardDataError("empty typeAttributes", f"{name} offset {type_attr.offset}")
        value_seq: asn1.Element | None = inner[0]
        if obj.tag == 0xA1 and inner[0].tag == asn1.SEQUENCE:
            # OidDO ::= SEQUENCE { id OBJECT IDENTIFIER, value ObjectValue } (PKCS#15 v1.1 §6.7)
            fields = inner[0].children(name)
            oids.update(_oid_of(f, name) for f in fields if f.tag == asn1.OID)
            value_seq = next((f for f in fields if f.tag == asn1.SEQUENCE), None)
        if value_seq is None or value_seq.tag != asn1.SEQUENCE:
            continue
        path = [p for p in value_seq.children(name) if p.tag == asn1.OCTET_STRING]
        if not path or len(path[0].value) < 2 or len(path[0].value) % 2:
            raise CardDataError("Path without a valid path OCTET STRING", f"{name} offset {value_seq.offset}")
        out.append(DodfEntry(label, frozenset(oids), path[0].value))
    return out


# ---- EF LwM2M_Bootstrap --------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredObject:
    """One object of EF LwM2M_Bootstrap: ID, version ("" = IMPLICIT_VERSION) and TLV payload."""

    object_id: int
    version: str
    tlv: bytes


_default_registry = None


def _registry(registry):  # noqa: ANN001, ANN202 - lazy: DDF files load only when needed
    """``registry`` or the shipped objects (loaded once; this module never modifies it)."""
    global _default_registry
    if registry is not None:
        return registry
    if _default_registry is None:
        from reference.model.registry import ObjectRegistry
        _default_registry = ObjectRegistry.default()
    return _default_registry


def encode_bootstrap_values(values: Values, registry=None) -> bytes:  # noqa: ANN001
    """EF LwM2M_Bootstrap content for ``values`` (G.3.3): the objects in ascending ID order, each
    TLV-encoded (Core 1.1.1 §7.4.3) with ``base`` = the object path. Raises CardDataError if the
    result exceeds the 32 KB limit or an object/length does not fit its field."""
    from reference import formats
    from reference.formats.errors import FormatError

    reg = _registry(registry)
    by_object: dict[int, Values] = {}
    for p, v in values.items():
        by_object.setdefault(p.object_id, {})[p] = v
    objects: list[StoredObject] = []
    for oid in sorted(by_object):
        odef = reg.get(oid)
        if odef is None:
            raise CardDataError(f"object {oid} is not in the object registry", "EF LwM2M_Bootstrap")
        try:
            payload = formats.encode(ContentFormat.LWM2M_TLV, by_object[oid], Path(oid), reg)
        except FormatError as e:
            raise CardDataError(f"object {oid}: {e}", "EF LwM2M_Bootstrap") from None
        version = "" if oid in ENABLER_OBJECTS or odef.version in ("", "1.0") else odef.version
        objects.append(StoredObject(oid, version, payload))
    return encode_bootstrap_file(objects)


def _version_bytes(version: str) -> bytes:
    if not version:
        return b"\x00"  # IMPLICIT_VERSION
    try:
        major, minor = (int(x) for x in version.split("."))
    except ValueError:
        raise CardDataError(f"object version {version!r} is not MAJOR.MINOR", "EF LwM2M_Bootstrap") from None
    if not (1 <= major <= 0xFF and 0 <= minor <= 0xFF):
        raise CardDataError(f"object version {version!r} outside 1.0..255.255", "EF LwM2M_Bootstrap")
    return bytes([major, minor])


def encode_bootstrap_file(objects: list[StoredObject]) -> bytes:
    body = bytearray()
    for o in objects:
        if len(o.tlv) > 0xFFFF:
            raise CardDataError(f"object {o.object_id}: TLV of {len(o.tlv)} bytes exceeds the 2-byte length",
                                "EF LwM2M_Bootstrap")
        body += o.object_id.to_bytes(2, "big") + _version_bytes(o.version) + len(o.tlv).to_bytes(2, "big") + o.tlv
    data = len(objects).to_bytes(2, "big") + len(body).to_bytes(2, "big") + bytes(body)
    if len(data) > MAX_BOOTSTRAP_FILE:
        raise CardDataError(f"{len(data)} bytes exceed the 32 KB limit of Appendix G.3.3", "EF LwM2M_Bootstrap")
    return data


def split_bootstrap_file(data: bytes, name: str = "EF LwM2M_Bootstrap") -> list[tuple[int, StoredObject]]:
    """Parse the G.3.3 framing: ``[(offset of the object's TLV, StoredObject), ...]``. Bytes after
    ``4 + size`` are padding and ignored (the EF is sized by the issuer)."""
    if len(data) < 4:
        raise CardDataError(f"file of {len(data)} bytes is shorter than the 4-byte header", f"{name} offset 0")
    count = int.from_bytes(data[0:2], "big")
    size = int.from_bytes(data[2:4], "big")
    if 4 + size > len(data):
        raise CardDataError(f"header declares {size} bytes of objects, only {len(data) - 4} present",
                            f"{name} offset 2")
    end = 4 + size
    i = 4
    out: list[tuple[int, StoredObject]] = []
    for n in range(count):
        start = i
        if i + 3 > end:
            raise CardDataError(f"object #{n + 1} of {count} truncated in its header", f"{name} offset {start}")
        oid = int.from_bytes(data[i:i + 2], "big")
        i += 2
        major = data[i]
        i += 1
        if major == 0:
            version = ""
        else:
            if i >= end:
                raise CardDataError(f"object {oid}: version truncated", f"{name} offset {i}")
            version = f"{major}.{data[i]}"
            i += 1
        if i + 2 > end:
            raise CardDataError(f"object {oid}: length field truncated", f"{name} offset {i}")
        length = int.from_bytes(data[i:i + 2], "big")
        i += 2
        if i + length > end:
            raise CardDataError(f"object {oid}: length {length} runs past the declared size "
                                f"({end - i} bytes left)", f"{name} offset {i - 2}")
        out.append((i, StoredObject(oid, version, bytes(data[i:i + length]))))
        i += length
    if i != end:
        raise CardDataError(f"{end - i} bytes after the {count} declared objects inside the declared size",
                            f"{name} offset {i}")
    return out


def decode_bootstrap_values(data: bytes, registry=None, name: str = "EF LwM2M_Bootstrap") -> Values:  # noqa: ANN001
    """All resource values stored in EF LwM2M_Bootstrap. Raises CardDataError naming the byte
    offset for bad framing, an object the registry does not know, or a malformed TLV."""
    from reference import formats
    from reference.formats.errors import FormatError

    reg = _registry(registry)
    values: Values = {}
    seen: set[int] = set()
    for offset, obj in split_bootstrap_file(data, name):
        if obj.object_id in seen:
            raise CardDataError(f"object {obj.object_id} stored twice", f"{name} offset {offset - 5}")
        seen.add(obj.object_id)
        if obj.object_id not in reg:
            raise CardDataError(f"unknown object {obj.object_id} (not in the object registry)",
                                f"{name} offset {offset}")
        try:
            decoded = formats.decode(ContentFormat.LWM2M_TLV, obj.tlv, Path(obj.object_id), reg)
        except FormatError as e:
            raise CardDataError(f"object {obj.object_id}: malformed TLV ({len(obj.tlv)} bytes): {e}",
                                f"{name} offset {offset}") from None
        values.update(decoded)
    return values


# ---- DM-SC indicators (project extension) -------------------------------------------------------
def encode_indicators(autonomous_connect: bool, ask_user: bool) -> bytes:
    """``SEQUENCE { autonomousConnect [0] IMPLICIT BOOLEAN, askUser [1] IMPLICIT BOOLEAN }`` (DER)."""
    return asn1.tlv(asn1.SEQUENCE, asn1.tlv(0x80, b"\xff" if autonomous_connect else b"\x00")
                    + asn1.tlv(0x81, b"\xff" if ask_user else b"\x00"))


def decode_indicators(data: bytes, name: str = "EF DM-SC indicators") -> tuple[bool, bool]:
    """``(autonomous_connect, ask_user)``; absent fields are False, unknown context tags skipped."""
    elems = asn1.parse(data, name, padding_ok=True)
    if not elems or elems[0].tag != asn1.SEQUENCE:
        raise CardDataError("expected a SEQUENCE of indicators", f"{name} offset 0")
    flags = {0x80: False, 0x81: False}
    for e in elems[0].children(name):
        if e.tag in flags:
            if len(e.value) != 1:
                raise CardDataError(f"BOOLEAN of {len(e.value)} bytes", f"{name} offset {e.offset}")
            flags[e.tag] = e.value[0] != 0  # BER: any non-zero octet is TRUE
    return flags[0x80], flags[0x81]


# ---- EF ICCID ---------------------------------------------------------------------------------
def encode_iccid(iccid: str) -> bytes:
    """10 bytes, BCD with swapped nibbles, 'F' filler (ETSI TS 102 221 §13.2; ITU-T E.118)."""
    if not iccid.isdigit() or not (1 <= len(iccid) <= 20) or not iccid.isascii():
        raise ValueError(f"ICCID {iccid!r} must be 1 to 20 decimal digits")
    digits = iccid + "F" * (20 - len(iccid))
    return bytes(int(digits[i + 1] + digits[i], 16) for i in range(0, 20, 2))


def decode_iccid(data: bytes, name: str = "EF ICCID") -> str:
    out = []
    for i, b in enumerate(data):
        for nib in (b & 0x0F, b >> 4):
            if nib == 0xF:
                return "".join(out)
            if nib > 9:
                raise CardDataError(f"nibble {nib:X} is not a BCD digit", f"{name} offset {i}")
            out.append(str(nib))
    return "".join(out)
