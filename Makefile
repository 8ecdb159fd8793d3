# swarmstore: `make demo` runs the main job, `make test` runs the suite, `make bench` the benchmarks.
# Each target bootstraps .venv with a Python >= 3.12 the first time.
SHELL := /bin/bash
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick lint venv clean lock peer-tests

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@set -e; \
	if [ ! -x "$(VPY)" ]; then \
	  py="$$(bash .ci/find-python)"; \
	  echo "creating $(VENV) with $$py"; \
	  "$$py" -m venv "$(VENV)"; \
	fi; \
	"$(VPY)" -m pip install -q --upgrade pip; \
	"$(VPY)" -m pip install -q -e '.[test]' -c constraints.txt; \
	touch "$(STAMP)"

demo: $(STAMP)
	@SECONDS=0; status=0; $(VENV)/bin/swarmstore demo || status=$$?; \
	echo "make demo: $$SECONDS s in all (exit $$status)"; exit $$status

# The peers' own test sources (zarr, xarray: PyPI sdists; distributed: its release tag) at
# the versions in .venv, cached in .peer-tests/ (ignored). `make test` goes on without a
# peer it cannot fetch (tests/peers then skips it, saying why); `make peer-tests` fails.
peer-tests: $(STAMP)
	$(VPY) tests/peers/fetch_sources.py

# the suite; lint (ruff check + format check) is part of it: tests/test_lint.py.
# One pytest process per core (pytest-xdist), a test module's tests kept together (their
# module fixtures: moto servers, event loops, peer runs); TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto
test: $(STAMP)
	-$(VPY) tests/peers/fetch_sources.py
	$(VPY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# a full run starts benchmarks/results/latest.jsonl afresh; the tables follow from it
bench: $(STAMP)
	$(VPY) -m pip install -q -e '.[bench]' -c constraints.txt
	$(VPY) benchmarks/run_all.py $(ARGS)
	$(VPY) benchmarks/tables.py

bench-quick: $(STAMP)
	$(VPY) -m pip install -q -e '.[bench]' -c constraints.txt
	$(VPY) benchmarks/run_all.py --quick

lint: $(STAMP)
	$(VPY) -m ruff check swarmstore plugins tests benchmarks examples
	$(VPY) -m ruff format --check swarmstore plugins tests benchmarks examples

lock: $(STAMP)
	@{ echo "# Versions the suite is known to pass with (pip freeze of a working .venv)."; \
	  echo "# The Makefile installs with -c constraints.txt: a fast, repeatable resolution."; \
	  echo "# Refresh with: make lock"; \
	  "$(VPY)" -m pip freeze --exclude-editable | grep -v '^swarmstore'; } > constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .swarmstore-demo .peer-tests
