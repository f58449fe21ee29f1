"""The counting order statistics against NumPy's sorted ones."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optax_ext import _quantile_search
from optax_ext import quantile as q_lib
from tests._strategies import examples

# Counting on integer keys: unoptimised XLA gives the same selections, compiled faster.
pytestmark = pytest.mark.usefixtures("fast_compile")


def np_domain(x):
  """NumPy transcription of the documented domain map."""
  x = np.asarray(x, np.float32)
  out = np.where(x >= q_lib.LOW, np.minimum(x, np.float32(q_lib.HIGH)), np.float32(q_lib.LOW))
  return np.where(np.isnan(x), np.float32(q_lib.HIGH), out).astype(np.float32)


def np_order(values, tie_values):
  """Flat indices in the documented order: value, then tie value, then position."""
  v, t = np_domain(values).ravel(), np_domain(tie_values).ravel()
  return np.lexsort((np.arange(v.size), t, v))


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
def saliencies(draw, n=None):
  pool = draw(pools)
  n = n or draw(st.sampled_from([1, 2, 3, 7, 10, 64, 300]))  # few sizes: few compilations
  return draw(hnp.arrays(np.float32, n, elements=pool))


@st.composite
def with_ties(draw):
  """(values, tie values) of one shape: both with many exact ties."""
  shape = draw(st.sampled_from([(7,), (3, 5), (12, 20), (2, 3, 4)]))
  n = int(np.prod(shape))
  values = draw(saliencies(n)).reshape(shape)
  tie_values = draw(hnp.arrays(np.float32, n, elements=st.sampled_from([0.0, 0.5, 0.5, 2.0])))
  return values, tie_values.reshape(shape)


def _entries(values, tie_values):
  v, t = jnp.asarray(values), jnp.asarray(tie_values)
  return q_lib.Entries(lambda: v, lambda: t, values.shape)


def _mask(sel, values, tie_values):
  pos = q_lib.positions(values.shape, 0)
  return np.asarray(q_lib.selected(sel, 0, jnp.asarray(values), jnp.asarray(tie_values), pos))


@jax.jit
def _lower(x, kth):
  return q_lib.select([[x]], kth)


@jax.jit
def _fast(x, kth, allowed, warm, step, density):
  return q_lib.select([[x]], kth, allowed, warm=warm, step=step, density=density)


@settings(max_examples=examples(40), deadline=None)
@given(
  x=saliencies(),
  p=st.floats(0.0, 0.99),
  warm=st.floats(0.0, 2.0**127, width=32),
  step=st.integers(1, 2**28),
  density=st.sampled_from([0.0, 1e-6, 1e-3, 1.0]),
  tol=st.sampled_from([0.0, 0.004, 0.1]),
)
def test_values_only_selects_the_lower_quantile_class(x, p, warm, step, density, tol):
  n = x.size
  d = np_domain(x)
  kth = int(np.floor(p * (n - 1)))
  want = np.sort(d)[kth]  # np.quantile(d, p, method="lower")
  in_class = int(np.sum(d <= want))
  sel = _lower(jnp.asarray(d), jnp.asarray([kth], jnp.int32))
  assert float(q_lib.from_key(sel.below[0])) == want
  assert int(sel.count[0]) == int(sel.leaf_counts[0][0]) == in_class
  assert int(sel.passes) <= _quantile_search._MAX_PASSES

  # Fast mode from any warm start, values only: a prefix of the sorted values
  # with between kth+1 and kth+1+allowed elements when the tie class at the
  # kth value allows it, and otherwise exactly that whole class.
  allowed = int(np.floor(tol * n))
  warm_key = q_lib.to_key(q_lib.to_domain(jnp.asarray([warm], jnp.float32)))
  sel = _fast(
    jnp.asarray(d),
    jnp.asarray([kth], jnp.int32),
    jnp.asarray([allowed], jnp.int32),
    warm_key,
    jnp.asarray([step], jnp.int32),
    jnp.asarray([density], jnp.float32),
  )
  t = np.float32(q_lib.from_key(sel.below[0]))
  count = int(sel.count[0])
  assert count == int(np.sum(d <= t))
  if in_class - (kth + 1) <= allowed:
    assert kth + 1 <= count <= kth + 1 + allowed, (count, kth, allowed)
  else:
    assert count == in_class


@jax.jit
def _tied(values, tie_values, kth, allowed):
  entries = q_lib.Entries(lambda: values, lambda: tie_values, values.shape)
  return q_lib.select([[entries]], kth, allowed)


@settings(max_examples=examples(40), deadline=None)
@given(data=with_ties(), p=st.floats(0.0, 0.99), tol=st.sampled_from([0.0, 0.004, 0.1]))
def test_with_tie_values_selects_a_prefix_of_the_lexsort_order(data, p, tol):
  values, tie_values = data
  n = values.size
  kth = int(np.floor(p * (n - 1)))
  allowed = int(np.floor(tol * n))
  order = np_order(values, tie_values)
  sel = _tied(
    jnp.asarray(values), jnp.asarray(tie_values), jnp.asarray([kth]), jnp.asarray([allowed])
  )
  count = int(sel.count[0])
  assert kth + 1 <= count <= kth + 1 + allowed, (count, kth, allowed)
  want = np.zeros(n, bool)
  want[order[:count]] = True
  np.testing.assert_array_equal(_mask(sel, values, tie_values).ravel(), want)
  assert int(sel.leaf_counts[0][0]) == count


def test_exact_selection_with_ties_across_several_arrays_of_a_group():
  rng = np.random.default_rng(3)
  arrays = [rng.choice([0.0, 1.0, 1.0, 2.0], size=s).astype(np.float32) for s in [(4, 5), (9,)]]
  ties = [rng.choice([0.0, 0.0, 3.0], size=a.shape).astype(np.float32) for a in arrays]
  n = sum(a.size for a in arrays)
  kth = 12
  group = [_entries(a, t) for a, t in zip(arrays, ties)]
  sel = q_lib.select([group], jnp.asarray([kth]), jnp.asarray([0]))
  order = np.lexsort(
    (
      np.arange(n),
      np.concatenate([t.ravel() for t in ties]),
      np.concatenate([a.ravel() for a in arrays]),
    )
  )
  want = np.zeros(n, bool)
  want[order[: kth + 1]] = True
  got, offset = [], 0
  for a, t in zip(arrays, ties):
    pos = q_lib.positions(a.shape, offset)
    got.append(np.asarray(q_lib.selected(sel, 0, jnp.asarray(a), jnp.asarray(t), pos)).ravel())
    offset += a.size
  np.testing.assert_array_equal(np.concatenate(got), want)
  assert [int(c) for c in sel.leaf_counts[0]] == [int(g.sum()) for g in got]


def test_several_groups_of_several_arrays_match_numpy():
  rng = np.random.default_rng(0)
  xs = [rng.exponential(size=n).astype(np.float32) for n in (1, 7, 1000, 5000, 300)]
  xs[2][::3] = 0.0
  groups = [[xs[0]], [xs[1], xs[2]], [xs[3], xs[4]]]
  ps = [0.0, 0.5, 0.9]
  kth = [int(np.floor(p * (sum(a.size for a in g) - 1))) for p, g in zip(ps, groups)]
  sel = q_lib.select(
    [[jnp.asarray(a) for a in g] for g in groups], jnp.asarray(kth, jnp.int32), None
  )
  for i, g in enumerate(groups):
    joined = np.concatenate(g)
    want = np.quantile(joined, ps[i], method="lower")
    assert float(q_lib.from_key(sel.below[i])) == want
    assert int(sel.count[i]) == np.sum(joined <= want)
    assert [int(c) for c in sel.leaf_counts[i]] == [int(np.sum(a <= want)) for a in g]
  assert 1 <= int(sel.passes) <= _quantile_search._MAX_PASSES


def test_a_warm_start_near_the_answer_takes_few_passes():
  x = np.random.default_rng(1).lognormal(size=100_000).astype(np.float32)
  kth = 9_999
  want = np.sort(x)[kth]
  warm = q_lib.to_key(jnp.asarray([want * 1.05], jnp.float32))
  cold = q_lib.select([[jnp.asarray(x)]], jnp.asarray([kth]), jnp.asarray([400]))
  hot = q_lib.select([[jnp.asarray(x)]], jnp.asarray([kth]), jnp.asarray([400]), warm=warm)
  assert int(hot.passes) <= 4 < int(cold.passes)
  for sel in (cold, hot):
    assert kth + 1 <= int(sel.count[0]) <= kth + 401
    assert int(sel.count[0]) == np.sum(x <= np.float32(q_lib.from_key(sel.below[0])))


def test_keys_are_consecutive_and_ordered_like_the_values():
  low_next = np.nextafter(np.float32(q_lib.LOW), np.float32(1))
  v = jnp.asarray([q_lib.LOW, low_next, np.nextafter(low_next, np.float32(1)), 1.0, q_lib.HIGH])
  k = np.asarray(q_lib.to_key(v))
  assert list(k[:3]) == [0, 1, 2] and k[-1] == q_lib.KEY_MAX and np.all(np.diff(k) > 0)
  np.testing.assert_array_equal(q_lib.from_key(jnp.asarray(k)), v)
  d = q_lib.to_domain(jnp.asarray([-1.0, 0.0, 1e-35, np.nan, np.inf, 2.5], jnp.float32))
  np.testing.assert_array_equal(d, [q_lib.LOW] * 3 + [q_lib.HIGH, q_lib.HIGH, 2.5])


def test_positions_are_row_major_flat_indices():
  np.testing.assert_array_equal(q_lib.positions((2, 3, 4), 5), np.arange(24).reshape(2, 3, 4) + 5)
  np.testing.assert_array_equal(q_lib.positions((), 7), 7)


@settings(max_examples=examples(30), deadline=None)
@given(x=saliencies(), key_frac=st.floats(0.0, 1.0))
def test_counts_of_raw_values_and_of_functions_equal_those_of_the_domain_image(x, key_frac):
  # The count reads raw values and may take a function instead of an array:
  # the same number either way, NaN counted above as its image HIGH is.
  key = jnp.int32(int(key_frac * (q_lib.KEY_MAX - 1)))
  want = np.sum(np_domain(x) <= np.float32(q_lib.from_key(key)))
  raw = jnp.asarray(x)
  assert int(jax.jit(q_lib.count_at_most)(raw, key)) == want
  assert int(jax.jit(lambda k: q_lib.count_at_most(lambda: raw * 1.0, k))(key)) == want
