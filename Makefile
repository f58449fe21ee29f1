# One command sets everything up and runs the demo; one sets everything up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-all lint docs bench-quick bench compare-quick compare-medium compare gpu-check fuzz clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,docs]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m train --demo

# Two workers, each test file on one of them: compiling dominates and XLA
# compiles on one thread. The slow tier, and every hypothesis example of the
# property tests (tests/_strategies.py, examples), run in make test-all.
test: $(VENV)/.installed lint
	XLA_FLAGS="--xla_force_host_platform_device_count=8" $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

test-all: $(VENV)/.installed lint
	OPTAX_EXT_THOROUGH=1 XLA_FLAGS="--xla_force_host_platform_device_count=8" $(PY) -m pytest -q -n 2 --dist loadfile

# The documentation site, into docs/_build/html (open its index.html). RESULTS.md is
# regenerated from bench/results/ first; -W --keep-going fails on any warning, -n on
# any reference that does not resolve. Names without a docstring fail tests/test_docs.py.
docs: $(VENV)/.installed
	$(PY) -m bench --report-only
	$(PY) -m sphinx -W --keep-going -n -q -b html -c docs . docs/_build/html

lint: $(VENV)/.installed
	$(PY) -m ruff check optax_ext flax_models train tests bench docs/conf.py
	$(PY) -m ruff format --check optax_ext flax_models train tests bench docs/conf.py

# glibc's malloc hands freed memory back to the kernel and takes it again as
# fresh pages; which buffers pay those page faults depends on what else ran in
# the process (bench/RESULTS.md). Keeping freed memory gives every method the
# steady state a long training run settles into.
BENCH_ENV := MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=1073741824

bench-quick: $(VENV)/.installed
	$(BENCH_ENV) $(PY) -m bench --quick

bench: $(VENV)/.installed
	$(BENCH_ENV) $(PY) -m bench

# Every optimizer tuned alike on five workloads (bench/RESULTS.md, "Which optimizer, when");
# an interrupted study resumes from bench/results/compare_<quick|medium|full>/*.jsonl.
compare-quick: $(VENV)/.installed
	$(BENCH_ENV) $(PY) -m bench.compare --quick

# About three hours on a 2-core CPU, the LM last; rerun to resume after an interruption.
compare-medium: $(VENV)/.installed
	$(BENCH_ENV) $(PY) -m bench.compare --medium

compare: $(VENV)/.installed
	$(BENCH_ENV) $(PY) -m bench.compare

# On a machine with a GPU (a CUDA build of jaxlib): update speed, train steps, the LM step
# table and one quick workload of the comparison, within about 8 minutes, into
# bench/results/*_gpu.json; bench/RESULTS.md shows them beside the CPU results.
gpu-check: $(VENV)/.installed
	$(PY) -m bench.gpu_check
	$(PY) -m bench --report-only

# Random pytrees × transforms × hyperparameters × dtypes, shrinking on: bench/results/fuzz.json.
fuzz: $(VENV)/.installed
	$(PY) -m bench.fuzz --cases 10000

clean:
	rm -rf $(VENV) runs docs/_build
