"""Validation and parsing of the link-format payloads the server receives.

The registration payload (Core 1.1.1 §6.2.1 "Objects and Object Instances", Transport 1.1.1
§6) is an RFC 6690 link-format document whose links name Objects and Object Instances, e.g.
``</1/0>,</3/0>;ver=1.1,</5>`` or, with an alternate root path,
``</lwm2m>;rt="oma.lwm2m",</lwm2m/1/0>``. The server validates it on the hot path (thousands
of registrations per second), so this is a compiled-regex check, not a general parser; the
stored form is the raw string. :func:`parse_links` turns a document into a list of dicts for
display (used by the HTTP API and for Discover responses).
"""
from __future__ import annotations

import re

# RFC 6690 §2: link-param = parmname [ "=" ( ptoken / quoted-string ) ]
_PTOKEN = r"[!#$%&'()*+\-./0-9:<=>?@A-Z\[\]^_`a-z{|}~]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARMNAME = r"[A-Za-z0-9!#$&+\-.^_`|~]+"
_PARAM = rf";{_PARMNAME}(?:=(?:{_PTOKEN}|{_QUOTED}))?"
_LINK = rf"<[^<>\"\s,;]*>(?:{_PARAM})*"
_DOC = re.compile(rf"{_LINK}(?:,{_LINK})*")
_LINK_ITER = re.compile(rf"<([^<>\"\s,;]*)>((?:{_PARAM})*)")
_PARAM_ITER = re.compile(rf";({_PARMNAME})(?:=({_PTOKEN}|{_QUOTED}))?")
_ID = r"(?:0|[1-9][0-9]{0,4})"
_OBJ_PATH = re.compile(rf"/({_ID})(?:/({_ID}))?")
_RT_LWM2M = re.compile(r';rt="?oma\.lwm2m"?(?:;|$)')
MAX_ID = 65534


class LinkFormatError(ValueError):
    """The payload is not a valid registration link-format document."""


def validate_registration_links(text: str) -> str | None:
    """Check a registration payload; return the alternate root path (``None`` for ``/``).

    Rules: RFC 6690 syntax (§2); at most one link with ``rt="oma.lwm2m"`` giving the
    alternate path (Core 1.1.1 §6.2.1; also without quotes, as some clients send it); every
    other link is ``<[altpath]/ObjectID>`` or ``<[altpath]/ObjectID/InstanceID>`` with IDs in
    0..65534 (Core 1.1.1 §7.1). Raises :class:`LinkFormatError`.
    """
    if not text:
        raise LinkFormatError("empty Objects and Object Instances list")
    if _DOC.fullmatch(text) is None:
        raise LinkFormatError("not RFC 6690 link-format")
    links = _LINK_ITER.findall(text)
    alt: str | None = None
    objects: list[str] = []
    for uri, params in links:
        if params and _RT_LWM2M.search(params):
            if alt is not None:
                raise LinkFormatError('more than one link with rt="oma.lwm2m"')
            if not uri.startswith("/"):
                raise LinkFormatError(f"alternate path {uri!r} is not absolute")
            alt = uri.rstrip("/") or None
        else:
            objects.append(uri)
    prefix = alt or ""
    for uri in objects:
        if prefix:
            if not uri.startswith(prefix + "/"):
                raise LinkFormatError(f"link {uri!r} outside the alternate path {prefix!r}")
            uri = uri[len(prefix):]
        m = _OBJ_PATH.fullmatch(uri)
        if m is None:
            raise LinkFormatError(f"link {uri!r} is not /ObjectID or /ObjectID/InstanceID")
        for g in m.groups():
            if g is not None and int(g) > MAX_ID:
                raise LinkFormatError(f"ID {g} in {uri!r} above {MAX_ID}")
    return alt


def parse_links(text: str) -> list[dict]:
    """Parse link-format into ``[{"uri": "/3/0", "attributes": {"ver": "1.1"}}, ...]``.

    Quoted values are unquoted; an attribute without value maps to ``None``. Raises
    :class:`LinkFormatError` if the document is not RFC 6690 link-format."""
    if not text:
        return []
    if _DOC.fullmatch(text) is None:
        raise LinkFormatError("not RFC 6690 link-format")
    out = []
    for uri, params in _LINK_ITER.findall(text):
        attrs: dict[str, str | None] = {}
        for name, value in _PARAM_ITER.findall(params):
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            attrs[name] = value if value != "" else None
        out.append({"uri": uri, "attributes": attrs})
    return out
