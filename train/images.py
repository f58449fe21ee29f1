"""Images on the host: record decoding, per-channel statistics, and the papers' augmentation.

Record format. An ArrayRecord record is a serialised ``tf.train.Example`` (the
format TFDS and most ImageNet conversions write) with two features: ``image``, the
bytes of a PNG or JPEG file, and ``label``, one int64. :func:`encode_example`
writes one; parsing needs the protocol buffer only (TFDS ships it), not TensorFlow.

Augmentation, drawn from a ``numpy.random.Generator`` per example:

- CIFAR-style (fixed 32x32 images): a random 32x32 window of the image padded
  by 4 zero pixels on each side, then a horizontal flip with probability 1/2 (He
  et al. 2016, "Deep residual learning", section 4.2), after standardisation, so
  the padding is the mean: :func:`pad_crop_flip` (the in-memory path does the
  same on device, :func:`train.data.augment_batch`).
- ImageNet-style (images of any size): a random crop covering 8 %-100 % of the
  image's area with aspect ratio in [3/4, 4/3] (uniform in log-ratio), resized
  to ``size`` x ``size`` bilinearly, then the flip (Szegedy et al. 2015, "Going
  deeper with convolutions"; the ResNet recipe): :func:`random_resized_crop`.
  Evaluation resizes the shorter side to ``size / 0.875`` and takes the central
  ``size`` x ``size``: :func:`center_crop`.
"""

from __future__ import annotations

import io
import math

import numpy as np

__all__ = [
  "center_crop",
  "channel_statistics",
  "decode_example",
  "encode_example",
  "pad_crop_flip",
  "random_resized_crop",
  "write_arrayrecord",
]

SCALE = (0.08, 1.0)  # area fraction of the random-resized crop
RATIO = (3 / 4, 4 / 3)  # its aspect ratio (width / height)
CENTRE_FRACTION = 0.875  # evaluation: the central crop's side over the resized shorter side


def channel_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and standard deviation (+1e-6) of NHWC images, shaped (1, 1, 1, C)."""
  mean = x.mean(axis=(0, 1, 2), keepdims=True)
  std = x.std(axis=(0, 1, 2), keepdims=True) + 1e-6
  return mean, std


def encode_example(image: np.ndarray, label: int, image_format: str = "PNG") -> bytes:
  """One record: ``image`` (uint8, HW or HWC) as a PNG or JPEG file, and ``label``."""
  from PIL import Image
  from tensorflow_datasets.proto import tf_example_pb2

  buf = io.BytesIO()
  img = np.asarray(image, np.uint8)
  Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img).save(
    buf, format=image_format
  )
  ex = tf_example_pb2.Example()
  ex.features.feature["image"].bytes_list.value.append(buf.getvalue())
  ex.features.feature["label"].int64_list.value.append(int(label))
  return ex.SerializeToString()


def decode_example(record: bytes) -> tuple[np.ndarray, int]:
  """``(image, label)`` of one record: uint8 HWC (grey images get one channel).

  Raises:
    ValueError: the record is not such an example, or its image does not decode.
  """
  from PIL import Image
  from tensorflow_datasets.proto import tf_example_pb2

  try:
    ex = tf_example_pb2.Example.FromString(record)
  except Exception as e:  # protobuf's DecodeError
    raise ValueError(f"not a tf.train.Example ({e})") from None
  feats = ex.features.feature
  if "image" not in feats or "label" not in feats:
    raise ValueError(f"features {sorted(feats)} lack 'image' or 'label'")
  data, labels = feats["image"].bytes_list.value, feats["label"].int64_list.value
  if len(data) != 1 or len(labels) != 1:
    raise ValueError("'image' and 'label' must hold one value each")
  try:
    with Image.open(io.BytesIO(data[0])) as im:
      if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")  # palette, CMYK, alpha: as RGB
      img = np.asarray(im)
  except Exception as e:  # PIL raises many types for bad files
    raise ValueError(f"image does not decode ({type(e).__name__}: {e})") from None
  return (img[..., None] if img.ndim == 2 else img), int(labels[0])


def pad_crop_flip(img: np.ndarray, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
  """A random window of ``img`` (HWC) zero-padded by ``pad``, mirrored with probability 1/2."""
  h, w, _ = img.shape
  dy, dx = rng.integers(0, 2 * pad + 1, size=2)
  padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
  out = padded[dy : dy + h, dx : dx + w]
  return out[:, ::-1] if rng.random() < 0.5 else out


def _crop_box(rng: np.random.Generator, h: int, w: int) -> tuple[int, int, int, int]:
  """(top, left, height, width) of a random-resized crop: ten tries at a random area and
  aspect ratio that fit, else the whole image cut to the nearest allowed ratio."""
  for _ in range(10):
    area = h * w * rng.uniform(*SCALE)
    ratio = math.exp(rng.uniform(math.log(RATIO[0]), math.log(RATIO[1])))
    cw, ch = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
  ch, cw = h, w
  if w / h < RATIO[0]:
    ch = round(w / RATIO[0])
  elif w / h > RATIO[1]:
    cw = round(h * RATIO[1])
  return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resize(img: np.ndarray, box: tuple[float, float, float, float], size: int) -> np.ndarray:
  """The ``(left, top, right, bottom)`` region of uint8 HWC ``img`` resized bilinearly."""
  from PIL import Image

  grey = img.shape[-1] == 1
  out = np.asarray(
    Image.fromarray(img[..., 0] if grey else img).resize(
      (size, size), Image.Resampling.BILINEAR, box=box
    )
  )
  return out[..., None] if grey else out


def random_resized_crop(img: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """A random crop of uint8 HWC ``img`` resized to ``size`` x ``size``, mirrored with
  probability 1/2 (see the module docstring)."""
  top, left, ch, cw = _crop_box(rng, *img.shape[:2])
  out = _resize(img, (left, top, left + cw, top + ch), size)
  return out[:, ::-1] if rng.random() < 0.5 else out


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """The evaluation view of uint8 HWC ``img``: its centre, ``size`` x ``size``, at the
  scale that makes the shorter side ``size / 0.875``."""
  h, w = img.shape[:2]
  side = min(h, w) * CENTRE_FRACTION  # the crop's side in the original's pixels
  top, left = (h - side) / 2, (w - side) / 2
  return _resize(img, (left, top, left + side, top + side), size)


def write_arrayrecord(path: str, image_array, labels, image_format: str = "PNG") -> None:
  """Writes uint8 images and their labels to one ArrayRecord file, a record each
  (:func:`encode_example`): a small data set for ``arrayrecord:``."""
  from array_record.python.array_record_module import ArrayRecordWriter

  writer = ArrayRecordWriter(path, "group_size:1")
  try:
    for img, label in zip(image_array, labels):
      writer.write(encode_example(img, int(label), image_format))
  finally:
    writer.close()
