"""Every optimizer gives the same training run sharded as on one device, and no
update gathers a parameter-sized array (8 simulated CPU devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import optax_ext
from tests.test_train import TinyCNN, _opt
from train import data as data_lib
from train import methods, sharding, steps
from train.loop import init_state, train_run

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 (simulated) devices")


@pytest.fixture(scope="module")
def digits():
  return data_lib.load_digits(seed=0).subset(192, 64)


def test_parse_mesh_and_rule():
  assert sharding.parse_mesh("data=2,fsdp=4") == {"data": 2, "fsdp": 4}
  with pytest.raises(Exception, match="bad --mesh"):
    sharding.parse_mesh("model=2")
  # The largest dimension divisible by the fsdp size is split; small leaves are replicated.
  assert sharding.leaf_spec((3, 3, 64, 128), 4) == jax.sharding.PartitionSpec(
    None, None, None, "fsdp"
  )
  assert sharding.leaf_spec((10,), 4) == jax.sharding.PartitionSpec()
  assert sharding.leaf_spec((1001, 99), 4, min_shard_size=1) == jax.sharding.PartitionSpec()


# optax's own baselines and the variants that share most of another method's program
# (tan with cos, l1 with l2, SP+Nesterov and exact SP with SP) run in the slow tier
# (make test-all).
_SHARED = {
  "adam",
  "adamw",
  "momentum",
  "nesterov",
  "angulargrad_tan",
  "insgd_l1",
  "sp_nesterov",
  "sp_exact",
}


def _tiered(names):
  return [pytest.param(n, marks=pytest.mark.slow) if n in _SHARED else n for n in names]


@pytest.mark.parametrize("name", _tiered(sorted(methods.METHODS) + ["gal+sgd"]))
def test_sharded_training_matches_one_device(digits, name):
  # No BatchNorm here: a conv bias in front of BatchNorm has an exactly-zero gradient,
  # whose rounding noise (which differs with the reduction order) Adam-like methods
  # amplify to full-size steps; the BatchNorm path is checked below with SGD.
  _check_sharded(digits, name, TinyCNN(use_bn=False))


def test_sharded_training_with_batchnorm(digits):
  _check_sharded(digits, "momentum", TinyCNN(use_bn=True))


def _check_sharded(digits, name, model):
  mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
  kw = dict(epochs=1, batch_size=64, seed=0, progress=False)
  one = train_run(model, _opt(name), digits, **kw)
  many = train_run(model, _opt(name), digits, mesh=mesh, **kw)
  start = init_state(model, _opt(name).tx, digits.x_train[:1], 0).params
  moved = 0.0
  for a, b, a0 in zip(
    jax.tree.leaves(one.state.params), jax.tree.leaves(many.state.params), jax.tree.leaves(start)
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
    moved = max(moved, float(np.max(np.abs(np.asarray(a) - np.asarray(a0)))))
  # The agreement means something only if training moved the parameters by well more
  # than the tolerance (Adam-like methods move each entry by about lr = 1e-3 per step).
  assert moved > 10 * 2e-5, (name, moved)
  assert abs(one.final["train_loss"] - many.final["train_loss"]) < 1e-4


# The leaf shapes of the SP paper's MNIST CNN (two convolutions, two dense layers).
_MNIST_CNN_SHAPES = [(3, 3, 1, 32), (32,), (3, 3, 32, 64), (64,), (9216, 128), (128,), (128, 10),
                     (10,)]  # fmt: skip


def _mnist_cnn_tree():
  keys = jax.random.split(jax.random.key(0), len(_MNIST_CNN_SHAPES))
  return {
    f"p{i}": 0.05 * jax.random.normal(k, s) for i, (k, s) in enumerate(zip(keys, _MNIST_CNN_SHAPES))
  }


def _candidates(params):
  """Every method's update with the extra arguments it takes, and SP's exact quantile."""
  power = jax.tree.map(lambda p: jnp.asarray(4.0) if p.ndim >= 2 else None, params)
  out = {}
  for name, m in methods.METHODS.items():
    needs_power = isinstance(m.need, steps.InputPower)
    extra = {"input_power": optax_ext.InputPower(power, m.need.norm_order)} if needs_power else {}
    out[name] = (m.build(m.default_lr), extra)
  out["sp_exact"] = (methods.METHODS["sp"].build(0.1, quantile="exact"), {})
  return out


def test_gather_detection_sees_a_gathered_parameter():
  # The check below is only as good as all_gather_sizes: it must see a gather of a
  # sharded parameter when the program asks for one.
  mesh = sharding.make_mesh({"data": 1, "fsdp": 8})
  params = _mnist_cnn_tree()
  p_sh = sharding.state_shardings(mesh, params, min_shard_size=1024)
  params = jax.device_put(params, p_sh)
  replicated = NamedSharding(mesh, PartitionSpec())
  gather = jax.jit(lambda p: p["p4"] * 2.0, out_shardings=replicated)
  sizes = sharding.all_gather_sizes(gather.lower(params).compile().as_text())
  assert 9216 * 128 in sizes, sizes


@pytest.mark.parametrize("name", _tiered(sorted(methods.METHODS) + ["sp_exact"]))
def test_no_update_gathers_a_parameter(name):
  mesh = sharding.make_mesh({"data": 1, "fsdp": 8})
  params = _mnist_cnn_tree()
  tx, extra = _candidates(params)[name]
  p_sh = sharding.state_shardings(mesh, params, min_shard_size=1024)
  params = jax.device_put(params, p_sh)
  grads = jax.tree.map(lambda p: p * 0.1, params)
  state = tx.init(params)
  s_sh = sharding.state_shardings(mesh, state, min_shard_size=1024)
  state = jax.device_put(state, s_sh)
  assert any(
    isinstance(s, NamedSharding) and s.spec != jax.sharding.PartitionSpec()
    for s in jax.tree.leaves(p_sh)
  )
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra), out_shardings=(p_sh, s_sh))
  hlo = step.lower(grads, state, params).compile().as_text()
  big = [n for n in sharding.all_gather_sizes(hlo) if n >= 1024]
  assert not big, f"{name} all-gathers arrays of {big} elements"
