"""The test bench for a client under test: the suite's server/bootstrap peers behind the
framework's recording proxies, the client DUT, and the waits and checks the client test cases
share (fixture ``client_lab`` in conformance/tests/conftest.py).

Topology (one per test)::

    client DUT  <-->  UdpProxy "server"     <-->  ServerPeer     (pcap: DUT-facing leg)
                <-->  UdpProxy "bootstrap"  <-->  BootstrapPeer

The DUT is given the proxies' URIs. The peers see the proxy's per-client upstream address as the
client's address; a client that changes its address appears at a new upstream address too, and
:meth:`ClientLab.rebind` simulates a NAT rebinding (same client socket, new address at the server).
"""
from __future__ import annotations

import secrets
from typing import Any, Awaitable, Callable

from conformance.peers.bootstrap_peer import BootstrapPeer
from conformance.peers.server_peer import Registration, ServerPeer
from conformance.verdicts import check, fail, inconclusive
from reference.model.config import DeviceConfig, SecurityAccount, SecurityMode, ServerAccount

#: Bounds of the waits (s). Loopback: a conforming client answers within milliseconds; these only
#: absorb process start-up and scheduling jitter on a loaded 2-core runner.
REGISTER_WITHIN = 10.0
RESPONSE_WITHIN = 5.0


class ClientLab:
    """Peers, proxies and the client DUT of one test. Create with the ``client_lab`` fixture."""

    def __init__(self, make_dut: Callable[..., Any], make_proxy: Callable[..., Awaitable[Any]],
                 evidence: Any) -> None:
        self._make_dut = make_dut
        self._make_proxy = make_proxy
        self.evidence = evidence
        self.peers: list[Any] = []
        self.proxies: dict[str, Any] = {}
        self.dut: Any = None
        self.duts: list[Any] = []
        self.endpoint = f"conf-{secrets.token_hex(4)}"

    # ---- peers ---------------------------------------------------------------------------------
    async def server(self, name: str = "server", *, psk: dict[bytes, bytes] | None = None,
                     proxied: bool = True) -> ServerPeer:
        """A started :class:`ServerPeer`; ``peer.dut_uri`` is what the DUT must be given."""
        peer = ServerPeer(name=name)
        await peer.start(psk=psk)
        self.peers.append(peer)
        await self._front(peer, name, proxied, dtls=psk is not None)
        return peer

    async def bootstrap(self, name: str = "bootstrap", *, psk: dict[bytes, bytes] | None = None,
                        proxied: bool = True) -> BootstrapPeer:
        peer = BootstrapPeer(name=name)
        await peer.start(psk=psk)
        self.peers.append(peer)
        await self._front(peer, name, proxied, dtls=psk is not None)
        return peer

    async def _front(self, peer: Any, name: str, proxied: bool, dtls: bool) -> None:
        if proxied:
            proxy = await self._make_proxy(peer.address, name=name, dut_side="downstream",
                                           protocol="dtls" if dtls else "coap")
            self.proxies[name] = proxy
            peer.proxy = proxy
            peer.dut_uri = proxy.uri
        else:
            peer.proxy = None
            peer.dut_uri = peer.uri

    async def close(self) -> None:
        """Stop the client DUT(s) (bounded by their profile's stop timeout), then the peers."""
        for d in self.duts:
            try:
                await d.stop()
            except Exception:  # noqa: BLE001 - make_dut's teardown reports DUT problems
                pass
        for p in self.peers:
            await p.close()

    # ---- the client DUT --------------------------------------------------------------------------
    def client(self, label: str | None = None) -> Any:
        """The (unstarted) client DUT of this test (one per lab unless ``label`` differs)."""
        if self.dut is None or label is not None:
            d = self._make_dut("client", label=label) if label else self._make_dut("client")
            self.duts.append(d)
            if self.dut is None:
                self.dut = d
            return d
        return self.dut

    async def start_factory(self, server: ServerPeer, *, lifetime: int = 30, binding: str = "U",
                            psk: tuple[bytes, bytes] | None = None, **values: Any) -> Any:
        """Start the client DUT with a factory-provisioned account for ``server`` (Core 1.1.1
        §6.1.2 Factory Bootstrap)."""
        dut = self.client()
        vals: dict[str, Any] = dict(endpoint=self.endpoint, server_uri=server.dut_uri, lifetime=lifetime,
                                    binding=binding)
        if psk is not None:
            vals.update(psk_identity=psk[0].decode(), psk_key_hex=psk[1].hex())
        vals.update(values)
        with_step = self.evidence.step if self.evidence is not None else None
        if with_step:
            with with_step(f"start client DUT (factory: {server.dut_uri}, lt={lifetime}, b={binding})"):
                await dut.start("factory", **vals)
        else:
            await dut.start("factory", **vals)
        return dut

    async def start_bootstrap(self, bs: BootstrapPeer, *, psk: tuple[bytes, bytes] | None = None,
                              **values: Any) -> Any:
        """Start the client DUT holding only a Bootstrap-Server account (Core 1.1.1 §6.1.4)."""
        dut = self.client()
        vals: dict[str, Any] = dict(endpoint=self.endpoint, bootstrap_uri=bs.dut_uri)
        if psk is not None:
            vals.update(psk_identity=psk[0].decode(), psk_key_hex=psk[1].hex())
        vals.update(values)
        with self.evidence.step(f"start client DUT (bootstrap: {bs.dut_uri})"):
            await dut.start("bootstrap", **vals)
        return dut

    async def restart_client(self, **values: Any) -> Any:
        """Restart the client DUT (persisted state kept) with changed placeholder ``values``.

        The readiness values of the previous run (e.g. ``local_port`` from the READY line) are
        dropped first: they would otherwise override the new values when the start command is
        rendered (Dut._render_command merges ``ready`` last)."""
        dut = self.client()
        dut.ready = {}
        return await dut.restart(**values)

    async def registered(self, server: ServerPeer, *, timeout: float = REGISTER_WITHIN, after: int = 0,
                         requirement: str | None = None) -> Registration:
        """Wait for the client's Register (answered 2.01) at ``server``; fail if none comes."""
        dut = self.dut
        coro = server.wait_registered(timeout, after=after)
        reg = await (dut.guard(coro, timeout + 1, "Register") if dut is not None and dut.running else coro)
        if reg is None:
            fail(f"the client did not register with {server.name}", requirement=requirement,
                 expected=f"Register (POST /rd?ep=...) within {timeout:g} s",
                 actual="no Register answered 2.01" if not server.requests_of("register") else
                 "; ".join(r.summary() for r in server.requests_of("register")),
                 exchange=server.exchange())
        return reg

    async def factory_registered(self, *, lifetime: int = 30, binding: str = "U",
                                 psk: tuple[bytes, bytes] | None = None, name: str = "server",
                                 **values: Any) -> tuple[ServerPeer, Registration]:
        """The common precondition: a server peer and the client registered with it."""
        srv = await self.server(name, psk={psk[0]: psk[1]} if psk else None)
        await self.start_factory(srv, lifetime=lifetime, binding=binding, psk=psk, **values)
        reg = await self.registered(srv, requirement="LightweightM2M-HLF-00X1.6")
        return srv, reg

    # ---- bootstrap helpers --------------------------------------------------------------------------
    def server_config(self, *servers: tuple[ServerPeer, int], lifetime: int = 30,
                      bootstrap: BootstrapPeer | None = None, **server_kw: Any) -> DeviceConfig:
        """A configuration with one LwM2M Server account per ``(peer, short_server_id)``
        (Security instance i+1, Server instance i), NoSec, plus the Bootstrap-Server account when
        ``bootstrap`` is given (Security instance 0)."""
        cfg = DeviceConfig(self.endpoint)
        if bootstrap is not None:
            cfg.security.append(SecurityAccount(0, bootstrap.dut_uri, bootstrap=True, mode=SecurityMode.NOSEC))
        for i, (peer, ssid) in enumerate(servers):
            cfg.security.append(SecurityAccount(i + 1, peer.dut_uri, mode=SecurityMode.NOSEC, short_server_id=ssid))
            cfg.servers.append(ServerAccount(i, ssid, lifetime=lifetime, **server_kw))
        return cfg

    async def bootstrap_request(self, bs: BootstrapPeer, *, timeout: float = REGISTER_WITHIN, after: int = 0,
                                requirement: str | None = None) -> Any:
        dut = self.dut
        coro = bs.wait_bootstrap_request(timeout, after=after)
        req = await (dut.guard(coro, timeout + 1, "Bootstrap-Request") if dut is not None and dut.running else coro)
        if req is None:
            fail("the client did not send a Bootstrap-Request", requirement=requirement,
                 expected=f"POST /bs?ep={self.endpoint} within {timeout:g} s", actual="nothing",
                 exchange=bs.exchange())
        return req

    async def existing_instances(self, bs: BootstrapPeer, oid: int) -> set[int] | None:
        """Instance IDs of object ``oid`` the client reports in a Bootstrap-Discover (Core 1.1.1
        §6.1.7.3), or None when the client does not answer it with 2.05."""
        from reference.formats import FormatError, linkformat

        st = await bs.discover(f"/{oid}")
        if not st.ok or st.response is None:
            return None
        try:
            links = linkformat.parse(bytes(st.response.payload), strict=False)
        except FormatError:
            return None
        out = set()
        for lk in links:
            parts = [p for p in lk.target.split("/") if p]
            if len(parts) == 2 and parts[0] == str(oid) and parts[1].isdigit():
                out.add(int(parts[1]))
        return out

    async def provision(self, bs: BootstrapPeer, cfg: DeviceConfig, *, delete: tuple[str, ...] = ("/",),
                        extra: tuple[tuple[str, Any], ...] = (), finish: bool = True,
                        requirement: str | None = "LightweightM2M-HLF-00X1.5") -> list[Any]:
        """Run a bootstrap sequence: Delete ``delete``, then (learning the client's remaining
        Security instances by Bootstrap-Discover so that the Bootstrap-Server account is never
        overwritten) Write ``cfg`` renumbered to free instance IDs, ``extra``, and Finish. Every step
        must succeed (fail otherwise, with the steps as evidence)."""
        steps = []
        for p in delete:
            st = await bs.delete(p)
            steps.append(st)
            check(st.ok, requirement=requirement, expected=f"Bootstrap-Delete {p} -> 2.02",
                  actual=str(st), exchange=bs.exchange())
        taken = await self.existing_instances(bs, 0) or set()
        if taken:
            free = (i for i in range(0, 65535) if i not in taken)
            for acc in cfg.security:
                if not acc.bootstrap:
                    acc.instance_id = next(free)
            cfg.security = [a for a in cfg.security if not a.bootstrap]  # the client keeps its own
        for st in await bs.write_config(cfg):
            steps.append(st)
            check(st.ok, requirement=requirement, expected=f"Bootstrap-Write {st.path} -> 2.04",
                  actual=str(st), exchange=bs.exchange())
        for path, values in extra:
            st = await bs.write_values(path, values)
            steps.append(st)
            check(st.ok, requirement=requirement, expected=f"Bootstrap-Write {path} -> 2.04",
                  actual=str(st), exchange=bs.exchange())
        if finish:
            st = await bs.finish()
            steps.append(st)
            check(st.code == "2.04", requirement=requirement, expected="Bootstrap-Finish -> 2.04 Changed",
                  actual=str(st), exchange=bs.exchange())
        return steps

    # ---- address changes -----------------------------------------------------------------------
    def rebind(self, name: str = "server") -> None:
        """NAT rebinding: the next datagram of the client leaves the proxy from a new upstream port
        (the old one is closed). The client's own socket is unchanged."""
        proxy = self.proxies.get(name)
        ups = getattr(proxy, "_ups", None)
        if not isinstance(ups, dict):
            inconclusive("the recording proxy offers no way to change the client's apparent address")
        for addr, up in list(ups.items()):
            if up.transport is not None:
                up.transport.close()
            del ups[addr]
        self.evidence.note(f"proxy {name}: upstream sockets closed (NAT rebinding)")


def require(resp: Any, code: str, *, requirement: str | None = None, what: str = "", exchange: Any = None) -> None:
    """Check a CoAP response code (``"2.05"``...)."""
    from conformance.peers.server_peer import code_str

    got = code_str(resp.code) if resp is not None else "no response"
    check(got == code, requirement=requirement, expected=f"{code} ({what})" if what else code,
          actual=f"{got}" + (f" payload={bytes(resp.payload)[:80]!r}" if resp is not None and resp.payload else ""),
          exchange=exchange)


__all__ = ["ClientLab", "REGISTER_WITHIN", "RESPONSE_WITHIN", "require"]
