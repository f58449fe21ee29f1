"""train.methods: each optimizer's description builds what it says, and says what it logs."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_ext
from train import steps
from train.methods import GAL_DIAGNOSTICS, METHODS, get

PARAMS = {"w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3), "b": jnp.zeros(3)}
GRADS = jax.tree.map(lambda p: 0.1 * p + 0.01, PARAMS)


def _extra(need) -> dict:
  if isinstance(need, steps.InputPower):
    power = {"w": jnp.asarray(3.0), "b": None}
    return {"input_power": optax_ext.InputPower(power, need.norm_order)}
  return {}


def _updates(tx, need):
  update = jax.jit(lambda s, extra: tx.update(GRADS, s, PARAMS, **extra))
  state = tx.init(PARAMS)
  for _ in range(2):
    u, state = update(state, _extra(need))
  return u


def _logged(tx) -> set[str]:
  """The signal names of the diagnostics ``tx``'s state holds (prefix and leaf dropped)."""
  return {k.split("/")[1] for k in jax.jit(lambda p: optax_ext.diagnostics(tx.init(p)))(PARAMS)}


def test_hyperparameters_are_the_factorys_own_with_its_defaults():
  sp = METHODS["sp"].hyperparameters()
  assert sp["sparsity"] == inspect.signature(optax_ext.sp).parameters["sparsity"].default
  assert "momentum" in sp and "learning_rate" not in sp
  assert METHODS["adamw"].hyperparameters()["weight_decay"] == 1e-4  # optax.adamw's
  nesterov = METHODS["sp_nesterov"].hyperparameters()
  assert "momentum" not in nesterov and "nesterov" not in nesterov  # fixed by the name
  assert "method" not in METHODS["angulargrad_cos"].hyperparameters()


@pytest.mark.parametrize(
  "name,kwargs,direct",
  [
    ("nesterov", {}, lambda: optax.sgd(0.05, momentum=0.9, nesterov=True)),
    ("angulargrad_tan", {"lambda1": 0.3}, lambda: optax_ext.angulargrad(1e-3, "tan", lambda1=0.3)),
    ("insgd_l1", {"eps": 0.5}, lambda: optax_ext.insgd(0.05, norm_order=1, eps=0.5)),
    ("adamw", {"weight_decay": 0.1}, lambda: optax.adamw(1e-3, weight_decay=0.1)),
  ],
)
def test_build_is_the_factory_with_the_names_settings(name, kwargs, direct):
  m = METHODS[name]
  got, want = _updates(m.build(m.default_lr, **kwargs), m.need), _updates(direct(), m.need)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, want)


def test_builder_injects_hyperparameters_as_the_factory_does():
  got = optax.inject_hyperparams(METHODS["adamw"].builder())(learning_rate=0.1, weight_decay=0.05)
  want = optax.inject_hyperparams(optax.adamw)(learning_rate=0.1, weight_decay=0.05)
  assert set(got.init(PARAMS).hyperparams) == set(want.init(PARAMS).hyperparams)
  jax.tree.map(np.testing.assert_array_equal, _updates(got, None), _updates(want, None))
  nesterov = optax.inject_hyperparams(METHODS["nesterov"].builder())(learning_rate=0.1)
  assert "momentum" not in nesterov.init(PARAMS).hyperparams  # a setting, not injected


def test_build_refuses_what_is_not_a_hyperparameter():
  with pytest.raises(ValueError, match="sp has no hyperparameter 'sparsty'"):
    METHODS["sp"].build(0.1, sparsty=0.2)
  with pytest.raises(ValueError, match="'method'"):
    METHODS["angulargrad_cos"].build(0.1, method="tan")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_description_names_every_signal_the_method_logs(name):
  m = METHODS[name]
  logged = _logged(m.build(m.default_lr))
  described = {s.removesuffix("/*") for d in m.diagnostics for s in d.signals}
  assert logged == described
  assert all(d.per_leaf == any(s.endswith("/*") for s in d.signals) for d in m.diagnostics)


def test_gal_in_front_of_an_optimizer():
  m = get("gal+momentum")
  assert (m.need, m.base, m.family, m.default_lr) == (steps.GalArgs(), "momentum", "GAL", 0.05)
  assert _logged(m.build(0.1, output_dim=3)) == {s for d in GAL_DIAGNOSTICS for s in d.signals}
  assert m.hyperparameters()["beta"] == 1.0  # optax_ext.gal_chain's default
  with pytest.raises(ValueError, match="gal\\+insgd_l2"):
    get("gal+insgd_l2")
  with pytest.raises(ValueError, match="unknown optimizer 'adamx'; known: sgd, momentum"):
    get("gal+adamx")


def test_every_method_of_a_paper_names_a_baseline_it_modifies():
  for m in METHODS.values():
    assert (m.base is None) == (m.family == "")
    assert m.base is None or not METHODS[m.base].family
    if isinstance(m.need, steps.InputPower):
      assert m.need.norm_order == m.settings["norm_order"]  # the capture's order is INSGD's
