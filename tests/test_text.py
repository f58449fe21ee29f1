"""Byte-level text (train.text): windows, the split by position, the default corpus."""

import os
import zlib

import numpy as np
import pytest

from train import data as data_lib
from train import text
from train.errors import UsageError


@pytest.fixture(scope="module")
def corpus():
  return data_lib.load_dataset("text", context=16).subset(64, 16)


def test_windows_hold_next_byte_targets():
  data = np.arange(50, dtype=np.uint8)
  x, y = text.windows(data, 16)
  assert x.shape == y.shape == (3, 16) and x.dtype == np.int32
  np.testing.assert_array_equal(x.ravel(), np.arange(48))
  np.testing.assert_array_equal(y.ravel(), np.arange(1, 49))


def test_text_path_split_by_position(tmp_path):
  data = bytes(range(256)) * 40  # 10,240 bytes
  (tmp_path / "b.txt").write_bytes(data[5000:])
  (tmp_path / "a.txt").write_bytes(data[:5000])
  (tmp_path / ".hidden").write_bytes(b"x" * 999)
  ds = text.load_text(f"text:{tmp_path}", context=16)
  n = len(data)
  cut1, cut2 = int(n * 0.9), int(n * 0.9) + int(n * 0.05)
  for x, y, part in (
    (ds.x_train, ds.y_train, data[:cut1]),
    (ds.x_val, ds.y_val, data[cut1:cut2]),
    (ds.x_test, ds.y_test, data[cut2:]),
  ):
    k = (len(part) - 1) // 16
    assert x.shape == (k, 16)
    np.testing.assert_array_equal(x.ravel(), np.frombuffer(part[: 16 * k], np.uint8))
    np.testing.assert_array_equal(y.ravel(), np.frombuffer(part[1 : 16 * k + 1], np.uint8))
  full = data_lib.load_dataset(f"text:{tmp_path}", context=16)
  assert full.task == "language" and full.num_classes == 256
  np.testing.assert_array_equal(full.x_val, ds.x_val)
  single = text.load_text(f"text:{tmp_path / 'a.txt'}", context=16)
  assert len(single.x_train) == (int(5000 * 0.9) - 1) // 16


def test_text_bad_input(tmp_path):
  with pytest.raises(UsageError, match="neither a file nor a folder"):
    text.load_text(f"text:{tmp_path / 'missing'}")
  (tmp_path / "small.txt").write_bytes(b"hello world" * 3)
  with pytest.raises(UsageError, match="too small"):
    text.load_text(f"text:{tmp_path / 'small.txt'}", context=16)


def test_default_corpus_is_the_stdlib_in_crc_order(corpus):
  files = text.stdlib_files()
  root = os.path.dirname(os.__file__)
  rels = [os.path.relpath(f, root).replace(os.sep, "/") for f in files]
  assert [zlib.crc32(r.encode()) for r in rels] == sorted(zlib.crc32(r.encode()) for r in rels)
  assert not any("site-packages" in r for r in rels) and all(r.endswith(".py") for r in rels)
  head = b"".join(open(f, "rb").read() for f in files[:3])[: 16 * 4]
  np.testing.assert_array_equal(corpus.x_train[:4].ravel(), np.frombuffer(head, np.uint8))
