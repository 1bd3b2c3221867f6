"""LwM2M conformance suite: the pytest plugin (framework) and, in ``conformance/tests``, the cases.

Public pieces for test-case authors: :mod:`conformance.verdicts` (check/fail/inconclusive/
unsupported/error), :mod:`conformance.evidence` (step, UdpProxy), :mod:`conformance.harness`
(Dut), :mod:`conformance.adapters` (driving DUTs), and the fixtures of :mod:`conformance.plugin`.
"""
from __future__ import annotations

import importlib.metadata
import os

PLUGIN = "conformance.plugin"
ENTRY_POINT = "lwm2m_conformance"


def entry_point_active() -> bool:
    """True when pytest will load the plugin through the installed ``pytest11`` entry point
    (so a conftest must not list it in ``pytest_plugins`` again)."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    try:
        eps = importlib.metadata.entry_points(group="pytest11")
    except Exception:  # broken metadata: fall back to the conftest route
        return False
    return any(ep.value == PLUGIN for ep in eps)
