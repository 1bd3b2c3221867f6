"""HTTP JSON API of the provisioning portal (aiohttp).

=======  ==============================  =====================================================
method   path                            meaning
=======  ==============================  =====================================================
GET      /api/health                     bound addresses
GET      /api/devices                    all configurations (DeviceConfig dicts)
POST     /api/devices[?replace=1]        add one (body: DeviceConfig dict) -> 201; 400 bad, 409 exists
GET      /api/devices/{ep}               one configuration, 404 if unknown
DELETE   /api/devices/{ep}               remove -> 204, 404 if unknown
POST     /api/devices/import             bulk, body CSV (text/csv) or JSON list; ?name=FILE names
         [?replace=1&name=F&format=csv]  the source in errors; all-or-nothing: 400 {"errors": [...]}
GET      /api/devices/{ep}/export        the DeviceConfig JSON file (offline provisioning)
GET      /api/events?since=N             events with seq > N; waits up to ``timeout`` s (default 20,
         [&timeout=S&endpoint=EP]        max 60) when there is none yet (long poll)
POST     /api/bootstrap/{ep}             server-initiated bootstrap; body (optional)
                                         {"address": "coap://h:p", "content_format": 11542,
                                         "wait": false} -> 202 (or 200 with the outcome if wait)
GET      /api/bootstrap/{ep}             latest sequence outcome in this process, 404 if none
=======  ==============================  =====================================================

Errors are JSON ``{"error": "...", "errors": [...]}`` with a 4xx status; nothing here can take the
process down (aiohttp turns unexpected exceptions into 500).
"""
from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from reference.bootstrap.provisioning import ProvisioningError, validate
from reference.bootstrap.server import BootstrapServer
from reference.bootstrap.store import DeviceExists, UnknownDevice
from reference.model.config import ConfigError, DeviceConfig

MAX_BODY = 16 * 1024 * 1024
SERVER_KEY: web.AppKey[BootstrapServer] = web.AppKey("bootstrap_server", BootstrapServer)
INFO_KEY: web.AppKey[dict] = web.AppKey("bootstrap_info", dict)


def _err(status: int, message: str, errors: list[str] | None = None) -> web.Response:
    return web.json_response({"error": message, "errors": errors or [message]}, status=status)


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "").lower() in ("1", "true", "yes")


async def health(request: web.Request) -> web.Response:
    return web.json_response(request.app[INFO_KEY])


async def list_devices(request: web.Request) -> web.Response:
    srv = request.app[SERVER_KEY]
    return web.json_response([c.to_dict() for c in srv.list_devices()])


async def add_device(request: web.Request) -> web.Response:
    srv = request.app[SERVER_KEY]
    try:
        doc = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return _err(400, f"body is not JSON: {e}")
    if not isinstance(doc, dict):
        return _err(400, "body must be one DeviceConfig object")
    try:
        cfg = DeviceConfig.from_dict(doc, where="body")
    except (ConfigError, TypeError, ValueError) as e:
        return _err(400, str(e))
    problems = validate(cfg)
    if problems:
        return _err(400, f"{cfg.endpoint}: inconsistent configuration", problems)
    try:
        srv.add_device(cfg, replace=_flag(request, "replace"))
    except DeviceExists as e:
        return _err(409, str(e.args[0]))
    return web.json_response(cfg.to_dict(), status=201)


async def get_device(request: web.Request) -> web.Response:
    cfg = request.app[SERVER_KEY].get_device(request.match_info["ep"])
    if cfg is None:
        return _err(404, f"unknown endpoint {request.match_info['ep']!r}")
    return web.json_response(cfg.to_dict())


async def delete_device(request: web.Request) -> web.Response:
    try:
        request.app[SERVER_KEY].remove_device(request.match_info["ep"])
    except UnknownDevice:
        return _err(404, f"unknown endpoint {request.match_info['ep']!r}")
    return web.Response(status=204)


async def export_device(request: web.Request) -> web.Response:
    ep = request.match_info["ep"]
    cfg = request.app[SERVER_KEY].get_device(ep)
    if cfg is None:
        return _err(404, f"unknown endpoint {ep!r}")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in ep)
    return web.Response(text=json.dumps(cfg.to_dict(), indent=2) + "\n", content_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{safe}.json"'})


async def import_devices(request: web.Request) -> web.Response:
    srv = request.app[SERVER_KEY]
    raw = await request.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return _err(400, f"body is not UTF-8: {e.reason}")
    fmt = request.query.get("format")
    if fmt is None:
        ctype = request.content_type
        fmt = "json" if ctype.endswith("json") else "csv" if "csv" in ctype else None
    name = request.query.get("name", "<upload>")
    try:
        cfgs = srv.import_text(text, name=name, fmt=fmt, replace=_flag(request, "replace"))
    except ProvisioningError as e:
        return _err(400, f"{len(e.errors)} error(s), nothing imported", e.errors)
    except DeviceExists as e:
        return _err(409, f"{e.args[0]}; nothing imported (use replace=1)")
    except ValueError as e:
        return _err(400, str(e))
    return web.json_response({"imported": len(cfgs), "endpoints": [c.endpoint for c in cfgs]})


async def events(request: web.Request) -> web.Response:
    srv = request.app[SERVER_KEY]
    try:
        since = int(request.query.get("since", "0"))
        timeout = min(max(float(request.query.get("timeout", "20")), 0.0), 60.0)
    except ValueError:
        return _err(400, "since must be an integer and timeout a number")
    evs = await srv.wait_events(since, timeout, request.query.get("endpoint"))
    last = evs[-1].seq if evs else since
    return web.json_response({"events": [e.to_dict() for e in evs], "last": last})


async def trigger_bootstrap(request: web.Request) -> web.Response:
    srv = request.app[SERVER_KEY]
    ep = request.match_info["ep"]
    body: Any = {}
    if request.can_read_body:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _err(400, "body must be JSON")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            return _err(400, "body must be a JSON object")
    wait = bool(body.get("wait", False))
    try:
        result = await srv.bootstrap_client(ep, body.get("address"), content_format=body.get("content_format"),
                                            wait=wait)
    except UnknownDevice:
        return _err(404, f"unknown endpoint {ep!r}")
    except (ValueError, TypeError) as e:
        return _err(400, str(e))
    return web.json_response(result.to_dict(), status=200 if wait else 202)


async def bootstrap_status(request: web.Request) -> web.Response:
    res = request.app[SERVER_KEY].result(request.match_info["ep"])
    if res is None:
        return _err(404, "no bootstrap sequence for this endpoint since the server started")
    return web.json_response(res.to_dict())


def make_app(server: BootstrapServer, info: dict[str, Any] | None = None) -> web.Application:
    """The aiohttp application serving the API above for ``server``."""
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVER_KEY] = server
    app[INFO_KEY] = dict(info or {})
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/devices", list_devices)
    app.router.add_post("/api/devices", add_device)
    app.router.add_post("/api/devices/import", import_devices)
    app.router.add_get("/api/devices/{ep}", get_device)
    app.router.add_delete("/api/devices/{ep}", delete_device)
    app.router.add_get("/api/devices/{ep}/export", export_device)
    app.router.add_get("/api/events", events)
    app.router.add_post("/api/bootstrap/{ep}", trigger_bootstrap)
    app.router.add_get("/api/bootstrap/{ep}", bootstrap_status)
    return app
