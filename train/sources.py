"""Where a streamed data set's records come from, and what a good record is.

A :class:`Split` gives random access to the records of one split: a
``tfds.data_source`` split (records already decoded by TFDS), the ArrayRecord
files of a folder (records as :mod:`train.images` describes), or arrays held in
memory. :func:`decode` turns record ``i`` into a checked ``(image, label)``.

Bad data stops the run with one line naming the record: a record that does not
decode, a label outside ``[0, num_classes)``, an image whose shape differs from
the data set's (for data of fixed size), a missing split or an unprepared data
set. A bad record is not skipped: skipping would change every later batch of the
process that met it, and a resumed run would read other batches than an
uninterrupted one.

Layout (:func:`layout_of`). Images of one fixed shape (declared by TFDS, or the
same in 16 records spread over an ArrayRecord split) are used as they are, with
CIFAR-style augmentation for 32x32 RGB; images of free size (ImageNet) are cropped
to ``image_size`` squares.

Statistics (:func:`image_statistics`). The mean and standard deviation per
channel come from at most :data:`STATS_BYTES` of float32 training images evenly
spread over the split, in their evaluation view; when every record fits (the
tests' sets; CIFAR-10, 600 MiB decoded, is sampled) they are exactly the ones
the in-memory path computes.
"""

from __future__ import annotations

import glob
import os
from typing import Any, NamedTuple, Optional

import numpy as np

from train import images
from train.errors import UsageError

__all__ = [
  "STATS_BYTES",
  "Layout",
  "Split",
  "array_splits",
  "arrayrecord_splits",
  "decode",
  "image_statistics",
  "layout_of",
  "tfds_splits",
]

#: Float32 bytes of training images the statistics read (32 MiB: 2,730 CIFAR images).
STATS_BYTES = 32 << 20
_STOP = (
  "; the stream stops at a bad record rather than skip it, so that every process and "
  "every resumed run reads the same batches: rewrite or remove it"
)


class Layout(NamedTuple):
  """The images of a streamed data set.

  Attributes:
    shape: Every record's image shape, or None for images of free size.
    out: The shape the model sees.
    crop: ``"pad"`` (CIFAR-style), ``"resized"`` (ImageNet-style) or ``""`` (none).
  """

  shape: Optional[tuple]
  out: tuple
  crop: str


class Split(NamedTuple):
  """Random access to the records of one split.

  Attributes:
    source: ``len(source)`` and ``source[i]``.
    kind: ``"tfds"``, ``"arrayrecord"`` or ``"arrays"`` (an ``(x, y)`` pair a record).
    where: The split as messages name it: ``"the train split of tfds:cifar10"``.
    records: How many of the first records to use.
  """

  source: Any
  kind: str
  where: str
  records: int


class _Arrays(NamedTuple):
  x: np.ndarray
  y: np.ndarray

  def __len__(self):
    return len(self.x)

  def __getitem__(self, i):
    return self.x[i], self.y[i]


def decode(split: Split, i: int, num_classes: int, layout: Optional[Layout]):
  """Record ``i`` of ``split`` as ``(image, label)``: uint8 HWC and int32, checked
  against ``num_classes`` and ``layout`` (records of ``arrays`` are passed as they are).

  Raises:
    UsageError: one line naming the record (module docstring).
  """
  try:
    raw = split.source[i]
  except Exception as e:  # a file gone, unreadable or truncated
    raise UsageError(f"record {i} of {split.where} cannot be read ({e}){_STOP}") from None
  if split.kind == "arrays":
    return raw
  try:
    if split.kind == "tfds":
      img, label = np.asarray(raw["image"]), int(raw["label"])
      img = img[..., None] if img.ndim == 2 else img
    else:
      img, label = images.decode_example(raw)
  except Exception as e:
    raise UsageError(f"record {i} of {split.where} cannot be decoded ({e}){_STOP}") from None
  if not 0 <= label < num_classes:
    raise UsageError(f"record {i} of {split.where} has label {label}, outside [0, {num_classes})")
  if layout is not None and layout.shape is not None and img.shape != layout.shape:
    raise UsageError(
      f"record {i} of {split.where} holds a {img.shape} image where the data set's are "
      f"{layout.shape}: mixed image shapes"
    )
  if layout is not None and img.shape[-1] != layout.out[-1]:
    img = np.broadcast_to(img, img.shape[:-1] + layout.out[-1:]).copy()  # grey among RGB
  return img, np.int32(label)


def tfds_splits(name: str, data_dir: Optional[str]) -> tuple[dict, int, tuple]:
  """The train and test :class:`Split` of ``tfds:<name>`` prepared in ``data_dir``,
  its class count and its declared image shape (:func:`train.data.open_tfds`)."""
  from train.data import open_tfds

  found = open_tfds(name, data_dir)
  splits = {
    k: Split(src, "tfds", f"the {k} split of tfds:{name}", len(src))
    for k, src in (("train", found.train), ("test", found.test))
  }
  return splits, found.num_classes, found.image_shape


def _arrayrecord_split(path: str, split: str, name: str) -> Optional[Split]:
  files = sorted(glob.glob(os.path.join(path, f"*{split}*.array_record*")))
  if not files:
    return None
  import grain

  try:  # the record index stays on disk: memory does not grow with the data set
    source = grain.sources.ArrayRecordDataSource(
      files, reader_options={"index_storage_option": "offloaded", "footer_prefetch_bytes": "0"}
    )
  except Exception as e:
    raise UsageError(f"cannot open the ArrayRecord files {files} ({e})") from None
  return Split(source, "arrayrecord", f"the {split} split of {name}", len(source))


def arrayrecord_splits(path: str, name: str) -> dict:
  """The train and test :class:`Split` of the ArrayRecord folder ``path``: files named
  ``*train*.array_record*``, and ``*test*`` (or ``*validation*``) ones.

  Raises:
    UsageError: ``path`` is not a folder, or a split has no files.
  """
  if not os.path.isdir(path):
    raise UsageError(f"{name}: {path!r} is not a folder of ArrayRecord files")
  test = _arrayrecord_split(path, "test", name) or _arrayrecord_split(path, "validation", name)
  splits = {"train": _arrayrecord_split(path, "train", name), "test": test}
  for k, s in splits.items():
    if s is None:
      raise UsageError(
        f"{name} has no {k} split: expected files named *{k}*.array_record* in {path}"
        + (" (or *validation*)" if k == "test" else "")
      )
  return splits


def array_splits(ds) -> dict:
  """The splits of an in-memory :class:`train.inputs.Dataset`, as :class:`Split` s."""
  pairs = {"train": (ds.x_train, ds.y_train), "test": (ds.x_test, ds.y_test)}
  if ds.x_val is not None:
    pairs["val"] = (ds.x_val, ds.y_val)
  return {
    k: Split(_Arrays(*xy), "arrays", f"the {k} split of {ds.name}", len(xy[0]))
    for k, xy in pairs.items()
  }


def _spread(n: int, k: int) -> np.ndarray:
  """``min(n, k)`` record indices evenly spread over ``n``."""
  return np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(np.int64))


def layout_of(split: Split, num_classes: int, declared, image_size: int) -> Layout:
  """The :class:`Layout` of a split: from the ``declared`` shape (None: look at 16
  records spread over the split)."""
  if declared is None:
    seen = {decode(split, i, num_classes, None)[0].shape for i in _spread(split.records, 16)}
    declared = seen.pop() if len(seen) == 1 else (None, None, max(s[-1] for s in seen))
  if None in declared[:2]:
    return Layout(None, (image_size, image_size, declared[-1]), "resized")
  return Layout(tuple(declared), tuple(declared), "pad" if declared == (32, 32, 3) else "")


def image_statistics(split: Split, num_classes: int, layout: Layout):
  """Per-channel mean and standard deviation, each of shape (C,), of the training
  images within :data:`STATS_BYTES` (module docstring)."""
  k = max(1, STATS_BYTES // (4 * int(np.prod(layout.out))))
  views = []
  for i in _spread(split.records, k):
    img = decode(split, int(i), num_classes, layout)[0]
    views.append(images.center_crop(img, layout.out[0]) if layout.crop == "resized" else img)
  mean, std = images.channel_statistics(np.stack(views).astype(np.float32) / 255.0)
  return mean.reshape(-1), std.reshape(-1)
