"""The ``warmup_cosine`` learning-rate schedule of ``train.registry.make_schedule``.

Checked against the formula written out by hand (linear warm-up from 0 over the first 5 %
of the steps, then half a cosine period down to 0), under ``jax.jit`` with the base rate a
traced value, and as the schedule of a base rate held in an ``optax.inject_hyperparams``
state, as bench.compare trains every optimizer: each update is the scheduled rate's step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from train import registry
from train.errors import UsageError

TOTAL, WARM = 200, 10  # 5 % of 200 steps


def _by_hand(base: float, t: int) -> float:
  if t < WARM:
    return base * t / WARM
  t = min(t, TOTAL)
  return base * 0.5 * (1 + math.cos(math.pi * (t - WARM) / (TOTAL - WARM)))


def test_warmup_cosine_follows_the_formula():
  schedule = registry.make_schedule("warmup_cosine", 20, TOTAL)(0.3)
  for t in (0, 1, 5, 9, 10, 11, 100, 199, 200, 250):
    assert np.isclose(float(schedule(t)), _by_hand(0.3, t), rtol=1e-5, atol=1e-7), t
  assert "warmup_cosine" in registry.SCHEDULES


def test_warmup_cosine_takes_a_traced_base_rate():
  shape = registry.make_schedule("warmup_cosine", 20, TOTAL)
  at = jax.jit(lambda base, t: shape(base)(t))
  for t in (3, 50):
    assert np.isclose(float(at(jnp.float32(0.2), t)), _by_hand(0.2, t), rtol=1e-5)


def test_injected_base_rate_is_scheduled():
  shape = registry.make_schedule("warmup_cosine", 20, TOTAL)
  tx = optax.inject_hyperparams(lambda learning_rate: optax.sgd(shape(learning_rate)))(
    learning_rate=0.1
  )
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(WARM + 2):
    updates, state = update({"w": jnp.ones(3)}, state, params)
    assert np.allclose(updates["w"], -_by_hand(0.1, t), rtol=1e-5, atol=1e-8), t


def test_unknown_schedule_is_refused():
  with pytest.raises(UsageError, match="warmup_cosine"):
    registry.make_schedule("warmup", 10, 100)
