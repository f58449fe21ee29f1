"""The in-memory batch order the loop reads (today's order, pinned), and the input position."""

import hashlib

import numpy as np
import pytest

from train import data as data_lib
from train import inputs
from train.errors import UsageError


def _digest(*arrays) -> str:
  return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def test_batches_follow_the_seeded_permutation_of_each_epoch():
  """An independent transcription of the order: epoch e is default_rng([seed, e])'s
  permutation, cut into runs of batch_size with the remainder dropped."""
  x = np.arange(100, dtype=np.float32)[:, None]
  y = np.arange(100)
  ds = inputs.Dataset("ids", "classification", x, y, x[:10], y[:10], 100)
  got = ds.train_batches(16, seed=3)
  for step in range(20):  # 6 steps per epoch: crosses three epoch boundaries
    epoch, k = divmod(step, 6)
    want = np.random.default_rng([3, epoch]).permutation(100)[k * 16 : (k + 1) * 16]
    s, xb, yb = next(got)
    assert s == step
    np.testing.assert_array_equal(yb, want)
    np.testing.assert_array_equal(xb[:, 0], want)


def test_the_in_memory_order_is_the_one_saved_results_were_made_with():
  """Digests of the order ``train.data.batches`` gave before the streamed path existed
  (main at 140cebe): the comparison study's saved results depend on it."""
  x = np.arange(100, dtype=np.float32)[:, None]
  y = np.arange(100)
  it = data_lib.batches(x, y, 16, seed=3)
  assert _digest(np.concatenate([next(it)[2] for _ in range(18)]).astype(np.int64)) == (
    "3175a79d03e4884b962fbde69800b723398316dda5e5edfaa26a4c793c2d1818"
  )
  ds = inputs.Dataset("ids", "classification", x, y, x, y, 100)
  it = ds.train_batches(16, seed=3, start_step=7, rows=slice(8, 16))
  assert _digest(np.concatenate([next(it)[2] for _ in range(5)]).astype(np.int64)) == (
    "8f70cb828222d009874f9fc91bfed5bcbaba8c69dc819a77417bc36569281c6a"
  )
  digits = data_lib.load_digits(seed=0)
  it = digits.train_batches(64, seed=1)
  assert _digest(*(a for _, xb, yb in (next(it) for _ in range(25)) for a in (xb, yb))) == (
    "ae7a611f2290d1f0a6aaeea2c45e1444882a95597eacce34798a80c403e500d2"
  )


@pytest.mark.parametrize("seed", [0, 7])
def test_every_epoch_has_its_own_order(seed):
  """A shuffle reused for every epoch (``default_rng(seed)``) fails here."""
  orders = [inputs.epoch_permutation(50, seed, e) for e in range(4)]
  for e, order in enumerate(orders):
    np.testing.assert_array_equal(np.sort(order), np.arange(50))
    for later in orders[e + 1 :]:
      assert not np.array_equal(order, later)
  x = np.arange(50, dtype=np.float32)[:, None]
  it = inputs.batches(x, np.arange(50), 10, seed)
  epochs = [np.concatenate([next(it)[2] for _ in range(5)]) for _ in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(50))
  assert not np.array_equal(epochs[0], epochs[1])
  ds = inputs.Dataset("ids", "classification", x, np.arange(50), x, x, 50)
  assert [s for s, *_ in ds.train_batches(10, seed, start_step=3, stop=8)] == [3, 4, 5, 6, 7]


def test_batches_depend_only_on_seed_and_step():
  x = np.arange(100, dtype=np.float32)[:, None]
  y = np.arange(100)
  it = inputs.batches(x, y, 16, seed=3)
  first = [next(it) for _ in range(14)]  # crosses an epoch boundary (6 steps per epoch)
  resumed = inputs.batches(x, y, 16, seed=3, start_step=9)
  for step, _, yb in (next(resumed) for _ in range(5)):
    np.testing.assert_array_equal(yb, first[step][2])
  # Each epoch visits distinct examples.
  epoch0 = np.concatenate([b[2] for b in first[:6]])
  assert len(np.unique(epoch0)) == 96


def test_eval_batches_pad_the_last_batch():
  x = np.arange(10, dtype=np.float32)[:, None]
  out = list(inputs.eval_batches(x, np.arange(10) + 100, 4))
  assert [n for _, _, n in out] == [4, 4, 2]
  # In order, every example once among the valid rows; the padding repeats the last one.
  want = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 9, 9]]
  for (xb, yb, _), rows in zip(out, want):
    np.testing.assert_array_equal(xb[:, 0], rows)
    np.testing.assert_array_equal(yb, np.asarray(rows) + 100)
  ds = inputs.Dataset("ids", "classification", x, x, x, np.arange(10) + 100, 1)
  halves = [list(ds.eval_batches(4, rows=r)) for r in (slice(0, 2), slice(2, 4))]
  for (a, ya, na), (b, yb, nb), rows in zip(*halves, want):
    np.testing.assert_array_equal(np.concatenate([a, b])[:, 0], rows)
    np.testing.assert_array_equal(np.concatenate([ya, yb]), np.asarray(rows) + 100)
    assert na == nb


def test_input_position_refuses_a_resume_that_would_read_other_batches():
  here = inputs.InputPosition.at(13, records=100, batch_size=16, seed=3)
  assert (here.epoch, here.batch_in_epoch) == (2, 1)  # 6 steps per epoch
  here.check_resumes(here._asdict())
  here.check_resumes(None)  # a checkpoint written before positions were saved
  for field, value in (("seed", 4), ("batch_size", 32), ("records", 99)):
    with pytest.raises(UsageError, match="its batches would differ"):
      here.check_resumes({**here._asdict(), field: value})
  with pytest.raises(UsageError, match="damaged"):
    here.check_resumes({**here._asdict(), "step": 12})
