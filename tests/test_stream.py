"""The streamed input path: the same batches as the in-memory path, each process's share,
epochs that differ, augmentation on the host, and exact resume through the loop."""

import os

import jax
import numpy as np
import pytest

from train import cli, data, images, stream
from train.checkpoint import Checkpointer
from train.loop import train_run
from train.registry import make_optimizer, make_schedule

tfds = pytest.importorskip("tensorflow_datasets")


def _write(folder, n_train=40, n_test=10, shape=(32, 32, 3), seed=0):
  """An ArrayRecord folder of random images (PNG) and labels; returns them."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  raw = {}
  for split, n in (("train", n_train), ("test", n_test)):
    x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    images.write_arrayrecord(os.path.join(folder, f"{split}.array_record"), x, y)
    raw[split] = (x, y)
  return raw


def _open(folder, **kw):
  return stream.open_data(
    f"arrayrecord:{folder}", options=stream.StreamOptions(num_classes=10, **kw)
  )


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_arrayrecord_records_stream_as_written(tmp_path):
  raw = _write(tmp_path)
  st = _open(tmp_path, augment=False)
  assert (st.num_train, st.num_test, st.input_shape) == (40, 10, (32, 32, 3))
  # The statistics, computed here independently from the raw pixels (all 40 fit).
  x = raw["train"][0].astype(np.float64) / 255.0
  mean, std = x.mean(axis=(0, 1, 2)), x.std(axis=(0, 1, 2)) + 1e-6
  np.testing.assert_allclose(st.mean, mean, rtol=1e-5)
  for step, xb, yb in st.train_batches(8, seed=2, stop=7):
    epoch, k = divmod(step, 5)
    idx = np.random.default_rng([2, epoch]).permutation(40)[k * 8 : (k + 1) * 8]
    np.testing.assert_array_equal(yb, raw["train"][1][idx])
    np.testing.assert_allclose(xb, (x[idx] - mean) / std, atol=1e-4)
  # --input memory reads the same records into arrays: the same batches, bit for bit.
  mem = stream.open_data(
    f"arrayrecord:{tmp_path}", mode="memory", options=stream.StreamOptions(num_classes=10)
  )
  for (s1, x1, y1), (s2, x2, y2) in zip(
    _take(mem.train_batches(8, 2), 7), st.train_batches(8, 2, stop=7)
  ):
    assert s1 == s2
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  evals = list(st.eval_batches(4))
  assert [n for *_, n in evals] == [4, 4, 2]
  for (a, ya, _), (b, yb, _) in zip(evals, mem.eval_batches(4)):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)


def test_in_memory_data_streamed_give_the_same_batches():
  ds = data.load_digits(seed=0).subset(300, 50)
  st = stream.Stream.from_dataset(ds, stream.StreamOptions())
  for rows in (slice(None), slice(16, 32)):
    mem = ds.train_batches(32, seed=5, start_step=3, rows=rows)
    for (s1, x1, y1), (s2, x2, y2) in zip(_take(mem, 12), st.train_batches(32, 5, 3, rows, 15)):
      assert s1 == s2
      np.testing.assert_array_equal(x1, x2)
      np.testing.assert_array_equal(y1, y2)
  for (a, ya, na), (b, yb, nb) in zip(ds.eval_batches(32), st.eval_batches(32)):
    assert na == nb
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)


def test_tfds_mock_cifar_streams_as_the_in_memory_path_loads_it():
  with tfds.testing.mock_data(num_examples=24):
    mem = data.load_dataset("tfds:cifar10")
    plain = stream.open_data("tfds:cifar10", options=stream.StreamOptions(augment=False))
    aug = stream.open_data("tfds:cifar10")
    assert isinstance(aug, stream.Stream) and aug.layout.crop == "pad" and not aug.augment
    want = _take(mem.train_batches(8, seed=1), 6)
    got = list(plain.train_batches(8, 1, stop=6))
    augmented = list(aug.train_batches(8, 1, stop=6))
  for (s1, x1, y1), (s2, x2, y2), (_, xa, ya) in zip(want, got, augmented):
    assert s1 == s2
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(y1, ya)
    for img, out in zip(x1, xa):  # each a padded window of its image, maybe mirrored
      padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
      windows = [padded[i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
      assert any(np.array_equal(out, w[:, ::f]) for w in windows for f in (1, -1))
  assert not all(np.array_equal(a[1], b[1]) for a, b in zip(got, augmented))


def test_tfds_mock_imagenet_gets_resized_crops():
  with tfds.testing.mock_data(num_examples=12):
    st = stream.open_data("tfds:imagenet2012", options=stream.StreamOptions(image_size=16))
    assert st.layout.crop == "resized" and st.input_shape == (16, 16, 3)
    (_, x0, y0), (_, x1, _) = st.train_batches(6, seed=0, stop=2)
    ev = [b for b, *_ in st.eval_batches(6)] + [b for b, *_ in st.eval_batches(6)]
  assert x0.shape == (6, 16, 16, 3) and x0.dtype == np.float32 and np.isfinite(x0).all()
  assert y0.dtype == np.int32 and ((0 <= y0) & (y0 < 1000)).all()
  np.testing.assert_array_equal(ev[0], ev[2])  # evaluation crops are not random
  assert abs(float(np.concatenate(ev[:2]).mean())) < 0.5  # standardised


def test_epochs_differ_and_each_is_a_permutation(tmp_path):
  _write(tmp_path, n_train=24)
  st = _open(tmp_path, augment=False, prefetch=0)  # no read-ahead: reads in order
  seen = _Counting.install(st)
  for _ in st.train_batches(6, seed=4, stop=8):  # two epochs of 4 steps
    pass
  first, second = seen[:24], seen[24:]
  assert sorted(first) == sorted(second) == list(range(24))
  assert first != second


class _Counting:
  """Wraps the training split's source and lists every record index read."""

  def __init__(self, source, seen):
    self.source, self.seen = source, seen

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.seen.append(int(i))
    return self.source[i]

  @classmethod
  def install(cls, st):
    seen = []
    train = st.splits["train"]
    st.splits = {**st.splits, "train": train._replace(source=cls(train.source, seen))}
    return seen


def test_two_processes_read_disjoint_halves_of_every_batch(tmp_path):
  """2 processes x 4 devices: each reads only its rows' records, augmentation included,
  and the two halves make the batch one process of 8 devices reads."""
  _write(tmp_path, n_train=40)
  whole = list(_open(tmp_path).train_batches(8, seed=3, stop=5))  # one epoch
  reads = []
  halves = []
  for rows in (slice(0, 4), slice(4, 8)):
    st = _open(tmp_path)
    reads.append(_Counting.install(st))
    halves.append(list(st.train_batches(8, 3, 0, rows, stop=5)))
  assert [len(r) for r in reads] == [20, 20]  # half an epoch each, nothing more
  assert not set(reads[0]) & set(reads[1])
  assert sorted(reads[0] + reads[1]) == list(range(40))
  for (step, x, y), (sa, xa, ya), (sb, xb, yb) in zip(whole, *halves):
    assert step == sa == sb
    np.testing.assert_array_equal(x, np.concatenate([xa, xb]))
    np.testing.assert_array_equal(y, np.concatenate([ya, yb]))


class _Killed(Exception):
  pass


class _KilledAfter(Checkpointer):
  """A checkpointer whose run dies right after it saves step ``at``."""

  def __init__(self, directory, every, at):
    super().__init__(directory, every=every)
    self.at = at

  def save(self, step, *args, **kwargs):
    super().save(step, *args, **kwargs)
    if step == self.at:
      raise _Killed


def test_a_run_killed_mid_epoch_resumes_to_the_same_parameters(tmp_path):
  from flax_models import get_model

  _write(tmp_path / "d", n_train=20)
  st = _open(tmp_path / "d")  # augmentation on: the host draws must resume too
  model = get_model("mlp", 10, features=(16,))

  def run(checkpointer=None):
    opt = make_optimizer("momentum@0.05", make_schedule("constant", 5, 10), output_dim=10)
    kw = dict(epochs=2, batch_size=4, seed=1, progress=False, checkpointer=checkpointer)
    return train_run(model, opt, st, **kw)

  full = run()
  with pytest.raises(_Killed):
    run(_KilledAfter(str(tmp_path / "ck"), every=3, at=3))  # 5 steps per epoch
  ck = Checkpointer(str(tmp_path / "ck"), every=3)
  assert ck.restore_input(3) == {
    "step": 3,
    "epoch": 0,
    "batch_in_epoch": 3,
    "seed": 1,
    "batch_size": 4,
    "records": 20,
  }
  resumed = run(ck)
  assert int(resumed.state.step) == 10
  for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed.history[-1]["test_accuracy"] == full.history[-1]["test_accuracy"]


def test_the_command_line_streams(tmp_path, capsys):
  _write(tmp_path / "d", n_train=32, n_test=8, shape=(8, 8, 3))
  args = ["--dataset", f"arrayrecord:{tmp_path / 'd'}", "--model", "mlp", "--batch-size", "8"]
  args += ["--epochs", "1", "--optimizers", "sgd", "--no-progress", "--num-classes", "10"]
  assert cli.main(args + ["--out", str(tmp_path / "s")]) == 0
  assert "32 train / 8 test, streamed" in capsys.readouterr().out
  assert cli.main(args[:-2] + ["--out", str(tmp_path / "n")]) == 2
  assert "needs --num-classes" in capsys.readouterr().err


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(tmp_path):
  _write(tmp_path, n_train=40)
  want = list(_open(tmp_path).train_batches(8, seed=3, stop=7))
  got = list(_open(tmp_path, workers=2, prefetch=1).train_batches(8, seed=3, stop=7))
  assert [s for s, *_ in got] == list(range(7))
  for (_, x1, y1), (_, x2, y2) in zip(want, got):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


@pytest.mark.slow
def test_two_processes_stream_what_one_process_streams(tmp_path):
  """The command line on 2 processes x 4 devices and on 1 x 8 reading a streamed
  ArrayRecord folder (augmentation on): the same losses and parameters."""
  from tests import test_multihost as mh

  _write(tmp_path / "d", n_train=32, n_test=16, shape=(8, 8, 3))
  args = ["--dataset", f"arrayrecord:{tmp_path / 'd'}", "--num-classes", "10", "--model"]
  args += ["mlp", "--batch-size", "16", "--epochs", "3", "--no-progress", "--optimizers"]
  args += ["insgd_l2", "--mesh", "data=8"]
  mh._CACHE.append(str(tmp_path / "jax-cache"))
  try:
    mh._launch(tmp_path, "one", args + ["--out", str(tmp_path / "one")], processes=1, devices=8)
    mh._launch(tmp_path, "two", args + ["--out", str(tmp_path / "two")], processes=2, devices=4)
  finally:
    mh._CACHE.pop()
  one, two = (mh._final_state(str(tmp_path / k), "insgd_l2") for k in ("one", "two"))
  np.testing.assert_allclose(
    mh._losses(str(tmp_path / "one"), "insgd_l2"),
    mh._losses(str(tmp_path / "two"), "insgd_l2"),
    atol=1e-6,
  )
  for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(two["params"])):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
