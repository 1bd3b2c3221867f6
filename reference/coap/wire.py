"""Wire-level checks that aiocoap's codec does not make, and tiny builders for empty messages.

aiocoap's :meth:`aiocoap.Message.decode` / :meth:`~aiocoap.Message.encode` do the option
encoding. This module only *walks* the option headers (RFC 7252 §3.1) to learn each option's
number and length, because the RFC asks the receiver to act on things the decoded values hide:

* a payload marker followed by a zero-length payload is a message format error (§3);
* option delta or length nibble 15 (other than the payload marker) is a format error (§3.1);
* an option value whose length is outside the range of §5.10 is treated like an unrecognized
  option (§5.4.3), and so is each supernumerary occurrence of a non-repeatable option (§5.4.5).
"""
from __future__ import annotations

from aiocoap.numbers.optionnumbers import OptionNumber
from aiocoap.numbers.types import Type

VERSION = 1
# First header byte for version 1, a given type and token length 0 (RFC 7252 §3).
_B0 = {t: (VERSION << 6) | (int(t) << 4) for t in Type}


class MessageFormatError(ValueError):
    """The datagram violates the message format of RFC 7252 §3 (a "message format error")."""


class OptionSpec:
    """Length range and repeatability of an option (RFC 7252 §5.10 Table 4, RFC 7641 §2,
    RFC 7959 §2.1, RFC 7959 §4)."""

    __slots__ = ("min_len", "max_len", "repeatable")

    def __init__(self, min_len: int, max_len: int, repeatable: bool) -> None:
        self.min_len = min_len
        self.max_len = max_len
        self.repeatable = repeatable


O = OptionNumber
OPTION_SPECS: dict[int, OptionSpec] = {
    int(O.IF_MATCH): OptionSpec(0, 8, True),
    int(O.URI_HOST): OptionSpec(1, 255, False),
    int(O.ETAG): OptionSpec(1, 8, True),
    int(O.IF_NONE_MATCH): OptionSpec(0, 0, False),
    int(O.OBSERVE): OptionSpec(0, 3, False),          # RFC 7641 §2
    int(O.URI_PORT): OptionSpec(0, 2, False),
    int(O.LOCATION_PATH): OptionSpec(0, 255, True),
    int(O.URI_PATH): OptionSpec(0, 255, True),
    int(O.CONTENT_FORMAT): OptionSpec(0, 2, False),
    int(O.MAX_AGE): OptionSpec(0, 4, False),
    int(O.URI_QUERY): OptionSpec(0, 255, True),
    int(O.ACCEPT): OptionSpec(0, 2, False),
    int(O.LOCATION_QUERY): OptionSpec(0, 255, True),
    int(O.BLOCK2): OptionSpec(0, 3, False),           # RFC 7959 §2.1
    int(O.BLOCK1): OptionSpec(0, 3, False),
    int(O.SIZE2): OptionSpec(0, 4, False),            # RFC 7959 §4
    int(O.PROXY_URI): OptionSpec(1, 1034, False),
    int(O.PROXY_SCHEME): OptionSpec(1, 255, False),
    int(O.SIZE1): OptionSpec(0, 4, False),
}
del O

#: Critical options this endpoint understands in requests (odd numbers, RFC 7252 §5.4.1/§5.4.6).
DEFAULT_RECOGNIZED_CRITICAL: frozenset[int] = frozenset(
    n for n in OPTION_SPECS if n & 1
)


def scan_options(data: bytes, pos: int) -> tuple[list[tuple[int, int]], int]:
    """Walk the options starting at ``pos``; return ``([(number, length), ...], payload_offset)``.

    Raises :class:`MessageFormatError` for the format errors of RFC 7252 §3 / §3.1.
    """
    n = len(data)
    number = 0
    out: list[tuple[int, int]] = []
    while pos < n:
        b = data[pos]
        if b == 0xFF:
            if pos + 1 == n:
                raise MessageFormatError("payload marker followed by a zero-length payload (§3)")
            return out, pos + 1
        pos += 1
        delta = b >> 4
        length = b & 0x0F
        if delta == 13:
            if pos >= n:
                raise MessageFormatError("option delta extension truncated (§3.1)")
            delta = data[pos] + 13
            pos += 1
        elif delta == 14:
            if pos + 1 >= n:
                raise MessageFormatError("option delta extension truncated (§3.1)")
            delta = ((data[pos] << 8) | data[pos + 1]) + 269
            pos += 2
        elif delta == 15:
            raise MessageFormatError("option delta 15 outside a payload marker (§3.1)")
        if length == 13:
            if pos >= n:
                raise MessageFormatError("option length extension truncated (§3.1)")
            length = data[pos] + 13
            pos += 1
        elif length == 14:
            if pos + 1 >= n:
                raise MessageFormatError("option length extension truncated (§3.1)")
            length = ((data[pos] << 8) | data[pos + 1]) + 269
            pos += 2
        elif length == 15:
            raise MessageFormatError("option length 15 is reserved (§3.1)")
        number += delta
        if pos + length > n:
            raise MessageFormatError(f"option {number} value runs past the datagram end (§3.1)")
        out.append((number, length))
        pos += length
    return out, n


def check_options(
    opts: list[tuple[int, int]], recognized_critical: frozenset[int]
) -> tuple[int | None, list[int]]:
    """Classify the scanned options.

    Returns ``(bad_critical, ignore_elective)``: the first critical option that must be treated
    as unrecognized (unknown number §5.4.1, length out of range §5.4.3, or repeated though not
    repeatable §5.4.5), or ``None``; and the numbers of elective options whose bad occurrences
    must be ignored (§5.4.1 "MUST be silently ignored").
    """
    prev = -1
    ignore: list[int] = []
    specs = OPTION_SPECS
    for number, length in opts:
        spec = specs.get(number)
        critical = number & 1
        if spec is None:
            if critical and number not in recognized_critical:
                return number, ignore
        elif (length < spec.min_len or length > spec.max_len
              or (number == prev and not spec.repeatable)):
            if critical:
                return number, ignore
            ignore.append(number)
        elif critical and number not in recognized_critical:
            return number, ignore
        prev = number
    return None, ignore


def empty(mtype: Type, mid: int) -> bytes:
    """An Empty message (code 0.00, no token; RFC 7252 §4.1): an empty ACK or a RST."""
    return bytes((_B0[mtype], 0, mid >> 8, mid & 0xFF))


def raw_response(mtype: Type, code: int, mid: int, token: bytes, payload: bytes = b"") -> bytes:
    """A response without options, built directly (used where the request did not decode)."""
    head = bytes((_B0[mtype] | len(token), code, mid >> 8, mid & 0xFF)) + token
    return head + b"\xff" + payload if payload else head
