"""``lwm2m-bootstrap-server``: run the reference bootstrap server, or manage its devices.

Run (no subcommand, or ``serve``)::

    lwm2m-bootstrap-server --state-dir ./bs --coap-port 5683 --coaps-port 5684 --http-port 8080

prints exactly one line ``lwm2m-bootstrap-server READY coap=HOST:PORT coaps=HOST:PORT http=HOST:PORT``
(``-`` for a closed port) on stdout once every port listens, then serves until SIGINT/SIGTERM.

Manage (against a running server with ``--url http://HOST:PORT``, or directly against a state
directory with ``--state-dir DIR``; ``trigger`` and ``events`` need ``--url``)::

    lwm2m-bootstrap-server --state-dir ./bs add --endpoint dev1 --server-uri coap://127.0.0.1:5683
    lwm2m-bootstrap-server --state-dir ./bs import devices.csv
    lwm2m-bootstrap-server --url http://127.0.0.1:8080 list
    lwm2m-bootstrap-server --url http://127.0.0.1:8080 export dev1 -o dev1.json
    lwm2m-bootstrap-server --url http://127.0.0.1:8080 trigger dev1 --address coap://127.0.0.1:56830

Exit status: 0 success, 1 operation failed (message on stderr), 2 usage error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path as FsPath
from typing import Any

from reference.bootstrap.provisioning import ProvisioningError, load_file, row_to_config, validate
from reference.bootstrap.server import BootstrapPolicy
from reference.model.config import ConfigError, DeviceConfig
from reference.model.types import ContentFormat

FORMAT_NAMES = {"tlv": ContentFormat.LWM2M_TLV, "senml-cbor": ContentFormat.SENML_CBOR,
                "senml-json": ContentFormat.SENML_JSON, "lwm2m-json": ContentFormat.LWM2M_JSON}


class CliError(Exception):
    """An operation failed; the message goes to stderr and the exit status is 1."""


# ---- serve ----------------------------------------------------------------------------------
async def _serve(args: argparse.Namespace) -> int:
    from reference.bootstrap.dtls import load_psk_table
    from reference.bootstrap.service import BootstrapService

    policy = BootstrapPolicy(
        delete_paths=args.delete_paths.replace(";", " ").split(),
        discover=args.discover,
        default_format=FORMAT_NAMES[args.default_format],
        request_timeout=args.request_timeout,
    )
    psk = load_psk_table(args.psk_file) if args.psk_file else {}
    initial = load_file(args.config) if args.config else []
    svc = BootstrapService(
        state_dir=args.state_dir, coap_host=args.coap_host, coap_port=args.coap_port,
        coaps_port=args.coaps_port, http_host=args.http_host,
        http_port=None if args.http_port < 0 else args.http_port, policy=policy, psk_table=psk)
    await svc.start()
    try:
        assert svc.server is not None
        if initial:
            svc.server.add_devices(initial, replace=True)
            logging.getLogger("lwm2m.bootstrap").info("imported %d device(s) from %s", len(initial), args.config)
        print(svc.ready_line(), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        await stop.wait()
    finally:
        await svc.stop()
    return 0


# ---- management: HTTP or state directory -------------------------------------------------
class _Target:
    def __init__(self, args: argparse.Namespace) -> None:
        self.url = getattr(args, "url", None)
        self.state_dir = getattr(args, "state_dir", None)
        if not self.url and not self.state_dir:
            raise CliError("give --url http://HOST:PORT (running server) or --state-dir DIR")
        self._server: Any = None

    # HTTP
    def http(self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json",
             timeout: float = 30.0) -> Any:
        req = urllib.request.Request(self.url.rstrip("/") + path, data=body, method=method,
                                     headers={"Content-Type": ctype} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                doc = json.loads(raw)
                msg = "\n".join(doc.get("errors") or [doc.get("error", "")])
                if doc.get("error") and doc.get("errors") and doc["errors"] != [doc["error"]]:
                    msg = doc["error"] + ":\n" + msg
            except (ValueError, AttributeError):
                msg = raw.decode("utf-8", "replace")
            raise CliError(f"HTTP {e.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as e:
            raise CliError(f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from None
        return json.loads(raw) if raw else None

    # state directory (no CoAP port is opened)
    def server(self) -> Any:
        if self._server is None:
            from reference.bootstrap.server import BootstrapServer
            from reference.bootstrap.store import DeviceStore
            self._server = BootstrapServer(DeviceStore(self.state_dir))
        return self._server


def _q(ep: str) -> str:
    return urllib.parse.quote(ep, safe="")


def _cmd_add(args: argparse.Namespace, t: _Target) -> int:
    if args.file:
        try:
            cfg = DeviceConfig.from_file(args.file)
        except ConfigError as e:
            raise CliError(str(e)) from None
    else:
        if not args.endpoint or not args.server_uri:
            raise CliError("add needs --endpoint and --server-uri (or --file DEVICE.json)")
        row = {k: "" if v is None else str(v) for k, v in vars(args).items()}
        row["delete_paths"] = args.dev_delete_paths or ""
        try:
            cfg = row_to_config(row)
        except ValueError as e:
            raise CliError(str(e)) from None
    problems = validate(cfg)
    if problems:
        raise CliError(f"{cfg.endpoint}: " + "; ".join(problems))
    if t.url:
        t.http("POST", "/api/devices" + ("?replace=1" if args.replace else ""), json.dumps(cfg.to_dict()).encode())
    else:
        from reference.bootstrap.store import DeviceExists
        try:
            t.server().add_device(cfg, replace=args.replace)
        except DeviceExists as e:
            raise CliError(str(e.args[0])) from None
    print(f"added {cfg.endpoint}")
    return 0


def _cmd_list(args: argparse.Namespace, t: _Target) -> int:
    docs = t.http("GET", "/api/devices") if t.url else [c.to_dict() for c in t.server().list_devices()]
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    for d in docs:
        dm = [s for s in d.get("security", []) if not s.get("bootstrap")]
        uris = ",".join(s.get("uri", "") for s in dm)
        print(f"{d['endpoint']}\t{uris}")
    return 0


def _cmd_show(args: argparse.Namespace, t: _Target) -> int:
    if t.url:
        doc = t.http("GET", f"/api/devices/{_q(args.endpoint)}")
    else:
        cfg = t.server().get_device(args.endpoint)
        if cfg is None:
            raise CliError(f"unknown endpoint {args.endpoint!r}")
        doc = cfg.to_dict()
    print(json.dumps(doc, indent=2))
    return 0


def _cmd_remove(args: argparse.Namespace, t: _Target) -> int:
    for ep in args.endpoint:
        if t.url:
            t.http("DELETE", f"/api/devices/{_q(ep)}")
        else:
            from reference.bootstrap.store import UnknownDevice
            try:
                t.server().remove_device(ep)
            except UnknownDevice:
                raise CliError(f"unknown endpoint {ep!r}") from None
        print(f"removed {ep}")
    return 0


def _cmd_import(args: argparse.Namespace, t: _Target) -> int:
    path = FsPath(args.file)
    if t.url:
        try:
            body = path.read_bytes()
        except OSError as e:
            raise CliError(f"{path}: cannot read: {e.strerror}") from None
        fmt = "json" if path.suffix.lower() == ".json" else "csv" if path.suffix.lower() == ".csv" else ""
        q = urllib.parse.urlencode({"name": str(path), **({"format": fmt} if fmt else {}),
                                    **({"replace": "1"} if args.replace else {})})
        doc = t.http("POST", f"/api/devices/import?{q}", body, "application/octet-stream")
        n, eps = doc["imported"], doc["endpoints"]
    else:
        from reference.bootstrap.store import DeviceExists
        try:
            cfgs = t.server().import_file(str(path), replace=args.replace)
        except ProvisioningError as e:
            raise CliError(f"{len(e.errors)} error(s), nothing imported:\n" + "\n".join(e.errors)) from None
        except DeviceExists as e:
            raise CliError(f"{e.args[0]}; nothing imported (use --replace)") from None
        n, eps = len(cfgs), [c.endpoint for c in cfgs]
    print(f"imported {n} device(s): {' '.join(eps)}")
    return 0


def _cmd_export(args: argparse.Namespace, t: _Target) -> int:
    if t.url:
        doc = t.http("GET", f"/api/devices/{_q(args.endpoint)}/export")
        cfg = DeviceConfig.from_dict(doc, where="server answer")
    else:
        cfg = t.server().get_device(args.endpoint)
        if cfg is None:
            raise CliError(f"unknown endpoint {args.endpoint!r}")
    if args.output == "-":
        print(json.dumps(cfg.to_dict(), indent=2))
    else:
        cfg.to_file(args.output)
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _cmd_trigger(args: argparse.Namespace, t: _Target) -> int:
    if not t.url:
        raise CliError("trigger needs --url of a running server")
    body: dict[str, Any] = {"wait": args.wait}
    if args.address:
        body["address"] = args.address
    if args.content_format:
        body["content_format"] = int(FORMAT_NAMES[args.content_format])
    doc = t.http("POST", f"/api/bootstrap/{_q(args.endpoint)}", json.dumps(body).encode(),
                 timeout=120.0)
    print(json.dumps(doc, indent=2))
    return 0 if (not args.wait or doc.get("state") == "finished") else 1


def _cmd_events(args: argparse.Namespace, t: _Target) -> int:
    if t.url:
        q = urllib.parse.urlencode({"since": args.since, "timeout": args.timeout,
                                    **({"endpoint": args.endpoint} if args.endpoint else {})})
        doc = t.http("GET", f"/api/events?{q}", timeout=args.timeout + 30)
        evs = doc["events"]
    else:
        evs = [e.to_dict() for e in t.server().events_since(args.since, args.endpoint)]
    for e in evs:
        print(json.dumps(e))
    return 0


# ---- argument parsing -------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lwm2m-bootstrap-server",
        description="Reference LwM2M Bootstrap-Server (Core 1.1.1 §5.2/§6.1) with a provisioning "
                    "portal. Without a subcommand it serves; subcommands manage device configurations "
                    "of a running server (--url) or of a state directory (--state-dir).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="CSV columns for import: endpoint, server_uri, security_mode, psk_identity, psk_key_hex, "
               "short_server_id, lifetime, binding, default_pmin, default_pmax, bootstrap_server_uri, "
               "bootstrap_security_mode, bootstrap_psk_identity, bootstrap_psk_key_hex, delete_paths "
               "(see docs/bootstrap-server.md). JSON: a list of DeviceConfig objects.")
    g = p.add_argument_group("serving")
    g.add_argument("--coap-host", default="127.0.0.1", help="CoAP/CoAPS bind address (default 127.0.0.1)")
    g.add_argument("--coap-port", type=int, default=5683, help="CoAP UDP port, 0 = any free (default 5683)")
    g.add_argument("--coaps-port", type=int, default=None,
                   help="CoAPS (DTLS-PSK) UDP port, 0 = any free; closed when not given")
    g.add_argument("--http-host", default="127.0.0.1", help="HTTP API bind address (default 127.0.0.1)")
    g.add_argument("--http-port", type=int, default=8080,
                   help="HTTP API port, 0 = any free, -1 = no HTTP API (default 8080)")
    g.add_argument("--config", metavar="FILE", help="devices CSV/JSON to import (replacing) at start")
    g.add_argument("--psk-file", metavar="FILE",
                   help="extra PSK table for the CoAPS port: JSON {identity: key-hex} or CSV identity,key_hex")
    g.add_argument("--delete-paths", default="/0 /1",
                   help="default Bootstrap-Delete paths, space-separated (default '/0 /1'; '/' = all)")
    g.add_argument("--discover", action="store_true", help="send Bootstrap-Discover first")
    g.add_argument("--default-format", choices=sorted(FORMAT_NAMES), default="tlv",
                   help="write format when the client gives no pct (default tlv)")
    g.add_argument("--request-timeout", type=float, default=10.0,
                   help="seconds to wait for each client answer (default 10)")
    g.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    p.add_argument("--state-dir", metavar="DIR", help="durable state (SQLite); in memory when not given")
    p.add_argument("--url", metavar="URL", help="HTTP API of a running server, for the subcommands")

    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="HTTP API of a running server")
    common.add_argument("--state-dir", default=argparse.SUPPRESS, help="state directory to edit directly")

    sub.add_parser("serve", help="run the server (same as no subcommand)")
    a = sub.add_parser("add", parents=[common], help="add one device configuration")
    a.add_argument("--file", help="a DeviceConfig JSON file instead of the flags below")
    a.add_argument("--endpoint")
    a.add_argument("--server-uri", dest="server_uri")
    a.add_argument("--security-mode", dest="security_mode", help="PSK, RPK, CERTIFICATE, NOSEC, CERTIFICATE_EST")
    a.add_argument("--psk-identity", dest="psk_identity")
    a.add_argument("--psk-key-hex", dest="psk_key_hex")
    a.add_argument("--short-server-id", dest="short_server_id", type=int)
    a.add_argument("--lifetime", type=int)
    a.add_argument("--binding")
    a.add_argument("--default-pmin", dest="default_pmin", type=int)
    a.add_argument("--default-pmax", dest="default_pmax", type=int)
    a.add_argument("--bootstrap-server-uri", dest="bootstrap_server_uri")
    a.add_argument("--bootstrap-security-mode", dest="bootstrap_security_mode")
    a.add_argument("--bootstrap-psk-identity", dest="bootstrap_psk_identity")
    a.add_argument("--bootstrap-psk-key-hex", dest="bootstrap_psk_key_hex")
    a.add_argument("--delete-paths", dest="dev_delete_paths", help="space-separated Bootstrap-Delete paths")
    a.add_argument("--replace", action="store_true", help="overwrite an existing configuration")
    ls = sub.add_parser("list", parents=[common], help="list configured endpoints")
    ls.add_argument("--json", action="store_true", help="full configurations as JSON")
    s = sub.add_parser("show", parents=[common], help="print one configuration as JSON")
    s.add_argument("endpoint")
    r = sub.add_parser("remove", parents=[common], help="remove configurations")
    r.add_argument("endpoint", nargs="+")
    i = sub.add_parser("import", parents=[common], help="bulk import a CSV or JSON file (all or nothing)")
    i.add_argument("file")
    i.add_argument("--replace", action="store_true", help="overwrite existing configurations")
    e = sub.add_parser("export", parents=[common], help="write one device's DeviceConfig JSON file")
    e.add_argument("endpoint")
    e.add_argument("-o", "--output", required=True, help="file to write ('-' = stdout)")
    t = sub.add_parser("trigger", parents=[common], help="server-initiated bootstrap of a device (needs --url)")
    t.add_argument("endpoint")
    t.add_argument("--address", help="client address coap://HOST:PORT (default: last Bootstrap-Request's)")
    t.add_argument("--content-format", choices=sorted(FORMAT_NAMES))
    t.add_argument("--wait", action="store_true", help="wait for the outcome; exit 1 unless finished")
    ev = sub.add_parser("events", parents=[common], help="print bootstrap events (JSON lines)")
    ev.add_argument("--since", type=int, default=0)
    ev.add_argument("--timeout", type=float, default=0.0, help="long-poll seconds when none (with --url)")
    ev.add_argument("--endpoint")
    return p


_COMMANDS = {"add": _cmd_add, "list": _cmd_list, "show": _cmd_show, "remove": _cmd_remove,
             "import": _cmd_import, "export": _cmd_export, "trigger": _cmd_trigger, "events": _cmd_events}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        parser.error(f"unknown --log-level {args.log_level!r}")
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd in (None, "serve"):
            return asyncio.run(_serve(args))
        return _COMMANDS[args.cmd](args, _Target(args))
    except (CliError, ProvisioningError, ConfigError) as e:
        print(f"lwm2m-bootstrap-server: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. port in use
        print(f"lwm2m-bootstrap-server: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
