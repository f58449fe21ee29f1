"""INSGD against SGD with momentum: a linen CNN on scikit-learn's digits.

INSGD divides each layer's gradient by the log of a running estimate of the power of
that layer's input (docs/design.md, INSGD). The power is recorded in the loss's own
forward pass by ``optax_ext.capture_input_power`` and handed to ``tx.update`` as
``input_power``; for a convolution the input vector of a unit is its 3x3 patch. The
script trains the same network from the same start with SGD + momentum and with INSGD
at a moderate and at a large learning rate, prints the test accuracy, and plots the
training loss and each layer's step scale ``1 / log P``.

Run: ``python examples/insgd_linen.py [figure.png]`` (a few seconds on a CPU).
"""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from sklearn.datasets import load_digits

import optax_ext

STEPS, BATCH = 300, 128


class CNN(nn.Module):
  """8x8x1 images -> conv 3x3 (8) -> conv 3x3 stride 2 (16) -> 10 classes."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def load():
  """The 8x8 digits scaled to [0, 1], split 1,500 / 297 after a fixed shuffle."""
  x, y = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(y))
  x, y = (x[order] / 16.0).astype(np.float32).reshape(-1, 8, 8, 1), y[order]
  return (x[:1500], y[:1500]), (x[1500:], y[1500:])


def train(tx, params, model, data, capture):
  """STEPS minibatch steps of ``tx``; with ``capture``, the input power goes to the update."""
  (x, y), rng = data, np.random.default_rng(1)

  def loss_fn(p, xb, yb):
    if capture:  # one forward pass gives the logits and every layer's input power
      logits, power = optax_ext.capture_input_power(model.apply, {"params": p}, xb)
    else:
      logits, power = model.apply({"params": p}, xb), None
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), power

  @jax.jit
  def step(p, state, xb, yb):
    (loss, power), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, xb, yb)
    extra = {"input_power": power} if capture else {}
    updates, state = tx.update(grads, state, p, **extra)
    return optax.apply_updates(p, updates), state, {"loss": loss, **optax_ext.diagnostics(state)}

  state, log = tx.init(params), []
  for _ in range(STEPS):
    batch = rng.choice(len(y), BATCH, replace=False)
    params, state, record = step(params, state, x[batch], y[batch])
    log.append(record)
  return params, jax.device_get(log)


def main(figure="insgd_linen.png"):
  train_data, (x_test, y_test) = load()
  model = CNN()
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  runs = {
    "sgd+momentum lr 0.05": (optax.sgd(0.05, momentum=0.9), False),
    "insgd lr 0.05": (optax_ext.insgd(0.05, momentum=0.9), True),
    "sgd+momentum lr 0.5": (optax.sgd(0.5, momentum=0.9), False),
    "insgd lr 0.5": (optax_ext.insgd(0.5, momentum=0.9), True),
  }
  logs = {}
  print(f"{'optimizer':<22} {'final loss':>10} {'test acc':>9}")
  for name, (tx, capture) in runs.items():
    final, logs[name] = train(tx, params, model, train_data, capture)
    accuracy = float(jnp.mean(jnp.argmax(model.apply({"params": final}, x_test), -1) == y_test))
    print(f"{name:<22} {logs[name][-1]['loss']:>10.4f} {accuracy:>9.3f}")
  last = logs["insgd lr 0.05"][-1]
  for key in sorted(k for k in last if k.startswith("insgd/step_scale/") and "kernel" in k):
    print(f"{key}: {last[key]:.3f} at the last step (lr 0.05)")

  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
  for name, log in logs.items():
    losses = np.array([r["loss"] for r in log])
    left.plot(np.convolve(losses, np.ones(10) / 10, mode="valid"), label=name)
  left.set(xlabel="step", ylabel="training loss (mean of 10 steps)", yscale="log")
  left.legend(fontsize="small")
  for key in sorted(k for k in last if k.startswith("insgd/step_scale/") and "kernel" in k):
    layer = key.split("/")[2]
    right.plot([r[key] for r in logs["insgd lr 0.05"]], label=layer)
  right.set(xlabel="step", ylabel="1 / log P", title="INSGD's step scale per layer (lr 0.05)")
  right.legend()
  fig.suptitle("Digits, linen CNN: INSGD and SGD with momentum 0.9")
  fig.savefig(figure, dpi=120)
  print(f"figure: {figure}")


if __name__ == "__main__":
  main(*sys.argv[1:])
