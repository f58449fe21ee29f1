# One command sets everything up and runs the demo; one sets everything up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test lint bench-quick bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m train --demo

test: $(VENV)/.installed
	XLA_FLAGS="--xla_force_host_platform_device_count=8" $(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check optax_ext flax_models train tests bench
	$(PY) -m ruff format --check optax_ext flax_models train tests bench

bench-quick: $(VENV)/.installed
	$(PY) -m bench --quick

bench: $(VENV)/.installed
	$(PY) -m bench

clean:
	rm -rf $(VENV) runs
