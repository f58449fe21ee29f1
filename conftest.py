"""Test-wide setup: eight simulated CPU devices for the sharding tests.

Must run before JAX initialises its backend; on a machine with accelerators the
flag only affects the CPU platform.
"""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="module")
def fast_compile():
  """Unoptimised XLA for a module whose small programs compile several times faster so."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)


def pytest_terminal_summary(terminalreporter):
  """Reports how many random cases the bounded fuzz run (tests/test_fuzz.py) tried."""
  import sys

  fuzz = sys.modules.get("tests.test_fuzz") or sys.modules.get("test_fuzz")
  if fuzz is not None and fuzz.CASES:
    cases = ", ".join(f"{k} {v}" for k, v in sorted(fuzz.CASES.items()))
    terminalreporter.write_line(f"fuzz: {sum(fuzz.CASES.values())} cases passed ({cases})")
