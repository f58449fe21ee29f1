"""Host-side image work: the record format, the crops and flips, the statistics."""

import math

import numpy as np
import pytest

from train import images


def _ramp(h, w):
  """A uint8 image whose red channel is the row and green the column (h, w <= 256)."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return np.stack([rows, cols, np.zeros_like(rows)], -1).astype(np.uint8)


def test_records_round_trip_and_bad_ones_say_why():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  img, label = images.decode_example(images.encode_example(rgb, 9))
  np.testing.assert_array_equal(img, rgb)  # PNG is lossless
  assert label == 9
  grey, _ = images.decode_example(images.encode_example(rgb[..., :1], 0))
  np.testing.assert_array_equal(grey, rgb[..., :1])
  with pytest.raises(ValueError, match="tf.train.Example"):
    images.decode_example(b"\xff\xfe not a protocol buffer")
  record = images.encode_example(rgb, 1)
  broken = record.replace(record[40:60], b"\0" * 20)  # inside the PNG bytes
  with pytest.raises(ValueError, match="image does not decode"):
    images.decode_example(broken)


def test_pad_crop_flip_is_a_window_of_the_zero_padded_image():
  x = np.random.default_rng(1).normal(size=(32, 32, 3)).astype(np.float32)
  padded = np.pad(x, ((4, 4), (4, 4), (0, 0)))
  seen = set()
  for seed in range(40):
    out = images.pad_crop_flip(x, np.random.default_rng(seed))
    hits = [
      (dy, dx, f)
      for dy in range(9)
      for dx in range(9)
      for f in (False, True)
      if np.array_equal(out, padded[dy : dy + 32, dx : dx + 32][:, :: -1 if f else 1])
    ]
    assert hits, seed
    seen.add(hits[0][2])
  assert seen == {False, True}


def test_random_resized_crop_boxes_keep_to_the_area_and_ratio_ranges():
  rng = np.random.default_rng(2)
  for _ in range(200):
    h, w = rng.integers(20, 300, size=2)
    top, left, ch, cw = images._crop_box(rng, int(h), int(w))
    assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
    ratio, area = cw / ch, ch * cw / (h * w)
    # Rounding to whole pixels moves the ratio and area a little past the bounds.
    tol = 1 / min(ch, cw) + 1e-9
    assert images.RATIO[0] * (1 - tol) <= ratio <= images.RATIO[1] * (1 + tol)
    assert area <= 1


def test_random_resized_crop_takes_a_region_and_resizes_it():
  img = _ramp(200, 120)
  for seed in range(10):
    out = images.random_resized_crop(img, np.random.default_rng(seed), 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.uint8
    rows, cols = out[..., 0].astype(int), out[..., 1].astype(int)
    if cols[0, 0] > cols[0, -1]:  # mirrored
      cols = cols[:, ::-1]
    # Rows grow down and columns across, within the image: a crop, not a warp.
    assert np.all(np.diff(rows, axis=0) >= 0) and np.all(np.diff(cols, axis=1) >= 0)
    assert rows.max() < 200 and cols.max() < 120


def test_center_crop_is_the_middle_at_the_evaluation_scale():
  img = _ramp(160, 240)
  out = images.center_crop(img, 28)
  assert out.shape == (28, 28, 3)
  side = 160 * images.CENTRE_FRACTION  # 140 of the shorter side's 160 pixels
  rows, cols = out[..., 0].astype(float), out[..., 1].astype(float)
  assert abs(rows.mean() - 79.5) < 1.5 and abs(cols.mean() - 119.5) < 1.5  # centred
  assert abs((rows.max() - rows.min()) - side * 27 / 28) < 6  # spans the crop
  grey = images.center_crop(img[..., :1], 8)
  assert grey.shape == (8, 8, 1)


def test_channel_statistics_are_per_channel():
  x = np.random.default_rng(3).normal([1.0, -2.0, 5.0], [0.5, 2.0, 1.0], (40, 6, 6, 3))
  mean, std = images.channel_statistics(x.astype(np.float32))
  assert mean.shape == std.shape == (1, 1, 1, 3)
  flat = x.reshape(-1, 3)
  np.testing.assert_allclose(mean.ravel(), flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(std.ravel(), flat.std(0) + 1e-6, rtol=1e-5)
  assert math.isclose(float(std.ravel()[1]), 2.0, rel_tol=0.1)
