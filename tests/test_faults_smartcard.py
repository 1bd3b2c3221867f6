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
from pathlib import Path as FsPath

import pytest

from tests.faultrun import Verdicts, faulty_client_profile, run_cases, verdicts_of

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
    return faulty_client_profile(tmp, REFERENCE_PROFILE, "faulty.smartcard", fault, f"faulty-smartcard-{fault}")


def run_smartcard_cases(tmp: FsPath, profiles: list[FsPath], cases: list[str]) -> Verdicts:
    # the faults are in the client's card logic, not in the transport: card image files keep these
    # runs off the machine-wide PC/SC lock (the conformance run itself covers real PC/SC)
    env = {**os.environ, "LWM2M_CARD_TRANSPORT": "image"}
    return run_cases(tmp, [ROOT / "conformance" / "tests" / "test_smartcard_client.py"], profiles, cases,
                     env=env, timeout=240)


@pytest.mark.parametrize("fault", sorted(CAUGHT_BY))
def test_fault_is_caught_and_reference_passes(fault: str, tmp_path: FsPath) -> None:
    cases = CAUGHT_BY[fault]
    verdicts = run_smartcard_cases(tmp_path, [REFERENCE_PROFILE, faulty_profile(tmp_path, fault)], cases)
    for case in cases:
        ref = verdicts_of(verdicts, case, "lwm2m-reference-client")
        bad = verdicts_of(verdicts, case, f"faulty-smartcard-{fault}")
        assert ref == ["pass"], f"{case}: reference verdicts {ref} (all: {verdicts})"
        assert bad == ["fail"], f"{case}: fault {fault!r} verdicts {bad} (all: {verdicts})"


def test_faulty_cli_rejects_unknown_fault() -> None:
    proc = subprocess.run([sys.executable, "-m", "faulty.smartcard", "--fault", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
