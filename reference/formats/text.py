"""text/plain (Content-Format 0): one resource value as UTF-8 text (Core 1.1.1 §7.4.1, Appendix C).

Integer/Unsigned/Time as decimal integers, Float as a decimal number, Boolean as "0"/"1",
Objlnk as "oid:iid", Opaque as base64 (RFC 4648 §4), String/Corelnk verbatim. Only a single
value at a resource (depth 3, single-instance) or resource-instance (depth 4) path.
"""
from __future__ import annotations

from reference.formats._common import (ResourceLookup, check_shape, checked_items, lookup, utf8,
                                       value_from_text, value_to_text)
from reference.formats.errors import UnsupportedFormat
from reference.model.path import Path
from reference.model.types import Values


def _single_target(base: Path, registry: ResourceLookup | None, what: str):
    if base.depth not in (3, 4):
        raise UnsupportedFormat(f"{what} carries a single value; target {base} is not a resource or resource instance")
    rdef = lookup(registry, base)
    if rdef.multiple and base.depth == 3:
        raise UnsupportedFormat(f"{what} cannot carry multiple-instance resource {base}")
    check_shape(rdef, base)
    return rdef


def encode(values: Values, base: Path, registry: ResourceLookup | None) -> bytes:
    """Encode exactly one value at ``base``."""
    rdef = _single_target(base, registry, "text/plain")
    items = checked_items(values, base, registry)
    if len(items) != 1:
        raise UnsupportedFormat(f"text/plain carries exactly one value, got {len(items)}")
    return value_to_text(rdef, base, items[0][2]).encode("utf-8")


def decode(payload: bytes, base: Path, registry: ResourceLookup | None) -> Values:
    rdef = _single_target(base, registry, "text/plain")
    return {base: value_from_text(rdef, base, utf8(payload, "text/plain payload"))}
