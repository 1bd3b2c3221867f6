"""Fault-injected variants of the reference implementations.

Each module is run like the reference CLI plus ``--fault NAME`` and differs from the reference in
exactly one behaviour per fault, so that the project's own tests can show that the conformance
check meant to catch that behaviour fails (verdict fail) against it. Never for production use.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence


def run_client_with_fault(faults: Mapping[str, type[Any]], argv: Sequence[str] | None = None) -> int:
    """``lwm2m-client`` with one extra, required flag ``--fault NAME`` choosing the client class."""
    import argparse

    from reference.client.cli import main as client_main

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--fault", required=True, choices=sorted(faults))
    ns, rest = pre.parse_known_args(argv)
    return client_main(rest, client_cls=faults[ns.fault])
