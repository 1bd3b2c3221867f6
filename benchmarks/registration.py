"""Registration throughput and memory of the reference LwM2M server.

Starts ``lwm2m-server`` as a subprocess with a durable store (SQLite, synchronous=FULL) in a
temporary directory, then registers ``--count`` new clients over raw UDP: CON Register requests
(built once with aiocoap's Message encoder, Message ID and token patched per send) from
``--sockets`` source sockets, ``--outstanding`` requests in flight in total. Lost datagrams are
retransmitted after 2 s with the same Message ID (the server's deduplication answers them).

Prints registrations/s for windows of the run (the first window is "at 1,000 registered
clients", the last "at 100,000") and the server's memory per registration (RSS delta / count,
read from /proc). Optionally (``--tracemalloc``) measures the registration index alone
in-process. Figures are printed, never asserted.

    .venv/bin/python benchmarks/registration.py --count 100000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from aiocoap import Message  # noqa: E402
from aiocoap.numbers.codes import Code  # noqa: E402
from aiocoap.numbers.types import Type  # noqa: E402

LINKS = b"</1/0>,</3/0>,</4/0>,</5/0>"


def build_bodies(count: int, prefix: str) -> list[bytes]:
    """Everything after the token of Register #i (options + payload), via aiocoap encode."""
    out = []
    for i in range(count):
        m = Message(code=Code.POST, uri_path=("rd",),
                    uri_query=(f"ep={prefix}-{i:07d}", "lt=86400", "lwm2m=1.1", "b=U"),
                    payload=LINKS, content_format=40)
        m.mtype, m.mid, m.token = Type.CON, 0, b"\x00" * 4
        out.append(m.encode()[8:])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (from /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Load:
    """The load generator: keeps ``outstanding`` Registers in flight until ``count`` are done."""

    def __init__(self, target: tuple[str, int], bodies: list[bytes], outstanding: int,
                 sockets: int) -> None:
        self.target = target
        self.bodies = bodies
        self.outstanding = outstanding
        self.nsock = sockets
        self.next = 0
        self.done = 0
        self.codes: dict[int, int] = {}
        self.retransmissions = 0
        self.inflight: dict[tuple[int, int], tuple[int, float, bytes]] = {}
        self.mids = [random.randrange(65536) for _ in range(sockets)]
        self.marks: list[tuple[int, float]] = []
        self.finished: asyncio.Future | None = None
        self.transports: list = []

    def send_next(self, s: int) -> None:
        i = self.next
        if i >= len(self.bodies):
            return
        self.next += 1
        self.mids[s] = mid = (self.mids[s] + 1) & 0xFFFF
        data = bytes((0x44, 0x02, mid >> 8, mid & 0xFF)) + i.to_bytes(4, "big") + self.bodies[i]
        self.inflight[(s, mid)] = (i, time.monotonic(), data)
        self.transports[s].sendto(data)

    def received(self, s: int, data: bytes) -> None:
        if len(data) < 4:
            return
        mid = (data[2] << 8) | data[3]
        if self.inflight.pop((s, mid), None) is None:
            return  # duplicate answer to a retransmission
        self.codes[data[1]] = self.codes.get(data[1], 0) + 1
        self.done += 1
        if self.done % 1000 == 0:
            self.marks.append((self.done, time.perf_counter()))
        if self.done == len(self.bodies):
            if self.finished is not None and not self.finished.done():
                self.finished.set_result(None)
        else:
            self.send_next(s)

    async def retransmitter(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for (s, mid), (i, t, data) in list(self.inflight.items()):
                if now - t > 2.0:
                    self.inflight[(s, mid)] = (i, now, data)
                    self.retransmissions += 1
                    self.transports[s].sendto(data)

    async def run(self) -> float:
        loop = asyncio.get_running_loop()
        self.finished = loop.create_future()
        for s in range(self.nsock):
            proto = _Proto(self, s)
            tr, _ = await loop.create_datagram_endpoint(lambda p=proto: p, remote_addr=self.target)
            self.transports.append(tr)
        rt = loop.create_task(self.retransmitter())
        t0 = time.perf_counter()
        self.marks.append((0, t0))
        for k in range(self.outstanding):
            self.send_next(k % self.nsock)
        await asyncio.wait_for(self.finished, timeout=600)
        t1 = time.perf_counter()
        rt.cancel()
        for tr in self.transports:
            tr.close()
        return t1 - t0


class _Proto(asyncio.DatagramProtocol):
    def __init__(self, load: Load, s: int) -> None:
        self.load, self.s = load, s

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.load.received(self.s, data)


def start_server(state_dir: str, extra: list[str]) -> tuple[subprocess.Popen, dict[str, str]]:
    cmd = [sys.executable, "-m", "reference.server.cli", "--coap-port", "0", "--http-port", "0",
           "--state-dir", state_dir, "--log-level", "WARNING", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    if "READY" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    addrs = dict(kv.split("=", 1) for kv in line.split()[2:])
    return proc, addrs


def window_rate(marks: list[tuple[int, float]], lo: int, hi: int) -> float | None:
    pts = dict(marks)
    if lo not in pts or hi not in pts or pts[hi] <= pts[lo]:
        return None
    return (hi - lo) / (pts[hi] - pts[lo])


def tracemalloc_index(count: int) -> float:
    """Bytes per registration of the in-memory index alone (Registration objects, the two
    dicts and the expiry heap), measured with tracemalloc in this process."""
    import tracemalloc
    from reference.server.registration import Registration, _intern
    from reference.server.store import RegistrationStore

    store = RegistrationStore(None)
    store._loop = None  # writes are not scheduled: only the index is measured
    links = LINKS.decode()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    now = time.time()
    for i in range(count):
        ep = f"bench-{i:07d}"
        reg = Registration(ep, os.urandom(5).hex(), _intern(86400), _intern("1.1"), _intern("U"),
                           None, False, links, "127.0.0.1", 40000 + i % 20000, now, now,
                           now + 86400, None, i + 1)
        store._index(reg)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000, help="registrations (default %(default)s)")
    ap.add_argument("--outstanding", type=int, default=32, help="requests in flight (default %(default)s)")
    ap.add_argument("--sockets", type=int, default=8, help="source UDP sockets (default %(default)s)")
    ap.add_argument("--window", type=int, default=1000, help="rate window in registrations (default %(default)s)")
    ap.add_argument("--tracemalloc", action="store_true", help="also measure the index in-process")
    ap.add_argument("--server-arg", action="append", default=[], help="extra lwm2m-server argument")
    ap.add_argument("--target", help="HOST:PORT of an already running server (no RSS figures)")
    args = ap.parse_args()

    print(f"building {args.count} Register requests ...", flush=True)
    bodies = build_bodies(args.count, f"bench{os.getpid()}")
    if args.target:
        host, port = args.target.rsplit(":", 1)
        load = Load((host, int(port)), bodies, args.outstanding, args.sockets)
        elapsed = asyncio.run(load.run())
        print(f"{args.count / elapsed:,.0f} registrations/s; responses {load.codes}; "
              f"retransmissions {load.retransmissions}")
        return 0
    with tempfile.TemporaryDirectory(prefix="lwm2m-bench-") as state:
        proc, addrs = start_server(state, args.server_arg)
        try:
            host, port = addrs["coap"].rsplit(":", 1)
            time.sleep(0.5)
            rss0 = rss_kib(proc.pid)
            cpu0 = cpu_seconds(proc.pid)
            load = Load((host, int(port)), bodies, args.outstanding, args.sockets)
            elapsed = asyncio.run(load.run())
            cpu1 = cpu_seconds(proc.pid)
            time.sleep(0.5)
            rss1 = rss_kib(proc.pid)
            with urllib.request.urlopen(f"http://{addrs['http']}/api/server", timeout=10) as r:
                info = json.load(r)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    n = args.count
    w = args.window
    codes = {f"{c >> 5}.{c & 31:02d}": k for c, k in sorted(load.codes.items())}
    print(f"registered {n} clients in {elapsed:.2f} s: {n / elapsed:,.0f} registrations/s overall")
    print(f"responses: {codes}; client retransmissions: {load.retransmissions}")
    print(f"server: {info['registrations']} registrations listed, {info['store']['commits']} "
          f"commits ({info['store']['rows_written'] / max(1, info['store']['commits']):.1f} rows/commit), "
          f"{info['store']['commit_seconds']:.2f} s waiting for COMMITs (max {info['store']['commit_max_seconds'] * 1e3:.1f} ms; "
          f"{info['store']['commit_statement_seconds']:.2f} s in the COMMIT statements), "
          f"{info['store']['stage_seconds']:.2f} s executing statements")
    print(f"server CPU: {cpu1 - cpu0:.2f} s = {(cpu1 - cpu0) * 1e6 / n:,.0f} us per registration "
          f"({(cpu1 - cpu0) / elapsed * 100:.0f}% of one core)")
    first = window_rate(load.marks, 0, min(w, n))
    last = window_rate(load.marks, max(0, (n // 1000) * 1000 - w), (n // 1000) * 1000)
    if first:
        print(f"rate at {min(w, n):,} registered clients (registrations 1..{min(w, n)}): {first:,.0f}/s")
    if last and n > w:
        print(f"rate at {n:,} registered clients (last {w} registrations): {last:,.0f}/s")
    step = max(w, (n // 10) // 1000 * 1000)
    rates = []
    for hi in range(step, n + 1, step):
        r = window_rate(load.marks, hi - w, hi) if hi - w >= 0 else None
        if r:
            rates.append(f"{hi // 1000}k:{r:,.0f}")
    if rates:
        print("rate over the run (window ending at N registered: reg/s): " + "  ".join(rates))
    print(f"server RSS {rss0 / 1024:.1f} MiB -> {rss1 / 1024:.1f} MiB: "
          f"{(rss1 - rss0) * 1024 / n:,.0f} bytes per registration (RSS delta / count)")
    if args.tracemalloc:
        print(f"in-memory index alone (tracemalloc, {n} registrations): "
              f"{tracemalloc_index(n):,.0f} bytes per registration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
