"""Every optimizer gives the same training run sharded as on one device, and no
update gathers a parameter-sized array (8 simulated CPU devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from bench import trees
from bench.update_speed import TRAFFIC, candidates
from tests.test_train import TinyCNN, _opt
from train import data as data_lib
from train import registry, sharding
from train.loop import train_run

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


@pytest.mark.parametrize("name", sorted(registry.REGISTRY) + ["gal+sgd"])
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
  for a, b in zip(jax.tree.leaves(one.state.params), jax.tree.leaves(many.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
  assert abs(one.final["train_loss"] - many.final["train_loss"]) < 1e-4


@pytest.mark.parametrize("name", list(TRAFFIC))
def test_no_update_gathers_a_parameter(name):
  mesh = sharding.make_mesh({"data": 1, "fsdp": 8})
  params = trees.named_tree("mnist_cnn")
  tx, extra = candidates(params)[name]
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
