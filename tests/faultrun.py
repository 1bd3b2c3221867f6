"""Shared machinery of the fault-injection tests (tests/test_faults_*.py): derive a faulty
variant's profile from a bundled reference profile, and run conformance cases against profiles in
a nested pytest session whose verdicts are read back from its JUnit XML (properties ``case``,
``dut``, ``verdict``)."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent

Verdicts = dict[tuple[str, str], list[str]]


def faulty_client_profile(tmp: Path, reference: Path, module: str, fault: str, name: str) -> Path:
    """``reference`` (a client profile starting ``lwm2m-client``) with every start command running
    ``python -m MODULE --fault FAULT`` instead, under the implementation name ``name``."""
    text = reference.read_text()
    assert '"lwm2m-client", ' in text, f"{reference} no longer starts lwm2m-client"
    text = text.replace('"lwm2m-client", ', f'"{{python}}", "-m", "{module}", "--fault", "{fault}", ')
    text = text.replace('name = "lwm2m-reference-client"', f'name = "{name}"')
    assert f'name = "{name}"' in text, f"{reference}: implementation name not found"
    p = tmp / f"{name}.toml"
    p.write_text(text)
    return p


def run_cases(tmp: Path, test_files: Sequence[str | Path], profiles: Sequence[Path], cases: Sequence[str], *,
              extra: Sequence[str] = (), jobs: int = 0, env: Mapping[str, str] | None = None,
              timeout: float = 300) -> Verdicts:
    """Run ``cases`` of ``test_files`` against ``profiles``; (case ID, DUT id) -> item verdicts."""
    report = tmp / "report"
    argv = [sys.executable, "-m", "pytest", *map(str, test_files), "-q", "-p", "no:cacheprovider",
            "--report-dir", str(report), *extra]
    argv += ["-n", str(jobs)] if jobs else ["-p", "no:xdist"]
    for p in profiles:
        argv += ["--dut", str(p)]
    for c in cases:
        argv += ["--case", c]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(env) if env is not None else None)
    junit = report / "junit.xml"
    assert junit.exists(), f"no JUnit report; exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
    out: Verdicts = {}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        props = {p.get("name"): p.get("value") for p in tc.iter("property")}
        out.setdefault((str(props.get("case")), str(props.get("dut"))), []).append(str(props.get("verdict")))
    return out


def verdicts_of(verdicts: Verdicts, case: str, dut_prefix: str) -> list[str]:
    """The verdicts of ``case`` for the DUTs whose id starts with ``dut_prefix``."""
    return [v for (c, dut), vs in verdicts.items() if c == case and dut.startswith(dut_prefix) for v in vs]
