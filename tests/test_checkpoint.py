"""A training run killed with SIGKILL resumes to bit-identical parameters, and no
checkpoint is ever left unreadable."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = [
  "--model",
  "mlp",
  "--dataset",
  "diabetes",
  "--optimizers",
  "momentum@0.01",
  "--epochs",
  "6",
  "--batch-size",
  "32",
  "--no-progress",
]
RUN = "momentum_lr0.01"


def _cmd(out, *extra):
  return [sys.executable, "-m", "train", *ARGS, "--out", str(out), *extra]


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _steps(ckpt_dir):
  if not os.path.isdir(ckpt_dir):
    return []
  return sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())


def _params(ckpt_dir, step):
  tree = ocp.PyTreeCheckpointer().restore(os.path.join(ckpt_dir, str(step), "state"))
  return tree["params"]


def _flat(tree, prefix=""):
  if isinstance(tree, dict):
    for k in sorted(tree):
      yield from _flat(tree[k], f"{prefix}/{k}")
  else:
    yield prefix, np.asarray(tree)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Checkpoints of one uninterrupted run, saved only at its end: checkpointing
  must not change the result."""
  ref = tmp_path_factory.mktemp("ref")
  subprocess.run(_cmd(ref), check=True, env=_env(), cwd=ROOT, capture_output=True, timeout=300)
  return ref / RUN / "checkpoints"


@pytest.mark.parametrize("kill_after_checkpoints,every", [(1, 40), (3, 1)])
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, kill_after_checkpoints, every):
  """every=40: killed between checkpoints; every=1: saving every step, so the kill
  very likely lands inside a write."""
  ref_dir = reference
  final = _steps(ref_dir)[-1]

  out = tmp_path / "killed"
  ckpt_dir = out / RUN / "checkpoints"
  proc = subprocess.Popen(
    _cmd(out, "--checkpoint-every", str(every)),
    env=_env(),
    cwd=ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  deadline = time.time() + 240
  # Kill once the checkpoint of step kill_after_checkpoints * every is visible
  # (only the newest two are kept, so counting directories would not do).
  while (
    not _steps(ckpt_dir) or _steps(ckpt_dir)[-1] < kill_after_checkpoints * every
  ) and proc.poll() is None:
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps_at_kill = _steps(ckpt_dir)
  assert steps_at_kill and steps_at_kill[-1] < final, "the run finished before it was killed"
  # Whatever the kill interrupted, every checkpoint that is visible reads back.
  for s in steps_at_kill:
    _params(ckpt_dir, s)

  done = subprocess.run(
    _cmd(out, "--resume"),
    env=_env(),
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert done.returncode == 0, done.stderr
  assert _steps(ckpt_dir)[-1] == final
  got = dict(_flat(_params(ckpt_dir, final)))
  want = dict(_flat(_params(ref_dir, final)))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_old_checkpoints_go_out_of_sight_before_they_are_deleted(tmp_path):
  from train.checkpoint import Checkpointer

  w = np.arange(4.0, dtype=np.float32)
  state = {"params": {"w": w}}
  ckpt = Checkpointer(str(tmp_path), every=1, keep=2)
  for step in range(1, 5):
    ckpt.save(step, {"params": {"w": w + step}}, [{"step": step}])
  assert _steps(tmp_path) == [3, 4]
  assert ckpt.latest_step() == 4
  ckpt.close()
  # A kill between the rename and the end of the deletion leaves a hidden,
  # partly deleted directory: never listed as a step, cleared on the next open.
  half = tmp_path / ".removing-2" / "state"
  half.mkdir(parents=True)
  (half / "partial").write_bytes(b"\0" * 8)
  reopened = Checkpointer(str(tmp_path), every=1, keep=2)
  assert not (tmp_path / ".removing-2").exists()
  restored, history = reopened.restore_latest(state)
  np.testing.assert_array_equal(restored["params"]["w"], w + 4)
  assert history == [{"step": 4}]
  for step in _steps(tmp_path):
    np.testing.assert_array_equal(_params(tmp_path, step)["w"], w + step)
  reopened.close()


# ------------------------------------------------------------ the command line's checkpoints


def _main(out, *extra, epochs=1):
  from train import cli

  argv = ARGS[:6] + ["--epochs", str(epochs), "--batch-size", "32", "--no-progress"]
  return cli.main(argv + ["--out", str(out), *extra])


def test_resuming_an_unreadable_folder_is_one_line(tmp_path, capsys):
  junk = tmp_path / RUN / "checkpoints" / "5"
  junk.mkdir(parents=True)
  (junk / "state").write_text("not a checkpoint")
  assert _main(tmp_path, "--resume") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith(f"error: cannot resume from {junk.parent}: step 5 ")
  assert "--overwrite" in err[0]
  assert _main(tmp_path, "--overwrite") == 0  # the way out it names
  assert _steps(junk.parent) == [11]


def test_overwrite_removes_only_what_the_command_wrote(tmp_path, capsys):
  assert _main(tmp_path, "--checkpoint-every", "4") == 0
  run = tmp_path / RUN
  assert _steps(run / "checkpoints") == [8, 11]
  mine = [run / "checkpoints" / "notes.txt", run / "plot.py", tmp_path / "README"]
  for path in mine:
    path.write_text("the user's")
  capsys.readouterr()
  assert _main(tmp_path) == 2  # neither --resume nor --overwrite
  assert "holds checkpoints (steps 8, 11)" in capsys.readouterr().err
  assert _main(tmp_path, "--overwrite", "--epochs", "2") == 0
  out = capsys.readouterr().out.splitlines()
  assert (
    f"--overwrite: removed checkpoints of steps 8, 11; metrics.csv, metrics.json, "
    f"steps.csv, steps.jsonl; 1 TensorBoard event file from {run} "
    "(left notes.txt in checkpoints/)"
  ) in out
  assert f"--overwrite: removed curves.png, results.csv, results.json from {tmp_path}" in out
  assert all(path.read_text() == "the user's" for path in mine)
  assert _steps(run / "checkpoints") == [22]  # the new run's, alone
  assert len(list(run.glob("events.out.tfevents.*"))) == 1


def test_a_folder_of_other_files_holds_no_checkpoints(tmp_path):
  (tmp_path / RUN / "checkpoints").mkdir(parents=True)
  (tmp_path / RUN / "checkpoints" / "notes.txt").write_text("kept")
  assert _main(tmp_path) == 0
  assert (tmp_path / RUN / "checkpoints" / "notes.txt").read_text() == "kept"


def test_resumed_run_says_from_which_step(tmp_path, capsys):
  assert _main(tmp_path, "--log-every", "1") == 0
  assert "resumed from" not in capsys.readouterr().out
  assert _main(tmp_path, "--resume", "--log-every", "1", epochs=3) == 0
  out = capsys.readouterr().out
  assert "momentum@0.01: resumed from step 11 (of 33)" in out.splitlines()
  # The table's training loss is the mean of the last epoch's step losses, and says so.
  head, _, row = out[out.index("optimizer") :].splitlines()[:3]
  assert "train loss (last epoch mean)" in head
  losses = [
    r["train/loss"]
    for r in map(json.loads, open(tmp_path / RUN / "steps.jsonl"))
    if "train/loss" in r
  ]
  assert len(losses) == 33
  col = head.index("train loss")
  assert float(row[col:].split()[0]) == pytest.approx(np.mean(losses[22:]), rel=1e-3)
