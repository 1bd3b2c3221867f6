# The two commands of the README:
#   make conformance   run the suite against the bundled reference implementation; reports in reports/
#   make test          run the project's own tests (what CI runs)
.PHONY: setup conformance test bench clean
PY := .venv/bin/python
JOBS ?= 2

setup:
	@bash scripts/setup.sh

conformance: setup
	$(PY) -m pytest conformance -n $(JOBS) --report-dir reports $(ARGS)

# Two pytest sessions: the project's own tests (some run nested pytest sessions of their own),
# then the conformance suite against the bundled reference implementation.
test: setup
	$(PY) -m pytest tests -n $(JOBS) -q $(ARGS)
	$(PY) -m pytest conformance -n $(JOBS) -q --report-dir reports $(ARGS)

bench: setup
	$(PY) benchmarks/registration.py

clean:
	rm -rf reports/* .pytest_cache .hypothesis
