# One command sets everything up and runs the demo; one sets everything up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
comma := ,

.PHONY: install demo test test-all test-install lint docs bench-quick bench bench-speed compare-quick compare-medium compare gpu-check fuzz clean

# One virtual environment. `pip install optax_ext` is the library alone (jax, optax, flax,
# chex); each target installs the extras it needs (pyproject.toml says what each holds) and
# leaves a stamp named after them, so a later target installs only what it adds:
# $(VENV)/.installed-dev+train+bench is `pip install -e '.[dev,train,bench]'`.
$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-%: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[$(subst +,$(comma),$*)]'
	touch $@

install: $(VENV)/.installed-dev+train+bench+docs

demo: $(VENV)/.installed-train
	$(PY) -m train --demo

# Two workers, each test file on one of them: compiling dominates and XLA
# compiles on one thread. The slow tier, and every hypothesis example of the
# property tests (tests/_strategies.py, examples), run in make test-all.
test: $(VENV)/.installed-dev+train+bench lint
	XLA_FLAGS="--xla_force_host_platform_device_count=8" $(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

test-all: $(VENV)/.installed-dev+train+bench lint
	OPTAX_EXT_THOROUGH=1 XLA_FLAGS="--xla_force_host_platform_device_count=8" $(PY) -m pytest -q -n 2 --dist loadfile

# `pip install optax_ext` into a fresh virtual environment: jax, optax, flax and chex come
# with it and no extra does; one step of every method runs there (tests/test_install.py,
# in the slow tier as it installs packages; CI runs it through .ci/run).
test-install: $(VENV)/.installed-dev+train+bench
	$(PY) -m pytest -q -p no:randomly tests/test_install.py

# The documentation site, into docs/_build/html (open its index.html). RESULTS.md is
# regenerated from bench/results/ first; -W --keep-going fails on any warning, -n on
# any reference that does not resolve. The build runs every script of examples/ for the
# gallery (docs/_ext/examples_gallery.py). docs/check_html.py then fails on raw TeX, stray
# dollars, prose set as maths, empty API entries and figures that do not open, in any page.
# Names without a docstring fail tests/test_docs.py.
docs: $(VENV)/.installed-docs+train+bench
	$(PY) -m bench --report-only
	$(PY) -m sphinx -W --keep-going -n -q -b html -c docs . docs/_build/html
	$(PY) docs/check_html.py docs/_build/html

LINTED := optax_ext flax_models train tests bench examples docs/conf.py docs/check_html.py docs/_ext

lint: $(VENV)/.installed-dev+train+bench
	$(PY) -m ruff check $(LINTED)
	$(PY) -m ruff format --check $(LINTED)

# glibc's malloc hands freed memory back to the kernel and takes it again as
# fresh pages; which buffers pay those page faults depends on what else ran in
# the process (bench/RESULTS.md). Keeping freed memory gives every method the
# steady state a long training run settles into.
BENCH_ENV := MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_MMAP_THRESHOLD_=2147483647 MALLOC_TOP_PAD_=1073741824

bench-quick: $(VENV)/.installed-bench
	$(BENCH_ENV) $(PY) -m bench --quick

bench: $(VENV)/.installed-bench
	$(BENCH_ENV) $(PY) -m bench

# The speed targets of bench/RESULTS.md's summary: every update, every train step donated
# and not, compile times.
bench-speed: $(VENV)/.installed-bench
	$(BENCH_ENV) $(PY) -m bench --quick --only update_speed train_step

# Every optimizer tuned alike on five workloads (bench/RESULTS.md, "Which optimizer, when");
# an interrupted study resumes from bench/results/compare_<quick|medium|full>/*.jsonl.
compare-quick: $(VENV)/.installed-bench
	$(BENCH_ENV) $(PY) -m bench.compare --quick

# About three hours on a 2-core CPU, the LM last; rerun to resume after an interruption.
compare-medium: $(VENV)/.installed-bench
	$(BENCH_ENV) $(PY) -m bench.compare --medium

compare: $(VENV)/.installed-bench
	$(BENCH_ENV) $(PY) -m bench.compare

# On a machine with a GPU (a CUDA build of jaxlib): update speed, train steps, the LM step
# table and one quick workload of the comparison, within about 8 minutes, into
# bench/results/*_gpu.json; bench/RESULTS.md shows them beside the CPU results.
gpu-check: $(VENV)/.installed-bench
	$(PY) -m bench.gpu_check
	$(PY) -m bench --report-only

# Random pytrees × transforms × hyperparameters × dtypes, shrinking on: bench/results/fuzz.json.
fuzz: $(VENV)/.installed-bench
	$(PY) -m bench.fuzz --cases 10000

clean:
	rm -rf $(VENV) runs docs/_build docs/api docs/examples
