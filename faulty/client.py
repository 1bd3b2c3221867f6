"""Fault-injected variants of the reference LwM2M client, to prove the client conformance checks
(conformance/tests/test_client_*.py) can fail.

Run exactly like ``lwm2m-client`` plus ``--fault NAME``::

    python -m faulty.client --fault security-in-register --endpoint ep --server-uri coap://... ...

Same READY / EVENT lines and control lines; one overridable behaviour of
:class:`reference.client.client.LwM2MClient` differs per fault.

=============================  =============================================================  =======================
fault                          behaviour (what the specification says instead)                caught by
=============================  =============================================================  =======================
security-in-register           lists the Security object instances in the Register payload    int-101
                               (Core 1.1.1 §6.2.1: /0 MUST NOT be listed)
wrong-location                 ignores the Location-Path of the 2.01 and sends Updates to     int-102
                               /rd/<endpoint> (Transport 1.1.1 §6.2: Update goes to the
                               location the server returned)
disable-ignored                answers Execute /1/x/4 with 2.04 but neither de-registers nor  int-103
                               disables (Core 1.1.1 §E.2 Disable)
no-reregister-after-404        treats 4.04 to an Update as success and keeps updating          int-105
                               (Core 1.1.1 §6.2.2: MUST re-register)
no-lifetime-renewal            never sends the periodic Update before the lifetime expires    int-107
                               (Core 1.1.1 §6.2.2)
finish-accepts-inconsistent    answers Bootstrap-Finish 2.04 whatever it was given            int-9
                               (Core 1.1.1 §6.1.7.2: 4.06 for an inconsistent configuration)
security-readable              lets the LwM2M Server read/write the Security object           int-221
                               (Core 1.1.1 §E.1: 4.01)
write-read-only-accepted       accepts a Write to a read-only resource and stores the value   int-256
                               (Core 1.1.1 §6.3.3: 4.05 Method Not Allowed)
notify-faster-than-pmin        ignores pmin: notifies every change at once                    LWM2M-CREP-001
                               (Core 1.1.1 §5.1.2: MUST wait pmin between notifications)
pmax-ignored                   never notifies an unchanged value (Core §5.1.2: a notification int-301
                               MUST be sent after pmax)
rst-does-not-cancel            keeps notifying after the server answered a notification with  int-302
                               RST (RFC 7641 §3.6 / §4.5)
acl-ignored                    grants every server every right on every instance (Core 1.1.1  LWM2M-CMS-002
                               §7.3: the Access Control object decides with several servers)
duplicate-con-reprocessed      processes a duplicate CON again and answers it anew (RFC 7252  LWM2M-CPKT-007
                               §4.5: the same response again, processed once)
plaintext-to-coaps             talks plain CoAP to a coaps:// server instead of DTLS          int-401
                               (Transport 1.1.1 §5.2)
update-trigger-ignored         answers Execute /1/x/8 with 2.04 but sends no Update            int-104
                               (Core 1.1.1 §E.2 Registration Update Trigger)
value-conditions-ignored       notifies every change, ignoring gt / lt / st                    LWM2M-CREP-003
                               (Core 1.1.1 §5.1.2)
attributes-not-per-server      applies the attributes every server wrote to every server's    int-951
                               observations (Core 1.1.1 §5.1.1: attributes are per server)
=============================  =============================================================  =======================
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from aiocoap import Code, Message

from reference.client.access import AclRight
from faulty import run_client_with_fault
from reference.client.client import LwM2MClient, ServerSession
from reference.client.objects import Obj
from reference.client import attributes
from reference.model.config import ServerRes
from reference.model.path import Path
from reference.model.types import Operations


class SecurityInRegister(LwM2MClient):
    def registration_payload(self, sess: ServerSession | None = None) -> str:
        base = super().registration_payload(sess)
        extra = ",".join(f"</0/{iid}>" for iid in self.tree.instances(Obj.SECURITY)) or "</0/0>"
        return f"{base},{extra}"


class WrongLocation(LwM2MClient):
    async def _register(self, sess: ServerSession) -> bool:
        ok = await super()._register(sess)
        if ok:
            sess.location = ("rd", self.endpoint)  # the Location-Path it was given is ignored
        return ok


class DisableIgnored(LwM2MClient):
    async def execute(self, ssid: int, path: Path, args: str) -> None:
        if path.object_id == Obj.SERVER and path.resource_id == ServerRes.DISABLE:
            return
        await super().execute(ssid, path, args)


class NoReregisterAfter404(LwM2MClient):
    async def _update(self, sess: ServerSession, params: set[str]) -> str:
        result = await super()._update(sess, params)
        return "ok" if result == "reregister" else result


class NoLifetimeRenewal(LwM2MClient):
    def update_due_in(self, lifetime: float) -> float:
        return float("inf")


class FinishAcceptsInconsistent(LwM2MClient):
    def bootstrap_problems(self, staging: Any) -> list[str]:
        return []


class SecurityReadable(LwM2MClient):
    def check_access(self, ssid: int, right: AclRight, oid: int, iid: int | None) -> bool:
        if oid == Obj.SECURITY:
            return True
        return super().check_access(ssid, right, oid, iid)


class WriteReadOnlyAccepted(LwM2MClient):
    def op_write(self, request: Message, ssid: int, path: Path, replace: bool) -> Message:
        if path.depth == 3:
            rd = self.tree.resdef(path.object_id, path.resource_id)  # type: ignore[arg-type]
            if rd is not None and not rd.executable and not (rd.operations & Operations.W):
                for p, v in self.decode_payload(request, path).items():
                    self.tree.set(p, v)
                return Message(code=Code.CHANGED)
        return super().op_write(request, ssid, path, replace)


class NotifyFasterThanPmin(LwM2MClient):
    def effective_attributes(self, obs: Any) -> attributes.Effective:
        return dataclasses.replace(super().effective_attributes(obs), pmin=0.0)


class PmaxIgnored(LwM2MClient):
    def effective_attributes(self, obs: Any) -> attributes.Effective:
        return dataclasses.replace(super().effective_attributes(obs), pmax=None)


class RstDoesNotCancel(LwM2MClient):
    def _cancel_observation(self, obs: Any, reason: str = "") -> None:
        if reason == "rst":
            return  # the Reset is ignored
        super()._cancel_observation(obs, reason)


class AclIgnored(LwM2MClient):
    def check_access(self, ssid: int, right: AclRight, oid: int, iid: int | None) -> bool:
        if oid in (Obj.SECURITY, Obj.OSCORE):
            return False
        return True


class DuplicateConReprocessed(LwM2MClient):
    def _hook_message_layer(self) -> None:
        super()._hook_message_layer()
        mm = self.ctx.request_interfaces[0].token_interface  # type: ignore[union-attr]
        mm._deduplicate_message = lambda message: False  # every copy is a new request


class PlaintextToCoaps(LwM2MClient):
    async def open_channel(self, uri: str, security: dict[int, Any]) -> tuple[tuple[str, int], Any]:
        from reference.model.config import SecurityRes, SecurityMode

        plain = dict(security)
        plain[SecurityRes.SECURITY_MODE] = int(SecurityMode.NOSEC)
        return await super().open_channel(uri.replace("coaps://", "coap://", 1), plain)


class UpdateTriggerIgnored(LwM2MClient):
    async def execute(self, ssid: int, path: Path, args: str) -> None:
        if path.object_id == Obj.SERVER and path.resource_id == ServerRes.REGISTRATION_UPDATE_TRIGGER:
            return
        await super().execute(ssid, path, args)


class ValueConditionsIgnored(LwM2MClient):
    def should_notify(self, obs: Any, last: Any, current: Any, eff: attributes.Effective) -> bool:
        return current != last


class AttributesNotPerServer(LwM2MClient):
    def effective_attributes(self, obs: Any) -> attributes.Effective:
        merged: dict[Path, dict[str, float]] = {}
        for ssid in sorted(self.attrs):
            for p, a in self.attrs[ssid].items():
                merged.setdefault(p, {}).update(a)
        srv = self.server_resources(obs.ssid)
        dpmin, dpmax = srv.get(ServerRes.DEFAULT_PMIN), srv.get(ServerRes.DEFAULT_PMAX)
        return attributes.effective(merged, obs.path, None if dpmin is None else float(dpmin),
                                    None if dpmax is None else float(dpmax))


FAULTS: dict[str, type[LwM2MClient]] = {
    "security-in-register": SecurityInRegister,
    "wrong-location": WrongLocation,
    "disable-ignored": DisableIgnored,
    "no-reregister-after-404": NoReregisterAfter404,
    "no-lifetime-renewal": NoLifetimeRenewal,
    "finish-accepts-inconsistent": FinishAcceptsInconsistent,
    "security-readable": SecurityReadable,
    "write-read-only-accepted": WriteReadOnlyAccepted,
    "notify-faster-than-pmin": NotifyFasterThanPmin,
    "pmax-ignored": PmaxIgnored,
    "rst-does-not-cancel": RstDoesNotCancel,
    "acl-ignored": AclIgnored,
    "duplicate-con-reprocessed": DuplicateConReprocessed,
    "plaintext-to-coaps": PlaintextToCoaps,
    "update-trigger-ignored": UpdateTriggerIgnored,
    "value-conditions-ignored": ValueConditionsIgnored,
    "attributes-not-per-server": AttributesNotPerServer,
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_client_with_fault(FAULTS, argv)


if __name__ == "__main__":
    raise SystemExit(main())
