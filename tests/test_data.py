"""Data sources: shapes, determinism, normalisation, and one-line errors."""

import gzip
import os
import struct

import jax
import numpy as np
import pytest

from train import data as data_lib
from train.errors import UsageError


def _write_idx(path, arr):
  header = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def idx_dir(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 30), ("t10k", 10)):
    _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
    _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)))
  return tmp_path


def test_digits_split_is_seeded_and_standardised():
  a = data_lib.load_digits(seed=1)
  b = data_lib.load_digits(seed=1)
  c = data_lib.load_digits(seed=2)
  np.testing.assert_array_equal(a.y_train, b.y_train)
  assert not np.array_equal(a.y_train, c.y_train)
  assert a.x_train.shape[1:] == (8, 8, 1) and a.x_train.dtype == np.float32
  assert len(a.x_train) + len(a.x_test) == 1797
  assert abs(float(a.x_train.mean())) < 1e-4
  assert abs(float(a.x_train.std()) - 1.0) < 1e-3
  assert a.task == "classification" and a.num_classes == 10 and not a.augment


def test_diabetes_regression_targets_keep_their_scale():
  from sklearn.datasets import load_diabetes

  ds = data_lib.load_diabetes(seed=0)
  assert ds.task == "regression" and ds.y_train.shape[1:] == (1,)
  # Training targets are standardised: mean 0, standard deviation 1 (float32 sums).
  assert abs(float(ds.y_train.mean())) < 1e-5
  assert abs(float(ds.y_train.std()) - 1.0) < 1e-5
  # Scaled back by target_scale (and shifted by the training mean, the one unknown),
  # train and test together are the raw targets: so target_scale is the raw training
  # targets' standard deviation.
  raw = np.sort(load_diabetes().target)
  both = np.concatenate([ds.y_train[:, 0], ds.y_test[:, 0]]).astype(np.float64) * ds.target_scale
  shift = raw.mean() - both.mean()
  np.testing.assert_allclose(np.sort(both) + shift, raw, atol=1e-3)


def test_idx_round_trip(idx_dir):
  ds = data_lib.load_idx_dataset("mnist", str(idx_dir))
  raw = data_lib.read_idx(str(idx_dir / "train-images-idx3-ubyte"))
  assert raw.shape == (30, 28, 28)
  assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_test.shape == (10, 28, 28, 1)
  x = raw.astype(np.float32) / 255.0
  expected = (x - x.mean()) / (x.std() + 1e-6)
  np.testing.assert_allclose(ds.x_train[..., 0], expected, atol=1e-4)


def test_corrupt_and_missing_idx_give_one_line_errors(idx_dir, tmp_path):
  path = idx_dir / "train-labels-idx1-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(b"\x00\x00\x08\x01" + struct.pack(">I", 30) + b"\x01" * 5)  # truncated
  with pytest.raises(UsageError, match="truncated"):
    data_lib.load_idx_dataset("mnist", str(idx_dir))
  with gzip.open(path, "wb") as f:
    f.write(b"garbage!")
  with pytest.raises(UsageError, match="magic"):
    data_lib.load_idx_dataset("mnist", str(idx_dir))
  os.remove(path)
  with pytest.raises(UsageError, match="missing IDX file"):
    data_lib.load_idx_dataset("mnist", str(idx_dir))
  with pytest.raises(UsageError, match="dataset-fashion-mnist"):
    data_lib.load_idx_dataset("fashion_mnist", str(tmp_path / "nowhere"))


def test_labels_out_of_range_are_rejected(idx_dir):
  _write_idx(idx_dir / "t10k-labels-idx1-ubyte.gz", np.full((10,), 12))
  with pytest.raises(UsageError, match="labels outside"):
    data_lib.load_idx_dataset("mnist", str(idx_dir))


def test_unknown_dataset():
  with pytest.raises(UsageError, match="unknown data set 'nope'"):
    data_lib.load_dataset("nope")


def test_tfds_through_data_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=12):
    ds = data_lib.load_dataset("tfds:cifar10")
    raw = {s: tfds.data_source("cifar10", split=s) for s in ("train", "test")}
    raw = {s: [r[i] for i in range(len(r))] for s, r in raw.items()}
    images = {s: np.stack([np.asarray(e["image"]) for e in r]) for s, r in raw.items()}
    labels = {s: np.asarray([int(e["label"]) for e in r]) for s, r in raw.items()}
  assert ds.x_train.shape == (12, 32, 32, 3) and ds.num_classes == 10
  assert ds.augment
  assert ds.y_train.dtype == np.int32
  np.testing.assert_array_equal(ds.y_train, labels["train"])
  np.testing.assert_array_equal(ds.y_test, labels["test"])
  # Scaled to [0, 1], then standardised per channel with the training split's statistics.
  x_tr, x_te = (images[s].astype(np.float64) / 255.0 for s in ("train", "test"))
  mean, std = x_tr.mean(axis=(0, 1, 2)), x_tr.std(axis=(0, 1, 2)) + 1e-6
  np.testing.assert_allclose(ds.x_train, (x_tr - mean) / std, atol=1e-5)
  np.testing.assert_allclose(ds.x_test, (x_te - mean) / std, atol=1e-5)


def test_augment_batch_crops_and_flips():
  x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype(np.float32)
  out = np.asarray(data_lib.augment_batch(jax.random.key(0), x))
  assert out.shape == x.shape
  for i in range(8):
    img = out[i]
    # Every output is a shifted window of the zero-padded input, possibly mirrored.
    padded = np.pad(x[i], ((4, 4), (4, 4), (0, 0)))
    hits = [
      (dy, dx, f)
      for dy in range(9)
      for dx in range(9)
      for f in (False, True)
      if np.array_equal(
        img,
        (padded[dy : dy + 32, dx : dx + 32][:, ::-1] if f else padded[dy : dy + 32, dx : dx + 32]),
      )
    ]
    assert hits, i
