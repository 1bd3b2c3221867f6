"""One running bootstrap server: CoAP port, optional CoAPS port, HTTP API, state directory.

Used by the CLI and by tests::

    svc = BootstrapService(state_dir="/tmp/bs", http_port=0)
    await svc.start()
    ... svc.server (BootstrapServer), svc.coap, svc.http ...
    await svc.stop()
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

from aiohttp import web

from reference.bootstrap.http_api import make_app
from reference.bootstrap.server import BootstrapPolicy, BootstrapServer
from reference.bootstrap.store import DeviceStore

log = logging.getLogger("lwm2m.bootstrap")


@dataclass
class BootstrapService:
    """Settings and, once started, the live parts. Ports 0 = any free; ``coaps_port=None`` and
    ``http_port=None`` leave that port closed. ``state_dir=None`` keeps state in memory."""

    state_dir: str | FsPath | None = None
    coap_host: str = "127.0.0.1"
    coap_port: int = 0
    coaps_port: int | None = None
    http_host: str = "127.0.0.1"
    http_port: int | None = 0
    policy: BootstrapPolicy = field(default_factory=BootstrapPolicy)
    psk_table: dict[bytes, bytes] = field(default_factory=dict)
    server_class: type[BootstrapServer] = BootstrapServer

    server: BootstrapServer | None = None
    coap: tuple[str, int] | None = None
    coaps: tuple[str, int] | None = None
    http: tuple[str, int] | None = None
    _bridge: Any = None
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        store = DeviceStore(self.state_dir)
        self.server = self.server_class(store, policy=self.policy)
        try:
            self.coap = await self.server.start(self.coap_host, self.coap_port)
            if self.coaps_port is not None:
                from reference.bootstrap.dtls import open_coaps
                self._bridge, self.coaps = await open_coaps(self.server, self.coap_host, self.coaps_port,
                                                            self.psk_table)
            if self.http_port is not None:
                info = {"coap": list(self.coap), "coaps": list(self.coaps) if self.coaps else None}
                self._runner = web.AppRunner(make_app(self.server, info), access_log=None)
                await self._runner.setup()
                site = web.TCPSite(self._runner, self.http_host, self.http_port)
                await site.start()
                sock = site._server.sockets[0]  # type: ignore[union-attr]
                self.http = (self.http_host, int(sock.getsockname()[1]))
                info["http"] = list(self.http)
        except BaseException:
            await self.stop()
            raise

    @property
    def http_url(self) -> str:
        assert self.http is not None
        host = self.http[0] if ":" not in self.http[0] else f"[{self.http[0]}]"
        return f"http://{host}:{self.http[1]}"

    @property
    def coap_uri(self) -> str:
        assert self.coap is not None
        host = self.coap[0] if ":" not in self.coap[0] else f"[{self.coap[0]}]"
        return f"coap://{host}:{self.coap[1]}"

    def ready_line(self) -> str:
        """The one line the CLI prints when every port listens."""
        def fmt(a: tuple[str, int] | None) -> str:
            if a is None:
                return "-"
            return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"
        return f"lwm2m-bootstrap-server READY coap={fmt(self.coap)} coaps={fmt(self.coaps)} http={fmt(self.http)}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._bridge is not None:
            try:
                await self._bridge.close()
            finally:
                self._bridge = None
        if self.server is not None:
            await self.server.stop()
            self.server.store.close()
            self.server = None
