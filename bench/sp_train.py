"""SP paper, MNIST setting on Fashion-MNIST, and what the damping bound does.

Paper (Table I, Fig. 4): its CNN (2 conv + 2 dense), batch 128, StepLR γ = 0.7
per epoch, 15 epochs, on MNIST; reported test accuracy SP 99.1%, SP+Nesterov
99.2%. Here on Fashion-MNIST (Debian's ``dataset-fashion-mnist``), reduced to
fit a 2-core CPU, where one step of this CNN at batch 128 takes about a second:
a training subset, a few epochs, 2-3 seeds; SGD, SP, SGD+Nesterov, SP+Nesterov
(momentum 0.9) and Adam. The full protocol is one command for a GPU user:
``python -m bench.sp_train --train-size 60000 --epochs 15 --seeds 3``.

The stability part trains SP (lr 0.05, sparsity 0.1) with the default bound
``b_max`` and with no bound (``b_max=1e30``) from the same start, and plots the
loss and the fraction of kernel weights at zero.

Run: ``python -m bench.sp_train [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_ext
from bench.paper_runs import compare, mean_std, optimizer
from flax_models import get_model
from train import data as data_lib
from train.loop import init_state, make_train_step

RESULTS = os.path.join(os.path.dirname(__file__), "results")
PAPER_MNIST = {"sp": "99.1", "sp_nesterov": "99.2"}


def builders(gamma=0.7):
  def sched(lr, spe):
    return optax.exponential_decay(lr, spe, gamma, staircase=True)

  return {
    "sgd": lambda spe: optimizer("sgd", optax.sgd(sched(0.05, spe)), 0.05),
    "sp": lambda spe: optimizer("sp", optax_ext.sp(sched(0.05, spe), sparsity=0.1), 0.05),
    "sgd_nesterov": lambda spe: optimizer(
      "sgd_nesterov", optax.sgd(sched(0.01, spe), momentum=0.9, nesterov=True), 0.01
    ),
    "sp_nesterov": lambda spe: optimizer(
      "sp_nesterov", optax_ext.sp(sched(0.01, spe), sparsity=0.1, momentum=0.9, nesterov=True), 0.01
    ),
    "adam": lambda spe: optimizer("adam", optax.adam(sched(1e-3, spe)), 1e-3),
  }


def kernel_sparsity(params) -> float:
  """Fraction of all kernel weights (leaves with ``ndim >= 2``) that are exactly zero."""
  leaves = [x for x in jax.tree.leaves(params) if x.ndim >= 2]
  return float(sum(jnp.sum(x == 0) for x in leaves) / sum(x.size for x in leaves))


def units_cut_off(params) -> float:
  """Fraction of the hidden dense layer's units whose every incoming weight is zero.

  Such a unit outputs relu(bias) for every input; with a non-positive bias it is
  dead, its incoming weights get zero gradient, and the proximal step keeps them
  at zero: the L0 step has removed the unit, not only single weights.
  """
  kernel = params["Dense_0"]["kernel"]
  return float(jnp.mean(jnp.all(kernel == 0, axis=0)))


def stability(ds, steps, b_maxes):
  """Loss and kernel sparsity per step of SP with each bound, same init and data."""
  model = get_model("mnist_cnn", 10)
  out = {}
  for b_max in b_maxes:
    opt = optimizer(f"sp b_max={b_max:g}", optax_ext.sp(0.05, sparsity=0.1, b_max=b_max), 0.05)
    state = init_state(model, opt.tx, ds.x_train[:1], 0)
    step = make_train_step(model, opt, "classification")
    losses, zeros, units = [], [], []
    batches = data_lib.batches(ds.x_train, ds.y_train, 128, 0)
    for _ in range(steps):
      _, xb, yb = next(batches)
      state, m = step(state, xb, yb)
      losses.append(float(m["loss"]))
      zeros.append(kernel_sparsity(state.params))
      units.append(units_cut_off(state.params))
    out[b_max] = (losses, zeros, units)
  return out


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--train-size", type=int, default=None)
  ap.add_argument("--epochs", type=int, default=None)
  ap.add_argument("--seeds", type=int, default=None)
  ap.add_argument("--stability-steps", type=int, default=None)
  args = ap.parse_args(argv)
  train_size = args.train_size or (1536 if args.quick else 3072)
  epochs = args.epochs or 2
  seeds = range(args.seeds or 2)
  n_stab = args.stability_steps or (30 if args.quick else 60)
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ds = data_lib.load_dataset("fashion_mnist", args.data_dir).subset(train_size, 2000)
  stab = stability(ds, n_stab, [optax_ext.spectral_proximal.DEFAULT_B_MAX, 1e30])
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for b_max, (losses, zeros, units) in stab.items():
    label = "no bound (b_max=1e30)" if b_max > 1e20 else f"b_max={b_max:g} (default)"
    axes[0].plot(losses, label=label)
    axes[1].plot(zeros, label=label)
    axes[2].plot(units, label=label)
  axes[0].set_yscale("log")
  axes[0].set_title("SP, lr 0.05, sparsity 0.1: training loss per step")
  axes[1].set_title("fraction of kernel weights at zero")
  axes[2].set_title("hidden units with every incoming weight zero")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(RESULTS, "sp_bound.png"), dpi=100)
  plt.close(fig)

  runs = compare(
    "mnist_cnn",
    ds,
    builders(),
    seeds,
    epochs,
    128,
    metric_fns={
      "kernel_sparsity": lambda r: kernel_sparsity(r.state.params),
      "units_cut_off": lambda r: units_cut_off(r.state.params),
    },
  )
  tag = "quick" if args.quick else "full"
  with open(os.path.join(RESULTS, f"sp_train_{tag}.json"), "w") as f:
    json.dump(
      {"runs": runs, "stability": {str(k): v for k, v in stab.items()}}, f, indent=1, default=float
    )
  lines = [
    "## Training check: the paper's MNIST setting on Fashion-MNIST",
    "",
    f"Command: `python -m bench.sp_train{' --quick' if args.quick else ''}`. Reduced: "
    f"{train_size} training and 2,000 test images of Fashion-MNIST (the paper: all of "
    f"MNIST), {epochs} epochs (paper: 15), {len(list(seeds))} seeds; as the paper: its CNN, "
    "batch 128, per-epoch decay γ = 0.7. Learning rates: 0.05 (SGD, SP), 0.01 with Nesterov "
    "momentum 0.9, 1e-3 (Adam); sparsity 0.1.",
    "",
    "| optimizer | test accuracy (%) | kernel weights at zero | hidden units cut off "
    "| paper, MNIST (%) |",
    "|---|---|---|---|---|",
  ]
  for name, rows in runs.items():
    m, s = mean_std(rows, "test_accuracy")
    z, _ = mean_std(rows, "kernel_sparsity")
    u, _ = mean_std(rows, "units_cut_off")
    lines.append(
      f"| {name} | {100 * m:.2f} ± {100 * s:.2f} | {100 * z:.1f}% | {100 * u:.1f}% "
      f"| {PAPER_MNIST.get(name, '-')} |"
    )
  (l_b, z_b, u_b), (l_u, z_u, u_u) = stab.values()
  lines += [
    "",
    "## What the damping bound does",
    "",
    f"SP at lr 0.05, sparsity 0.1, {n_stab} steps from the same start: with the default "
    f"bound b_max = {optax_ext.spectral_proximal.DEFAULT_B_MAX:g} the loss goes "
    f"{l_b[0]:.3f} → {l_b[-1]:.3g} (max {np.nanmax(l_b):.3g}) with {100 * z_b[-1]:.1f}% of "
    f"kernel weights at zero; without a bound it goes {l_u[0]:.3f} → {l_u[-1]:.3g} (max "
    f"{np.nanmax(l_u):.3g}) with {100 * z_u[-1]:.1f}% at zero.",
    "",
    "![bound](sp_bound.png)",
    "",
    "## Why more weights are zero than the sparsity asks for",
    "",
    "The saliency is S = B·u²/2·c²/2 (SPEC §2, the paper's Eq. 24-28), so a weight whose "
    "step u is zero has S = 0 and is pruned whatever its size; when more than 10% of a "
    "leaf has S = 0 the 10% quantile is 0 and all of them go (prune where S ≤ Q_p). A "
    "hidden unit that no example of the batch activates gets zero gradient on every "
    "incoming weight, so one step removes the whole unit; its output is then relu(bias) "
    "with the small, mostly negative biases these units have, it stays dead and its "
    "weights stay at zero. With the "
    f"default bound {100 * u_b[-1]:.0f}% of the 128 hidden units of the first dense "
    f"layer had every incoming weight at zero after {n_stab} steps (the column 'hidden "
    "units cut off' above for the full runs); the convolution kernels, whose weights "
    "always see some input, stay at about 10%. Momentum keeps u away from zero, which is "
    "why SP+Nesterov stays near the requested sparsity. The paper reports accuracy, not "
    "sparsity, so there is nothing to compare; a user who wants to know the sparsity "
    "should read it off the parameters, not the `sparsity` argument.",
  ]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(RESULTS, f"sp_train_{tag}.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
