"""Per-step training telemetry: window means summed on device, read when they arrive, written out.

Every ``log_every`` steps the training loop closes a *window* and logs the mean of
each step metric over it: the loss, the accuracy, and every optimizer diagnostic
(:func:`optax_ext.diagnostics`), with the learning rate the window's last step used.
The means are kept on the device and never stall the step:

- each step adds its metrics, packed into one vector, to the window's running sum
  with one jitted call that donates the sum (one dispatch per step, whatever the
  number of diagnostics);
- closing a window starts the sum's device-to-host copy
  (``jax.Array.copy_to_host_async``) and reads the earlier windows whose sums have
  arrived (``jax.Array.is_ready``), usually the previous one; it waits only when
  :data:`MAX_IN_FLIGHT` windows are still in flight, or for a checkpoint or an
  evaluation, which wait for the device anyway.

The epoch means the history keeps are the step-weighted means of the epoch's
windows, so no second sum runs on the device. Records go to
:class:`RunWriter`: JSON lines as they come, a CSV of the same records when the
run ends, and TensorBoard event files (through ``tensorboardX``), one event per
record, so that ``tensorboard --logdir runs/<name>`` shows one run per optimizer.

Record keys: ``step``, ``epoch``, ``time`` (seconds since the run began), then
``train/loss``, ``train/accuracy``, ``train/lr`` and the diagnostics under their
own names (``sp/pruned/<leaf>``, ``angulargrad/phi_mean``, ...) for a training
window; ``test/loss``, ``test/accuracy`` (or ``test/mae``, ``test/mse``,
``test/r2``) for an evaluation. The TensorBoard tags are the same keys.
"""

from __future__ import annotations

import csv
import glob
import json
import math
import os
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "MAX_IN_FLIGHT",
  "POINTS_PER_RUN",
  "RunWriter",
  "StepLog",
  "default_log_every",
  "learning_rates",
  "read_records",
  "write_csv",
]

#: About how many logged windows the default ``--log-every`` gives a run.
POINTS_PER_RUN = 300
#: How many closed windows may wait for their copy to the host before the oldest is waited for.
MAX_IN_FLIGHT = 4
META = ("step", "epoch", "time")
JSONL, CSV = "steps.jsonl", "steps.csv"


def default_log_every(total_steps: int) -> int:
  """The window length that logs at most :data:`POINTS_PER_RUN` windows in a run."""
  return max(1, math.ceil(total_steps / POINTS_PER_RUN))


def learning_rates(rate: Any, total_steps: int) -> Optional[np.ndarray]:
  """The learning rate of every step ``0 … total_steps - 1``; None when unknown.

  An optax schedule is a function of the update count, evaluated here once for
  the whole run on the host's CPU so that logging it never touches the device.
  """
  if rate is None:
    return None
  if not callable(rate):
    return np.full(total_steps, float(rate))
  with jax.default_device(jax.devices("cpu")[0]):
    return np.asarray(jax.vmap(rate)(jnp.arange(total_steps)), dtype=np.float64)


def _record_key(metric: str) -> str:
  """A train step's metric name as logged: ``loss`` → ``train/loss``, ``diag_x`` → ``x``."""
  return metric[len("diag_") :] if metric.startswith("diag_") else f"train/{metric}"


def _history_key(metric: str) -> str:
  """A train step's metric name in the epoch history: ``train_loss``, ``train_diag_x``."""
  return f"train_{metric}"


def _pack(metrics: dict) -> jax.Array:
  return jnp.stack([jnp.asarray(metrics[k], jnp.float32) for k in sorted(metrics)])


_start_window = jax.jit(_pack)
_add_to_window = jax.jit(lambda window, metrics: window + _pack(metrics), donate_argnums=0)


class _Pending(NamedTuple):
  """A closed window whose sum is on its way to the host."""

  step: int
  epoch: float
  time: float
  count: int
  sums: jax.Array


class StepLog:
  """Window means of the step metrics, written as records without a blocking transfer.

  Args:
    steps_per_epoch: For each record's ``epoch``.
    lrs: The learning rate per step (:func:`learning_rates`), or None.
    writer: Where records go (:class:`RunWriter`), or None to keep them in memory only.
  """

  def __init__(
    self,
    steps_per_epoch: int,
    lrs: Optional[np.ndarray] = None,
    writer: Optional["RunWriter"] = None,
  ):
    self.steps_per_epoch = steps_per_epoch
    self.lrs = lrs
    self.writer = writer
    self.records: list[dict] = []
    self._keys: Optional[list[str]] = None
    self._window: Optional[jax.Array] = None
    self._count = 0
    self._pending: list[_Pending] = []
    self._epoch_sums: Optional[np.ndarray] = None
    self._epoch_count = 0
    self._t0 = time.perf_counter()

  def add(self, metrics: dict) -> None:
    """Adds one step's metrics (device scalars) to the open window: one jitted call."""
    if self._keys is None:
      self._keys = sorted(metrics)
    if self._window is None:
      self._window = _start_window(metrics)
    else:
      self._window = _add_to_window(self._window, metrics)
    self._count += 1

  def close_window(self, step: int, wait: bool = False) -> list[dict]:
    """Ends the window at ``step`` and writes every window whose sum has arrived.

    Without ``wait``, windows still in flight stay so (``jax.Array.is_ready``),
    unless more than :data:`MAX_IN_FLIGHT` are: then the oldest is read, which
    bounds how far the host runs ahead. With ``wait``, every window is read,
    the one just closed included (for checkpoints and evaluations, which wait
    for the device anyway). Returns the records written, oldest first.
    """
    if self._window is not None:
      self._window.copy_to_host_async()
      now = time.perf_counter() - self._t0
      pending = _Pending(step, step / self.steps_per_epoch, now, self._count, self._window)
      self._pending.append(pending)
      self._window, self._count = None, 0
    n = 0
    while n < len(self._pending) and (
      wait or len(self._pending) - n > MAX_IN_FLIGHT or self._pending[n].sums.is_ready()
    ):
      n += 1
    ready, self._pending = self._pending[:n], self._pending[n:]
    return [self._resolve(p) for p in ready]

  def _resolve(self, p: _Pending) -> dict:
    sums = np.asarray(p.sums, dtype=np.float64)
    record = {"step": p.step, "epoch": p.epoch, "time": p.time}
    means = {_record_key(k): float(v) / p.count for k, v in zip(self._keys, sums)}
    record.update(sorted(means.items(), key=lambda kv: not kv[0].startswith("train/")))
    if self.lrs is not None and 0 < p.step <= len(self.lrs):
      record["train/lr"] = float(self.lrs[p.step - 1])
    self._epoch_sums = sums if self._epoch_sums is None else self._epoch_sums + sums
    self._epoch_count += p.count
    self._emit(record)
    return record

  def log_eval(self, step: int, metrics: dict[str, float]) -> dict:
    """Writes an evaluation: ``test_loss`` is logged as ``test/loss``, and so on."""
    record = {"step": step, "epoch": step / self.steps_per_epoch}
    record["time"] = time.perf_counter() - self._t0
    record.update({k.replace("test_", "test/", 1): float(v) for k, v in metrics.items()})
    self._emit(record)
    return record

  def _emit(self, record: dict) -> None:
    self.records.append(record)
    if self.writer is not None:
      self.writer.write(record)

  def epoch_means(self) -> dict[str, float]:
    """The step-weighted means of the windows read since the last call (``train_*`` keys).

    Call after ``close_window(step, wait=True)`` so that the epoch's last window is in.
    """
    if self._epoch_sums is None:
      return {}
    means = {
      _history_key(k): float(v) / self._epoch_count for k, v in zip(self._keys, self._epoch_sums)
    }
    self._epoch_sums, self._epoch_count = None, 0
    return means


def _is_scalar(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


class RunWriter:
  """One run's records as ``steps.jsonl``, ``steps.csv`` and TensorBoard event files.

  The files live in ``directory`` (``runs/<name>/<optimizer>/``), so
  ``tensorboard --logdir runs/<name>`` lists one run per optimizer.
  :meth:`begin` makes a resumed run continue its files: the records after the
  step it resumes from are dropped from the JSON lines, and TensorBoard is told
  to purge its own (a ``SessionLog.START`` event at that step).
  """

  def __init__(self, directory: str, flush_secs: int = 30):
    self.directory = directory
    self.flush_secs = flush_secs
    self._jsonl = None
    self._events = None
    self._t0 = time.time()

  def begin(self, start_step: int) -> "RunWriter":
    """Opens the files for a run that starts (``0``) or resumes at ``start_step``."""
    from tensorboardX import FileWriter
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    os.makedirs(self.directory, exist_ok=True)
    path = os.path.join(self.directory, JSONL)
    kept = (
      [r for r in read_records(self.directory) if r["step"] <= start_step] if start_step else []
    )
    if not start_step:  # a fresh run: earlier event files would overlay its steps
      for old in glob.glob(os.path.join(self.directory, "events.out.tfevents.*")):
        os.remove(old)
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    self._jsonl = open(path, "a", buffering=1)
    # The file name holds the time in seconds: the step resumed from keeps a file from
    # an earlier start in the same second from being overwritten.
    suffix = f".from{start_step}"
    self._events = FileWriter(self.directory, flush_secs=self.flush_secs, filename_suffix=suffix)
    if start_step:
      start = SessionLog(status=SessionLog.START)
      self._events.add_event(Event(step=start_step + 1, session_log=start, wall_time=time.time()))
    self._t0 = time.time()
    return self

  def write(self, record: dict) -> None:
    """Appends one record to the JSON lines and to the event file."""
    from tensorboardX.proto.summary_pb2 import Summary

    if self._jsonl is None:
      raise RuntimeError("RunWriter.write before begin()")
    self._jsonl.write(json.dumps(record) + "\n")
    values = [
      Summary.Value(tag=k, simple_value=v)
      for k, v in record.items()
      if k not in META and _is_scalar(v)
    ]
    self._events.add_summary(Summary(value=values), record["step"], self._t0 + record["time"])

  def close(self) -> None:
    """Flushes the event file, closes the JSON lines and writes the CSV of every record."""
    if self._events is not None:
      self._events.close()
      self._events = None
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
      write_csv(read_records(self.directory), os.path.join(self.directory, CSV))


def read_records(directory: str) -> list[dict]:
  """The records of ``directory/steps.jsonl`` in order; empty when there is none."""
  path = os.path.join(directory, JSONL)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_csv(records: list[dict], path: str) -> None:
  """The records as one CSV table: the union of their keys, empty where a record has none."""
  keys: list[str] = []
  for r in records:
    keys += [k for k in r if k not in keys]
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys)
    w.writeheader()
    w.writerows(records)
