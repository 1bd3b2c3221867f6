"""``lwm2m-server``: run the reference LwM2M server, or drive it (``ctl``) through its HTTP API.

Run::

    lwm2m-server --coap-port 0 --http-port 0 --state-dir /tmp/srv

prints, once every listener is up, exactly one line on stdout::

    lwm2m-server READY coap=127.0.0.1:40001 coaps=off http=127.0.0.1:40002

(``off`` for a listener that is not enabled). Logs go to stderr. SIGINT/SIGTERM stop cleanly.

Drive::

    lwm2m-server ctl --api http://127.0.0.1:40002 clients
    lwm2m-server ctl --api http://127.0.0.1:40002 read dev-1 /3/0/0
    lwm2m-server ctl --api http://127.0.0.1:40002 write dev-1 /1/0/1 300
    lwm2m-server ctl --api http://127.0.0.1:40002 observe dev-1 /3/0/9 --count 3

``ctl`` prints JSON; exit status 0 on success, 1 for an API error (HTTP >= 400), 2 when the API
cannot be reached, 3 when the LwM2M client answered with an error code.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any, Callable, Sequence

if TYPE_CHECKING:
    from reference.server.server import LwM2MServer

SERVE_EPILOG = """\
The store lives in STATE_DIR/registrations.sqlite3 (SQLite, WAL); use --state-dir :memory: for a
server that forgets everything on exit. CoAPS (DTLS 1.2 PSK) is enabled with --coaps-port or
--psk-file (default port 5684); the PSK file maps identities to endpoints and keys, either as
lines "identity endpoint hexkey" or as JSON {"identity": {"endpoint": ..., "key": hex}}.
Ports may be 0 (any free port); the READY line on stdout tells which ones were bound:
  lwm2m-server READY coap=HOST:PORT coaps=HOST:PORT|off http=HOST:PORT|off

To drive a running server use the ctl mode:  lwm2m-server ctl --help
"""

CTL_EPILOG = """\
examples:
  lwm2m-server ctl clients
  lwm2m-server ctl read dev-1 /3/0 --format senml-json
  lwm2m-server ctl write dev-1 /1/0/1 300
  lwm2m-server ctl write dev-1 /1/0 --values '{"/1/0/1": 300, "/1/0/2": 5}' --partial
  lwm2m-server ctl execute dev-1 /3/0/4
  lwm2m-server ctl create dev-1 /2 --values '{"/2/5/0": 3, "/2/5/1": 0}'
  lwm2m-server ctl attributes dev-1 /3/0/9 pmin=10 pmax=60
  lwm2m-server ctl observe dev-1 /3/0/9 --count 3 --duration 60
  lwm2m-server ctl events --since 0 --follow
  lwm2m-server ctl charging [dev-1] [--csv]

exit status: 0 ok, 1 API error, 2 API unreachable, 3 the LwM2M client answered an error code.
"""


# ---- serve ------------------------------------------------------------------------------------
def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lwm2m-server", description="Reference LwM2M 1.1 server (NoSec CoAP, DTLS-PSK "
        "CoAPS, HTTP JSON API).", epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coap-host", default="127.0.0.1", help="address for CoAP and CoAPS (default %(default)s)")
    p.add_argument("--coap-port", type=int, default=5683, help="NoSec CoAP port, 0 = any (default %(default)s)")
    p.add_argument("--coaps-port", type=int, default=None, help="DTLS-PSK CoAPS port, 0 = any (default: 5684 if --psk-file, else off)")
    p.add_argument("--http-host", default="127.0.0.1", help="address of the HTTP API (default %(default)s)")
    p.add_argument("--http-port", type=int, default=8080, help="HTTP API port, 0 = any, -1 = off (default %(default)s)")
    p.add_argument("--state-dir", default="lwm2m-server-state", help="directory of the registration store, or :memory: (default %(default)s)")
    p.add_argument("--psk-file", default=None, help="PSK table: identity -> endpoint, key")
    p.add_argument("--psk", nargs=3, action="append", default=[], metavar=("IDENTITY", "ENDPOINT", "HEXKEY"),
                   help="one PSK credential (repeatable; added to --psk-file's table); enables CoAPS")
    p.add_argument("--store-sync", default="full", choices=["full", "normal"],
                   help="SQLite synchronous mode: full = fsync every group commit before answering "
                        "(survives power loss); normal = survives a server crash only (default %(default)s)")
    p.add_argument("--expiry-interval", type=float, default=1.0, help="seconds between lifetime expiry sweeps (default %(default)s)")
    p.add_argument("--no-charging-records", action="store_true",
                   help="do not keep per-endpoint traffic records (GET /api/charging)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="stderr log level (default %(default)s)")
    return p


async def serve(args: argparse.Namespace,
                make_server: Callable[..., "LwM2MServer"] | None = None,
                after_start: Callable[["LwM2MServer"], None] | None = None) -> int:
    """Run a server from parsed ``serve`` arguments until SIGINT/SIGTERM; returns the exit status.
    ``make_server`` (default :class:`LwM2MServer`, same keyword arguments) and ``after_start`` let
    a variant (the fault-injected servers of ``faulty/``) reuse the whole command line."""
    from reference.server import gcpolicy
    from reference.server.security import PskEntry, PskFileError, PskTable
    from reference.server.server import LwM2MServer

    table = None
    if args.psk_file:
        try:
            table = PskTable.from_file(args.psk_file)
        except PskFileError as e:
            print(f"lwm2m-server: {e}", file=sys.stderr)
            return 2
    for identity, endpoint, hexkey in args.psk:
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            print(f"lwm2m-server: --psk {identity} {endpoint}: key {hexkey!r} is not hexadecimal", file=sys.stderr)
            return 2
        table = table or PskTable()
        table.add(PskEntry(identity.encode(), endpoint, key))
    coaps_port = args.coaps_port
    if coaps_port is None and (args.psk_file or args.psk):
        coaps_port = 5684
    server = (make_server or LwM2MServer)(
        coap_host=args.coap_host, coap_port=args.coap_port, coaps_port=coaps_port,
        http_host=args.http_host, http_port=None if args.http_port < 0 else args.http_port,
        state_dir=args.state_dir, psk_table=table, expiry_interval=args.expiry_interval,
        store_synchronous=args.store_sync.upper(), charging=not args.no_charging_records)
    try:
        await server.start()
    except OSError as e:
        print(f"lwm2m-server: cannot listen: {e}", file=sys.stderr)
        await server.stop()
        return 2
    if after_start is not None:
        after_start(server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    # The store's COMMIT (fsync) runs in a writer thread that must win the GIL back from the
    # busy event loop; the default 5 ms switch interval would add up to 2 x 5 ms to every commit.
    sys.setswitchinterval(0.0001)
    # start-up objects frozen; no automatic full GC (its cost grew with the number of
    # registrations), a periodic one instead: see reference/server/gcpolicy.py
    gc_policy = gcpolicy.install()
    fmt = lambda a: f"{a[0]}:{a[1]}" if a else "off"  # noqa: E731
    print(f"lwm2m-server READY coap={fmt(server.coap_address)} coaps={fmt(server.coaps_address)} "
          f"http={fmt(server.http_address)}", flush=True)
    try:
        await stop.wait()
    finally:
        gc_policy.close()
        await server.stop()
    return 0


# ---- ctl --------------------------------------------------------------------------------------
def _ctl_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lwm2m-server ctl", description="Drive a running lwm2m-server through its HTTP API.",
        epilog=CTL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", default=os.environ.get("LWM2M_SERVER_API", "http://127.0.0.1:8080"),
                   help="base URL of the API (default $LWM2M_SERVER_API or %(default)s)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the client (default %(default)s)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    sub.add_parser("info", help="server addresses and counters")
    sub.add_parser("clients", help="list registered clients")
    c = sub.add_parser("client", help="show one client")
    c.add_argument("endpoint")

    def dm(name: str, help: str, fmt: bool = False) -> argparse.ArgumentParser:
        q = sub.add_parser(name, help=help)
        q.add_argument("endpoint")
        q.add_argument("path")
        if fmt:
            q.add_argument("--format", help="tlv, senml-json, senml-cbor, lwm2m-json, text, opaque, or a number")
        return q

    dm("read", "Read a path", fmt=True)
    w = dm("write", "Write a resource value, or --values for several", fmt=True)
    w.add_argument("value", nargs="?", help="value of a single resource (typed by the object definition)")
    w.add_argument("--values", help='JSON object {"/oid/iid/rid": value, ...}')
    w.add_argument("--partial", action="store_true", help="partial update (CoAP POST) instead of replace (PUT)")
    e = dm("execute", "Execute a resource")
    e.add_argument("args", nargs="?", help="execute arguments, e.g. \"0='abc',1\"")
    cr = dm("create", "Create an object instance", fmt=True)
    cr.add_argument("--values", required=True, help='JSON object {"/oid/iid/rid": value, ...}')
    dm("delete", "Delete an object instance")
    dm("discover", "Discover a path")
    a = dm("attributes", "Write-Attributes")
    a.add_argument("attrs", nargs="+", metavar="NAME=VALUE", help="pmin, pmax, gt, lt, st, epmin, epmax; NAME alone removes")
    o = dm("observe", "Observe a path and print notifications", fmt=True)
    o.add_argument("--count", type=int, default=0, help="stop after N notifications (0 = until --duration or Ctrl-C)")
    o.add_argument("--duration", type=float, default=0, help="stop after S seconds (0 = no limit)")
    o.add_argument("--keep", action="store_true", help="leave the observation active on exit")
    co = dm("cancel-observe", "Cancel the observation of a path")
    co.add_argument("--reactive", action="store_true", help="forget it instead of sending Observe=1")
    sub.add_parser("observations", help="list active observations")
    ev = sub.add_parser("events", help="print events")
    ev.add_argument("--since", type=int, default=0)
    ev.add_argument("--kind", help="comma-separated kinds (registered, updated, deregistered, expired, notification, observation-ended)")
    ev.add_argument("--endpoint")
    ev.add_argument("--follow", action="store_true", help="keep waiting for new events")
    ch = sub.add_parser("charging", help="per-endpoint traffic records (all, or one endpoint)")
    ch.add_argument("endpoint", nargs="?")
    ch.add_argument("--csv", action="store_true", help="print CSV instead of JSON")
    return p


class _Api:
    def __init__(self, base: str, timeout: float) -> None:
        self.base = base.rstrip("/")
        self.timeout = timeout

    def call(self, method: str, path: str, body: Any = None, query: dict | None = None,
             wait: float | None = None) -> tuple[int, Any]:
        url = self.base + urllib.parse.quote(path, safe="/:@")
        q = dict(query or {})
        if q:
            url += "?" + urllib.parse.urlencode(q)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=(wait or self.timeout) + 5) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            try:
                return e.code, json.loads(e.read() or b"null")
            except json.JSONDecodeError:
                return e.code, {"error": e.reason}


def _print(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=False), flush=True)


def _dm_status(status: int, doc: Any) -> int:
    _print(doc)
    if status >= 400:
        return 1
    if isinstance(doc, dict) and doc.get("success") is False:
        return 3
    return 0


def _ctl(argv: Sequence[str]) -> int:
    args = _ctl_parser().parse_args(argv)
    api = _Api(args.api, args.timeout)
    t = {"timeout": args.timeout}
    try:
        return _ctl_run(api, args, t)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        print(f"lwm2m-server ctl: cannot reach {args.api}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _values_arg(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"lwm2m-server ctl: --values is not JSON: {e}")
    if not isinstance(v, dict):
        raise SystemExit("lwm2m-server ctl: --values must be a JSON object")
    return v


def _ctl_run(api: _Api, args: argparse.Namespace, t: dict) -> int:  # noqa: C901
    cmd = args.cmd
    if cmd == "info":
        return _dm_status(*api.call("GET", "/api/server"))
    if cmd == "clients":
        return _dm_status(*api.call("GET", "/api/clients", query={"limit": 1_000_000}))
    if cmd == "observations":
        return _dm_status(*api.call("GET", "/api/observations"))
    if cmd == "events":
        since = args.since
        while True:
            q: dict[str, Any] = {"since": since, "timeout": 25 if args.follow else 0}
            if args.kind:
                q["kind"] = args.kind
            if args.endpoint:
                q["endpoint"] = args.endpoint
            status, doc = api.call("GET", "/api/events", query=q, wait=30)
            if status >= 400:
                return _dm_status(status, doc)
            for e in doc["events"]:
                print(json.dumps(e), flush=True)
            since = doc["last_seq"]
            if not args.follow:
                return 0
    if cmd == "charging":  # charging records (LightweightM2M-HLF-SG4)
        path = ("/api/clients/" + urllib.parse.quote(args.endpoint, safe="") + "/charging"
                if args.endpoint else "/api/charging")
        if not args.csv:
            return _dm_status(*api.call("GET", path))
        try:
            with urllib.request.urlopen(f"{api.base}{path}?format=csv", timeout=api.timeout + 5) as r:
                sys.stdout.write(r.read().decode("utf-8"))
            return 0
        except urllib.error.HTTPError as e:
            print(e.read().decode("utf-8", "replace"), file=sys.stderr)
            return 1
    ep = urllib.parse.quote(args.endpoint, safe="")
    if cmd == "client":
        return _dm_status(*api.call("GET", f"/api/clients/{ep}"))
    rel = args.path.strip("/")
    if cmd == "read":
        q = dict(t)
        if args.format:
            q["format"] = args.format
        return _dm_status(*api.call("GET", f"/api/clients/{ep}/data/{rel}", query=q, wait=args.timeout))
    if cmd == "write":
        if args.values is not None:
            body: dict[str, Any] = {"values": _values_arg(args.values)}
        elif args.value is not None:
            body = {"value": args.value}
        else:
            raise SystemExit("lwm2m-server ctl write: give VALUE or --values")
        if args.format:
            body["format"] = args.format
        return _dm_status(*api.call("PATCH" if args.partial else "PUT",
                                    f"/api/clients/{ep}/data/{rel}", body, t, wait=args.timeout))
    if cmd == "execute":
        body = {"args": args.args} if args.args else {}
        return _dm_status(*api.call("POST", f"/api/clients/{ep}/execute/{rel}", body, t, wait=args.timeout))
    if cmd == "create":
        body = {"values": _values_arg(args.values)}
        if args.format:
            body["format"] = args.format
        return _dm_status(*api.call("POST", f"/api/clients/{ep}/data/{rel}", body, t, wait=args.timeout))
    if cmd == "delete":
        return _dm_status(*api.call("DELETE", f"/api/clients/{ep}/data/{rel}", None, t, wait=args.timeout))
    if cmd == "discover":
        return _dm_status(*api.call("GET", f"/api/clients/{ep}/discover/{rel}", query=t, wait=args.timeout))
    if cmd == "attributes":
        attrs: dict[str, Any] = {}
        for item in args.attrs:
            name, sep, value = item.partition("=")
            if not sep:
                attrs[name] = None
                continue
            try:
                attrs[name] = int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                raise SystemExit(f"lwm2m-server ctl attributes: {item!r} is not NAME=NUMBER")
        return _dm_status(*api.call("PUT", f"/api/clients/{ep}/attributes/{rel}", attrs, t, wait=args.timeout))
    if cmd == "cancel-observe":
        q = dict(t)
        if args.reactive:
            q["mode"] = "reactive"
        return _dm_status(*api.call("DELETE", f"/api/clients/{ep}/observations/{rel}", None, q, wait=args.timeout))
    if cmd == "observe":
        return _observe(api, args, ep, rel, t)
    raise SystemExit(f"unknown command {cmd}")


def _observe(api: _Api, args: argparse.Namespace, ep: str, rel: str, t: dict) -> int:
    status, info = api.call("GET", "/api/server")
    if status >= 400:
        return _dm_status(status, info)
    since = info["last_event"]
    body = {"format": args.format} if args.format else {}
    status, doc = api.call("POST", f"/api/clients/{ep}/observations/{rel}", body, t, wait=args.timeout)
    if status >= 400:
        return _dm_status(status, doc)
    print(json.dumps(doc), flush=True)
    obs = doc.get("observation")
    if obs is None:
        return 3
    oid = obs["id"]
    seen = 0
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    try:
        while True:
            wait = 25.0 if deadline is None else max(0.0, min(25.0, deadline - time.monotonic()))
            status, page = api.call("GET", "/api/events", query={
                "since": since, "timeout": wait, "kind": "notification,observation-ended",
                "endpoint": args.endpoint}, wait=wait + 5)
            if status >= 400:
                return _dm_status(status, page)
            since = page["last_seq"]
            for e in page["events"]:
                if e["data"].get("observation") != oid:
                    continue
                print(json.dumps(e), flush=True)
                if e["kind"] == "observation-ended":
                    return 0
                seen += 1
                if args.count and seen >= args.count:
                    return 0
            if deadline is not None and time.monotonic() >= deadline:
                return 0
    finally:
        if not args.keep:
            api.call("DELETE", f"/api/observations/{oid}", None, t, wait=args.timeout)


# ---- entry point ------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``lwm2m-server`` (pyproject.toml). Returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ctl":
        return _ctl(argv[1:])
    if argv and argv[0] == "serve":
        argv = argv[1:]
    args = serve_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
