"""GAL's train-step cost: GAL in front of SGD against the plain SGD step, in one run.

Both steps are the training loop's own (``train.loop.make_train_step`` with optimizers
from ``train.registry``): forward, one backward pass, update and ``apply_updates``,
jitted with the train state donated and carried from call to call, timed interleaved.

- ``sgd``: the registry's ``sgd``;
- ``gal+sgd``: the registry's ``gal+sgd`` (``optax_ext.gal_chain``): one forward through
  ``jax.vjp`` (``gal_extra_args``) and one backward pass with GAL's chosen output
  cotangent (``tx.update(None, ...)``).

Models: the SP paper's MNIST CNN (28×28×1, dropout) and the CIFAR ResNet-20 (32×32×3,
BatchNorm statistics updated in the step), random data, 10 classes, GAL's regressor
(100, 32, 16) with α = 0.001, β = 1 (the paper's CIFAR-10 SGD setting). The paper reports
2-3% extra time per image (its Table VII).

Run: ``python -m bench.gal_speed [--quick]``.
"""

from __future__ import annotations

import numpy as np

from bench import harness
from flax_models import get_model
from train import registry
from train.loop import init_state, make_train_step

STEM = "gal_speed"
SETTINGS = {"mnist_cnn": (28, 28, 1), "resnet20": (32, 32, 3)}
LR = 0.05
GAL = registry.GalOptions(alpha=1e-3, beta=1.0)
METHODS = ("sgd", "gal+sgd")


def time_model(name: str, batch: int, reps: int) -> dict:
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, *SETTINGS[name])).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  model = get_model(name, 10)
  const = registry.make_schedule("constant", 1, 1)
  fns, last = {}, {}
  for spec in METHODS:
    opt = registry.make_optimizer(spec, const, lr=LR, gal=GAL)
    step = make_train_step(model, opt, "classification")
    call = harness.carried(step, init_state(model, opt.tx, x[:1], 0), x, y)

    def run(call=call, spec=spec):
      last[spec] = call()
      return last[spec]["loss"]

    fns[spec] = run
  res = harness.time_calls(fns, reps=reps, warmup=3)
  base_min = res["sgd"]["min"]
  used = {
    k: float(v["diag_gal/used_adjusted"]) for k, v in last.items() if "diag_gal/used_adjusted" in v
  }
  return {
    "batch": batch,
    "reps": reps,
    "times": res,
    "ratios": harness.ratios(res, "sgd"),
    "min_ratios": {k: v["min"] / base_min for k, v in res.items()},
    "gal_used_adjusted_last_step": used,
  }


def plot(results: dict, path: str) -> None:
  plt = harness.pyplot()
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
  ax.axhline(1.05, color="k", ls="--", lw=0.8, label="1.05x target")
  ax.set_xticks(np.arange(len(labels)), labels)
  ax.set_ylabel("train-step time / SGD step")
  ax.set_title("GAL train-step cost (median, bars: 25th-75th percentile)")
  ax.legend(fontsize=8, loc="lower left")
  harness.savefig(fig, path, dpi=120)


def render(result: dict) -> str:
  results = result["results"]
  cols = [k for k in next(iter(results.values()))["ratios"] if k != "sgd"]
  lines = [
    "## Train-step cost (paper Table VII: +2-3% per image)",
    "",
    f"Command: `{result.get('command', 'python -m bench.gal_speed')}`. Machine: "
    f"{result['machine']}; only ratios measured in the same run (interleaved, median) "
    "are meaningful.",
    "",
    "Ratios to the `sgd` step: median time / median time, and in brackets fastest / "
    "fastest call (less sensitive to other jobs).",
    "",
    "| model | batch | SGD step (ms, median) | " + " | ".join(cols) + " |",
    "|---|---|---|" + "---|" * len(cols),
  ]
  for name, r in results.items():
    cells = " | ".join(f"{r['ratios'][k]:.3f} ({r['min_ratios'][k]:.3f})" for k in cols)
    lines.append(f"| {name} | {r['batch']} | {1e3 * r['times']['sgd']['median']:.1f} | {cells} |")
  if result.get("plot"):
    lines += ["", f"![GAL train-step cost]({result['plot']})"]
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "batch 32, 5 repetitions")
  args = ap.parse_args(argv)
  batch, reps = (32, 5) if args.quick else (64, 30)
  results = {}
  for name in SETTINGS:
    results[name] = time_model(name, batch, reps)
    print(name, {k: round(v, 4) for k, v in results[name]["ratios"].items()}, flush=True)
  tag = harness.tag(args.quick)
  result = {
    "command": harness.command("bench.gal_speed", args.quick),
    "machine": harness.machine_description(),
    "results": results,
    "plot": f"gal_speed_{tag}.png",
  }
  plot(results, result["plot"])
  md = harness.write(f"{STEM}_{tag}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
