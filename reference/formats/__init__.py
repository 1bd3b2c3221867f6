"""Content-format codecs (Core 1.1.1 §7.4, Transport 1.1.1; RFC 8428; RFC 6690).

The contract every codec follows:

``encode(fmt, values, base, registry) -> bytes``
    ``values`` is a flat ``{Path: Value}`` mapping (see :mod:`reference.model.types`) of
    resource (depth 3) or resource-instance (depth 4) paths, all under ``base`` (the
    request's target path). Single-value formats (text, opaque, cbor) require exactly one value
    and ``base`` of depth 3 or 4.

``decode(fmt, payload, base, registry) -> Values``
    The inverse. ``registry`` supplies resource types, needed by the formats that do not
    carry them (TLV, text, opaque, cbor). Raises a subclass of
    :class:`reference.formats.errors.FormatError` for any malformed input, never anything else.

Implementations live in the sibling modules (``text``, ``opaque``, ``cbor``, ``tlv``,
``lwm2m_json``, ``senml``, ``linkformat``); this module only dispatches.
"""
from __future__ import annotations

from typing import Callable, Iterable

from reference.formats import cbor, lwm2m_json, opaque, senml, text, tlv
from reference.formats._common import ResourceLookup
from reference.formats.errors import (FormatError, MalformedPayload, PathMismatch, TypeMismatch,
                                      UnknownResource, UnsupportedFormat)
from reference.model.path import Path
from reference.model.types import ContentFormat, Values

__all__ = [
    "SUPPORTED", "encode", "decode", "negotiate", "as_format", "FormatError", "MalformedPayload",
    "PathMismatch", "TypeMismatch", "UnknownResource", "UnsupportedFormat", "ResourceLookup",
]

_Enc = Callable[[Values, Path, "ResourceLookup | None"], bytes]
_Dec = Callable[[bytes, Path, "ResourceLookup | None"], Values]

_CODECS: dict[ContentFormat, tuple[_Enc, _Dec]] = {
    ContentFormat.TEXT: (text.encode, text.decode),
    ContentFormat.OPAQUE: (opaque.encode, opaque.decode),
    ContentFormat.CBOR: (cbor.encode, cbor.decode),
    ContentFormat.LWM2M_TLV: (tlv.encode, tlv.decode),
    ContentFormat.LWM2M_JSON: (lwm2m_json.encode, lwm2m_json.decode),
    ContentFormat.SENML_JSON: (senml.encode_json, senml.decode_json),
    ContentFormat.SENML_CBOR: (senml.encode_cbor, senml.decode_cbor),
}

#: Content formats that carry resource values (encode/decode). Link format (40) is handled by
#: :mod:`reference.formats.linkformat` and is not a value format.
SUPPORTED: frozenset[ContentFormat] = frozenset(_CODECS)

#: Formats that carry only one value (a single resource or resource instance).
SINGLE_VALUE: frozenset[ContentFormat] = frozenset({ContentFormat.TEXT, ContentFormat.OPAQUE, ContentFormat.CBOR})


def as_format(fmt: int | ContentFormat) -> ContentFormat:
    """The ContentFormat for a number, or UnsupportedFormat."""
    try:
        return ContentFormat(fmt)
    except ValueError:
        raise UnsupportedFormat(f"content format {fmt!r} is not one LwM2M uses") from None


def _codec(fmt: int | ContentFormat) -> tuple[_Enc, _Dec]:
    cf = as_format(fmt)
    if cf not in _CODECS:
        raise UnsupportedFormat(f"content format {int(cf)} ({cf.media_type}) does not carry resource values")
    return _CODECS[cf]


def encode(fmt: int | ContentFormat, values: Values, base: Path, registry: ResourceLookup | None) -> bytes:
    """Encode ``values`` (all under ``base``) in ``fmt``; see the module docstring for the contract."""
    return _codec(fmt)[0](values, base, registry)


def decode(fmt: int | ContentFormat, payload: bytes, base: Path, registry: ResourceLookup | None) -> Values:
    """Decode ``payload`` in ``fmt`` for the target ``base``; raises only FormatError subclasses.

    ``registry=None`` is allowed for the self-describing SenML formats (values typed by their
    value key); the other formats need definitions and raise UnknownResource without them."""
    dec = _codec(fmt)[1]
    try:
        return dec(bytes(payload), base, registry)
    except FormatError:
        raise
    except RecursionError:
        raise MalformedPayload(f"{as_format(fmt).media_type} payload nests too deeply") from None


def negotiate(accept: int | None, supported: Iterable[int] = SUPPORTED,
              default: ContentFormat = ContentFormat.SENML_CBOR, *, single_value: bool = False) -> ContentFormat:
    """Pick the response format for a request's Accept option (RFC 7252 §5.10.4, Core 1.1.1 §7.4).

    With an Accept, it must be in ``supported`` (else UnsupportedFormat: answer 4.06 Not
    Acceptable), and text/opaque/cbor only for ``single_value`` targets. Without one, ``default`` (which
    must be supported and fit the target) is used.
    """
    allowed = {as_format(f) for f in supported}
    chosen = as_format(accept) if accept is not None else default
    if chosen not in allowed:
        raise UnsupportedFormat(f"content format {int(chosen)} is not supported here")
    if chosen in SINGLE_VALUE and not single_value:
        raise UnsupportedFormat(f"{chosen.media_type} carries only a single resource value")
    return chosen
