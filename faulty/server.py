"""Fault-injected variants of the reference LwM2M server, to prove that the server-role
conformance checks can fail.

Run exactly like ``lwm2m-server`` plus ``--fault NAME``::

    python -m faulty.server --fault created-204 --coap-port 0 --http-port 0 --state-dir D

It prints the same READY line (``lwm2m-server READY coap=… coaps=… http=…``) and serves the same
HTTP API; exactly one behaviour differs. Each fault is a small subclass (or a one-line patch of
the running endpoint) overriding one decision of :mod:`reference.server`. ``--list`` prints them.

==========================  ===================================================================
fault                       behaviour (what the spec says instead)
==========================  ===================================================================
wrong-location              2.01 with a Location-Path that does not name the registration
                            (Core 1.1.1 §6.2.1: the location identifies it for Update/De-register)
created-204                 Register answered 2.04 Changed (Transport 1.1.1: 2.01 Created)
no-location                 2.01 without Location-Path (Transport 1.1.1 §6.2: Location-Path)
missing-ep-accepted         Register without ``ep`` accepted (Core 1.1.1 §6.2.1: mandatory -> 4.00)
bad-lifetime-accepted       Register with a non-numeric ``lt`` accepted with the default lifetime
unknown-location-ok         Update / De-register of an unknown location answered 2.04 / 2.02
                            (Transport 1.1.1: 4.04 Not Found)
update-ignores-lifetime     an Update's ``lt`` is acknowledged but not applied (Core §6.2.2)
update-ignores-binding      an Update's ``b`` / ``Q`` is acknowledged but not applied (Core §6.2.2)
update-ignores-sms          an Update's ``sms`` is acknowledged but not applied (Core §6.2.2)
never-expire                registrations are never removed when their lifetime passes (Core §6.2.1)
duplicate-reprocessed       a duplicate CON is processed again instead of answered with the same
                            response (RFC 7252 §4.5)
critical-option-ignored     unrecognized critical options are ignored (RFC 7252 §5.4.1: 4.02)
format-error-4.00           a CON with a message format error is answered 4.00 instead of RST
                            (RFC 7252 §4.2 / §3)
crash-on-malformed          the process exits on a message format error (RFC 7252 §4.2: reject)
dm-wrong-path               Read requests go to the next resource ID (Core 1.1.1 §6.3.1)
dm-write-as-post            Write (replace) of a resource sent as POST (Transport 1.1.1 §6.3: PUT)
dm-wrong-content-format     Write payload labelled with a Content-Format it is not encoded in
psk-identity-unchecked      a DTLS Register is accepted whatever endpoint the PSK identity belongs
                            to (Core 1.1.1 §7: the server authenticates the client; the PSK
                            identity is the credential of one endpoint)
charging-undercount         the charging records miss Updates: an Update, its duplicates and its
                            response are neither counted as traffic nor as an update
                            (LightweightM2M-HLF-SG4: the records cover the device's traffic)
==========================  ===================================================================
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sys
from dataclasses import dataclass
from typing import Any, Callable

from aiocoap import Message
from aiocoap.numbers.codes import Code

from reference.coap import endpoint as coap_endpoint
from reference.coap.wire import raw_response
from reference.model.path import Path
from reference.model.types import ContentFormat
from reference.server.charging import ChargingRecords
from reference.server.registration import RegisterParams, RegistrationInterface
from reference.server.security import SecurityPolicy
from reference.server.server import LwM2MServer


@dataclass(frozen=True)
class Fault:
    """One fault: what it breaks, the classes it swaps in and a patch applied after start."""

    name: str
    description: str
    interface: type[RegistrationInterface] = RegistrationInterface
    server: type[LwM2MServer] = LwM2MServer
    after_start: Callable[[LwM2MServer], None] | None = None


FAULTS: dict[str, Fault] = {}


def _fault(name: str, description: str, **kw: Any) -> None:
    FAULTS[name] = Fault(name, description, **kw)


# ---- registration interface faults -------------------------------------------------------------
class _WrongLocation(RegistrationInterface):
    def register_response(self, reg: Any) -> Message:
        return Message(code=Code.CREATED, location_path=("rd", "x" + reg.location))


class _Created204(RegistrationInterface):
    def register_response(self, reg: Any) -> Message:
        return Message(code=Code.CHANGED, location_path=("rd", reg.location))


class _NoLocation(RegistrationInterface):
    def register_response(self, reg: Any) -> Message:
        return Message(code=Code.CREATED)


class _MissingEpAccepted(RegistrationInterface):
    def parse_register(self, request: Message) -> RegisterParams:
        if not any(q.startswith("ep=") and len(q) > 3 for q in request.opt.uri_query):
            request = request.copy(uri_query=tuple(request.opt.uri_query) + (f"ep=anon-{secrets.token_hex(4)}",))
        return super().parse_register(request)


class _BadLifetimeAccepted(RegistrationInterface):
    def parse_query(self, queries: tuple[str, ...], allowed: frozenset[str]) -> RegisterParams:
        kept = tuple(q for q in queries if not (q.startswith("lt=") and not q[3:].isdigit()))
        return super().parse_query(kept, allowed)


class _UnknownLocationOk(RegistrationInterface):
    async def update(self, request: Message, remote: tuple, location: str, identity: bytes | None) -> Message:
        if self.server.store.get_by_location(location) is None:
            return Message(code=Code.CHANGED)
        return await super().update(request, remote, location, identity)

    async def deregister(self, request: Message, remote: tuple, location: str, identity: bytes | None) -> Message:
        if self.server.store.get_by_location(location) is None:
            return Message(code=Code.DELETED)
        return await super().deregister(request, remote, location, identity)


class _UpdateIgnores(RegistrationInterface):
    ignored: tuple[str, ...] = ()

    def parse_query(self, queries: tuple[str, ...], allowed: frozenset[str]) -> RegisterParams:
        p = super().parse_query(queries, allowed)
        if allowed is self.update_params:
            for name in self.ignored:
                setattr(p, name, None)
        return p


class _UpdateIgnoresLifetime(_UpdateIgnores):
    ignored = ("lifetime",)


class _UpdateIgnoresBinding(_UpdateIgnores):
    ignored = ("binding", "queue")  # the binding mode, queue mode included (1.0 "UQ", 1.1 "Q")


class _UpdateIgnoresSms(_UpdateIgnores):
    ignored = ("sms",)


class _UncheckedPolicy(SecurityPolicy):
    def check_register(self, endpoint: str, identity: bytes | None) -> str | None:
        return None


# ---- server faults ---------------------------------------------------------------------------
_LOST = "\x00lost-update"


class _UndercountingCharging(ChargingRecords):
    def updated(self, reg: Any) -> None:
        # the Update's exchange (request, duplicates, response) is charged to a record never kept
        self._bind(reg.address, reg.endpoint)
        self._concerns(_LOST)

    def _delta(self, endpoint: str) -> list:
        return [0] * 9 if endpoint == _LOST else super()._delta(endpoint)


class _ChargingUndercount(LwM2MServer):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        if self.charging is not None:
            self.charging = _UndercountingCharging(self.charging.path, registrations=self.charging.registrations)


class _NeverExpire(LwM2MServer):
    async def _expiry_loop(self) -> None:
        await asyncio.Event().wait()  # the sweep never runs


class _WrongReadPath(LwM2MServer):
    async def read(self, endpoint: str, path: Any, accept: int | None = None, **kw: Any) -> Any:
        p = self._path(path)
        if p.depth >= 1:
            parts = list(p.parts)
            parts[-1] += 1
            p = Path.of(*parts)
        return await super().read(endpoint, p, accept, **kw)


class _WriteAsPost(LwM2MServer):
    async def write(self, endpoint: str, path: Any, values: Any = None, **kw: Any) -> Any:
        p = self._path(path)
        if p.depth == 3:
            kw["replace"] = False  # POST on a resource path: that is Execute, not Write
        return await super().write(endpoint, p, values, **kw)


class _WrongContentFormat(LwM2MServer):
    def _payload(self, p: Path, values: Any, payload: Any, fmt: Any) -> tuple[bytes, int]:
        body, cf = super()._payload(p, values, payload, fmt)
        wrong = int(ContentFormat.LWM2M_TLV) if cf != int(ContentFormat.LWM2M_TLV) else int(ContentFormat.TEXT)
        return body, wrong


class _PskUnchecked(LwM2MServer):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.security = _UncheckedPolicy(self.psk_table)


# ---- endpoint patches ----------------------------------------------------------------------------
class _NoDedup:
    """A duplicate cache that never remembers anything (every duplicate is new)."""

    def tick(self, now: float) -> None:
        pass

    def get(self, key: Any) -> Any:
        return coap_endpoint._MISSING

    def put(self, key: Any, value: Any) -> None:
        pass

    def __len__(self) -> int:
        return 0


def _patch_dedup(server: LwM2MServer) -> None:
    assert server.coap is not None
    server.coap._dedup = _NoDedup()  # type: ignore[assignment]


def _patch_critical(server: LwM2MServer) -> None:
    assert server.coap is not None
    server.coap.recognized_critical = frozenset(range(1, 65536, 2))


def _patch_format_error_400(server: LwM2MServer) -> None:
    ep = server.coap
    assert ep is not None

    def _format_error(mtype: int, mid: int, remote: tuple) -> None:
        ep.stats.format_errors += 1
        if mtype == coap_endpoint.CON:
            ep.send_raw(raw_response(coap_endpoint.ACK, int(Code.BAD_REQUEST), mid, b""), remote)

    ep._format_error = _format_error  # type: ignore[method-assign]


def _patch_crash(server: LwM2MServer) -> None:
    ep = server.coap
    assert ep is not None

    def _format_error(mtype: int, mid: int, remote: tuple) -> None:
        print("faulty server: crashing on a malformed datagram", file=sys.stderr, flush=True)
        os._exit(70)

    ep._format_error = _format_error  # type: ignore[method-assign]


_fault("wrong-location", "2.01 with a Location-Path that does not name the registration", interface=_WrongLocation)
_fault("created-204", "Register answered 2.04 Changed instead of 2.01 Created", interface=_Created204)
_fault("no-location", "2.01 Created without Location-Path", interface=_NoLocation)
_fault("missing-ep-accepted", "Register without ep accepted", interface=_MissingEpAccepted)
_fault("bad-lifetime-accepted", "Register with non-numeric lt accepted", interface=_BadLifetimeAccepted)
_fault("unknown-location-ok", "Update/De-register of an unknown location answered 2.04/2.02",
       interface=_UnknownLocationOk)
_fault("update-ignores-lifetime", "an Update's lt is not applied", interface=_UpdateIgnoresLifetime)
_fault("update-ignores-binding", "an Update's b is not applied", interface=_UpdateIgnoresBinding)
_fault("update-ignores-sms", "an Update's sms is not applied", interface=_UpdateIgnoresSms)
_fault("never-expire", "registrations never expire", server=_NeverExpire)
_fault("duplicate-reprocessed", "duplicate CONs are processed again", after_start=_patch_dedup)
_fault("critical-option-ignored", "unrecognized critical options are ignored", after_start=_patch_critical)
_fault("format-error-4.00", "message format errors in CONs answered 4.00 instead of RST",
       after_start=_patch_format_error_400)
_fault("crash-on-malformed", "the process exits on a message format error", after_start=_patch_crash)
_fault("dm-wrong-path", "Read requests go to the next resource ID", server=_WrongReadPath)
_fault("dm-write-as-post", "Write (replace) of a resource sent as POST", server=_WriteAsPost)
_fault("dm-wrong-content-format", "Write payload labelled with the wrong Content-Format",
       server=_WrongContentFormat)
_fault("psk-identity-unchecked", "DTLS Register accepted for any endpoint", server=_PskUnchecked)
_fault("charging-undercount", "charging records miss Updates (traffic and count)", server=_ChargingUndercount)


def build(fault: str, **kwargs: Any) -> LwM2MServer:
    """An (unstarted) faulty server; ``kwargs`` as for :class:`LwM2MServer`. Call
    :func:`apply_after_start` after ``await server.start()``."""
    f = FAULTS[fault]
    return f.server(registration_interface=f.interface, **kwargs)


def apply_after_start(fault: str, server: LwM2MServer) -> None:
    f = FAULTS[fault]
    if f.after_start is not None:
        f.after_start(server)


def main(argv: list[str] | None = None) -> int:
    from reference.server.cli import serve, serve_parser

    p = serve_parser()
    p.prog = "python -m faulty.server"
    p.add_argument("--fault", choices=sorted(FAULTS), help="the one behaviour to break")
    p.add_argument("--list", action="store_true", help="list the faults and exit")
    args = p.parse_args(argv)
    if args.list:
        for f in FAULTS.values():
            print(f"{f.name:26} {f.description}")
        return 0
    if not args.fault:
        p.error("--fault NAME is required (see --list)")
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"faulty server: fault {args.fault!r} active: {FAULTS[args.fault].description}",
          file=sys.stderr, flush=True)
    try:
        return asyncio.run(serve(args, make_server=lambda **kw: build(args.fault, **kw),
                                 after_start=lambda server: apply_after_start(args.fault, server)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
