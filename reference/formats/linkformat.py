"""CoRE Link Format (Content-Format 40, RFC 6690 §2) as used by LwM2M Register/Update/Discover
(Core 1.1.1 §5.3.1, §5.4.2, §6.2.2 and §7.2.2).

Grammar (RFC 6690 §2, parameters from RFC 8288/5988)::

    Link            = link-value-list
    link-value-list = [ link-value *[ "," link-value ] ]
    link-value      = "<" URI-Reference ">" *( ";" link-param )
    link-param      = parmname [ "=" ( ptoken / quoted-string ) ]

:func:`parse` is strict by default: no whitespace between the separators (pass ``strict=False``
to accept optional whitespace around "," ";" "=" as some clients send), a parameter at most once
per link, URI references limited to RFC 3986 characters, quoted strings with ``\\"`` and ``\\\\``
escapes. A parameter without a value maps to ``None`` (e.g. ``obs``, LwM2M's ``hb``... flags).
Any syntax error raises :class:`~reference.formats.errors.MalformedPayload`.

:func:`format` quotes a value when it is empty, is not a ptoken, or the parameter is one of the
conventionally quoted ones (rt, if, title, anchor, rel, rev, ...), so ``parse(format(x)) == x``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from reference.formats._common import utf8
from reference.formats.errors import MalformedPayload

__all__ = ["Link", "parse", "format", "ALWAYS_QUOTED"]

_PARMNAME = re.compile(r"[A-Za-z0-9!#$&+\-.^_`|~]+")
_PTOKEN = re.compile(r"[A-Za-z0-9!#$%&'()*+\-./:<=>?@\[\]^_`{|}~]+")
_URI_REF = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")
#: Parameters whose values are quoted-strings by convention (RFC 6690 §3; Core 1.1.1 examples quote rt).
ALWAYS_QUOTED = frozenset({"rt", "if", "title", "anchor", "rel", "rev", "type", "media", "hreflang"})


@dataclass(frozen=True)
class Link:
    """One link-value: the target URI reference (without the angle brackets) and its parameters."""

    target: str
    params: dict[str, str | None] = field(default_factory=dict)

    def __hash__(self) -> int:  # params is a dict; hash on a stable view
        return hash((self.target, tuple(sorted(self.params.items(), key=lambda kv: kv[0]))))

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.params.get(name, default)


class _Scanner:
    def __init__(self, text: str, strict: bool) -> None:
        self.s, self.i, self.strict = text, 0, strict

    def fail(self, what: str) -> MalformedPayload:
        return MalformedPayload(f"link format: {what} at offset {self.i}: {self.s[max(0, self.i - 20):self.i + 20]!r}")

    def ws(self) -> None:
        if not self.strict:
            while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
                self.i += 1

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def expect(self, ch: str) -> None:
        if self.peek() != ch:
            raise self.fail(f"expected {ch!r}")
        self.i += 1

    def match(self, rx: re.Pattern[str]) -> str:
        m = rx.match(self.s, self.i)
        if not m or not m.group(0):
            return ""
        self.i = m.end()
        return m.group(0)

    def quoted(self) -> str:
        self.expect('"')
        out = []
        while True:
            if self.i >= len(self.s):
                raise self.fail("unterminated quoted string")
            c = self.s[self.i]
            self.i += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                if self.i >= len(self.s):
                    raise self.fail("dangling escape in quoted string")
                c = self.s[self.i]
                self.i += 1
            elif ord(c) < 0x20 or c == "\x7f":
                raise self.fail("control character in quoted string")
            out.append(c)


def parse(text: str | bytes, strict: bool = True) -> list[Link]:
    """Parse a link-format document (str, or UTF-8 bytes) into its links, in document order."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = utf8(bytes(text), "link-format payload")
    sc = _Scanner(text, strict)
    links: list[Link] = []
    sc.ws()
    if sc.peek() == "":
        return links
    while True:
        sc.ws()
        sc.expect("<")
        start = sc.i
        end = text.find(">", start)
        if end < 0:
            raise sc.fail("unterminated '<' target")
        target = text[start:end]
        if not _URI_REF.fullmatch(target):
            raise sc.fail(f"invalid character in URI reference {target!r:.60}")
        sc.i = end + 1
        params: dict[str, str | None] = {}
        while True:
            sc.ws()
            if sc.peek() != ";":
                break
            sc.i += 1
            sc.ws()
            name = sc.match(_PARMNAME)
            if not name:
                raise sc.fail("expected a parameter name")
            if name in params:
                raise sc.fail(f"parameter {name!r} given twice in one link")
            sc.ws()
            value: str | None = None
            if sc.peek() == "=":
                sc.i += 1
                sc.ws()
                if sc.peek() == '"':
                    value = sc.quoted()
                else:
                    value = sc.match(_PTOKEN)
                    if not value:
                        raise sc.fail(f"parameter {name!r} has '=' but no value")
            params[name] = value
        links.append(Link(target, params))
        sc.ws()
        if sc.peek() == "":
            return links
        sc.expect(",")


def _quote(v: str) -> str:
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format(links: list[Link]) -> str:  # noqa: A001 - the name mirrors parse()
    """Serialise links (no whitespace, parameters in the order given). Raises MalformedPayload for a
    target or parameter name that cannot be written, or a control character in a value."""
    parts = []
    for link in links:
        if not _URI_REF.fullmatch(link.target):
            raise MalformedPayload(f"link target {link.target!r:.60} is not a URI reference")
        s = f"<{link.target}>"
        for name, value in link.params.items():
            if not _PARMNAME.fullmatch(name):
                raise MalformedPayload(f"link parameter name {name!r:.60} is not a token")
            s += ";" + name
            if value is not None:
                if any(ord(c) < 0x20 or c == "\x7f" for c in value):
                    raise MalformedPayload(f"link parameter {name}: control character in value")
                quote = name in ALWAYS_QUOTED or not _PTOKEN.fullmatch(value)
                s += "=" + (_quote(value) if quote else value)
        parts.append(s)
    return ",".join(parts)
