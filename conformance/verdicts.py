"""Verdicts of conformance test cases and the helpers test cases use to reach them.

Five verdicts (ETSI/OMA test-description vocabulary):

========== =========================================================== ==================
verdict    meaning                                                     pytest outcome
========== =========================================================== ==================
pass       every check held                                            passed
fail       a check of a requirement did not hold (``check``/``fail``,  failed
           or a plain ``assert`` in the test body)
inconclusive the test could not reach a verdict (``inconclusive``,     skipped
           or a plain ``pytest.skip``)
unsupported the DUT does not claim a feature the test needs (ICS),     skipped
           or its profile cannot drive a needed action
error      the harness or the DUT broke: DUT never ready, crashed,     error
           hung; a bug in the test itself (unexpected exception)
========== =========================================================== ==================

A failing check prints h2spec-style::

    Requirement: DM-SC-GEN-X — The Device SHALL establish the connection ...
    Expected:    a Register request (POST /rd) within 10 s of start
    Actual:      no datagram from the DUT
    Exchange:    (the recorded CoAP messages of the test)
"""
from __future__ import annotations

import enum
from typing import Any, Iterable, NoReturn

import pytest


class Verdict(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    UNSUPPORTED = "unsupported"
    ERROR = "error"

    @classmethod
    def worst(cls, verdicts: Iterable["Verdict"]) -> "Verdict":
        """Combine the verdicts of a test's phases: fail > error > inconclusive > unsupported > pass.

        A fail outranks an error because a violated requirement was observed before the
        harness or the DUT broke; the error is still shown in the test's report.
        """
        order = [cls.FAIL, cls.ERROR, cls.INCONCLUSIVE, cls.UNSUPPORTED, cls.PASS]
        vs = list(verdicts)
        for v in order:
            if v in vs:
                return v
        return cls.PASS


def format_exchange(exchange: Any) -> list[str]:
    """Lines describing an exchange: a str, an iterable of str/records, or an object with ``lines()``."""
    if exchange is None:
        return []
    if isinstance(exchange, str):
        return exchange.splitlines()
    if hasattr(exchange, "lines"):
        return list(exchange.lines())
    out: list[str] = []
    for item in exchange:
        if hasattr(item, "summary"):
            out.append(item.summary())
        else:
            out.append(str(item))
    return out


class Fail(AssertionError):
    """A requirement check did not hold. Verdict: fail.

    ``requirement`` may be left ``None``: the plugin fills in the test's requirement labels.
    ``exchange`` may be left ``None``: the plugin appends the last recorded messages of the test.
    """

    def __init__(self, message: str = "", *, requirement: str | None = None, expected: Any = None,
                 actual: Any = None, exchange: Any = None) -> None:
        self.message = message
        self.requirement = requirement
        self.expected = expected
        self.actual = actual
        self.exchange_lines = format_exchange(exchange)
        super().__init__(message or f"expected {expected!r}, got {actual!r}")

    def render(self, requirement_text: str | None = None) -> str:
        """The h2spec-style block (Requirement / Expected / Actual / Exchange)."""
        lines = []
        if self.message:
            lines.append(self.message)
            lines.append("")
        req = self.requirement or "(not stated)"
        if requirement_text:
            req = f"{req} — {requirement_text}"
        lines.append(f"  Requirement: {req}")
        if self.expected is not None:
            lines.append(f"  Expected:    {_block(self.expected)}")
        if self.actual is not None:
            lines.append(f"  Actual:      {_block(self.actual)}")
        if self.exchange_lines:
            lines.append("  Exchange:")
            lines.extend(f"    {x}" for x in self.exchange_lines)
        return "\n".join(lines)


def _block(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text.replace("\n", "\n               ")


class Inconclusive(pytest.skip.Exception):
    """The test could not reach a verdict (e.g. a precondition the DUT must set up did not occur)."""

    verdict = Verdict.INCONCLUSIVE

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"INCONCLUSIVE: {reason}")


class Unsupported(pytest.skip.Exception):
    """The DUT does not claim (ICS) or its profile cannot drive a feature the test needs."""

    verdict = Verdict.UNSUPPORTED

    def __init__(self, feature: str) -> None:
        self.feature = feature
        super().__init__(f"UNSUPPORTED: {feature}")


class ConformanceError(Exception):
    """The harness or the DUT broke; no verdict about the requirement is possible. Verdict: error.

    ``output`` holds the DUT's last output lines when a DUT is involved.
    """

    def __init__(self, reason: str, *, output: Iterable[str] = ()) -> None:
        self.reason = reason
        self.output = list(output)
        super().__init__(self.render())

    def render(self) -> str:
        text = self.reason
        if self.output:
            text += "\n  last DUT output:\n" + "\n".join(f"    | {line}" for line in self.output)
        return text


# -- helpers test cases call ------------------------------------------------------------------

def check(condition: Any, *, requirement: str | None = None, expected: Any = None, actual: Any = None,
          exchange: Any = None, message: str = "") -> None:
    """Raise :class:`Fail` unless ``condition`` is truthy. Returns None when the check holds.

    Example::

        check(resp.code == Code.CREATED, requirement="LightweightM2M-HLF-00X1.6",
              expected="2.01 Created", actual=str(resp.code))
    """
    __tracebackhide__ = True
    if not condition:
        raise Fail(message, requirement=requirement, expected=expected, actual=actual, exchange=exchange)


def fail(message: str = "", *, requirement: str | None = None, expected: Any = None, actual: Any = None,
         exchange: Any = None) -> NoReturn:
    """Raise :class:`Fail` unconditionally (verdict fail)."""
    __tracebackhide__ = True
    raise Fail(message, requirement=requirement, expected=expected, actual=actual, exchange=exchange)


def inconclusive(reason: str) -> NoReturn:
    """End the test with verdict inconclusive (pytest: skipped)."""
    __tracebackhide__ = True
    raise Inconclusive(reason)


def unsupported(feature: str) -> NoReturn:
    """End the test with verdict unsupported (pytest: skipped)."""
    __tracebackhide__ = True
    raise Unsupported(feature)


def error(reason: str, *, output: Iterable[str] = ()) -> NoReturn:
    """End the test with verdict error (harness/DUT fault; pytest: error)."""
    __tracebackhide__ = True
    raise ConformanceError(reason, output=output)


def verdict_of(excinfo: Any) -> Verdict:
    """Verdict for a test phase that raised ``excinfo`` (a pytest ExceptionInfo) or None."""
    if excinfo is None:
        return Verdict.PASS
    exc = excinfo.value
    if isinstance(exc, (Inconclusive, Unsupported)):
        return exc.verdict
    if isinstance(exc, pytest.skip.Exception):
        return Verdict.INCONCLUSIVE
    if isinstance(exc, (AssertionError, pytest.fail.Exception)):
        return Verdict.FAIL
    return Verdict.ERROR
