"""Random cases for fuzzing: pytrees × transforms × valid hyperparameters × dtypes.

Shared by the bounded CI run (tests/test_fuzz.py) and the run at scale
(``make fuzz``, bench/fuzz.py). A case is drawn as plain data (family, static
choices, numeric hyperparameters, tree, dtypes, gradient magnitude, seed), so a
failure prints as a reproducible example. Numeric hyperparameters go through
``optax.inject_hyperparams`` and are set in the state, so every case with the
same static choices and tree reuses one compiled step: thousands of cases
compile a few dozen programs.

Checks per case, over a few jitted steps: every update finite, with the
parameter's shape and dtype; the state keeps its structure, shapes and dtypes
(what ``jax.lax.scan`` and checkpoints rely on) and stays finite, except the
fields documented as NaN where they do not apply.
"""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from hypothesis import strategies as st

import optax_ext
from optax_ext.insgd import InputPower

F32, BF16, F16 = jnp.float32, jnp.bfloat16, jnp.float16


def examples(thorough: int) -> int:
  """Hypothesis examples for a property test: all of them in ``make test-all``
  (``OPTAX_EXT_THOROUGH=1``), a third in ``make test``, where compiling each drawn
  shape dominates the suite's time."""
  return thorough if os.environ.get("OPTAX_EXT_THOROUGH") else max(2, thorough // 3)


# Trees as (path -> shape, dtype when mixed): scalars, empty and one-element
# leaves, kernels of rank 2 and 4, nested dicts.
TREES = {
  "dense": {"w": ((3, 4), F32), "b": ((4,), BF16), "s": ((), F16)},
  "conv": {
    "k": ((2, 3, 2, 4), BF16),
    "e": ((0, 3), F32),
    "sub": {"u": ((1, 1), F16), "v": ((5,), F32)},
  },
  "tiny": {"x": ((1,), F32), "y": ((2, 2), F16)},
}
# One dtype per tree: inject_hyperparams stores hyperparameters in the widest
# parameter dtype, and a float32 learning rate promotes a bfloat16 leaf's update
# (optax.adam's too). float16 is left out for the same reason: eps = 1e-8 is 0 there.
DTYPES = {"float32": F32, "bfloat16": BF16}
MAGNITUDES = [0.0, 1e-30, 1e-3, 1.0, 1e4, 1e30]
F16_MAX_MAGNITUDE = 1.0  # float16 tops out at 65504: larger gradients may rightly overflow it

# Diagnostic fields documented as NaN where they do not apply (INSGD's log P and
# step scale of a leaf without input power); everywhere else a state is finite.
NAN_WHEN_NOT_APPLICABLE = {"log_power", "step_scale"}


def adam_then_saliency(learning_rate, sparsity=0.1, scope="leaf", quantile="fast"):
  """Adam (eps 1e-4: optax's 1e-8 is 0 in float16, and 0/0 at zero gradients), then SP's prox."""
  return optax.chain(
    optax.adam(learning_rate, eps=1e-4), optax_ext.saliency_proximal(sparsity, scope, quantile)
  )


def sgd_momentum(learning_rate):
  return optax.sgd(learning_rate, momentum=0.9)


# 0.99 stays below 1 when inject_hyperparams stores it in bfloat16 (an all-bfloat16 tree).
unit = st.floats(0.0, 0.99)
rate = st.floats(1e-4, 1.0)
# family -> (factory, static choices, numeric hyperparameters), all within the
# documented ranges (docs/design.md, Conventions — Hyperparameter checks).
FAMILIES = {
  "angulargrad": (
    optax_ext.angulargrad,
    {"method": st.sampled_from(["cos", "tan"]), "reference_compat": st.booleans()},
    {
      "learning_rate": rate,
      "b1": unit,
      # b2 = 0 with |g| above 1.8e19 (g² overflows float32) makes Adam's own second
      # moment 0·inf = NaN, in optax.adam as here: not a valid case.
      "b2": st.floats(1e-3, 0.99),
      "eps": st.floats(1e-8, 1e-2),
      "lambda1": st.floats(0.0, 1.0),
      "lambda2": st.floats(0.0, 1.0),
      "weight_decay": st.floats(0.0, 0.1),
    },
  ),
  "insgd": (
    optax_ext.insgd,
    {"nesterov": st.booleans(), "norm_order": st.sampled_from([1, 2])},
    {
      "learning_rate": rate,
      "momentum": unit,
      "input_momentum": unit,
      "eps": st.floats(1e-3, 1.0),
      "weight_decay": st.floats(0.0, 0.1),
    },
  ),
  "sp": (
    optax_ext.sp,
    {
      "momentum": st.sampled_from([None, "injected"]),
      "nesterov": st.booleans(),
      "quantile": st.sampled_from(["fast", "exact"]),
      "scope": st.sampled_from(["leaf", "global"]),
    },
    {
      "learning_rate": rate,
      "sparsity": st.floats(0.0, 0.9),
      "b_max": st.floats(1.0, 100.0),
      "momentum": unit,
    },
  ),
  "saliency_proximal": (
    adam_then_saliency,
    {"quantile": st.sampled_from(["fast", "exact"]), "scope": st.sampled_from(["leaf", "global"])},
    {"learning_rate": rate, "sparsity": st.floats(0.0, 0.9)},
  ),
}
POWERS = [0.0, 1e-6, 1.0, 1e6]


@st.composite
def cases(draw, family):
  """A case of ``family`` as a dict of plain values."""
  factory, statics, numerics = FAMILIES[family]
  static = {k: draw(v) for k, v in statics.items()}
  numeric = {k: draw(v) for k, v in numerics.items()}
  if family == "sp" and static["momentum"] is None:
    numeric.pop("momentum")  # no trace at all: a different program
    static["nesterov"] = False
  return {
    "family": family,
    "static": static,
    "numeric": numeric,
    "tree": draw(st.sampled_from(sorted(TREES))),
    "dtype": draw(st.sampled_from(sorted(DTYPES))),
    "magnitude": draw(st.sampled_from(MAGNITUDES)),
    "power": draw(st.sampled_from(POWERS)),
    "seed": draw(st.integers(0, 2**16)),
  }


@st.composite
def gal_cases(draw):
  return {
    "family": "gal",
    "static": {
      "output_dim": draw(st.sampled_from([1, 3])),
      "hidden": draw(st.sampled_from([(4,), (8, 4)])),
      "reference_compat": draw(st.booleans()),
    },
    "numeric": {
      "alpha": draw(st.floats(0.0, 1.0)),
      "beta": draw(st.floats(0.01, 2.0)),
      "learning_rate": draw(st.floats(1e-4, 0.1)),
    },
    "magnitude": draw(st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 1e4])),  # inputs; 1e30 overflows
    "seed": draw(st.integers(0, 2**16)),
  }


def _tree(case):
  rng = np.random.default_rng(case["seed"])
  fixed = DTYPES[case["dtype"]]

  def leaf(spec):
    shape, dtype = spec
    dtype = fixed
    mag = min(case["magnitude"], F16_MAX_MAGNITUDE) if dtype == F16 else case["magnitude"]
    return jnp.asarray(rng.normal(size=shape), dtype), jnp.asarray(
      rng.normal(size=shape) * mag, dtype
    )

  pairs = jax.tree.map(leaf, TREES[case["tree"]], is_leaf=lambda x: isinstance(x, tuple))
  is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and hasattr(x[0], "dtype")
  return (
    jax.tree.map(lambda x: x[0], pairs, is_leaf=is_pair),
    jax.tree.map(lambda x: x[1], pairs, is_leaf=is_pair),
  )


def _key(case, params):
  shapes = tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params))
  static = tuple(sorted((k, str(v)) for k, v in case["static"].items()))
  return case["family"], static, jax.tree.structure(params), shapes


@functools.lru_cache(maxsize=None)
def _program(family, static, treedef, shapes, raw_static):
  """One injected transform and its jitted step for a family, static choices and tree."""
  static = dict(raw_static)
  if family == "gal":
    kwargs = {"optimizer": sgd_momentum, "learning_rate": 0.1, **static}
    tx = optax.inject_hyperparams(
      optax_ext.gal_chain,
      static_args=("optimizer", "output_dim", "seed", "activation"),
    )(**kwargs)
  else:
    factory = FAMILIES[family][0]
    kwargs = dict(static)
    if family == "sp" and static["momentum"] == "injected":
      kwargs["momentum"] = 0.5
    kwargs["learning_rate"] = 0.1
    if family == "angulargrad":
      # inject_hyperparams stores hyperparameters in the parameters' widest dtype: in
      # an all-bfloat16 tree the default b2 = 0.999 rounds to 1, out of range.
      kwargs["b2"] = 0.5
    statics = ("norm_order",) if family == "insgd" else ()
    tx = optax.inject_hyperparams(factory, static_args=statics)(**kwargs)

  @jax.jit
  def step(grads, state, params, extra):
    return tx.update(grads, state, params, **extra)

  return tx, step


def _extra(case, params):
  if case["family"] == "insgd":
    powers = jax.tree.map(lambda x: jnp.float32(case["power"]) if x.ndim >= 2 else None, params)
    return {"input_power": InputPower(powers, norm_order=case["static"]["norm_order"])}
  return {}


def _check_state_finite(state, params):
  # AngularGrad's φ statistics are NaN, as documented, for a tree with no entries.
  nan_ok = NAN_WHEN_NOT_APPLICABLE | (
    {"phi_stats"} if all(p.size == 0 for p in jax.tree.leaves(params)) else set()
  )
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    if not jnp.issubdtype(x.dtype, jnp.floating):
      continue
    names = {getattr(k, "name", None) for k in path} | {getattr(k, "key", None) for k in path}
    x = np.asarray(x, np.float32)
    if names & nan_ok:
      # INSGD's log P is -inf for a layer whose inputs are all zero (a zero power).
      bad = np.isposinf(x) if "log_power" in names else np.isinf(x)
      assert not np.any(bad), jax.tree_util.keystr(path)
    else:
      assert np.all(np.isfinite(x)), jax.tree_util.keystr(path)


def _set_hyperparams(state, numeric):
  hp = dict(state.hyperparams)
  for k, v in numeric.items():
    hp[k] = jnp.asarray(v, hp[k].dtype)
  return state._replace(hyperparams=hp)


def run_case(case, steps=3):
  """Runs ``case`` (a dict from :func:`cases` or :func:`gal_cases`); raises on a violation."""
  if case["family"] == "gal":
    return _run_gal(case, steps)
  params, grads = _tree(case)
  key = _key(case, params)
  tx, step = _program(*key, tuple(sorted(case["static"].items())))
  state = _set_hyperparams(tx.init(params), case["numeric"])
  first = state
  extra = _extra(case, params)
  for _ in range(steps):
    updates, state = step(grads, state, params, extra)
    _check_step(updates, params, state, first)
    params = optax.apply_updates(params, updates)
  if case["magnitude"] < 1e15:  # larger gradients overflow g² in second moments (inf, as optax)
    _check_state_finite(state.inner_state, params)


def _check_step(updates, params, state, first):
  """Updates finite and shaped like the parameters; the state keeps its structure and types."""
  chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
  chex.assert_tree_all_finite(updates)
  chex.assert_trees_all_equal_structs(state, first)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, first)


def _run_gal(case, steps):
  rng = np.random.default_rng(case["seed"])
  d = case["static"]["output_dim"]
  mag = case["magnitude"]
  x = jnp.asarray(rng.normal(size=(6, 3)) * mag, F32)
  y = jnp.asarray(rng.normal(size=(6, d)), F32)
  params = {"w": jnp.asarray(rng.normal(size=(3, d)), F32), "b": jnp.zeros((d,), F32)}
  static = tuple(sorted(case["static"].items()))
  tx, _ = _program("gal", static, jax.tree.structure(params), (d,), static)
  step = _gal_step(tx)
  numeric = dict(case["numeric"])
  numeric["learning_rate"] /= max(1.0, mag) ** 2  # stable on inputs of this magnitude
  state = _set_hyperparams(tx.init(params), numeric)
  first = state
  for _ in range(steps):
    updates, state = step(state, params, x, y)
    _check_step(updates, params, state, first)
    params = optax.apply_updates(params, updates)
  _check_state_finite(state.inner_state, params)


@functools.lru_cache(maxsize=None)
def _gal_step(tx):
  @jax.jit
  def step(state, params, x, y):
    model = lambda p: x @ p["w"] + p["b"]
    loss = lambda z: jnp.mean((z - y) ** 2)
    return tx.update(None, state, params, **optax_ext.gal_extra_args(model, params, loss))

  return step
