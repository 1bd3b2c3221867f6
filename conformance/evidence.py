"""Evidence of a test case: recorded datagrams (proxy), pcap, steps, DUT output files.

Every conformance test gets a :class:`Recorder` (fixture ``evidence``) writing into its own
directory ``<report-dir>/evidence/<test>/``:

* ``exchange.jsonl`` - one JSON object per datagram (time, proxy, direction, src, dst, hex, decoded)
* ``capture.pcap``   - the datagrams as Ethernet/IPv4(or 6)/UDP frames with the real loopback
  addresses and ports of the DUT-facing leg of each proxy
* ``tshark.txt``     - the exact command that dissects it: ports are dynamic, so Wireshark will
  not pick CoAP by itself (``tshark -d udp.port==N,coap -r capture.pcap``)
* ``exchange.svg``   - the message-sequence diagram of the exchange
* ``result.json``    - steps, notes, files; read by the report writer on the controller
* the DUT's ``*.stdout.log`` / ``*.stderr.log`` and state directories

:class:`UdpProxy` sits between the suite and the DUT and forwards datagrams both ways, keeping one
upstream socket per distinct downstream source address so that an address change on one side
stays visible on the other (a client DUT that moves to a new port appears to the suite's server
at a new address too).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from conformance.coapview import describe

Addr = tuple[str, int]
_CURRENT: "Recorder | None" = None


def current() -> "Recorder | None":
    """The recorder of the running test (set by the plugin), or None outside a conformance test."""
    return _CURRENT


def set_current(rec: "Recorder | None") -> None:
    global _CURRENT
    _CURRENT = rec


def safe_name(nodeid: str, limit: int = 100) -> str:
    """Directory-safe, unique name for a test node id."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", nodeid.split("::", 1)[-1]).strip("_")[:limit]
    return f"{base}-{hashlib.sha1(nodeid.encode()).hexdigest()[:8]}"


@dataclass
class Datagram:
    """One UDP datagram on the DUT-facing leg of a proxy."""

    t: float
    proxy: str
    direction: str  # "to-dut" | "from-dut"
    src: Addr
    dst: Addr
    data: bytes
    note: str = ""

    def summary(self) -> str:
        d = describe(self.data)
        arrow = "->" if self.direction == "to-dut" else "<-"
        stamp = time.strftime("%H:%M:%S", time.localtime(self.t)) + f".{int(self.t * 1000) % 1000:03d}"
        return (f"{stamp} [{self.proxy}] suite {arrow} DUT  {self.src[0]}:{self.src[1]} > "
                f"{self.dst[0]}:{self.dst[1]}  {d.detail}" + (f"  ({self.note})" if self.note else ""))

    def as_json(self) -> dict[str, Any]:
        d = describe(self.data)
        return {"t": self.t, "proxy": self.proxy, "direction": self.direction, "src": list(self.src),
                "dst": list(self.dst), "len": len(self.data), "hex": self.data.hex(), "kind": d.kind,
                "label": d.label, "detail": d.detail, "request": d.is_request, "note": self.note}


@dataclass
class Step:
    title: str
    start: float
    end: float = 0.0
    outcome: str = "running"  # passed | failed | running | note
    error: str = ""
    depth: int = 0

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Recorder:
    """Evidence of one test. ``note()`` timeline lines, ``step()`` blocks, ``add_file()``,
    datagrams from proxies; ``finish()`` writes the files listed in the module docstring."""

    def __init__(self, directory: Path, nodeid: str) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.nodeid = nodeid
        self.datagrams: list[Datagram] = []
        self.steps: list[Step] = []
        self.files: list[tuple[str, Path]] = []
        self.decode_as: dict[int, str] = {}  # udp port -> "coap" | "dtls"
        self._depth = 0
        self.started = time.time()

    # -- timeline ------------------------------------------------------------------------------
    def note(self, text: str) -> None:
        now = time.time()
        self.steps.append(Step(text, now, now, "note", depth=self._depth))

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Step]:
        st = Step(title, time.time(), depth=self._depth)
        self.steps.append(st)
        self._depth += 1
        try:
            yield st
        except BaseException as exc:
            st.outcome = "failed"
            st.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            raise
        else:
            st.outcome = "passed"
        finally:
            st.end = time.time()
            self._depth -= 1

    def add_file(self, label: str, path: Path) -> None:
        if all(p != path for _, p in self.files):
            self.files.append((label, path))

    def record(self, dg: Datagram) -> None:
        self.datagrams.append(dg)

    def exchange_lines(self, last: int | None = None) -> list[str]:
        dgs = self.datagrams if last is None else self.datagrams[-last:]
        return [d.summary() for d in dgs]

    # -- output --------------------------------------------------------------------------------
    @property
    def pcap_path(self) -> Path:
        return self.dir / "capture.pcap"

    def tshark_command(self) -> str:
        args = ["tshark"]
        for port, proto in sorted(self.decode_as.items()):
            args += ["-d", f"udp.port=={port},{proto}"]
        args += ["-r", str(self.pcap_path)]
        return " ".join(shlex.quote(a) for a in args)

    def write_pcap(self) -> Path | None:
        if not self.datagrams:
            return None
        from scapy.layers.inet import IP, UDP
        from scapy.layers.inet6 import IPv6
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw
        from scapy.utils import PcapWriter

        writer = PcapWriter(str(self.pcap_path), linktype=1, sync=False)
        try:
            for d in sorted(self.datagrams, key=lambda x: x.t):
                ip = IPv6(src=d.src[0], dst=d.dst[0]) if ":" in d.src[0] else IP(src=d.src[0], dst=d.dst[0])
                pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / UDP(sport=d.src[1], dport=d.dst[1]) / Raw(d.data)
                pkt.time = d.t
                writer.write(pkt)
        finally:
            writer.close()
        return self.pcap_path

    def finish(self, **extra: Any) -> dict[str, Any]:
        """Write every evidence file; return the result dict (also stored as result.json).

        Never raises for a file-system problem (e.g. another run sharing the report directory
        removed it): evidence is best effort and must not change a verdict; the problem is
        returned under ``"evidence_error"``."""
        try:
            return self._finish(**extra)
        except OSError as exc:
            return {"nodeid": self.nodeid, "steps": [s.as_json() for s in self.steps], "files": [],
                    "pcap": None, "tshark": None, "datagrams": len(self.datagrams),
                    "evidence_error": f"{type(exc).__name__}: {exc}", **extra}

    def _finish(self, **extra: Any) -> dict[str, Any]:
        from conformance.report_svg import sequence_svg

        self.dir.mkdir(parents=True, exist_ok=True)
        for st in self.steps:
            if st.outcome == "running":
                st.outcome, st.end = "failed", time.time()
        with open(self.dir / "exchange.jsonl", "w") as fh:
            for d in self.datagrams:
                fh.write(json.dumps(d.as_json()) + "\n")
        pcap = self.write_pcap()
        result: dict[str, Any] = {
            "nodeid": self.nodeid, "started": self.started, "finished": time.time(),
            "steps": [s.as_json() for s in self.steps], "datagrams": len(self.datagrams),
            "files": [{"label": label, "path": str(p)} for label, p in self.files if p.exists()],
            "pcap": str(pcap) if pcap else None, "tshark": self.tshark_command() if pcap else None,
            "exchange": str(self.dir / "exchange.jsonl"),
        }
        if pcap:
            (self.dir / "tshark.txt").write_text(result["tshark"] + "\n")
        if self.datagrams:
            uid = hashlib.sha1(str(self.dir).encode()).hexdigest()[:10]  # unique once inlined
            svg = sequence_svg([d.as_json() for d in self.datagrams], uid=uid)
            (self.dir / "exchange.svg").write_text(svg)
            result["svg"] = str(self.dir / "exchange.svg")
        result.update(extra)
        (self.dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
        return result


# -- step() for test code ----------------------------------------------------------------------

class step:  # noqa: N801 - used as a context manager like allure.step
    """``with step("Client registers"):`` - a named test step shown in the HTML report (with its
    outcome and timing) and as an allure step. Works in sync and async tests, nests."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._cm: Any = None
        self._allure: Any = None

    def __enter__(self) -> "step":
        rec = current()
        if rec is not None:
            self._cm = rec.step(self.title)
            self._cm.__enter__()
        try:
            import allure

            self._allure = allure.step(self.title)
            self._allure.__enter__()
        except Exception:  # allure absent or inactive: the HTML report still has the step
            self._allure = None
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        if self._allure is not None:
            self._allure.__exit__(et, ev, tb)
        if self._cm is not None:
            self._cm.__exit__(et, ev, tb)
        return False

    async def __aenter__(self) -> "step":
        return self.__enter__()

    async def __aexit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return self.__exit__(et, ev, tb)


# -- the recording proxy -----------------------------------------------------------------------

Interceptor = Callable[[str, bytes], "bytes | None"]


class _Downstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: "UdpProxy") -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.proxy._from_downstream(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable etc.: keep going
        pass


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: "UdpProxy", downstream_addr: Addr) -> None:
        self.proxy = proxy
        self.downstream_addr = downstream_addr
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.proxy._from_upstream(self, data)

    def error_received(self, exc: Exception) -> None:
        pass


class UdpProxy:
    """A recording UDP relay: downstream peers talk to :attr:`address`; datagrams go to ``target``.

    ``dut_side`` says where the DUT is: ``"downstream"`` (a client DUT sends to the proxy, the
    suite's server is the target) or ``"upstream"`` (the DUT is the target: a server DUT, the
    suite's client sends to the proxy). The DUT-facing leg is what is recorded and written to the
    pcap, with real addresses and ports. ``protocol`` (coap|dtls) only tells tshark how to decode.

    ``interceptor(direction, data)`` may return modified bytes (tampering) or None (drop); the
    record then carries a note. ``direction`` is "to-dut" or "from-dut".
    """

    def __init__(self, recorder: Recorder | None, target: Addr, *, name: str = "proxy", dut_side: str = "downstream",
                 protocol: str = "coap", listen_host: str = "127.0.0.1") -> None:
        if dut_side not in ("downstream", "upstream"):
            raise ValueError("dut_side must be 'downstream' or 'upstream'")
        if protocol not in ("coap", "dtls"):
            raise ValueError("protocol must be 'coap' or 'dtls'")
        self.recorder = recorder
        self.target = (target[0], int(target[1]))
        self.name = name
        self.dut_side = dut_side
        self.protocol = protocol
        self.listen_host = listen_host
        self.interceptor: Interceptor | None = None
        self.datagrams: list[Datagram] = []
        self._down: asyncio.DatagramTransport | None = None
        self._ups: dict[Addr, _Upstream] = {}
        self._pending: dict[Addr, list[tuple[bytes, str]]] = {}
        self._arrived = asyncio.Event()
        self.closed = False

    async def start(self) -> "UdpProxy":
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        self._down, _ = await loop.create_datagram_endpoint(lambda: _Downstream(self), local_addr=(self.listen_host, 0),
                                                            family=family)
        if self.recorder is not None:
            port = self.address[1] if self.dut_side == "downstream" else self.target[1]
            self.recorder.decode_as[port] = self.protocol
        return self

    @property
    def address(self) -> Addr:
        assert self._down is not None, "proxy not started"
        host, port = self._down.get_extra_info("sockname")[:2]
        return host, port

    @property
    def uri(self) -> str:
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{'coaps' if self.protocol == 'dtls' else 'coap'}://{host}:{port}"

    @property
    def peers(self) -> list[Addr]:
        """Distinct downstream source addresses seen so far (e.g. a client DUT's addresses)."""
        return list(self._ups)

    def upstream_address(self, downstream: Addr) -> Addr | None:
        """The address the target sees for downstream peer ``downstream``."""
        up = self._ups.get(downstream)
        if up is None or up.transport is None:
            return None
        host, port = up.transport.get_extra_info("sockname")[:2]
        return host, port

    # -- relay ---------------------------------------------------------------------------------
    def _record(self, direction: str, src: Addr, dst: Addr, data: bytes, note: str = "") -> None:
        dg = Datagram(time.time(), self.name, direction, src, dst, data, note)
        self.datagrams.append(dg)
        if self.recorder is not None:
            self.recorder.record(dg)
        self._arrived.set()

    def _intercept(self, direction: str, data: bytes) -> tuple[bytes | None, str]:
        if self.interceptor is None:
            return data, ""
        out = self.interceptor(direction, data)
        if out is None:
            return None, "dropped by test"
        return out, ("modified by test" if out != data else "")

    def _from_downstream(self, data: bytes, addr: Addr) -> None:
        if self.closed:
            return
        direction = "from-dut" if self.dut_side == "downstream" else "to-dut"
        out, note = self._intercept(direction, data)
        if self.dut_side == "downstream":
            self._record(direction, addr, self.address, data, note)
        up = self._ups.get(addr)
        if up is None or up.transport is None:
            # first datagram from this address: open its own upstream socket, send when ready
            if out is not None:
                self._pending.setdefault(addr, []).append((out, note))
            if up is None:
                asyncio.ensure_future(self._open_upstream(addr))
            return
        if out is not None:
            self._send_up(up, addr, out, note)

    def _send_up(self, up: _Upstream, addr: Addr, data: bytes, note: str) -> None:
        assert up.transport is not None
        up.transport.sendto(data)
        if self.dut_side == "upstream":
            self._record("to-dut", self.upstream_address(addr) or addr, self.target, data, note)

    async def _open_upstream(self, addr: Addr) -> None:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET
        proto = _Upstream(self, addr)
        self._ups[addr] = proto
        try:
            await loop.create_datagram_endpoint(lambda: proto, remote_addr=self.target, family=family)
        except OSError:
            del self._ups[addr]
            self._pending.pop(addr, None)
            return
        for data, note in self._pending.pop(addr, []):
            self._send_up(proto, addr, data, note)

    def _from_upstream(self, up: _Upstream, data: bytes) -> None:
        if self.closed or self._down is None:
            return
        direction = "to-dut" if self.dut_side == "downstream" else "from-dut"
        if self.dut_side == "upstream":
            self._record(direction, self.target, self.upstream_address(up.downstream_addr) or up.downstream_addr, data)
        out, note = self._intercept(direction, data)
        if self.dut_side == "downstream":
            self._record(direction, self.address, up.downstream_addr, data if out is None else out, note)
        if out is not None:
            self._down.sendto(out, up.downstream_addr)

    async def wait_for(self, predicate: Callable[[Datagram], bool], timeout: float, *, since: int = 0) -> Datagram:
        """First recorded datagram (index >= ``since``) satisfying ``predicate``; asyncio.TimeoutError
        after ``timeout`` s. Use ``len(proxy.datagrams)`` as ``since`` to wait for new traffic."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        i = since
        while True:
            while i < len(self.datagrams):
                d = self.datagrams[i]
                i += 1
                if predicate(d):
                    return d
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"no matching datagram on proxy {self.name} within {timeout:g} s")
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        self.closed = True
        for up in self._ups.values():
            if up.transport is not None:
                up.transport.close()
        if self._down is not None:
            self._down.close()
        await asyncio.sleep(0)
