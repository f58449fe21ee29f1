"""SP against SGD: an NNX MLP on scikit-learn's digits.

SP damps the gradient with a diagonal quasi-Newton estimate and then prunes the least
salient entries of every kernel, a fraction ``sparsity`` of them at each step
(docs/design.md, SP). It reads ``params``, which ``nnx.Optimizer.update`` passes to the
transformation. The script trains the same network from the same start with SGD and
with SP, prints the test accuracy and the fraction of each kernel that ends at zero,
and plots the training loss and what SP's diagnostics report at each step.

Run: ``python examples/sp_nnx.py [figure.png]`` (a few seconds on a CPU).
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
from sklearn.datasets import load_digits

import optax_ext

STEPS, BATCH, LEARNING_RATE = 300, 128, 0.1


class MLP(nnx.Module):
  """64 pixels -> 64 hidden units -> 10 classes."""

  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 64, rngs=rngs)
    self.out = nnx.Linear(64, 10, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def load():
  """The 8x8 digits scaled to [0, 1], split 1,500 / 297 after a fixed shuffle."""
  x, y = load_digits(return_X_y=True)
  order = np.random.default_rng(0).permutation(len(y))
  x, y = (x[order] / 16.0).astype(np.float32), y[order]
  return (x[:1500], y[:1500]), (x[1500:], y[1500:])


@nnx.jit
def train_step(model, optimizer, x, y):
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)  # hands the parameters to SP
  # What SP did on this step, read from its state inside the jitted step.
  return {"loss": loss, **optax_ext.diagnostics(optimizer.opt_state)}


def train(tx, data):
  """STEPS minibatch steps from the same initial network; the model and what was logged."""
  (x, y), rng = data, np.random.default_rng(1)
  model = MLP(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  log = []
  for _ in range(STEPS):
    batch = rng.choice(len(y), BATCH, replace=False)
    log.append(train_step(model, optimizer, x[batch], y[batch]))
  return model, jax.device_get(log)


def main(figure="sp_nnx.png"):
  train_data, (x_test, y_test) = load()
  runs = {
    "sgd": optax.sgd(LEARNING_RATE),
    "sp (sparsity 0.1)": optax_ext.sp(LEARNING_RATE, sparsity=0.1),
  }
  logs = {}
  print(f"{'optimizer':<18} {'final loss':>10} {'test acc':>9}   zero entries per kernel")
  for name, tx in runs.items():
    model, logs[name] = train(tx, train_data)
    accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
    kernels = {"hidden": model.hidden.kernel[...], "out": model.out.kernel[...]}
    zeros = "  ".join(f"{k} {float(jnp.mean(v == 0)):.3f}" for k, v in kernels.items())
    print(f"{name:<18} {logs[name][-1]['loss']:>10.4f} {accuracy:>9.3f}   {zeros}")

  sp_log = logs["sp (sparsity 0.1)"]
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
  for name, log in logs.items():
    losses = [r["loss"] for r in log]
    left.plot(np.convolve(losses, np.ones(10) / 10, mode="valid"), label=name)
  left.set(xlabel="step", ylabel="training loss (mean of 10 steps)", yscale="log")
  left.legend()
  right.plot([r["sp/pruned_total"] for r in sp_log], label="fraction pruned (all kernels)")
  right.plot([r["sp/scalar_fraction"] for r in sp_log], label="leaves in the scalar damping case")
  right.set(xlabel="step", ylim=(0, 1.05), title="SP's diagnostics")
  right.legend()
  fig.suptitle(f"Digits, NNX MLP: SP and SGD at learning rate {LEARNING_RATE}")
  fig.savefig(figure, dpi=120)
  print(f"figure: {figure}")


if __name__ == "__main__":
  main(*sys.argv[1:])
