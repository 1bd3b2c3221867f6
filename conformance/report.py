"""Reports of a conformance run (controller side; docs/report.md).

Under ``--report-dir`` (default reports/):

* ``index.html``  self-contained (inline CSS and SVG, no network): run configuration, verdict
  counts, interoperability matrix (test cases x implementations), traceability matrix
  (requirement -> test cases -> verdicts, UNCOVERED rows), one section per test execution with
  steps, failure text, message-sequence diagram and links to its evidence
* ``summary.md``  the same in Markdown (counts, matrices, failures)
* ``results.json`` machine-readable results
* ``junit.xml``   (pytest's junitxml; error verdicts rewritten to <error>)
* ``allure-results/`` (allure-pytest: labels requirement/case/feature/story, spec links)
* ``evidence/<test>/`` per-test evidence (conformance/evidence.py)

With ``--baseline`` every matrix cell also says whether its verdict matches the baseline (and,
beside an expected non-pass verdict, the baseline's reason); differences are listed first.
The verdicts themselves are never changed.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conformance.baseline import MATCH, REGRESSION, UNEXPECTED_PASS, Comparison, Expectation
from conformance.verdicts import Verdict

if TYPE_CHECKING:  # pragma: no cover
    import pytest

    from conformance.plugin import ConformanceConfig

GENERATED = ("index.html", "summary.md", "results.json", "junit.xml")
GENERATED_DIRS = ("evidence", "allure-results")
PROGRESS_EVERY = 10.0  # seconds between progress lines
PROGRESS_AFTER = 10.0  # no progress line for runs shorter than this


LOCK = ".lwm2m-run.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_report_dir(d: Path) -> Path:
    """The directory this run writes to: ``d``, unless another live run is writing there (its PID
    is in ``d/.lwm2m-run.pid``); then ``d/run-<pid>`` so that neither run deletes the other's
    evidence. The chosen directory is prepared with :func:`prepare_report_dir`."""
    d.mkdir(parents=True, exist_ok=True)
    lock = d / LOCK
    try:
        other = int(lock.read_text().strip() or 0)
    except (OSError, ValueError):
        other = 0
    if other and other != os.getpid() and _alive(other):
        d = d / f"run-{os.getpid()}"
    else:
        lock.write_text(str(os.getpid()))
    prepare_report_dir(d)
    return d


def release_report_dir(d: Path) -> None:
    lock = d / LOCK
    try:
        if int(lock.read_text().strip() or 0) == os.getpid():
            lock.unlink()
    except (OSError, ValueError):
        pass


def prepare_report_dir(d: Path) -> None:
    """Create the directory and remove what a previous run generated (nothing else)."""
    d.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:
        (d / name).unlink(missing_ok=True)
    for name in GENERATED_DIRS:
        shutil.rmtree(d / name, ignore_errors=True)


@dataclass
class Outcome:
    """Everything known about one test execution (one nodeid)."""

    nodeid: str
    props: dict[str, str] = field(default_factory=dict)
    phases: dict[str, str] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0
    done: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)
    baseline: Comparison | None = None

    @property
    def verdict(self) -> Verdict:
        return Verdict.worst(Verdict(v) for v in self.phases.values())

    @property
    def case(self) -> str:
        return self.props.get("case", "") or self.nodeid

    @property
    def requirements(self) -> list[str]:
        return [x for x in self.props.get("requirement", "").split(",") if x]

    @property
    def dut(self) -> str:
        return self.props.get("dut", "") or "(no DUT)"

    @property
    def implementation(self) -> str:
        """Profile names (no versions) of the DUTs, joined with "+": the baseline's key."""
        return self.props.get("implementation", "")

    @property
    def instance(self) -> str | None:
        return self.props.get("instance") or None

    @property
    def anchor(self) -> str:
        import hashlib

        return "t-" + hashlib.sha1(self.nodeid.encode()).hexdigest()[:10]

    @property
    def reason(self) -> str:
        v = self.verdict
        for when in ("call", "setup", "teardown"):
            if self.phases.get(when) == v.value and when in self.reasons:
                return self.reasons[when]
        return next(iter(self.reasons.values()), "")


class RunResults:
    """Collects reports on the controller and writes every report file at the end."""

    def __init__(self, cc: "ConformanceConfig") -> None:
        self.cc = cc
        self.outcomes: dict[str, Outcome] = {}
        self.total = 0
        self.finished = 0
        self.written: list[tuple[str, str]] = []
        self.other_failures = 0  # failed reports that carry no verdict (collection errors, non-suite tests)
        self.baseline_applied = False
        self._last_progress = time.time()

    # -- gathering -----------------------------------------------------------------------------
    def add_report(self, report: Any) -> None:
        props = dict(getattr(report, "user_properties", []) or [])
        verdict = props.get("lwm2m.phase")
        if verdict is None:
            return
        o = self.outcomes.setdefault(report.nodeid, Outcome(report.nodeid))
        o.props.update({k: str(v) for k, v in props.items()})
        o.phases[report.when] = verdict
        o.duration += getattr(report, "duration", 0.0) or 0.0
        if verdict != Verdict.PASS.value:
            if report.skipped and isinstance(report.longrepr, tuple):
                o.reasons[report.when] = str(report.longrepr[2])
            else:
                o.reasons[report.when] = str(report.longrepr or "")
        if report.when == "teardown":
            o.done = True
            self.finished += 1

    def has_conformance_results(self) -> bool:
        return bool(self.outcomes)

    # -- baseline ------------------------------------------------------------------------------
    def apply_baseline(self) -> None:
        """Compare every finished execution with ``--baseline`` (sets ``Outcome.baseline``)."""
        bl = self.cc.baseline
        if bl is None:
            return
        for o in self.outcomes.values():
            o.baseline = bl.compare(o.implementation, o.case, o.instance, o.verdict)
        self.baseline_applied = True

    def baseline_differences(self) -> list[Outcome]:
        return [o for o in sorted(self.outcomes.values(), key=lambda o: (o.case, o.dut, o.nodeid))
                if o.baseline is not None and o.baseline.differs]

    def baseline_unused(self) -> list[Expectation]:
        bl = self.cc.baseline
        if bl is None:
            return []
        return bl.unused((o.implementation, o.case, o.instance) for o in self.outcomes.values())

    def baseline_counts(self) -> dict[str, int]:
        c = {MATCH: 0, "known": 0, REGRESSION: 0, UNEXPECTED_PASS: 0}
        for o in self.outcomes.values():
            if o.baseline is None:
                continue
            c[o.baseline.status] += 1
            if o.baseline.known_deviation:
                c["known"] += 1
        return c

    def baseline_lines(self) -> list[tuple[str, bool]]:
        """Terminal lines (text, is_a_problem) describing the comparison with the baseline."""
        bl = self.cc.baseline
        if bl is None:
            return []
        c = self.baseline_counts()
        out = [(f"baseline {bl.path}: {c[MATCH]} as expected ({c['known']} known deviations), "
                f"{c[REGRESSION]} regressions, {c[UNEXPECTED_PASS]} unexpected passes", False)]
        for o in self.baseline_differences():
            assert o.baseline is not None
            what = "UNEXPECTED PASS" if o.baseline.status == UNEXPECTED_PASS else "REGRESSION"
            src = f" (baseline line {o.baseline.entry.line})" if o.baseline.entry else ""
            out.append((f"  {what}: {o.case} @ {o.dut}: {o.verdict.value}, expected "
                        f"{o.baseline.expected_text}{src}  [{o.nodeid}]", True))
        unused = self.baseline_unused()
        if unused:
            out.append((f"  {len(unused)} baseline entries matched no test of this run (stale, or not selected):", False))
            for e in unused[:20]:
                out.append((f"    line {e.line}: {e.implementation} {e.case}" + (f" [{e.instance}]" if e.instance else ""), False))
        if self.baseline_differences():
            out.append(("exit status non-zero: verdicts differ from the baseline", True))
        else:
            out.append(("every verdict matches the baseline", False))
        return out

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for o in self.outcomes.values():
            c[o.verdict.value] = c.get(o.verdict.value, 0) + 1
        return c

    def progress_line(self) -> str | None:
        now = time.time()
        if now - self.cc.started < PROGRESS_AFTER or now - self._last_progress < PROGRESS_EVERY:
            return None
        self._last_progress = now
        c: dict[str, int] = {}
        for o in self.outcomes.values():
            if o.done:
                c[o.verdict.value] = c.get(o.verdict.value, 0) + 1
        total = self.total or "?"
        return (f"[lwm2m] {self.finished}/{total} test cases done in {now - self.cc.started:.0f} s: "
                + ", ".join(f"{c.get(v.value, 0)} {v.value}" for v in Verdict))

    # -- writing -------------------------------------------------------------------------------
    def _load_evidence(self) -> None:
        d = self.cc.report_dir
        assert d is not None
        for o in self.outcomes.values():
            rel = o.props.get("lwm2m.evidence")
            if not rel:
                continue
            path = (d / rel / "result.json") if not os.path.isabs(rel) else Path(rel) / "result.json"
            try:
                o.evidence = json.loads(path.read_text())
            except (OSError, ValueError):
                o.evidence = {}

    def write_all(self, config: "pytest.Config") -> None:
        d = self.cc.report_dir
        assert d is not None
        self._load_evidence()
        ctx = RunContext.from_config(config, self)
        (d / "index.html").write_text(render_html(ctx), encoding="utf-8")
        (d / "summary.md").write_text(render_markdown(ctx), encoding="utf-8")
        (d / "results.json").write_text(json.dumps(ctx.as_json(), indent=1), encoding="utf-8")
        self.written = [("HTML report", str(d / "index.html")), ("summary", str(d / "summary.md")),
                        ("JUnit XML", str(config.option.xmlpath or "-")),
                        ("allure results", str(getattr(config.option, "allure_report_dir", None) or "-")),
                        ("evidence", str(d / "evidence"))]


@dataclass
class RunContext:
    """What the renderers need, computed once."""

    cc: "ConformanceConfig"
    outcomes: list[Outcome]
    report_dir: Path
    command: str
    versions: dict[str, str]
    started: float
    finished: float

    @classmethod
    def from_config(cls, config: "pytest.Config", results: RunResults) -> "RunContext":
        from conformance.plugin import _tshark_version
        import importlib.metadata as md

        def ver(dist: str) -> str:
            try:
                return md.version(dist)
            except md.PackageNotFoundError:
                return "-"

        versions = {"python": sys.version.split()[0], "pytest": ver("pytest"), "aiocoap": ver("aiocoap"),
                    "scapy": ver("scapy"), "allure-pytest": ver("allure-pytest"), "tshark": _tshark_version(),
                    "suite": ver("lwm2m-conformance")}
        args = " ".join(config.invocation_params.args)
        outcomes = sorted(results.outcomes.values(), key=lambda o: (o.case, o.dut, o.nodeid))
        assert results.cc.report_dir is not None
        return cls(results.cc, outcomes, results.cc.report_dir, f"pytest {args}", versions, results.cc.started, time.time())

    def rel(self, path: str | None) -> str:
        if not path:
            return ""
        try:
            return os.path.relpath(path, self.report_dir)
        except ValueError:
            return path

    def duts(self) -> list[str]:
        seen: list[str] = []
        for o in self.outcomes:
            if o.dut not in seen:
                seen.append(o.dut)
        return seen

    def cases(self) -> list[tuple[str, str]]:
        seen: dict[str, str] = {}
        for o in self.outcomes:
            seen.setdefault(o.case, o.props.get("title", ""))
        return sorted(seen.items())

    def cell(self, case: str, dut: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.case == case and o.dut == dut]

    def counts(self) -> dict[str, int]:
        c = {v.value: 0 for v in Verdict}
        for o in self.outcomes:
            c[o.verdict.value] += 1
        return c

    def trace(self) -> list[tuple[Any, str, list[Outcome], list[dict[str, str]]]]:
        """(requirement, status, outcomes that ran, covering tests) per catalogue entry.
        status: covered | UNCOVERED (no test anywhere) | not run (tests exist, none selected)."""
        rows = []
        for req in self.cc.catalogue:
            ran = [o for o in self.outcomes if req.label in o.requirements]
            covering = self.cc.coverage.get(req.label, [])
            if ran:
                status = "covered"
            elif covering:
                status = "not run"
            else:
                status = "UNCOVERED"
            rows.append((req, status, ran, covering))
        return rows

    def baseline_json(self) -> dict[str, Any]:
        res = self.cc.results
        assert self.cc.baseline is not None and res is not None

        def ref(o: Outcome) -> dict[str, Any]:
            assert o.baseline is not None
            return {"nodeid": o.nodeid, "case": o.case, "dut": o.dut, "verdict": o.verdict.value,
                    "expected": [v.value for v in o.baseline.expected],
                    "line": o.baseline.entry.line if o.baseline.entry else None}

        diffs = res.baseline_differences()
        return {"file": str(self.cc.baseline.path), "counts": res.baseline_counts(),
                "regressions": [ref(o) for o in diffs if o.baseline and o.baseline.status == REGRESSION],
                "unexpected_passes": [ref(o) for o in diffs if o.baseline and o.baseline.status == UNEXPECTED_PASS],
                "unused_entries": [{"implementation": e.implementation, "case": e.case, "instance": e.instance,
                                    "line": e.line} for e in res.baseline_unused()]}

    def as_json(self) -> dict[str, Any]:
        return {
            "command": self.command, "started": self.started, "finished": self.finished, "versions": self.versions,
            "implementations": [{"name": p.name, "version": p.version, "role": p.role, "profile": str(p.path),
                                 "ics": p.ics.as_dict()} for p in self.cc.profiles],
            "counts": self.counts(),
            "tests": [{"nodeid": o.nodeid, "case": o.case, "title": o.props.get("title", ""), "dut": o.dut,
                       "requirements": o.requirements, "verdict": o.verdict.value, "phases": o.phases,
                       "duration": round(o.duration, 3), "reason": o.reason[:2000],
                       "evidence": o.props.get("lwm2m.evidence", ""), "pcap": self.rel(o.evidence.get("pcap")),
                       "tshark": o.evidence.get("tshark"), "implementation": o.implementation, "instance": o.instance,
                       **({"baseline": o.baseline.as_json(self.cc.baseline.path)}
                          if o.baseline is not None and self.cc.baseline is not None else {})}
                      for o in self.outcomes],
            **({"baseline": self.baseline_json()} if self.cc.baseline is not None else {}),
            "traceability": [{"requirement": r.label, "status": s, "cases": sorted({o.case for o in ran}),
                              "verdicts": {o.case + " @ " + o.dut: o.verdict.value for o in ran}}
                             for r, s, ran, _ in self.trace()],
        }


# -- HTML --------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#234;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
main{padding:12px 24px}h2{border-bottom:2px solid #234;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;background:#fff}th,td{border:1px solid #ccc;padding:4px 8px;
text-align:left;vertical-align:top;font-size:13px}th{background:#e8ecf0}
.v{font-weight:bold;border-radius:3px;padding:1px 6px;color:#fff;font-size:12px;white-space:nowrap}
.v-pass{background:#2a7d2a}.v-fail{background:#c0392b}.v-error{background:#8e44ad}
.v-inconclusive{background:#d68910}.v-unsupported{background:#7f8c8d}.v-uncovered{background:#c0392b}
.v-notrun{background:#bbb}
.counts span{margin-right:12px;font-size:15px}
.bl{font-size:11px;border-radius:3px;padding:0 4px;white-space:nowrap}.bl-ok{color:#2a7d2a;border:1px solid #2a7d2a}
.bl-known{color:#555;border:1px solid #999}.bl-diff{color:#fff;background:#c0392b;font-weight:bold}
.blr{font-size:11px;color:#555;max-width:420px;margin-top:2px}
pre{background:#fff;border:1px solid #ddd;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
section.test{background:#fff;border:1px solid #ddd;border-radius:4px;padding:8px 14px;margin:14px 0}
section.test h3{margin:4px 0}.muted{color:#777;font-size:12px}ol.steps li{font-size:13px}
li.note{color:#555;list-style:circle}li.failed{color:#c0392b}.svgwrap{overflow-x:auto;border:1px solid #eee}
code{background:#f0f0f0;padding:1px 3px}a{color:#1a5490}
"""


def _badge(v: str) -> str:
    cls = {"UNCOVERED": "uncovered", "not run": "notrun", "covered": "pass"}.get(v, v)
    return f'<span class="v v-{escape(cls)}">{escape(v.upper() if v in [x.value for x in Verdict] else v)}</span>'


def render_html(ctx: RunContext) -> str:
    h: list[str] = []
    w = h.append
    w("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>")
    w("<title>LwM2M conformance report</title>")
    w(f"<style>{CSS}</style></head><body>")
    w(f"<header><h1>LwM2M conformance report</h1><div>{escape(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ctx.started)))}"
      f" · {ctx.finished - ctx.started:.1f} s · <code style='color:#fff;background:none'>{escape(ctx.command)}</code></div></header><main>")
    # configuration
    w("<h2 id='config'>Run configuration</h2><table><tr><th>role</th><th>implementation</th><th>version</th>"
      "<th>profile</th><th>ICS</th></tr>")
    for p in ctx.cc.profiles:
        w(f"<tr><td>{escape(p.role)}</td><td>{escape(p.name)}</td><td>{escape(p.version)}</td>"
          f"<td>{escape(str(p.path))}</td><td><code>{escape(p.ics.summary())}</code></td></tr>")
    w("</table><table>")
    w(f"<tr><th>catalogue</th><td>{escape(str(ctx.cc.catalogue.path))} ({len(ctx.cc.catalogue)} requirements)</td></tr>")
    sel = f"requirement={ctx.cc.requirement_patterns or '-'} case={ctx.cc.case_ids or '-'}"
    w(f"<tr><th>selection</th><td>{escape(sel)}</td></tr>")
    w(f"<tr><th>versions</th><td>{escape(', '.join(f'{k} {v}' for k, v in ctx.versions.items()))}</td></tr>")
    w(f"<tr><th>other outputs</th><td><a href='summary.md'>summary.md</a> · <a href='results.json'>results.json</a> · "
      f"<a href='junit.xml'>junit.xml</a> · allure-results/ (<code>allure serve {escape(str(ctx.report_dir / 'allure-results'))}</code>)</td></tr>")
    w("</table>")
    # counts
    counts = ctx.counts()
    w("<h2 id='verdicts'>Verdicts</h2><div class='counts'>")
    for v, n in counts.items():
        w(f"<span>{_badge(v)} {n}</span>")
    w(f"<span>total {len(ctx.outcomes)}</span></div>")
    if ctx.cc.baseline is not None:
        w(_render_baseline_html(ctx))
    # interop matrix
    duts = ctx.duts()
    bl_note = (" With a baseline, each cell also says whether the verdict matches it (<span class='bl bl-ok'>as "
               "expected</span>, <span class='bl bl-known'>known deviation</span> with its reason, <span class='bl "
               "bl-diff'>≠ baseline</span>); verdicts are never changed by the baseline."
               if ctx.cc.baseline is not None else "")
    w("<h2 id='matrix'>Interoperability matrix</h2><p class='muted'>Test cases × implementations; each cell links "
      f"to the test's section (steps, diagram) and its capture.{bl_note}</p><table class='matrix'><tr><th>test case</th>")
    for d in duts:
        w(f"<th>{escape(d)}</th>")
    w("</tr>")
    for case, title in ctx.cases():
        w(f"<tr><td><b>{escape(case)}</b><br><span class='muted'>{escape(title)}</span></td>")
        for d in duts:
            cell = ctx.cell(case, d)
            if not cell:
                w("<td class='muted'>–</td>")
                continue
            parts = []
            shown: set[int] = set()  # baseline lines whose reason this cell already shows
            for o in cell:
                link = f"<a href='#{o.anchor}'>{_badge(o.verdict.value)}</a>"
                pcap = ctx.rel(o.evidence.get("pcap"))
                if pcap:
                    link += f" <a href='{escape(pcap)}' title='capture'>pcap</a>"
                link += _baseline_cell_html(ctx, o, shown)
                parts.append(link)
            w(f"<td>{'<br>'.join(parts)}</td>")
        w("</tr>")
    w("</table>")
    # traceability
    w("<h2 id='trace'>Traceability matrix</h2><table><tr><th>requirement</th><th>text</th><th>status</th>"
      "<th>test cases → verdicts</th></tr>")
    for req, status, ran, covering in ctx.trace():
        links = "".join(f"<div><a href='#{o.anchor}'>{escape(o.case)}</a> @ {escape(o.dut)} {_badge(o.verdict.value)}</div>"
                        for o in ran)
        if not ran and covering:
            links = "".join(sorted({f"<div class='muted'>{escape(t['case'])} (not selected)</div>" for t in covering}))
        spec = "".join(f"<div class='muted'><a href='{escape(s.url)}'>{escape(s.title)}</a></div>" for s in req.spec)
        w(f"<tr id='req-{escape(req.label)}'><td><b>{escape(req.label)}</b><br><span class='muted'>{escape(req.kind)} "
          f"{escape(req.strength)} · {escape(', '.join(req.roles))}</span></td><td>{escape(req.text)}{spec}</td>"
          f"<td>{_badge(status)}</td><td>{links or '<span class=muted>—</span>'}</td></tr>")
    w("</table>")
    # per test
    w("<h2 id='tests'>Test cases</h2>")
    for o in ctx.outcomes:
        w(_render_test(ctx, o))
    w("</main></body></html>")
    return "\n".join(h)


def _baseline_cell_html(ctx: RunContext, o: Outcome, shown: set[int]) -> str:
    """The baseline mark of one verdict in a matrix cell ("" without a baseline); a reason the
    cell already shows (same baseline entry, another instance) is not repeated."""
    b = o.baseline
    if b is None or ctx.cc.baseline is None:
        return ""
    inst = f" [{escape(o.instance)}]" if o.instance else ""
    if b.differs:
        kind = "unexpected pass" if b.status == UNEXPECTED_PASS else "regression"
        src = f" (line {b.entry.line})" if b.entry else ""
        return (f" <span class='bl bl-diff' title='{escape(kind)}'>≠ baseline: expected "
                f"{escape(b.expected_text.upper())}{src}</span>{inst}")
    if b.known_deviation:
        assert b.entry is not None
        reason = "" if b.entry.line in shown else f"<div class='blr'>{escape(b.entry.reason)}</div>"
        shown.add(b.entry.line)
        return f" <span class='bl bl-known' title='baseline line {b.entry.line}'>known deviation</span>{inst}{reason}"

    return " <span class='bl bl-ok' title='matches the baseline'>as expected</span>"


def _render_baseline_html(ctx: RunContext) -> str:
    res = ctx.cc.results
    bl = ctx.cc.baseline
    assert res is not None and bl is not None
    c = res.baseline_counts()
    h = [f"<h2 id='baseline'>Baseline comparison</h2><p>Baseline <code>{escape(str(bl.path))}</code> "
         f"({len(bl.entries)} expectations): <b>{c[MATCH]}</b> as expected (of which {c['known']} known "
         f"deviations), <b>{c[REGRESSION]}</b> regressions, <b>{c[UNEXPECTED_PASS]}</b> unexpected passes. "
         "Without an entry a test is expected to pass or be unsupported. The run fails only on differences.</p>"]
    diffs = res.baseline_differences()
    if diffs:
        h.append("<table><tr><th>difference</th><th>test case</th><th>implementation</th><th>verdict</th>"
                 "<th>expected</th></tr>")
        for o in diffs:
            assert o.baseline is not None
            kind = "UNEXPECTED PASS" if o.baseline.status == UNEXPECTED_PASS else "REGRESSION"
            src = f" (line {o.baseline.entry.line})" if o.baseline.entry else " (no entry)"
            h.append(f"<tr><td><span class='bl bl-diff'>{kind}</span></td><td><a href='#{o.anchor}'>"
                     f"{escape(o.case)}</a> <span class='muted'>{escape(o.instance or '')}</span></td>"
                     f"<td>{escape(o.dut)}</td><td>{_badge(o.verdict.value)}</td>"
                     f"<td>{escape(o.baseline.expected_text)}{escape(src)}</td></tr>")
        h.append("</table>")
    unused = res.baseline_unused()
    if unused:
        h.append("<p class='muted'>Entries that matched no test of this run (stale, or not selected): "
                 + ", ".join(escape(f"line {e.line} {e.implementation} {e.case}") for e in unused) + "</p>")
    return "\n".join(h)


def _render_test(ctx: RunContext, o: Outcome) -> str:
    h: list[str] = []
    w = h.append
    w(f"<section class='test' id='{o.anchor}'><h3>{_badge(o.verdict.value)} {escape(o.case)} — "
      f"{escape(o.props.get('title', ''))}</h3>")
    w(f"<div class='muted'>{escape(o.nodeid)} · DUT {escape(o.dut)} · {o.duration:.2f} s · phases "
      f"{escape(', '.join(f'{k}={v}' for k, v in o.phases.items()))}</div>")
    reqs = " ".join(f"<a href='#req-{escape(r)}'>{escape(r)}</a>" for r in o.requirements)
    w(f"<div>Requirements: {reqs}</div>")
    if o.baseline is not None and ctx.cc.baseline is not None:
        b = o.baseline
        if b.differs:
            w(f"<div><span class='bl bl-diff'>differs from the baseline</span> expected {escape(b.expected_text)}"
              + (f" (line {b.entry.line}: {escape(b.entry.reason)})" if b.entry else " (no entry)") + "</div>")
        elif b.known_deviation and b.entry is not None:
            w(f"<div><span class='bl bl-known'>known deviation</span> baseline line {b.entry.line}: "
              f"{escape(b.entry.reason)}</div>")
    if o.reason:
        w(f"<pre>{escape(o.reason)}</pre>")
    steps = o.evidence.get("steps", [])
    if steps:
        w("<ol class='steps'>")
        t0 = o.evidence.get("started", steps[0]["start"])
        for s in steps:
            cls = "note" if s["outcome"] == "note" else s["outcome"]
            pad = "&nbsp;" * 4 * int(s.get("depth", 0))
            dur = "" if s["outcome"] == "note" else f" ({s['end'] - s['start']:.2f} s, {escape(s['outcome'])})"
            err = f" — {escape(s['error'])}" if s.get("error") else ""
            w(f"<li class='{cls}'>{pad}<span class='muted'>+{s['start'] - t0:.3f}s</span> {escape(s['title'])}{dur}{err}</li>")
        w("</ol>")
    svg_path = o.evidence.get("svg")
    if svg_path and os.path.exists(svg_path):
        try:
            w(f"<div class='svgwrap'>{Path(svg_path).read_text()}</div>")
        except OSError:
            pass
    links = []
    if o.evidence.get("pcap"):
        links.append(f"<a href='{escape(ctx.rel(o.evidence['pcap']))}'>capture.pcap</a>")
        links.append(f"decode: <code>{escape(o.evidence.get('tshark', ''))}</code>")
    if o.evidence.get("exchange") and o.evidence.get("datagrams"):
        links.append(f"<a href='{escape(ctx.rel(o.evidence['exchange']))}'>exchange.jsonl</a>")
    for f in o.evidence.get("files", []):
        links.append(f"<a href='{escape(ctx.rel(f['path']))}'>{escape(f['label'])}</a>")
    if o.props.get("lwm2m.evidence"):
        links.append(f"<a href='{escape(o.props['lwm2m.evidence'])}/'>evidence directory</a>")
    if links:
        w("<div>Evidence: " + " · ".join(links) + "</div>")
    w("</section>")
    return "\n".join(h)


# -- Markdown ----------------------------------------------------------------------------------

def render_markdown(ctx: RunContext) -> str:
    out: list[str] = ["# LwM2M conformance summary", ""]
    out.append(f"Run: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(ctx.started))}, "
               f"{ctx.finished - ctx.started:.1f} s, `{ctx.command}`")
    out.append("")
    out.append("## Implementations")
    out.append("")
    out.append("| role | implementation | version | ICS |")
    out.append("|---|---|---|---|")
    for p in ctx.cc.profiles:
        out.append(f"| {p.role} | {p.name} | {p.version} | `{p.ics.summary()}` |")
    out.append("")
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in ctx.versions.items()))
    out.append("")
    out.append("## Verdicts")
    out.append("")
    counts = ctx.counts()
    out.append(" · ".join(f"**{v}** {n}" for v, n in counts.items()) + f" · total {len(ctx.outcomes)}")
    out.append("")
    duts = ctx.duts()
    res = ctx.cc.results
    with_bl = ctx.cc.baseline is not None and res is not None and res.baseline_applied
    notes: dict[int, int] = {}  # baseline line -> note number, in order of first use
    if with_bl:
        assert res is not None and ctx.cc.baseline is not None
        c = res.baseline_counts()
        diffs = res.baseline_differences()
        out.append("## Baseline comparison")
        out.append("")
        out.append(f"Baseline `{ctx.cc.baseline.path}` ({len(ctx.cc.baseline.entries)} expectations): "
                   f"**{c[MATCH]}** as expected ({c['known']} known deviations), **{c[REGRESSION]}** regressions, "
                   f"**{c[UNEXPECTED_PASS]}** unexpected passes. Verdicts are unchanged; the run fails only on "
                   "differences.")
        out.append("")
        for o in diffs:
            assert o.baseline is not None
            kind = "UNEXPECTED PASS" if o.baseline.status == UNEXPECTED_PASS else "REGRESSION"
            src = f" (baseline line {o.baseline.entry.line})" if o.baseline.entry else " (no entry)"
            out.append(f"- **{kind}** {o.case} @ {o.dut}{' [' + o.instance + ']' if o.instance else ''}: "
                       f"{o.verdict.value}, expected {o.baseline.expected_text}{src}")
        if diffs:
            out.append("")
    out.append("## Interoperability matrix")
    out.append("")
    if with_bl:
        out.append("Cells: the verdict, then `=` (matches the baseline), `= [Kn]` (a known deviation, reason Kn "
                   "below) or `≠ expected X` (differs from the baseline).")
        out.append("")
    out.append("| test case | " + " | ".join(duts) + " |")
    out.append("|---|" + "---|" * len(duts))
    for case, _ in ctx.cases():
        cells = []
        for d in duts:
            cell = ctx.cell(case, d)
            texts = []
            for o in cell:
                t = o.verdict.value.upper()
                b = o.baseline
                if with_bl and b is not None:
                    if b.differs:
                        t += f" ≠ expected {b.expected_text.upper()}"
                    elif b.known_deviation and b.entry is not None:
                        n = notes.setdefault(b.entry.line, len(notes) + 1)
                        t += f" = [K{n}]"
                    else:
                        t += " ="
                texts.append(t)
            cells.append(", ".join(texts) or "–")
        out.append(f"| {case} | " + " | ".join(cells) + " |")
    out.append("")
    if with_bl and notes and ctx.cc.baseline is not None:
        by_line = {e.line: e for e in ctx.cc.baseline.entries}
        out.append("### Known deviations (baseline reasons)")
        out.append("")
        for line, n in notes.items():
            e = by_line[line]
            inst = f" [{e.instance}]" if e.instance else ""
            out.append(f"- **K{n}** {e.case} @ {e.implementation}{inst} — expected {e.verdict.value} "
                       f"(baseline line {line}): {e.reason}")
        out.append("")
    out.append("## Traceability")
    out.append("")
    out.append("| requirement | strength | status | test cases |")
    out.append("|---|---|---|---|")
    for req, status, ran, covering in ctx.trace():
        cases = ", ".join(f"{o.case}@{o.dut}: {o.verdict.value}" for o in ran) or \
            ", ".join(sorted({t["case"] for t in covering})) or "—"
        out.append(f"| {req.label} | {req.strength} | {status} | {cases} |")
    bad = [o for o in ctx.outcomes if o.verdict in (Verdict.FAIL, Verdict.ERROR)]
    if bad:
        out.append("")
        out.append("## Failures and errors")
        for o in bad:
            out.append("")
            out.append(f"### {o.verdict.value.upper()} {o.case} @ {o.dut}")
            out.append("")
            out.append(f"`{o.nodeid}` — evidence: `{o.props.get('lwm2m.evidence', '')}`")
            if o.baseline is not None:
                if o.baseline.differs:
                    out.append("")
                    out.append(f"**Differs from the baseline**: expected {o.baseline.expected_text}.")
                elif o.baseline.known_deviation and o.baseline.entry is not None:
                    out.append("")
                    out.append(f"Known deviation (baseline line {o.baseline.entry.line}): {o.baseline.entry.reason}")
            out.append("")
            out.append("```")
            out.append(o.reason.strip()[:3000])
            out.append("```")
    out.append("")
    return "\n".join(out)


# -- JUnit -------------------------------------------------------------------------------------

def junit_errors_as_errors(path: Path, results: RunResults) -> None:
    """pytest's junitxml writes call-phase problems as <failure>; turn those whose verdict is
    error into <error> so CI dashboards separate harness/DUT breakage from requirement failures."""
    if not path.exists():
        return
    errors = {o.nodeid for o in results.outcomes.values() if o.verdict == Verdict.ERROR}
    if not errors:
        return
    try:
        tree = ET.parse(path)
    except ET.ParseError:
        return
    changed = False
    for tc in tree.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        if props.get("verdict") != Verdict.ERROR.value:
            continue
        for el in list(tc):
            if el.tag == "failure":
                el.tag = "error"
                changed = True
    if changed:
        for suite in tree.iter("testsuite"):
            n_err = sum(1 for tc in suite.iter("testcase") for el in tc if el.tag == "error")
            n_fail = sum(1 for tc in suite.iter("testcase") for el in tc if el.tag == "failure")
            suite.set("errors", str(n_err))
            suite.set("failures", str(n_fail))
        tree.write(path, encoding="utf-8", xml_declaration=True)
