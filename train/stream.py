"""Streamed data sets: records read from disk as training needs them, through grain.

``--dataset tfds:<name>`` reads a data set prepared by TensorFlow Datasets through
``tfds.data_source``; ``--dataset arrayrecord:PATH`` reads ArrayRecord files in the
folder ``PATH`` (``*train*.array_record*`` and ``*test*`` or ``*validation*``,
records as :mod:`train.images` describes, ``--num-classes`` giving the label
count); ``--input stream`` reads an in-memory data set the same way. Each gives
random access to every record, and a :class:`Stream` reads them through one
grain pipeline per split:

1. *Locate*: local element ``k`` of this process is row ``rows.start + k % b`` of
   global batch ``step = start + k // b`` (``b`` the process's rows); the record is
   entry ``(step mod steps_per_epoch) * batch_size + row`` of
   :func:`train.inputs.epoch_permutation` of the step's epoch, the order the
   in-memory path uses. Each process reads only its rows' records, and a global
   batch is the same whatever the number of processes.
2. *Decode* (a map transform): the image and label, checked.
3. *Augment* (a map transform): standardise with per-channel statistics, then the papers'
   augmentation (:mod:`train.images`) with a generator seeded by (seed, global
   position ``step * batch_size + row``), so the draws too are independent of the
   process count and of where a run resumed. (grain's ``random_map`` would seed
   by the element's local index, which differs between process layouts.)
4. *Batch* the process's rows, then read ahead: ``prefetch`` batches, made in
   ``workers`` processes (``mp_prefetch``), each worker taking every
   ``workers``-th batch, so the order does not depend on ``workers``.

Host memory stays flat as the data set grows: records are read when needed, the
buffers hold ``prefetch`` batches per worker, ArrayRecord indices stay on disk,
and the only per-record state is the epoch's permutation (8 bytes a record).

The input position is the step (:class:`train.inputs.InputPosition`): the
pipeline is a pure function of it, so a checkpoint restores the stream on any
number of processes or workers. (grain's own iterator state counts elements of
one process's pipeline and its workers, so it would tie a checkpoint to them.)
Sources, record checks, layout and statistics: :mod:`train.sources`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import NamedTuple, Optional

import numpy as np

from train import data, images, sources
from train.errors import UsageError
from train.inputs import Dataset, epoch_permutation, steps_per_epoch

__all__ = [
  "DATASET_NAMES",
  "Stream",
  "StreamOptions",
  "add_options",
  "open_data",
  "open_stream",
  "options_of",
]

#: The names ``--dataset`` accepts: :data:`train.data.DATASET_NAMES` and ArrayRecord folders.
DATASET_NAMES = data.DATASET_NAMES + ("arrayrecord:PATH",)

UNBOUNDED = 1 << 62  # elements of a training pipeline given no stop step
_AUGMENT = 0x6175  # the augmentation's seed-sequence word, apart from the data order's


class StreamOptions(NamedTuple):
  """How a :class:`Stream` reads (``--workers``, ``--prefetch``, ``--image-size``,
  ``--num-classes``).

  Attributes:
    workers: Worker processes preparing batches (0: in this process).
    prefetch: Batches prepared ahead, per worker (or in this process), each by its
      own thread.
    image_size: Side of the square crops of images of free size (ImageNet-style).
    num_classes: The label count of ArrayRecord data (TFDS declares its own).
    augment: Whether training batches are augmented.
  """

  workers: int = 0
  prefetch: int = 2
  image_size: int = 224
  num_classes: Optional[int] = None
  augment: bool = True


class _Locate:
  """Local element ``k`` -> (record, global position), as the module docstring says;
  ``seed=None`` reads the split in order, the last global batch padded with the last
  record (evaluation)."""

  def __init__(self, records, batch_size, seed, start, rows: tuple[int, int]):
    self.records, self.batch_size, self.seed, self.start = records, batch_size, seed, start
    self.lo, self.per = rows[0], rows[1] - rows[0]
    self._perm = (None, None)

  def __call__(self, k):
    step, row = self.start + k // self.per, self.lo + k % self.per
    position = step * self.batch_size + row
    if self.seed is None:
      return min(position, self.records - 1), position
    epoch, pos = divmod(step, steps_per_epoch(self.records, self.batch_size))
    cached = self._perm
    if cached[0] != epoch:
      cached = (epoch, epoch_permutation(self.records, self.seed, epoch))
      self._perm = cached  # one assignment: threads see the old pair or the new one
    return int(cached[1][pos * self.batch_size + row]), position


class _Decode:
  def __init__(self, split: sources.Split, num_classes: int, layout: sources.Layout):
    self.split, self.num_classes, self.layout = split, num_classes, layout

  def __call__(self, located):
    index, position = located
    img, label = sources.decode(self.split, index, self.num_classes, self.layout)
    return {"image": img, "label": label, "position": position}


class _Augment:
  """Standardisation (not for ``arrays``, which arrive standardised) and, when
  ``seed`` is given, the layout's augmentation drawn for the element's position."""

  def __init__(self, layout: sources.Layout, mean, std, seed: Optional[int]):
    self.layout, self.mean, self.std, self.seed = layout, mean, std, seed

  def __call__(self, ex):
    img, crop = ex["image"], self.layout.crop
    rng = (
      None if self.seed is None else np.random.default_rng([self.seed, ex["position"], _AUGMENT])
    )
    if crop == "resized":
      size = self.layout.out[0]
      img = (
        images.center_crop(img, size) if rng is None else images.random_resized_crop(img, rng, size)
      )
    if self.mean is not None:
      img = ((img.astype(np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)
    if crop == "pad" and rng is not None:
      img = images.pad_crop_flip(img, rng)
    return {**ex, "image": img}


@dataclasses.dataclass
class Stream:
  """A data set read through grain as training needs it; the loop's interface is
  :class:`train.inputs.Dataset`'s (``train_batches``, ``eval_batches``, ...).

  Attributes:
    name: The data set's name as given on the command line.
    task: ``"classification"`` or ``"language"``.
    num_classes: Number of classes (or the vocabulary).
    splits: ``{"train": ..., "test": ...}`` (and ``"val"`` where the source has one).
    layout: The images' layout and augmentation.
    mean, std: Per-channel statistics, shaped (C,) (None: the records arrive standardised).
    options: How to read.
  """

  name: str
  task: str
  num_classes: int
  splits: dict
  layout: sources.Layout
  mean: Optional[np.ndarray]
  std: Optional[np.ndarray]
  options: StreamOptions
  target_scale: float = 1.0

  augment = False  # the train step does not augment: the pipeline has

  @property
  def input_shape(self) -> tuple:
    return self.layout.out

  @property
  def num_train(self) -> int:
    return self.splits["train"].records

  @property
  def num_test(self) -> int:
    return self.splits["test"].records

  def example(self) -> np.ndarray:
    """Training record 0, prepared as for evaluation, as a batch of one."""
    ex = _Decode(self.splits["train"], self.num_classes, self.layout)((0, 0))
    return _Augment(self.layout, self.mean, self.std, None)(ex)["image"][None]

  def subset(self, n_train: Optional[int] = None, n_test: Optional[int] = None) -> "Stream":
    """The first ``n_train`` / ``n_test`` records of each split."""
    cut = {"train": n_train, "test": n_test}
    splits = {
      k: s._replace(records=min(s.records, cut.get(k) or s.records)) for k, s in self.splits.items()
    }
    return dataclasses.replace(self, splits=splits)

  def _batches(self, split: str, locate: _Locate, count: int, seed: Optional[int]):
    """The grain pipeline of one split: locate, decode, augment, batch, read ahead."""
    import grain  # here, so that in-memory runs and --help never load it

    o = self.options
    ds = (
      grain.MapDataset.range(count)
      .map(locate)
      .map(_Decode(self.splits[split], self.num_classes, self.layout))
      .map(_Augment(self.layout, self.mean, self.std, seed if o.augment else None))
      .batch(locate.per, drop_remainder=True)
      .to_iter_dataset(grain.ReadOptions(num_threads=o.prefetch, prefetch_buffer_size=o.prefetch))
    )
    if o.workers:
      from absl import flags

      if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; take the defaults
        flags.FLAGS.mark_as_parsed()
      options = grain.MultiprocessingOptions(
        num_workers=o.workers, per_worker_buffer_size=o.prefetch
      )
      ds = ds.mp_prefetch(options)
    return iter(ds)

  def train_batches(self, batch_size, seed, start_step=0, rows=slice(None), stop=None):
    """Yields ``(step, x, y)``: ``rows`` of global batch ``step``, from ``start_step``
    until ``stop`` (a step) or forever."""
    n = self.num_train
    if n < batch_size:
      raise UsageError(f"batch size {batch_size} exceeds the {n} training examples")
    lo, hi, _ = rows.indices(batch_size)
    count = UNBOUNDED if stop is None else max(0, stop - start_step) * (hi - lo)
    it = self._batches("train", _Locate(n, batch_size, seed, start_step, (lo, hi)), count, seed)
    try:
      for k, b in enumerate(it):
        yield start_step + k, b["image"], b["label"]
    finally:
      getattr(it, "close", lambda: None)()

  def eval_batches(self, batch_size: int, split: str = "test", rows: slice = slice(None)):
    """Yields ``(x, y, n_valid)``: ``rows`` of each global batch of the split, in order,
    the last padded with its last record."""
    n = self.splits[split].records
    lo, hi, _ = rows.indices(batch_size)
    count = -(-n // batch_size) * (hi - lo)
    it = self._batches(split, _Locate(n, batch_size, None, 0, (lo, hi)), count, None)
    try:
      for j, b in enumerate(it):
        yield b["image"], b["label"], min(batch_size, n - j * batch_size)
    finally:
      getattr(it, "close", lambda: None)()

  def load(self) -> Dataset:
    """Every record read into memory (``--input memory``), standardised with the whole
    training split's statistics as :mod:`train.data` does."""
    if self.layout.shape is None:
      raise UsageError(f"{self.name} holds images of mixed sizes: read it with --input stream")
    arrays = []
    for name in ("train", "test"):
      split = self.splits[name]
      pairs = [
        sources.decode(split, i, self.num_classes, self.layout) for i in range(split.records)
      ]
      x = np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0
      arrays += [x, np.asarray([p[1] for p in pairs], np.int32)]
    mean, std = images.channel_statistics(arrays[0])
    arrays[0], arrays[2] = [((a - mean) / std).astype(np.float32) for a in arrays[0::2]]
    return Dataset(self.name, self.task, *arrays, self.num_classes)

  @classmethod
  def from_dataset(cls, ds: Dataset, options: StreamOptions) -> "Stream":
    """An in-memory data set read through the same pipeline (``--input stream``)."""
    if ds.task == "regression":
      raise UsageError(f"{ds.name} is a regression data set: it is read in memory only")
    splits = sources.array_splits(ds)
    layout = sources.Layout(ds.input_shape, ds.input_shape, "pad" if ds.augment else "")
    return cls(ds.name, ds.task, ds.num_classes, splits, layout, None, None, options)


def open_stream(name: str, data_dir: Optional[str], options: StreamOptions) -> Stream:
  """A :class:`Stream` of ``tfds:<name>`` (prepared in ``data_dir``) or ``arrayrecord:PATH``.

  Raises:
    UsageError: an unprepared data set, a missing split, or a bad record among those
      the statistics read.
  """
  if name.startswith("tfds:") and len(name) > 5:
    splits, num_classes, declared = sources.tfds_splits(name[5:], data_dir)
  elif name.startswith("arrayrecord:") and len(name) > 12:
    splits, declared = sources.arrayrecord_splits(name[12:], name), None
    num_classes = options.num_classes
    if num_classes is None:
      raise UsageError(f"{name} needs --num-classes: its records carry labels, not their count")
  else:
    raise UsageError(f"{name!r} is not a streamed data set: expected tfds:NAME or arrayrecord:PATH")
  layout = sources.layout_of(splits["train"], num_classes, declared, options.image_size)
  mean, std = sources.image_statistics(splits["train"], num_classes, layout)
  return Stream(name, "classification", num_classes, splits, layout, mean, std, options)


def open_data(
  name: str,
  data_dir: Optional[str] = None,
  seed: int = 0,
  context: int = 128,
  mode: str = "auto",
  options: Optional[StreamOptions] = None,
):
  """The data set ``name`` in memory (:class:`train.inputs.Dataset`) or streamed
  (:class:`Stream`): ``mode`` ``"auto"`` streams ``tfds:`` and ``arrayrecord:`` data
  and holds the rest in memory; ``"memory"`` and ``"stream"`` force either."""
  options = options or StreamOptions()
  streamed = name.startswith(("tfds:", "arrayrecord:"))
  if mode == "auto":
    mode = "stream" if streamed else "memory"
  if name.startswith("arrayrecord:") or (streamed and mode == "stream"):
    found = open_stream(name, data_dir, options)
    return found if mode == "stream" else found.load()
  ds = data.load_dataset(name, data_dir, seed=seed, context=context)
  return ds if mode == "memory" else Stream.from_dataset(ds, options)


def _count(least: int):
  """An argparse type: an integer of at least ``least``."""

  def parse(text: str) -> int:
    try:
      v = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < least:
      raise argparse.ArgumentTypeError(f"expected an integer of at least {least}, got {v}")
    return v

  return parse


def add_options(p: argparse.ArgumentParser) -> None:
  """The command line's input options (``--input``, ``--workers``, ...), in one group."""
  g = p.add_argument_group("input: in memory or streamed")
  g.add_argument(
    "--input",
    choices=("auto", "memory", "stream"),
    default="auto",
    help="hold the data set in host memory, or stream it from disk through grain "
    "(auto: stream tfds: and arrayrecord: data, hold the rest)",
  )
  g.add_argument(
    "--workers",
    type=_count(0),
    default=0,
    help="streamed data: worker processes preparing batches (0: in the training process)",
  )
  g.add_argument(
    "--prefetch",
    type=_count(0),
    default=2,
    help="streamed data: batches prepared ahead, per worker",
  )
  g.add_argument(
    "--image-size",
    type=_count(1),
    default=224,
    help="streamed images of free size (ImageNet-style): side of the square crops",
  )
  g.add_argument(
    "--num-classes", type=_count(1), default=None, help="arrayrecord: data: number of classes"
  )


def options_of(args: argparse.Namespace) -> StreamOptions:
  """The :class:`StreamOptions` of parsed command-line ``args`` (:func:`add_options`)."""
  return StreamOptions(args.workers, args.prefetch, args.image_size, args.num_classes)
