"""A DUT process: started in its own session, output captured to files and memory, bounded waits.

Everything here is asyncio and bounded: every wait takes a timeout, a process that ignores its
stop signal is killed (the whole process group, so wrapper scripts cannot leak children).
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from conformance.verdicts import ConformanceError

TAIL_LINES = 20


class DutStartError(ConformanceError):
    """The DUT could not be started or did not become ready."""


class DutCrashed(ConformanceError):
    """The DUT exited although nobody asked it to."""


class DutTimeout(ConformanceError):
    """The DUT did not do what was awaited within the time limit (e.g. no output line matched)."""


@dataclass(frozen=True)
class OutputLine:
    t: float
    stream: str  # "stdout" | "stderr"
    text: str


class DutProcess:
    """One running implementation. Create, then ``await start()``; always ``await stop()``.

    ``stdout_path``/``stderr_path`` receive everything the process writes (line-buffered on our
    side). ``lines`` keeps every decoded line with its time for waits and reports.
    """

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: Path | str | None = None, log_dir: Path, log_prefix: str = "dut") -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(os.environ if env is None else env)
        self.cwd = str(cwd) if cwd else None
        log_dir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = log_dir / f"{log_prefix}.stdout.log"
        self.stderr_path = log_dir / f"{log_prefix}.stderr.log"
        self.lines: list[OutputLine] = []
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False
        self.started_at = 0.0
        self.exited_at = 0.0
        self._changed = asyncio.Event()
        self._pumps: list[asyncio.Task[None]] = []
        self._waiter: asyncio.Task[int] | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Spawn the process. DutStartError if the executable cannot be run at all."""
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self.env, cwd=self.cwd, start_new_session=True)
        except (OSError, ValueError) as exc:
            self.stdout_path.write_text("")
            self.stderr_path.write_text(f"[harness] cannot execute {self.argv!r}: {exc}\n")
            raise DutStartError(f"{self.name}: cannot execute {self.argv[0]!r}: {exc}") from None
        self.started_at = time.time()
        assert self.proc.stdout and self.proc.stderr
        self._pumps = [asyncio.create_task(self._pump(self.proc.stdout, "stdout", self.stdout_path)),
                       asyncio.create_task(self._pump(self.proc.stderr, "stderr", self.stderr_path))]
        self._waiter = asyncio.create_task(self._wait_exit())

    async def _wait_exit(self) -> int:
        assert self.proc
        rc = await self.proc.wait()
        self.exited_at = time.time()
        self._changed.set()
        return rc

    async def _pump(self, stream: asyncio.StreamReader, name: str, path: Path) -> None:
        buf = b""
        with open(path, "wb") as fh:
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    break
                fh.write(chunk)
                fh.flush()
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    self._add(name, raw)
            if buf:
                self._add(name, buf)

    def _add(self, stream: str, raw: bytes) -> None:
        self.lines.append(OutputLine(time.time(), stream, raw.decode("utf-8", "replace").rstrip("\r")))
        self._changed.set()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    @property
    def crashed(self) -> bool:
        """Exited without being asked to (any exit status: a DUT is meant to keep running)."""
        return self.proc is not None and self.proc.returncode is not None and not self.stopping

    def describe_exit(self) -> str:
        rc = self.returncode
        if rc is None:
            return "running"
        if rc < 0:
            try:
                return f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"killed by signal {-rc}"
        return f"exited with status {rc}"

    def tail(self, n: int = TAIL_LINES) -> list[str]:
        """The last ``n`` output lines, stderr ones prefixed ``[stderr]``."""
        return [("[stderr] " if x.stream == "stderr" else "") + x.text for x in self.lines[-n:]]

    # -- waiting -------------------------------------------------------------------------------
    def mark(self) -> int:
        """Cursor for :meth:`wait_for_line` (only lines after the mark are considered)."""
        return len(self.lines)

    async def wait_for_line(self, pattern: re.Pattern[str] | str, timeout: float, *, since: int = 0,
                            stream: str | None = "stdout") -> re.Match[str]:
        """First line after ``since`` matching ``pattern`` (search). DutCrashed if the process
        exits first, DutTimeout after ``timeout`` seconds."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = asyncio.get_running_loop().time() + timeout
        cursor = since
        while True:
            while cursor < len(self.lines):
                line = self.lines[cursor]
                cursor += 1
                if stream is None or line.stream == stream:
                    m = rx.search(line.text)
                    if m:
                        return m
            if not self.running:
                await self._drain()
                if cursor < len(self.lines):
                    continue
                raise DutCrashed(f"{self.name} {self.describe_exit()} while waiting for /{rx.pattern}/",
                                 output=self.tail())
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise DutTimeout(f"{self.name}: no output line matched /{rx.pattern}/ within {timeout:g} s",
                                 output=self.tail())
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _drain(self) -> None:
        """Let the output pumps finish after exit (bounded)."""
        if self._pumps:
            await asyncio.wait(self._pumps, timeout=2.0)

    async def wait_exit(self, timeout: float) -> int | None:
        """Exit status, or None if still running after ``timeout``."""
        if self._waiter is None:
            return self.returncode
        done, _ = await asyncio.wait({self._waiter}, timeout=timeout)
        return self.returncode if done else None

    # -- driving -------------------------------------------------------------------------------
    async def write_line(self, line: str, timeout: float = 5.0) -> None:
        """Write ``line`` + newline to stdin. DutCrashed if the process is gone."""
        if not self.running or self.proc is None or self.proc.stdin is None:
            raise DutCrashed(f"{self.name} {self.describe_exit()}; cannot write {line!r} to its stdin",
                             output=self.tail())
        try:
            self.proc.stdin.write(line.encode() + b"\n")
            await asyncio.wait_for(self.proc.stdin.drain(), timeout)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise DutCrashed(f"{self.name}: stdin closed ({exc}); {self.describe_exit()}", output=self.tail()) from None
        except asyncio.TimeoutError:
            raise DutTimeout(f"{self.name}: stdin not drained within {timeout:g} s", output=self.tail()) from None

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    async def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 5.0, stdin_line: str | None = None,
                   stop_argv: Sequence[str] | None = None) -> int | None:
        """Ask the process to stop (stdin line, stop command, or signal), wait ``timeout``, then
        SIGKILL the process group. Returns the exit status. Never raises for a dead process."""
        self.stopping = True
        if self.proc is None:
            return None
        if self.running:
            if stdin_line is not None:
                try:
                    await self.write_line(stdin_line, timeout=1.0)
                except ConformanceError:
                    pass
            elif stop_argv:
                try:
                    helper = await asyncio.create_subprocess_exec(
                        *stop_argv, env=self.env, cwd=self.cwd, stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
                    await asyncio.wait_for(helper.wait(), timeout)
                except (OSError, asyncio.TimeoutError):
                    pass
            else:
                self._signal_group(sig)
            if await self.wait_exit(timeout) is None:
                if stdin_line is not None or stop_argv:
                    self._signal_group(signal.SIGTERM)
                    await self.wait_exit(min(timeout, 2.0))
                if self.running:
                    self._signal_group(signal.SIGKILL)
                    await self.wait_exit(5.0)
        # whatever the process left behind in its group
        self._signal_group(signal.SIGKILL)
        if self.proc.stdin and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        await self._drain()
        for t in self._pumps:
            t.cancel()
        return self.returncode
