"""The transformer LM (flax_models.transformer) and its train step in linen and NNX.

A tiny LM throughout (1 block, width 32, 2 heads, context 16) and a few steps.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_models import get_model, get_nnx_model, linen_params, load_linen_params
from flax_models.transformer import TransformerLM, TransformerLMNNX, sinusoidal_positions
from train import cli, registry
from train import data as data_lib
from train.checkpoint import Checkpointer
from train.loop import init_state, make_eval_step, make_train_step, train_run

pytestmark = pytest.mark.usefixtures("fast_compile")

TINY = dict(width=32, depth=1, heads=2, context=16)


@pytest.fixture(scope="module")
def corpus():
  return data_lib.load_dataset("text", context=16).subset(64, 16)


def _pair(positions="learned", depth=1):
  """A linen LM, its parameters, and the NNX LM holding the same weights."""
  cfg = dict(TINY, depth=depth, positions=positions)
  linen = TransformerLM(**cfg)
  x = jnp.zeros((1, 16), jnp.int32)
  params = linen.init(jax.random.key(0), x)["params"]
  model = load_linen_params(TransformerLMNNX(**cfg, rngs=nnx.Rngs(3)), params)
  return linen, params, model


# --------------------------------------------------------------------------- model


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_linen_and_nnx_outputs_are_equal_for_the_same_weights(positions):
  linen, params, model = _pair(positions, depth=2)
  x = jax.random.randint(jax.random.key(1), (3, 16), 0, 256)
  a = linen.apply({"params": params}, x)
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(a), atol=2e-5)
  same = jax.tree.map(np.array_equal, linen_params(model), params)
  assert all(jax.tree.leaves(same))


def test_attention_is_causal():
  """Changing byte t changes no logit before t, and does change the logit at t."""
  linen, params, _ = _pair()
  x = jax.random.randint(jax.random.key(1), (1, 16), 0, 256)
  y = x.at[0, 9].set((x[0, 9] + 1) % 256)
  a, b = (np.asarray(linen.apply({"params": params}, v)) for v in (x, y))
  np.testing.assert_array_equal(a[0, :9], b[0, :9])
  assert np.abs(a[0, 9] - b[0, 9]).max() > 1e-4


def test_sinusoidal_positions_by_hand():
  t = sinusoidal_positions(3, 4)
  for p in range(3):
    want = [math.sin(p), math.cos(p), math.sin(p / 100.0), math.cos(p / 100.0)]
    np.testing.assert_allclose(t[p], want, rtol=1e-6)


def test_model_checks_its_input_and_config():
  with pytest.raises(ValueError, match="divide width"):
    TransformerLM(width=30, heads=4)
  linen, params, _ = _pair()
  with pytest.raises(ValueError, match="context=16"):
    linen.apply({"params": params}, jnp.zeros((1, 17), jnp.int32))
  with pytest.raises(ValueError, match="no Flax NNX version"):
    get_nnx_model("resnet20", 10)


# --------------------------------------------------------------------------- steps


def _opt(name):
  return registry.make_optimizer(name, registry.make_schedule("constant", 4, 8), output_dim=256)


@pytest.mark.parametrize("name", ["momentum", "insgd_l2", "gal+sgd"])
def test_linen_and_nnx_train_steps_agree(corpus, name):
  """Three steps from the same weights: the same losses and parameters in both APIs.

  Optimizers whose update is linear in the gradient: Adam's first steps are
  ``lr·sign(g)``, which turns float noise in a gradient that is zero in exact
  arithmetic (the attention key bias) into a full step of either sign.
  """
  linen, params, model = _pair()
  x, y = corpus.x_train[:8], corpus.y_train[:8]
  results = []
  for m in (linen, model):
    opt = _opt(name)
    state = init_state(m, opt.tx, x[:1], 0)
    state = state.replace(params=jax.tree.map(jnp.copy, params))
    step = make_train_step(m, opt, "language")
    losses = []
    for _ in range(3):
      state, metrics = step(state, x, y)
      losses.append(float(metrics["loss"]))
    results.append((losses, state.params))
  np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(results[0][1]), jax.tree.leaves(results[1][1])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_evaluation_against_numpy(corpus):
  """Bits per byte and next-byte accuracy from the model's own logits, by NumPy."""
  linen, params, _ = _pair()
  state = init_state(linen, _opt("adamw").tx, corpus.x_train[:1], 0).replace(params=params)
  from train.loop import evaluate

  got = evaluate(make_eval_step(linen, "language"), state, corpus, 6)  # 16 rows: padded last
  z = np.asarray(linen.apply({"params": params}, corpus.x_test), np.float64)
  top = z.max(-1, keepdims=True)
  logp = z - top - np.log(np.exp(z - top).sum(-1, keepdims=True))
  nll = -np.take_along_axis(logp, corpus.y_test[..., None], -1).mean()
  assert got["test_bits_per_byte"] == pytest.approx(nll / math.log(2), rel=1e-5)
  assert got["test_accuracy"] == pytest.approx(np.mean(z.argmax(-1) == corpus.y_test))


def test_nnx_resume_is_bit_identical(corpus, tmp_path):
  def run(epochs, ck=None):
    model = get_nnx_model("transformer_lm", 256, seed=0, **TINY)
    return train_run(
      model,
      _opt("insgd_l2"),
      corpus,
      epochs=epochs,
      batch_size=16,
      seed=1,
      checkpointer=ck,
      progress=False,
    )

  full = run(2)
  run(1, Checkpointer(str(tmp_path / "ck"), every=2))
  resumed = run(2, Checkpointer(str(tmp_path / "ck"), every=2))
  for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [h["step"] for h in resumed.history] == [4, 8]


def test_cli_trains_the_lm(tmp_path, capsys):
  argv = ["--model", "transformer_lm", "--dataset", "text", "--optimizers", "adamw", "sp"]
  argv += ["--epochs", "1", "--train-size", "32", "--test-size", "8", "--batch-size", "8"]
  argv += ["--context", "16", "--width", "32", "--depth", "1", "--heads", "2"]
  argv += ["--out", str(tmp_path), "--no-progress", "--api", "nnx"]
  assert cli.main(argv) == 0
  out = capsys.readouterr().out
  assert "test bits/byte" in out and "plot:" in out
  rows = json.load(open(tmp_path / "results.json"))["results"]
  assert [r["optimizer"] for r in rows] == ["adamw", "sp"]
  for r in rows:
    assert r["test_bits_per_byte"] == pytest.approx(r["test_loss"] / math.log(2))
  assert cli.main(argv + ["--resume"]) == 0
  assert cli.main(["--model", "mlp"] + argv[2:]) == 2
  assert "transformer_lm takes the text" in capsys.readouterr().err


def test_get_nnx_model_starts_from_the_linen_initialisation():
  x = jnp.zeros((1, 16), jnp.int32)
  params = get_model("transformer_lm", 256, **TINY).init(jax.random.key(5), x)["params"]
  model = get_nnx_model("transformer_lm", 256, seed=5, **TINY)
  same = jax.tree.map(np.array_equal, linen_params(model), params)
  assert all(jax.tree.leaves(same))
  other = get_nnx_model("transformer_lm", 256, params=params, seed=6, **TINY)
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, linen_params(other), params)))


@pytest.mark.parametrize("optimizer", ["adamw"])
def test_cli_nnx_is_the_linen_run(tmp_path, capsys, optimizer):
  """``--api nnx`` and linen, same seed: the same step losses and final metrics.

  AdamW too: its first steps move the attention key bias by ``±lr`` along the sign of
  float noise (the bias's exact gradient is zero), which may differ between the APIs,
  but that bias cannot change the outputs (softmax is invariant to it).
  """
  argv = ["--model", "transformer_lm", "--dataset", "text", "--optimizers", optimizer]
  argv += ["--epochs", "2", "--train-size", "32", "--test-size", "8", "--batch-size", "8"]
  argv += ["--context", "16", "--width", "32", "--depth", "1", "--heads", "2", "--seed", "3"]
  argv += ["--no-progress", "--log-every", "1"]
  runs = {}
  for api in ("linen", "nnx"):
    out = tmp_path / api
    assert cli.main(argv + ["--api", api, "--out", str(out)]) == 0
    steps = [json.loads(line) for line in open(out / optimizer / "steps.jsonl")]
    final = json.load(open(out / "results.json"))["results"][0]
    runs[api] = ([r["train/loss"] for r in steps if "train/loss" in r], final)
  (losses, final), (nnx_losses, nnx_final) = runs["linen"], runs["nnx"]
  assert len(losses) == 8 and abs(losses[0] - losses[-1]) > 1e-2  # steps that move
  np.testing.assert_allclose(nnx_losses, losses, rtol=2e-5)
  for key in ("test_loss", "test_bits_per_byte", "test_accuracy", "train_loss"):
    assert nnx_final[key] == pytest.approx(final[key], rel=2e-5), key
  capsys.readouterr()


def test_get_model_builds_the_lm():
  model = get_model("transformer_lm", 256, **TINY)
  assert model.vocab_size == 256 and model.context == 16


def test_gal_on_language_uses_the_classification_regressor():
  """GAL's default regressor for next-byte logits: 256 → 100 → 32 → 16 → 256."""
  opt = registry.make_optimizer(
    "gal+adamw", registry.make_schedule("constant", 1, 1), output_dim=256, task="language"
  )
  state = opt.tx.init({"w": jnp.zeros(3)})
  shapes = [p["kernel"].shape for p in state[0].regressor_params.values()]
  assert shapes == [(256, 100), (100, 32), (32, 16), (16, 256)]
