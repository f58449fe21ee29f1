"""The counting quantile against NumPy, and the fast mode's pruned fraction."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optax_ext import quantile as q_lib

# Non-negative float32 saliencies: ties, zeros, tiny and huge values, 1-400 elements.
finite = st.floats(0.0, 3e38, allow_nan=False, allow_infinity=False, width=32)
pools = st.sampled_from([
    st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0]),  # many ties and zeros
    finite,  # anything, heavy tails included
    st.floats(0.0, 1e-30, width=32),  # denormals and tiny values
    st.sampled_from([0.5, 0.5, 3.0]),
])


@st.composite
def saliencies(draw):
  pool = draw(pools)
  n = draw(st.one_of(st.integers(1, 10), st.integers(11, 400)))
  return draw(hnp.arrays(np.float32, n, elements=pool))


_fast = jax.jit(lambda bits, k, warm: q_lib.select_thresholds([[bits]], k, warm_start=warm,
                                                                  tol=0.004))
_exact = jax.jit(lambda bits, k: q_lib.select_thresholds([[bits]], k, tol=None))


@settings(max_examples=60, deadline=None)
@given(x=saliencies(), p=st.floats(0.0, 0.99), warm=finite)
def test_fast_mode_prunes_within_half_a_percent_of_exact(x, p, warm):
  n = x.size
  kth = jnp.asarray([int(np.floor(p * (n - 1)))], jnp.int32)
  bits = q_lib.to_bits(jnp.asarray(x))
  exact_t, _, _ = _exact(bits, kth)
  want = np.quantile(x, p, method="lower")
  assert float(q_lib.from_bits(exact_t[0])) == want  # the exact mode is jnp.quantile 'lower'
  warm_bits = q_lib.to_bits(jnp.asarray([warm], jnp.float32))
  fast_t, _, _ = _fast(bits, kth, warm_bits)
  fast_frac = np.mean(x <= np.float32(q_lib.from_bits(fast_t[0])))
  exact_frac = np.mean(x <= want)
  assert abs(fast_frac - exact_frac) <= 0.005, (fast_frac, exact_frac)


def test_several_groups_at_once_match_numpy():
  rng = np.random.default_rng(0)
  xs = [rng.exponential(size=n).astype(np.float32) for n in (1, 7, 1000, 5000)]
  xs[2][::3] = 0.0
  ps = np.array([0.1, 0.5, 0.3, 0.9])
  kth = jnp.asarray([int(np.floor(p * (x.size - 1))) for p, x in zip(ps, xs)], jnp.int32)
  t, counts, passes = q_lib.select_thresholds([[q_lib.to_bits(jnp.asarray(x))] for x in xs], kth,
                                              tol=None)
  for i, (x, p) in enumerate(zip(xs, ps)):
    assert float(q_lib.from_bits(t[i])) == np.quantile(x, p, method="lower")
    assert int(counts[i]) == np.sum(x <= np.quantile(x, p, method="lower"))
  assert 1 <= int(passes) <= q_lib.MAX_PASSES


def test_warm_start_near_the_answer_takes_one_or_two_passes():
  x = np.random.default_rng(1).lognormal(size=100_000).astype(np.float32)
  want = np.quantile(x, 0.1, method="lower")
  warm = q_lib.to_bits(jnp.asarray([want * 1.05], jnp.float32))
  _, _, passes = q_lib.select_thresholds([[q_lib.to_bits(jnp.asarray(x))]],
                                         jnp.asarray([9_999]), warm_start=warm, tol=0.004)
  assert int(passes) <= 2
