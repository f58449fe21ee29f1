"""Command line: the options of ``python -m train`` and its exit statuses.

What a command then runs (data, model, every optimizer's training and the report) is
:mod:`train.experiment`.

Examples::

  python -m train --demo
  python -m train --model mnist_cnn --dataset fashion_mnist \\
      --optimizers sgd nesterov sp sp_nesterov adam --epochs 15 --batch-size 128 \\
      --schedule exp --gamma 0.7
  python -m train --model mlp --dataset diabetes --optimizers adam gal+adam --epochs 200
  python -m train --optimizers sp:lr=0.1,sparsity=0.2 angulargrad_cos:lambda1=0.3 \\
      gal+adamw:alpha=0.01,weight_decay=0.001
  python -m train --model transformer_lm --dataset text --optimizers adamw angulargrad_cos \
      sp insgd_l2 gal+adamw --epochs 1 --train-size 2048 --api nnx
"""

from __future__ import annotations

import argparse
import shutil
import sys
from typing import Optional, Sequence

from train.errors import UsageError

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit status 2, no usage dump
    sys.stderr.write(f"error: {message} (see --help)\n")
    raise SystemExit(2)


class _DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
  def _fill_text(self, text, width, indent):  # the description and epilog come wrapped
    return "\n".join(indent + line for line in text.splitlines())

  def _get_help_string(self, action):  # a default said once; None and False not said
    said = "default" in (action.help or "") or action.default is None or action.default is False
    return action.help if said else super()._get_help_string(action)


def _positive_int(text: str) -> int:
  try:
    v = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if v <= 0:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
  return v


def _positive_float(text: str) -> float:
  try:
    v = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
  if not v > 0:
    raise argparse.ArgumentTypeError(f"expected a positive number, got {v}")
  return v


def build_parser() -> argparse.ArgumentParser:
  """The parser of ``python -m train`` (its ``--help`` is in docs/training.md)."""
  from flax_models import MODEL_NAMES
  from train import launch, stream
  from train.registry import SCHEDULES, describe_settings, known_names
  from train.stream import DATASET_NAMES

  width = shutil.get_terminal_size().columns - 2  # as argparse wraps the options
  p = _Parser(
    prog="python -m train",
    description="Train a Flax model with one or several optimizers and compare them.",
    epilog=describe_settings(max(width, 40)),
    formatter_class=_DefaultsOnce,
  )
  p.add_argument(
    "--demo",
    action="store_true",
    help="the README demo: MNIST CNN on scikit-learn digits with every optax_ext method and "
    "the optimizers they modify (other options still apply on top)",
  )
  p.add_argument(
    "--model",
    default=None,
    help=f"model: {', '.join(MODEL_NAMES)} (default: mnist_cnn, or mlp for regression data)",
  )
  p.add_argument("--dataset", default="digits", help=f"data set: {', '.join(DATASET_NAMES)}")
  p.add_argument(
    "--api",
    choices=("linen", "nnx"),
    default="linen",
    help="run the model in Flax linen, or in Flax NNX through nnx.Optimizer, starting "
    "from the linen run's weights (models with an NNX version: transformer_lm)",
  )
  p.add_argument(
    "--context", type=_positive_int, default=128, help="text: bytes per training window"
  )
  p.add_argument("--width", type=_positive_int, default=128, help="transformer_lm: model width")
  p.add_argument("--depth", type=_positive_int, default=2, help="transformer_lm: blocks")
  p.add_argument("--heads", type=_positive_int, default=4, help="transformer_lm: attention heads")
  p.add_argument("--data-dir", default=None, help="directory of IDX files or of TFDS data")
  p.add_argument(
    "--optimizers",
    nargs="+",
    default=["sgd", "momentum", "adam"],
    metavar="NAME[@LR][:KEY=VALUE,...]",
    help=f"one or several of: {', '.join(known_names())}; each with its settings (below)",
  )
  p.add_argument(
    "--lr",
    type=_positive_float,
    default=None,
    help="learning rate for every optimizer without its own @LR "
    "(default: each optimizer's registered default)",
  )
  p.add_argument("--schedule", default="constant", help=f"one of: {', '.join(SCHEDULES)}")
  p.add_argument(
    "--gamma",
    type=_positive_float,
    default=0.7,
    help="decay factor of the exp, multistep and plateau schedules",
  )
  p.add_argument(
    "--milestones",
    type=_positive_int,
    nargs="*",
    default=[],
    help="epochs at which the multistep schedule decays",
  )
  p.add_argument("--epochs", type=_positive_int, default=5)
  p.add_argument("--batch-size", type=_positive_int, default=64)
  p.add_argument("--seed", type=int, default=0, help="seed of initialisation and data order")
  p.add_argument(
    "--train-size", type=_positive_int, default=None, help="use only the first N training examples"
  )
  p.add_argument(
    "--test-size", type=_positive_int, default=None, help="use only the first N test examples"
  )
  p.add_argument("--out", default=None, help="output directory (default: runs/<model>-<dataset>)")
  p.add_argument(
    "--checkpoint-every",
    type=int,
    default=0,
    help="save a checkpoint every N steps (always at the end)",
  )
  p.add_argument(
    "--resume", action="store_true", help="continue each run from its newest checkpoint in --out"
  )
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="discard earlier checkpoints in --out instead of refusing to start",
  )
  p.add_argument(
    "--log-every",
    type=_positive_int,
    default=None,
    help="log the mean of the step metrics, diagnostics and learning rate over every N steps "
    "to <out>/<optimizer>/steps.jsonl, steps.csv and TensorBoard event files "
    "(default: about 300 points per run)",
  )
  p.add_argument(
    "--eval-every",
    type=_positive_int,
    default=None,
    help="also evaluate every N steps (default: at the end of each epoch only)",
  )
  p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  p.add_argument(
    "--mesh",
    default=None,
    metavar="data=N[,fsdp=M]",
    help="shard over a device mesh: the batch over all devices, parameters and "
    "optimizer state FSDP-style over the fsdp axis (see train/sharding.py)",
  )
  launch.add_options(p)
  stream.add_options(p)
  p.add_argument(
    "--gal-alpha", type=_positive_float, default=1e-3, help="GAL's alpha, where a spec sets none"
  )
  p.add_argument(
    "--gal-beta", type=_positive_float, default=1e-3, help="GAL's beta, where a spec sets none"
  )
  p.add_argument(
    "--gal-hidden",
    type=_positive_int,
    nargs="+",
    default=None,
    help="GAL regressor widths where a spec sets none (default 100 32 16, or 128 4 for regression)",
  )
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``python -m train``: parses ``argv``, runs, and turns usage errors into one line and status 2.

  A command for several processes runs under :func:`train.supervisor.supervise`."""
  from train.experiment import run
  from train.supervisor import run_supervised

  if (supervised := run_supervised(argv)) is not None:
    return supervised
  args = build_parser().parse_args(argv)
  try:
    return run(args)
  except UsageError as e:
    sys.stderr.write(f"error: {e}\n")
    return 2
  except KeyboardInterrupt:
    sys.stderr.write("interrupted: completed checkpoints are kept; rerun with --resume\n")
    return 130
  except Exception as e:  # on several processes, a peer's death surfaces here
    from train.distributed import end_if_peer_lost

    end_if_peer_lost(e)
    raise
