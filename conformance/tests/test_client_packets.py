"""Message-layer robustness of a client DUT (RFC 7252 §3, §4, §5.4): malformed CoAP built with
scapy is sent from the suite's server socket to the registered client; each probe expects what
RFC 7252 requires (silent drop, Reset, 4.02 Bad Option, the identical response) and is followed by
a valid Read that must still be answered (the client survived and still works).

The LwM2M UDP binding (Transport 1.1.1 §6, LightweightM2M-HLF-00X1.1) is CoAP over UDP; these are
its message-layer rules.
"""
from __future__ import annotations

import asyncio
import random

import pytest
from scapy.contrib.coap import CoAP

from conformance.evidence import step
from conformance.peers.client_lab import RESPONSE_WITHIN, ClientLab, require
from conformance.peers.server_peer import ServerPeer, WireRecord
from conformance.verdicts import check
from reference.model.types import ContentFormat

pytestmark = [pytest.mark.role("client")]

CON, NON, ACK, RST = 0, 1, 2, 3
GET = 1
SILENCE = 1.0      # s watched for "no answer"
ANSWER_WITHIN = 2.0
URI_3_0_16 = [("Uri-Path", b"3"), ("Uri-Path", b"0"), ("Uri-Path", b"16")]


def _mid() -> int:
    return random.randrange(0x1000, 0xF000)


def _get(mid: int, token: bytes = b"\x5a\xa5", options: list | None = None, **kw: object) -> bytes:
    """A CON GET built with scapy (RFC 7252 §3 header + options)."""
    return bytes(CoAP(ver=kw.pop("ver", 1), type=CON, code=GET, msg_id=mid, token=token,
                      options=URI_3_0_16 if options is None else options, **kw))


async def _probe(srv: ServerPeer, data: bytes, mid: int, window: float) -> list[WireRecord]:
    return await srv.send_raw_and_collect(data, srv.client, window=window, mid=mid)


async def _still_answers(srv: ServerPeer, after: str) -> None:
    resp = await srv.read("/3/0/16", accept=ContentFormat.TEXT, timeout=RESPONSE_WITHIN)
    require(resp, "2.05", requirement="LightweightM2M-HLF-00X1.1", what=f"a valid Read after {after}",
            exchange=srv.exchange())


def _is_rst(r: WireRecord, mid: int) -> bool:
    return r.mtype == RST and r.mid == mid and len(r.data) == 4 and r.data[1] == 0


async def _expect_silence(srv: ServerPeer, data: bytes, mid: int, what: str, clause: str) -> None:
    got = await _probe(srv, data, mid, SILENCE)
    check(not got, requirement="LightweightM2M-HLF-00X1.1", expected=f"no answer to {what} ({clause})",
          actual="; ".join(r.summary() for r in got), exchange=srv.exchange())
    await _still_answers(srv, what)


async def _expect_reset(srv: ServerPeer, data: bytes, mid: int, what: str, clause: str) -> None:
    got = await _probe(srv, data, mid, ANSWER_WITHIN)
    check(got and _is_rst(got[0], mid), requirement="LightweightM2M-HLF-00X1.1",
          expected=f"a Reset with Message ID {mid} for {what} ({clause})",
          actual="; ".join(r.summary() for r in got) or f"nothing within {ANSWER_WITHIN} s", exchange=srv.exchange())
    await _still_answers(srv, what)


@pytest.mark.requirement("LightweightM2M-HLF-00X1.1")
@pytest.mark.case("LWM2M-CPKT-001")
async def test_reserved_version_cpkt_001(client_lab: ClientLab) -> None:
    """LWM2M-CPKT-001 Reserved version number.

    RFC 7252 §3: "Messages with unknown version numbers MUST be silently ignored." A CON GET with
    Version 2 gets no answer; the client keeps working.
    """
    srv, _ = await client_lab.factory_registered()
    mid = _mid()
    await _expect_silence(srv, _get(mid, ver=2), mid, "a Version 2 message", "RFC 7252 §3")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.1")
@pytest.mark.case("LWM2M-CPKT-002")
async def test_token_length_reserved_cpkt_002(client_lab: ClientLab) -> None:
    """LWM2M-CPKT-002 Token Length 9..15.

    RFC 7252 §3: "Lengths 9-15 are reserved, MUST NOT be sent, and MUST be processed as a message
    format error"; §4.2: a Confirmable message with a format error is rejected with a matching Reset.
    TKL 9 and TKL 15 are probed.
    """
    srv, _ = await client_lab.factory_registered()
    for tkl in (9, 15):
        mid = _mid()
        data = bytes(CoAP(ver=1, type=CON, code=GET, msg_id=mid, tkl=tkl, token=bytes(range(1, tkl + 1))))
        with step(f"TKL={tkl}"):
            await _expect_reset(srv, data, mid, f"a CON with Token Length {tkl}", "RFC 7252 §3, §4.2")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.1")
@pytest.mark.case("LWM2M-CPKT-003")
async def test_truncated_option_cpkt_003(client_lab: ClientLab) -> None:
    """LWM2M-CPKT-003 Option value running past the end of the datagram.

    RFC 7252 §3.1 (option format) -> message format error; §4.2: a CON is rejected with Reset.
    """
    srv, _ = await client_lab.factory_registered()
    mid = _mid()
    data = _get(mid, options=[("Uri-Path", b"3")]) + b"\x05" + b"0"  # delta 0, length 5, 1 byte present
    await _expect_reset(srv, data, mid, "a truncated option", "RFC 7252 §3.1, §4.2")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.1")
@pytest.mark.case("LWM2M-CPKT-004")
async def test_reserved_option_nibbles_cpkt_004(client_lab: ClientLab) -> None:
    """LWM2M-CPKT-004 Option Delta or Option Length nibble 15.

    RFC 7252 §3.1: delta 15 not part of the payload marker, and length 15, are "reserved for future
    use" and MUST be processed as a message format error; §4.2: a CON is rejected with Reset.
    """
    srv, _ = await client_lab.factory_registered()
    for what, tail in (("option delta 15", b"\xf1x"), ("option length 15", b"\x0f" + b"x" * 20)):
        mid = _mid()
        with step(what):
            await _expect_reset(srv, _get(mid, options=[("Uri-Path", b"3")]) + tail, mid, what, "RFC 7252 §3.1, §4.2")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.1")
@pytest.mark.case("LWM2M-CPKT-005")
async def test_payload_marker_without_payload_cpkt_005(client_lab: ClientLab) -> None:
    """LWM2M-CPKT-005 Payload marker followed by a zero-length payload.

    RFC 7252 §3: "The presence of a marker followed by a zero-length payload MUST be processed as a
    message format error"; §4.2: a CON is rejected with Reset.
    """
    srv, _ = await client_lab.factory_registered()
    mid = _mid()
    await _expect_reset(srv, _get(mid) + b"\xff", mid, "a payload marker without payload", "RFC 7252 §3, §4.2")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.1")
@pytest.mark.case("LWM2M-CPKT-006")
async def test_unknown_critical_option_cpkt_006(client_lab: ClientLab) -> None:
    """LWM2M-CPKT-006 Unrecognized critical option in a Confirmable request.

    RFC 7252 §5.4.1: an unrecognized critical (odd-numbered) option in a CON request MUST cause the
    return of a 4.02 (Bad Option) response, piggybacked in the ACK (§5.2.1: same Message ID and
    Token). Option 2049 (unassigned, critical) is appended to a GET /3/0/16.
    """
    srv, _ = await client_lab.factory_registered()
    mid, token = _mid(), b"\x0b\xad"
    # after Uri-Path (11): delta 2038 = 269 + 1769 -> nibble 14 + 0x06E9, length 1
    data = _get(mid, token=token) + bytes([0xE1, 0x06, 0xE9]) + b"x"
    got = await _probe(srv, data, mid, ANSWER_WITHIN)
    ok = bool(got) and got[0].mtype == ACK and got[0].code == 0x82 and got[0].data[4:4 + (got[0].data[0] & 15)] == token
    check(ok, requirement="LightweightM2M-HLF-00X1.1",
          expected=f"ACK 4.02 Bad Option, Message ID {mid}, token {token.hex()} (RFC 7252 §5.4.1)",
          actual="; ".join(r.summary() for r in got) or f"nothing within {ANSWER_WITHIN} s", exchange=srv.exchange())
    await _still_answers(srv, "an unknown critical option")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.1")
@pytest.mark.case("LWM2M-CPKT-007")
async def test_duplicate_message_id_cpkt_007(client_lab: ClientLab) -> None:
    """LWM2M-CPKT-007 Duplicate Confirmable message.

    RFC 7252 §4.5: the recipient "SHOULD acknowledge each duplicate copy of a Confirmable message
    using the same Acknowledgement or Reset message but SHOULD process any request ... only once".
    The same CON GET of Current Time /3/0/13 (a value that changes every second) is sent twice,
    1.2 s apart; the second answer must be byte-identical to the first.
    """
    srv, _ = await client_lab.factory_registered()
    mid = _mid()
    data = _get(mid, token=b"\xd0\x0b", options=[("Uri-Path", b"3"), ("Uri-Path", b"0"), ("Uri-Path", b"13")])
    first = await _probe(srv, data, mid, ANSWER_WITHIN)
    check(first and first[0].mtype == ACK, expected="an ACK with the response", actual="; ".join(r.summary() for r in first)
          or "nothing", exchange=srv.exchange())
    await asyncio.sleep(1.2)
    second = await _probe(srv, data, mid, ANSWER_WITHIN)
    check(second and second[0].data == first[0].data, requirement="LightweightM2M-HLF-00X1.1",
          expected=f"the identical ACK again: {first[0].summary()}",
          actual="; ".join(r.summary() for r in second) or "nothing", exchange=srv.exchange())
    await _still_answers(srv, "a duplicate")


@pytest.mark.requirement("LightweightM2M-HLF-00X1.1")
@pytest.mark.case("LWM2M-CPKT-008")
async def test_non_coap_bytes_cpkt_008(client_lab: ClientLab) -> None:
    """LWM2M-CPKT-008 Datagrams that are not CoAP.

    RFC 7252 §3 (a message has at least the 4-byte header; unknown versions are silently ignored)
    and §4.2/§4.3 (nothing to reject without a Message ID): a 3-byte datagram and an HTTP request
    line (Version 1 by accident: 'G' = 0x47, a CON with TKL 7 and response code 2.05 for an unknown
    token -- which may be rejected with Reset, RFC 7252 §4.2) must not crash the client; afterwards
    it answers a valid Read.
    """
    srv, _ = await client_lab.factory_registered()
    got = [r for r in await srv.send_raw_and_collect(b"\x00\x01\x02", srv.client, window=SILENCE, first_only=False)
           if r.code is not None and not 0 < r.code < 32]  # responses / empty messages, not the client's own requests
    check(not got, requirement="LightweightM2M-HLF-00X1.1", expected="no answer to a 3-byte datagram",
          actual="; ".join(r.summary() for r in got), exchange=srv.exchange())
    junk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    mid = (junk[2] << 8) | junk[3]
    got = await _probe(srv, junk, mid, SILENCE)
    check(all(_is_rst(r, mid) for r in got), requirement="LightweightM2M-HLF-00X1.1",
          expected="nothing, or a Reset (RFC 7252 §4.2)", actual="; ".join(r.summary() for r in got),
          exchange=srv.exchange())
    await _still_answers(srv, "non-CoAP datagrams")
    client_lab.client().check_alive()
