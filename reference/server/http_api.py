"""HTTP JSON API of the reference server (aiohttp). The layout is documented with examples in
``docs/server-api.md``; in short:

=======  ==============================================  ====================================
GET      /api/server                                     addresses, counts, CoAP statistics
GET      /api/clients[?offset=&limit=]                   registered clients
GET      /api/clients/{ep}                               one client (with parsed object links)
GET      /api/clients/{ep}/data/{path}[?format=]         Read
PUT      /api/clients/{ep}/data/{path}                   Write (replace)
PATCH    /api/clients/{ep}/data/{path}                   Write (partial update, CoAP POST)
POST     /api/clients/{ep}/data/{oid}                    Create
DELETE   /api/clients/{ep}/data/{path}                   Delete
GET      /api/clients/{ep}/discover/{path}               Discover
PUT      /api/clients/{ep}/attributes/{path}             Write-Attributes
POST     /api/clients/{ep}/execute/{path}                Execute
POST     /api/clients/{ep}/observations/{path}           Observe
GET      /api/observations[?endpoint=]                   active observations
DELETE   /api/observations/{id}[?mode=reactive]          Cancel observation
DELETE   /api/clients/{ep}/observations/{path}           Cancel observation by path
GET      /api/events?since=&timeout=&kind=&endpoint=     events after ``since`` (long-poll)
GET      /api/events/stream?since=&kind=&endpoint=       the same as Server-Sent Events
=======  ==============================================  ====================================

HTTP status reflects the API call (400 bad input, 404 unknown client/observation, 504 the
client did not answer, 502 it answered with RST); the CoAP outcome is in the body's ``code``.
"""
from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from reference.model.types import ContentFormat
from reference.server.dm import DmError, values_from_json
from reference.server.events import EventKind

if TYPE_CHECKING:
    from reference.model.path import Path
    from reference.server.server import LwM2MServer

FORMAT_NAMES: dict[str, int] = {
    "text": ContentFormat.TEXT, "link": ContentFormat.LINK_FORMAT,
    "opaque": ContentFormat.OPAQUE, "cbor": ContentFormat.CBOR,
    "senml-json": ContentFormat.SENML_JSON, "senml-cbor": ContentFormat.SENML_CBOR,
    "tlv": ContentFormat.LWM2M_TLV, "lwm2m-json": ContentFormat.LWM2M_JSON,
    "json": ContentFormat.LWM2M_JSON,
}
SERVER_KEY = web.AppKey("lwm2m_server", object)


def parse_format(value: Any) -> int | None:
    """A content format from a name (``tlv``, ``senml-json``, ...) or a number."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in FORMAT_NAMES:
        return int(FORMAT_NAMES[s])
    if s.isdigit():
        return int(s)
    raise DmError(400, f"unknown format {value!r} (use {', '.join(FORMAT_NAMES)} or a number)")


def _timeout(request: web.Request) -> float | None:
    t = request.query.get("timeout")
    if t is None:
        return None
    try:
        v = float(t)
    except ValueError:
        raise DmError(400, "timeout must be a number of seconds") from None
    if not 0 < v <= 3600:
        raise DmError(400, "timeout out of range")
    return v


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except DmError as e:
        return _json({"error": e.message}, e.status)
    except json.JSONDecodeError as e:
        return _json({"error": f"invalid JSON body: {e}"}, 400)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    body = json.loads(raw)
    if not isinstance(body, dict):
        raise DmError(400, "body must be a JSON object")
    return body


def _path(request: web.Request) -> str:
    return "/" + request.match_info.get("path", "").strip("/")


class HttpApi:
    """Route handlers bound to one :class:`LwM2MServer`."""

    def __init__(self, server: "LwM2MServer") -> None:
        self.server = server
        self.streams: set[Any] = set()  # open SSE subscriptions, closed on shutdown

    async def on_shutdown(self, app: web.Application) -> None:
        for sub in list(self.streams):
            sub.close()

    def routes(self) -> list[web.RouteDef]:
        P = "{path:[0-9/]*}"
        return [
            web.get("/api/server", self.info),
            web.get("/api/clients", self.clients),
            web.get("/api/clients/{ep}", self.client),
            web.get(f"/api/clients/{{ep}}/data/{P}", self.read),
            web.put(f"/api/clients/{{ep}}/data/{P}", self.write),
            web.patch(f"/api/clients/{{ep}}/data/{P}", self.write_partial),
            web.post(f"/api/clients/{{ep}}/data/{P}", self.create),
            web.delete(f"/api/clients/{{ep}}/data/{P}", self.delete),
            web.get(f"/api/clients/{{ep}}/discover/{P}", self.discover),
            web.put(f"/api/clients/{{ep}}/attributes/{P}", self.attributes),
            web.post(f"/api/clients/{{ep}}/execute/{P}", self.execute),
            web.post(f"/api/clients/{{ep}}/observations/{P}", self.observe),
            web.get("/api/clients/{ep}/observations", self.client_observations),
            web.delete(f"/api/clients/{{ep}}/observations/{P}", self.cancel_by_path),
            web.get("/api/observations", self.observations),
            web.delete("/api/observations/{id}", self.cancel),
            web.get("/api/events", self.events),
            web.get("/api/events/stream", self.event_stream),
        ]

    # ---- info & clients -----------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        s = self.server
        fmt = lambda a: f"{a[0]}:{a[1]}" if a else None  # noqa: E731
        return _json({
            "coap": fmt(s.coap_address), "coaps": fmt(s.coaps_address),
            "http": fmt(s.http_address), "registrations": len(s.store),
            "observations": len(s.observations), "last_event": s.events.last_seq,
            "coap_stats": s.coap.stats.as_dict() if s.coap else None,
            "store": {"commits": s.store.commits, "rows_written": s.store.rows_written,
                      "stage_seconds": round(s.store.stage_seconds, 3),
                      "commit_seconds": round(s.store.commit_seconds, 3),
                      "commit_statement_seconds": round(s.store.commit_inner_seconds, 3),
                      "commit_max_seconds": round(s.store.commit_max, 4)},
        })

    async def clients(self, request: web.Request) -> web.Response:
        try:
            offset = int(request.query.get("offset", 0))
            limit = int(request.query.get("limit", 1000))
        except ValueError:
            raise DmError(400, "offset and limit must be integers") from None
        regs = self.server.clients()
        page = regs[offset:offset + max(0, limit)]
        return _json({"count": len(regs), "offset": offset,
                      "clients": [r.to_dict() for r in page]})

    async def client(self, request: web.Request) -> web.Response:
        reg = self.server.get_client(request.match_info["ep"])
        if reg is None:
            raise DmError(404, f"endpoint {request.match_info['ep']!r} is not registered")
        d = reg.to_dict()
        d["objects"] = reg.object_links()
        return _json(d)

    # ---- DM -----------------------------------------------------------------------------------
    async def read(self, request: web.Request) -> web.Response:
        r = await self.server.read(request.match_info["ep"], _path(request),
                                   parse_format(request.query.get("format")),
                                   timeout=_timeout(request))
        return _json(r.to_json())

    async def _content(self, request: web.Request) -> tuple[Path, dict[str, Any]]:
        """The target path and the content keywords of a write/create body: either raw bytes
        (``payload_hex`` + ``content_format``) or values encoded by the server (``values``/``value``)."""
        body = await _body(request)
        s = self.server
        path = s._path(_path(request))
        fmt = parse_format(body.get("format", request.query.get("format")))
        if "payload_hex" in body:
            try:
                payload = bytes.fromhex(body["payload_hex"])
            except (ValueError, TypeError):
                raise DmError(400, "payload_hex is not hexadecimal") from None
            return path, {"payload": payload, "fmt": parse_format(body.get("content_format", fmt))}
        return path, {"values": values_from_json(body, path, s.registry), "fmt": fmt}

    async def _write(self, request: web.Request, replace: bool) -> web.Response:
        path, content = await self._content(request)
        r = await self.server.write(request.match_info["ep"], path, replace=replace,
                                    timeout=_timeout(request), **content)
        return _json(r.to_json())

    async def write(self, request: web.Request) -> web.Response:
        return await self._write(request, True)

    async def write_partial(self, request: web.Request) -> web.Response:
        return await self._write(request, False)

    async def create(self, request: web.Request) -> web.Response:
        path, content = await self._content(request)
        r = await self.server.create(request.match_info["ep"], path, timeout=_timeout(request), **content)
        return _json(r.to_json())

    async def delete(self, request: web.Request) -> web.Response:
        r = await self.server.delete(request.match_info["ep"], _path(request),
                                     timeout=_timeout(request))
        return _json(r.to_json())

    async def discover(self, request: web.Request) -> web.Response:
        r = await self.server.discover(request.match_info["ep"], _path(request),
                                       timeout=_timeout(request))
        return _json(r.to_json())

    async def attributes(self, request: web.Request) -> web.Response:
        body = await _body(request)
        attrs = body.get("attributes", body)
        if not isinstance(attrs, dict):
            raise DmError(400, "attributes must be an object")
        r = await self.server.write_attributes(request.match_info["ep"], _path(request), attrs,
                                               timeout=_timeout(request))
        return _json(r.to_json())

    async def execute(self, request: web.Request) -> web.Response:
        body = await _body(request)
        args = body.get("args")
        if args is not None and not isinstance(args, str):
            raise DmError(400, "args must be a string")
        r = await self.server.execute(request.match_info["ep"], _path(request), args,
                                      timeout=_timeout(request))
        return _json(r.to_json())

    # ---- observations -------------------------------------------------------------------------
    async def observe(self, request: web.Request) -> web.Response:
        body = await _body(request)
        fmt = parse_format(body.get("format", request.query.get("format")))
        obs, first = await self.server.observe(request.match_info["ep"], _path(request), fmt,
                                               timeout=_timeout(request))
        return _json({"observation": obs.to_json() if obs else None,
                      "response": first.to_json()})

    async def observations(self, request: web.Request) -> web.Response:
        ep = request.query.get("endpoint")
        return _json({"observations": [o.to_json() for o in self.server.observations.values()
                                       if ep is None or o.endpoint == ep]})

    async def client_observations(self, request: web.Request) -> web.Response:
        ep = request.match_info["ep"]
        return _json({"observations": [o.to_json() for o in self.server.observations.values()
                                       if o.endpoint == ep]})

    def _mode(self, request: web.Request) -> bool:
        mode = request.query.get("mode", "proactive")
        if mode not in ("proactive", "reactive"):
            raise DmError(400, "mode must be proactive or reactive")
        return mode == "proactive"

    async def _cancel(self, request: web.Request, obs: Any) -> web.Response:
        r = await self.server.cancel_observe(obs, proactive=self._mode(request),
                                             timeout=_timeout(request))
        return _json({"cancelled": obs.id if not isinstance(obs, str) else obs,
                      "response": r.to_json() if r else None})

    async def cancel(self, request: web.Request) -> web.Response:
        oid = request.match_info["id"]
        if oid not in self.server.observations:
            raise DmError(404, f"no active observation {oid!r}")
        return await self._cancel(request, oid)

    async def cancel_by_path(self, request: web.Request) -> web.Response:
        obs = self.server.find_observation(request.match_info["ep"], _path(request))
        if obs is None:
            raise DmError(404, "no active observation on that path")
        return await self._cancel(request, obs)

    # ---- events -------------------------------------------------------------------------------
    @staticmethod
    def _filters(request: web.Request) -> tuple[int, set[str] | None, str | None]:
        try:
            since = int(request.query.get("since", 0))
        except ValueError:
            raise DmError(400, "since must be an integer") from None
        kinds = request.query.get("kind")
        kindset = None
        if kinds:
            kindset = set(kinds.split(","))
            valid = {k.value for k in EventKind}
            if not kindset <= valid:
                raise DmError(400, f"unknown event kind in {kinds!r}; valid: {sorted(valid)}")
        return since, kindset, request.query.get("endpoint")

    async def events(self, request: web.Request) -> web.Response:
        """Long-poll: events with seq > since; waits up to ``timeout`` (default 0, max 300 s)
        for a matching one. Returns ``last_seq`` to pass as the next ``since``."""
        since, kinds, ep = self._filters(request)
        try:
            timeout = min(float(request.query.get("timeout", 0)), 300.0)
            limit = max(1, min(int(request.query.get("limit", 1000)), 10_000))
        except ValueError:
            raise DmError(400, "timeout/limit must be numbers") from None
        bus = self.server.events
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            evs = bus.since(since, limit)
            last = evs[-1].seq if evs else max(since, 0)
            match = [e for e in evs if (kinds is None or e.kind.value in kinds)
                     and (ep is None or e.endpoint == ep)]
            remaining = deadline - loop.time()
            if match or remaining <= 0:
                if not evs:
                    last = max(since, 0)
                return _json({"events": [e.to_json() for e in match], "last_seq": last,
                              "oldest_seq": bus.oldest_seq})
            since = last
            await bus.wait_since(since, remaining, limit)

    async def event_stream(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ``id: seq``, ``event: kind``, ``data: json``. Resumes after
        ``since`` (or the Last-Event-ID header) from the history, then follows live."""
        since, kinds, ep = self._filters(request)
        if "Last-Event-ID" in request.headers:
            try:
                since = int(request.headers["Last-Event-ID"])
            except ValueError:
                pass
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        bus = self.server.events
        sub = bus.subscribe(kinds, ep)
        self.streams.add(sub)
        try:
            for e in bus.since(since, 10_000):
                if (kinds is None or e.kind.value in kinds) and (ep is None or e.endpoint == ep):
                    await resp.write(_sse(e))
                since = e.seq
            while True:
                try:
                    e = await sub.get(15.0)
                except asyncio.TimeoutError:
                    await resp.write(b": keep-alive\n\n")
                    continue
                except StopAsyncIteration:  # server shutting down
                    break
                if e.seq > since:
                    await resp.write(_sse(e))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            sub.close()
            self.streams.discard(sub)
        return resp


def _sse(e: Any) -> bytes:
    return (f"id: {e.seq}\nevent: {e.kind.value}\n"
            f"data: {json.dumps(e.to_json(), default=str)}\n\n").encode()


def create_app(server: "LwM2MServer") -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[SERVER_KEY] = server
    api = HttpApi(server)
    app.add_routes(api.routes())
    if getattr(server, "cards", None) is not None:  # smartcard hook (issue #5): GET /api/cards
        app.add_routes(server.cards.routes())
    if getattr(server, "charging", None) is not None:  # charging hook (HLF-SG4): GET /api/charging
        app.add_routes(server.charging.routes())
    app.on_shutdown.append(api.on_shutdown)
    return app


async def start_http(server: "LwM2MServer", host: str, port: int
                     ) -> tuple[web.AppRunner, tuple[str, int]]:
    """Serve the API on ``host:port`` (0 = any free port); returns the runner and address."""
    runner = web.AppRunner(create_app(server), access_log=None, handle_signals=False,
                           shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    addr = sock.getsockname()[:2]
    return runner, (addr[0], addr[1])
