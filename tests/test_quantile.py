"""The counting order statistics against NumPy's sorted ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optax_ext import quantile as q_lib


def np_domain(x):
  """NumPy transcription of the documented domain map."""
  x = np.asarray(x, np.float32)
  out = np.where(x >= q_lib.LOW, np.minimum(x, np.float32(q_lib.HIGH)), np.float32(q_lib.LOW))
  return np.where(np.isnan(x), np.float32(q_lib.HIGH), out).astype(np.float32)


# Saliency-like float32 arrays: ties, zeros, tiny and huge values, NaN, negatives.
anything = st.one_of(
  st.floats(-1.0, 2.0**127, width=32), st.sampled_from([float("nan"), float("inf")])
)
pools = st.sampled_from(
  [
    st.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0]),  # many ties and zeros
    anything,  # heavy tails, infinities and NaN included
    st.floats(0.0, 2.0**-93, width=32),  # denormals, values below LOW
    st.sampled_from([0.5, 0.5, 3.0]),
    st.floats(1.0, 1.0 + 2.0**-10, width=32),  # a narrow band: many keys, few values
  ]
)


@st.composite
def saliencies(draw):
  pool = draw(pools)
  n = draw(st.one_of(st.integers(1, 10), st.integers(11, 300)))
  return draw(hnp.arrays(np.float32, n, elements=pool))


@jax.jit
def _exact(x, kth):
  keys, counts, leaf, _, passes = q_lib.select([[x]], kth, None)
  return keys, counts, leaf[0], passes


@jax.jit
def _fast(x, kth, allowed, warm, step, density):
  keys, counts, _, _, passes = q_lib.select(
    [[x]], kth, allowed, warm=warm, step=step, density=density
  )
  return keys, counts, passes


@settings(max_examples=60, deadline=None)
@given(
  x=saliencies(),
  p=st.floats(0.0, 0.99),
  warm=st.floats(0.0, 2.0**127, width=32),
  step=st.integers(1, 2**28),
  density=st.sampled_from([0.0, 1e-6, 1e-3, 1.0]),
  tol=st.sampled_from([0.0, 0.004, 0.1]),
)
def test_select_matches_the_sorted_quantile(x, p, warm, step, density, tol):
  n = x.size
  d = np_domain(x)
  kth = int(np.floor(p * (n - 1)))
  want = np.sort(d)[kth]  # np.quantile(d, p, method="lower")
  keys, counts, leaf, passes = _exact(jnp.asarray(d), jnp.asarray([kth], jnp.int32))
  assert float(q_lib.from_key(keys[0])) == want
  assert int(counts[0]) == int(leaf[0]) == np.sum(d <= want)
  assert int(passes) <= q_lib.MAX_PASSES

  # Fast mode, from any warm start: at least the kth+1 smallest, at most `allowed` more.
  allowed = int(np.floor(tol * n))
  warm_key = q_lib.to_key(q_lib.to_domain(jnp.asarray([warm], jnp.float32)))
  keys, counts, _ = _fast(
    jnp.asarray(d),
    jnp.asarray([kth], jnp.int32),
    jnp.asarray([allowed], jnp.int32),
    warm_key,
    jnp.asarray([step], jnp.int32),
    jnp.asarray([density], jnp.float32),
  )
  t = np.float32(q_lib.from_key(keys[0]))
  below = int(np.sum(d <= t))
  assert below == int(counts[0])
  assert kth + 1 <= below <= kth + 1 + allowed or t == want, (below, kth, allowed)


def test_several_groups_of_several_arrays_match_numpy():
  rng = np.random.default_rng(0)
  xs = [rng.exponential(size=n).astype(np.float32) for n in (1, 7, 1000, 5000, 300)]
  xs[2][::3] = 0.0
  groups = [[xs[0]], [xs[1], xs[2]], [xs[3], xs[4]]]
  ps = [0.0, 0.5, 0.9]
  kth = [int(np.floor(p * (sum(a.size for a in g) - 1))) for p, g in zip(ps, groups)]
  keys, counts, leaf_counts, _, passes = q_lib.select(
    [[jnp.asarray(a) for a in g] for g in groups], jnp.asarray(kth, jnp.int32), None
  )
  for i, g in enumerate(groups):
    joined = np.concatenate(g)
    want = np.quantile(joined, ps[i], method="lower")
    assert float(q_lib.from_key(keys[i])) == want
    assert int(counts[i]) == np.sum(joined <= want)
    assert [int(c) for c in leaf_counts[i]] == [int(np.sum(a <= want)) for a in g]
  assert 1 <= int(passes) <= q_lib.MAX_PASSES


def test_a_warm_start_near_the_answer_takes_few_passes():
  x = np.random.default_rng(1).lognormal(size=100_000).astype(np.float32)
  kth = 9_999
  want = np.sort(x)[kth]
  warm = q_lib.to_key(jnp.asarray([want * 1.05], jnp.float32))
  cold = q_lib.select([[jnp.asarray(x)]], jnp.asarray([kth]), jnp.asarray([400]))
  hot = q_lib.select([[jnp.asarray(x)]], jnp.asarray([kth]), jnp.asarray([400]), warm=warm)
  assert int(hot[4]) <= 4 < int(cold[4])
  for keys, counts, *_ in (cold, hot):
    assert kth + 1 <= int(counts[0]) <= kth + 401
    assert int(counts[0]) == np.sum(x <= np.float32(q_lib.from_key(keys[0])))


@pytest.mark.parametrize("shape", [(10, 3, 2), (1, 61), (61,)])
def test_counts_are_exact_when_arrays_are_counted_in_chunks(monkeypatch, shape):
  monkeypatch.setattr(q_lib, "CHUNK", 8)  # several chunks: by rows, or of a single row
  x = np.random.default_rng(2).integers(0, 5, size=shape).astype(np.float32)
  for v in (0.0, 1.0, 2.0, 4.0):
    key = q_lib.to_key(jnp.float32(v))
    assert int(q_lib.count_above(jnp.asarray(x), key)) == np.sum(x > v)
    assert int(q_lib.count_at_most(jnp.asarray(x), key)) == np.sum(x <= v)


def test_keys_are_consecutive_and_ordered_like_the_values():
  low_next = np.nextafter(np.float32(q_lib.LOW), np.float32(1))
  v = jnp.asarray([q_lib.LOW, low_next, np.nextafter(low_next, np.float32(1)), 1.0, q_lib.HIGH])
  k = np.asarray(q_lib.to_key(v))
  assert list(k[:3]) == [0, 1, 2] and k[-1] == q_lib.KEY_MAX and np.all(np.diff(k) > 0)
  np.testing.assert_array_equal(q_lib.from_key(jnp.asarray(k)), v)
  d = q_lib.to_domain(jnp.asarray([-1.0, 0.0, 1e-35, np.nan, np.inf, 2.5], jnp.float32))
  np.testing.assert_array_equal(d, [q_lib.LOW] * 3 + [q_lib.HIGH, q_lib.HIGH, 2.5])


@settings(max_examples=30, deadline=None)
@given(x=saliencies(), key_frac=st.floats(0.0, 1.0))
def test_counts_of_raw_values_and_of_functions_equal_those_of_the_domain_image(x, key_frac):
  # The count reads raw values (NaN falls back to the domain image) and may
  # take a function instead of an array: the same number either way.
  key = jnp.int32(int(key_frac * (q_lib.KEY_MAX - 1)))
  want = np.sum(np_domain(x) > np.float32(q_lib.from_key(key)))
  raw = jnp.asarray(x)
  assert int(jax.jit(q_lib.count_above)(raw, key)) == want
  assert int(jax.jit(lambda k: q_lib.count_above(lambda: raw * 1.0, k))(key)) == want
  assert int(q_lib.count_at_most(lambda: raw, key)) == x.size - want
