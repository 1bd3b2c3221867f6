"""The message-format gate the aiocoap-based roles use (reference/coap/gate.py; RFC 7252)."""
from __future__ import annotations

import pytest
from aiocoap import GET, Message
from aiocoap.numbers.types import Type

from reference.coap.gate import Action, screen


def con_get(mid: int = 0x1234, token: bytes = b"\x0b\xad", **opts: object) -> bytes:
    msg = Message(mtype=Type.CON, code=GET, mid=mid, token=token, uri_path=("3", "0", "0"))
    return msg.encode()


RST_1234 = bytes([0x70, 0x00, 0x12, 0x34])


def test_valid_request_passes() -> None:
    assert screen(con_get()).action is Action.PASS


@pytest.mark.parametrize("tkl", range(9, 16))
def test_reserved_token_length_in_con_gets_reset(tkl: int) -> None:
    """RFC 7252 §3: token lengths 9-15 are a message format error; §4.2: a CON is rejected (RST)."""
    data = bytes([0x40 | tkl, 0x01, 0x12, 0x34]) + b"\x00" * tkl
    s = screen(data)
    assert (s.action, s.reply) == (Action.ANSWER, RST_1234)


def test_format_error_in_non_is_dropped() -> None:
    """RFC 7252 §4.3: a NON with a format error is rejected by silently ignoring it."""
    data = bytes([0x50 | 9, 0x01, 0x12, 0x34]) + b"\x00" * 9
    assert screen(data).action is Action.DROP


def test_payload_marker_without_payload_gets_reset() -> None:
    """RFC 7252 §3: a payload marker followed by a zero-length payload is a format error."""
    assert screen(con_get() + b"\xff").reply == RST_1234


@pytest.mark.parametrize("tail", [b"\xb3\x33", b"\xf1\x00", b"\x1f\x00", b"\xd1"])
def test_truncated_or_reserved_option_gets_reset(tail: bytes) -> None:
    """RFC 7252 §3.1: truncated option value, delta 15, length 15, truncated extension."""
    data = bytes([0x42, 0x01, 0x12, 0x34, 0x0B, 0xAD]) + tail
    assert screen(data).reply == RST_1234


def test_unknown_critical_option_gets_bad_option() -> None:
    """RFC 7252 §5.4.1: an unrecognized critical option in a CON request gets 4.02, piggybacked."""
    base = con_get()
    # option 2049 (critical, unknown) after Uri-Path (11): delta 2038 = 14-extension 1769
    data = base + bytes([0xE0, (2038 - 269) >> 8, (2038 - 269) & 0xFF])
    s = screen(data)
    assert s.action is Action.ANSWER
    reply = Message.decode(s.reply)
    assert (reply.mtype, str(reply.code), reply.mid, reply.token) == (Type.ACK, "4.02 Bad Option", 0x1234, b"\x0b\xad")
    assert screen(data).reply == s.reply  # a duplicate gets the identical answer (§4.5)


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\xff\xff\xff\xff", bytes([0x80, 0x01, 0, 1])])
def test_non_coap_bytes_are_dropped(data: bytes) -> None:
    """RFC 7252 §3: unknown version or shorter than a header: silently ignored."""
    assert screen(data).action is Action.DROP


def test_empty_message_with_token_is_a_format_error() -> None:
    """RFC 7252 §4.1: an Empty message has no token and nothing after the header."""
    assert screen(bytes([0x41, 0x00, 0x12, 0x34, 0x01])).reply == RST_1234
    assert screen(bytes([0x40, 0x00, 0x12, 0x34])).action is Action.PASS  # a ping is the stack's
