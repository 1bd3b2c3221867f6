"""Fixtures for the SERVER and BOOTSTRAP-SERVER conformance cases (the suite plays the client).

Registered from ``conformance/tests/conftest.py`` with ``pytest_plugins``. Test modules mark
themselves ``@pytest.mark.role("server")`` / ``("bootstrap-server")`` (or both) so the plugin
parametrizes them over the selected ``--dut`` profiles, then ask for:

``server_side``     a started server DUT behind a recording proxy, a :class:`ServerSide` handle
                    that makes :class:`~conformance.peers.client_peer.ClientPeer` s towards it
                    and drives its DM actions through the profile's adapter;
``bootstrap_side``  the same for a bootstrap-server DUT (:class:`BootstrapSide`); its
                    ``configure`` takes the suite's neutral device configuration, the
                    ``lwm2m-device-config/1`` document (``DeviceConfig.to_dict()``).

Every peer, proxy and DUT is closed at teardown; every datagram between the suite and the DUT is
in the test's evidence (pcap) and, for a failing check, in the verdict's Exchange.
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable

import pytest

from conformance.adapters import ActionResult
from conformance.evidence import Recorder, UdpProxy
from conformance.harness.dut import Dut
from aiocoap import Message

from conformance.peers.client_peer import ClientPeer, PeerMode, PeerReset, PeerTimeout, RawCoap, Timers, describe
from conformance.profiles import CONTENT_FORMATS, Profile
from conformance.verdicts import ConformanceError, fail

FORMAT_NAMES = {v: k for k, v in CONTENT_FORMATS.items()}


def new_endpoint(prefix: str = "cp") -> str:
    """A fresh endpoint client name (unique across parallel workers)."""
    return f"{prefix}-{secrets.token_hex(5)}"


def claimed_version(profile: Profile) -> str:
    """The LwM2M version the suite's client claims towards this DUT: the highest the DUT's ICS
    claims among those the peer speaks (1.1, 1.0); 1.1 when the ICS is silent."""
    for v in ("1.1", "1.0"):
        if v in profile.ics.lwm2m_versions:
            return v
    return "1.1"


def registration_entries(value: Any) -> list[dict[str, Any]]:
    """Normalize a ``registrations`` action value (list of names, list of objects, or an object
    holding such a list) to ``[{"endpoint": …, …}]``."""
    if isinstance(value, dict):
        for key in ("clients", "registrations", "items", "data"):
            if isinstance(value.get(key), list):
                value = value[key]
                break
        else:
            value = [value] if "endpoint" in value else []
    out: list[dict[str, Any]] = []
    for item in value or []:
        if isinstance(item, str):
            out.append({"endpoint": item})
        elif isinstance(item, dict):
            ep = item.get("endpoint", item.get("ep", item.get("name")))
            if ep is not None:
                out.append({**item, "endpoint": str(ep)})
    return out


class SuitePeer(ClientPeer):
    """A ClientPeer whose own requests turn a missing answer into verdict FAIL: a CON request the
    DUT neither acknowledges nor rejects violates RFC 7252 §4.2 ("MUST either acknowledge ... or
    reject"), and a Reset to a well-formed request means the DUT refused to process it."""

    async def request(self, msg: Message, **kw: Any) -> Message:
        what = describe(msg.encode()) if msg.mid is not None else f"{msg.code} /{'/'.join(msg.opt.uri_path)}"
        try:
            return await super().request(msg, **kw)
        except PeerTimeout as e:
            fail(f"the DUT did not answer {what}", expected="a response (RFC 7252 §4.2: a CON is acknowledged or rejected)",
                 actual=str(e))
        except PeerReset as e:
            fail(f"the DUT reset {what}", expected="a response to a well-formed request", actual=str(e))


@dataclass
class _DutSide:
    """A running DUT behind the suite's recording proxy, as a test sees it."""

    dut: Dut
    proxy: UdpProxy
    evidence: Recorder

    @property
    def profile(self) -> Profile:
        return self.dut.profile

    @property
    def adapter(self) -> Any:
        return self.dut.adapter

    @property
    def address(self) -> tuple[str, int]:
        """Where the suite's clients send (the recording proxy in front of the DUT)."""
        return self.proxy.address

    @property
    def uri(self) -> str:
        host, port = self.address
        return f"coap://{host}:{port}"

    async def raw(self, name: str = "raw") -> RawCoap:
        r = RawCoap(self.address, name=name)
        self.peers.append(r)  # type: ignore[attr-defined]
        await r.start()
        return r


@dataclass
class ServerSide(_DutSide):
    """A running server DUT as the test sees it."""

    make_proxy: Callable[..., Any]
    peers: list[Any] = field(default_factory=list)
    bridges: list[Any] = field(default_factory=list)

    @property
    def lwm2m(self) -> str:
        return claimed_version(self.profile)

    def can(self, action: str) -> bool:
        return self.adapter.can(action)

    async def peer(self, endpoint: str | None = None, *, start: bool = True, address: tuple[str, int] | None = None,
                   **kw: Any) -> ClientPeer:
        """A started :class:`ClientPeer` towards the DUT (through the proxy)."""
        kw.setdefault("lwm2m", self.lwm2m)
        p = SuitePeer(address or self.address, endpoint or new_endpoint(), **kw)
        self.peers.append(p)
        if start:
            await p.start()
        return p

    def exchange(self, last: int = 40) -> list[str]:
        """The recorded datagrams of the test (DUT-facing leg of the proxies)."""
        return self.evidence.exchange_lines(last)

    # ---- the server's user view (profile actions) -------------------------------------------
    async def registrations(self) -> list[dict[str, Any]]:
        res: ActionResult = await self.adapter.registrations()
        if not res.ok:
            raise ConformanceError(f"{self.profile.name}: listing registrations failed: {res.detail}")
        return registration_entries(res.value)

    async def find(self, endpoint: str) -> dict[str, Any] | None:
        """The server's record of ``endpoint`` (None when it does not know it)."""
        if self.can("registration"):
            res = await self.adapter.registration(endpoint)
            if not res.ok:
                return None
            entries = registration_entries(res.value)
            return next((e for e in entries if e["endpoint"] == endpoint), entries[0] if entries else {"endpoint": endpoint})
        return next((e for e in await self.registrations() if e["endpoint"] == endpoint), None)

    async def count(self, endpoint: str) -> int:
        return sum(1 for e in await self.registrations() if e["endpoint"] == endpoint)

    async def wait_registered(self, endpoint: str, present: bool = True, timeout: float = 5.0) -> dict[str, Any] | None:
        """Poll the server's view until ``endpoint`` is (``present``) / is not registered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            rec = await self.find(endpoint)
            if (rec is not None) == present or loop.time() >= deadline:
                return rec
            await asyncio.sleep(0.1)

    def check_alive(self) -> None:
        self.dut.check_alive()


@dataclass
class BootstrapSide(_DutSide):
    """A running bootstrap-server DUT as the test sees it."""

    peers: list[Any] = field(default_factory=list)

    async def peer(self, endpoint: str | None = None, *, start: bool = True, **kw: Any) -> ClientPeer:
        """A started :class:`ClientPeer` in bootstrap mode, empty except for Device /3/0."""
        kw.setdefault("lwm2m", claimed_version(self.profile))
        ep = endpoint or new_endpoint("bs")
        kw.setdefault("objects", {k: v for k, v in _device_only(ep).items()})
        p = SuitePeer(self.address, ep, mode=PeerMode.BOOTSTRAP, **kw)
        self.peers.append(p)
        if start:
            await p.start()
        return p

    async def configure(self, endpoint: str, config: dict[str, Any]) -> ActionResult:
        res = await self.adapter.configure(endpoint, config)
        if not res.ok:
            raise ConformanceError(f"{self.profile.name}: the provisioning API refused the configuration of "
                                   f"{endpoint}: {res.detail} {res.text[:300]}")
        return res

    def exchange(self, last: int = 40) -> list[str]:
        return self.evidence.exchange_lines(last)


def _device_only(endpoint: str) -> dict:
    from conformance.peers.client_peer import default_objects
    return {p: v for p, v in default_objects(endpoint).items() if p.object_id == 3}


async def _close_all(items: Iterable[Any]) -> None:
    for p in items:
        try:
            await asyncio.wait_for(p.close(), 5)
        except Exception:  # noqa: BLE001 - teardown must not hide the verdict
            pass


@pytest.fixture
async def server_side(make_dut: Callable[..., Dut], make_proxy: Callable[..., Any],
                      evidence: Recorder) -> AsyncIterator[ServerSide]:
    """A started server DUT (the test's ``server`` profile) behind a recording proxy."""
    dut = make_dut("server")
    await dut.start()
    proxy = await make_proxy(dut.address("coap"), name="server", dut_side="upstream")
    side = ServerSide(dut, proxy, evidence, make_proxy)
    try:
        yield side
    finally:
        await _close_all(side.peers)
        await _close_all(side.bridges)


@pytest.fixture
async def bootstrap_side(make_dut: Callable[..., Dut], make_proxy: Callable[..., Any],
                         evidence: Recorder) -> AsyncIterator[BootstrapSide]:
    """A started bootstrap-server DUT (the test's ``bootstrap-server`` profile) behind a proxy."""
    dut = make_dut("bootstrap-server")
    await dut.start()
    proxy = await make_proxy(dut.address("coap"), name="bootstrap", dut_side="upstream")
    side = BootstrapSide(dut, proxy, evidence)
    try:
        yield side
    finally:
        await _close_all(side.peers)


@pytest.fixture
def fast_timers() -> Timers:
    """CoAP timers for the suite's clients on loopback (RFC 7252 §4.8 allows other values)."""
    return Timers(ack_timeout=1.0, max_retransmit=2, response_timeout=8.0)
