"""GAL's train-step cost: GAL in front of SGD against the plain SGD step, in one run.

Three jitted train steps per model, each forward + backward + update +
``apply_updates`` with the training state donated, timed interleaved by
:func:`bench.timing.time_calls`:

- ``sgd``: ``jax.value_and_grad`` of the loss, then ``optax.sgd``;
- ``sgd (vjp)``: the same SGD step with the gradient taken as GAL's path takes
  it (``jax.vjp`` of the model, the loss differentiated at the outputs), to
  separate GAL's own cost from how the backward pass is written;
- ``gal+sgd``: the recommended path, ``gal_extra_args`` (one forward through
  ``jax.vjp``) and ``tx.update(None, ...)`` (one backward pass with GAL's
  chosen output cotangent);
- ``gal+sgd (vanilla grads)``: the model's gradient is computed first and
  handed to GAL, which adds ``VJP(ṽ)`` when it uses the adjusted gradient: a
  second backward pass whenever the adjustment is taken.

Models: the SP paper's MNIST CNN (28×28×1, dropout) and the CIFAR ResNet-20
(32×32×3, BatchNorm statistics updated in the step), random data, 10 classes,
GAL's regressor (100, 32, 16) with α = 0.001, β = 1 (the paper's CIFAR-10 SGD
setting). The paper reports 2-3% extra time per image (its Table VII).

Run: ``python -m bench.gal_speed [--quick]``.
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
from bench import timing
from flax_models import MnistCNN, ResNet20

RESULTS = os.path.join(os.path.dirname(__file__), "results")
SETTINGS = {
  "mnist_cnn": (lambda: MnistCNN(num_classes=10), (28, 28, 1)),
  "resnet20": (lambda: ResNet20(num_classes=10), (32, 32, 3)),
}
LR = 0.05


def _steps(model, x, y):
  """The three jitted steps and their initial states, for one model and batch."""
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x[:1])
  params, batch_stats = variables["params"], variables.get("batch_stats", {})

  def loss_of(z):
    return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

  def forward(p, bs, key):
    """Model outputs and updated BatchNorm statistics."""
    vs = {"params": p, **({"batch_stats": bs} if bs else {})}
    kw = {"rngs": {"dropout": key}}
    if bs:
      z, mutated = model.apply(vs, x, train=True, mutable=["batch_stats"], **kw)
      return z, mutated["batch_stats"]
    return model.apply(vs, x, train=True, **kw), bs

  sgd = optax.sgd(LR)
  gal_tx = optax.chain(optax_ext.gal(10, alpha=1e-3, beta=1.0, learning_rate=LR), optax.sgd(LR))

  def sgd_step(state):
    p, bs, opt, step = state
    key = jax.random.fold_in(jax.random.key(2), step)

    def loss_fn(p):
      z, new_bs = forward(p, bs, key)
      return loss_of(z), new_bs

    (loss, new_bs), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
    u, opt = sgd.update(grads, opt, p)
    return (optax.apply_updates(p, u), new_bs, opt, step + 1), loss

  def sgd_vjp_step(state):
    p, bs, opt, step = state
    key = jax.random.fold_in(jax.random.key(2), step)
    z, vjp, new_bs = jax.vjp(lambda q: forward(q, bs, key), p, has_aux=True)
    (grads,) = vjp(jax.grad(loss_of)(z))
    u, opt = sgd.update(grads, opt, p)
    return (optax.apply_updates(p, u), new_bs, opt, step + 1), loss_of(z)

  def gal_step(state, vanilla):
    p, bs, opt, step = state
    key = jax.random.fold_in(jax.random.key(2), step)
    extra, new_bs = optax_ext.gal_extra_args(
      lambda q: forward(q, bs, key), p, loss_of, has_aux=True
    )
    grads = None
    if vanilla:  # the model's own gradient first: one backward pass with ∂ℓ/∂z
      grads = extra["outputs_vjp"](jax.grad(loss_of)(extra["outputs"]))[0]
    u, opt = gal_tx.update(grads, opt, p, **extra)
    return (optax.apply_updates(p, u), new_bs, opt, step + 1), loss_of(extra["outputs"])

  step0 = jnp.zeros([], jnp.int32)
  return {
    "sgd": (jax.jit(sgd_step, donate_argnums=0), (params, batch_stats, sgd.init(params), step0)),
    "sgd (vjp)": (
      jax.jit(sgd_vjp_step, donate_argnums=0),
      (params, batch_stats, sgd.init(params), step0),
    ),
    "gal+sgd": (
      jax.jit(lambda s: gal_step(s, False), donate_argnums=0),
      (params, batch_stats, gal_tx.init(params), step0),
    ),
    "gal+sgd (vanilla grads)": (
      jax.jit(lambda s: gal_step(s, True), donate_argnums=0),
      (params, batch_stats, gal_tx.init(params), step0),
    ),
  }


def time_model(name: str, batch: int, reps: int) -> dict:
  make, shape = SETTINGS[name]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch), jnp.int32)
  fns, holders = {}, {}
  for label, (step, state) in _steps(make(), x, y).items():
    holders[label] = {"state": jax.tree.map(jnp.array, state)}

    def run(step=step, h=holders[label]):
      h["state"], loss = step(h["state"])
      return loss

    fns[label] = run
  res = timing.time_calls(fns, reps=reps, warmup=3)
  used = [float(h["state"][2][0].used_adjusted) for k, h in holders.items() if "gal" in k]
  base_min = res["sgd"]["min"]
  return {
    "batch": batch,
    "reps": reps,
    "times": res,
    "ratios": timing.ratios(res, "sgd"),
    "min_ratios": {k: v["min"] / base_min for k, v in res.items()},
    "gal_used_adjusted_last_step": used,
  }


def plot(results: dict, path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels = [k for k in next(iter(results.values()))["ratios"] if k != "sgd"]
  fig, ax = plt.subplots(figsize=(7, 3.6))
  width = 0.8 / len(results)
  for i, (model, r) in enumerate(results.items()):
    med = [r["ratios"][k] for k in labels]
    base = r["times"]["sgd"]["median"]
    lo = [med[j] - r["times"][k]["p25"] / base for j, k in enumerate(labels)]
    hi = [r["times"][k]["p75"] / base - med[j] for j, k in enumerate(labels)]
    xs = np.arange(len(labels)) + (i - (len(results) - 1) / 2) * width
    ax.bar(xs, med, width, yerr=[lo, hi], capsize=3, label=f"{model} (batch {r['batch']})")
    for xv, m, h in zip(xs, med, hi):
      ax.text(xv + width * 0.05, m + h + 0.02, f"{m:.3f}", ha="center", va="bottom", fontsize=8)
  ax.axhline(1.05, color="k", ls="--", lw=0.8, label="1.05x target")
  ax.set_xticks(np.arange(len(labels)), labels)
  ax.set_ylabel("train-step time / SGD step")
  top = max(
    r["times"][k]["p75"] / r["times"]["sgd"]["median"] for r in results.values() for k in labels
  )
  ax.set_ylim(0, max(1.3, top + 0.2))
  ax.set_title("GAL train-step cost (median, bars: 25th-75th percentile)")
  ax.legend(fontsize=8, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="batch 32, 5 repetitions")
  args = ap.parse_args(argv)
  batch, reps = (32, 5) if args.quick else (64, 30)
  results = {}
  for name in SETTINGS:
    results[name] = time_model(name, batch, reps)
    print(name, {k: round(v, 4) for k, v in results[name]["ratios"].items()}, flush=True)
  tag = "quick" if args.quick else "full"
  os.makedirs(RESULTS, exist_ok=True)
  machine = timing.machine_description()
  with open(os.path.join(RESULTS, f"gal_speed_{tag}.json"), "w") as f:
    json.dump({"machine": machine, "results": results}, f, indent=2)
  png = f"gal_speed_{tag}.png"
  plot(results, os.path.join(RESULTS, png))
  lines = [
    "## Train-step cost (paper Table VII: +2-3% per image)",
    "",
    f"Command: `python -m bench.gal_speed{' --quick' if args.quick else ''}`. Machine: "
    f"{machine}; the machine is shared with other jobs, so only ratios measured in "
    f"the same run (interleaved, median of {reps}) are meaningful.",
    "",
    "Ratios to the `sgd` step: median time / median time, and in brackets fastest / "
    "fastest call (less sensitive to other jobs).",
    "",
    "| model | batch | SGD step (ms, median) | sgd (vjp) | gal+sgd | gal+sgd (vanilla grads) |",
    "|---|---|---|---|---|---|",
  ]
  for name, r in results.items():
    cells = " | ".join(
      f"{r['ratios'][k]:.3f} ({r['min_ratios'][k]:.3f})"
      for k in ("sgd (vjp)", "gal+sgd", "gal+sgd (vanilla grads)")
    )
    lines.append(f"| {name} | {r['batch']} | {1e3 * r['times']['sgd']['median']:.1f} | {cells} |")
  lines += [
    "",
    f"![GAL train-step cost]({png})",
    "",
    "`gal+sgd` is the recommended path (one forward, one backward pass); the vanilla-"
    "gradient path adds a second backward pass whenever the adjusted gradient is "
    "used, as documented.",
  ]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(RESULTS, f"gal_speed_{tag}.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
