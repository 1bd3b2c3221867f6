"""Property-based check of a SERVER's registration lifecycle against a model.

A hypothesis ``RuleBasedStateMachine`` plays a few clients through random sequences of Register
(long or 2 s lifetime), Update, De-register, Update of a removed or never-existing location,
letting a short registration expire, and re-registering; after every step the server's view
(profile action ``registrations``) must equal the model, and every CoAP answer must be the one
Core 1.1.1 §6.2 / Transport 1.1.1 §6.2 prescribe (2.01 + Location-Path, 2.04, 2.02, 4.04 for a
location that is not a registration; a registration not updated within its lifetime is removed).

Bounded: 8 examples of at most 12 steps, at most two expiry waits in the whole run, no
shrinking (each step is a network exchange with a live DUT).
"""
from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Awaitable, TypeVar

import pytest
from aiocoap.numbers.codes import Code
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, run_state_machine_as_test

from conformance.peers.client_peer import ClientPeer, code_str
from conformance.tests.conftest_server import ServerSide
from conformance.verdicts import check

pytestmark = [pytest.mark.role("server")]

HLF_REG = "LightweightM2M-HLF-00X1.6"
SHORT = 2          # seconds: the short lifetime
GRACE = 3.0        # seconds allowed after the lifetime for the server's expiry sweep
T = TypeVar("T")


@dataclass
class Reg:
    peer: ClientPeer
    location: tuple[str, ...]
    lifetime: int
    refreshed: float

    @property
    def deadline(self) -> float:
        return self.refreshed + self.lifetime


def lifecycle_machine(side: ServerSide, loop: asyncio.AbstractEventLoop) -> type[RuleBasedStateMachine]:
    """The state machine class bound to one running DUT and the test's event loop."""

    def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)  # type: ignore[arg-type]

    class Lifecycle(RuleBasedStateMachine):
        expiries_left = 2  # expiry waits cost seconds: at most two in the whole run

        def __init__(self) -> None:
            super().__init__()
            self.tag = secrets.token_hex(3)
            self.names = [f"sm-{self.tag}-{i}" for i in range(3)]
            self.regs: dict[str, Reg] = {}
            self.dead: list[tuple[str, tuple[str, ...]]] = []
            self.expired_once = False
            self.log: list[str] = []

        def note(self, text: str) -> None:
            self.log.append(text)
            side.evidence.note(f"model: {text}")

        @initialize(short=st.booleans())
        def start(self, short: bool) -> None:
            self.note(f"example with endpoints {self.names}")
            self.register(0, short)

        # ---- rules --------------------------------------------------------------------------
        @rule(i=st.integers(0, 2), short=st.booleans())
        def register(self, i: int, short: bool) -> None:
            ep = self.names[i]
            lt = SHORT if short else 300
            peer = run(side.peer(ep))
            resp = run(peer.register(lifetime=lt, binding="U"))
            self.note(f"Register {ep} lt={lt} -> {code_str(resp.code)} {list(resp.opt.location_path)}")
            check(resp.code == Code.CREATED and bool(resp.opt.location_path), requirement=HLF_REG,
                  expected=f"2.01 Created + Location-Path for Register of {ep}", actual=code_str(resp.code),
                  exchange=self.log)
            old = self.regs.get(ep)
            if old is not None:
                run(old.peer.close())  # the old location's fate on re-register is not asserted
            self.regs[ep] = Reg(peer, tuple(resp.opt.location_path), lt, time.monotonic())

        @precondition(lambda self: bool(self.live()))
        @rule(data=st.data())
        def update(self, data: st.DataObject) -> None:
            ep = data.draw(st.sampled_from(sorted(self.live())))
            reg = self.regs[ep]
            resp = run(reg.peer.update(location=reg.location))
            self.note(f"Update {ep} -> {code_str(resp.code)}")
            check(resp.code == Code.CHANGED, requirement=HLF_REG, expected=f"2.04 Changed for Update of {ep}",
                  actual=code_str(resp.code), exchange=self.log)
            reg.refreshed = time.monotonic()

        @precondition(lambda self: bool(self.live()))
        @rule(data=st.data())
        def deregister(self, data: st.DataObject) -> None:
            ep = data.draw(st.sampled_from(sorted(self.live())))
            reg = self.regs.pop(ep)
            resp = run(reg.peer.deregister(location=reg.location))
            self.note(f"De-register {ep} -> {code_str(resp.code)}")
            check(resp.code == Code.DELETED, requirement=HLF_REG, expected=f"2.02 Deleted for De-register of {ep}",
                  actual=code_str(resp.code), exchange=self.log)
            self.dead.append((ep, reg.location))
            run(reg.peer.close())

        @precondition(lambda self: bool(self.dead))
        @rule(data=st.data())
        def update_removed(self, data: st.DataObject) -> None:
            ep, loc = data.draw(st.sampled_from(self.dead))
            if ep in self.regs and self.regs[ep].location == loc:
                return  # the server reused the location for the new registration: nothing to check
            peer = run(side.peer(f"sm-{self.tag}-probe"))
            resp = run(peer.update(location=loc))
            self.note(f"Update of removed /{'/'.join(loc)} -> {code_str(resp.code)}")
            check(resp.code == Code.NOT_FOUND, requirement=HLF_REG,
                  expected=f"4.04 Not Found for the removed location of {ep}", actual=code_str(resp.code),
                  exchange=self.log)
            run(peer.close())

        @rule()
        def update_never_existed(self) -> None:
            peer = run(side.peer(f"sm-{self.tag}-probe"))
            loc = ("rd", "never" + secrets.token_hex(5))
            resp = run(peer.update(location=loc))
            self.note(f"Update of never-existing /{'/'.join(loc)} -> {code_str(resp.code)}")
            check(resp.code == Code.NOT_FOUND, requirement=HLF_REG, expected="4.04 Not Found",
                  actual=code_str(resp.code), exchange=self.log)
            run(peer.close())

        @precondition(lambda self: not self.expired_once and type(self).expiries_left > 0
                      and any(r.lifetime == SHORT for r in self.regs.values()))
        @rule()
        def expire(self) -> None:
            """Stop updating the short registrations and wait until the server drops them."""
            self.expired_once = True
            type(self).expiries_left -= 1
            shorts = [ep for ep, r in self.regs.items() if r.lifetime == SHORT]
            limit = max(self.regs[ep].deadline for ep in shorts) + GRACE
            for ep in shorts:
                remaining = max(0.0, limit - time.monotonic())
                rec = run(side.wait_registered(ep, present=False, timeout=remaining), remaining + 10)
                self.note(f"wait for {ep} (lt={SHORT}) to expire -> {'gone' if rec is None else 'still there'}")
                check(rec is None, requirement=HLF_REG,
                      expected=f"{ep} removed within {SHORT} s + {GRACE:g} s without Update",
                      actual=f"still registered: {rec}", exchange=self.log)
                reg = self.regs.pop(ep)
                self.dead.append((ep, reg.location))

        # ---- model vs server ----------------------------------------------------------------
        def live(self) -> set[str]:
            """Registrations certainly alive (short ones close to their deadline are uncertain)."""
            now = time.monotonic()
            return {ep for ep, r in self.regs.items() if r.lifetime != SHORT or now < r.deadline - 0.8}

        @invariant()
        def server_matches_model(self) -> None:
            now = time.monotonic()
            listed = {e["endpoint"] for e in run(side.registrations()) if e["endpoint"].startswith(f"sm-{self.tag}-")}
            must = self.live()
            uncertain = {ep for ep, r in self.regs.items() if ep not in must and now < r.deadline + GRACE}
            must_not = set(self.names) - must - uncertain
            check(must <= listed and not (listed & must_not), requirement=HLF_REG,
                  expected=f"the server lists {sorted(must)} (maybe also {sorted(uncertain)}), nothing else",
                  actual=f"the server lists {sorted(listed)}", exchange=self.log)

        def teardown(self) -> None:
            for ep, reg in list(self.regs.items()):
                try:
                    run(reg.peer.deregister(location=reg.location))
                except BaseException:  # noqa: BLE001 - cleanup only
                    pass

    return Lifecycle


@pytest.mark.requirement(HLF_REG)
@pytest.mark.case("LWM2M-SRV-REG-012")
async def test_srv_reg_012_registration_lifecycle_model(server_side: ServerSide) -> None:
    """LWM2M-SRV-REG-012 registration lifecycle against a model (hypothesis state machine): random
    sequences of Register / Update / De-register / expiry / re-Register of three clients get the
    answers Core 1.1.1 §6.2 and Transport 1.1.1 §6.2 prescribe, and after every step the server
    lists exactly the registrations the model holds."""
    loop = asyncio.get_running_loop()
    machine = lifecycle_machine(server_side, loop)
    cfg = settings(max_examples=8, stateful_step_count=12, deadline=None, database=None,
                   phases=(Phase.explicit, Phase.generate), derandomize=True,
                   suppress_health_check=list(HealthCheck))
    await asyncio.to_thread(run_state_machine_as_test, machine, settings=cfg)
