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

import dataclasses
import gzip
import os
import struct
from typing import Iterator

import numpy as np

from train.errors import UsageError

__all__ = [
  "DATASET_NAMES",
  "DEFAULT_IDX_DIRS",
  "IDX_FILES",
  "Dataset",
  "augment_batch",
  "batches",
  "epoch_permutation",
  "eval_batches",
  "load_dataset",
  "load_diabetes",
  "load_digits",
  "load_idx_dataset",
  "load_tfds",
  "read_idx",
  "steps_per_epoch",
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
  def augment(self) -> bool:
    """Random crop and flip apply to CIFAR-shaped images (32x32 RGB)."""
    return self.task == "classification" and self.input_shape == (32, 32, 3)

  def subset(self, n_train: int | None = None, n_test: int | None = None) -> "Dataset":
    """The first ``n_train`` / ``n_test`` examples (splits are already shuffled)."""
    return dataclasses.replace(
      self,
      x_train=self.x_train[:n_train],
      y_train=self.y_train[:n_train],
      x_test=self.x_test[:n_test],
      y_test=self.y_test[:n_test],
    )


def _split(x, y, test_fraction: float, seed: int):
  rng = np.random.default_rng(seed)
  perm = rng.permutation(len(x))
  n_test = int(round(len(x) * test_fraction))
  test, train = perm[:n_test], perm[n_test:]
  return x[train], y[train], x[test], y[test]


def _standardise_images(x_train, x_test):
  mean = x_train.mean(axis=(0, 1, 2), keepdims=True)
  std = x_train.std(axis=(0, 1, 2), keepdims=True) + 1e-6
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


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
  """Loads an image-classification data set through ``tfds.data_source``.

  The data must already be prepared in ``data_dir`` (TFDS's default directory
  when ``None``); nothing is downloaded.
  """
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(name, data_dir=data_dir)
    splits = builder.info.splits
    test_split = "test" if "test" in splits else "validation"
    sources = {
      s: tfds.data_source(name, split=s, data_dir=data_dir, download=False)
      for s in ("train", test_split)
    }
    num_classes = builder.info.features["label"].num_classes
  except Exception as e:  # TFDS raises many types for missing data
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UsageError(
      f"TFDS data set {name!r} is not available ({first}); prepare it with "
      f"`tfds build {name}` on a machine with network access, then pass --data-dir"
    ) from None

  def to_arrays(src):
    n = len(src)
    examples = [src[i] for i in range(n)]
    x = np.stack([np.asarray(e["image"]) for e in examples]).astype(np.float32) / 255.0
    y = np.asarray([int(e["label"]) for e in examples], np.int32)
    if x.ndim == 3:
      x = x[..., None]
    return x, y

  x_tr, y_tr = to_arrays(sources["train"])
  x_te, y_te = to_arrays(sources[test_split])
  _check_labels(y_tr, num_classes, name)
  _check_labels(y_te, num_classes, name)
  x_tr, x_te = _standardise_images(x_tr, x_te)
  return Dataset(f"tfds:{name}", "classification", x_tr, y_tr, x_te, y_te, num_classes)


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
    from train.text import VOCAB, load_text

    return Dataset(task="language", num_classes=VOCAB, **load_text(name, context)._asdict())
  raise UsageError(f"unknown data set {name!r}; known: {', '.join(DATASET_NAMES)}")


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
