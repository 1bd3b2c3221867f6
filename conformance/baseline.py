"""Expected-verdict baselines (``--baseline FILE``; format in docs/report.md).

A baseline records, per implementation and test case, the verdict a run is expected to produce,
with the reason (the deviation and the specification clause) for every expectation other than
pass. It lets CI gate on *changes*: with a baseline the run's exit status is non-zero only when an
actual verdict differs from the expected one. It never changes a verdict: a known fail is still
reported as fail everywhere; the reports only say, beside it, that it was expected and why.

File format (TOML)::

    format = 1

    [[expect]]
    implementation = "lwm2m-node-lib-client"   # [implementation] name of the profile; a test
                                               # with two DUT roles: names joined with "+"
    case = "LightweightM2M-1.1-int-101"         # the test-case ID
    verdict = "fail"                            # pass | fail | error | inconclusive | unsupported
    reason = "Register has no Content-Format option (Transport 1.1.1 §6.2 ...)"
    # instance = "lt=abc"                       # optional: one parametrized instance only

An implementation/case without an entry is expected to be *pass* or *unsupported*. An entry
without ``instance`` covers every instance of the case for that implementation, unless an entry
with the instance's ID is more specific.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from conformance.tomlsource import DataFileError, TomlSource
from conformance.verdicts import Verdict

FORMAT = 1
_TOP_KEYS = {"format", "expect"}
_ENTRY_KEYS = {"implementation", "case", "verdict", "reason", "instance"}
_NAME_RX = re.compile(r"^[A-Za-z0-9._-]+(\+[A-Za-z0-9._-]+)*$")
_CASE_RX = re.compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-.][A-Za-z0-9]+)*-[A-Za-z]*-?[0-9]+[A-Za-z]?$")
#: verdicts an implementation/case without an entry may have without differing from the baseline
IMPLICIT = (Verdict.PASS, Verdict.UNSUPPORTED)

MATCH = "expected"
REGRESSION = "regression"
UNEXPECTED_PASS = "unexpected-pass"


@dataclass(frozen=True)
class Expectation:
    """One ``[[expect]]`` entry; ``line`` is its header line in the file."""

    implementation: str
    case: str
    verdict: Verdict
    reason: str
    instance: str | None
    line: int

    @property
    def where(self) -> str:
        return f"line {self.line}"


@dataclass(frozen=True)
class Comparison:
    """An actual verdict compared with the baseline.

    ``status`` is ``expected`` (matches), ``regression`` (differs, and is not a pass) or
    ``unexpected-pass`` (a pass where the baseline expects another verdict). ``entry`` is the
    matching baseline entry, ``None`` when the implicit expectation (pass or unsupported) applied.
    """

    status: str
    actual: Verdict
    expected: tuple[Verdict, ...]
    entry: Expectation | None

    @property
    def differs(self) -> bool:
        return self.status != MATCH

    @property
    def expected_text(self) -> str:
        return " or ".join(v.value for v in self.expected)

    @property
    def known_deviation(self) -> bool:
        """A matching non-pass expectation with a reason (shown beside the verdict)."""
        return self.status == MATCH and self.entry is not None and self.entry.verdict != Verdict.PASS

    def as_json(self, path: Path) -> dict[str, Any]:
        return {"status": self.status, "expected": [v.value for v in self.expected],
                "reason": self.entry.reason if self.entry else None,
                "source": f"{path}:{self.entry.line}" if self.entry else None}


@dataclass
class Baseline:
    """A loaded, validated baseline file."""

    path: Path
    entries: list[Expectation] = field(default_factory=list)

    def lookup(self, implementation: str, case: str, instance: str | None) -> Expectation | None:
        """The entry for this execution: the one naming its instance, else the case-wide one."""
        general = None
        for e in self.entries:
            if e.implementation != implementation or e.case != case:
                continue
            if e.instance is not None and e.instance == (instance or None):
                return e
            if e.instance is None:
                general = e
        return general

    def compare(self, implementation: str, case: str, instance: str | None, actual: Verdict) -> Comparison:
        entry = self.lookup(implementation, case, instance)
        expected = (entry.verdict,) if entry is not None else IMPLICIT
        if actual in expected:
            status = MATCH
        elif actual == Verdict.PASS:
            status = UNEXPECTED_PASS
        else:
            status = REGRESSION
        return Comparison(status, actual, expected, entry)

    def unused(self, seen: Iterable[tuple[str, str, str | None]]) -> list[Expectation]:
        """Entries that matched no execution of this run (stale, or not selected this time)."""
        keys = set(seen)
        out = []
        for e in self.entries:
            hit = any(impl == e.implementation and case == e.case and (e.instance is None or inst == e.instance)
                      for impl, case, inst in keys)
            if not hit:
                out.append(e)
        return out


def load_baseline(path: Path | str) -> Baseline:
    """Read and validate a baseline; raise :class:`DataFileError` (``file:line: message``)."""
    src = TomlSource.load(path)
    data = src.data
    for key in data:
        if key not in _TOP_KEYS:
            raise DataFileError(src.path, src.key_line("", key) or src.table_line(key),
                                f"unknown key {key!r} (known: {', '.join(sorted(_TOP_KEYS))})")
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT or isinstance(fmt, bool):
        raise DataFileError(src.path, src.key_line("", "format"), f"format must be {FORMAT}, got {fmt!r}")
    raw = data.get("expect", [])
    if not isinstance(raw, list) or not all(isinstance(x, dict) for x in raw):
        raise DataFileError(src.path, src.key_line("", "expect") or src.table_line("expect"),
                            "expect must be an array of tables ([[expect]])")
    base = Baseline(src.path)
    seen: dict[tuple[str, str, str | None], int] = {}
    verdicts = [v.value for v in Verdict]
    for i, e in enumerate(raw):
        head = src.table_line("expect", i)

        def at(key: str) -> int:
            return src.key_line("expect", key, i) or head

        for key in e:
            if key not in _ENTRY_KEYS:
                raise DataFileError(src.path, at(key), f"[[expect]] {key}: unknown key {key!r} "
                                    f"(known: {', '.join(sorted(_ENTRY_KEYS))})")
        for key in ("implementation", "case", "verdict"):
            if key not in e:
                raise DataFileError(src.path, head, f"[[expect]]: missing key {key!r}")
        for key in ("implementation", "case", "verdict", "reason", "instance"):
            if key in e and not isinstance(e[key], str):
                raise DataFileError(src.path, at(key), f"[[expect]] {key}: must be a string, got {type(e[key]).__name__}")
        impl, case, verdict = e["implementation"].strip(), e["case"].strip(), e["verdict"].strip()
        if not _NAME_RX.match(impl):
            raise DataFileError(src.path, at("implementation"),
                                f"[[expect]] implementation: {impl!r} is not an implementation name "
                                "([A-Za-z0-9._-], several joined with '+')")
        if not _CASE_RX.match(case):
            raise DataFileError(src.path, at("case"), f"[[expect]] case: malformed case ID {case!r}")
        if verdict not in verdicts:
            raise DataFileError(src.path, at("verdict"),
                                f"[[expect]] verdict: {verdict!r} is not one of {', '.join(verdicts)}")
        reason = e.get("reason", "").strip()
        if verdict != Verdict.PASS.value and not reason:
            raise DataFileError(src.path, at("reason") if "reason" in e else head,
                                f"[[expect]] {impl} {case}: verdict {verdict!r} needs a reason "
                                "(the deviation and the specification clause)")
        instance = e.get("instance")
        instance = instance.strip() if isinstance(instance, str) else None
        if instance == "":
            raise DataFileError(src.path, at("instance"), "[[expect]] instance: must not be empty")
        key3 = (impl, case, instance)
        if key3 in seen:
            raise DataFileError(src.path, head, f"[[expect]] {impl} {case}"
                                + (f" [{instance}]" if instance else "")
                                + f": given twice (first at line {seen[key3]})")
        seen[key3] = head
        base.entries.append(Expectation(impl, case, Verdict(verdict), reason, instance, head))
    return base
