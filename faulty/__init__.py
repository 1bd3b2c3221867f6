"""Fault-injected variants of the reference implementations.

Each module is run like the reference CLI plus ``--fault NAME`` and differs from the reference in
exactly one behaviour per fault, so that the project's own tests can show that the conformance
check meant to catch that behaviour fails (verdict fail) against it. Never for production use.
"""
