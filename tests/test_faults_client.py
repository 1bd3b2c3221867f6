"""Every client fault of faulty/client.py is caught by the conformance test made for it (verdict
fail -- not error, not pass), and the unmodified reference client passes those same tests.

Each run is the conformance suite in a subprocess (own pytest session, report directory and DUT
processes) with ``--case`` selecting the catching test(s) and ``--dut`` the profile: the bundled
reference client, or a copy of it whose start commands run ``python -m faulty.client --fault NAME``.
Verdicts are read from the run's JUnit XML (properties ``case``, ``dut``, ``verdict``).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path as FsPath

import pytest

from tests.faultrun import Verdicts, faulty_client_profile, run_cases, verdicts_of

ROOT = FsPath(__file__).resolve().parent.parent
REFERENCE_PROFILE = ROOT / "fixtures" / "profiles" / "reference-client.toml"
TESTS = ROOT / "conformance" / "tests"

#: fault -> the conformance case(s) that must catch it
CAUGHT_BY: dict[str, list[str]] = {
    "security-in-register": ["LightweightM2M-1.1-int-101"],
    "wrong-location": ["LightweightM2M-1.1-int-102"],
    "disable-ignored": ["LightweightM2M-1.1-int-103"],
    "no-reregister-after-404": ["LightweightM2M-1.1-int-105"],
    "no-lifetime-renewal": ["LightweightM2M-1.1-int-107"],
    "finish-accepts-inconsistent": ["LightweightM2M-1.1-int-9"],
    "security-readable": ["LightweightM2M-1.1-int-221"],
    "write-read-only-accepted": ["LightweightM2M-1.1-int-256"],
    "notify-faster-than-pmin": ["LWM2M-CREP-001"],
    "pmax-ignored": ["LightweightM2M-1.1-int-301"],
    "rst-does-not-cancel": ["LightweightM2M-1.1-int-302"],
    "acl-ignored": ["LWM2M-CMS-002"],
    "duplicate-con-reprocessed": ["LWM2M-CPKT-007"],
    "plaintext-to-coaps": ["LightweightM2M-1.1-int-401"],
    "update-trigger-ignored": ["LightweightM2M-1.1-int-104"],
    "value-conditions-ignored": ["LWM2M-CREP-003"],
    "attributes-not-per-server": ["LightweightM2M-1.1-int-951"],
}


def faulty_profile(tmp: FsPath, fault: str) -> FsPath:
    return faulty_client_profile(tmp, REFERENCE_PROFILE, "faulty.client", fault, f"faulty-client-{fault}")


def run_client_cases(tmp: FsPath, profile: FsPath, cases: list[str], jobs: int = 0) -> Verdicts:
    return run_cases(tmp, sorted(TESTS.glob("test_client_*.py")), [profile], cases, jobs=jobs, timeout=240)


def test_reference_passes_every_catching_case(tmp_path: FsPath) -> None:
    """The unmodified reference client passes every case a fault is caught by (else a fault
    "caught" might only be a test that always fails)."""
    cases = sorted({c for cs in CAUGHT_BY.values() for c in cs})
    verdicts = run_client_cases(tmp_path, REFERENCE_PROFILE, cases, jobs=2)
    got = {c: v for (c, _), v in verdicts.items()}
    assert set(got) == set(cases), f"cases not run: {sorted(set(cases) - set(got))} (all: {verdicts})"
    bad = {c: v for c, v in got.items() if v != ["pass"]}
    assert not bad, f"reference client verdicts other than pass: {bad}"


@pytest.mark.parametrize("fault", sorted(CAUGHT_BY))
def test_fault_is_caught(fault: str, tmp_path: FsPath) -> None:
    cases = CAUGHT_BY[fault]
    verdicts = run_client_cases(tmp_path, faulty_profile(tmp_path, fault), cases)
    for case in cases:
        got = verdicts_of(verdicts, case, f"faulty-client-{fault}")
        assert got == ["fail"], f"{case}: fault {fault!r} verdicts {got} (all: {verdicts})"


def test_faulty_cli_rejects_unknown_fault() -> None:
    proc = subprocess.run([sys.executable, "-m", "faulty.client", "--fault", "nope"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_every_fault_has_a_catching_case() -> None:
    from faulty.client import FAULTS

    assert set(FAULTS) == set(CAUGHT_BY)
