"""``lwm2m-client``: run the reference LwM2M client (see docs/client-cli.md).

Machine-readable stdout (one line each, flushed):

    lwm2m-client READY endpoint=EP local=HOST:PORT
    lwm2m-client EVENT <name> key=value ...
    lwm2m-client CONFIRM source=SRC question="..."      (a user confirmation is pending)
    lwm2m-client ERROR <message>                          (a control line was rejected)

Logs go to stderr.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import shlex
import signal
import sys
from typing import Any, Sequence

from reference.client.bootstrap import (BootstrapSource, BootstrapSourceError, FactoryFileSource, HookUserAgent,
                                        PromptUserAgent, StaticSource, UserAgent, open_card_source)
from reference.client.client import ClientOptions, LwM2MClient, _fmt_host
from reference.model.config import ConfigError, DeviceConfig, SecurityAccount, SecurityMode, ServerAccount
from reference.model.types import ContentFormat

PREFIX = "lwm2m-client"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lwm2m-client",
        description="Reference LwM2M 1.1.1 client (aiocoap). Bootstrap order: --card (if given and a "
                    "card is present), then state saved in --state-dir, then the factory configuration "
                    "(--config or --server-uri/--bootstrap-uri), then client-initiated bootstrap.",
        epilog="Control lines on stdin with --stdin-control: 'set /3/0/9 55', 'confirm yes|no', "
               "'update [SSID]', 'bootstrap', 'read /3/0/9', 'quit'. See docs/client-cli.md.")
    p.add_argument("--endpoint", help="Endpoint Client Name (default: from the configuration)")
    p.add_argument("--server-uri", help="factory LwM2M Server account URI: coap://host:port or coaps://host:port")
    p.add_argument("--short-server-id", type=int, default=1, help="SSID of the --server-uri account (default 1)")
    p.add_argument("--bootstrap-uri", help="factory Bootstrap-Server account URI (coap:// or coaps://)")
    p.add_argument("--psk-identity", help="PSK identity for coaps:// accounts given on the command line")
    p.add_argument("--psk-key", help="PSK key (hex) for coaps:// accounts given on the command line")
    p.add_argument("--lifetime", type=int, default=86400, help="registration lifetime in s (default 86400)")
    p.add_argument("--binding", default="U", help="binding of the --server-uri account (default U)")
    p.add_argument("--hold-off", type=int, default=0, help="Client Hold Off Time of the --bootstrap-uri account")
    p.add_argument("--lwm2m-version", default="1.1", choices=["1.0", "1.1"], help="enabler version (default 1.1)")
    p.add_argument("--local-host", default="::", help="address to bind the CoAP socket (default ::)")
    p.add_argument("--local-port", type=int, default=0, help="CoAP port to bind, 0 = any (default 0)")
    p.add_argument("--state-dir", help="directory for persisted bootstrap information (atomic writes)")
    p.add_argument("--config", help="factory / offline configuration file (DeviceConfig JSON)")
    p.add_argument("--card", metavar="SPEC", help="smartcard bootstrap source (syntax defined by lwm2m-card)")
    p.add_argument("--object-dir", action="append", default=[], metavar="DIR",
                   help="extra folder of DDF XML object definitions (repeatable; overrides shipped ones)")
    p.add_argument("--stdin-control", action="store_true", help="read control lines on stdin")
    p.add_argument("--confirm-hook", metavar="CMD",
                   help="shell command asked to confirm (exit 0 = yes); question in $LWM2M_CONFIRM_QUESTION")
    p.add_argument("--pct", type=int, help="preferred content format sent in the Bootstrap-Request")
    p.add_argument("--request-timeout", type=float, default=10.0, help="bound on each CoAP exchange (s)")
    p.add_argument("--register-attempts", type=int, default=3, help="Register attempts per server before fallback")
    p.add_argument("--retry-delay", type=float, default=2.0, help="first registration retry back-off (s)")
    p.add_argument("--bootstrap-timeout", type=float, default=247.0,
                   help="silence of the bootstrap server after which bootstrap fails (s, default 247)")
    p.add_argument("--meter-period", type=float, default=1.0, help="power meter update period (s, 0 = frozen)")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    return p


def factory_config(args: argparse.Namespace) -> DeviceConfig | None:
    """The factory DeviceConfig from --config or the --server-uri/--bootstrap-uri flags."""
    if args.config:
        cfg = DeviceConfig.from_file(args.config)
        if args.endpoint:
            cfg.endpoint = args.endpoint
        return cfg
    if not args.server_uri and not args.bootstrap_uri:
        return None
    if not args.endpoint:
        raise ConfigError("--endpoint is required with --server-uri / --bootstrap-uri")
    ident = (args.psk_identity or "").encode()
    try:
        key = bytes.fromhex(args.psk_key or "")
    except ValueError:
        raise ConfigError("--psk-key must be hex") from None
    cfg = DeviceConfig(endpoint=args.endpoint)

    def mode(uri: str) -> SecurityMode:
        if uri.startswith("coaps://"):
            if not ident or not key:
                raise ConfigError(f"{uri}: coaps needs --psk-identity and --psk-key")
            return SecurityMode.PSK
        return SecurityMode.NOSEC

    iid = 0
    if args.bootstrap_uri:
        m = mode(args.bootstrap_uri)
        cfg.security.append(SecurityAccount(instance_id=iid, uri=args.bootstrap_uri, bootstrap=True, mode=m,
                                            psk_identity=ident if m == SecurityMode.PSK else b"",
                                            psk_key=key if m == SecurityMode.PSK else b"",
                                            client_hold_off=args.hold_off))
        iid += 1
    if args.server_uri:
        m = mode(args.server_uri)
        cfg.security.append(SecurityAccount(instance_id=iid, uri=args.server_uri, mode=m,
                                            psk_identity=ident if m == SecurityMode.PSK else b"",
                                            psk_key=key if m == SecurityMode.PSK else b"",
                                            short_server_id=args.short_server_id))
        cfg.servers.append(ServerAccount(instance_id=0, short_server_id=args.short_server_id,
                                         lifetime=args.lifetime, binding=args.binding))
    return cfg


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _kv(fields: dict[str, Any]) -> str:
    parts = []
    for k, v in fields.items():
        s = str(v)
        if not s or any(c in s for c in ' "\\='):
            s = '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
        parts.append(f"{k}={s}")
    return " ".join(parts)


class _CompositeAgent(UserAgent):
    """Hook command if configured, else the stdin prompt, else "no"."""

    def __init__(self, hook: HookUserAgent | None, prompt: PromptUserAgent | None) -> None:
        self.hook, self.prompt = hook, prompt

    async def confirm(self, question: str, *, source: str = "") -> bool:
        if self.hook is not None:
            return await self.hook.confirm(question, source=source)
        if self.prompt is not None:
            return await self.prompt.confirm(question, source=source)
        return False


async def _control_loop(client: LwM2MClient, prompt: PromptUserAgent | None, stop: asyncio.Event) -> None:
    """Read control lines from stdin until EOF or ``quit``."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while not stop.is_set():
        raw = await reader.readline()
        if not raw:
            stop.set()
            return
        try:
            words = shlex.split(raw.decode("utf-8", "replace"))
        except ValueError as e:
            _out(f"{PREFIX} ERROR {e}")
            continue
        if not words:
            continue
        cmd, rest = words[0].lower(), words[1:]
        try:
            if cmd == "set" and len(rest) == 2:
                client.set_local_value(rest[0], rest[1])
                _out(f"{PREFIX} OK set {rest[0]}")
            elif cmd == "confirm" and len(rest) == 1 and rest[0] in ("yes", "no"):
                if prompt is None or not prompt.answer(rest[0] == "yes"):
                    _out(f"{PREFIX} ERROR no confirmation pending")
                else:
                    _out(f"{PREFIX} OK confirm {rest[0]}")
            elif cmd == "update" and len(rest) <= 1:
                client.request_update(int(rest[0]) if rest else None)
                _out(f"{PREFIX} OK update")
            elif cmd == "bootstrap" and not rest:
                client.request_bootstrap("control")
                _out(f"{PREFIX} OK bootstrap")
            elif cmd == "read" and len(rest) == 1:
                from reference.model.path import Path
                vals = client.tree.values(Path.parse(rest[0]))
                _out(f"{PREFIX} VALUE " + " ".join(f"{p}={v!r}" for p, v in vals.items()))
            elif cmd == "quit" and not rest:
                stop.set()
                return
            else:
                _out(f"{PREFIX} ERROR unknown command {raw.decode(errors='replace').strip()!r}")
        except (ValueError, TypeError, KeyError) as e:
            _out(f"{PREFIX} ERROR {e}")


async def run(args: argparse.Namespace, client_cls: type[LwM2MClient] | None = None) -> int:
    try:
        cfg = factory_config(args)
    except ConfigError as e:
        print(f"lwm2m-client: {e}", file=sys.stderr)
        return 2
    factory: BootstrapSource | None = None
    if args.config:
        factory = FactoryFileSource(args.config)
    if cfg is not None:
        factory = StaticSource(cfg, "factory")
    card = None
    if args.card:
        try:
            card = open_card_source(args.card, endpoint=args.endpoint or (cfg.endpoint if cfg else ""))
        except BootstrapSourceError as e:
            print(f"lwm2m-client: {e}", file=sys.stderr)
            return 2
    stop = asyncio.Event()
    prompt = None
    if args.stdin_control:
        prompt = PromptUserAgent(on_prompt=lambda q, s: _out(f"{PREFIX} CONFIRM {_kv({'source': s, 'question': q})}"))
    agent = _CompositeAgent(HookUserAgent(args.confirm_hook) if args.confirm_hook else None, prompt)
    endpoint = args.endpoint or (cfg.endpoint if cfg is not None else None)
    opts = ClientOptions(
        endpoint=endpoint, lwm2m_version=args.lwm2m_version, local_host=args.local_host,
        local_port=args.local_port, state_dir=args.state_dir, object_dirs=list(args.object_dir),
        request_timeout=args.request_timeout, register_attempts=args.register_attempts,
        retry_delay=args.retry_delay, bootstrap_timeout=args.bootstrap_timeout,
        preferred_content_format=ContentFormat(args.pct) if args.pct is not None else None,
        meter_period=args.meter_period or None)
    # --- smartcard hook (issue #5): the card behaviour lives in reference/client/smartcard.py;
    # faulty/ variants pass their own class (python -m faulty.smartcard --fault NAME ...) ---
    if client_cls is None:
        from reference.client.smartcard import SmartcardClient
        client_cls = SmartcardClient if card is not None else LwM2MClient
    # --- end smartcard hook ---
    client = client_cls(opts, factory=factory, card=card, user_agent=agent,
                         on_event=lambda name, f: _out(f"{PREFIX} EVENT {name} {_kv(f)}".rstrip()))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    control = None
    if args.stdin_control:
        control = loop.create_task(_control_loop(client, prompt, stop))
    try:
        await client.start()
    except (ConfigError, OSError) as e:
        print(f"lwm2m-client: {e}", file=sys.stderr)
        if control is not None:
            control.cancel()
        await client.stop(deregister=False)
        return 1
    host, port = client.local_address  # type: ignore[misc]
    _out(f"{PREFIX} READY endpoint={client.endpoint} local={_fmt_host(host)}:{port}")
    await stop.wait()
    if control is not None:
        control.cancel()
    await client.stop(deregister=True)
    return 0


def main(argv: Sequence[str] | None = None, client_cls: type[LwM2MClient] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("coap").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("coap-server").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        return asyncio.run(run(args, client_cls))  # client_cls: smartcard hook (issue #5)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
