"""Byte-level text for language modelling, from files that every machine with Python has.

- ``text``: the bytes of the running Python's standard-library ``.py`` files. The files
  under ``sysconfig.get_paths()['stdlib']`` (``site-packages`` and ``dist-packages``
  excluded) are put in a fixed pseudo-random order, the CRC-32 of each relative path
  (ties by path), and read in that order until :data:`DEFAULT_BYTES` bytes are
  gathered; the last file is cut there. The corpus changes only with the Python
  version (``Dataset.name`` records it).
- ``text:PATH``: the bytes of one file, or of every regular file under a folder in
  sorted path order (hidden files and folders skipped).

Either corpus is cut by position into train (the first 90 %), validation (the next
5 %) and test (the last 5 %) bytes, and each split into non-overlapping windows of
``context + 1`` bytes: the first ``context`` are the input, the last ``context`` the
targets (the next byte at every position). The vocabulary is the 256 byte values.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import zlib

import numpy as np

from train.errors import UsageError
from train.inputs import Dataset

__all__ = ["DEFAULT_BYTES", "SPLITS", "corpus_bytes", "load_text", "stdlib_files", "windows"]

#: Bytes of the default corpus (4 MiB).
DEFAULT_BYTES = 1 << 22
#: Fractions of the corpus, in order train, validation and test.
SPLITS = (0.90, 0.05, 0.05)
VOCAB = 256


def stdlib_files(root: str | None = None) -> list[str]:
  """The standard library's ``.py`` files, in the corpus order (CRC-32 of the relative path)."""
  root = root or sysconfig.get_paths()["stdlib"]
  found = []
  for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d not in ("site-packages", "dist-packages", "__pycache__"))
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
        found.append((zlib.crc32(rel.encode()), rel))
  return [os.path.join(root, rel) for _, rel in sorted(found)]


def _folder_files(path: str) -> list[str]:
  out = []
  for folder, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    out += [os.path.join(folder, f) for f in sorted(files) if not f.startswith(".")]
  return [p for p in out if os.path.isfile(p)]


def corpus_bytes(path: str | None = None, limit: int | None = DEFAULT_BYTES) -> bytes:
  """The corpus: the standard library's sources (``path=None``) or a file or folder.

  Raises:
    UsageError: if ``path`` does not exist or holds no bytes.
  """
  if path is None:
    files = stdlib_files()
  elif os.path.isdir(path):
    files = _folder_files(path)
  elif os.path.isfile(path):
    files = [path]
  else:
    raise UsageError(f"text corpus {path!r} is neither a file nor a folder")
  chunks, total = [], 0
  for f in files:
    if limit is not None and total >= limit:
      break
    try:
      with open(f, "rb") as fh:
        data = fh.read()
    except OSError as e:
      raise UsageError(f"cannot read {f}: {e}") from None
    chunks.append(data)
    total += len(data)
  text = b"".join(chunks)
  if not text:
    raise UsageError(f"text corpus {path or 'stdlib'!r} is empty")
  return text[:limit] if limit is not None else text


def windows(data: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping ``context + 1``-byte windows: inputs and next-byte targets, int32."""
  n = (len(data) - 1) // context
  x = data[: n * context].reshape(n, context)
  y = data[1 : n * context + 1].reshape(n, context)
  return x.astype(np.int32), y.astype(np.int32)


def load_text(spec: str, context: int = 128) -> Dataset:
  """Loads ``text`` or ``text:PATH`` as a next-byte prediction data set (task ``language``).

  The returned :class:`~train.inputs.Dataset` holds train and test windows and, as
  ``x_val`` / ``y_val``, the validation windows.

  Raises:
    UsageError: for a bad spec or path, or a corpus too small for one window per split.
  """
  if context < 1:
    raise UsageError(f"--context must be positive, got {context}")
  if spec == "text":
    path, name = None, f"text (Python {sys.version_info.major}.{sys.version_info.minor} stdlib)"
  elif spec.startswith("text:") and len(spec) > 5:
    path, name = spec[5:], spec
  else:
    raise UsageError(f"bad text data set {spec!r}: expected text or text:PATH")
  data = np.frombuffer(corpus_bytes(path, DEFAULT_BYTES if path is None else None), np.uint8)
  cuts = np.cumsum([int(len(data) * f) for f in SPLITS[:-1]])
  parts = np.split(data, cuts)
  pairs = [windows(p, context) for p in parts]
  for label, (x, _) in zip(("train", "validation", "test"), pairs):
    if len(x) == 0:
      raise UsageError(
        f"text corpus {name!r} ({len(data)} bytes) is too small: its {label} split holds "
        f"no window of {context + 1} bytes; use a larger corpus or a smaller --context"
      )
  (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = pairs
  return Dataset(name, "language", x_tr, y_tr, x_te, y_te, VOCAB, x_val=x_va, y_val=y_va)
