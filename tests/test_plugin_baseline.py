"""``--baseline FILE`` end to end, through pytester (inner pytest runs in a temp dir).

Covers: a known failure recorded in the baseline does not fail the run but stays a *fail* verdict
in every report, with the baseline's reason beside it; a regression (a fail the baseline does not
expect) fails the exit status; an unexpected pass is flagged and fails the exit status; an entry
for one parametrized instance; a malformed baseline stops the run before any test with file:line;
the option's validation and help.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.test_plugin import fake_profile, run, write_test

CASES = """
pytestmark = pytest.mark.role("server")

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-001")
def test_fw_001_passes(dut_profile):
    '''LWM2M-FW-001 passes for every implementation'''
    check(True, expected="ok", actual="ok")

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-002")
def test_fw_002_fails_for_b(dut_profile):
    '''LWM2M-FW-002 fails for fake-b only'''
    check(dut_profile.name != "fake-b", expected="2.01 Created", actual="4.00 Bad Request")

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-003")
@pytest.mark.parametrize("bad", ["lt=abc", "b=XYZ"])
def test_fw_003_param(dut_profile, bad):
    '''LWM2M-FW-003 one instance fails for fake-b'''
    check(not (dut_profile.name == "fake-b" and bad == "b=XYZ"), expected="4.00", actual="2.01")
"""

KNOWN = """\
format = 1

[[expect]]
implementation = "fake-b"
case = "LWM2M-FW-002"
verdict = "fail"
reason = "answers 4.00 to a valid Register (Core 1.1.1 §6.2.1)"

[[expect]]
implementation = "fake-b"
case = "LWM2M-FW-003"
instance = "b=XYZ"
verdict = "fail"
reason = "accepts an unknown binding (Core 1.1.1 §6.2.1: 4.00 Bad Request)"
"""


def setup(pytester: pytest.Pytester, baseline: str) -> tuple[Path, Path, Path]:
    a = fake_profile(pytester, "fake-a", '"server"')
    b = fake_profile(pytester, "fake-b", '"server"')
    write_test(pytester, CASES)
    bl = pytester.path / "baseline.toml"
    bl.write_text(baseline)
    return a, b, bl


def results(pytester: pytest.Pytester) -> dict:
    return json.loads((pytester.path / "reports" / "results.json").read_text())


def test_known_failure_matches_baseline_exit_zero_and_verdict_kept(pytester: pytest.Pytester) -> None:
    a, b, bl = setup(pytester, KNOWN)
    res = run(pytester, "--dut", str(a), "--dut", str(b), "--baseline", str(bl))
    # the verdicts are what they are: two fails (pytest says so too) ...
    res.assert_outcomes(passed=6, failed=2)
    # ... but both are expected, so the run succeeds
    assert res.ret == pytest.ExitCode.OK
    res.stdout.fnmatch_lines(["*baseline *baseline.toml: 8 as expected (2 known deviations), 0 regressions, "
                              "0 unexpected passes*", "*every verdict matches the baseline*"])
    doc = results(pytester)
    by = {(t["case"], t["dut"], t.get("instance")): t for t in doc["tests"]}
    t = by[("LWM2M-FW-002", "fake-b-1.0", None)]
    assert t["verdict"] == "fail"  # never altered by the baseline
    assert t["baseline"]["status"] == "expected" and "Core 1.1.1 §6.2.1" in t["baseline"]["reason"]
    assert t["baseline"]["source"].endswith("baseline.toml:3")
    assert by[("LWM2M-FW-003", "fake-b-1.0", "b=XYZ")]["verdict"] == "fail"
    assert by[("LWM2M-FW-003", "fake-b-1.0", "b=XYZ")]["baseline"]["status"] == "expected"
    assert by[("LWM2M-FW-003", "fake-b-1.0", "lt=abc")]["baseline"] == {
        "status": "expected", "expected": ["pass", "unsupported"], "reason": None, "source": None}
    assert doc["baseline"]["counts"] == {"expected": 8, "known": 2, "regression": 0, "unexpected-pass": 0}
    assert doc["baseline"]["regressions"] == [] and doc["baseline"]["unused_entries"] == []
    html = (pytester.path / "reports" / "index.html").read_text()
    assert "Baseline comparison" in html and "known deviation" in html
    assert "answers 4.00 to a valid Register (Core 1.1.1 §6.2.1)" in html  # the reason beside the cell
    assert "v v-fail" in html and "≠ baseline: expected" not in html
    md = (pytester.path / "reports" / "summary.md").read_text()
    assert "| LWM2M-FW-002 | PASS = | FAIL = [K1] |" in md
    assert "**K1** LWM2M-FW-002 @ fake-b — expected fail (baseline line 3): answers 4.00" in md
    junit = (pytester.path / "reports" / "junit.xml").read_text()
    assert junit.count("<failure") == 2  # JUnit keeps the real verdicts too


def test_regression_fails_exit_status(pytester: pytest.Pytester) -> None:
    # the baseline only knows the FW-003 deviation: FW-002 failing is a regression
    text = KNOWN.split("[[expect]]")
    a, b, bl = setup(pytester, text[0] + "[[expect]]" + text[2])
    res = run(pytester, "--dut", str(a), "--dut", str(b), "--baseline", str(bl))
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines(["*REGRESSION: LWM2M-FW-002 @ fake-b-1.0: fail, expected pass or unsupported*",
                              "*exit status non-zero: verdicts differ from the baseline*"])
    doc = results(pytester)
    assert [r["case"] for r in doc["baseline"]["regressions"]] == ["LWM2M-FW-002"]
    md = (pytester.path / "reports" / "summary.md").read_text()
    assert "**REGRESSION** LWM2M-FW-002 @ fake-b-1.0: fail, expected pass or unsupported (no entry)" in md
    assert "FAIL ≠ expected PASS OR UNSUPPORTED" in md
    assert "≠ baseline: expected PASS OR UNSUPPORTED" in (pytester.path / "reports" / "index.html").read_text()


def test_unexpected_pass_is_flagged_and_fails_exit_status(pytester: pytest.Pytester) -> None:
    extra = textwrap.dedent("""
        [[expect]]
        implementation = "fake-a"
        case = "LWM2M-FW-001"
        verdict = "fail"
        reason = "was broken in 0.9 (Core 1.1.1 §6.2.1)"
        """)
    a, b, bl = setup(pytester, KNOWN + extra)
    line = (KNOWN + extra).splitlines().index("[[expect]]", 10) + 1
    res = run(pytester, "--dut", str(a), "--dut", str(b), "--baseline", str(bl))
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    res.stdout.fnmatch_lines([f"*UNEXPECTED PASS: LWM2M-FW-001 @ fake-a-1.0: pass, expected fail (baseline line {line})*"])
    doc = results(pytester)
    assert [(r["case"], r["dut"], r["line"]) for r in doc["baseline"]["unexpected_passes"]] == \
        [("LWM2M-FW-001", "fake-a-1.0", line)]
    assert doc["baseline"]["regressions"] == []
    t = next(t for t in doc["tests"] if t["case"] == "LWM2M-FW-001" and t["dut"] == "fake-a-1.0")
    assert t["verdict"] == "pass" and t["baseline"]["status"] == "unexpected-pass"
    assert "**UNEXPECTED PASS** LWM2M-FW-001 @ fake-a-1.0" in (pytester.path / "reports" / "summary.md").read_text()


def test_without_baseline_failures_fail_the_run(pytester: pytest.Pytester) -> None:
    a, b, _ = setup(pytester, KNOWN)
    res = run(pytester, "--dut", str(a), "--dut", str(b))
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    assert "Baseline comparison" not in (pytester.path / "reports" / "summary.md").read_text()
    assert "baseline" not in results(pytester)


@pytest.mark.parametrize("mutation, message", [
    (('reason = "answers 4.00 to a valid Register (Core 1.1.1 §6.2.1)"\n', ""),
     "3: [[expect]] fake-b LWM2M-FW-002: verdict 'fail' needs a reason"),
    (('verdict = "fail"\nreason = "answers', 'verdict = "failed"\nreason = "answers'),
     "6: [[expect]] verdict: 'failed' is not one of pass, fail, inconclusive, unsupported, error"),
    (('case = "LWM2M-FW-002"', 'case = "LWM2M-FW-002"\ncolour = "red"'),
     "6: [[expect]] colour: unknown key 'colour'"),
    (('case = "LWM2M-FW-003"', 'case = "LWM2M-FW-003'), "11: TOML syntax error"),
    (('instance = "b=XYZ"\n', ""), "9: [[expect]] fake-b LWM2M-FW-002: given twice (first at line 3)"),
    (('reason = "answers 4.00 to a valid Register (Core 1.1.1 §6.2.1)"\n', 'reason = "  "\n'),
     "7: [[expect]] fake-b LWM2M-FW-002: verdict 'fail' needs a reason"),
    (('implementation = "fake-b"', 'implementation = "fake b"'),
     "4: [[expect]] implementation: 'fake b' is not an implementation name"),
])
def test_malformed_baseline_stops_run_with_file_and_line(pytester: pytest.Pytester, mutation: tuple[str, str],
                                                         message: str) -> None:
    old, new = mutation
    text = KNOWN.replace(old, new, 1)
    if "given twice" in message:
        text = text.replace('case = "LWM2M-FW-003"', 'case = "LWM2M-FW-002"')
    assert text != KNOWN
    a, b, bl = setup(pytester, text)
    res = run(pytester, "--dut", str(a), "--dut", str(b), "--baseline", str(bl))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: baseline: {bl}:{message}" in res.stderr.str()
    assert " passed" not in res.stdout.str() and " failed" not in res.stdout.str()
    assert not (pytester.path / "reports" / "results.json").exists()


def test_option_validation_and_help(pytester: pytest.Pytester) -> None:
    write_test(pytester, CASES)
    res = run(pytester, "--baseline", str(pytester.path / "missing.toml"))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*--baseline: no baseline file*missing.toml*"])
    res = run(pytester, "--help")
    res.stdout.fnmatch_lines(["*LwM2M conformance suite*", "*--baseline=FILE*expected verdicts per implementation*"])


def test_baseline_with_xdist_workers(pytester: pytest.Pytester) -> None:
    """With -n 2 the controller (not the workers) compares and sets the exit status."""
    from conformance import PLUGIN, entry_point_active

    a, b, bl = setup(pytester, KNOWN)
    extra = [] if entry_point_active() else ["-p", PLUGIN]
    args = [*extra, "-p", "no:cacheprovider", "-n", "2", "--dut", str(a), "--dut", str(b), "--baseline", str(bl)]
    res = pytester.runpytest_subprocess(*args, timeout=90)
    assert res.ret == pytest.ExitCode.OK, res.stdout.str()[-2000:]
    assert results(pytester)["baseline"]["counts"]["known"] == 2
    bl.write_text(KNOWN.split("[[expect]]")[0])  # no expectations: both fails are regressions
    res = pytester.runpytest_subprocess(*args, timeout=90)
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    assert len(results(pytester)["baseline"]["regressions"]) == 2
