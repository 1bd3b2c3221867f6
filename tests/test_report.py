"""Report rendering: HTML (self-contained, matrices, per-test sections), Markdown, JUnit rewrite, SVG."""
from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from conformance.catalogue import load_catalogue
from conformance.plugin import ConformanceConfig
from conformance.profiles import BUNDLED, load_profile
from conformance.report import RunContext, RunResults, junit_errors_as_errors, render_html, render_markdown
from conformance.report_svg import sequence_svg


def report(nodeid: str, when: str, phase: str, **props: str) -> SimpleNamespace:
    up = [("lwm2m.phase", phase), *props.items()]
    return SimpleNamespace(nodeid=nodeid, when=when, user_properties=up, duration=0.1, skipped=False,
                           longrepr="FAIL: Requirement: X\n  Expected: a\n  Actual: b" if phase == "fail" else None)


def make_ctx(tmp_path: Path) -> RunContext:
    cc = ConformanceConfig(catalogue=load_catalogue(), profiles=[load_profile(BUNDLED["client"])],
                           report_dir=tmp_path, dut_timeout=None, scale=1, requirement_patterns=[], case_ids=[],
                           is_worker=False)
    cc.coverage = {"DM-SC-GEN-X": [{"nodeid": "t.py::test_sc_001", "case": "LWM2M-SC-001"}],
                   "DM-SC-USE-X": [{"nodeid": "t.py::test_sc_002", "case": "LWM2M-SC-002"}]}
    res = RunResults(cc)
    for dut, verdict in (("impl-a-1", "pass"), ("impl-b-2", "fail")):
        nodeid = f"t.py::test_sc_001[{dut}]"
        props = {"requirement": "DM-SC-GEN-X", "case": "LWM2M-SC-001", "dut": dut, "title": "autonomous connection",
                 "lwm2m.evidence": f"evidence/{dut}"}
        ev = tmp_path / "evidence" / dut
        ev.mkdir(parents=True)
        svg = ev / "exchange.svg"
        svg.write_text(sequence_svg([{"t": 1.0, "proxy": "server", "direction": "from-dut", "src": ["127.0.0.1", 1],
                                      "dst": ["127.0.0.1", 2], "kind": "coap", "label": "POST /rd?ep=x", "request": True}]))
        (ev / "result.json").write_text(json.dumps({"steps": [{"title": "register", "start": 1.0, "end": 1.5,
                                                               "outcome": "passed", "error": "", "depth": 0}],
                                                    "started": 1.0, "pcap": str(ev / "capture.pcap"), "svg": str(svg),
                                                    "tshark": "tshark -d udp.port==5,coap -r x", "files": [],
                                                    "datagrams": 1, "exchange": str(ev / "exchange.jsonl")}))
        for when, phase in (("setup", "pass"), ("call", verdict), ("teardown", "pass")):
            res.add_report(report(nodeid, when, phase, **props))
    res._load_evidence()
    config = SimpleNamespace(invocation_params=SimpleNamespace(args=("conformance",)))
    return RunContext.from_config(config, res)  # type: ignore[arg-type]


def test_html_is_self_contained_with_both_matrices(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path)
    html = render_html(ctx)
    assert "<link" not in html and "<script" not in html and "src=\"http" not in html
    assert "<th>impl-a-1</th>" in html and "<th>impl-b-2</th>" in html  # interop matrix columns
    # traceability: covered, not run (a test exists but was not selected), UNCOVERED
    assert "id='req-DM-SC-GEN-X'" in html and "not run" in html and "UNCOVERED" in html
    assert "LWM2M-SC-002 (not selected)" in html
    assert "POST /rd?ep=x" in html and "<svg" in html  # inline sequence diagram
    assert "evidence/impl-a-1/capture.pcap" in html and "tshark -d udp.port==5,coap" in html
    assert "register" in html and "FAIL: Requirement: X" in html
    assert ctx.counts()["pass"] == 1 and ctx.counts()["fail"] == 1


def test_markdown_summary(tmp_path: Path) -> None:
    md = render_markdown(make_ctx(tmp_path))
    assert "| LWM2M-SC-001 | PASS | FAIL |" in md
    assert "| DM-SC-USE-X | SHALL | not run | LWM2M-SC-002 |" in md
    assert "| DM-CP-6 | MAY | UNCOVERED | — |" in md
    assert "### FAIL LWM2M-SC-001 @ impl-b-2" in md


def test_junit_error_verdicts_become_error_elements(tmp_path: Path) -> None:
    cc = SimpleNamespace(started=time.time())
    res = RunResults(cc)  # type: ignore[arg-type]
    res.add_report(report("t.py::test_a", "call", "error"))
    path = tmp_path / "junit.xml"
    path.write_text('<?xml version="1.0"?><testsuites><testsuite errors="0" failures="1">'
                    '<testcase name="test_a"><properties><property name="verdict" value="error"/></properties>'
                    '<failure message="x">boom</failure></testcase></testsuite></testsuites>')
    junit_errors_as_errors(path, res)
    text = path.read_text()
    assert "<error message=\"x\">boom</error>" in text and 'errors="1"' in text and 'failures="0"' in text


def test_concurrent_runs_do_not_share_a_report_dir(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conformance.report import LOCK, claim_report_dir, release_report_dir

    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "old").write_text("from a previous run")
    assert claim_report_dir(tmp_path) == tmp_path          # free: claimed, previous output removed
    assert not (tmp_path / "evidence").exists()
    release_report_dir(tmp_path)
    assert not (tmp_path / LOCK).exists()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        (tmp_path / LOCK).write_text(str(other.pid))       # another live run holds it
        (tmp_path / "index.html").write_text("theirs")
        mine = claim_report_dir(tmp_path)
        assert mine.parent == tmp_path and mine.name.startswith("run-")
        assert (tmp_path / "index.html").read_text() == "theirs"
    finally:
        other.kill()
        other.wait()
    assert claim_report_dir(tmp_path) == tmp_path          # a dead holder's lock is taken over
