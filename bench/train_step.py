"""Full train-step cost per method, as ratios to the SGD step of the same run.

One step is what ``python -m train`` runs: forward (with INSGD's input-power
capture where needed), one backward pass (GAL's chosen cotangent included),
the optimizer update and ``apply_updates``, jitted with the state donated.
Models: the SP paper's MNIST CNN on 28×28×1 images and the CIFAR ResNet-20 on
32×32×3 images, both with random data of the training batch size.

Run: ``python -m bench.train_step [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from bench import timing
from flax_models import get_model
from train import registry
from train.loop import init_state, make_train_step

RESULTS = os.path.join(os.path.dirname(__file__), "results")
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
SETTINGS = {"mnist_cnn": (28, 28, 1), "resnet20": (32, 32, 3)}


def time_model(model_name: str, batch: int, reps: int, methods=METHODS) -> dict:
  shape = SETTINGS[model_name]
  model = get_model(model_name, 10)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, *shape)).astype(np.float32)
  y = rng.integers(0, 10, batch).astype(np.int32)
  const = registry.make_schedule("constant", 1, 1)
  fns = {}
  for name in methods:
    opt = registry.make_optimizer(name, const)
    step = make_train_step(model, opt, "classification")
    holder = {"state": init_state(model, opt.tx, x[:1], 0)}

    def run(step=step, holder=holder):
      holder["state"], metrics = step(holder["state"], x, y)
      return metrics["loss"]

    fns[name] = run
  res = timing.time_calls(fns, reps=reps, warmup=3)
  ratio = timing.ratios(res, "sgd")
  return {
    name: {
      "median_ms": 1e3 * res[name]["median"],
      "p25_ms": 1e3 * res[name]["p25"],
      "p75_ms": 1e3 * res[name]["p75"],
      "ratio_to_sgd": ratio[name],
    }
    for name in methods
  }


def markdown(result: dict) -> str:
  lines = [f"Machine: {result['machine']}; batch {result['batch']}", ""]
  names = list(next(iter(result["models"].values())))
  head = "| method | " + " | ".join(f"{m} ms | {m} × sgd" for m in result["models"]) + " |"
  lines += [head, "|---|" + "---|---|" * len(result["models"])]
  for name in names:
    cells = []
    for r in result["models"].values():
      cells += [f"{r[name]['median_ms']:.1f}", f"{r[name]['ratio_to_sgd']:.3f}"]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true", help="batch 32 and fewer repetitions")
  ap.add_argument("--batch", type=int, default=None)
  args = ap.parse_args(argv)
  batch = args.batch or (32 if args.quick else 128)
  reps = 5 if args.quick else 15
  result = {"machine": timing.machine_description(), "batch": batch, "models": {}}
  for model_name in SETTINGS:
    print(f"timing train steps of {model_name} ...", flush=True)
    result["models"][model_name] = time_model(model_name, batch, reps)
  os.makedirs(RESULTS, exist_ok=True)
  tag = "quick" if args.quick else "full"
  with open(os.path.join(RESULTS, f"train_step_{tag}.json"), "w") as f:
    json.dump(result, f, indent=2)
  md = markdown(result)
  with open(os.path.join(RESULTS, f"train_step_{tag}.md"), "w") as f:
    f.write(md + "\n")
  print(md)
  return result


if __name__ == "__main__":
  main()
