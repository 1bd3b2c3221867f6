"""Just enough ASN.1 DER/BER (ITU-T X.690) for the PKCS#15 directory files of a UICC.

Only definite lengths and single-byte tags are supported, which is all PKCS#15 v1.1 (the
structures Core 1.1.1 Appendix G relies on) uses. Decoding errors raise
:class:`~reference.smartcard.errors.CardDataError` naming the byte offset.
"""
from __future__ import annotations

from dataclasses import dataclass

from reference.smartcard.errors import CardDataError

# Universal tags used here.
BOOLEAN = 0x01
BIT_STRING = 0x03
OCTET_STRING = 0x04
OID = 0x06
UTF8_STRING = 0x0C
SEQUENCE = 0x30


def length_bytes(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, value: bytes) -> bytes:
    """One DER element with a single-byte ``tag``."""
    return bytes([tag]) + length_bytes(len(value)) + value


def encode_oid(dotted: str) -> bytes:
    """Content octets (no tag/length) of an OBJECT IDENTIFIER (X.690 §8.19)."""
    arcs = [int(a) for a in dotted.split(".")]
    if len(arcs) < 2 or arcs[0] > 2 or (arcs[0] < 2 and arcs[1] > 39):
        raise ValueError(f"invalid OID {dotted!r}")
    out = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        out.extend(reversed(chunk))
    return bytes(out)


def decode_oid(content: bytes, where: str = "OID") -> str:
    if not content or content[-1] & 0x80:
        raise CardDataError("truncated OBJECT IDENTIFIER", where)
    values: list[int] = []
    acc = 0
    for b in content:
        acc = (acc << 7) | (b & 0x7F)
        if not b & 0x80:
            values.append(acc)
            acc = 0
    first = values[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(v) for v in head + values[1:])


@dataclass(frozen=True)
class Element:
    """A decoded element: ``tag``, ``value`` bytes, and ``offset`` of its tag in the whole file."""

    tag: int
    value: bytes
    offset: int
    value_offset: int

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)

    def children(self, name: str) -> list["Element"]:
        return parse(self.value, name, base=self.value_offset)


def parse(data: bytes, name: str, base: int = 0, padding_ok: bool = False) -> list[Element]:
    """Split ``data`` into consecutive elements. ``name`` (the file or structure) and ``base`` (the
    offset of ``data`` in that file) make error positions absolute. With ``padding_ok``, a run of
    0x00 or 0xFF bytes ends the list (PKCS#15 lets a card issuer pad directory files so)."""
    out: list[Element] = []
    i = 0
    while i < len(data):
        if padding_ok and data[i] in (0x00, 0xFF) and all(b == data[i] for b in data[i:]):
            break
        start = i
        tag = data[i]
        if tag & 0x1F == 0x1F:
            raise CardDataError(f"multi-byte tag {tag:#04x} not supported", f"{name} offset {base + i}")
        i += 1
        if i >= len(data):
            raise CardDataError("element truncated before its length", f"{name} offset {base + start}")
        first = data[i]
        i += 1
        if first < 0x80:
            length = first
        elif first == 0x80 or first > 0x84:
            raise CardDataError(f"unsupported length octet {first:#04x}", f"{name} offset {base + i - 1}")
        else:
            n = first & 0x7F
            if i + n > len(data):
                raise CardDataError("element truncated inside its length", f"{name} offset {base + start}")
            length = int.from_bytes(data[i:i + n], "big")
            i += n
        if i + length > len(data):
            raise CardDataError(
                f"element with tag {tag:#04x} declares {length} bytes, only {len(data) - i} remain",
                f"{name} offset {base + start}")
        out.append(Element(tag, bytes(data[i:i + length]), base + start, base + i))
        i += length
    return out
