"""Fault-injected variants of the reference client's smartcard bootstrap, to prove that the DM-SC
conformance checks (conformance/tests/test_smartcard_client.py) can fail.

Run exactly like ``lwm2m-client`` plus ``--fault NAME``::

    python -m faulty.smartcard --fault connects-without-asking --card image:card.json --endpoint ep ...

Same READY / EVENT / CONFIRM lines, same control lines; one behaviour of
:class:`reference.client.smartcard.SmartcardClient` differs.

==========================  ===============================================================================
fault                       behaviour (what the requirement says instead)
==========================  ===============================================================================
connects-without-asking     ignores the card's user-confirmation indicator: registers at once, never
                            asks (DM-SC-USE-X: SHALL ask before the automatic DM session setup)
ignores-refusal             asks, then connects whatever the answer (DM-SC-USE-X.2: no session after "no")
never-connects              ignores a set autonomous-connect indicator: waits for a local trigger
                            (DM-SC-GEN-X: SHALL connect autonomously if indicated)
connects-unindicated        connects on its own although the card does not indicate it (the project's
                            reading of DM-SC-GEN-X: the issuer's indicator decides)
trusts-truncated            applies the complete objects of a truncated/corrupt EF LwM2M_Bootstrap instead
                            of rejecting the file (Core 1.1.1 Appendix G.3.3 framing; §6.1.3.2 "process")
==========================  ===============================================================================
"""
from __future__ import annotations

import sys
from typing import Any, Sequence

from faulty import run_client_with_fault
from reference.client.smartcard import SmartcardClient
from reference.model.config import DeviceConfig
from reference.model.path import Path
from reference.model.types import Values


class ConnectsWithoutAsking(SmartcardClient):
    async def _confirm(self, question: str, source: str) -> bool:
        return True  # never asks the user agent


class IgnoresRefusal(SmartcardClient):
    async def _confirm(self, question: str, source: str) -> bool:
        await super()._confirm(question, source)
        return True


class NeverConnects(SmartcardClient):
    def _apply_card(self, cfg: DeviceConfig) -> bool:
        ok = super()._apply_card(cfg)
        if ok:
            self.card_gate = "trigger"  # as if the indicator were clear
        return ok


class ConnectsUnindicated(SmartcardClient):
    def _apply_card(self, cfg: DeviceConfig) -> bool:
        ok = super()._apply_card(cfg)
        if ok and self.card_gate == "trigger":
            self.card_gate = None
        return ok


def _lenient_bootstrap_values(data: bytes, registry: Any = None, name: str = "EF LwM2M_Bootstrap") -> Values:
    """G.3.3 framing read the trusting way: stop at the first incomplete object, keep the others."""
    from reference import formats
    from reference.model.types import ContentFormat
    from reference.smartcard import layout

    reg = layout._registry(registry)
    out: Values = {}
    if len(data) < 4:
        return out
    count, i = int.from_bytes(data[0:2], "big"), 4
    for _ in range(count):
        if i + 5 > len(data):
            break
        oid = int.from_bytes(data[i:i + 2], "big")
        i += 3 if data[i + 2] == 0 else 4
        length = int.from_bytes(data[i:i + 2], "big")
        i += 2
        if i + length > len(data):
            break  # truncated object: dropped silently
        try:
            out.update(formats.decode(ContentFormat.LWM2M_TLV, data[i:i + length], Path(oid), reg))
        except Exception:  # noqa: BLE001 - the fault: broken objects are skipped, not reported
            pass
        i += length
    return out


class TrustsTruncated(SmartcardClient):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        from reference.smartcard import layout

        layout.decode_bootstrap_values = _lenient_bootstrap_values  # process-wide: this is the fault


FAULTS: dict[str, type[SmartcardClient]] = {
    "connects-without-asking": ConnectsWithoutAsking,
    "ignores-refusal": IgnoresRefusal,
    "never-connects": NeverConnects,
    "connects-unindicated": ConnectsUnindicated,
    "trusts-truncated": TrustsTruncated,
}


def main(argv: Sequence[str] | None = None) -> int:
    return run_client_with_fault(FAULTS, argv)


if __name__ == "__main__":
    sys.exit(main())
