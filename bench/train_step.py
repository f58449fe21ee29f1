"""Full train-step cost per method, as ratios to the SGD step, CPU fusion seam on and off.

One step is what ``python -m train`` runs (``train.loop.make_train_step``): forward (with
INSGD's input-power capture where needed), one backward pass (GAL's chosen cotangent
included), the optimizer update and ``apply_updates``, jitted with the state donated and
the state carried from call to call. Every ``optax_ext`` method is built and compiled
twice in the same run, with the CPU fusion seam on and off; optax's baselines once.
Models: the SP paper's MNIST CNN on 28×28×1 images and the CIFAR ResNet-20 on 32×32×3
images, both with random data of the training batch size.

Run: ``python -m bench.train_step [--quick]``.
"""

from __future__ import annotations

import numpy as np

from bench import harness
from flax_models import get_model
from train import registry
from train.loop import init_state, make_train_step

STEM = "train_step"
METHODS = (
  "sgd",
  "momentum",
  "adam",
  "angulargrad_cos",
  "angulargrad_tan",
  "insgd_l2",
  "insgd_l1",
  "sp",
  "sp_nesterov",
  "gal+sgd",
)
BASELINES = ("sgd", "momentum", "adam")
SETTINGS = {"mnist_cnn": (28, 28, 1), "resnet20": (32, 32, 3)}


def time_model(model_name: str, batch: int, reps: int, methods=METHODS, seams=(True, False)):
  shape = SETTINGS[model_name]
  model = get_model(model_name, 10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, *shape)).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  const = registry.make_schedule("constant", 1, 1)
  fns = {}
  for on in seams:
    with harness.seam(on):
      for name in methods:
        if name in BASELINES and on != seams[0]:
          continue  # optax's own programs do not depend on the seam
        opt = registry.make_optimizer(name, const)
        state = init_state(model, opt.tx, x[:1], 0)
        step = make_train_step(model, opt, "classification").lower(state, x, y).compile()
        key = name if name in BASELINES else f"{name} | {harness.seam_label(on)}"
        fns[key] = harness.carried(step, state, x, y)
  res = harness.time_calls(fns, reps=reps, warmup=3)
  out = {}
  for key in fns:
    r = harness.row(res[key], res["sgd"], "ratio_to_sgd")
    if " | " in key:
      r["method"], r["seam"] = key.split(" | ")[0], key.endswith("seam on")
    out[key] = r
  return out


def render(result: dict) -> str:
  models = list(result["models"])
  lines = [
    f"Command: `{result.get('command', 'python -m bench.train_step')}`. "
    f"Machine: {result['machine']}; batch {result['batch']}, {result.get('reps', '?')} "
    "interleaved rounds, the train state carried (donated) from call to call.",
    "",
    "Whole train step × the SGD step of the same run, CPU fusion seam on and off:",
    "",
    "| method | " + " | ".join(f"{m} on | {m} off" for m in models) + " |",
    "|---|" + "---|---|" * len(models),
  ]
  names = []
  for r in result["models"].values():
    for key in r:
      name = key.split(" | ")[0]
      if name not in names:
        names.append(name)
  for name in names:
    cells = []
    for r in result["models"].values():
      if name in r:  # a baseline: one program for both settings
        cells += [f"{r[name]['ratio_to_sgd']:.3f}"] * 2
        continue
      for on in ("on", "off"):
        m = r.get(f"{name} | seam {on}")
        cells.append(f"{m['ratio_to_sgd']:.3f}" if m else "-")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines += ["", "Medians in ms (p25–p75):", ""]
  lines += ["| step | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
  keys = list(next(iter(result["models"].values())))
  for key in keys:
    cells = []
    for r in result["models"].values():
      m = r.get(key)
      cells.append(
        f"{m['median_ms']:.1f} ({m['p25_ms']:.1f}–{m['p75_ms']:.1f})"
        if m and "p25_ms" in m
        else "-"
      )
    lines.append(f"| {key.replace(' | ', ', ')} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = harness.parser(__doc__, "batch 32 and fewer repetitions")
  ap.add_argument("--batch", type=int, default=None)
  args = ap.parse_args(argv)
  batch = args.batch or (32 if args.quick else 128)
  reps = 5 if args.quick else 15
  result = {
    "command": harness.command(
      "bench.train_step", args.quick, f"--batch {batch}" if args.batch else ""
    ),
    "machine": harness.machine_description(),
    "batch": batch,
    "reps": reps,
    "models": {},
  }
  for model_name in SETTINGS:
    print(f"timing train steps of {model_name} ...", flush=True)
    result["models"][model_name] = time_model(model_name, batch, reps)
  md = harness.write(f"{STEM}_{harness.tag(args.quick)}", result, render)
  print(md)
  return result


if __name__ == "__main__":
  main()
