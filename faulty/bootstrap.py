"""Fault-injected variants of the reference LwM2M Bootstrap-Server, to prove that the
bootstrap-server conformance checks can fail.

Run exactly like ``lwm2m-bootstrap-server`` plus ``--fault NAME``::

    python -m faulty.bootstrap --fault skip-finish --coap-port 0 --http-port 0 --state-dir D

Same READY line, same provisioning API; one behaviour of :class:`BootstrapServer` differs.

========================  =====================================================================
fault                     behaviour (what the spec says instead)
========================  =====================================================================
skip-finish               never sends Bootstrap-Finish (Core 1.1.1 §6.1.7.2: POST /bs ends it)
wrong-server-uri          writes a Server URI other than the configured one (/0/x/0)
wrong-lifetime            writes a lifetime other than the configured one (/1/x/1)
accepts-unknown           answers 2.04 to an unknown endpoint and provisions a made-up
                          configuration (Core 1.1.1 §6.1.7.1: 4.00 "Unknown Endpoint Client Name")
missing-ep-accepted       answers 2.04 to a Bootstrap-Request without ``ep``
no-server-instance        writes the Security instance but not the Server instance (/1/x)
finish-first              sends Bootstrap-Finish before the Bootstrap-Writes
request-404               answers the Bootstrap-Request 4.04 (Transport 1.1.1: POST /bs -> 2.04)
========================  =====================================================================
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from aiocoap import Code, Message

from reference.bootstrap.server import BootstrapResult, BootstrapServer
from reference.model.config import DeviceConfig, SecurityAccount, SecurityMode, ServerAccount
from reference.model.path import Path
from reference.model.types import Values


class _SkipFinish(BootstrapServer):
    async def bootstrap_finish(self, target: Any, result: BootstrapResult) -> None:
        return None


class _WrongServerUri(BootstrapServer):
    def instances_to_write(self, cfg: DeviceConfig) -> list[tuple[Path, Values]]:
        out = super().instances_to_write(cfg)
        for base, values in out:
            if base.object_id == 0:
                uri = base.child(0)
                if uri in values and isinstance(values[uri], str):
                    values[uri] = values[uri].rsplit(":", 1)[0] + ":1"  # same host, port 1
        return out


class _WrongLifetime(BootstrapServer):
    def instances_to_write(self, cfg: DeviceConfig) -> list[tuple[Path, Values]]:
        out = super().instances_to_write(cfg)
        for base, values in out:
            if base.object_id == 1 and base.child(1) in values:
                values[base.child(1)] = int(values[base.child(1)]) + 1000
        return out


class _AcceptsUnknown(BootstrapServer):
    def config_for(self, endpoint: str) -> DeviceConfig | None:
        cfg = super().config_for(endpoint)
        if cfg is not None:
            return cfg
        made_up = DeviceConfig(endpoint=endpoint)
        made_up.security.append(SecurityAccount(instance_id=1, uri="coap://127.0.0.1:5683",
                                                mode=SecurityMode.NOSEC, short_server_id=1))
        made_up.servers.append(ServerAccount(instance_id=0, short_server_id=1))
        return made_up


class _MissingEpAccepted(BootstrapServer):
    def parse_query(self, request: Message) -> tuple[str | None, int | None, str | None]:
        ep, pct, err = super().parse_query(request)
        if err is not None and "missing ep" in err:
            return "anonymous", None, None
        return ep, pct, err

    def config_for(self, endpoint: str) -> DeviceConfig | None:
        return _AcceptsUnknown.config_for(self, endpoint)  # type: ignore[arg-type]


class _NoServerInstance(BootstrapServer):
    def instances_to_write(self, cfg: DeviceConfig) -> list[tuple[Path, Values]]:
        return [(b, v) for b, v in super().instances_to_write(cfg) if b.object_id != 1]


class _FinishFirst(BootstrapServer):
    async def run_flow(self, cfg: DeviceConfig, target: Any, result: BootstrapResult) -> BootstrapResult:
        try:
            await self.bootstrap_finish(target, result)
        except Exception:  # noqa: BLE001 - the rest of the (wrong) sequence still runs
            pass
        return await super().run_flow(cfg, target, result)


class _Request404(BootstrapServer):
    async def handle_bootstrap_request(self, request: Message) -> Message:
        return Message(code=Code.NOT_FOUND)


FAULTS: dict[str, tuple[type[BootstrapServer], str]] = {
    "skip-finish": (_SkipFinish, "never sends Bootstrap-Finish"),
    "wrong-server-uri": (_WrongServerUri, "writes a wrong LwM2M Server URI"),
    "wrong-lifetime": (_WrongLifetime, "writes a wrong lifetime"),
    "accepts-unknown": (_AcceptsUnknown, "bootstraps unknown endpoints"),
    "missing-ep-accepted": (_MissingEpAccepted, "accepts a Bootstrap-Request without ep"),
    "no-server-instance": (_NoServerInstance, "does not write the Server object instance"),
    "finish-first": (_FinishFirst, "sends Bootstrap-Finish before writing"),
    "request-404": (_Request404, "answers every Bootstrap-Request 4.04"),
}


def server_class(fault: str) -> type[BootstrapServer]:
    return FAULTS[fault][0]


def main(argv: list[str] | None = None) -> int:
    from reference.bootstrap import cli
    from reference.bootstrap.service import BootstrapService

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--fault", choices=sorted(FAULTS))
    pre.add_argument("--list", action="store_true")
    known, rest = pre.parse_known_args(argv)
    if known.list:
        for name, (_, desc) in FAULTS.items():
            print(f"{name:22} {desc}")
        return 0
    if not known.fault:
        print("python -m faulty.bootstrap: --fault NAME is required (--list shows them)", file=sys.stderr)
        return 2
    if rest and rest[0] not in ("serve",) and not rest[0].startswith("-"):
        print("python -m faulty.bootstrap: only the serving mode is fault-injected", file=sys.stderr)
        return 2
    cls = server_class(known.fault)
    import reference.bootstrap.service as service_module

    original = service_module.BootstrapService

    def faulty_service(*args: Any, **kwargs: Any) -> BootstrapService:
        kwargs.setdefault("server_class", cls)
        return original(*args, **kwargs)

    # the CLI imports BootstrapService from its module at serve time: hand it the faulty class
    service_module.BootstrapService = faulty_service  # type: ignore[misc,assignment]
    print(f"faulty bootstrap server: fault {known.fault!r} active: {FAULTS[known.fault][1]}",
          file=sys.stderr, flush=True)
    try:
        return cli.main(rest)
    finally:
        service_module.BootstrapService = original  # type: ignore[misc]

if __name__ == "__main__":
    sys.exit(main())
