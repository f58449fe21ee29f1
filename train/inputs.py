"""What the training loop sees of its data, whether held in memory or streamed.

A data set gives the loop global batches: ``train_batches`` yields ``(step, x, y)``
where ``x`` and ``y`` are this process's ``rows`` of the global batch of ``step``,
and ``eval_batches`` yields ``(x, y, n_valid)``, the same rows of each global
evaluation batch (the last one padded, ``n_valid`` real rows). Two kinds give
this interface: :class:`Dataset`, arrays held in host memory
(:mod:`train.data`, :mod:`train.text`), and :class:`train.stream.Stream`, records
read from disk as training needs them.

The training order is one function of (seed, epoch) for both: epoch ``e`` visits the
training set in the order :func:`epoch_permutation` gives, and global batch ``k``
of an epoch is the ``k``-th run of ``batch_size`` entries of it (the remainder is
dropped). So a global batch depends only on the seed and the step, not on how many
processes read it, and the input position a checkpoint keeps,
:class:`InputPosition`, is the step with what it depends on.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, NamedTuple, Optional

import numpy as np

from train.errors import UsageError

__all__ = [
  "Dataset",
  "InputPosition",
  "batches",
  "epoch_permutation",
  "eval_batches",
  "steps_per_epoch",
]


def steps_per_epoch(n: int, batch_size: int) -> int:
  """Full batches per epoch (the remainder is dropped so shapes stay static)."""
  return max(1, n // batch_size)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the training set in ``epoch``: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def batches(
  x: np.ndarray,
  y: np.ndarray,
  batch_size: int,
  seed: int,
  start_step: int = 0,
  rows: slice = slice(None),
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
  """Yields ``(step, x_batch, y_batch)`` forever, starting at ``start_step``.

  Batches depend only on (seed, step), so a resumed run sees exactly the data
  an uninterrupted run would. ``rows`` picks a part of every batch, and only that
  part is gathered: one process's share on several hosts
  (:func:`train.distributed.process_rows`).
  """
  if len(x) < batch_size:
    raise UsageError(f"batch size {batch_size} exceeds the {len(x)} training examples")
  spe = steps_per_epoch(len(x), batch_size)
  step = start_step
  while True:
    epoch, pos = divmod(step, spe)
    perm = epoch_permutation(len(x), seed, epoch)
    idx = perm[pos * batch_size : (pos + 1) * batch_size][rows]
    yield step, x[idx], y[idx]
    step += 1


def eval_batches(x: np.ndarray, y: np.ndarray, batch_size: int):
  """Yields ``(x, y, n_valid)`` in order; the last batch is padded to full size."""
  for i in range(0, len(x), batch_size):
    xb, yb = x[i : i + batch_size], y[i : i + batch_size]
    n = len(xb)
    if n < batch_size:
      pad = batch_size - n
      xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
      yb = np.concatenate([yb, np.repeat(yb[-1:], pad, 0)])
    yield xb, yb, n


class InputPosition(NamedTuple):
  """Where a run stands in its data, saved in every checkpoint (item ``input``).

  ``step`` alone fixes the next batch; the other fields are what the order
  depends on, so a resumed run that would read other batches (another seed,
  batch size or number of records) is refused instead of silently diverging.
  """

  step: int
  epoch: int
  batch_in_epoch: int
  seed: int
  batch_size: int
  records: int

  @classmethod
  def at(cls, step: int, records: int, batch_size: int, seed: int) -> "InputPosition":
    """The position before global batch ``step``."""
    epoch, k = divmod(step, steps_per_epoch(records, batch_size))
    return cls(step, epoch, k, seed, batch_size, records)

  def check_resumes(self, saved: Optional[dict]) -> None:
    """Raises a one-line :class:`UsageError` unless ``saved`` (a checkpoint's position,
    or None for a checkpoint without one) continues the order of this position."""
    if saved is None:
      return
    if int(saved["step"]) != self.step:
      raise UsageError(
        f"the checkpoint's input position (step {saved['step']}) disagrees with its "
        f"training state (step {self.step}): the checkpoint is damaged"
      )
    for field in ("seed", "batch_size", "records"):
      if int(saved[field]) != getattr(self, field):
        raise UsageError(
          f"the checkpoint at step {saved['step']} was written reading {saved['records']} "
          f"training records in batches of {saved['batch_size']} with seed {saved['seed']}; "
          f"this run reads {self.records} in batches of {self.batch_size} with seed "
          f"{self.seed}, so its batches would differ: resume with the same data and flags, "
          "or start afresh with --overwrite"
        )


@dataclasses.dataclass
class Dataset:
  """A train/test split held in memory.

  Attributes:
    name: The data set's name as given on the command line.
    task: ``"classification"``, ``"regression"`` or ``"language"`` (next-token
      prediction: inputs and targets are int32 token windows of shape (n, T)).
    x_train, y_train, x_test, y_test: Arrays; images are NHWC float32, labels
      int32, regression targets float32 of shape (n, 1) (standardised).
    num_classes: Number of classes (1 output for regression, the vocabulary for
      language).
    target_scale: For regression, the training target's standard deviation,
      so errors can be reported in the original units.
    x_val, y_val: A validation split, where the source has one (``text``).
  """

  name: str
  task: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  target_scale: float = 1.0
  x_val: np.ndarray | None = None
  y_val: np.ndarray | None = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    return tuple(self.x_train.shape[1:])

  @property
  def num_train(self) -> int:
    return len(self.x_train)

  @property
  def num_test(self) -> int:
    return len(self.x_test)

  @property
  def augment(self) -> bool:
    """True when the train step augments each batch on device (a random crop and
    flip), as it does for CIFAR-shaped images (32x32 RGB)."""
    return self.task == "classification" and self.input_shape == (32, 32, 3)

  def example(self) -> np.ndarray:
    """One training input, shaped as a batch of one (to initialise a model)."""
    return self.x_train[:1]

  def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
    """The first ``n_train`` / ``n_test`` examples (splits are already shuffled)."""
    return dataclasses.replace(
      self,
      x_train=self.x_train[:n_train],
      y_train=self.y_train[:n_train],
      x_test=self.x_test[:n_test],
      y_test=self.y_test[:n_test],
    )

  def train_batches(
    self, batch_size: int, seed: int, start_step: int = 0, rows: slice = slice(None), stop=None
  ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """:func:`batches` of the training split, until ``stop`` (a step) or forever."""
    for item in batches(self.x_train, self.y_train, batch_size, seed, start_step, rows):
      if stop is not None and item[0] >= stop:
        return
      yield item

  def eval_batches(self, batch_size: int, split: str = "test", rows: slice = slice(None)):
    """``rows`` of each :func:`eval_batches` batch of the test (or ``"val"``) split."""
    x, y = (self.x_val, self.y_val) if split == "val" else (self.x_test, self.y_test)
    for xb, yb, n in eval_batches(x, y, batch_size):
      yield xb[rows], yb[rows], n
