"""Command line: train one model with one or several optimizers and compare them.

Examples::

  python -m train --demo
  python -m train --model mnist_cnn --dataset fashion_mnist \\
      --optimizers sgd nesterov sp sp_nesterov adam --epochs 15 --batch-size 128 \\
      --schedule exp --gamma 0.7
  python -m train --model mlp --dataset diabetes --optimizers adam gal+adam --epochs 200
  python -m train --model transformer_lm --dataset text --optimizers adamw angulargrad_cos \
      sp insgd_l2 gal+adamw --epochs 1 --train-size 2048 --api nnx
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Optional, Sequence

from train.errors import UsageError

__all__ = ["DEMO_OPTIMIZERS", "build_parser", "main", "run"]

#: The optimizers ``--demo`` trains when ``--optimizers`` is not given.
DEMO_OPTIMIZERS = (
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


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit status 2, no usage dump
    sys.stderr.write(f"error: {message} (see --help)\n")
    raise SystemExit(2)


class _DefaultsOnce(argparse.ArgumentDefaultsHelpFormatter):
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
  from train import distributed
  from train.data import DATASET_NAMES
  from train.registry import SCHEDULES, known_names

  p = _Parser(
    prog="python -m train",
    description="Train a Flax model with one or several optimizers and compare them.",
    formatter_class=_DefaultsOnce,
  )
  p.add_argument(
    "--demo",
    action="store_true",
    help="the README demo: MNIST CNN on scikit-learn digits with sgd, momentum, adam and "
    "every optax_ext method (other options still apply on top)",
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
    help="run the model in Flax linen, or in Flax NNX through nnx.Optimizer "
    "(models with an NNX version: transformer_lm)",
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
    metavar="NAME[@LR]",
    help=f"one or several of: {', '.join(known_names())}",
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
  distributed.add_options(p)
  p.add_argument("--gal-alpha", type=_positive_float, default=1e-3, help="GAL's alpha")
  p.add_argument("--gal-beta", type=_positive_float, default=1e-3, help="GAL's beta")
  p.add_argument(
    "--gal-hidden",
    type=_positive_int,
    nargs="+",
    default=None,
    help="GAL regressor widths (default 100 32 16, or 128 4 for regression)",
  )
  return p


def _run_dir(out: str, name: str) -> str:
  safe = name.replace("+", "_plus_").replace("@", "_lr")
  return os.path.join(out, safe)


def _apply_demo_defaults(args: argparse.Namespace) -> None:
  """``--demo``: the demo's optimizers, epochs and output folder unless given."""
  if args.optimizers == ["sgd", "momentum", "adam"]:
    args.optimizers = list(DEMO_OPTIMIZERS)
  args.epochs = args.epochs if args.epochs != 5 else 8
  args.out = args.out or os.path.join("runs", "demo")
  args.overwrite = args.overwrite or not args.resume


_DEFAULT_MODELS = {"regression": "mlp", "classification": "mnist_cnn", "language": "transformer_lm"}


def _load_model(args, ds):
  """The model's name and module (default: an MLP for regression, the transformer LM
  for text, the paper CNN otherwise), in linen or NNX as ``--api`` says."""
  from flax_models import get_model, get_nnx_model

  model_name = args.model or _DEFAULT_MODELS[ds.task]
  is_lm = model_name == "transformer_lm"
  if is_lm != (ds.task == "language"):
    raise UsageError(
      f"model {model_name!r} cannot train on {ds.name!r}: transformer_lm takes the text "
      "data sets (text, text:PATH) and they take only transformer_lm"
    )
  kwargs = (
    dict(width=args.width, depth=args.depth, heads=args.heads, context=args.context)
    if is_lm
    else {}
  )
  try:
    if args.api == "nnx":
      return model_name, get_nnx_model(model_name, ds.num_classes, seed=args.seed, **kwargs)
    return model_name, get_model(model_name, ds.num_classes, **kwargs)
  except ValueError as e:
    raise UsageError(str(e)) from None


def _build_optimizers(args, ds, spe: int) -> list:
  """Every optimizer of the command, built before any training so a typo fails first."""
  from train import registry

  schedule = registry.make_schedule(
    args.schedule, spe, spe * args.epochs, gamma=args.gamma, milestones=tuple(args.milestones)
  )
  gal_opts = registry.GalOptions(
    alpha=args.gal_alpha,
    beta=args.gal_beta,
    hidden=tuple(args.gal_hidden) if args.gal_hidden else None,
    seed=args.seed,
  )
  plateau = registry.make_plateau(spe, args.gamma) if args.schedule == "plateau" else None
  opts = [
    registry.make_optimizer(
      spec,
      schedule,
      lr=args.lr,
      output_dim=ds.num_classes,
      task=ds.task,
      gal=gal_opts,
      plateau=plateau,
    )
    for spec in args.optimizers
  ]
  if len({o.name for o in opts}) != len(opts):
    raise UsageError("each optimizer may be named once per command")
  return opts


def _claim_checkpoints(args, out: str, opts) -> None:
  """Refuses to mix a new run with old checkpoints unless --resume or --overwrite says how."""
  from train import distributed

  for o in opts:
    ckpt_dir = os.path.join(_run_dir(out, o.name), "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir) and not args.resume:
      if not args.overwrite:
        raise UsageError(
          f"{ckpt_dir} already holds checkpoints: pass --resume to continue or --overwrite to discard"
        )
      if distributed.is_primary():
        shutil.rmtree(ckpt_dir)
  distributed.barrier("claim-checkpoints")


def _train_one(args, model, o, ds, out: str, mesh):
  """Trains one optimizer with checkpoints and writes its run files and diagnostics plot."""
  from train import distributed, report, telemetry
  from train.checkpoint import Checkpointer
  from train.loop import train_run

  run_dir = _run_dir(out, o.name)
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), every=args.checkpoint_every)
  writer = telemetry.RunWriter(run_dir) if distributed.is_primary() else None
  try:
    res = train_run(
      model,
      o,
      ds,
      epochs=args.epochs,
      batch_size=args.batch_size,
      seed=args.seed,
      checkpointer=ckpt,
      progress=not args.no_progress and distributed.is_primary(),
      log_every=args.log_every,
      eval_every=args.eval_every or 0,
      writer=writer,
      mesh=mesh,
    )
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()
  if not distributed.is_primary():  # process 0 writes the run's files
    return res
  res.log = telemetry.read_records(run_dir) or res.log  # the whole run, also when resumed
  report.write_run(res, run_dir)
  diag_png = report.plot_diagnostics(res, os.path.join(run_dir, "diagnostics.png"))
  if diag_png:
    print(f"{o.name}: diagnostics plot {diag_png}", flush=True)
  return res


def _report(args, results, ds, model_name: str, out: str) -> None:
  """Writes the summary files and the curves, and prints the results table."""
  from train import report

  config = dict(vars(args), model=model_name, out=out)
  report.write_summary(results, out, config)
  png = report.plot_curves(
    results,
    ds.task,
    os.path.join(out, "curves.png"),
    title=f"{model_name} on {ds.name}, batch {args.batch_size}, seed {args.seed}",
  )
  print()
  print(report.table(results, ds.task))
  print(f"\nmetrics: {os.path.join(out, 'results.json')} (and .csv); per-run files under {out}/")
  print(f"plot: {png}")
  print(f"TensorBoard: tensorboard --logdir {out}")


def run(args: argparse.Namespace) -> int:
  """Trains every optimizer of ``args`` and writes the report; returns the exit status."""
  import jax

  from train import data as data_lib

  if args.demo:
    _apply_demo_defaults(args)
  from train import distributed

  distributed.join(args)
  mesh = distributed.mesh_of(args.mesh)
  ds = data_lib.load_dataset(args.dataset, args.data_dir, seed=args.seed, context=args.context)
  if args.train_size or args.test_size:
    ds = ds.subset(args.train_size, args.test_size)
  model_name, model = _load_model(args, ds)
  out = args.out or os.path.join("runs", f"{model_name}-{args.dataset.replace(':', '_')}")
  if len(ds.x_train) < args.batch_size:
    raise UsageError(
      f"--batch-size {args.batch_size} exceeds the {len(ds.x_train)} training examples"
    )
  spe = data_lib.steps_per_epoch(len(ds.x_train), args.batch_size)
  opts = _build_optimizers(args, ds, spe)
  _claim_checkpoints(args, out, opts)
  primary = jax.process_index() == 0
  if primary:
    print(
      f"{model_name} on {ds.name}: {len(ds.x_train)} train / {len(ds.x_test)} test, "
      f"{args.epochs} epochs x {spe} steps, batch {args.batch_size}, "
      f"{jax.devices()[0].platform}{distributed.devices_note(mesh)}",
      flush=True,
    )
  results = [_train_one(args, model, o, ds, out, mesh) for o in opts]
  if primary:
    _report(args, results, ds, model_name, out)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``python -m train``: parses ``argv``, runs, and turns usage errors into one line and status 2."""
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
    from train.distributed import lost_peer

    message = lost_peer(e)
    if message is None:
      raise
    sys.stderr.write(f"error: {message}\n")
    return 1
