"""Every smartcard fault of faulty/smartcard.py is caught by the DM-SC conformance test made for it
(verdict fail), and the unmodified reference client passes the same test in the same run.

Each case runs the conformance suite in a subprocess (its own pytest session, report directory and
DUT processes) with two client profiles: the bundled reference client and a copy of it whose
start commands run ``python -m faulty.smartcard --fault NAME``; ``--case`` selects the test. The
verdicts are read from the run's JUnit XML (property ``verdict`` of each test case). The cards
are passed as image files (``LWM2M_CARD_TRANSPORT=image``); conformance/tests runs them over PC/SC.
"""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path as FsPath

import pytest

ROOT = FsPath(__file__).resolve().parent.parent
REFERENCE_PROFILE = ROOT / "fixtures" / "profiles" / "reference-client.toml"

#: fault -> the conformance case(s) that must catch it
CAUGHT_BY = {
    "never-connects": ["LWM2M-SC-001"],
    "connects-unindicated": ["LWM2M-SC-002"],
    "connects-without-asking": ["LWM2M-SC-003"],
    "ignores-refusal": ["LWM2M-SC-004"],
    "trusts-truncated": ["LWM2M-SC-006", "LWM2M-SC-007"],
}


def faulty_profile(tmp: FsPath, fault: str) -> FsPath:
    """The reference client's profile with every start command replaced by the faulty variant."""
    text = REFERENCE_PROFILE.read_text()
    assert text.count('"lwm2m-client", ') >= 1, "reference profile no longer starts lwm2m-client"
    text = text.replace('"lwm2m-client", ', f'"{{python}}", "-m", "faulty.smartcard", "--fault", "{fault}", ')
    text = text.replace('name = "lwm2m-reference-client"', f'name = "faulty-smartcard-{fault}"')
    assert f"faulty-smartcard-{fault}" in text
    p = tmp / f"faulty-{fault}.toml"
    p.write_text(text)
    return p


def run_cases(tmp: FsPath, profiles: list[FsPath], cases: list[str]) -> dict[tuple[str, str], str]:
    """{(case, dut profile id): verdict} of one bounded suite run."""
    report = tmp / "report"
    cmd = [sys.executable, "-m", "pytest", str(ROOT / "conformance" / "tests" / "test_smartcard_client.py"),
           "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--report-dir", str(report)]
    for p in profiles:
        cmd += ["--dut", str(p)]
    for c in cases:
        cmd += ["--case", c]
    # the faults are in the client's card logic, not in the transport: card image files keep these
    # runs off the machine-wide PC/SC lock (the conformance run itself covers real PC/SC)
    env = {**os.environ, "LWM2M_CARD_TRANSPORT": "image"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    junit = report / "junit.xml"
    assert junit.exists(), f"no JUnit report; exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    out: dict[tuple[str, str], str] = {}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        out[(str(props.get("case")), str(props.get("dut")))] = str(props.get("verdict"))
    return out


@pytest.mark.parametrize("fault", sorted(CAUGHT_BY))
def test_fault_is_caught_and_reference_passes(fault: str, tmp_path: FsPath) -> None:
    cases = CAUGHT_BY[fault]
    verdicts = run_cases(tmp_path, [REFERENCE_PROFILE, faulty_profile(tmp_path, fault)], cases)
    for case in cases:
        ref = [v for (c, dut), v in verdicts.items() if c == case and dut.startswith("lwm2m-reference-client")]
        bad = [v for (c, dut), v in verdicts.items() if c == case and dut.startswith(f"faulty-smartcard-{fault}")]
        assert ref == ["pass"], f"{case}: reference verdicts {ref} (all: {verdicts})"
        assert bad == ["fail"], f"{case}: fault {fault!r} verdicts {bad} (all: {verdicts})"


def test_faulty_cli_rejects_unknown_fault() -> None:
    proc = subprocess.run([sys.executable, "-m", "faulty.smartcard", "--fault", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
