"""Interoperability of the reference stack with a stack written by others: lwm2m-node-lib (npm).

Both directions, over real loopback sockets, through the launchers in interop/lwm2m-node-lib/:
- the reference client registers to the node server and is managed by it;
- the node client registers to the reference server and is managed by it.

lwm2m-node-lib is LwM2M 1.0 and text/plain only; where it deviates from the specification
(pre-standard Content-Format 1541 on writes), the reference answers as the spec requires and the
test states that deviation rather than hiding it.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from conformance.harness.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "interop" / "lwm2m-node-lib"
NODE_LIB = ROOT / "interop" / "node_modules" / "lwm2m-node-lib"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not NODE_LIB.is_dir(),
    reason="node or interop/node_modules missing (scripts/setup.sh installs them)",
)


class Proc:
    """A child process whose stdout lines are read in the background; every wait is bounded."""

    def __init__(self, argv: list[str], stdin: bool = False) -> None:
        self.argv = argv
        self.p = subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, text=True, bufsize=1,
        )
        self.lines: list[str] = []
        import threading

        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                m = rx.search(line)
                if m:
                    return m
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.argv[0]}: no line matching {pattern!r} within {timeout}s; "
                             f"last output: {self.lines[-15:]}")

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


def http(method: str, url: str, body: bytes | None = None, timeout: float = 10.0) -> Any:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def wait_until(fn: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout}s (last: {last!r})")


@pytest.fixture
def node_server() -> Iterator[tuple[int, str]]:
    coap, http_port = free_port("udp"), free_port("tcp")
    p = Proc(["node", str(NODE_DIR / "server.js"), "--coap-port", str(coap), "--http-port", str(http_port)])
    try:
        p.wait_line(r"lwm2m-node-server READY", timeout=15)
        yield coap, f"http://127.0.0.1:{http_port}"
    finally:
        p.stop()


def test_reference_client_registers_to_node_server_and_is_managed(node_server: tuple[int, str], tmp_path: Path) -> None:
    """The reference client registers to lwm2m-node-lib's server (Core 1.1.1 §6.2.1 Register) and
    answers its Read (§6.3.1) and Execute of the Registration Update Trigger /1/0/8 (§E.2)."""
    coap, api = node_server
    client = Proc([sys.executable, "-m", "reference.client.cli", "--endpoint", "ref-interop",
                   "--server-uri", f"coap://127.0.0.1:{coap}", "--lifetime", "60",
                   "--local-host", "127.0.0.1", "--state-dir", str(tmp_path)], stdin=True)
    try:
        client.wait_line(r"EVENT registered", timeout=15)
        clients = wait_until(lambda: [c for c in http("GET", f"{api}/clients") if c["endpoint"] == "ref-interop"],
                             what="node server lists ref-interop")
        assert clients[0]["lifetime"] == "60"
        manufacturer = http("GET", f"{api}/clients/ref-interop/3/0/0")
        assert manufacturer["ok"] is True and manufacturer["value"], manufacturer
        lifetime = http("GET", f"{api}/clients/ref-interop/1/0/1")
        assert lifetime == {"ok": True, "value": "60"}
        # Execute the Registration Update Trigger: the client must send an Update (or Register).
        before = len(client.lines)
        assert http("POST", f"{api}/clients/ref-interop/1/0/8")["ok"] is True
        wait_until(lambda: any(re.search(r"EVENT (updated|update-failed|registered)", x)
                               for x in client.lines[before:]), what="client reacts to /1/0/8")
        # lwm2m-node-lib writes with Content-Format 1541, a pre-standard number that no LwM2M
        # version registers (Core 1.1.1 Table 7.1.-1): the spec-correct answer is 4.15.
        write = http("PUT", f"{api}/clients/ref-interop/1/0/1", body=b"120")
        assert write == {"ok": False, "error": "CLIENT_ERROR", "code": "4.15"}, write
    finally:
        client.send("quit")
        client.stop()


@pytest.fixture
def reference_server(tmp_path: Path) -> Iterator[tuple[int, str]]:
    p = Proc([sys.executable, "-m", "reference.server.cli", "--coap-host", "127.0.0.1", "--coap-port", "0",
              "--http-host", "127.0.0.1", "--http-port", "0", "--state-dir", str(tmp_path / "server")])
    try:
        m = p.wait_line(r"lwm2m-server READY coap=[^:]+:(\d+) .*http=[^:]+:(\d+)", timeout=15)
        yield int(m.group(1)), f"http://127.0.0.1:{m.group(2)}"
    finally:
        p.stop()


def test_node_client_registers_to_reference_server_and_is_managed(reference_server: tuple[int, str]) -> None:
    """lwm2m-node-lib's client registers to the reference server (Core 1.1.1 §6.2.1; the server
    accepts an LwM2M 1.0 client) and the server reads and writes it over text/plain
    (§6.3.1 Read, §6.3.3 Write; Core 1.0.2 §6.4.1 Plain Text)."""
    coap, api = reference_server
    client = Proc(["node", str(NODE_DIR / "client.js"), "--endpoint", "node-interop",
                   "--host", "127.0.0.1", "--port", str(coap), "--lifetime", "60"], stdin=True)

    def listed() -> list[dict[str, Any]]:
        doc = http("GET", f"{api}/api/clients")
        rows = doc["clients"] if isinstance(doc, dict) else doc
        return [c for c in rows if c["endpoint"] == "node-interop"]

    try:
        client.wait_line(r"lwm2m-node-client READY", timeout=15)
        reg = wait_until(listed, what="reference server lists node-interop")[0]
        assert reg["lwm2m"] == "1.0" and reg["lifetime"] == 60, reg
        read = http("GET", f"{api}/api/clients/node-interop/data/3/0/0?format=text")
        assert read["code"] == "2.05", read
        assert bytes.fromhex(read["payload_hex"]) == b"Telefonica I+D", read
        # lwm2m-node-lib answers with a payload but no Content-Format option. RFC 7252 §5.10.3
        # gives no default format, so the reference server keeps the bytes and says why it could
        # not decode them rather than guessing.
        assert read["content_format"] is None and "no Content-Format" in read["decode_error"], read
        write = http("PUT", f"{api}/api/clients/node-interop/data/3/0/9?format=text",
                     body=json.dumps({"value": 42}).encode())
        assert write["code"] == "2.04", write
        # lwm2m-node-lib's Update carries "lwm2m=1.0", a parameter the Update operation does not
        # define (Core 1.1.1 §6.2.2: lt, b, sms; Transport 1.1.1 §6.4.3); the reference server
        # refuses the malformed Update with 4.00 Bad Request, and the registration stays as it was.
        client.send("update")
        client.wait_line(r"ERROR update .*4\.00", timeout=10)
        assert listed()[0]["location"] == reg["location"]
    finally:
        client.send("quit")
        client.stop()
