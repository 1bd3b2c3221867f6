"""The DUT handle a test case gets: start in a provisioning mode, drive, stop; faults -> verdict error.

Placeholder values (docs/profiles.md) come from, in priority order: the keyword arguments of
:meth:`Dut.start`, the named groups of the readiness regex (after start), and these defaults:

=================  ===========================================================================
endpoint           unique per DUT: ``conf-<8 hex>``
host               127.0.0.1
server_uri         from server_host/server_port if both given (coap://H:P), and vice versa
bootstrap_uri      likewise from bootstrap_host/bootstrap_port
psk_identity       the endpoint name;  psk_key_hex: 16 random bytes, hex
lifetime           60;  binding: U
local_port         a free UDP port;  coap_port/coaps_port: free UDP ports; http_port: free TCP
http_host          127.0.0.1
state_dir          a fresh directory for this DUT inside the test's evidence directory
profile_dir        the directory of the profile file;  python: the suite's interpreter
card, config_file  no default: a start command using them needs them passed to start()
=================  ===========================================================================
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Mapping, TypeVar
from urllib.parse import urlparse

from conformance.adapters import ActionResult, DutAdapter, adapter_class
from conformance.harness.ports import LOOPBACK, coap_ping_ready, free_port, tcp_ready
from conformance.harness.process import DutCrashed, DutProcess, DutStartError, DutTimeout
from conformance.profiles import Action, Command, Profile, render, render_structure
from conformance.verdicts import ConformanceError, Unsupported

T = TypeVar("T")


class DutActionError(ConformanceError):
    """A DUT control/action could not be carried out (API unreachable, command hung, …)."""


class Dut:
    """One implementation under test inside one test case.

    Created (not started) by the ``dut``/``make_dut`` fixtures; ``await start(mode, **values)``
    launches it and waits until ready; the fixture stops it at teardown and reports a crash.
    The driving methods are on :attr:`adapter` (ClientAdapter/ServerAdapter/BootstrapServerAdapter).
    """

    def __init__(self, profile: Profile, *, workdir: Path, ready_timeout: float | None = None,
                 stop_timeout: float | None = None, recorder: Any = None, label: str | None = None) -> None:
        self.profile = profile
        self.role = profile.role
        self.label = label or profile.name
        self.workdir = workdir
        self.state_dir = workdir / f"{self.label}-state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_timeout = ready_timeout or profile.ready.timeout
        self.stop_timeout = stop_timeout or profile.stop.timeout
        self.recorder = recorder
        self.values: dict[str, Any] = {}
        self.ready: dict[str, str] = {}
        self.mode: str | None = None
        self.process: DutProcess | None = None
        self.history: list[DutProcess] = []
        self._starts = 0
        self.adapter: DutAdapter = adapter_class(profile.role, profile.adapter)(self)

    # -- values ----------------------------------------------------------------------------
    def _defaults(self) -> dict[str, Any]:
        ep = f"conf-{secrets.token_hex(4)}"
        d: dict[str, Any] = {
            "endpoint": ep, "host": LOOPBACK, "psk_identity": ep, "psk_key_hex": secrets.token_hex(16),
            "lifetime": 60, "binding": "U", "local_port": free_port("udp"), "state_dir": str(self.state_dir),
            "profile_dir": str(self.profile.path.parent), "python": sys.executable,
        }
        if self.role != "client":
            d.update(coap_port=free_port("udp"), coaps_port=free_port("udp"), http_port=free_port("tcp"),
                     http_host=LOOPBACK)
        return d

    @staticmethod
    def _derive_uri(values: dict[str, Any], prefix: str) -> None:
        uri, host, port = f"{prefix}_uri", f"{prefix}_host", f"{prefix}_port"
        if values.get(uri) and not (values.get(host) and values.get(port)):
            u = urlparse(str(values[uri]))
            values.setdefault(host, u.hostname)
            values.setdefault(port, u.port or (5684 if u.scheme == "coaps" else 5683))
            values[host] = values[host] or u.hostname
            values[port] = values[port] or u.port
        elif not values.get(uri) and values.get(host) and values.get(port):
            values[uri] = f"coap://{values[host]}:{values[port]}"

    @property
    def endpoint(self) -> str:
        return str(self.values.get("endpoint", ""))

    def address(self, kind: str = "coap") -> tuple[str, int]:
        """(host, port) of a server DUT's ``kind`` listener (coap|coaps|http) or a client's local
        port, from the readiness groups or the placeholder values."""
        host = self.ready.get(f"{kind}_host") or self.values.get(f"{kind}_host") or self.values.get("host", LOOPBACK)
        key = "local_port" if kind == "local" else f"{kind}_port"
        port = self.ready.get(key) or self.values.get(key)
        if port in (None, "", "-"):
            raise ConformanceError(f"{self.label}: no {kind} port known (readiness regex group {key!r} or placeholder)")
        return str(host), int(port)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self, mode: str | None = None, **values: Any) -> "Dut":
        """Start the implementation in provisioning ``mode`` (client: factory|bootstrap|smartcard;
        servers: default) with placeholder ``values``; return once ready.

        Unsupported if the profile has no ``[start.<mode>]``; ConformanceError (verdict error) if a
        placeholder the command needs is missing, the process cannot start, exits or is not ready
        within the readiness timeout (the message carries its last output lines)."""
        if self.process is not None and self.process.running:
            raise ConformanceError(f"{self.label} is already running; stop() it first")
        mode = mode or ("default" if self.role != "client" else "factory")
        if mode not in self.profile.start:
            raise Unsupported(f"{self.profile.name} has no [start.{mode}] (cannot start in {mode} mode)")
        merged = {**self._defaults(), **{k: v for k, v in self.values.items() if k not in ("local_port",)}, **values}
        self._derive_uri(merged, "server")
        self._derive_uri(merged, "bootstrap")
        self.values = merged
        self.mode = mode
        cmd = self.profile.start[mode]
        argv, env, cwd = self._render_command(cmd, f"start.{mode}")
        self._starts += 1
        prefix = f"{self.label}" + (f"-{self._starts}" if self._starts > 1 else "")
        proc = DutProcess(self.label, argv, env=env, cwd=cwd, log_dir=self.workdir, log_prefix=prefix)
        self.process = proc
        self.history.append(proc)
        if self.recorder is not None:
            self.recorder.note(f"start {self.label} ({mode}): {' '.join(argv)}")
            self.recorder.add_file(f"{prefix} stdout", proc.stdout_path)
            self.recorder.add_file(f"{prefix} stderr", proc.stderr_path)
        await proc.start()
        await self._wait_ready(proc)
        return self

    def _render_command(self, cmd: Command, where: str, extra: Mapping[str, Any] | None = None) -> tuple[list[str], dict[str, str], str]:
        values = {**self.values, **self.ready, **(extra or {})}
        try:
            argv = [render(tok, values) for tok in cmd.argv]
            env = dict(os.environ)
            # console scripts of the suite's own environment (the reference CLIs) are on PATH
            env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
            env.setdefault("PYTHONUNBUFFERED", "1")
            env.update({k: render(v, values) for k, v in self.profile.env.items()})
            env.update({k: render(v, values) for k, v in cmd.env.items()})
            cwd = str((self.profile.cwd / render(cmd.cwd, values)) if cmd.cwd else self.profile.cwd)
        except KeyError as exc:
            raise ConformanceError(f"{self.profile.path.name} [{where}] needs {{{exc.args[0]}}}; "
                                   f"pass {exc.args[0]}=... to Dut.start()") from None
        return argv, env, cwd

    async def _wait_ready(self, proc: DutProcess) -> None:
        rd = self.profile.ready
        try:
            if rd.stdout is not None:
                m = await proc.wait_for_line(rd.stdout, self.ready_timeout)
                self.ready = {k: v for k, v in m.groupdict().items() if v is not None}
            if rd.poll_port is not None:
                try:
                    port = int(render(rd.poll_port, {**self.values, **self.ready}))
                except (KeyError, ValueError) as exc:
                    raise ConformanceError(f"[ready] poll port cannot be resolved: {exc}") from None
                host = str(self.values.get("host", LOOPBACK))
                probe = tcp_ready if rd.poll_protocol == "tcp" else coap_ping_ready
                ok_task = asyncio.ensure_future(probe(host, port, self.ready_timeout))
                exit_task = asyncio.ensure_future(proc.wait_exit(self.ready_timeout + 1))
                done, _ = await asyncio.wait({ok_task, exit_task}, return_when=asyncio.FIRST_COMPLETED)
                exit_task.cancel()
                if ok_task not in done:
                    ok_task.cancel()
                    raise DutCrashed(f"{self.label} {proc.describe_exit()} before {rd.poll_protocol} port {port} answered",
                                     output=proc.tail())
                if not ok_task.result():
                    raise DutTimeout(f"{self.label}: {rd.poll_protocol} port {port} not answering within "
                                     f"{self.ready_timeout:g} s", output=proc.tail())
        except (DutCrashed, DutTimeout) as exc:
            await proc.stop(timeout=1.0)
            what = "exited before becoming ready" if isinstance(exc, DutCrashed) else "did not become ready"
            raise DutStartError(f"{self.label} ({self.profile.name} {self.profile.version}) {what}: {exc.reason}",
                                output=proc.tail()) from None
        if self.recorder is not None:
            self.recorder.note(f"{self.label} ready" + (f": {self.ready}" if self.ready else ""))

    async def stop(self) -> int | None:
        """Stop the implementation as its profile says (idempotent). Returns its exit status."""
        proc = self.process
        if proc is None:
            return None
        st = self.profile.stop
        stop_argv = None
        if st.command is not None:
            stop_argv, _, _ = self._render_command(st.command, "stop")
        rc = await proc.stop(sig=st.signal, timeout=self.stop_timeout, stdin_line=st.stdin, stop_argv=stop_argv)
        return rc

    async def restart(self, **values: Any) -> "Dut":
        """Stop, then start again in the same mode, keeping the placeholder values (state_dir
        persists, so a client keeps what it was provisioned with); ``values`` override."""
        await self.stop()
        keep = dict(self.values)
        keep.update(values)
        self.values = keep
        return await self.start(self.mode, **keep)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def crashed(self) -> bool:
        return any(p.crashed for p in self.history)

    def last_output(self, n: int = 20) -> list[str]:
        return self.process.tail(n) if self.process else []

    def check_alive(self) -> None:
        """DutCrashed (verdict error) if the implementation has exited unexpectedly."""
        if self.process is not None and self.process.crashed:
            raise DutCrashed(f"{self.label} {self.process.describe_exit()} unexpectedly", output=self.process.tail())

    async def guard(self, aw: Awaitable[T], timeout: float, what: str = "the awaited event") -> T:
        """Await ``aw`` for at most ``timeout`` s, but end early with DutCrashed if the DUT exits.
        Re-raises asyncio.TimeoutError on timeout (the test decides whether that is a fail)."""
        task = asyncio.ensure_future(aw)
        if self.process is None or self.process._waiter is None:
            return await asyncio.wait_for(task, timeout)
        waiter = self.process._waiter
        done, _ = await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        if waiter in done:
            raise DutCrashed(f"{self.label} {self.process.describe_exit()} while waiting for {what}",
                             output=self.process.tail())
        raise asyncio.TimeoutError(f"{what} did not happen within {timeout:g} s")

    async def wait_output(self, pattern: str, timeout: float, *, since: int | None = None) -> Any:
        """Wait for a stdout line of the DUT matching ``pattern`` (DutTimeout/DutCrashed -> error)."""
        if self.process is None:
            raise ConformanceError(f"{self.label} is not started")
        return await self.process.wait_for_line(pattern, timeout, since=since or 0)

    # -- actions (used by the template adapters) --------------------------------------------
    def _action(self, name: str) -> Action:
        act = self.profile.actions.get(name)
        if act is None:
            table = "control" if self.role == "client" else "actions"
            raise Unsupported(f"{self.profile.name} profile has no [{table}.{name}]")
        return act

    async def watch(self, name: str, timeout: float) -> str:
        """Wait for the stdout line of a watch-only action (e.g. confirmation_prompt)."""
        act = self._action(name)
        if self.process is None:
            raise ConformanceError(f"{self.label} is not started")
        assert act.stdout is not None
        m = await self.process.wait_for_line(act.stdout, timeout)
        if self.recorder is not None:
            self.recorder.note(f"{self.label} {name}: {m.group(0)}")
        return m.group(0)

    async def perform(self, name: str, raw: Mapping[str, Any] | None = None, **values: Any) -> ActionResult:
        """Carry out profile action ``name`` with extra placeholder ``values``."""
        act = self._action(name)
        vals = {**self.values, **self.ready, **values}
        t0 = time.time()
        if act.kind == "stdin":
            res = await self._perform_stdin(act, vals)
        elif act.kind == "command":
            res = await self._perform_command(act, vals)
        else:
            res = await self._perform_http(act, vals, raw or {})
        if self.recorder is not None:
            self.recorder.note(f"{self.label} {name}: {res.detail} ({time.time() - t0:.2f} s)"
                               + ("" if res.ok else " [refused]"))
        return res

    async def _perform_stdin(self, act: Action, vals: Mapping[str, Any]) -> ActionResult:
        if self.process is None:
            raise DutActionError(f"{self.label} is not started; cannot perform {act.name}")
        try:
            line = render(act.stdin or "", vals)
        except KeyError as exc:
            raise DutActionError(f"[{act.name}] needs {{{exc.args[0]}}}") from None
        mark = self.process.mark()
        await self.process.write_line(line)
        if act.expect is None:
            return ActionResult(True, None, None, "", f"stdin {line!r}")
        m = await self.process.wait_for_line(act.expect, act.timeout, since=mark)
        value = m.groupdict().get("result", m.group(0))
        ok = m.groupdict().get("error") is None
        return ActionResult(ok, None, _convert(value, act.result), m.group(0), f"stdin {line!r} -> {m.group(0)!r}")

    async def _perform_command(self, act: Action, vals: Mapping[str, Any]) -> ActionResult:
        assert act.command is not None
        argv, env, cwd = self._render_command(act.command, act.name, vals)
        try:
            proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise DutActionError(f"[{act.name}] cannot execute {argv[0]!r}: {exc}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(), act.timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise DutActionError(f"[{act.name}] command {' '.join(argv)} did not finish within {act.timeout:g} s") from None
        text = out.decode("utf-8", "replace")
        ok = proc.returncode == 0
        detail = f"{' '.join(argv)} -> exit {proc.returncode}"
        if not ok and err:
            detail += f": {err.decode('utf-8', 'replace').strip()[:200]}"
        value = _extract(text, act.result, proc.returncode) if ok else None
        return ActionResult(ok, proc.returncode, value, text, detail)

    async def _perform_http(self, act: Action, vals: Mapping[str, Any], raw: Mapping[str, Any]) -> ActionResult:
        import aiohttp

        assert act.http is not None
        h = act.http
        try:
            url = render(h.url, vals)
            body = render_structure(h.body, vals, raw) if h.body is not None else None
            headers = {k: render(v, vals) for k, v in h.headers.items()}
        except KeyError as exc:
            raise DutActionError(f"[{act.name}] needs {{{exc.args[0]}}}") from None
        kwargs: dict[str, Any] = {"headers": headers}
        if isinstance(body, (dict, list)):
            kwargs["json"] = body
        elif body is not None:
            kwargs["data"] = str(body).encode()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=act.timeout)) as session:
                async with session.request(h.method, url, **kwargs) as resp:
                    text = await resp.text(errors="replace")
                    status = resp.status
        except asyncio.TimeoutError:
            raise DutActionError(f"[{act.name}] {h.method} {url}: no response within {act.timeout:g} s",
                                 output=self.last_output()) from None
        except aiohttp.ClientError as exc:
            raise DutActionError(f"[{act.name}] {h.method} {url}: {exc}", output=self.last_output()) from None
        ok = status in h.ok_status
        try:
            value = _extract(text, h.result, status)
        except (ValueError, KeyError, IndexError, TypeError):
            value = None
        return ActionResult(ok, status, value, text, f"{h.method} {url} -> {status}")


def _convert(value: str, result: str) -> Any:
    if result == "json" or result.startswith("json:"):
        try:
            return _extract(value, result, None)
        except (ValueError, KeyError, IndexError, TypeError):
            return value
    return value


def _extract(text: str, result: str, status: int | None) -> Any:
    """Apply a profile ``result`` spec: text | json | json:/pointer | status | none."""
    if result == "text":
        return text.strip()
    if result == "status":
        return status
    if result == "none":
        return None
    doc = json.loads(text) if text.strip() else None
    if result == "json":
        return doc
    pointer = result[len("json:"):]
    return json_pointer(doc, pointer)


def json_pointer(doc: Any, pointer: str) -> Any:
    """RFC 6901 JSON pointer lookup ("" = whole document)."""
    if pointer in ("", "/"):
        return doc if pointer == "" else doc.get("") if isinstance(doc, dict) else doc
    cur = doc
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        cur = cur[int(part)] if isinstance(cur, list) else cur[part]
    return cur
