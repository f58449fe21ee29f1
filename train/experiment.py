"""One command of ``python -m train``: a model, a data set and the optimizers compared.

:func:`run` loads the data and the model, builds every optimizer first (so a typo fails
before any training), trains each with checkpoints and telemetry
(:func:`train.loop.train_run`), and writes the report: the results table, JSON and CSV
files, the curves and each optimizer's diagnostics (:mod:`train.report`). The options
are parsed by :mod:`train.cli`.
"""

from __future__ import annotations

import argparse
import os

from train import methods
from train.errors import UsageError

__all__ = ["DEMO_OPTIMIZERS", "run"]


def _demo_optimizers() -> tuple[str, ...]:
  """Every method of a paper after the optimizers they modify, and GAL in front of SGD."""
  papers = [m for m in methods.METHODS.values() if m.family]
  bases = [name for name in methods.METHODS if name in {m.base for m in papers}]
  return (*bases, *(m.name for m in papers), "gal+sgd")


#: The optimizers ``--demo`` trains when ``--optimizers`` is not given.
DEMO_OPTIMIZERS = _demo_optimizers()


def _run_dir(out: str, name: str) -> str:
  """The run's folder: one safe name per configuration (:meth:`train.registry.Spec.folder`)."""
  from train import registry

  return os.path.join(out, registry.parse_spec(name).folder())


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
  import optax

  from flax_models import get_model, get_nnx_model
  from train.loop import init_state

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
    if args.api == "nnx":  # from the linen run's initial weights: the same run
      start = lambda linen: init_state(linen, optax.identity(), ds.example(), args.seed).params
      return model_name, get_nnx_model(model_name, ds.num_classes, params=start, **kwargs)
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
  if len({o.spec for o in opts}) != len(opts):
    raise UsageError("each optimizer configuration may be named once per command")
  return opts


def _train_one(args, model, o, ds, out: str, mesh, spe: int):
  """Trains one optimizer with checkpoints and writes its run files and diagnostics plot."""
  from train import distributed, report, telemetry
  from train.checkpoint import Checkpointer
  from train.loop import train_run

  run_dir = _run_dir(out, o.name)
  total = spe * args.epochs
  note = lambda step: print(f"{o.name}: resumed from step {step} (of {total})", flush=True)
  note = note if distributed.is_primary() else None
  ckpt = Checkpointer(os.path.join(run_dir, "checkpoints"), args.checkpoint_every, on_restore=note)
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
  diag_png = report.plot_diagnostics(res, os.path.join(run_dir, "diagnostics.png"), o.diagnostics)
  if diag_png:
    print(f"{o.name}: diagnostics plot {diag_png}", flush=True)
  return res


def _report(args, opts, results, ds, model_name: str, out: str) -> None:
  """Writes the summary files (the configuration with each optimizer's settings) and the
  curves, and prints the results table."""
  from train import report

  config = dict(vars(args), model=model_name, out=out)
  config["optimizer_settings"] = {
    o.name: {"spec": o.spec, "learning_rate": o.lr, "hyperparameters": o.hyperparameters}
    for o in opts
  }
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

  from train import inputs, stream

  if args.demo:
    _apply_demo_defaults(args)
  from train import distributed

  distributed.join(args)
  mesh = distributed.mesh_of(args.mesh)
  options = stream.options_of(args)
  ds = stream.open_data(
    args.dataset, args.data_dir, args.seed, args.context, mode=args.input, options=options
  )
  if args.train_size or args.test_size:
    ds = ds.subset(args.train_size, args.test_size)
  model_name, model = _load_model(args, ds)
  out = args.out or os.path.join("runs", f"{model_name}-{args.dataset.replace(':', '_')}")
  if ds.num_train < args.batch_size:
    raise UsageError(f"--batch-size {args.batch_size} exceeds the {ds.num_train} training examples")
  spe = inputs.steps_per_epoch(ds.num_train, args.batch_size)
  opts = _build_optimizers(args, ds, spe)
  from train import report

  for note in report.claim_outputs(out, [_run_dir(out, o.name) for o in opts], args):
    print(note, flush=True)
  primary = jax.process_index() == 0
  if primary:
    print(
      f"{model_name} on {ds.name}: {ds.num_train} train / {ds.num_test} test"
      f"{', streamed' if isinstance(ds, stream.Stream) else ''}, "
      f"{args.epochs} epochs x {spe} steps, batch {args.batch_size}, "
      f"{jax.devices()[0].platform}{distributed.devices_note(mesh)}",
      flush=True,
    )
  results = [_train_one(args, model, o, ds, out, mesh, spe) for o in opts]
  if primary:
    _report(args, opts, results, ds, model_name, out)
  return 0
