"""Conformance test cases (run with the plugin in conformance/plugin.py)."""
