"""Registration throughput and memory of the reference LwM2M server (GitHub issue #2).

Starts ``lwm2m-server`` as a subprocess with a durable store (SQLite WAL, ``synchronous=FULL``)
in a temporary directory, then registers ``--count`` new clients over raw UDP: CON Register
requests (built once with aiocoap's Message encoder, Message ID and token patched per send) from
``--sockets`` source sockets, ``--outstanding`` requests in flight in total. Lost datagrams are
retransmitted after 2 s with the same Message ID (the server's deduplication answers them).

Prints, per run and (with ``--repeat``) as medians over the runs:

* the fsync latency of the disk under the state directory, measured before and after the load
  (4 KiB overwrite + ``fdatasync``), so that a slow-disk day shows in the output;
* the durability contract in force (what has happened on disk when the 2.01 is sent);
* registrations/s in windows of ``--window`` registrations centred on ~1k, ~10k, ~50k and
  ~100k registered clients, and the server CPU per registration in those windows;
* the overall rate, the server's group-commit statistics, its garbage-collector pauses;
* with ``--paired K``: the rate at ~1k and at ~``count`` registered clients measured in K
  interleaved pairs (same machine noise for both halves of a pair) and the median ratio;
* memory per registration: RSS delta / count (everything the server holds, including the
  duplicate-detection cache that CoAP keeps for EXCHANGE_LIFETIME) and, with ``--tracemalloc``,
  the in-memory index alone.

Figures are printed, never asserted. The machine is shared: repeat (``--repeat 3``) and read
medians.

    .venv/bin/python benchmarks/registration.py --count 100000 --repeat 3 --paired 7 --tracemalloc
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
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
CENTRES = (1_000, 10_000, 50_000, 100_000)  # "rate at ~N registered clients"
MARK_EVERY = 100  # completions between two time marks


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


def fsync_latency(directory: str, samples: int = 200) -> dict[str, float]:
    """Latency of one 4 KiB overwrite + fdatasync in ``directory`` (milliseconds):
    median, p90, p99, max over ``samples`` syncs. The floor under every durable commit."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, os.urandom(4096), 0)
        os.fsync(fd)
        lat = []
        for _ in range(samples):
            os.pwrite(fd, os.urandom(4096), 0)
            t = time.perf_counter()
            os.fdatasync(fd)
            lat.append((time.perf_counter() - t) * 1e3)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return {"median": statistics.median(lat), "p90": lat[int(0.9 * len(lat))],
            "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))], "max": lat[-1]}


class Load:
    """The load generator: keeps ``outstanding`` Registers in flight until ``count`` are done.

    ``marks`` holds ``(done, perf_counter)`` every :data:`MARK_EVERY` completions; ``cpu_marks``
    ``(done, server CPU seconds)`` every 1000 when ``server_pid`` is given."""

    def __init__(self, target: tuple[str, int], bodies: list[bytes], outstanding: int,
                 sockets: int, server_pid: int | None = None) -> None:
        self.target = target
        self.bodies = bodies
        self.outstanding = outstanding
        self.nsock = sockets
        self.server_pid = server_pid
        self.next = 0
        self.done = 0
        self.codes: dict[int, int] = {}
        self.retransmissions = 0
        self.inflight: dict[tuple[int, int], tuple[int, float, bytes]] = {}
        self.mids = [random.randrange(65536) for _ in range(sockets)]
        self.marks: list[tuple[int, float]] = []
        self.cpu_marks: list[tuple[int, float]] = []
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
        if self.done % MARK_EVERY == 0:
            self.marks.append((self.done, time.perf_counter()))
            if self.server_pid is not None and self.done % 1000 == 0:
                self.cpu_marks.append((self.done, cpu_seconds(self.server_pid)))
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
        if self.server_pid is not None:
            self.cpu_marks.append((0, cpu_seconds(self.server_pid)))
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
    """Registrations/s between the ``lo``-th and ``hi``-th completion."""
    pts = dict(marks)
    if lo not in pts or hi not in pts or pts[hi] <= pts[lo]:
        return None
    return (hi - lo) / (pts[hi] - pts[lo])


def windows(count: int, width: int) -> list[tuple[str, int, int]]:
    """``(label, lo, hi)`` for the windows centred on :data:`CENTRES` (clipped to the run)."""
    out = []
    for c in CENTRES:
        if c > count:
            break
        lo = max(0, min(c - width // 2, count - width))
        lo -= lo % MARK_EVERY
        hi = min(count, lo + width)
        out.append((f"~{c // 1000}k", lo, hi))
    if count not in CENTRES and count > 2 * width:
        lo = (count - width) - (count - width) % MARK_EVERY
        out.append((f"~{count / 1000:g}k", lo, count))
    return out


def cpu_per_reg(cpu_marks: list[tuple[int, float]], lo: int, hi: int) -> float | None:
    """Server CPU microseconds per registration between the marks nearest ``lo`` and ``hi``."""
    if len(cpu_marks) < 2:
        return None
    a = min(cpu_marks, key=lambda m: abs(m[0] - lo))
    b = min(cpu_marks, key=lambda m: abs(m[0] - hi))
    if b[0] <= a[0]:
        return None
    return (b[1] - a[1]) * 1e6 / (b[0] - a[0])


def durability(server_args: list[str]) -> str:
    """The contract the server runs under, from the flags given to it."""
    args = " ".join(server_args)
    if ":memory:" in args:
        return "NOT durable (--state-dir :memory:): 2.01 sent after the in-memory index changed"
    sync = "normal" if "--store-sync normal" in args or "--store-sync=normal" in args else "full"
    if sync == "full":
        return ("durable against power loss: 2.01 sent only after the group commit holding the "
                "registration returned from COMMIT with SQLite WAL synchronous=FULL "
                "(WAL fsynced); concurrent registrations share one commit")
    return ("durable against a server crash only (--store-sync normal: WAL written, not "
            "fsynced, before the 2.01)")


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


def one_run(args: argparse.Namespace, bodies: list[bytes]) -> dict:
    """One fresh server, one load; returns the figures of the run."""
    n, w = args.count, args.window
    res: dict = {}
    with tempfile.TemporaryDirectory(prefix="lwm2m-bench-", dir=args.dir) as state:
        res["fsync_before"] = fsync_latency(state)
        proc, addrs = start_server(state, args.server_arg)
        try:
            host, port = addrs["coap"].rsplit(":", 1)
            time.sleep(0.5)
            rss0 = rss_kib(proc.pid)
            cpu0 = cpu_seconds(proc.pid)
            load = Load((host, int(port)), bodies, args.outstanding, args.sockets, proc.pid)
            elapsed = asyncio.run(load.run())
            cpu1 = cpu_seconds(proc.pid)
            time.sleep(0.5)
            rss1 = rss_kib(proc.pid)
            with urllib.request.urlopen(f"http://{addrs['http']}/api/server", timeout=10) as r:
                info = json.load(r)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        res["fsync_after"] = fsync_latency(state)
    st = info["store"]
    res.update(
        overall=n / elapsed, elapsed=elapsed, listed=info["registrations"],
        codes={f"{c >> 5}.{c & 31:02d}": k for c, k in sorted(load.codes.items())},
        retransmissions=load.retransmissions, commits=st["commits"],
        rows_per_commit=st["rows_written"] / max(1, st["commits"]),
        commit_ms=st["commit_seconds"] * 1e3 / max(1, st["commits"]),
        commit_stmt_ms=st["commit_statement_seconds"] * 1e3 / max(1, st["commits"]),
        commit_max_ms=st["commit_max_seconds"] * 1e3,
        cpu_us=(cpu1 - cpu0) * 1e6 / n, cpu_share=(cpu1 - cpu0) / elapsed,
        rss_bytes=(rss1 - rss0) * 1024 / n, rss0=rss0 / 1024, rss1=rss1 / 1024,
        windows={label: (lo, hi, window_rate(load.marks, lo, hi),
                         cpu_per_reg(load.cpu_marks, lo, hi))
                 for label, lo, hi in windows(n, w)},
        profile=[(hi, window_rate(load.marks, hi - w, hi))
                 for hi in range(max(w, (n // 10) // 1000 * 1000), n + 1,
                                 max(w, (n // 10) // 1000 * 1000)) if hi - w >= 0],
    )
    return res


def paired_run(args: argparse.Namespace) -> dict:
    """Rate at ~1k against rate at ~``count`` registered clients under the same machine noise:
    a server is filled to ``count - paired * window`` registrations, then ``paired`` times in
    turn a *fresh* server registers ``window`` clients (registered: 0..window) and the big one
    registers ``window`` more. Each pair runs within a second or two, so a busy or slow-disk
    moment hits both halves; the median of the per-pair ratios is the answer to "is the rate
    at 100,000 the same as at 1,000?"."""
    n, w, k = args.count, args.window, args.paired
    fill = max(0, n - k * w)
    pairs = []
    with tempfile.TemporaryDirectory(prefix="lwm2m-bench-", dir=args.dir) as state:
        big, big_addrs = start_server(os.path.join(state, "big"), args.server_arg)
        try:
            host, port = big_addrs["coap"].rsplit(":", 1)
            if fill:
                asyncio.run(Load((host, int(port)), build_bodies(fill, f"fill{os.getpid()}"),
                                 args.outstanding, args.sockets).run())
            for i in range(k):
                small_dir = os.path.join(state, f"small{i}")
                small, small_addrs = start_server(small_dir, args.server_arg)
                try:
                    shost, sport = small_addrs["coap"].rsplit(":", 1)
                    time.sleep(0.2)
                    ls = Load((shost, int(sport)), build_bodies(w, f"s{i}p{os.getpid()}"),
                              args.outstanding, args.sockets, small.pid)
                    r_small = w / asyncio.run(ls.run())
                finally:
                    small.terminate()
                    small.wait(timeout=60)
                lb = Load((host, int(port)), build_bodies(w, f"b{i}p{os.getpid()}"),
                          args.outstanding, args.sockets, big.pid)
                r_big = w / asyncio.run(lb.run())
                pairs.append((r_small, r_big, fill + i * w + w // 2,
                              cpu_per_reg(ls.cpu_marks, 0, w), cpu_per_reg(lb.cpu_marks, 0, w)))
        finally:
            big.terminate()
            try:
                big.wait(timeout=60)
            except subprocess.TimeoutExpired:
                big.kill()
    return {"pairs": pairs, "fill": fill}


def _fs(d: dict[str, float]) -> str:
    return (f"median {d['median']:.2f} ms, p90 {d['p90']:.2f} ms, p99 {d['p99']:.2f} ms, "
            f"max {d['max']:.2f} ms")


def print_run(k: int, r: dict) -> None:
    print(f"--- run {k}: {r['overall']:,.0f} registrations/s overall ({r['elapsed']:.1f} s); "
          f"responses {r['codes']}; retransmissions {r['retransmissions']}; "
          f"{r['listed']} listed")
    print(f"    disk fsync before: {_fs(r['fsync_before'])}")
    print(f"    disk fsync after:  {_fs(r['fsync_after'])}")
    print("    windows: " + "  ".join(
        f"{label} ({lo + 1}..{hi}): {rate:,.0f}/s" + (f" {cpu:,.0f}us" if cpu else "")
        for label, (lo, hi, rate, cpu) in r["windows"].items() if rate))
    print("    profile (window ending at N: reg/s): " + "  ".join(
        f"{hi // 1000}k:{rate:,.0f}" for hi, rate in r["profile"] if rate))
    print(f"    commits {r['commits']} ({r['rows_per_commit']:.1f} rows each), "
          f"{r['commit_ms']:.2f} ms per commit hand-off ({r['commit_stmt_ms']:.2f} ms in COMMIT), "
          f"max {r['commit_max_ms']:.1f} ms; server CPU {r['cpu_us']:,.0f} us/registration "
          f"({r['cpu_share'] * 100:.0f}% of one core); RSS {r['rss0']:.1f} -> {r['rss1']:.1f} MiB "
          f"= {r['rss_bytes']:,.0f} B/registration", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=100_000, help="registrations (default %(default)s)")
    ap.add_argument("--outstanding", type=int, default=32, help="requests in flight (default %(default)s)")
    ap.add_argument("--sockets", type=int, default=8, help="source UDP sockets (default %(default)s)")
    ap.add_argument("--window", type=int, default=2000,
                    help="registrations per rate window (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=1, help="runs, each on a fresh server; "
                    "medians are printed (default %(default)s)")
    ap.add_argument("--paired", type=int, default=0, metavar="K",
                    help="also compare ~1k and ~COUNT registered clients in K interleaved pairs "
                         "of windows (see paired_run; default: off)")
    ap.add_argument("--tracemalloc", action="store_true", help="also measure the index in-process")
    ap.add_argument("--server-arg", action="append", default=[], help="extra lwm2m-server argument")
    ap.add_argument("--dir", default=None, help="parent of the state directory (default: $TMPDIR)")
    ap.add_argument("--target", help="HOST:PORT of an already running server (rate only)")
    args = ap.parse_args()
    args.window = max(MARK_EVERY, args.window - args.window % MARK_EVERY)

    print(f"building {args.count} Register requests ...", flush=True)
    if args.target:
        bodies = build_bodies(args.count, f"bench{os.getpid()}")
        host, port = args.target.rsplit(":", 1)
        load = Load((host, int(port)), bodies, args.outstanding, args.sockets)
        elapsed = asyncio.run(load.run())
        print(f"{args.count / elapsed:,.0f} registrations/s; responses {load.codes}; "
              f"retransmissions {load.retransmissions}")
        return 0
    print(f"durability: {durability(args.server_arg)}")
    print(f"load: {args.count} new clients, {args.outstanding} Registers in flight from "
          f"{args.sockets} UDP sockets; windows of {args.window} registrations", flush=True)
    runs = []
    for k in range(1, args.repeat + 1):
        bodies = build_bodies(args.count, f"bench{os.getpid()}r{k}")
        runs.append(one_run(args, bodies))
        del bodies
        print_run(k, runs[-1])
    med = statistics.median
    print(f"=== {'median of ' + str(len(runs)) + ' runs' if len(runs) > 1 else 'result'} "
          f"({args.count} registrations) ===")
    print(f"disk fsync latency (4 KiB + fdatasync) at start: "
          f"median {med(r['fsync_before']['median'] for r in runs):.2f} ms, "
          f"p99 {med(r['fsync_before']['p99'] for r in runs):.2f} ms; at end: "
          f"median {med(r['fsync_after']['median'] for r in runs):.2f} ms, "
          f"p99 {med(r['fsync_after']['p99'] for r in runs):.2f} ms")
    print(f"durability: {durability(args.server_arg)}")
    for label, (lo, hi, _, _) in runs[0]["windows"].items():
        rates = [r["windows"][label][2] for r in runs if r["windows"][label][2]]
        cpus = [r["windows"][label][3] for r in runs if r["windows"][label][3]]
        if rates:
            print(f"rate at {label} registered clients (registrations {lo + 1}..{hi}): "
                  f"{med(rates):,.0f}/s" + (f", server CPU {med(cpus):,.0f} us/registration"
                                             if cpus else ""))
    print(f"overall: {med(r['overall'] for r in runs):,.0f} registrations/s; server CPU "
          f"{med(r['cpu_us'] for r in runs):,.0f} us/registration; "
          f"{med(r['rows_per_commit'] for r in runs):.1f} registrations per group commit, "
          f"{med(r['commit_ms'] for r in runs):.2f} ms per commit")
    print(f"memory: {med(r['rss_bytes'] for r in runs):,.0f} bytes per registration "
          f"(server RSS delta / count; includes the CoAP duplicate-detection cache, kept "
          f"EXCHANGE_LIFETIME = 247 s, and the bounded event history)")
    if args.paired:
        p = paired_run(args)
        print(f"paired comparison ({args.paired} pairs of {args.window} registrations, each pair "
              f"back to back; the big server filled to {p['fill']:,} first):")
        for rs, rb, at, cs, cb in p["pairs"]:
            print(f"    at ~1k: {rs:,.0f}/s" + (f" ({cs:,.0f} us)" if cs else "")
                  + f"   at ~{at / 1000:,.0f}k: {rb:,.0f}/s" + (f" ({cb:,.0f} us)" if cb else "")
                  + f"   ratio {rb / rs:.2f}")
        ratios = [rb / rs for rs, rb, *_ in p["pairs"]]
        big_at = f"~{med(at for _, _, at, *_ in p['pairs']) / 1000:,.0f}k"
        print(f"paired: median rate at ~1k {med(rs for rs, *_ in p['pairs']):,.0f}/s, at "
              f"{big_at} {med(rb for _, rb, *_ in p['pairs']):,.0f}/s; median "
              f"ratio ({big_at} / ~1k) {med(ratios):.2f}")
    if args.tracemalloc:
        print(f"memory: in-memory registration index alone (tracemalloc, {args.count} "
              f"registrations): {tracemalloc_index(args.count):,.0f} bytes per registration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
