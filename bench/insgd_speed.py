"""INSGD train-step cost: forward with input-power capture, backward, update.

Times the training loop's jitted step (``train.loop.make_train_step``, state
donated) for INSGD-ℓ2 and INSGD-ℓ1 against the same step with
``optax.sgd(momentum=0.9)`` (the registry's ``momentum``), interleaved in one
run. Also times the capture on its own: the forward pass with
``capture_input_power`` against the plain forward pass. Models: the paper's
4-conv custom CNN (without and with BatchNorm) and ResNet-20 on random
32×32×3 batches.

Run: ``python -m bench.insgd_speed [--quick] [--batch N]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import optax_ext
from bench import harness
from flax_models import get_model
from train import registry
from train.loop import init_state, make_train_step

STEM = "insgd_speed"
MODELS = ("insgd_cnn", "insgd_cnn_bn", "resnet20")
METHODS = ("momentum", "insgd_l2", "insgd_l1")
TARGET = 1.10


def time_model(model_name: str, batch: int, reps: int) -> dict:
  model = get_model(model_name, 10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, 32, 32, 3)).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  const = registry.make_schedule("constant", 1, 1)
  fns = {}
  for name in METHODS:
    opt = registry.make_optimizer(name, const, lr=0.01)
    step = make_train_step(model, opt, "classification")
    fns[name] = harness.carried(step, init_state(model, opt.tx, x[:1], 0), x, y)

  # The capture alone: forward pass with and without it (train mode, dropout on).
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x[:1])
  mutable = ["batch_stats"] if "batch_stats" in variables else False
  kw = dict(train=True, rngs={"dropout": jax.random.key(2)}, mutable=mutable)
  xj = jnp.asarray(x)
  plain = jax.jit(lambda v, x: model.apply(v, x, **kw))
  captured = jax.jit(lambda v, x: optax_ext.capture_input_power(model.apply, v, x, **kw))
  fns["forward"] = lambda: plain(variables, xj)
  fns["forward+capture"] = lambda: captured(variables, xj)

  res = harness.time_calls(fns, reps=reps, warmup=3)
  step_ratio = harness.ratios({k: res[k] for k in METHODS}, "momentum")
  fwd_ratio = harness.ratios({k: res[k] for k in ("forward", "forward+capture")}, "forward")
  out = {}
  for name, r in res.items():
    out[name] = {
      "median_ms": 1e3 * r["median"],
      "p25_ms": 1e3 * r["p25"],
      "p75_ms": 1e3 * r["p75"],
      "ratio": step_ratio.get(name, fwd_ratio.get(name)),
    }
  return out


def render(result: dict) -> str:
  lines = [
    "## Train-step cost",
    "",
    f"Command: `{result['command']}`. Machine: {result['machine']}; batch {result['batch']}, "
    f"32×32×3 inputs, {result['reps']} interleaved repetitions after 3 warm-up calls. "
    "The machine is shared with other jobs and noisy: medians with the 25th-75th "
    "percentiles; the ratios come from one run, with the candidates interleaved.",
    "",
    "Full jitted train step (forward with capture, backward, update, apply) relative to the "
    f"same step with `optax.sgd(momentum=0.9)`; target ≤ {TARGET:.2f}×.",
    "",
    "| model | sgd+momentum ms | INSGD-ℓ2 ms | ×sgd | INSGD-ℓ1 ms | ×sgd | "
    "forward ms | forward+capture ms | ×forward |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for model, r in result["models"].items():

    def cell(name, r=r):
      return f"{r[name]['median_ms']:.1f} ({r[name]['p25_ms']:.1f}-{r[name]['p75_ms']:.1f})"

    lines.append(
      f"| {model} | {cell('momentum')} | {cell('insgd_l2')} | {r['insgd_l2']['ratio']:.3f} | "
      f"{cell('insgd_l1')} | {r['insgd_l1']['ratio']:.3f} | {cell('forward')} | "
      f"{cell('forward+capture')} | {r['forward+capture']['ratio']:.3f} |"
    )
  worst = max(r[m]["ratio"] for r in result["models"].values() for m in ("insgd_l2", "insgd_l1"))
  verdict = "met" if worst <= TARGET else "NOT met"
  lines += ["", f"Largest INSGD/SGD step ratio: {worst:.3f} (target ≤ {TARGET:.2f}: {verdict})."]
  png = (
    result.get("plot") or f"insgd_speed_{'quick' if '--quick' in result['command'] else 'full'}.png"
  )
  if png:
    lines += ["", f"![INSGD step cost]({png})"]
  return "\n".join(lines)


def plot(result: dict, path: str) -> None:
  plt = harness.pyplot()
  models = list(result["models"])
  fig, ax = plt.subplots(figsize=(7, 3.6))
  width = 0.25
  names = [
    ("insgd_l2", "INSGD-ℓ2 step"),
    ("insgd_l1", "INSGD-ℓ1 step"),
    ("forward+capture", "forward with capture"),
  ]
  for i, (key, label) in enumerate(names):
    vals = [result["models"][m][key]["ratio"] for m in models]
    bars = ax.bar(np.arange(len(models)) + (i - 1) * width, vals, width, label=label)
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
  ax.axhline(1.0, color="k", lw=0.8)
  ax.axhline(TARGET, color="r", ls="--", lw=0.8, label=f"target {TARGET:.2f}×")
  ax.set_xticks(np.arange(len(models)), models)
  ax.set_ylabel("time ratio (step: ×SGD+momentum;\nforward: ×plain forward)")
  ax.set_ylim(0.8, max(1.3, ax.get_ylim()[1]))
  ax.set_title(f"INSGD cost, batch {result['batch']}, {jax.devices()[0].platform.upper()}")
  ax.legend(fontsize=8, loc="upper left")
  harness.savefig(fig, path, dpi=120)


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "batch 32 and fewer repetitions")
  ap.add_argument("--batch", type=int, default=None)
  ap.add_argument("--reps", type=int, default=None)
  args = ap.parse_args(argv)
  batch = args.batch or (32 if args.quick else 128)
  reps = args.reps or (5 if args.quick else 15)
  tag = harness.tag(args.quick)
  extra = f"--batch {batch} --reps {reps}" if args.batch or args.reps else ""
  result = {
    "machine": harness.machine_description(),
    "batch": batch,
    "reps": reps,
    "command": harness.command("bench.insgd_speed", args.quick, extra),
    "models": {},
  }
  for name in MODELS:
    print(f"timing {name} ...", flush=True)
    result["models"][name] = time_model(name, batch, reps)
  result["plot"] = f"insgd_speed_{tag}.png"
  plot(result, result["plot"])
  md = harness.write(f"{STEM}_{tag}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
