"""GAL in front of Adam: an NNX MLP on scikit-learn's diabetes data.

GAL learns, with a small regressor, an adjustment of the gradient at the model's
output that shrinks the first-order Taylor remainder of a tentative step, and uses the
adjusted gradient only when that step does not raise the loss (docs/design.md, GAL).
It takes the outputs, the loss and the pullback instead of the gradient:
``optax_ext.gal_extra_args`` runs the forward pass, and ``nnx.Optimizer.update`` hands
them on with no gradient, as GAL back-propagates once itself. The script trains the
same network from the same start with Adam and with GAL + Adam (the paper's Table V
setting: alpha = beta = 0.001), prints the test error, and plots the training loss and
GAL's remainder.

Run: ``python examples/gal_nnx.py [figure.png]`` (a few seconds on a CPU).
"""

import sys

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_diabetes

import optax_ext

STEPS, BATCH, LEARNING_RATE = 300, 64, 1e-3


class MLP(nnx.Module):
  """10 features -> 64 -> 32 -> 1, the target standardised."""

  def __init__(self, rngs: nnx.Rngs):
    self.layers = nnx.List([nnx.Linear(10, 64, rngs=rngs), nnx.Linear(64, 32, rngs=rngs)])
    self.out = nnx.Linear(32, 1, rngs=rngs)

  def __call__(self, x):
    for layer in self.layers:
      x = nnx.relu(layer(x))
    return self.out(x)


def load():
  """Features and target standardised with the training split's statistics, 350 / 92."""
  x, y = load_diabetes(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(y))
  x, y = x[order].astype(np.float32), y[order].astype(np.float32)[:, None]
  mean, std = x[:350].mean(0), x[:350].std(0)
  y_mean, y_std = y[:350].mean(), y[:350].std()
  x, y = (x - mean) / std, (y - y_mean) / y_std
  return (x[:350], y[:350]), (x[350:], y[350:])


def mse(outputs, targets):
  return jnp.mean((outputs - targets) ** 2)


@nnx.jit
def adam_step(model, optimizer, x, y):
  loss, grads = nnx.value_and_grad(lambda m: mse(m(x), y))(model)
  optimizer.update(model, grads)
  return {"loss": loss}


@nnx.jit
def gal_step(model, optimizer, x, y):
  # One forward pass: the outputs, the loss of the outputs and the pullback, for GAL.
  extra = optax_ext.gal_extra_args(lambda m: m(x), model, lambda z: mse(z, y))
  optimizer.update(model, None, **extra)  # no gradient: GAL back-propagates once
  return {"loss": extra["loss_fn"](extra["outputs"]), **optax_ext.diagnostics(optimizer.opt_state)}


def train(tx, step, data):
  """STEPS minibatch steps from the same initial network; the model and what was logged."""
  (x, y), rng = data, np.random.default_rng(1)
  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  log = []
  for _ in range(STEPS):
    batch = rng.choice(len(y), BATCH, replace=False)
    log.append(step(model, optimizer, x[batch], y[batch]))
  return model, jax.device_get(log)


def main(figure="gal_nnx.png"):
  train_data, (x_test, y_test) = load()
  runs = {
    "adam": (optax.adam(LEARNING_RATE), adam_step),
    "gal + adam": (
      optax_ext.gal_chain(optax.adam, LEARNING_RATE, output_dim=1, alpha=1e-3, beta=1e-3),
      gal_step,
    ),
  }
  logs = {}
  print(f"{'optimizer':<12} {'final loss':>10} {'test mse':>9}   (standardised target)")
  for name, (tx, step) in runs.items():
    model, logs[name] = train(tx, step, train_data)
    print(f"{name:<12} {logs[name][-1]['loss']:>10.4f} {float(mse(model(x_test), y_test)):>9.4f}")
  gal_log = logs["gal + adam"]
  used = np.mean([r["gal/used_adjusted"] for r in gal_log])
  print(f"gal used its adjusted gradient on {used:.0%} of the steps")

  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
  for name, log in logs.items():
    losses = np.array([r["loss"] for r in log])
    left.plot(np.convolve(losses, np.ones(10) / 10, mode="valid"), label=name)
  left.set(xlabel="step", ylabel="training MSE (mean of 10 steps)", yscale="log")
  left.legend()
  right.plot([r["gal/remainder"] for r in gal_log], lw=0.8)
  right.set(xlabel="step", ylabel="|r|", yscale="log", title="GAL's Taylor remainder")
  fig.suptitle(f"Diabetes, NNX MLP: GAL + Adam and Adam at learning rate {LEARNING_RATE}")
  fig.savefig(figure, dpi=120)
  print(f"figure: {figure}")


if __name__ == "__main__":
  main(*sys.argv[1:])
