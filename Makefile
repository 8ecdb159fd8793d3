# swarmstore: `make demo` runs the main job, `make test` runs the suite, `make bench` the benchmarks.
# Each target bootstraps .venv with a Python >= 3.12 the first time.
SHELL := /bin/bash
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-quick lint venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@set -e; \
	if [ ! -x "$(VPY)" ]; then \
	  py="$$(bash .ci/find-python)"; \
	  echo "creating $(VENV) with $$py"; \
	  "$$py" -m venv "$(VENV)"; \
	fi; \
	"$(VPY)" -m pip install -q --upgrade pip; \
	"$(VPY)" -m pip install -q -e '.[test]'; \
	touch "$(STAMP)"

demo: $(STAMP)
	$(VENV)/bin/swarmstore demo

test: $(STAMP)
	$(VPY) -m ruff check swarmstore plugins tests benchmarks examples
	$(VPY) -m pytest $(ARGS)

bench: $(STAMP)
	$(VPY) benchmarks/run_all.py $(ARGS)

bench-quick: $(STAMP)
	$(VPY) benchmarks/run_all.py --quick

lint: $(STAMP)
	$(VPY) -m ruff check swarmstore plugins tests benchmarks examples
	$(VPY) -m ruff format --check swarmstore plugins tests benchmarks examples

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .swarmstore-demo
