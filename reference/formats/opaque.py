"""application/octet-stream (Content-Format 42): the raw bytes of one Opaque resource value
(Core 1.1.1 §7.4.2). Only a single Opaque value at a resource or resource-instance path."""
from __future__ import annotations

from reference.formats._common import ResourceLookup, checked_items
from reference.formats.errors import UnsupportedFormat
from reference.formats.text import _single_target
from reference.model.path import Path
from reference.model.types import ResourceType, Values


def _opaque_target(base: Path, registry: ResourceLookup | None) -> None:
    rdef = _single_target(base, registry, "application/octet-stream")
    if rdef.type is not ResourceType.OPAQUE:
        raise UnsupportedFormat(f"application/octet-stream carries Opaque values; {base} is {rdef.type.value}")


def encode(values: Values, base: Path, registry: ResourceLookup | None) -> bytes:
    _opaque_target(base, registry)
    items = checked_items(values, base, registry)
    if len(items) != 1:
        raise UnsupportedFormat(f"application/octet-stream carries exactly one value, got {len(items)}")
    return items[0][2]  # type: ignore[return-value]


def decode(payload: bytes, base: Path, registry: ResourceLookup | None) -> Values:
    _opaque_target(base, registry)
    return {base: bytes(payload)}
