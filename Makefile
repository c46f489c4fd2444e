# Two entry points: `make run` (the main job, CPU by default) and `make test`.
# Both create ./.venv and install the package on first use, so they work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

.PHONY: install run test bench device-check
install: $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.main $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.scaling $(ARGS)

# The prepared GPU check (benchmarks/device_check.sh): scaling benchmark, then the induction surrogate. OUT=folder.
device-check: $(STAMP)
	PYTHON=$(PY) sh benchmarks/device_check.sh $(or $(OUT),results/device_check)
