"""A message-format gate in front of aiocoap's UDP transport (RFC 7252 §3, §4.2, §4.3, §5.4.1).

aiocoap's codec is lenient: it processes a request whose token length is 9..15 or whose payload
marker has no payload, silently drops a CON with a truncated option, and serves a request that
carries an unrecognized critical option. RFC 7252 asks otherwise, so the roles built on aiocoap
(the reference client and bootstrap server) screen every datagram with the same checks
:mod:`reference.coap.endpoint` applies, before aiocoap decodes it:

* message format error (§3, §3.1) or reserved code class in a CON: answer with a Reset;
  in a NON/ACK/RST: silently drop (§4.2, §4.3);
* an Empty message (0.00) carrying a token or bytes after the header: a format error (§4.1);
* a CON request with an unrecognized critical option: 4.02 Bad Option, piggybacked (§5.4.1);
  the same in a NON request: rejected (§5.4.1 → §4.3) — a Reset.

Everything else passes through untouched. The answer for a given datagram is a pure function
of its bytes, so a retransmitted duplicate gets the identical answer (§4.5).
"""
from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Callable

from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import Type

from reference.coap.wire import (
    DEFAULT_RECOGNIZED_CRITICAL,
    MessageFormatError,
    check_options,
    empty,
    raw_response,
    scan_options,
)

log = logging.getLogger(__name__)

CON, NON, ACK, RST = int(Type.CON), int(Type.NON), int(Type.ACK), int(Type.RST)


class Action(enum.Enum):
    PASS = "pass"      # hand the datagram to the CoAP stack
    DROP = "drop"      # silently ignore it
    ANSWER = "answer"  # send ``reply`` back and do not process it further


@dataclass(frozen=True)
class Screening:
    action: Action
    reply: bytes = b""
    reason: str = ""


_PASS = Screening(Action.PASS)


def screen(data: bytes, recognized_critical: frozenset[int] = DEFAULT_RECOGNIZED_CRITICAL) -> Screening:
    """Decide what RFC 7252 asks for ``data``; see the module docstring for the rules."""
    n = len(data)
    if n < 4 or data[0] >> 6 != 1:
        # §3: shorter than a header, or a version other than 1: silently ignore.
        return Screening(Action.DROP, reason="not CoAP version 1")
    mtype = (data[0] >> 4) & 3
    tkl = data[0] & 0x0F
    code = data[1]
    mid = (data[2] << 8) | data[3]

    def format_error(why: str) -> Screening:
        if mtype == CON:
            return Screening(Action.ANSWER, empty(Type.RST, mid), why)
        return Screening(Action.DROP, reason=why)

    if code == 0:
        if tkl or n > 4:
            return format_error("Empty message with token or payload (§4.1)")
        return _PASS  # pings, empty ACKs and RSTs are the stack's business
    if tkl > 8:
        return format_error(f"token length {tkl} is reserved (§3)")
    if (code >> 5) in (1, 6, 7):
        return format_error(f"reserved code class {code >> 5} (§4.2)")
    if 4 + tkl > n:
        return format_error("token runs past the datagram end (§3)")
    try:
        opts, _ = scan_options(data, 4 + tkl)
    except MessageFormatError as e:
        return format_error(str(e))
    if (code >> 5) == 0 and mtype in (CON, NON):  # a request
        bad, _ignore = check_options(opts, recognized_critical)
        if bad is not None:
            why = f"unrecognized critical option {bad} (§5.4.1)"
            if mtype == CON:
                token = data[4:4 + tkl]
                return Screening(Action.ANSWER, raw_response(Type.ACK, int(Code.BAD_OPTION), mid, token,
                                                             why.encode()), why)
            return Screening(Action.ANSWER, empty(Type.RST, mid), why)
    return _PASS


def install(context: Any, recognized_critical: frozenset[int] = DEFAULT_RECOGNIZED_CRITICAL,
            on_screened: Callable[[Screening, tuple], None] | None = None) -> None:
    """Put the gate in front of every aiocoap UDP interface of ``context`` (an aiocoap Context
    created with ``transports=["udp6"]``). ``on_screened`` sees every datagram not passed on."""
    for ri in context.request_interfaces:
        mi = getattr(getattr(ri, "token_interface", None), "message_interface", None)
        if mi is None or not hasattr(mi, "datagram_msg_received"):
            continue
        original = mi.datagram_msg_received

        def gated(data: bytes, ancdata: Any, flags: Any, address: tuple,
                  _original: Callable[..., None] = original, _mi: Any = mi) -> None:
            try:
                verdict = screen(data, recognized_critical)
            except Exception:  # the gate must never be what breaks the endpoint
                log.exception("format gate failed; passing the datagram on")
                verdict = _PASS
            if verdict.action is Action.PASS:
                _original(data, ancdata, flags, address)
                return
            log.info("CoAP datagram from %s screened: %s (%s)", address, verdict.action.value, verdict.reason)
            if verdict.action is Action.ANSWER:
                # the socket is AF_INET6 with mapped IPv4 addresses: answer to the raw sockaddr
                _mi.transport.sendmsg(verdict.reply, [], 0, address)
            if on_screened is not None:
                on_screened(verdict, address)

        mi.datagram_msg_received = gated
