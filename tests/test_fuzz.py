"""Bounded fuzzing: random pytrees × every transform × random valid hyperparameters × dtypes.

The strategies and the checks live in tests/_strategies.py, shared with the run at
scale (``make fuzz``); here each family runs a few cases, without shrinking, so
the suite stays fast. The number of cases tried per family is printed at the
end of the test session.
"""

import collections

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from tests import _strategies as strategies

# Each case checks shapes, dtypes and finiteness: unoptimised XLA compiles each drawn
# program several times faster.
pytestmark = pytest.mark.usefixtures("fast_compile")

CASES = collections.Counter()  # family -> cases run (read by conftest's summary)
FUZZ = settings(
  max_examples=strategies.examples(8),
  deadline=None,
  suppress_health_check=list(HealthCheck),
  derandomize=True,
  database=None,
  phases=(Phase.explicit, Phase.generate),  # make fuzz shrinks; here a failure is reported as drawn
)
# Each SP case compiles its own counting search (seconds each); make fuzz runs thousands.
FUZZ_SP = settings(FUZZ, max_examples=strategies.examples(3))


def _run(case):
  strategies.run_case(case)
  CASES[case["family"]] += 1


@FUZZ
@given(case=strategies.cases("angulargrad"))
def test_fuzz_angulargrad(case):
  _run(case)


@FUZZ
@given(case=strategies.cases("insgd"))
def test_fuzz_insgd(case):
  _run(case)


@FUZZ_SP
@given(case=strategies.cases("sp"))
def test_fuzz_sp(case):
  _run(case)


@FUZZ_SP
@given(case=strategies.cases("saliency_proximal"))
def test_fuzz_saliency_proximal_after_adam(case):
  _run(case)


@FUZZ
@given(case=strategies.gal_cases())
def test_fuzz_gal(case):
  _run(case)
