"""Data sets for training, all held in host memory as NumPy arrays.

Sources:

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, ships with
  scikit-learn; the default, so the demo needs nothing downloaded).
- ``diabetes``: scikit-learn's diabetes regression data (442 rows, 10 features).
- ``fashion_mnist`` / ``mnist``: IDX files (``train-images-idx3-ubyte.gz`` ...)
  in a directory; Fashion-MNIST defaults to ``/usr/share/datasets/fashion-mnist``,
  where Debian's ``dataset-fashion-mnist`` package installs it.
- ``tfds:<name>``: any image-classification data set a user already has in
  TensorFlow Datasets, read through ``tfds.data_source`` (no TensorFlow needed).
- ``text`` / ``text:PATH``: bytes for next-byte prediction, the Python standard
  library's sources or any file or folder (:mod:`train.text`).

Every split is deterministic given the seed; images are scaled to [0, 1] and
standardised with the training split's per-channel mean and standard deviation;
regression features and targets are standardised with training statistics (the
target scale is kept so metrics are reported in the original units).
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import Any, NamedTuple

import numpy as np

from train.errors import UsageError
from train.images import channel_statistics

# The in-memory record and its batch order live in train.inputs (the loop's view of
# data, shared with the streamed path); they are imported here for callers of train.data.
from train.inputs import (  # noqa: F401
  Dataset,
  batches,
  epoch_permutation,
  eval_batches,
  steps_per_epoch,
)
from train.text import load_text

__all__ = [
  "DATASET_NAMES",
  "DEFAULT_IDX_DIRS",
  "IDX_FILES",
  "TfdsSplits",
  "augment_batch",
  "load_dataset",
  "load_diabetes",
  "load_digits",
  "load_idx_dataset",
  "load_tfds",
  "read_idx",
  "open_tfds",
]

#: Where Debian's dataset packages install the IDX files, by data set.
DEFAULT_IDX_DIRS = {
  "fashion_mnist": "/usr/share/datasets/fashion-mnist",
  "mnist": "/usr/share/datasets/mnist",
}
#: The IDX file names of each split (images, labels).
IDX_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: The names ``--dataset`` accepts.
DATASET_NAMES = ("digits", "diabetes", "fashion_mnist", "mnist", "tfds:<name>", "text", "text:PATH")


def _split(x, y, test_fraction: float, seed: int):
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(x))
  n_test = int(round(len(x) * test_fraction))
  test, train = perm[:n_test], perm[n_test:]
  return x[train], y[train], x[test], y[test]


def _standardise_images(x_train, x_test):
  mean, std = channel_statistics(x_train)
  return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _check_labels(y: np.ndarray, num_classes: int, name: str) -> None:
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise UsageError(
      f"data set {name!r} has labels outside [0, {num_classes}): "
      f"found {int(y.min())}..{int(y.max())}"
    )


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
  """scikit-learn's 8×8 handwritten digits (shipped with it): images in [0, 1], standardised
  with the training split's statistics, a random ``test_fraction`` held out by ``seed``."""
  from sklearn.datasets import load_digits as sk_digits

  d = sk_digits()
  x = (d.images.astype(np.float32) / 16.0)[..., None]
  y = d.target.astype(np.int32)
  x_tr, y_tr, x_te, y_te = _split(x, y, test_fraction, seed)
  x_tr, x_te = _standardise_images(x_tr, x_te)
  return Dataset("digits", "classification", x_tr, y_tr, x_te, y_te, 10)


def load_diabetes(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
  """scikit-learn's diabetes regression (shipped with it): features and target standardised
  with the training split's statistics (``target_scale`` undoes the target's)."""
  from sklearn.datasets import load_diabetes as sk_diabetes

  d = sk_diabetes()
  x = d.data.astype(np.float32)
  y = d.target.astype(np.float32)[:, None]
  x_tr, y_tr, x_te, y_te = _split(x, y, test_fraction, seed)
  mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
  x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
  ymu, ysd = float(y_tr.mean()), float(y_tr.std())
  y_tr, y_te = (y_tr - ymu) / ysd, (y_te - ymu) / ysd
  return Dataset(
    "diabetes",
    "regression",
    x_tr,
    y_tr.astype(np.float32),
    x_te,
    y_te.astype(np.float32),
    1,
    target_scale=ysd,
  )


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a NumPy array.

  Raises:
    UsageError: if the file is missing, truncated or not an IDX file.
  """
  candidates = [path, path + ".gz"] if not path.endswith(".gz") else [path]
  found = next((p for p in candidates if os.path.exists(p)), None)
  if found is None:
    raise UsageError(f"missing IDX file {candidates[-1]}")
  opener = gzip.open if found.endswith(".gz") else open
  try:
    with opener(found, "rb") as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise UsageError(f"cannot read {found}: {e}") from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
    raise UsageError(f"{found} is not an unsigned-byte IDX file (bad magic number)")
  ndim = raw[3]
  dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise UsageError(f"{found} is truncated: expected {int(np.prod(dims))} values, got {data.size}")
  return data.reshape(dims)


def load_idx_dataset(name: str, data_dir: str | None = None) -> Dataset:
  """Loads an MNIST-format data set from IDX files in ``data_dir``."""
  data_dir = data_dir or DEFAULT_IDX_DIRS.get(name, "")
  if not os.path.isdir(data_dir):
    hint = (
      "install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist)"
      if name == "fashion_mnist"
      else "download the four IDX files (train/t10k images and labels)"
    )
    raise UsageError(
      f"data directory {data_dir!r} for {name!r} not found: {hint}, or pass --data-dir"
    )
  arrays = {}
  for split, (img, lab) in IDX_FILES.items():
    x = read_idx(os.path.join(data_dir, img))
    y = read_idx(os.path.join(data_dir, lab))
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
      raise UsageError(
        f"IDX files of split {split!r} in {data_dir} disagree: {x.shape} vs {y.shape}"
      )
    arrays[split] = (x.astype(np.float32)[..., None] / 255.0, y.astype(np.int32))
  (x_tr, y_tr), (x_te, y_te) = arrays["train"], arrays["test"]
  _check_labels(y_tr, 10, name)
  _check_labels(y_te, 10, name)
  x_tr, x_te = _standardise_images(x_tr, x_te)
  return Dataset(name, "classification", x_tr, y_tr, x_te, y_te, 10)


class TfdsSplits(NamedTuple):
  """A prepared TFDS data set's training and test splits, as random-access sources.

  Attributes:
    train, test: ``tfds.data_source`` splits (``test`` is the validation split
      where the data set has no test split, as ImageNet).
    num_classes: The label feature's class count.
    image_shape: The image feature's declared shape (``None`` for a free size).
  """

  train: Any
  test: Any
  num_classes: int
  image_shape: tuple


def open_tfds(name: str, data_dir: str | None = None) -> TfdsSplits:
  """Opens the train and test splits of TFDS data set ``name`` prepared in ``data_dir``
  (TFDS's default directory when ``None``); nothing is downloaded.

  Raises:
    UsageError: the data set is not prepared there (with the ``tfds build`` hint),
      or lacks a split.
  """
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir)
    splits = set(builder.info.splits)
    test_split = "validation" if splits and "test" not in splits else "test"
    missing = [s for s in ("train", test_split) if splits and s not in splits]
    if not missing:
      sources = [
        tfds.data_source(name, split=s, data_dir=data_dir, download=False)
        for s in ("train", test_split)
      ]
      features = builder.info.features
  except Exception as e:  # TFDS raises many types for missing data
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UsageError(
      f"TFDS data set {name!r} is not available ({first}); prepare it with "
      f"`tfds build {name} --file_format=array_record` on a machine with network access "
      "(random access needs that format), then pass --data-dir"
    ) from None
  if missing:
    raise UsageError(
      f"TFDS data set {name!r} has no {missing[0]!r} split (it has {', '.join(sorted(splits))})"
    )
  shape = tuple(features["image"].shape)
  return TfdsSplits(*sources, features["label"].num_classes, shape)


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
  """Loads an image-classification data set through ``tfds.data_source``, whole.

  The data must already be prepared in ``data_dir`` (TFDS's default directory
  when ``None``); nothing is downloaded.
  """
  found = open_tfds(name, data_dir)

  def to_arrays(src):
    n = len(src)
    examples = [src[i] for i in range(n)]
    x = np.stack([np.asarray(e["image"]) for e in examples]).astype(np.float32) / 255.0
    y = np.asarray([int(e["label"]) for e in examples], np.int32)
    if x.ndim == 3:
      x = x[..., None]
    return x, y

  x_tr, y_tr = to_arrays(found.train)
  x_te, y_te = to_arrays(found.test)
  _check_labels(y_tr, found.num_classes, name)
  _check_labels(y_te, found.num_classes, name)
  x_tr, x_te = _standardise_images(x_tr, x_te)
  return Dataset(f"tfds:{name}", "classification", x_tr, y_tr, x_te, y_te, found.num_classes)


def load_dataset(
  name: str, data_dir: str | None = None, seed: int = 0, context: int = 128
) -> Dataset:
  """Loads a data set by name (see the module docstring for the names).

  ``context`` is the window length of the text data sets.
  """
  if name == "digits":
    return load_digits(seed)
  if name == "diabetes":
    return load_diabetes(seed)
  if name in ("fashion_mnist", "mnist"):
    return load_idx_dataset(name, data_dir)
  if name.startswith("tfds:") and len(name) > 5:
    return load_tfds(name[5:], data_dir)
  if name == "text" or name.startswith("text:"):
    return load_text(name, context)
  raise UsageError(f"unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")


def augment_batch(key, x):
  """Random crop (4-pixel zero padding) and horizontal flip, on device.

  Args:
    key: A JAX PRNG key.
    x: A (batch, H, W, C) array.
  """
  import jax
  import jax.numpy as jnp

  b, h, w, _ = x.shape
  k_crop, k_flip = jax.random.split(key)
  padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
  offsets = jax.random.randint(k_crop, (b, 2), 0, 9)

  def crop(img, off):
    return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))

  x = jax.vmap(crop)(padded, offsets)
  flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1, :], x)
