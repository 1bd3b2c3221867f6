"""Project tests: the pytester fixture is used by the framework's own tests (tests/test_plugin*.py)."""
pytest_plugins = ["pytester"]
