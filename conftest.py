"""Root conftest: loads the conformance plugin unless the installed pytest11 entry point already
does (registering the same module twice is an error in pytest)."""
from conformance import PLUGIN, entry_point_active

pytest_plugins = [] if entry_point_active() else [PLUGIN]
