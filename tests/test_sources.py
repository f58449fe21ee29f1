"""Streamed sources: finding the splits, the layout and statistics, and one-line errors
for bad data."""

import numpy as np
import pytest

from train import images, sources, stream
from train.errors import UsageError


def _records(path, pairs):
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(str(path), "group_size:1")
  for record in pairs:
    writer.write(record)
  writer.close()


def _good(n, shape=(8, 8, 3), seed=0):
  rng = np.random.default_rng(seed)
  return [
    images.encode_example(rng.integers(0, 256, shape, dtype=np.uint8), int(rng.integers(0, 10)))
    for _ in range(n)
  ]


def _open(folder, **kw):
  return stream.open_data(
    f"arrayrecord:{folder}", options=stream.StreamOptions(num_classes=10, **kw)
  )


def test_missing_split_and_missing_folder(tmp_path):
  _records(tmp_path / "train.array_record", _good(8))
  with pytest.raises(UsageError, match=r"has no test split: expected files named \*test\*"):
    _open(tmp_path)
  _records(tmp_path / "data-validation.array_record-00000-of-00001", _good(4))
  assert _open(tmp_path).num_test == 4  # a validation split stands in for the test split
  with pytest.raises(UsageError, match="is not a folder"):
    _open(tmp_path / "nowhere")
  with pytest.raises(UsageError, match="needs --num-classes"):
    stream.open_data(f"arrayrecord:{tmp_path}")


def test_an_unprepared_tfds_data_set_gets_the_build_hint(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(
    UsageError, match=r"prepare it with `tfds build cifar10 --file_format=array_rec"
  ):
    stream.open_data("tfds:cifar10", data_dir=str(tmp_path))


def test_bad_records_stop_with_their_index(tmp_path):
  _records(tmp_path / "train.array_record", _good(12))
  bad = _good(6)
  bad[4] = b"\x08\x96\x01 garbage"
  _records(tmp_path / "test.array_record", bad)
  st = _open(tmp_path)  # the training records (all read for the statistics) are good
  # Met while streaming, inside grain's reading threads: the same one line.
  with pytest.raises(UsageError, match=r"^record 4 of the test split of arrayrecord:.* cannot be"):
    list(st.eval_batches(3))


def test_labels_out_of_range_and_mixed_shapes(tmp_path):
  good = _good(12)
  folder = tmp_path / "labels"
  folder.mkdir()
  _records(folder / "test.array_record", good[:4])
  img = np.zeros((8, 8, 3), np.uint8)
  _records(folder / "train.array_record", good[:7] + [images.encode_example(img, 12)] + good[8:])
  with pytest.raises(
    UsageError, match=r"record 7 of the train split .* label 12, outside \[0, 10\)"
  ):
    _open(folder)
  folder = tmp_path / "shapes"
  folder.mkdir()
  _records(folder / "test.array_record", good[:4])
  odd = images.encode_example(np.zeros((8, 9, 3), np.uint8), 1)
  records = _good(40)
  # Record 1 is not among the 16 the layout looks at, so the layout is 8x8x3 and the
  # statistics, which read every record, meet it.
  assert 1 not in sources._spread(40, 16)
  _records(folder / "train.array_record", records[:1] + [odd] + records[2:])
  with pytest.raises(UsageError, match=r"record 1 of .* \(8, 9, 3\) image .* mixed image shapes"):
    _open(folder)


def test_images_of_free_size_get_the_resized_layout(tmp_path):
  rng = np.random.default_rng(0)
  recs = [
    images.encode_example(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), i % 10)
    for i, (h, w) in enumerate(rng.integers(10, 40, size=(20, 2)))
  ]
  recs[3] = images.encode_example(rng.integers(0, 256, (20, 30, 1), dtype=np.uint8), 3)  # grey
  _records(tmp_path / "train.array_record", recs)
  _records(tmp_path / "test.array_record", recs[:5])
  st = _open(tmp_path, image_size=12)
  assert st.layout == sources.Layout(None, (12, 12, 3), "resized")
  x = np.concatenate([xb for xb, *_ in st.eval_batches(5)])
  assert x.shape == (5, 12, 12, 3)
  (_, xt, _), *_ = st.train_batches(4, seed=0, stop=5)
  assert xt.shape == (4, 12, 12, 3) and np.isfinite(xt).all()


def test_statistics_read_an_even_spread_within_the_budget(tmp_path, monkeypatch):
  rng = np.random.default_rng(1)
  raw = rng.integers(0, 256, (30, 4, 4, 3), dtype=np.uint8)
  _records(tmp_path / "train.array_record", [images.encode_example(x, 0) for x in raw])
  _records(tmp_path / "test.array_record", [images.encode_example(raw[0], 0)])
  monkeypatch.setattr(sources, "STATS_BYTES", 4 * 4 * 4 * 3 * 7)  # room for 7 images
  st = _open(tmp_path)
  picked = raw[np.round(np.linspace(0, 29, 7)).astype(int)].astype(np.float64) / 255.0
  np.testing.assert_allclose(st.mean, picked.mean(axis=(0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(st.std, picked.std(axis=(0, 1, 2)) + 1e-6, rtol=1e-5)
