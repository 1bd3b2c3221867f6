"""Information Reporting Interface (Core 1.1.1 §5.5 / §6.4, RFC 7641) of a client DUT: the smart
meter's remotely configurable reporting cycle (seed 001, LightweightM2M-HLF-SG2).

Notification times are measured at the suite's server peer (behind a loopback proxy) and compared
with the attributes written before (Core 1.1.1 §5.1.2 Table 5.1.2-1): two consecutive notifications
(the Observe response counting as the first) must never be closer than ``pmin`` (minus
:data:`EARLY_TOLERANCE` for clock granularity), and never further apart than ``pmax`` plus
:data:`LATE_TOLERANCE` (scheduling on a loaded runner).
"""
from __future__ import annotations

import asyncio

import pytest

from conformance.evidence import step
from conformance.peers.client_lab import RESPONSE_WITHIN, ClientLab, require
from conformance.peers.server_peer import PeerObservation, ServerPeer
from conformance.verdicts import check, fail, unsupported
from reference.formats import FormatError, linkformat
from reference.model.types import ContentFormat

pytestmark = [pytest.mark.role("client")]

EARLY_TOLERANCE = 0.25
LATE_TOLERANCE = 1.0
TEXT = int(ContentFormat.TEXT)


async def _observable(srv: ServerPeer) -> str:
    """A readable numeric single-instance resource to observe: Battery Level /3/0/9 when the client
    has it (a local value the control channel can change), else Lifetime /1/0/1."""
    resp = await srv.discover("/3/0", timeout=RESPONSE_WITHIN)
    try:
        targets = [lk.target for lk in linkformat.parse(bytes(resp.payload), strict=False)]
    except FormatError:
        targets = []
    return "/3/0/9" if "/3/0/9" in targets else "/1/0/1"


async def _observe(srv: ServerPeer, path: str) -> PeerObservation:
    obs = srv.observe(path, accept=TEXT)
    first = await obs.response(RESPONSE_WITHIN)
    require(first, "2.05", requirement="LightweightM2M-HLF-SG2", what=f"Observe {path}", exchange=srv.exchange())
    check(first.opt.observe is not None, requirement="LightweightM2M-HLF-SG2",
          expected="an Observe option in the response (observation established, RFC 7641 §3.2)",
          actual="no Observe option", exchange=srv.exchange())
    return obs


def _check_cycle(obs: PeerObservation, pmin: float, pmax: float, srv: ServerPeer, *, since: float | None = None) -> list[float]:
    """Check every gap between consecutive notifications (the Observe response first) after
    ``since`` against [pmin, pmax]; return the gaps."""
    times = [obs.first_at or obs.started] + [n.t for n in obs.notifications]
    if since is not None:
        times = [t for t in times if t >= since]
    gaps = [b - a for a, b in zip(times, times[1:])]
    shown = ", ".join(f"{g:.2f}" for g in gaps)
    early = [g for g in gaps if g < pmin - EARLY_TOLERANCE]
    check(not early, requirement="LightweightM2M-HLF-SG2",
          expected=f"no two notifications closer than pmin={pmin:g} s (tolerance {EARLY_TOLERANCE} s)",
          actual=f"gaps [s]: {shown}", exchange=srv.exchange())
    late = [g for g in gaps if g > pmax + LATE_TOLERANCE]
    check(not late, requirement="LightweightM2M-HLF-SG2",
          expected=f"a notification at least every pmax={pmax:g} s (+{LATE_TOLERANCE} s)",
          actual=f"gaps [s]: {shown}", exchange=srv.exchange())
    return gaps


def _check_sequence(obs: PeerObservation, srv: ServerPeer) -> None:
    seqs = [n.observe for n in obs.notifications]
    check(all(s is not None for s in seqs), expected="every notification carries an Observe option (RFC 7641 §4.2)",
          actual=str(seqs), exchange=srv.exchange())
    check(all(n.code == "2.05" for n in obs.notifications), expected="notifications are 2.05 Content",
          actual=str([n.code for n in obs.notifications]))
    check(all(n.content_format == TEXT for n in obs.notifications),
          expected="notifications keep the requested Content-Format 0 (Core 1.1.1 §6.4.1)",
          actual=str([n.content_format for n in obs.notifications]))


@pytest.mark.requirement("LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-301")
async def test_observation_notification_int_301(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-301 Observation and Notification of parameter values.

    Core 1.1.1 §6.4.1 (Observe) / §5.1.2 (pmin, pmax) / RFC 7641 §4.2: after Write-Attributes
    pmin=1&pmax=2 on a resource, an Observe establishes the observation (2.05 + Observe) and the
    client notifies at least every pmax seconds even without a value change, never more often than
    every pmin seconds; each notification carries an Observe value and the requested format.
    """
    srv, _ = await client_lab.factory_registered(lifetime=60)
    path = await _observable(srv)
    require(await srv.write_attributes(path, {"pmin": 1, "pmax": 2}, timeout=RESPONSE_WITHIN), "2.04",
            what="Write-Attributes pmin=1&pmax=2", exchange=srv.exchange())
    obs = await _observe(srv, path)
    with step("notifications over 4.6 s"):
        await asyncio.sleep(4.6)
        check(len(obs.notifications) >= 2, requirement="LightweightM2M-HLF-SG2",
              expected="at least 2 notifications in 4.6 s with pmax=2", actual=f"{len(obs.notifications)}",
              exchange=srv.exchange())
        _check_cycle(obs, 1, 2, srv)
        _check_sequence(obs, srv)
    await obs.cancel()


@pytest.mark.requirement("LightweightM2M-HLF-SG2")
@pytest.mark.case("LWM2M-CREP-001")
async def test_pmin_under_rapid_changes_crep_001(client_lab: ClientLab) -> None:
    """LWM2M-CREP-001 pmin holds back notifications of a rapidly changing value.

    Core 1.1.1 §5.1.2 (pmin: "the minimum time in seconds the LwM2M Client MUST wait between two
    notifications"): with pmin=2&pmax=10 and the observed value changed locally every 0.3 s, the
    notifications are spaced >= 2 s, and each carries a value the resource actually held.
    """
    lab = client_lab
    srv, _ = await lab.factory_registered(lifetime=60)
    path = await _observable(srv)
    if path != "/3/0/9":
        unsupported("no Battery Level /3/0/9 to change locally")
    require(await srv.write_attributes(path, {"pmin": 2, "pmax": 10}, timeout=RESPONSE_WITHIN), "2.04",
            what="Write-Attributes pmin=2&pmax=10", exchange=srv.exchange())
    obs = await _observe(srv, path)
    values = []
    with step("change the value every 0.3 s for 5 s"):
        dut = lab.client()
        loop = asyncio.get_running_loop()
        end = loop.time() + 5.0
        v = 10
        while loop.time() < end:
            v = 10 + (v - 9) % 80
            res = await dut.adapter.set_value(path, str(v))
            if not res.ok:
                unsupported(f"the client refused the local value change: {res.detail}")
            values.append(str(v).encode())
            await asyncio.sleep(0.3)
    with step("check notification spacing and content"):
        check(len(obs.notifications) >= 2, expected="notifications of the changing value",
              actual=f"{len(obs.notifications)} notifications", exchange=srv.exchange())
        _check_cycle(obs, 2, 10, srv)
        bad = [n.payload for n in obs.notifications if n.payload not in values]
        check(not bad, expected="each notification carries a value the resource held", actual=repr(bad))
    await obs.cancel()


@pytest.mark.requirement("LightweightM2M-HLF-SG2")
@pytest.mark.case("LWM2M-CREP-002")
async def test_reporting_cycle_reconfigured_crep_002(client_lab: ClientLab) -> None:
    """LWM2M-CREP-002 Changing the attributes changes the reporting cycle.

    Seed 001 ("remotely configurable to set/change its reporting cycle"); Core 1.1.1 §6.3.4
    (Write-Attributes) and §5.1.2: an observation notifying with pmax=1 is reconfigured to
    pmin=2&pmax=2 while it runs (Table 5.1.2-1: integer seconds); afterwards gaps are 2 s (before:
    <= 1 s).
    """
    srv, _ = await client_lab.factory_registered(lifetime=60)
    path = await _observable(srv)
    require(await srv.write_attributes(path, {"pmin": 0, "pmax": 1}, timeout=RESPONSE_WITHIN), "2.04",
            what="Write-Attributes pmax=1", exchange=srv.exchange())
    obs = await _observe(srv, path)
    with step("cycle 1: pmax=1"):
        await asyncio.sleep(2.6)
        check(len(obs.notifications) >= 2, expected=">= 2 notifications in 2.6 s with pmax=1",
              actual=str(len(obs.notifications)), exchange=srv.exchange())
        _check_cycle(obs, 0, 1, srv)
    with step("reconfigure: pmin=2&pmax=2"):
        require(await srv.write_attributes(path, {"pmin": 2, "pmax": 2}, timeout=RESPONSE_WITHIN), "2.04",
                what="Write-Attributes pmin=2&pmax=2", exchange=srv.exchange())
        t_change = srv.now()
        n_before = len(obs.notifications)
        await asyncio.sleep(5.0)
    with step("cycle 2 follows the new attributes"):
        after = [n for n in obs.notifications[n_before:]]
        check(len(after) >= 2, expected=">= 2 notifications in 5 s with pmax=2", actual=str(len(after)),
              exchange=srv.exchange())
        # the first gap after the change may be partly under the old attributes: start from the
        # first notification after the change
        _check_cycle(obs, 2, 2, srv, since=after[0].t if after else t_change)
        fast = [b.t - a.t for a, b in zip(after, after[1:]) if b.t - a.t < 2 - EARLY_TOLERANCE]
        check(not fast, requirement="LightweightM2M-HLF-SG2", expected="the old 1 s cycle is gone",
              actual=f"gaps {fast}")
    await obs.cancel()


@pytest.mark.requirement("LightweightM2M-HLF-SG2")
@pytest.mark.case("LWM2M-CREP-003")
async def test_change_conditions_gt_lt_st_crep_003(client_lab: ClientLab) -> None:
    """LWM2M-CREP-003 Notification on gt / lt threshold crossing and st step.

    Core 1.1.1 §5.1.2: with gt=50&lt=20 a notification is sent when the value crosses a threshold
    (30 -> 60 above gt, 60 -> 10 below lt) and not for changes that cross none (60 -> 65); with
    st=10 a notification is sent when the value moved by at least 10 since the last notification
    (40 -> 45 no, 45 -> 52 yes). pmax is large so only the conditions can cause notifications.
    """
    lab = client_lab
    srv, _ = await lab.factory_registered(lifetime=60)
    path = await _observable(srv)
    if path != "/3/0/9":
        unsupported("no Battery Level /3/0/9 to change locally")
    dut = lab.client()

    async def set_value(v: int) -> None:
        res = await dut.adapter.set_value(path, str(v))
        if not res.ok:
            unsupported(f"the client refused the local value change: {res.detail}")

    async def expect(v: int, notify: bool, why: str) -> None:
        n = len(obs.notifications)
        await set_value(v)
        got = await obs.wait_notifications(n + 1, 1.5 if notify else 1.0)
        new = got[n:]
        if notify:
            check(new and new[0].payload == str(v).encode(), requirement="LightweightM2M-HLF-SG2",
                  expected=f"a notification with {v} ({why})",
                  actual=repr([x.payload for x in new]) if new else "no notification within 1.5 s",
                  exchange=srv.exchange())
        else:
            check(not new, requirement="LightweightM2M-HLF-SG2", expected=f"no notification for {v} ({why})",
                  actual=repr([x.payload for x in new]), exchange=srv.exchange())

    await set_value(30)
    require(await srv.write_attributes(path, {"pmin": 0, "pmax": 60, "gt": 50, "lt": 20}, timeout=RESPONSE_WITHIN),
            "2.04", what="Write-Attributes gt=50&lt=20", exchange=srv.exchange())
    obs = await _observe(srv, path)
    with step("gt / lt crossings"):
        await expect(40, False, "30 -> 40 crosses no threshold")
        await expect(60, True, "40 -> 60 crosses gt=50")
        await expect(65, False, "60 -> 65 stays above gt")
        await expect(10, True, "65 -> 10 crosses gt and lt=20")
    with step("step st=10 (gt/lt removed)"):
        require(await srv.write_attributes(path, ["gt", "lt", "st=10"], timeout=RESPONSE_WITHIN), "2.04",
                what="Write-Attributes st=10 (gt, lt unset)", exchange=srv.exchange())
        await expect(40, True, "10 -> 40 moves >= st")
        await expect(45, False, "40 -> 45 moves < st")
        await expect(52, True, "40 -> 52 moves >= st since the last notification")
    await obs.cancel()


async def _silence_after(obs: PeerObservation, srv: ServerPeer, window: float, what: str) -> None:
    mark = srv.wire_mark()
    await asyncio.sleep(window)
    late = [r for r in srv.wire[mark:] if r.direction == "in" and r.message() is not None
            and r.message().opt.observe is not None and bytes(r.message().token) == bytes(obs.obs.token)]
    check(not late, requirement="LightweightM2M-HLF-SG2",
          expected=f"no notification after {what} ({window:g} s watched)",
          actual=f"{len(late)} notification(s): " + "; ".join(r.summary() for r in late[:3]),
          exchange=srv.exchange())


@pytest.mark.requirement("LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-302")
async def test_cancel_observation_reset_int_302(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-302 Cancel Observations using Reset Operation.

    Core 1.1.1 §6.4.2 (Cancel Observation) / RFC 7641 §3.6 and §4.5: the server answers a
    notification with a Reset message; the client removes the observation and sends no further
    notifications (watched for 2.5 x pmax).
    """
    srv, _ = await client_lab.factory_registered(lifetime=60)
    path = await _observable(srv)
    require(await srv.write_attributes(path, {"pmin": 0, "pmax": 1}, timeout=RESPONSE_WITHIN), "2.04",
            what="Write-Attributes pmax=1", exchange=srv.exchange())
    obs = await _observe(srv, path)
    got = await obs.wait_notifications(1, 3.0)
    check(got, expected="a notification within 3 s (pmax=1)", actual="none", exchange=srv.exchange())
    with step("reject the next notification with RST"):
        obs.forget()
        mark = srv.wire_mark()
        rst = await srv.wait_wire(lambda r: r.direction == "out" and r.mtype == 3, timeout=3.0, since=mark)
        if rst is None:
            fail("no notification arrived to reject", expected="a notification within 3 s", actual="none",
                 exchange=srv.exchange())
    with step("no notification afterwards"):
        await _silence_after(obs, srv, 2.5, "the Reset")


@pytest.mark.requirement("LightweightM2M-HLF-SG2")
@pytest.mark.case("LightweightM2M-1.1-int-303")
async def test_cancel_observation_observe1_int_303(client_lab: ClientLab) -> None:
    """LightweightM2M-1.1-int-303 Cancel observations using Observe with Cancel parameter.

    Core 1.1.1 §6.4.2 / RFC 7641 §3.6: a GET with Observe=1 and the observation's token cancels it;
    the client answers like a Read (2.05 Content) and sends no further notifications.
    """
    srv, _ = await client_lab.factory_registered(lifetime=60)
    path = await _observable(srv)
    require(await srv.write_attributes(path, {"pmin": 0, "pmax": 1}, timeout=RESPONSE_WITHIN), "2.04",
            what="Write-Attributes pmax=1", exchange=srv.exchange())
    obs = await _observe(srv, path)
    got = await obs.wait_notifications(1, 3.0)
    check(got, expected="a notification within 3 s (pmax=1)", actual="none", exchange=srv.exchange())
    with step("GET with Observe=1"):
        resp = await obs.cancel(timeout=RESPONSE_WITHIN)
        require(resp, "2.05", what="Cancel Observation response", exchange=srv.exchange())
    with step("no notification afterwards"):
        await _silence_after(obs, srv, 2.5, "the cancellation")
