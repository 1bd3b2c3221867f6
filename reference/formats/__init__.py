"""Content-format codecs (Core 1.1.1 §7.4, Transport 1.1.1; RFC 8428; RFC 6690).

The contract every codec follows:

``encode(fmt, values, base, registry) -> bytes``
    ``values`` is a flat ``{Path: Value}`` mapping (see :mod:`reference.model.types`) of
    resource (depth 3) or resource-instance (depth 4) paths, all under ``base`` (the
    request's target path). Single-value formats (text, opaque) require exactly one value
    and ``base`` of depth 3 or 4.

``decode(fmt, payload, base, registry) -> Values``
    The inverse. ``registry`` supplies resource types, needed by the formats that do not
    carry them (TLV, text, opaque). Raises a subclass of
    :class:`reference.formats.errors.FormatError` for any malformed input, never anything else.

Implementations live in the sibling modules (``text``, ``opaque``, ``tlv``, ``lwm2m_json``,
``senml``, ``linkformat``); this module only dispatches.
"""
