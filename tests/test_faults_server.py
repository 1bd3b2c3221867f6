"""Every server-side and bootstrap-server-side conformance check can fail.

For each conformance case that must catch faults of :mod:`faulty.server` / :mod:`faulty.bootstrap`,
one nested ``pytest`` session runs that case (``--case``) against the unmodified reference and
against every faulty variant it must catch (one generated profile each, starting
``python -m faulty.<role> --fault NAME``): the reference must PASS and each fault must end FAIL,
so the FAIL is caused by the fault alone.

The generated profiles copy the bundled reference profiles' readiness, stop and action tables;
only the start command differs (and, for the server, it also provisions the harness's PSK
credential so that the DTLS case can run).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.faultrun import Verdicts, run_cases

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ROOT / "fixtures" / "profiles"

#: fault -> the case IDs that must end with verdict FAIL against it
SERVER_FAULTS: dict[str, list[str]] = {
    "wrong-location": ["LightweightM2M-1.0-int-101"],
    "created-204": ["LightweightM2M-1.0-int-101"],
    "no-location": ["LightweightM2M-1.0-int-101"],
    "missing-ep-accepted": ["LWM2M-SRV-REG-003"],
    "bad-lifetime-accepted": ["LWM2M-SRV-REG-004"],
    "unknown-location-ok": ["LWM2M-SRV-REG-008"],
    "update-ignores-lifetime": ["LightweightM2M-1.0-int-102"],
    "update-ignores-binding": ["LWM2M-SRV-REG-002"],
    "update-ignores-sms": ["LWM2M-SRV-SMS-001"],
    "never-expire": ["LWM2M-SRV-REG-009"],
    "duplicate-reprocessed": ["LWM2M-SRV-COAP-007"],
    "critical-option-ignored": ["LWM2M-SRV-COAP-006"],
    "format-error-4.00": ["LWM2M-SRV-COAP-002"],
    "crash-on-malformed": ["LWM2M-SRV-COAP-003"],
    "dm-wrong-path": ["LightweightM2M-1.0-int-201"],
    "dm-write-as-post": ["LightweightM2M-1.0-int-205"],
    "dm-wrong-content-format": ["LightweightM2M-1.0-int-205"],
    "psk-identity-unchecked": ["LightweightM2M-1.0-int-401"],
    "charging-undercount": ["LWM2M-SRV-CHG-001"],
}
BOOTSTRAP_FAULTS: dict[str, list[str]] = {
    "skip-finish": ["LightweightM2M-1.0-int-0"],
    "wrong-server-uri": ["LightweightM2M-1.0-int-0"],
    "wrong-lifetime": ["LightweightM2M-1.0-int-0"],
    "no-server-instance": ["LightweightM2M-1.0-int-0"],
    "finish-first": ["LightweightM2M-1.0-int-0"],
    "request-404": ["LightweightM2M-1.0-int-0"],
    "accepts-unknown": ["LWM2M-BS-001"],
    "missing-ep-accepted": ["LWM2M-BS-002"],
}

_SERVER_ARGS = ("--coap-host 127.0.0.1 --coap-port 0 --coaps-port 0 --http-host 127.0.0.1 --http-port 0 "
                "--state-dir '{state_dir}' --psk-file '{state_dir}/psk.txt' --log-level WARNING")
_BOOTSTRAP_ARGS = ["--coap-host", "127.0.0.1", "--coap-port", "0", "--coaps-port", "0", "--http-host", "127.0.0.1",
                   "--http-port", "0", "--state-dir", "{state_dir}", "--log-level", "WARNING"]


def _with_start(base: Path, name: str, command: list[str]) -> str:
    """The text of profile ``base`` with another implementation name and [start.default] command."""
    text = base.read_text()
    text, n = re.subn(r"(\[start\.default\]\s*\ncommand\s*=\s*)\[.*?\]\s*\n", lambda m: m.group(1) + json.dumps(command) + "\n",
                      text, count=1, flags=re.S)
    assert n == 1, f"{base}: no [start.default] command to replace"
    text, n = re.subn(r'(?m)^name\s*=\s*"[^"]*"', f'name = "{name}"', text, count=1)
    assert n == 1
    return text


def server_profile(tmp: Path, fault: str | None) -> Path:
    exe = f"'{{python}}' -m faulty.server --fault {fault}" if fault else "'{python}' -m reference.server.cli"
    script = ("printf '%s %s %s\\n' '{psk_identity}' '{endpoint}' '{psk_key_hex}' > '{state_dir}/psk.txt' && "
              f"exec {exe} {_SERVER_ARGS}")
    name = f"faulty-server-{fault}" if fault else "reference-server-as-generated"
    path = tmp / f"{name}.toml"
    path.write_text(_with_start(PROFILES / "reference-server.toml", name, ["sh", "-c", script]))
    return path


def bootstrap_profile(tmp: Path, fault: str | None) -> Path:
    exe = ["{python}", "-m", "faulty.bootstrap", "--fault", fault] if fault else ["{python}", "-m", "reference.bootstrap.cli"]
    name = f"faulty-bootstrap-{fault}" if fault else "reference-bootstrap-as-generated"
    path = tmp / f"{name}.toml"
    path.write_text(_with_start(PROFILES / "reference-bootstrap-server.toml", name, exe + _BOOTSTRAP_ARGS))
    return path


def case_files(cases: list[str]) -> list[str]:
    """The conformance test files defining ``cases`` (collecting only those keeps each run short)."""
    files = []
    for f in sorted((ROOT / "conformance" / "tests").glob("test_*.py")):
        text = f.read_text()
        if any(f'case("{c}")' in text for c in cases):
            files.append(str(f.relative_to(ROOT)))
    assert files, f"no conformance test file defines {cases}"
    return files


#: cases with many parametrized instances: only the instance(s) the fault is about (-k expression)
CASE_SELECT = {"LWM2M-SRV-REG-004": "abc", "LWM2M-SRV-COAP-002": "15"}


#: cases gated on an ICS claim the bundled reference profile does not make: the generated profiles
#: claim it (regex substitution on the profile text). The reference server accepts and records
#: ``b=US``/``sms=`` over UDP but has no SMS bearer, so only these generated profiles claim ``sms``.
CASE_ICS = {"LWM2M-SRV-SMS-001": (r"(?m)^sms = false$", "sms = true")}


def claim_for(case: str, profile: Path) -> Path:
    """``profile`` with the ICS claim ``case`` needs (see CASE_ICS); unchanged for other cases."""
    if case in CASE_ICS:
        text, n = re.subn(*CASE_ICS[case], profile.read_text())
        assert n == 1, f"{profile}: cannot add the ICS claim for {case}"
        profile.write_text(text)
    return profile


def run_server_cases(profiles: list[Path], cases: list[str], tmp: Path) -> Verdicts:
    """Run the conformance cases against every profile (one nested pytest session); return
    (case ID, DUT id) -> verdicts of the items."""
    extra = ["-p", "no:hypothesispytest", "--dut-timeout", "20"]
    for c in cases:
        if c in CASE_SELECT:
            extra += ["-k", CASE_SELECT[c]]
    return run_cases(tmp, case_files(cases), profiles, cases, extra=extra)


def _by_case(table: dict[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for fault, cases in table.items():
        for c in cases:
            out.setdefault(c, []).append(fault)
    return out


SERVER_CASES = _by_case(SERVER_FAULTS)
BOOTSTRAP_CASES = _by_case(BOOTSTRAP_FAULTS)


def _check(verdicts: dict[tuple[str, str], list[str]], case: str, reference: str, faults: dict[str, str]) -> None:
    ref = verdicts.get((case, reference + "-0.1.0"))
    assert ref and set(ref) == {"pass"}, f"{case}: the unmodified reference does not pass: {ref} ({verdicts})"
    for fault, dut in faults.items():
        got = verdicts.get((case, dut + "-0.1.0"))
        assert got is not None, f"{case} did not run against fault {fault}: {verdicts}"
        assert "fail" in got, f"fault {fault!r}: {case} did not FAIL: {got}"


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SERVER_CASES))
def test_server_faults_fail_case(case: str, tmp_path: Path) -> None:
    """The case is PASS against the reference server and FAIL against each fault it must catch."""
    faults = {f: f"faulty-server-{f}" for f in SERVER_CASES[case]}
    profiles = [claim_for(case, server_profile(tmp_path, None))] + \
        [claim_for(case, server_profile(tmp_path, f)) for f in faults]
    _check(run_server_cases(profiles, [case], tmp_path), case, "reference-server-as-generated", faults)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BOOTSTRAP_CASES))
def test_bootstrap_faults_fail_case(case: str, tmp_path: Path) -> None:
    """The case is PASS against the reference bootstrap server and FAIL against each fault."""
    faults = {f: f"faulty-bootstrap-{f}" for f in BOOTSTRAP_CASES[case]}
    profiles = [bootstrap_profile(tmp_path, None)] + [bootstrap_profile(tmp_path, f) for f in faults]
    _check(run_server_cases(profiles, [case], tmp_path), case, "reference-bootstrap-as-generated", faults)


def test_every_fault_is_listed() -> None:
    """The fault tables here and in faulty/ agree (a new fault needs a catching case)."""
    from faulty.bootstrap import FAULTS as BS
    from faulty.server import FAULTS as SRV

    assert set(SRV) == set(SERVER_FAULTS)
    assert set(BS) == set(BOOTSTRAP_FAULTS)
