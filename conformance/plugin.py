"""pytest plugin of the LwM2M conformance suite.

Loaded by the root conftest.py (``pytest_plugins``) when the project is not installed, and by the
``pytest11`` entry point ``lwm2m_conformance`` when it is (the conftest then skips it, so the
module is never registered twice).

What it adds (docs/report.md describes the outputs):

* markers ``requirement(*labels)`` (mandatory on conformance tests), ``case(id)`` (mandatory, the
  stable test-case ID), ``ics(*features)``, ``role(*roles)``; violations are collection errors
* the option group "lwm2m conformance" (``--dut``, ``--requirement``, ``--case``,
  ``--list-requirements``, ``--report-dir``, ``--dut-timeout``, ``--scale``, ``--catalogue``,
  ``--baseline``)
* with ``--baseline FILE`` (conformance/baseline.py): every verdict compared with the expected
  one; the exit status is non-zero only for differences (verdicts themselves are never changed)
* verdicts (conformance/verdicts.py) mapped onto pytest outcomes, h2spec-style failure text
* fixtures for test authors: ``dut``, ``make_dut``, ``dut_profile``, ``make_proxy``,
  ``evidence``, ``catalogue``, ``scale``, ``dut_factory``, ``conformance_config``
* evidence per test and reports (HTML, summary.md, JUnit XML, allure results) under --report-dir

A *conformance test* is a test collected from a ``conformance/tests`` directory, or any test that
carries one of the four markers.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

from conformance import evidence as ev
from conformance.adapters import adapter_class
from conformance.baseline import Baseline, load_baseline
from conformance.catalogue import DEFAULT_CATALOGUE, Catalogue, load_catalogue
from conformance.harness.dut import Dut
from conformance.harness.process import DutCrashed
from conformance.profiles import BUNDLED, ROLES, Profile, load_profile, parse_feature, resolve_profile_arg
from conformance.tomlsource import DataFileError
from conformance.verdicts import ConformanceError, Fail, Unsupported, Verdict, verdict_of

MARKERS = {
    "requirement": "requirement(*labels): requirement labels of fixtures/requirements.toml this test checks (mandatory on conformance tests)",
    "case": "case(id): the stable test-case ID (OMA ETS interop ID such as LightweightM2M-1.1-int-101, else LWM2M-XX-NNN)",
    "ics": "ics(*features): ICS features the DUT must claim (e.g. 'smartcard', 'security_mode:psk'); else verdict unsupported",
    "role": "role(*roles): role(s) of the implementation(s) under test: client, server, bootstrap-server",
}
PROP_VERDICT = "lwm2m.phase"  # verdict of one phase (setup/call/teardown)
PROP_FINAL = "verdict"  # combined verdict, on the teardown report (and in junit.xml)
PROP_EVIDENCE = "lwm2m.evidence"
_CASE_RX = __import__("re").compile(r"^[A-Za-z][A-Za-z0-9]*(?:[-.][A-Za-z0-9]+)*-[A-Za-z]*-?[0-9]+[A-Za-z]?$")
_NO_DUT = object()


# -- options -----------------------------------------------------------------------------------

def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be > 0 seconds")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return v


def _existing_profile(text: str) -> str:
    p = resolve_profile_arg(text)
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"no profile file {text!r} (give a path, or a bundled name such as reference-client)")
    return str(p)


def _existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no baseline file {text!r}")
    return text


def _nonempty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("lwm2m conformance", "LwM2M conformance suite (conformance/plugin.py)")
    g.addoption("--dut", action="append", default=[], metavar="PROFILE", type=_existing_profile,
                help="implementation profile (TOML, docs/profiles.md) of an implementation under test; repeatable. "
                     "A bundled name (reference-client) also works. Default: the bundled reference client, "
                     "server and bootstrap server. Several profiles of one role produce an interoperability matrix.")
    g.addoption("--requirement", action="append", default=[], metavar="LABEL", type=_nonempty,
                help="run only tests covering this requirement label (with its derived children) or family "
                     "(HLF, DM-SC, DM-SC-USE-X); repeatable")
    g.addoption("--case", action="append", default=[], metavar="ID", type=_nonempty,
                help="run only the test case with this ID (e.g. LWM2M-SC-001); repeatable")
    g.addoption("--list-requirements", action="store_true", default=False,
                help="print every catalogue requirement with the tests covering it (UNCOVERED if none) and exit")
    g.addoption("--report-dir", default=None, metavar="DIR",
                help="directory for reports and evidence (default: <rootdir>/reports when conformance tests run)")
    g.addoption("--dut-timeout", default=None, metavar="S", type=_positive_float,
                help="seconds to wait for a DUT to become ready and to stop (default: the profile's [ready]/[stop] timeout)")
    g.addoption("--scale", default=10, metavar="N", type=_positive_int,
                help="number of simulated devices for the scale tests (default 10)")
    g.addoption("--catalogue", default=None, metavar="FILE",
                help="requirement catalogue (default: fixtures/requirements.toml; ini: lwm2m_catalogue)")
    g.addoption("--baseline", default=None, metavar="FILE", type=_existing_file,
                help="expected verdicts per implementation and test case (TOML, docs/report.md), each non-pass one "
                     "with its reason. The verdicts are reported unchanged and marked as matching or differing; the "
                     "exit status is non-zero only when a verdict differs from the baseline (a regression or an "
                     "unexpected pass). Cases without an entry are expected to pass or be unsupported. A malformed "
                     "file stops the run before any test (file:line).")
    parser.addini("lwm2m_catalogue", "requirement catalogue file (relative to the rootdir)", default="")


# -- configuration -----------------------------------------------------------------------------

@dataclass
class ConformanceConfig:
    """Run configuration, shared by hooks and fixtures (``conformance_config`` fixture)."""

    catalogue: Catalogue
    profiles: list[Profile]
    report_dir: Path | None
    dut_timeout: float | None
    scale: int
    requirement_patterns: list[str]
    case_ids: list[str]
    is_worker: bool
    selected_labels: set[str] | None = None
    baseline: Baseline | None = None
    coverage: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    cases_seen: dict[str, str] = field(default_factory=dict)
    results: Any = None
    started: float = field(default_factory=time.time)

    def profiles_for(self, role: str) -> list[Profile]:
        return [p for p in self.profiles if p.role == role]


CONFIG_KEY = pytest.StashKey[ConformanceConfig]()
ITEM_KEY = pytest.StashKey[dict]()


def get_config(config: pytest.Config) -> ConformanceConfig:
    return config.stash[CONFIG_KEY]


def _targets_conformance(config: pytest.Config) -> bool:
    """True when a command-line path lies in a ``conformance`` directory or contains
    ``conformance/tests`` (the rootdir itself, for instance)."""
    for arg in config.args:
        p = Path(arg.split("::")[0])
        p = (config.invocation_params.dir / p) if not p.is_absolute() else p
        p = p.resolve()
        if "conformance" in p.parts or (p.is_dir() and (p / "conformance" / "tests").is_dir()):
            return True
    return False


def _report_dir(config: pytest.Config) -> Path | None:
    if getattr(config, "workerinput", None) is not None:
        d = config.workerinput.get("lwm2m_report_dir")  # type: ignore[attr-defined]
        return Path(d) if d else None
    opt = config.getoption("report_dir")
    if opt:
        return (config.invocation_params.dir / opt).resolve()
    if config.getoption("collectonly") or config.getoption("list_requirements"):
        return None
    if _targets_conformance(config):
        return config.rootpath / "reports"
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    # --list-requirements needs the collected items in this process: no xdist distribution
    if config.getoption("list_requirements", False) and hasattr(config.option, "numprocesses"):
        config.option.numprocesses = None
        config.option.dist = "no"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # The cases and fixtures are plain ``async def``: they need pytest-asyncio's auto mode even
    # where no ini file of this project is in effect (an installed copy run from any directory).
    if getattr(config.option, "asyncio_mode", None) is None and "asyncio_mode" not in config.inicfg:
        config.option.asyncio_mode = "auto"
    if CONFIG_KEY in config.stash:
        return
    # catalogue
    cat_opt = config.getoption("catalogue") or config.getini("lwm2m_catalogue")
    cat_path = (config.rootpath / cat_opt) if cat_opt else DEFAULT_CATALOGUE
    if config.getoption("catalogue"):
        cat_path = (config.invocation_params.dir / config.getoption("catalogue")).resolve()
    try:
        catalogue = load_catalogue(cat_path)
    except DataFileError as exc:
        raise pytest.UsageError(f"requirement catalogue: {exc}") from None
    # profiles
    paths = [Path(p) for p in config.getoption("dut")] or list(BUNDLED.values())
    profiles: list[Profile] = []
    for path in paths:
        try:
            prof = load_profile(path)
        except DataFileError as exc:
            raise pytest.UsageError(f"implementation profile: {exc}") from None
        try:
            adapter_class(prof.role, prof.adapter)
        except ConformanceError as exc:
            line = next((i for i, t in enumerate(prof.text.splitlines(), 1) if t.strip().startswith("adapter")), 0)
            raise pytest.UsageError(f"implementation profile: {prof.path}:{line}: {exc.reason}") from None
        if any(p.id == prof.id and p.role == prof.role for p in profiles):
            raise pytest.UsageError(f"implementation profile: {prof.path}: {prof.id} ({prof.role}) given twice")
        profiles.append(prof)
    patterns = list(config.getoption("requirement"))
    selected = None
    if patterns:
        try:
            selected = catalogue.select(patterns)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    is_worker = getattr(config, "workerinput", None) is not None
    baseline = None
    if config.getoption("baseline", None) and not is_worker:
        try:
            baseline = load_baseline((config.invocation_params.dir / config.getoption("baseline")).resolve())
        except DataFileError as exc:
            raise pytest.UsageError(f"baseline: {exc}") from None
    cc = ConformanceConfig(catalogue=catalogue, profiles=profiles, report_dir=_report_dir(config),
                           dut_timeout=config.getoption("dut_timeout"), scale=config.getoption("scale"),
                           requirement_patterns=patterns, case_ids=list(config.getoption("case")),
                           is_worker=is_worker, selected_labels=selected, baseline=baseline)
    config.stash[CONFIG_KEY] = cc
    from conformance.report import RunResults, claim_report_dir

    if cc.report_dir is not None:
        if not is_worker:
            cc.report_dir = claim_report_dir(cc.report_dir)
            if not config.option.xmlpath:
                config.option.xmlpath = str(cc.report_dir / "junit.xml")
        if hasattr(config.option, "allure_report_dir") and not config.option.allure_report_dir:
            config.option.allure_report_dir = str(cc.report_dir / "allure-results")
    if not is_worker and (cc.report_dir is not None or cc.baseline is not None):
        cc.results = RunResults(cc)
        config.pluginmanager.register(_Controller(config, cc), f"lwm2m-controller-{id(config)}")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: tell workers where the controller writes the reports."""
    cc = get_config(node.config)
    node.workerinput["lwm2m_report_dir"] = str(cc.report_dir) if cc.report_dir else ""


def pytest_report_header(config: pytest.Config) -> list[str]:
    cc = config.stash.get(CONFIG_KEY, None)
    if cc is None:
        return []
    import importlib.metadata as md

    def ver(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "-"

    lines = [f"lwm2m conformance: catalogue {cc.catalogue.path} ({len(cc.catalogue)} requirements)"]
    for p in cc.profiles:
        lines.append(f"  DUT {p.role:<16} {p.name} {p.version}  [{p.path}]")
        lines.append(f"      ICS {p.ics.summary()}")
    if cc.baseline is not None:
        lines.append(f"  baseline: {cc.baseline.path} ({len(cc.baseline.entries)} expectations)")
    lines.append(f"  report dir: {cc.report_dir or '(none: not a conformance run)'}"
                 + (f"  dut-timeout: {cc.dut_timeout:g}s" if cc.dut_timeout else "") + f"  scale: {cc.scale}")
    if cc.requirement_patterns or cc.case_ids:
        lines.append(f"  selection: requirement={cc.requirement_patterns or '-'} case={cc.case_ids or '-'}")
    lines.append(f"  versions: python {sys.version.split()[0]}, pytest {pytest.__version__}, aiocoap {ver('aiocoap')}, "
                 f"scapy {ver('scapy')}, allure-pytest {ver('allure-pytest')}, tshark {_tshark_version()}")
    return lines


@functools.lru_cache(maxsize=1)
def _tshark_version() -> str:
    import shutil
    import subprocess

    exe = shutil.which("tshark")
    if not exe:
        return "absent"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=5).stdout
        return out.split("\n", 1)[0].split(" ")[-1].strip("().") if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# -- collection --------------------------------------------------------------------------------

def is_conformance_item(item: pytest.Item) -> bool:
    if any(item.get_closest_marker(m) is not None for m in MARKERS):
        return True
    parts = Path(str(item.path)).parts
    return any(parts[i] == "conformance" and parts[i + 1] == "tests" for i in range(len(parts) - 1))


def _labels(item: pytest.Item) -> list[str]:
    out: list[str] = []
    for m in item.iter_markers(name="requirement"):
        out.extend(str(a) for a in m.args)
    return out


def _case(item: pytest.Item) -> str | None:
    m = item.get_closest_marker("case")
    return str(m.args[0]) if m and m.args else None


def _roles(item: pytest.Item) -> list[str]:
    m = item.get_closest_marker("role")
    return [str(a) for a in m.args] if m else []


def _features(item: pytest.Item) -> list[str]:
    out: list[str] = []
    for m in item.iter_markers(name="ics"):
        out.extend(str(a) for a in m.args)
    return out


def case_tail(case_id: str) -> str:
    """Normalized tail a test function name must contain: 'LightweightM2M-1.1-int-101' -> 'int_101'."""
    toks = [t for t in case_id.replace(".", "-").split("-") if t]
    return "_".join(toks[-2:]).lower()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize tests with a ``role`` marker over the DUT profiles of that role (product for
    several roles); the ID of each instance is the profile id (``[reference-client-0.1.0]``)."""
    if "lwm2m_profiles" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("role")
    if marker is None or not marker.args:
        return
    cc = metafunc.config.stash.get(CONFIG_KEY, None)
    if cc is None:
        return
    roles = [str(r) for r in marker.args]
    if any(r not in ROLES for r in roles):
        return  # reported as a collection error by _validate_items
    combos: list[dict[str, Any]] = [{}]
    for role in roles:
        profs = cc.profiles_for(role) or [_NO_DUT]
        combos = [{**c, role: p} for c in combos for p in profs]
    ids = ["+".join(p.id if isinstance(p, Profile) else f"no-{r}" for r, p in c.items()) for c in combos]
    metafunc.parametrize("lwm2m_profiles", combos, ids=ids)


def _validate_items(items: list[pytest.Item], cc: ConformanceConfig) -> list[str]:
    problems: list[str] = []
    seen_funcs: set[str] = set()
    for item in items:
        if not isinstance(item, pytest.Function) or not is_conformance_item(item):
            continue
        func_id = item.nodeid.split("[")[0]
        if func_id in seen_funcs:
            continue
        seen_funcs.add(func_id)
        labels = _labels(item)
        if not labels:
            problems.append(f"{func_id}: missing requirement label: add @pytest.mark.requirement(\"<label>\") "
                            f"with a label of {cc.catalogue.path.name}")
        for lbl in labels:
            if lbl not in cc.catalogue:
                problems.append(f"{func_id}: unknown requirement label {lbl!r} (not in {cc.catalogue.path})")
        cases = [m for m in item.iter_markers(name="case")]
        if not cases or not cases[0].args:
            problems.append(f"{func_id}: missing test-case ID: add @pytest.mark.case(\"LWM2M-XX-NNN\") "
                            "(the OMA ETS interop ID where one exists)")
        else:
            if len(cases) > 1 or len(cases[0].args) != 1:
                problems.append(f"{func_id}: exactly one case ID per test, got "
                                f"{[a for m in cases for a in m.args]}")
            cid = str(cases[0].args[0])
            if not _CASE_RX.match(cid):
                problems.append(f"{func_id}: malformed case ID {cid!r} (e.g. LightweightM2M-1.1-int-101 or LWM2M-SC-001)")
            else:
                other = cc.cases_seen.get(cid)
                if other and other != func_id:
                    problems.append(f"{func_id}: case ID {cid!r} is already used by {other}")
                cc.cases_seen.setdefault(cid, func_id)
                doc = getattr(item, "obj", None).__doc__ or ""
                if cid not in doc:
                    problems.append(f"{func_id}: case ID {cid!r} must appear in the test's docstring")
                tail = case_tail(cid)
                if tail not in item.originalname.lower():
                    problems.append(f"{func_id}: test function name must contain {tail!r} (from case ID {cid!r})")
        for r in _roles(item):
            if r not in ROLES:
                problems.append(f"{func_id}: unknown role {r!r} (roles: {', '.join(ROLES)})")
        for f in _features(item):
            try:
                parse_feature(f)
            except ValueError as exc:
                problems.append(f"{func_id}: {exc}")
    return problems


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    cc = collector.config.stash.get(CONFIG_KEY, None)
    if cc is None or rep.outcome != "passed" or not isinstance(collector, (pytest.Module, pytest.Class)):
        return
    items = [x for x in rep.result if isinstance(x, pytest.Function)]
    problems = _validate_items(items, cc)
    if problems:
        rep.outcome = "failed"
        rep.longrepr = "lwm2m conformance: invalid test metadata\n" + "\n".join(f"  {p}" for p in problems)
        rep.result = []


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    cc = config.stash.get(CONFIG_KEY, None)
    if cc is None:
        return
    # coverage before selection, for the traceability matrix and --list-requirements
    for item in items:
        if not is_conformance_item(item):
            continue
        for lbl in _labels(item):
            cc.coverage.setdefault(lbl, []).append({"nodeid": item.nodeid, "case": _case(item) or ""})
    keep, drop = [], []
    for item in items:
        ok = True
        if is_conformance_item(item):
            if cc.selected_labels is not None and not (set(_labels(item)) & cc.selected_labels):
                ok = False
            if cc.case_ids and _case(item) not in cc.case_ids:
                ok = False
            params = getattr(item, "callspec", None)
            if params is not None and any(v is _NO_DUT for v in params.params.get("lwm2m_profiles", {}).values()):
                ok = False  # no DUT of that role was selected with --dut
        elif cc.selected_labels is not None or cc.case_ids:
            ok = False
        (keep if ok else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if cc.results is not None:
        cc.results.total = len(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    config = session.config
    if not config.getoption("list_requirements"):
        return
    cc = get_config(config)
    tw = config.get_terminal_writer()
    tw.line()
    tw.line(f"Requirements of {cc.catalogue.path} and the tests covering them:", bold=True)
    uncovered = 0
    for req in cc.catalogue:
        if cc.selected_labels is not None and req.label not in cc.selected_labels:
            continue
        tests = cc.coverage.get(req.label, [])
        tw.line(f"{req.label}  [{req.kind} {req.strength}; {', '.join(req.roles)}]")
        tw.line(f"    {req.text}")
        if not tests:
            uncovered += 1
            tw.line("    UNCOVERED", red=True, bold=True)
        seen = set()
        for t in tests:
            key = t["nodeid"].split("[")[0]
            if key in seen:
                continue
            seen.add(key)
            tw.line(f"    {t['case']}  {key}", green=True)
    tw.line(f"{len(cc.catalogue)} requirements, {uncovered} uncovered")


def pytest_runtestloop(session: pytest.Session) -> bool | None:
    if session.config.getoption("list_requirements"):
        return True  # listing only: run nothing
    return None


# -- running -----------------------------------------------------------------------------------

def _item_state(item: pytest.Item) -> dict:
    return item.stash.setdefault(ITEM_KEY, {"verdicts": {}})


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    cc = item.config.stash.get(CONFIG_KEY, None)
    if cc is None or not is_conformance_item(item):
        return
    st = _item_state(item)
    if cc.report_dir is not None:
        edir = cc.report_dir / "evidence" / ev.safe_name(item.nodeid)
    else:
        edir = item.config._tmp_path_factory.mktemp("evidence", numbered=True)  # type: ignore[attr-defined]
    rec = ev.Recorder(edir, item.nodeid)
    st["recorder"] = rec
    ev.set_current(rec)
    profiles = _profiles_of(item)
    props = item.user_properties
    props.append(("requirement", ",".join(_labels(item))))
    props.append(("case", _case(item) or ""))
    props.append(("dut", "+".join(p.id for p in profiles.values() if isinstance(p, Profile))))
    props.append(("implementation", "+".join(p.name for p in profiles.values() if isinstance(p, Profile))))
    props.append(("instance", _instance_id(item)))
    props.append(("roles", ",".join(profiles)))
    doc = (getattr(item, "obj", None).__doc__ or "").strip() if getattr(item, "obj", None) else ""
    title = doc.splitlines()[0] if doc else item.name
    cid = next((m.args[0] for m in item.iter_markers("case") if m.args), None)
    if cid and title.startswith(cid):  # the case ID is shown beside the title already
        title = title[len(cid):].lstrip(" :—-") or title
    props.append(("title", title))
    # ICS: the DUT must claim every feature, else the verdict is unsupported
    for feature in _features(item):
        for role, prof in profiles.items():
            if isinstance(prof, Profile) and not prof.ics.supports(feature):
                raise Unsupported(f"{prof.name} {prof.version} ({role}) does not claim ICS feature {feature!r}")


def _instance_id(item: pytest.Item) -> str:
    """The parametrization ID of an item without its DUT part: ``lt=abc`` for
    ``test_x[lwm2m-reference-server-0.1.0-lt=abc]``, ``""`` when only the DUT parametrizes it."""
    cs = getattr(item, "callspec", None)
    if cs is None:
        return ""
    full = cs.id
    prof = "+".join(p.id if isinstance(p, Profile) else f"no-{r}"
                    for r, p in cs.params.get("lwm2m_profiles", {}).items())
    if not prof:
        return full
    if full == prof:
        return ""
    if full.startswith(prof + "-"):
        return full[len(prof) + 1:]
    if full.endswith("-" + prof):
        return full[:-len(prof) - 1]
    return full.replace("-" + prof + "-", "-")


def _profiles_of(item: pytest.Item) -> dict[str, Any]:
    cs = getattr(item, "callspec", None)
    if cs is not None and "lwm2m_profiles" in cs.params:
        return dict(cs.params["lwm2m_profiles"])
    return {}


def pytest_itemcollected(item: pytest.Item) -> None:
    """allure labels and links (requirement, case ID, spec clauses) as markers allure reads."""
    cc = item.config.stash.get(CONFIG_KEY, None)
    if cc is None or not is_conformance_item(item):
        return
    for lbl in _labels(item):
        item.add_marker(pytest.mark.allure_label(lbl, label_type="requirement"))
        item.add_marker(pytest.mark.allure_label(lbl, label_type="story"))
        req = cc.catalogue.get(lbl)
        if req is not None:
            family = "-".join(lbl.split("-")[:2])
            item.add_marker(pytest.mark.allure_label(family, label_type="feature"))
            for ref in req.spec:
                item.add_marker(pytest.mark.allure_link(ref.url, link_type="link", name=ref.title))
    cid = _case(item)
    if cid:
        item.add_marker(pytest.mark.allure_label(cid, label_type="case"))
        item.add_marker(pytest.mark.allure_label(cid, label_type="as_id"))
    for r in _roles(item):
        item.add_marker(pytest.mark.allure_label(r, label_type="tag"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    cc = item.config.stash.get(CONFIG_KEY, None)
    if cc is None or not is_conformance_item(item):
        return
    st = _item_state(item)
    verdict = verdict_of(call.excinfo)
    exc = call.excinfo.value if call.excinfo is not None else None
    if verdict is Verdict.FAIL and call.when != "call" and not isinstance(exc, Fail):
        # outside the test body, only an explicit check is a verdict on the implementation;
        # a fixture that breaks (or pytest refusing one) is a harness fault
        verdict = Verdict.ERROR
    st["verdicts"][call.when] = verdict
    rec: ev.Recorder | None = st.get("recorder")
    if isinstance(exc, AssertionError) and verdict is Verdict.FAIL:
        rep.longrepr = _render_fail(item, exc, call, cc, rec)
    elif isinstance(exc, ConformanceError):
        rep.longrepr = f"{_location(call)}\nERROR: {exc.render()}"
    if verdict in (Verdict.INCONCLUSIVE, Verdict.UNSUPPORTED) and rec is not None:
        rec.note(f"{verdict.value}: {getattr(exc, 'msg', exc)}")
    rep.user_properties = [*item.user_properties, (PROP_VERDICT, verdict.value)]
    if call.when == "teardown":
        rep.user_properties.append((PROP_FINAL, Verdict.worst(st["verdicts"].values()).value))
    if verdict in (Verdict.FAIL, Verdict.ERROR):
        st["reason"] = str(rep.longrepr)[-4000:]
    elif verdict in (Verdict.INCONCLUSIVE, Verdict.UNSUPPORTED):
        st["reason"] = str(getattr(exc, "msg", "") or exc)


def _location(call: pytest.CallInfo[None]) -> str:
    if call.excinfo is None:
        return ""
    tb = call.excinfo.traceback
    for entry in reversed(tb):
        p = str(entry.path)
        if "/conformance/" in p and "/conformance/tests/" not in p:
            continue  # skip framework and peer frames: point at the test's line
        return f"{p}:{entry.lineno + 1}"
    return ""


def _render_fail(item: pytest.Item, exc: AssertionError, call: pytest.CallInfo[None], cc: ConformanceConfig,
                 rec: ev.Recorder | None) -> str:
    labels = _labels(item)
    if not isinstance(exc, Fail):
        # a plain assert: keep pytest's rewritten message, present it as a failed check
        text = str(exc) or "assertion failed"
        exc = Fail(text.splitlines()[0], expected="(see assertion)", actual=text if "\n" in text else None)
    if exc.requirement is None:
        exc.requirement = ", ".join(labels)
    req = cc.catalogue.get(exc.requirement) if exc.requirement else None
    if not exc.exchange_lines and rec is not None and rec.datagrams:
        exc.exchange_lines = ["(last recorded datagrams)"] + rec.exchange_lines(last=12)
    return f"{_location(call)}\nFAIL: {exc.render(req.text if req else None)}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    cc = item.config.stash.get(CONFIG_KEY, None)
    st = item.stash.get(ITEM_KEY, None)
    if cc is None or st is None or "recorder" not in st:
        return
    rec: ev.Recorder = st["recorder"]
    try:
        result = rec.finish(verdicts={k: v.value for k, v in st["verdicts"].items()})
        _attach_allure(result)
        if cc.report_dir is not None:
            item.user_properties.append((PROP_EVIDENCE, os.path.relpath(rec.dir, cc.report_dir)))
        else:
            item.user_properties.append((PROP_EVIDENCE, str(rec.dir)))
    finally:
        ev.set_current(None)


def _attach_allure(result: dict[str, Any]) -> None:
    try:
        import allure
    except ImportError:  # pragma: no cover
        return
    try:
        for f in result.get("files", []):
            allure.attach.file(f["path"], name=f["label"], attachment_type=allure.attachment_type.TEXT)
        if result.get("pcap"):
            allure.attach.file(result["pcap"], name="capture.pcap", extension="pcap")
            allure.attach(result["tshark"], name="decode with", attachment_type=allure.attachment_type.TEXT)
        if result.get("svg"):
            allure.attach.file(result["svg"], name="exchange", attachment_type=allure.attachment_type.SVG)
    except Exception:  # allure inactive in this process: the HTML report links the same files
        pass


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    verdict = dict(getattr(report, "user_properties", []) or []).get(PROP_VERDICT)
    if verdict == Verdict.ERROR.value and report.failed and report.when == "call":
        return "error", "E", "ERROR"
    if verdict == Verdict.UNSUPPORTED.value and report.skipped:
        return "unsupported", "U", "UNSUPPORTED"
    if verdict == Verdict.INCONCLUSIVE.value and report.skipped:
        return "inconclusive", "I", "INCONCLUSIVE"
    return None


class _Controller:
    """Registered on the controller process of a conformance run: gathers every test report
    (xdist forwards the workers' reports here) and prints the live progress line."""

    def __init__(self, config: pytest.Config, cc: ConformanceConfig) -> None:
        self.config = config
        self.cc = cc

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed and self.cc.results is not None:
            self.cc.results.other_failures += 1  # a collection error is never covered by a baseline

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        results = self.cc.results
        if results is None:
            return
        results.add_report(report)
        line = results.progress_line()
        if line:
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                tr.ensure_newline()
                tr.write_line(line, cyan=True)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    cc = get_config(node.config)
    if cc.results is not None:
        cc.results.total = max(cc.results.total, len(ids))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    cc = get_config(node.config)
    out = getattr(node, "workeroutput", {}) or {}
    cov = out.get("lwm2m_coverage")
    if cov and cc.results is not None:
        for lbl, tests in json.loads(cov).items():
            known = cc.coverage.setdefault(lbl, [])
            for t in tests:
                if t not in known:
                    known.append(t)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    cc = config.stash.get(CONFIG_KEY, None)
    if cc is None:
        return
    if cc.is_worker:
        config.workeroutput["lwm2m_coverage"] = json.dumps(cc.coverage)  # type: ignore[attr-defined]
        return
    if cc.results is not None and not config.getoption("collectonly") and not config.getoption("list_requirements"):
        if cc.baseline is not None:
            cc.results.apply_baseline()
            if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
                # the verdicts stay as they are; only differences from the baseline fail the run
                failed = bool(cc.results.baseline_differences()) or cc.results.other_failures > 0
                session.exitstatus = pytest.ExitCode.TESTS_FAILED if failed else pytest.ExitCode.OK
        if cc.results.has_conformance_results() and cc.report_dir is not None:
            cc.results.write_all(config)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    cc = config.stash.get(CONFIG_KEY, None)
    if cc is None or cc.is_worker or cc.results is None:
        return
    if not cc.results.written and not cc.results.baseline_applied:
        return
    tr = terminalreporter
    tr.section("lwm2m conformance")
    counts = cc.results.counts()
    tr.write_line("verdicts: " + ", ".join(f"{v} {counts.get(v, 0)}" for v in [x.value for x in Verdict]))
    for label, path in cc.results.written:
        tr.write_line(f"{label}: {path}")
    if cc.results.baseline_applied:
        for line, bad in cc.results.baseline_lines():
            tr.write_line(line, red=bad, bold=bad)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    cc = config.stash.get(CONFIG_KEY, None)
    if cc is None or cc.is_worker or cc.report_dir is None:
        return
    from conformance.report import junit_errors_as_errors, release_report_dir

    if cc.results is not None and cc.results.written and config.option.xmlpath:
        junit_errors_as_errors(Path(config.option.xmlpath), cc.results)
    release_report_dir(cc.report_dir)


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def conformance_config(pytestconfig: pytest.Config) -> ConformanceConfig:
    """The run configuration: catalogue, DUT profiles, report dir, timeouts, --scale."""
    return get_config(pytestconfig)


@pytest.fixture(scope="session")
def catalogue(conformance_config: ConformanceConfig) -> Catalogue:
    """The validated requirement catalogue."""
    return conformance_config.catalogue


@pytest.fixture(scope="session")
def scale(conformance_config: ConformanceConfig) -> int:
    """``--scale N``: how many simulated devices the scale tests use."""
    return conformance_config.scale


@pytest.fixture(autouse=True)
def lwm2m_profiles(request: pytest.FixtureRequest) -> dict[str, Any]:
    """role -> Profile of this test instance (parametrized from the ``role`` marker)."""
    return getattr(request, "param", {})


class DutFactory:
    """Session-scoped maker of DUT handles (the pytest-httpserver "make" pattern): holds the
    profiles and timeouts; each test gets fresh, unstarted :class:`Dut` objects from it."""

    def __init__(self, cc: ConformanceConfig) -> None:
        self.cc = cc

    def profile(self, role: str, name: str | None = None) -> Profile:
        profs = self.cc.profiles_for(role)
        if name is not None:
            profs = [p for p in profs if p.name == name or p.id == name]
        if not profs:
            raise Unsupported(f"no {role} implementation profile selected (--dut)" + (f" named {name!r}" if name else ""))
        return profs[0]

    def create(self, profile: Profile, workdir: Path, recorder: ev.Recorder | None, label: str) -> Dut:
        return Dut(profile, workdir=workdir, ready_timeout=self.cc.dut_timeout, stop_timeout=self.cc.dut_timeout,
                   recorder=recorder, label=label)


@pytest.fixture(scope="session")
def dut_factory(conformance_config: ConformanceConfig) -> DutFactory:
    """Session-scoped: the DutFactory (profiles + timeouts)."""
    return DutFactory(conformance_config)


@pytest.fixture
def evidence(request: pytest.FixtureRequest, tmp_path: Path) -> ev.Recorder:
    """This test's evidence Recorder: ``note()``, ``step()``, ``add_file()``, datagrams, ``dir``."""
    st = request.node.stash.get(ITEM_KEY, None)
    if st is not None and "recorder" in st:
        return st["recorder"]
    rec = ev.Recorder(tmp_path / "evidence", request.node.nodeid)  # not a conformance test
    return rec


@pytest.fixture
def dut_profile(lwm2m_profiles: dict[str, Any], request: pytest.FixtureRequest) -> Profile:
    """The Profile of the (first) role of the test's ``role`` marker for this instance."""
    roles = _roles(request.node)
    if not roles:
        raise ConformanceError(f"{request.node.nodeid}: uses a DUT but has no @pytest.mark.role(...)")
    prof = lwm2m_profiles.get(roles[0])
    if not isinstance(prof, Profile):
        raise Unsupported(f"no {roles[0]} implementation profile selected (--dut)")
    return prof


@pytest.fixture
async def make_dut(request: pytest.FixtureRequest, dut_factory: DutFactory, evidence: ev.Recorder,
                   lwm2m_profiles: dict[str, Any]) -> AsyncIterator[Callable[..., Dut]]:
    """Factory ``make_dut(role=None, *, profile=None, label=None) -> Dut`` (unstarted).

    ``role`` defaults to the test's first ``role`` marker; the profile is this instance's
    parametrized one for a marked role, else the first ``--dut`` profile of that role. Every DUT
    made is stopped at teardown; one that exited on its own while the test passed turns the
    verdict into error (DutCrashed, with its last output lines)."""
    made: list[Dut] = []

    def make(role: str | None = None, *, profile: Profile | None = None, label: str | None = None) -> Dut:
        r = role or (_roles(request.node) or [None])[0]
        if r is None and profile is None:
            raise ConformanceError("make_dut() needs a role (or a @pytest.mark.role on the test)")
        prof = profile or (lwm2m_profiles.get(r) if isinstance(lwm2m_profiles.get(r), Profile) else None) \
            or dut_factory.profile(r)
        name = label or (prof.role if not any(d.label == prof.role for d in made) else f"{prof.role}{len(made) + 1}")
        d = dut_factory.create(prof, evidence.dir, evidence, name)
        made.append(d)
        return d

    yield make
    crashed = []
    for d in made:
        was_crashed = d.crashed()
        rc = await d.stop()
        if was_crashed:
            crashed.append(d)
        elif d.process is not None and rc is not None and rc < 0 and d.process.stopping:
            evidence.note(f"{d.label} stopped ({d.process.describe_exit()})")
    st = request.node.stash.get(ITEM_KEY, {"verdicts": {}})
    if crashed and st["verdicts"].get("call") == Verdict.PASS:
        d = crashed[0]
        assert d.process is not None
        raise DutCrashed(f"{d.label} ({d.profile.name}) {d.process.describe_exit()} during the test",
                         output=d.process.tail())


@pytest.fixture
async def dut(make_dut: Callable[..., Dut]) -> Dut:
    """A fresh, unstarted DUT of the test's role (``@pytest.mark.role``): ``await dut.start(mode, **values)``."""
    return make_dut()


@pytest.fixture
async def make_proxy(evidence: ev.Recorder) -> AsyncIterator[Callable[..., Awaitable[ev.UdpProxy]]]:
    """Factory ``await make_proxy(target, *, name="server", dut_side="downstream", protocol="coap")``
    -> a started recording :class:`~conformance.evidence.UdpProxy`. ``target`` is (host, port).
    For a client DUT: give the DUT ``proxy.uri`` and target the suite's own server (dut_side
    downstream). For a server DUT: target ``dut.address("coap")`` and send to ``proxy.address``
    (dut_side upstream). All proxies are closed at teardown; their datagrams form the test's pcap."""
    made: list[ev.UdpProxy] = []

    async def make(target: tuple[str, int], *, name: str = "server", dut_side: str = "downstream",
                   protocol: str = "coap") -> ev.UdpProxy:
        p = ev.UdpProxy(evidence, target, name=name, dut_side=dut_side, protocol=protocol)
        await p.start()
        made.append(p)
        evidence.note(f"proxy {name}: {p.address[0]}:{p.address[1]} -> {target[0]}:{target[1]} ({protocol}, DUT {dut_side})")
        return p

    yield make
    for p in made:
        await p.close()
