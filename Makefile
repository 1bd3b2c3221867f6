# The two commands of the README:
#   make conformance   run the suite against the bundled reference implementation; reports in reports/
#   make test          run the project's own tests (what CI runs)
.PHONY: setup conformance interop test bench clean
PY := .venv/bin/python
JOBS ?= 2
# The interop run: the reference client, server and bootstrap server beside lwm2m-node-lib's client
# and server (interop/), gated on the reviewed expected verdicts (docs/report.md, "Baselines").
INTEROP := --dut fixtures/profiles/reference-client.toml --dut fixtures/profiles/reference-server.toml \
           --dut fixtures/profiles/reference-bootstrap-server.toml \
           --dut fixtures/profiles/node-lwm2m-client.toml --dut fixtures/profiles/node-lwm2m-server.toml \
           --baseline fixtures/interop/baseline.toml

setup:
	@bash scripts/setup.sh

conformance: setup
	$(PY) -m pytest conformance -n $(JOBS) --report-dir reports $(ARGS)

# The suite against all five bundled profiles: interoperability matrix in reports/.
interop: setup
	$(PY) -m pytest conformance -n $(JOBS) --report-dir reports $(INTEROP) $(ARGS)

# Two pytest sessions: the conformance suite against the reference implementation and
# lwm2m-node-lib (the interop run, gated on fixtures/interop/baseline.toml; reports in reports/),
# then the project's own tests (some run nested pytest sessions of their own).
test: setup
	$(PY) -m pytest conformance -n $(JOBS) -q --report-dir reports $(INTEROP) $(ARGS)
	$(PY) -m pytest tests -n $(JOBS) -q $(ARGS)

bench: setup
	$(PY) benchmarks/registration.py

clean:
	rm -rf reports/* .pytest_cache .hypothesis
