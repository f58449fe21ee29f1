"""The jitted training step, evaluation, and the loop that ties them together.

One train step is one forward and one backward pass whatever the optimizer:
INSGD's input power is captured in the same forward pass, and GAL back-
propagates its chosen output cotangent once (see :mod:`optax_ext.gal`). What
varies by optimizer and by model API (linen or NNX) lives in :mod:`train.steps`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_ext import diagnostics
from train import data as data_lib
from train import distributed, inputs, steps, telemetry
from train.errors import NonFiniteLossError
from train.registry import Optimizer

__all__ = [
  "DONATE_STATE",
  "RunResult",
  "TrainState",
  "donates_state",
  "evaluate",
  "init_state",
  "loss_function",
  "make_eval_step",
  "make_train_step",
  "train_run",
]


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue: saved whole in each checkpoint.

  The data position is ``step`` itself: batch ``k`` depends only on the seed and
  ``k`` (:mod:`train.inputs`), and each step's randomness is ``fold_in(key, step)``,
  so a resumed run repeats an uninterrupted one exactly. Checkpoints also keep the
  position with what it depends on (:class:`train.inputs.InputPosition`).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  key: jax.Array


def loss_function(task: str) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Mean loss: cross-entropy on integer labels (per example, or per token for
  language), or mean squared error."""
  if task in ("classification", "language"):
    return lambda z, y: optax.softmax_cross_entropy_with_integer_labels(z, y).mean()
  return lambda z, y: jnp.mean(jnp.square(z - y))


def init_state(model: Any, tx: optax.GradientTransformation, x0: np.ndarray, seed: int):
  """Initialises parameters, batch statistics and the optimizer state.

  ``model`` is a linen module or an NNX module (:func:`train.steps.make_api`); an
  NNX module arrives initialised, so ``seed`` then only seeds the step randomness.
  """
  api = steps.make_api(model)
  key = jax.random.key(seed)
  k_params, k_drop, k_run = jax.random.split(key, 3)
  params, model_state = api.init({"params": k_params, "dropout": k_drop}, jnp.asarray(x0))
  # Raw uint32 key data keeps checkpoints free of typed-key dtypes.
  return TrainState(
    step=jnp.zeros([], jnp.int32),
    params=params,
    batch_stats=model_state,
    opt_state=api.init_opt(tx, params),
    key=jax.random.key_data(k_run),
  )


def _step_metrics(task: str, loss, z, y, optax_state) -> dict:
  """Loss, accuracy (and bits per byte for language), and the methods' own signals."""
  metrics = {"loss": loss}
  if task in ("classification", "language"):
    metrics["accuracy"] = jnp.mean(jnp.argmax(z, -1) == y)
  if task == "language":
    metrics["bits_per_byte"] = loss / math.log(2)
  metrics.update(
    {f"diag_{k}": jnp.asarray(v, jnp.float32) for k, v in diagnostics(optax_state).items()}
  )
  return metrics


#: Whether the train step donates its state, by JAX backend; measured with ``python -m
#: bench.train_step`` (bench/RESULTS.md, Train-step cost). Both ways give identical results;
#: a step that does not donate holds one more copy of the train state while it runs
#: (docs/design.md, Conventions — Donation). Backends not listed donate.
DONATE_STATE = {"cpu": True}


def donates_state(backend: Optional[str] = None) -> bool:
  """Whether :func:`make_train_step` donates the state on ``backend`` (default: JAX's)."""
  return DONATE_STATE.get(backend or jax.default_backend(), True)


def make_train_step(
  model: Any,
  opt: Optimizer,
  task: str,
  augment: bool = False,
  state_sharding: Any = None,
  batch_sharding: Any = None,
  donate: Optional[bool] = None,
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict]]:
  """Builds ``train_step(state, x, y) -> (state, metrics)``, jitted.

  With ``state_sharding`` and ``batch_sharding`` (see :mod:`train.sharding`)
  the step keeps the state's layout from one step to the next. ``donate``: whether
  the step may write the new state into the old one's buffers (default:
  :func:`donates_state` for this backend).
  """
  loss_of = loss_function(task)
  api = steps.make_api(model)
  need = opt.need
  donate_argnums = 0 if (donates_state() if donate is None else donate) else ()

  def step_fn(state: TrainState, x, y):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    k_aug, k_drop = jax.random.split(key)
    if augment:
      x = data_lib.augment_batch(k_aug, x)
    p = need(api, state.params, state.batch_stats, x, k_drop, lambda z: loss_of(z, y))
    params, opt_state, optax_state = api.update(
      opt.tx, p.grads, state.opt_state, state.params, p.extra
    )
    new_state = state.replace(
      step=state.step + 1, params=params, batch_stats=p.model_state, opt_state=opt_state
    )
    return new_state, _step_metrics(task, p.loss, p.outputs, y, optax_state)

  if state_sharding is None:
    return jax.jit(step_fn, donate_argnums=donate_argnums)
  return jax.jit(
    step_fn,
    donate_argnums=donate_argnums,
    in_shardings=(state_sharding, batch_sharding, batch_sharding),
    out_shardings=(state_sharding, None),
  )


def make_eval_step(model: Any, task: str):
  """Builds ``eval_step(state, x, y, n_valid) -> sums`` (jitted); rows past ``n_valid``
  are padding. On a mesh, :func:`evaluate` hands it global batches of which each
  process supplied its rows, and the sums are global."""
  api = steps.make_api(model)

  @jax.jit
  def eval_step(state: TrainState, x, y, n_valid):
    z = api.predict(state.params, state.batch_stats, x)
    valid = jnp.arange(x.shape[0]) < n_valid
    if task in ("classification", "language"):
      valid = valid.reshape((-1,) + (1,) * (y.ndim - 1))  # every token of a valid row
      losses = optax.softmax_cross_entropy_with_integer_labels(z, y)
      correct = (jnp.argmax(z, -1) == y) & valid
      return {"loss": jnp.sum(jnp.where(valid, losses, 0.0)), "correct": jnp.sum(correct)}
    err = (z - y)[:, 0]
    return {
      "loss": jnp.sum(jnp.where(valid, err**2, 0.0)),
      "abs": jnp.sum(jnp.where(valid, jnp.abs(err), 0.0)),
      "sq": jnp.sum(jnp.where(valid, err**2, 0.0)),
    }

  return eval_step


def evaluate(
  eval_step, state, ds, batch_size: int, split: str = "test", batch_sharding: Any = None
) -> dict[str, float]:
  """Metrics on the test split (or ``split="val"``) of ``ds`` (a
  :class:`train.inputs.Dataset` or :class:`train.stream.Stream`): loss and accuracy
  (and bits per byte for language, every position of every window counted), or MAE,
  MSE and R² in target units. Keys are prefixed ``test_`` either way. With
  ``batch_sharding`` each process reads and supplies only its rows of each batch."""
  rows = slice(None)
  if batch_sharding is not None:
    rows = distributed.process_rows(batch_sharding, batch_size)
  totals: dict[str, float] = {}
  n = 0
  for xb, yb, nv in ds.eval_batches(batch_size, split, rows):
    if batch_sharding is not None:
      xb, yb = (distributed.put_rows(batch_sharding, a, batch_size) for a in (xb, yb))
    out = eval_step(state, xb, yb, nv)
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(v)
    n += nv
  if ds.task == "language":
    n *= yb.shape[1]
    return {
      "test_loss": totals["loss"] / n,
      "test_bits_per_byte": totals["loss"] / n / math.log(2),
      "test_accuracy": totals["correct"] / n,
    }
  if ds.task == "classification":
    return {"test_loss": totals["loss"] / n, "test_accuracy": totals["correct"] / n}
  scale = ds.target_scale
  mse = totals["sq"] / n
  var = float(np.var(ds.y_val if split == "val" else ds.y_test))
  return {
    "test_loss": totals["loss"] / n,
    "test_mae": totals["abs"] / n * scale,
    "test_mse": mse * scale**2,
    "test_r2": 1.0 - mse / var if var > 0 else float("nan"),
  }


@dataclasses.dataclass
class RunResult:
  """What one optimizer's run produced."""

  name: str
  history: list[dict[str, float]]
  final: dict[str, float]
  seconds_per_step: float
  steps: int
  state: Optional[TrainState] = None
  log: list[dict[str, float]] = dataclasses.field(default_factory=list)  # telemetry records


class _StepClock:
  """Seconds per training step, excluding evaluation and the first step after it."""

  def __init__(self):
    self.steps, self.seconds, self._last = 0, 0.0, None

  def tick(self, done: int) -> None:
    now = time.perf_counter()
    if self._last is not None:
      self.seconds += now - self._last[0]
      self.steps += done - self._last[1]
    self._last = (now, done)

  def pause(self) -> None:
    self._last = None

  def per_step(self) -> float:
    return self.seconds / self.steps if self.steps else float("nan")


def _start(model, opt, ds, seed: int, checkpointer, mesh, batch_size: int):
  """The state to train from (restored if a checkpoint exists), its history and shardings.

  On a mesh the state is laid out first, so a checkpoint is read straight into
  this run's layout, whatever mesh or process count wrote it."""
  state = init_state(model, opt.tx, ds.example(), seed)
  state_sh = batch_sh = None
  if mesh is not None:
    from train import sharding

    sharding.check_batch(batch_size, mesh)
    state_sh, batch_sh = sharding.state_shardings(mesh, state), sharding.batch_sharding(mesh)
    state = distributed.put_replicas(state, state_sh)
  history: list[dict[str, float]] = []
  if checkpointer is not None:
    restored = checkpointer.restore_latest(state)
    if restored is not None:
      state, history = restored
      here = inputs.InputPosition.at(int(state.step), ds.num_train, batch_size, seed)
      here.check_resumes(checkpointer.restore_input(here.step))
  return state, history, state_sh, batch_sh


def _non_finite(name: str, loss: float, done: int, checkpointer) -> NonFiniteLossError:
  where = f"; last good checkpoint: step {checkpointer.latest_step()}" if checkpointer else ""
  return NonFiniteLossError(f"{name}: loss became non-finite ({loss}) by step {done}{where}")


def _final_metrics(history: list[dict[str, float]], task: str) -> dict[str, float]:
  """The last evaluation, plus the best test accuracy over epochs for classification."""
  final = dict(history[-1]) if history else {}
  if history and task == "classification":
    final["best_test_accuracy"] = max(h["test_accuracy"] for h in history)
  return final


def _show(records: list[dict], bar, name: str, checkpointer) -> None:
  """Shows the newest window's loss; raises on a window whose mean loss is not finite."""
  for r in records:
    if not math.isfinite(r["train/loss"]):
      bar.close()
      raise _non_finite(name, r["train/loss"], r["step"], checkpointer)
  if records:
    bar.set_postfix(loss=f"{records[-1]['train/loss']:.4f}")


def train_run(
  model: Any,
  opt: Optimizer,
  ds,
  *,
  epochs: int,
  batch_size: int,
  seed: int,
  checkpointer=None,
  progress: bool = True,
  log_every: Optional[int] = None,
  eval_every: int = 0,
  writer: Optional[telemetry.RunWriter] = None,
  on_epoch: Optional[Callable[[dict], None]] = None,
  mesh: Any = None,
) -> RunResult:
  """Trains ``model`` with ``opt`` on ``ds`` and evaluates after every epoch.

  Args:
    ds: A :class:`train.inputs.Dataset` (in memory) or :class:`train.stream.Stream`:
      the loop reads both through the same methods.
    checkpointer: A :class:`train.checkpoint.Checkpointer`, or None. When it
      holds a checkpoint of this run, training resumes from it.
    log_every: Steps per logged window (:mod:`train.telemetry`); None for
      :func:`train.telemetry.default_log_every`.
    eval_every: Also evaluate every this many steps (0: at the end of each epoch only).
    writer: A :class:`train.telemetry.RunWriter` for the records, or None.
    mesh: A ``jax.sharding.Mesh`` with axes ``data`` and ``fsdp``, or None for
      one device (see :mod:`train.sharding`).

  Raises:
    NonFiniteLossError: the loss became NaN or infinite; the last good
      checkpoint is left in place.
  """
  from tqdm.auto import tqdm

  spe = inputs.steps_per_epoch(ds.num_train, batch_size)
  total = epochs * spe
  log_every = log_every or telemetry.default_log_every(total)
  state, history, state_sh, batch_sh = _start(model, opt, ds, seed, checkpointer, mesh, batch_size)
  start = int(state.step)
  train_step = make_train_step(
    model, opt, ds.task, augment=ds.augment, state_sharding=state_sh, batch_sharding=batch_sh
  )
  eval_step = make_eval_step(model, ds.task)
  bar = tqdm(total=total, initial=start, desc=opt.name, disable=not progress, leave=True)
  clock = _StepClock()
  lrs = telemetry.learning_rates(opt.learning_rate, total)
  log = telemetry.StepLog(spe, lrs, writer.begin(start) if writer is not None else None)
  rows = slice(None) if batch_sh is None else distributed.process_rows(batch_sh, batch_size)
  feed = ds.train_batches(batch_size, seed, start, rows, stop=total)
  try:
    for step, xb, yb in feed:
      if step >= total:
        break
      if batch_sh is not None:  # this process's rows of the global batch
        xb, yb = (distributed.put_rows(batch_sh, a, batch_size) for a in (xb, yb))
      state, metrics = train_step(state, xb, yb)
      log.add(metrics)
      done = step + 1
      end_of_epoch = done % spe == 0 or done == total
      saving = checkpointer is not None and checkpointer.should_save(done, total)
      evaluating = end_of_epoch or (eval_every > 0 and done % eval_every == 0)
      if done % log_every == 0 or end_of_epoch or saving:
        records = log.close_window(done, wait=saving or evaluating)
        clock.tick(done)
        _show(records, bar, opt.name, checkpointer)
      bar.update(1)
      if evaluating:
        scores = evaluate(eval_step, state, ds, batch_size, batch_sharding=batch_sh)
        log.log_eval(done, scores)
        if end_of_epoch:
          record = {"epoch": done / spe, "step": done, **log.epoch_means(), **scores}
          history.append(record)
          if on_epoch is not None:
            on_epoch(record)
        clock.pause()  # evaluation time is not step time
      if saving:
        here = inputs.InputPosition.at(done, ds.num_train, batch_size, seed)
        checkpointer.save(done, state, history, here._asdict())
  finally:
    feed.close()  # a stream's worker processes end here
  bar.close()
  if checkpointer is not None:
    checkpointer.wait()
  return RunResult(
    opt.name,
    history,
    _final_metrics(history, ds.task),
    clock.per_step(),
    total,
    state,
    log.records,
  )
