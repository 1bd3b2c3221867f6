"""Resource types, operations, object and resource definitions, content formats.

Numbers mirror their registries: content formats are the IANA CoAP Content-Formats
registry entries LwM2M uses (Core 1.1.1 §7.1, Table 7.1.-1; RFC 7252 §12.3).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union


class ContentFormat(enum.IntEnum):
    """CoAP Content-Format numbers used by LwM2M (IANA registry, Core 1.1.1 Table 7.1.-1)."""

    TEXT = 0            # text/plain; charset=utf-8
    LINK_FORMAT = 40    # application/link-format (RFC 6690)
    OPAQUE = 42         # application/octet-stream
    CBOR = 60           # application/cbor
    SENML_JSON = 110    # application/senml+json (RFC 8428)
    SENML_CBOR = 112    # application/senml+cbor (RFC 8428)
    LWM2M_TLV = 11542   # application/vnd.oma.lwm2m+tlv
    LWM2M_JSON = 11543  # application/vnd.oma.lwm2m+json (LwM2M 1.0)

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    ContentFormat.TEXT: "text/plain;charset=utf-8",
    ContentFormat.LINK_FORMAT: "application/link-format",
    ContentFormat.OPAQUE: "application/octet-stream",
    ContentFormat.CBOR: "application/cbor",
    ContentFormat.SENML_JSON: "application/senml+json",
    ContentFormat.SENML_CBOR: "application/senml+cbor",
    ContentFormat.LWM2M_TLV: "application/vnd.oma.lwm2m+tlv",
    ContentFormat.LWM2M_JSON: "application/vnd.oma.lwm2m+json",
}


class ResourceType(enum.Enum):
    """Data types of Core 1.1.1 Appendix C. Values are the DDF ``<Type>`` spellings."""

    STRING = "String"
    INTEGER = "Integer"
    UNSIGNED_INTEGER = "Unsigned Integer"
    FLOAT = "Float"
    BOOLEAN = "Boolean"
    OPAQUE = "Opaque"
    TIME = "Time"
    OBJLNK = "Objlnk"
    CORELNK = "Corelnk"
    NONE = "None"  # executable resources carry no value

    @classmethod
    def from_ddf(cls, text: str) -> "ResourceType":
        t = (text or "").strip()
        for member in cls:
            if member.value.lower() == t.lower():
                return member
        if t == "":
            return cls.NONE
        raise ValueError(f"unknown resource type {text!r}")


class Operations(enum.Flag):
    """Allowed operations of a resource (DDF ``<Operations>``: R, W, RW, E or empty)."""

    NONE = 0
    R = enum.auto()
    W = enum.auto()
    E = enum.auto()
    RW = R | W

    @classmethod
    def from_ddf(cls, text: str) -> "Operations":
        ops = cls.NONE
        for ch in (text or "").strip().upper():
            if ch not in "RWE":
                raise ValueError(f"unknown operation letter {ch!r} in {text!r}")
            ops |= cls[ch]
        return ops


@dataclass(frozen=True)
class ObjLink:
    """An Objlnk value: ObjectID:InstanceID (Core 1.1.1 Appendix C)."""

    object_id: int
    instance_id: int

    def __str__(self) -> str:
        return f"{self.object_id}:{self.instance_id}"


# A resource value in Python: str, int, float, bool, bytes, ObjLink.
# Time is an int (seconds since the epoch); Corelnk is a str; Unsigned Integer is a non-negative int.
Value = Union[str, int, float, bool, bytes, ObjLink]

# The decoded content of any read/write payload: a flat mapping from resource paths
# (depth 3, single-instance resources) or resource-instance paths (depth 4,
# multiple-instance resources) to their values. Every codec encodes from and decodes to this.
Values = dict["Path", Value]  # noqa: F821 (forward ref to reference.model.path.Path)


@dataclass(frozen=True)
class ResourceDef:
    """One ``<Item>`` of a DDF object definition."""

    id: int
    name: str
    operations: Operations
    multiple: bool
    mandatory: bool
    type: ResourceType
    range: str = ""
    units: str = ""
    description: str = ""

    @property
    def executable(self) -> bool:
        return bool(self.operations & Operations.E)


@dataclass(frozen=True)
class ObjectDef:
    """One ``<Object>`` of a DDF file (Core 1.1.1 §7.1 / the LWM2M.xsd schema)."""

    id: int
    name: str
    multiple: bool
    mandatory: bool
    version: str = "1.0"
    urn: str = ""
    lwm2m_version: str = "1.0"
    resources: dict[int, ResourceDef] = field(default_factory=dict)
    description: str = ""
    source: str = ""  # file the definition came from

    def resource(self, rid: int) -> ResourceDef | None:
        return self.resources.get(rid)
