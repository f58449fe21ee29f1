"""INSGD paper, Tables 6-7: robustness to a large learning rate without BatchNorm.

The paper trains its 4-conv custom CNN on CIFAR-10 (200 epochs, batch 128,
momentum 0.9, weight decay 5e-4, 7 seeds). Here, reduced to fit a 2-core CPU:
Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (28×28×1 instead of
32×32×3; the network is the same, its flattened features are 4×4×64 = 1,024
as on CIFAR-10), a training subset, a few epochs, 3 seeds, constant learning
rate. Optimizers: SGD and INSGD-ℓ1 / -ℓ2, all with momentum 0.9 and weight
decay 5e-4, at learning rates 0.1 and 0.25, network without BatchNorm.

Run: ``python -m bench.insgd_train [--quick] [--data-dir DIR] [--dataset tfds:cifar10]``.
"""

from __future__ import annotations

import argparse
import json
import os

import optax

import optax_ext
from bench.paper_runs import compare, mean_std, optimizer
from train import data as data_lib

RESULTS = os.path.join(os.path.dirname(__file__), "results")
PAPER = {  # CIFAR-10, custom CNN without BN (Table 7) and with BN (Table 6)
  ("sgd", 0.1): "11.07 ± 2.74 (no BN)",
  ("insgd_l1", 0.1): "64.85 ± 10.98 (no BN)",
  ("insgd_l2", 0.1): "74.78 ± 7.84 (no BN)",
  ("sgd", 0.25): "65.92 ± 1.32 (with BN)",
  ("insgd_l1", 0.25): "73.24 ± 1.17 (with BN)",
  ("insgd_l2", 0.25): "74.68 ± 0.85 (with BN)",
}


def builders(lr):
  wd = 5e-4
  return {
    "sgd": lambda spe: optimizer(
      "sgd", optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9)), lr
    ),
    "insgd_l1": lambda spe: optimizer(
      "insgd_l1",
      optax_ext.insgd(lr, momentum=0.9, norm_order=1, weight_decay=wd),
      lr,
      needs=("input_power",),
      norm_order=1,
    ),
    "insgd_l2": lambda spe: optimizer(
      "insgd_l2",
      optax_ext.insgd(lr, momentum=0.9, norm_order=2, weight_decay=wd),
      lr,
      needs=("input_power",),
      norm_order=2,
    ),
  }


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--quick", action="store_true")
  ap.add_argument("--dataset", default="fashion_mnist")
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--train-size", type=int, default=None)
  ap.add_argument("--epochs", type=int, default=None)
  args = ap.parse_args(argv)
  train_size = args.train_size or (4000 if args.quick else 12000)
  epochs = args.epochs or (3 if args.quick else 5)
  seeds = range(2) if args.quick else range(3)
  ds = data_lib.load_dataset(args.dataset, args.data_dir).subset(train_size, 5000)
  results = {}
  for lr in (0.1, 0.25):
    runs = compare("insgd_cnn", ds, builders(lr), seeds, epochs, 128)
    results[str(lr)] = runs
  tag = "quick" if args.quick else "full"
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, f"insgd_train_{tag}.json"), "w") as f:
    json.dump(results, f, indent=1, default=float)
  lines = [
    "## Robustness without BatchNorm (paper Tables 6-7)",
    "",
    f"Command: `python -m bench.insgd_train{' --quick' if args.quick else ''}`. "
    f"{ds.name}, first {train_size} training images, 5,000 test images, {epochs} epochs, "
    f"batch 128, {len(list(seeds))} seeds, constant lr, momentum 0.9, weight decay 5e-4, "
    "the custom 4-conv CNN without BatchNorm. The paper: CIFAR-10, 200 epochs, 7 seeds.",
    "",
    "| lr | optimizer | test accuracy (%) | diverged runs | paper, CIFAR-10 (%) |",
    "|---|---|---|---|---|",
  ]
  for lr, runs in results.items():
    for name, rows in runs.items():
      m, s = mean_std(rows, "test_accuracy")
      div = sum(r["diverged"] for r in rows)
      lines.append(
        f"| {lr} | {name} | {100 * m:.2f} ± {100 * s:.2f} | {div}/{len(rows)} | "
        f"{PAPER.get((name, float(lr)), '-')} |"
      )
  sgd_div = {lr: sum(r["diverged"] for r in runs["sgd"]) for lr, runs in results.items()}
  ins_div = {
    lr: sum(r["diverged"] for n, rows in runs.items() if n != "sgd" for r in rows)
    for lr, runs in results.items()
  }
  lines += [
    "",
    "Diverged runs count as chance accuracy (10%) in the mean. "
    f"SGD diverged in {sgd_div} runs per lr, INSGD (both norms) in {ins_div}.",
  ]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(RESULTS, f"insgd_train_{tag}.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
