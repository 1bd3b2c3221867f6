"""Packet-level robustness of a SERVER under test (malformed CoAP, RFC 7252 message layer).

A server reachable by many IP devices over the UDP binding (seed 000, LightweightM2M-HLF-00X1.1;
Transport 1.1.1 §5/§6: LwM2M runs on CoAP, RFC 7252) must answer malformed datagrams the way RFC
7252 asks and keep serving. Every case sends one crafted datagram (built with
``scapy.contrib.coap`` or by hand where scapy would fix the fault), checks the reply, then sends
a valid Register from the same socket, which must still be answered 2.01 Created.

RFC 7252 clauses used:

* §3: "Messages with unknown version numbers MUST be silently ignored"; token lengths 9-15 "MUST
  be processed as a message format error"; "The presence of a marker followed by a zero-length
  payload MUST be processed as a message format error".
* §3.1: option delta/length nibble 15 (other than the payload marker) is a message format error;
  an option that runs past the end of the datagram is malformed.
* §4.1: an Empty message with a token or bytes after the Message ID is a message format error.
* §4.2: a recipient MUST acknowledge a Confirmable message or reject it when it "is Empty, uses a
  code with a reserved class (1, 6, or 7), or has a message format error"; rejecting a CON is done
  with a matching Reset (same Message ID, Empty). §4.3: a CoAP ping (Empty CON) gets a Reset.
* §4.5: "The recipient SHOULD acknowledge each duplicate copy of a Confirmable message using the
  same Acknowledgement or Reset message but SHOULD process any request ... only once."
* §5.4.1: "Unrecognized options of class 'critical' that occur in a Confirmable request MUST cause
  the return of a 4.02 (Bad Option) response."
"""
from __future__ import annotations

import random
import struct

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type
from aiocoap.optiontypes import OpaqueOption
from scapy.contrib.coap import CoAP

from conformance.evidence import step
from conformance.peers.client_peer import ClientPeer, RawCoap, code_str, decode_or_none, describe
from conformance.tests.conftest_server import ServerSide, new_endpoint
from conformance.verdicts import check

pytestmark = [pytest.mark.role("server")]

HLF_IP = "LightweightM2M-HLF-00X1.1"
HLF_REG = "LightweightM2M-HLF-00X1.6"
WINDOW = 0.6  # seconds to collect replies to a crafted datagram (loopback)


def register_message(side: ServerSide, endpoint: str, mid: int, token: bytes = b"\x51\x52\x53\x54") -> Message:
    """A valid Register (CON POST /rd?ep=…) with the given Message ID and token, not yet encoded."""
    peer = ClientPeer(side.address, endpoint, lwm2m=side.lwm2m)
    msg = peer.register_message(lifetime=300, binding="U")
    msg.mtype, msg.mid, msg.token = Type.CON, mid, token
    return msg


def register_bytes(side: ServerSide, endpoint: str, mid: int, token: bytes = b"\x51\x52\x53\x54") -> bytes:
    """The datagram of :func:`register_message`."""
    return register_message(side, endpoint, mid, token).encode()


def scapy_get(mid: int, *, tkl: int | None = None, token: bytes = b"\xa1\xa2", ver: int = 1, code: int = 1,
              mtype: int = 0, options: list | None = None, paymark: bytes = b"") -> bytes:
    """A CoAP datagram from scapy's CoAP layer (fields set as given, faults included)."""
    pkt = CoAP(ver=ver, type=mtype, code=code, msg_id=mid, token=token,
               options=options if options is not None else [("Uri-Path", b"rd")], paymark=paymark)
    if tkl is not None:
        pkt.tkl = tkl
    return bytes(pkt)


def is_rst_for(data: bytes, mid: int) -> bool:
    """An Empty Reset echoing ``mid`` (RFC 7252 §4.2)."""
    return len(data) == 4 and data[0] >> 6 == 1 and (data[0] >> 4) & 3 == 3 and data[1] == 0 \
        and struct.unpack("!H", data[2:4])[0] == mid


def shown(replies: list[bytes]) -> str:
    return "; ".join(describe(d) for d in replies) or "no reply"


async def still_serves(side: ServerSide, raw: RawCoap, what: str) -> None:
    """The valid request after a crafted one: a Register from the same socket must get 2.01."""
    ep = new_endpoint("after")
    peer = ClientPeer(side.address, ep, lwm2m=side.lwm2m)
    msg = peer.register_message(lifetime=300, binding="U")
    with step(f"a valid Register after the {what} is still answered"):
        try:
            resp = await raw.request(msg, timeout=5)
        except Exception as e:  # noqa: BLE001 - no answer at all is the failure being checked
            resp = None
            err = f"{type(e).__name__}: {e}"
        else:
            err = ""
        if resp is None and not side.dut.running:
            err += f"; the DUT process is gone: {side.dut.last_output(3)}"
        check(resp is not None and resp.code == Code.CREATED, requirement=HLF_IP,
              expected=f"2.01 Created for a valid Register sent after the {what}",
              actual=err or f"{code_str(resp.code)} {resp.payload[:60]!r}")


async def expect_reset(side: ServerSide, data: bytes, mid: int, what: str, clause: str) -> None:
    raw = await side.raw()
    with step(f"send {what}"):
        replies = await raw.exchange(data, WINDOW)
    non_rst = [d for d in replies if not is_rst_for(d, mid)]
    check(any(is_rst_for(d, mid) for d in replies) and not non_rst, requirement=HLF_IP,
          expected=f"a Reset echoing Message ID {mid} and nothing else ({clause})",
          actual=shown(replies))
    await still_serves(side, raw, what)


# ---------------------------------------------------------------------------------------------

@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-001")
@pytest.mark.parametrize("version", [0, 2, 3])
async def test_srv_coap_001_reserved_version_ignored(server_side: ServerSide, version: int) -> None:
    """LWM2M-SRV-COAP-001 a Register whose version field is not 1 is silently ignored (RFC 7252
    §3: "Messages with unknown version numbers MUST be silently ignored"): no reply at all, no
    registration; a valid Register afterwards is answered."""
    side = server_side
    raw = await side.raw()
    ep = new_endpoint("ver")
    good = bytearray(register_bytes(side, ep, 0x2001))
    good[0] = (good[0] & 0x3F) | (version << 6)
    with step(f"send a Register with version {version}"):
        replies = await raw.exchange(bytes(good), WINDOW)
    check(not replies, requirement=HLF_IP, expected="no reply (silently ignored, RFC 7252 §3)",
          actual=shown(replies))
    check(await side.find(ep) is None, requirement=HLF_IP, expected=f"{ep} not registered",
          actual="the server registered it")
    await still_serves(side, raw, f"version-{version} datagram")


@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-002")
@pytest.mark.parametrize("tkl", [9, 15])
async def test_srv_coap_002_token_length_reserved(server_side: ServerSide, tkl: int) -> None:
    """LWM2M-SRV-COAP-002 a CON request with token length 9..15 is a message format error (RFC 7252
    §3) and is rejected with a matching Reset (§4.2); the server keeps serving."""
    data = scapy_get(0x2002, tkl=tkl, token=bytes(range(1, tkl + 1)))
    await expect_reset(server_side, data, 0x2002, f"a CON with token length {tkl}", "RFC 7252 §3, §4.2")


@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-003")
async def test_srv_coap_003_truncated_option(server_side: ServerSide) -> None:
    """LWM2M-SRV-COAP-003 a CON request whose last option claims more value bytes than the datagram
    holds (Uri-Path of length 10 with 2 bytes left) is a message format error (RFC 7252 §3.1) and is
    rejected with a Reset (§4.2)."""
    head = scapy_get(0x2003, options=[])
    data = head + bytes([0xBA]) + b"rd"  # delta 11 (Uri-Path), length 10, only 2 bytes follow
    await expect_reset(server_side, data, 0x2003, "a CON with a truncated option", "RFC 7252 §3.1, §4.2")


@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-004")
@pytest.mark.parametrize("nibble", ["length", "delta"])
async def test_srv_coap_004_reserved_option_nibble(server_side: ServerSide, nibble: str) -> None:
    """LWM2M-SRV-COAP-004 an option header with the reserved value 15 in the length nibble, or in
    the delta nibble of a byte that is not the payload marker, is a message format error (RFC 7252
    §3.1) and the CON is rejected with a Reset (§4.2)."""
    head = scapy_get(0x2004, options=[("Uri-Path", b"rd")])
    bad = bytes([0x0F]) if nibble == "length" else bytes([0xF1, 0x00])
    await expect_reset(server_side, head + bad, 0x2004, f"a CON with option {nibble} nibble 15",
                       "RFC 7252 §3.1, §4.2")


@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-005")
async def test_srv_coap_005_payload_marker_without_payload(server_side: ServerSide) -> None:
    """LWM2M-SRV-COAP-005 a Register ending in a payload marker with nothing after it is a message
    format error (RFC 7252 §3: "MUST be processed as a message format error") and is rejected with
    a Reset (§4.2), not registered."""
    side = server_side
    ep = new_endpoint("pm")
    peer = ClientPeer(side.address, ep, lwm2m=side.lwm2m)
    msg = peer.register_message(lifetime=300, binding="U", links=None)
    msg.mtype, msg.mid, msg.token = Type.CON, 0x2005, b"\x01\x02"
    data = msg.encode() + b"\xff"
    await expect_reset(side, data, 0x2005, "a Register with a payload marker and no payload", "RFC 7252 §3, §4.2")
    check(await side.find(ep) is None, requirement=HLF_IP, expected=f"{ep} not registered",
          actual="the server registered it")


@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-006")
async def test_srv_coap_006_unknown_critical_option(server_side: ServerSide) -> None:
    """LWM2M-SRV-COAP-006 a CON Register carrying an unrecognized critical option (number 2049, odd
    = critical, unassigned) gets 4.02 Bad Option (RFC 7252 §5.4.1), piggybacked with the request's
    Message ID and token (§5.2.1, §5.3.2), and is not registered."""
    side = server_side
    raw = await side.raw()
    ep = new_endpoint("crit")
    good = register_message(side, ep, 0x2006, b"\xc1\xc2\xc3")
    good.opt.add_option(OpaqueOption(2049, b"\x01"))
    with step("send a Register with critical option 2049"):
        replies = await raw.exchange(good.encode(), WINDOW, until=lambda d: True)
    msgs = [decode_or_none(d) for d in replies]
    ok = [m for m in msgs if m is not None and m.code == Code.BAD_OPTION and m.mid == 0x2006
          and m.token == b"\xc1\xc2\xc3"]
    check(bool(ok), requirement=HLF_IP,
          expected="ACK 4.02 Bad Option with Message ID 0x2006 and the request's token (RFC 7252 §5.4.1)",
          actual=shown(replies))
    check(await side.find(ep) is None, requirement=HLF_IP, expected=f"{ep} not registered",
          actual="the server registered it despite the unrecognized critical option")
    await still_serves(side, raw, "unknown critical option")


@pytest.mark.requirement(HLF_IP, HLF_REG)
@pytest.mark.case("LWM2M-SRV-COAP-007")
async def test_srv_coap_007_duplicate_message_id(server_side: ServerSide) -> None:
    """LWM2M-SRV-COAP-007 a Register retransmitted with the same Message ID (the ACK was lost)
    gets the same response again and is processed once (RFC 7252 §4.5): identical code, token and
    Location-Path, and one registration of the endpoint."""
    side = server_side
    raw = await side.raw()
    ep = new_endpoint("dup")
    data = register_bytes(side, ep, 0x2007, b"\xd1\xd2\xd3\xd4")
    with step("send the Register"):
        first = await raw.exchange(data, WINDOW, until=lambda d: True)
    with step("send the very same datagram again"):
        second = await raw.exchange(data, WINDOW, until=lambda d: True)
    m1 = [m for m in map(decode_or_none, first) if m is not None and m.mid == 0x2007]
    m2 = [m for m in map(decode_or_none, second) if m is not None and m.mid == 0x2007]
    check(m1 and m1[0].code == Code.CREATED, requirement=HLF_REG, expected="2.01 Created for the Register",
          actual=shown(first))
    check(bool(m2), requirement=HLF_IP, expected="the duplicate is acknowledged (RFC 7252 §4.5)",
          actual=shown(second))
    a, b = m1[0], m2[0]
    same = (a.code == b.code and a.token == b.token and tuple(a.opt.location_path) == tuple(b.opt.location_path))
    check(same, requirement=HLF_IP,
          expected="the same response for the duplicate (RFC 7252 §4.5)",
          actual=f"first: {describe(first[0])}\nsecond: {describe(second[0])}")
    n = await side.count(ep)
    check(n == 1, requirement=HLF_IP, expected=f"one registration of {ep} (processed once)",
          actual=f"{n} registrations")
    await still_serves(side, raw, "duplicate")


@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-008")
async def test_srv_coap_008_non_coap_bytes(server_side: ServerSide) -> None:
    """LWM2M-SRV-COAP-008 datagrams that are not CoAP (an HTTP request line, a DTLS ClientHello
    record, 3 stray bytes, an empty datagram, 64 random bytes) never get a success response: each
    is ignored or, where it parses as a CON, rejected with a Reset (RFC 7252 §3, §4.2); the server
    keeps serving."""
    side = server_side
    raw = await side.raw()
    rnd = random.Random(7252)
    junk = {
        "HTTP request line": b"GET / HTTP/1.1\r\nHost: lwm2m\r\n\r\n",
        "DTLS ClientHello record": bytes.fromhex("16fefd0000000000000000002f010000230000000000000023fefd") + bytes(32),
        "3 bytes": b"\x40\x01\x00",
        "empty datagram": b"",
        "64 random bytes": bytes(rnd.getrandbits(8) for _ in range(64)),
    }
    bad: list[str] = []
    for name, data in junk.items():
        with step(f"send {name}"):
            replies = await raw.exchange(data, 0.4)
        for r in replies:
            m = decode_or_none(r)
            if m is not None and m.code is not None and int(m.code) >= 64 and int(m.code) < 128:
                bad.append(f"{name}: success response {describe(r)}")
    check(not bad, requirement=HLF_IP, expected="no success response to non-CoAP bytes", actual="\n".join(bad))
    await still_serves(side, raw, "non-CoAP datagrams")


@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-009")
async def test_srv_coap_009_ping_gets_reset(server_side: ServerSide) -> None:
    """LWM2M-SRV-COAP-009 a CoAP ping (Empty CON, code 0.00, no token) is answered with a matching
    Reset (RFC 7252 §4.2 "is Empty" -> reject, §4.3)."""
    data = scapy_get(0x2009, token=b"", code=0, options=[])
    await expect_reset(server_side, data, 0x2009, "an Empty CON (CoAP ping)", "RFC 7252 §4.2, §4.3")


@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-010")
@pytest.mark.parametrize("code", [0x21, 0xE0])
async def test_srv_coap_010_reserved_code_class(server_side: ServerSide, code: int) -> None:
    """LWM2M-SRV-COAP-010 a CON with a code of the reserved classes 1 or 7 (1.01, 7.00) is
    rejected with a matching Reset (RFC 7252 §4.2)."""
    data = scapy_get(0x2010, code=code)
    await expect_reset(server_side, data, 0x2010, f"a CON with reserved code {code >> 5}.{code & 31:02d}",
                       "RFC 7252 §4.2")


@pytest.mark.requirement(HLF_IP)
@pytest.mark.case("LWM2M-SRV-COAP-011")
async def test_srv_coap_011_empty_message_with_token(server_side: ServerSide) -> None:
    """LWM2M-SRV-COAP-011 an Empty CON that carries a token is a message format error (RFC 7252
    §4.1: an Empty message has token length 0 and no bytes after the Message ID) and is rejected
    with a Reset (§4.2)."""
    data = scapy_get(0x2011, token=b"\x99\x98", code=0, options=[])
    await expect_reset(server_side, data, 0x2011, "an Empty CON with a token", "RFC 7252 §4.1, §4.2")
