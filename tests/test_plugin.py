"""The conformance plugin, end to end, through pytester (inner pytest runs in a temp dir).

Covers: collection errors for missing/unknown labels and bad case IDs, --requirement selection by
label and family, --list-requirements with UNCOVERED, every verdict and its pytest outcome and
exit code, DUTs that never start / crash before or during a test (verdict error with their last
output lines, the run goes on), malformed profile/catalogue -> file:line before any test, report
files (HTML with the matrices), and a pcap that tshark decodes as CoAP.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from conformance import PLUGIN, entry_point_active
from conformance import report as _report, report_svg as _svg  # noqa: F401 - kept across inner runs

FAKE_DUT = r'''"""A stand-in implementation under test for the framework's own tests (tests/test_plugin*.py).

usage: fake_dut.py never|crash|server [crash_after_seconds]

never   prints two lines and never becomes ready (then sleeps, bounded)
crash   prints a line on stdout and one on stderr, exits with status 3
server  binds a UDP port, prints "FAKE READY coap=HOST:PORT", answers every CoAP CON request
        with an ACK 2.05 Content "ok" (RFC 7252 piggybacked response); with crash_after, exits
        with status 70 that many seconds after becoming ready
"""
import os
import socket
import sys
import time

mode = sys.argv[1]
if mode == "never":
    print("booting fake DUT", flush=True)
    print("waiting for a licence server that does not exist", flush=True)
    time.sleep(30)
    sys.exit(0)
if mode == "crash":
    print("booting fake DUT", flush=True)
    print("fatal: cannot open /nonexistent/config", file=sys.stderr, flush=True)
    sys.exit(3)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(0.05)
print(f"FAKE READY coap=127.0.0.1:{s.getsockname()[1]}", flush=True)
crash_after = float(sys.argv[2]) if len(sys.argv) > 2 else None
t0 = time.time()
while time.time() - t0 < 30:
    if crash_after is not None and time.time() - t0 > crash_after:
        print("fake DUT: simulated crash", flush=True)
        os._exit(70)
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        continue
    if len(data) < 4 or data[0] >> 6 != 1 or (data[0] >> 4) & 3 != 0:
        continue  # only CON requests are answered
    tkl = data[0] & 0x0F
    reply = bytes([0x60 | tkl, 0x45]) + data[2:4] + data[4:4 + tkl] + b"\xffok"
    s.sendto(reply, addr)
'''

HDR = """
import asyncio
import pytest
from conformance.verdicts import check, fail, inconclusive, unsupported, error
from conformance.evidence import step
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """In-process inner run. Without hypothesis' plugin: pytester drops the modules an inner
    run imports, so each run would re-import (and assertion-rewrite) all of hypothesis."""
    extra = [] if entry_point_active() else ["-p", PLUGIN]
    return pytester.runpytest_inprocess(*extra, "-p", "no:cacheprovider", "-p", "no:hypothesispytest", *args)


def write_test(pytester: pytest.Pytester, body: str, name: str = "test_cases.py") -> Path:
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    d = pytester.path / "conformance" / "tests"
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(HDR + textwrap.dedent(body))
    return p


def fake_profile(pytester: pytest.Pytester, name: str, args: str, *, role: str = "server",
                 ics_extra: str = "", ready_timeout: float = 5) -> Path:
    (pytester.path / "fake_dut.py").write_text(FAKE_DUT)
    p = pytester.path / f"{name}.toml"
    p.write_text(textwrap.dedent(f"""\
        format = 1
        [implementation]
        name = "{name}"
        version = "1.0"
        role = "{role}"
        [start.default]
        command = ["{{python}}", "{{profile_dir}}/fake_dut.py", {args}]
        [ready]
        stdout = 'FAKE READY coap=(?P<coap_host>[0-9.]+):(?P<coap_port>[0-9]+)'
        timeout = {ready_timeout}
        [stop]
        timeout = 2
        [ics]
        lwm2m_versions = ["1.1"]
        security_modes = ["nosec"]
        {ics_extra}
        """))
    return p


GOOD = """
@pytest.mark.requirement("LightweightM2M-HLF-00X1.3")
@pytest.mark.case("LWM2M-FW-001")
def test_fw_001_mobility():
    '''LWM2M-FW-001 mobility'''

@pytest.mark.requirement("DM-SC-USE-X.1")
@pytest.mark.case("LWM2M-FW-002")
def test_fw_002_confirm():
    '''LWM2M-FW-002 confirmation alternative flow'''

@pytest.mark.requirement("DM-SC-GEN-X")
@pytest.mark.case("LightweightM2M-1.1-int-999")
def test_int_999_autonomous():
    '''LightweightM2M-1.1-int-999 autonomous connection'''
"""


# -- collection ------------------------------------------------------------------------------

def test_missing_label_is_a_collection_error_naming_test(pytester: pytest.Pytester) -> None:
    write_test(pytester, """
    @pytest.mark.case("LWM2M-FW-001")
    def test_fw_001_nolabel():
        '''LWM2M-FW-001'''
    """)
    res = run(pytester)
    assert res.ret == pytest.ExitCode.INTERRUPTED
    res.stdout.fnmatch_lines(["*test_cases.py::test_fw_001_nolabel: missing requirement label*"])
    res.stdout.fnmatch_lines(["*1 error*"])


def test_unknown_label_is_a_collection_error_naming_label(pytester: pytest.Pytester) -> None:
    write_test(pytester, """
    @pytest.mark.requirement("LightweightM2M-HLF-00X1", "LightweightM2M-HLF-9999")
    @pytest.mark.case("LWM2M-FW-001")
    def test_fw_001_badlabel():
        '''LWM2M-FW-001'''
    """)
    res = run(pytester)
    assert res.ret == pytest.ExitCode.INTERRUPTED
    res.stdout.fnmatch_lines(["*test_fw_001_badlabel: unknown requirement label 'LightweightM2M-HLF-9999'*"])


def test_case_id_rules(pytester: pytest.Pytester) -> None:
    write_test(pytester, """
    @pytest.mark.requirement("DM-SC-GEN-X")
    @pytest.mark.case("LWM2M-FW-001")
    def test_fw_001_a():
        '''LWM2M-FW-001'''

    @pytest.mark.requirement("DM-SC-GEN-X")
    @pytest.mark.case("LWM2M-FW-001")
    def test_fw_001_b():
        '''LWM2M-FW-001 again'''

    @pytest.mark.requirement("DM-SC-GEN-X")
    @pytest.mark.case("LWM2M-FW-002")
    def test_fw_002_nodoc():
        '''no id here'''

    @pytest.mark.requirement("DM-SC-GEN-X")
    @pytest.mark.case("LWM2M-FW-003")
    def test_wrong_name():
        '''LWM2M-FW-003'''

    @pytest.mark.requirement("DM-SC-GEN-X")
    def test_fw_004_nocase():
        '''LWM2M-FW-004'''
    """)
    res = run(pytester)
    assert res.ret == pytest.ExitCode.INTERRUPTED
    res.stdout.fnmatch_lines([
        "*test_fw_001_b: case ID 'LWM2M-FW-001' is already used by *test_fw_001_a*",
        "*test_fw_002_nodoc: case ID 'LWM2M-FW-002' must appear in the test's docstring*",
        "*test_wrong_name: test function name must contain 'fw_003'*",
        "*test_fw_004_nocase: missing test-case ID*",
    ])


def test_requirement_selection_by_label_and_family(pytester: pytest.Pytester) -> None:
    write_test(pytester, GOOD)
    res = run(pytester, "--requirement", "HLF", "-v")
    res.assert_outcomes(passed=1, deselected=2)
    res.stdout.fnmatch_lines(["*test_fw_001_mobility PASSED*"])
    # a label selects its derived children; a family selects the whole smart-card family
    res = run(pytester, "--requirement", "DM-SC-USE-X")
    res.assert_outcomes(passed=1, deselected=2)
    res = run(pytester, "--requirement", "DM-SC")
    res.assert_outcomes(passed=2, deselected=1)
    res = run(pytester, "--requirement", "HLF-00X1")  # the parent's family selects 00X1.3
    res.assert_outcomes(passed=1, deselected=2)
    res = run(pytester, "--case", "LightweightM2M-1.1-int-999")
    res.assert_outcomes(passed=1, deselected=2)
    res = run(pytester, "--requirement", "NOPE")
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*'NOPE' matches no requirement label or family*"])


def test_list_requirements_shows_coverage_and_uncovered(pytester: pytest.Pytester) -> None:
    write_test(pytester, GOOD)
    res = run(pytester, "--list-requirements")
    assert res.ret == pytest.ExitCode.OK
    out = res.stdout.str()
    assert "LightweightM2M-HLF-00X1.3" in out and "LWM2M-FW-001" in out
    res.stdout.fnmatch_lines(["DM-SC-GEN-X  *", "*The Device SHALL establish*",
                              "*LightweightM2M-1.1-int-999*test_int_999_autonomous"])
    res.stdout.fnmatch_lines(["DM-CP-6  *", "*", "    UNCOVERED"])
    assert " passed" not in out  # nothing ran


def test_option_validation(pytester: pytest.Pytester) -> None:
    write_test(pytester, GOOD)
    for args, msg in ((["--dut-timeout", "0"], "*--dut-timeout*must be > 0*"),
                      (["--scale", "x"], "*--scale*not an integer*"),
                      (["--dut", "nope.toml"], "*--dut*no profile file 'nope.toml'*")):
        res = run(pytester, *args)
        assert res.ret == pytest.ExitCode.USAGE_ERROR
        res.stderr.fnmatch_lines([msg])


# -- verdicts --------------------------------------------------------------------------------

VERDICTS = """
@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-001")
def test_fw_001_pass():
    '''LWM2M-FW-001'''
    with step("all good"):
        check(True, expected="x", actual="x")

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-002")
def test_fw_002_fail():
    '''LWM2M-FW-002'''
    check(1 == 2, expected="2.01 Created", actual="4.00 Bad Request", exchange=["POST /rd?ep=x", "4.00 Bad Request"])
#CUT
@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-003")
def test_fw_003_inconclusive():
    '''LWM2M-FW-003'''
    inconclusive("precondition not reached")

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-004")
def test_fw_004_unsupported():
    '''LWM2M-FW-004'''
    unsupported("binding:S")

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-005")
def test_fw_005_error():
    '''LWM2M-FW-005'''
    error("harness broke", output=["line one", "line two"])

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-006")
def test_fw_006_plain_assert():
    '''LWM2M-FW-006'''
    assert 1 + 1 == 3
"""


def test_each_verdict_maps_to_pytest_outcome_and_report(pytester: pytest.Pytester) -> None:
    write_test(pytester, VERDICTS)
    res = run(pytester, "-rA")
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    outcomes = res.parseoutcomes()
    assert outcomes["passed"] == 1 and outcomes["failed"] == 2 and outcomes["errors"] == 1
    assert outcomes["unsupported"] == 1 and outcomes["inconclusive"] == 1
    res.stdout.fnmatch_lines([
        "*FAIL: *Requirement: LightweightM2M-HLF-00X1.6 — Initial provisioning SHALL include registration*",
        "*Expected:    2.01 Created",
        "*Actual:      4.00 Bad Request",
        "*Exchange:*", "*POST /rd?ep=x",
    ])
    res.stdout.fnmatch_lines(["*ERROR at call of test_fw_005_error*", "*ERROR: harness broke*", "*| line two*"])
    results = json.loads((pytester.path / "reports" / "results.json").read_text())
    verdicts = {t["case"]: t["verdict"] for t in results["tests"]}
    assert verdicts == {"LWM2M-FW-001": "pass", "LWM2M-FW-002": "fail", "LWM2M-FW-003": "inconclusive",
                        "LWM2M-FW-004": "unsupported", "LWM2M-FW-005": "error", "LWM2M-FW-006": "fail"}
    junit = (pytester.path / "reports" / "junit.xml").read_text()
    assert junit.count("<error") == 1 and junit.count("<failure") == 2
    assert 'name="verdict" value="error"' in junit


def test_broken_fixture_is_error_but_explicit_check_in_fixture_is_fail(pytester: pytest.Pytester) -> None:
    """Outside the test body a plain assertion (a broken fixture) is a harness fault: verdict
    error; an explicit check() that fails in a fixture is still a verdict on the implementation."""
    write_test(pytester, """
    @pytest.fixture
    def broken():
        assert False, "fixture bug"

    @pytest.fixture
    def dut_misbehaves():
        check(False, expected="2.01 Created", actual="no answer")

    @pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
    @pytest.mark.case("LWM2M-FW-001")
    def test_fw_001(broken):
        "LWM2M-FW-001"

    @pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
    @pytest.mark.case("LWM2M-FW-002")
    def test_fw_002(dut_misbehaves):
        "LWM2M-FW-002"
    """)
    run(pytester)
    results = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert {t["case"]: t["verdict"] for t in results["tests"]} == {"LWM2M-FW-001": "error", "LWM2M-FW-002": "fail"}


def test_only_unsupported_and_inconclusive_exit_zero(pytester: pytest.Pytester) -> None:
    write_test(pytester, """
    @pytest.mark.requirement("DM-CP-6")
    @pytest.mark.case("LWM2M-FW-001")
    def test_fw_001():
        '''LWM2M-FW-001'''
        unsupported("two servers")

    @pytest.mark.requirement("DM-CP-6")
    @pytest.mark.case("LWM2M-FW-002")
    def test_fw_002():
        '''LWM2M-FW-002'''
        inconclusive("no answer")
    """)
    res = run(pytester)
    assert res.ret == pytest.ExitCode.OK


ICS_TESTS = """
pytestmark = pytest.mark.role("server")

@pytest.mark.requirement("LightweightM2M-HLF-SG1")
@pytest.mark.case("LWM2M-FW-001")
@pytest.mark.ics("sms")
def test_fw_001_sms(dut_profile):
    '''LWM2M-FW-001'''
    raise AssertionError("must not run")

@pytest.mark.requirement("LightweightM2M-HLF-SG1")
@pytest.mark.case("LWM2M-FW-002")
@pytest.mark.ics("queue_mode", "security_mode:nosec")
def test_fw_002_queue(dut_profile):
    '''LWM2M-FW-002'''
    assert dut_profile.name == "fake-srv"
"""


def test_ics_feature_not_claimed_is_unsupported(pytester: pytest.Pytester) -> None:
    prof = fake_profile(pytester, "fake-srv", '"server"', ics_extra="queue_mode = true")
    write_test(pytester, ICS_TESTS)
    res = run(pytester, "--dut", str(prof), "-v")
    outcomes = res.parseoutcomes()
    assert outcomes["passed"] == 1 and outcomes["unsupported"] == 1 and "failed" not in outcomes
    res.stdout.fnmatch_lines(["*test_fw_001_sms*fake-srv-1.0*UNSUPPORTED*"])
    write_test(pytester, ICS_TESTS.replace('"sms"', '"telepathy"'))
    res = run(pytester, "--dut", str(prof))
    res.stdout.fnmatch_lines(["*test_fw_001_sms: unknown ICS feature 'telepathy'*"])


# -- DUT harness -----------------------------------------------------------------------------

DUT_TESTS = """
pytestmark = pytest.mark.role("server")

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-001")
async def test_fw_001_start(dut):
    '''LWM2M-FW-001'''
    await dut.start()
    assert dut.address("coap")[1] > 0

@pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
@pytest.mark.case("LWM2M-FW-002")
def test_fw_002_still_runs():
    '''LWM2M-FW-002'''
"""


def test_dut_that_never_becomes_ready_is_error_with_last_output(pytester: pytest.Pytester) -> None:
    prof = fake_profile(pytester, "fake-never", '"never"', ready_timeout=1)
    write_test(pytester, DUT_TESTS)
    res = run(pytester, "--dut", str(prof))
    res.assert_outcomes(passed=1, errors=1)
    res.stdout.fnmatch_lines(["*ERROR: server (fake-never 1.0) did not become ready*within 1 s*",
                              "*last DUT output:*", "*| booting fake DUT", "*| waiting for a licence server*"])


def test_dut_that_crashes_at_start_is_error_with_last_output(pytester: pytest.Pytester) -> None:
    prof = fake_profile(pytester, "fake-crash", '"crash"')
    write_test(pytester, DUT_TESTS)
    res = run(pytester, "--dut", str(prof))
    res.assert_outcomes(passed=1, errors=1)
    res.stdout.fnmatch_lines(["*ERROR: server (fake-crash 1.0) exited before becoming ready*exited with status 3*",
                              "*| [[]stderr[]] fatal: cannot open /nonexistent/config*"])
    log = next((pytester.path / "reports" / "evidence").glob("*fw_001*/server.stderr.log"))
    assert "fatal" in log.read_text()


def test_dut_crash_during_test_is_error(pytester: pytest.Pytester) -> None:
    prof = fake_profile(pytester, "fake-dies", '"server", "0.2"')
    write_test(pytester, """
    pytestmark = pytest.mark.role("server")

    @pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
    @pytest.mark.case("LWM2M-FW-001")
    async def test_fw_001_dies(dut):
        '''LWM2M-FW-001'''
        await dut.start()
        await asyncio.sleep(0.6)

    @pytest.mark.requirement("LightweightM2M-HLF-00X1.6")
    @pytest.mark.case("LWM2M-FW-002")
    async def test_fw_002_guard(dut):
        '''LWM2M-FW-002'''
        await dut.start()
        await dut.guard(asyncio.sleep(5), timeout=3, what="a notification")
    """)
    res = run(pytester, "--dut", str(prof))
    res.assert_outcomes(passed=1, errors=2)
    res.stdout.fnmatch_lines(["*ERROR at teardown of test_fw_001_dies*"])
    res.stdout.fnmatch_lines(["*server (fake-dies) exited with status 70 during the test*"])
    res.stdout.fnmatch_lines(["*ERROR: server exited with status 70 while waiting for a notification*",
                              "*| fake DUT: simulated crash*"])


# -- malformed data files --------------------------------------------------------------------

def test_malformed_profile_stops_run_with_file_and_line(pytester: pytest.Pytester) -> None:
    write_test(pytester, GOOD)
    prof = fake_profile(pytester, "fake-bad", '"server"')
    text = prof.read_text().replace('[stop]\n', '[stop]\nsignall = "SIGTERM"\n')
    prof.write_text(text)
    line = text.splitlines().index('signall = "SIGTERM"') + 1
    res = run(pytester, "--dut", str(prof))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*fake-bad.toml:{line}: [[]stop[]] signall: unknown key 'signall'*"])
    assert " passed" not in res.stdout.str()
    prof.write_text(text.replace('signall = "SIGTERM"', 'timeout = = 3'))
    res = run(pytester, "--dut", str(prof))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines([f"*fake-bad.toml:{line}: TOML syntax error*line {line}*"])
    prof.write_text(text.replace('signall = "SIGTERM"\n', '').replace('"{python}"', '"{pythn}"'))
    res = run(pytester, "--dut", str(prof))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*fake-bad.toml:7: [[]start.default[]] command: unknown placeholder {pythn}*"])


def test_malformed_catalogue_stops_run_with_file_and_line(pytester: pytest.Pytester) -> None:
    write_test(pytester, GOOD)
    cat = pytester.path / "cat.toml"
    cat.write_text(textwrap.dedent("""\
        format = 1
        [[requirement]]
        label = "X-1"
        text = "The thing SHALL work."
        kind = "stated"
        strength = "MUST"
        roles = ["client"]
        source.seed = "s.txt"
        source.passage = "X-1 The thing SHALL work."
        """))
    res = run(pytester, "--catalogue", str(cat))
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    res.stderr.fnmatch_lines(["*cat.toml:6: requirement 'X-1': strength must be one of*got 'MUST'*"])


# -- reports and evidence --------------------------------------------------------------------

PCAP_TEST = """
pytestmark = pytest.mark.role("server")

@pytest.mark.requirement("LightweightM2M-HLF-00X1.4")
@pytest.mark.case("LWM2M-FW-001")
async def test_fw_001_get(dut, make_proxy):
    '''LWM2M-FW-001 a GET through the recording proxy'''
    with step("start the DUT"):
        await dut.start()
    proxy = await make_proxy(dut.address("coap"), name="client", dut_side="upstream")
    loop = asyncio.get_running_loop()
    got = loop.create_future()

    class P(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            if not got.done():
                got.set_result(data)

    tr, _ = await loop.create_datagram_endpoint(P, remote_addr=proxy.address)
    with step("GET /3/0/0"):
        # CON GET, MID 0x0102, token 0xAB, Uri-Path "3" "0" "0"
        tr.sendto(bytes([0x41, 0x01, 0x01, 0x02, 0xAB, 0xB1]) + b"3" + bytes([0x01]) + b"0" + bytes([0x01]) + b"0")
        data = await dut.guard(got, 3, "the response")
    tr.close()
    check(data[1] == 0x45, expected="2.05 Content", actual=hex(data[1]))
"""


def test_reports_matrix_and_pcap_decoded_by_tshark(pytester: pytest.Pytester) -> None:
    p1 = fake_profile(pytester, "fake-a", '"server"')
    p2 = fake_profile(pytester, "fake-b", '"server"')
    write_test(pytester, PCAP_TEST)
    res = run(pytester, "--dut", str(p1), "--dut", str(p2))
    res.assert_outcomes(passed=2)
    rd = pytester.path / "reports"
    html = (rd / "index.html").read_text()
    assert "Interoperability matrix" in html and "Traceability matrix" in html
    assert "<th>fake-a-1.0</th>" in html and "<th>fake-b-1.0</th>" in html
    assert "UNCOVERED" in html and "GET /3/0/0" in html and "2.05 Content" in html  # SVG labels
    assert "<script" not in html and "cdn" not in html.lower()
    assert "capture.pcap" in html and "tshark -d udp.port==" in html
    summary = (rd / "summary.md").read_text()
    assert "| LWM2M-FW-001 | PASS | PASS |" in summary
    allure_json = [json.loads(p.read_text()) for p in (rd / "allure-results").glob("*-result.json")]
    assert len(allure_json) == 2
    labels = {(lab["name"], lab["value"]) for r in allure_json for lab in r["labels"]}
    assert ("requirement", "LightweightM2M-HLF-00X1.4") in labels and ("case", "LWM2M-FW-001") in labels
    assert any(link["url"].startswith("http://www.openmobilealliance.org/") for r in allure_json for link in r["links"])
    # the stored tshark command decodes the pcap as CoAP
    ev_dir = next((rd / "evidence").glob("*fake-a*"))
    cmd = (ev_dir / "tshark.txt").read_text().split()
    assert cmd[:2] == ["tshark", "-d"] and cmd[2].startswith("udp.port==") and cmd[2].endswith(",coap")
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed")
    out = subprocess.run(cmd + ["-T", "fields", "-e", "coap.code", "-e", "coap.opt.uri_path", "-e", "coap.mid"],
                         capture_output=True, text=True, timeout=30).stdout.split("\n")
    rows = [r.split("\t") for r in out if r.strip()]
    assert ["1", "3,0,0", "258"] in rows  # GET /3/0/0, MID 0x0102
    assert ["69", "", "258"] in rows      # 2.05 Content, piggybacked
    steps = json.loads((ev_dir / "result.json").read_text())["steps"]
    assert [s["title"] for s in steps if s["outcome"] == "passed"] == ["start the DUT", "GET /3/0/0"]


def test_xdist_run_collects_results_on_controller(pytester: pytest.Pytester) -> None:
    write_test(pytester, VERDICTS.split("#CUT")[0])
    extra = [] if entry_point_active() else ["-p", PLUGIN]
    res = pytester.runpytest_subprocess(*extra, "-p", "no:cacheprovider", "-n", "2", timeout=60)
    assert res.ret == pytest.ExitCode.TESTS_FAILED
    results = json.loads((pytester.path / "reports" / "results.json").read_text())
    assert sorted(t["verdict"] for t in results["tests"]) == ["fail", "pass"]
    trace = {t["requirement"]: t["status"] for t in results["traceability"]}
    assert trace["LightweightM2M-HLF-00X1.6"] == "covered" and trace["DM-CP-6"] == "UNCOVERED"
