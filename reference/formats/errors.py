"""Named errors raised by the codecs. Every malformed payload raises a subclass of FormatError."""


class FormatError(ValueError):
    """Base class: a payload cannot be encoded or decoded in the requested content format."""


class UnsupportedFormat(FormatError):
    """The content format is not one this stack handles (CoAP 4.15 / 4.06)."""


class MalformedPayload(FormatError):
    """The bytes are not a valid document of the format (truncated, bad lengths, bad syntax)."""


class TypeMismatch(FormatError):
    """A value does not fit the resource's declared type (e.g. "abc" for an Integer)."""


class UnknownResource(FormatError):
    """A path in the payload names a resource the object definition does not have."""


class PathMismatch(FormatError):
    """A payload's paths do not sit under the request's target path."""
