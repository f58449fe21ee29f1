"""Several processes for real: the command line run as two local processes of four CPU
devices each (JAX's own runtime, ``jax.distributed.initialize``, Gloo collectives)
against the same command as one process of eight devices.

Every run is a subprocess of ``python -m train`` with its own ``XLA_FLAGS`` device
count, a free coordinator port, a deadline, and is killed in a ``finally`` whatever
happens. One epoch is one step (``--train-size`` = ``--batch-size``), so the per-epoch
history holds every step's loss; final states are read back from the Orbax
checkpoints each run leaves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE = 90  # seconds for one launch (all its processes): a guard against hangs
HEARTBEAT = 3  # --heartbeat-timeout of the two-process runs, seconds
STEPS = 3


# The smallest model whose largest leaf (the 256 x 128 dense kernel on 8 x 8 digits) is
# split across processes by the fsdp axis, so SP's quantile and every reduction over a
# leaf span both processes; the batch is split over all eight devices.
def _args(*optimizers: str, epochs: int = STEPS, mesh: str = "data=1,fsdp=8") -> list[str]:
  return [
    *("--model mnist_cnn --dataset digits --batch-size 32 --train-size 32 --test-size 32").split(),
    *("--no-progress", "--epochs", str(epochs), "--mesh", mesh, "--optimizers", *optimizers),
  ]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


_CACHE = []  # the compilation cache the launches of this module share (see `cache`)


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
  """One persistent compilation cache for every launch here: a program one launch
  compiled (same mesh, same devices), the next loads."""
  _CACHE.append(str(tmp_path_factory.mktemp("jax-cache")))
  yield
  _CACHE.pop()


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # small programs compile several times faster
  env["JAX_COMPILATION_CACHE_DIR"] = _CACHE[-1]
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
  env.pop("JAX_NUM_CPU_DEVICES", None)
  return env


def _start(args: list[str], devices: int, log: str) -> subprocess.Popen:
  out = open(log, "w")
  try:
    return subprocess.Popen(
      [sys.executable, "-m", "train", *args],
      cwd=ROOT,
      env=_env(devices),
      stdout=out,
      stderr=subprocess.STDOUT,
      start_new_session=True,
    )
  finally:
    out.close()


def _kill(procs: list[subprocess.Popen]) -> None:
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
  for p in procs:
    p.wait()


def _read(log: str) -> str:
  with open(log) as f:
    return f.read()


def _launch(tmp, name: str, args: list[str], processes: int, devices: int) -> list[str]:
  """Runs the command on ``processes`` processes of ``devices`` devices each; returns
  their logs, failing the test (every process killed) on a non-zero exit or the deadline."""
  port = _free_port()
  logs = [str(tmp / f"{name}.{i}.log") for i in range(processes)]
  procs = []
  try:
    for i in range(processes):
      dist = (
        ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes)]
        + ["--process-id", str(i), "--heartbeat-timeout", str(HEARTBEAT)]
        if processes > 1
        else []
      )
      procs.append(_start(args + dist, devices, logs[i]))
    end = time.monotonic() + DEADLINE
    for p, log in zip(procs, logs):
      rc = p.wait(timeout=max(1.0, end - time.monotonic()))
      assert rc == 0, f"{name}: exit {rc}\n{_read(log)[-3000:]}"
  except subprocess.TimeoutExpired:
    pytest.fail(f"{name}: still running after {DEADLINE} s\n{_read(logs[0])[-3000:]}")
  finally:
    _kill(procs)
  return logs


def _run_dir(out: str, optimizer: str) -> str:
  return os.path.join(out, optimizer.replace("+", "_plus_"))


def _losses(out, optimizer: str) -> list[float]:
  with open(os.path.join(_run_dir(out, optimizer), "metrics.json")) as f:
    history = json.load(f)["history"]
  return [h["train_loss"] for h in history]


def _final_state(out, optimizer: str) -> dict:
  """The newest checkpoint of a run, read onto this process's first device."""
  ckpt = os.path.join(_run_dir(out, optimizer), "checkpoints")
  step = max(int(n) for n in os.listdir(ckpt) if n.isdigit())
  path = os.path.join(ckpt, str(step), "state")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as ck:
    meta = ck.metadata(path).item_metadata
    like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta)
    return jax.tree.map(np.asarray, ck.restore(path, like))


def _assert_same_run(a, b, optimizer: str, tol: float) -> None:
  la, lb = _losses(a, optimizer), _losses(b, optimizer)
  assert len(la) == len(lb) == STEPS
  np.testing.assert_allclose(la, lb, rtol=0, atol=tol)
  sa, sb = _final_state(a, optimizer), _final_state(b, optimizer)
  assert int(sa["step"]) == int(sb["step"]) == STEPS
  assert jax.tree.structure(sa) == jax.tree.structure(sb)
  for x, y in zip(jax.tree.leaves(sa["params"]), jax.tree.leaves(sb["params"])):
    np.testing.assert_allclose(x, y, rtol=0, atol=tol)
  # The optimizer state's real values too, relative to their size: Gloo's sum across
  # the two processes and XLA's within one may round the last bit apart (INSGD's input
  # power, of order 100, by one ulp). Integer leaves are left out: SP's threshold search
  # keeps its step as an int32 key distance, which moves by some units when the
  # threshold moves by an ulp.
  for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    if np.issubdtype(x.dtype, np.floating):
      np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


def _two_against_one(tmp, optimizers: list[str]):
  one, two = str(tmp / "one"), str(tmp / "two")
  args = _args(*optimizers)
  _launch(tmp, "one", args + ["--out", one], processes=1, devices=8)
  logs = _launch(tmp, "two", args + ["--out", two], processes=2, devices=4)
  assert "mesh data=1,fsdp=8 (8 devices on 2 processes)" in _read(logs[0])
  return one, two


@pytest.fixture(scope="module")
def fast_pair(tmp_path_factory):
  return _two_against_one(tmp_path_factory.mktemp("fast"), ["sgd", "insgd_l2"])


# INSGD's input power is a mean over the global batch: each process holds half of it.
@pytest.mark.parametrize("optimizer", ["sgd", "insgd_l2"])
def test_two_processes_equal_one(fast_pair, optimizer):
  one, two = fast_pair
  _assert_same_run(one, two, optimizer, tol=1e-6)
  losses = _losses(one, optimizer)
  assert abs(losses[0] - losses[-1]) > 1e-3, (
    "the steps must move for the comparison to mean anything"
  )


# SP's quantile covers a leaf split over both processes; AngularGrad's angle and GAL's
# per-sample terms are whole-leaf and global-batch quantities.
@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["angulargrad_cos", "sp", "insgd_l1", "gal+sgd"])
def test_two_processes_equal_one_every_method(tmp_path, optimizer):
  one, two = _two_against_one(tmp_path, [optimizer])
  _assert_same_run(one, two, optimizer, tol=1e-6)


def test_each_process_feeds_its_own_rows():
  """The rows of a global batch each process supplies, read off the batch sharding of a
  two-process mesh: consecutive halves, in process order."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec

  from train import distributed

  devices = np.asarray(jax.devices()[:8]).reshape(1, 8)
  sh = NamedSharding(Mesh(devices, ("data", "fsdp")), PartitionSpec(("data", "fsdp")))
  assert distributed.process_rows(sh, 32) == slice(0, 32)  # one process: every row
  x = np.arange(32 * 3).reshape(32, 3)
  got = distributed.put_rows(sh, x, 32)
  np.testing.assert_array_equal(np.asarray(got), x)
  assert [s.index[0] for s in got.addressable_shards][1] == slice(4, 8)


def test_checkpoint_restores_onto_other_meshes(fast_pair, tmp_path):
  """2 processes x 4 devices -> 1 x 8 -> 1 x 2 devices, each continuing the last one's
  checkpoint, ends where the uninterrupted 1 x 8 run ends. The 2 x 4 and 1 x 8 steps
  agree to 1e-6 (as above); the 1 x 2 step sums each device's 16 rows before adding
  the two partial sums, another order than eight partial sums of 4, so its step
  differs by float32 rounding: a few ulps, within 1e-5 on values of order 1."""
  ref, out, name = fast_pair[0], str(tmp_path / "resumed"), "insgd_l2"
  _launch(tmp_path, "a", _args(name, epochs=1) + ["--out", out], 2, 4)
  _launch(tmp_path, "b", _args(name, epochs=2) + ["--out", out, "--resume"], 1, 8)
  _launch(tmp_path, "c", _args(name, epochs=3, mesh="data=2") + ["--out", out, "--resume"], 1, 2)
  _assert_continued(ref, out, name, same_order=2)


@pytest.mark.slow
def test_two_processes_resume_a_one_process_checkpoint(fast_pair, tmp_path):
  """The other way: 1 x 2 devices, then every process of a 2 x 4 run reads its part."""
  ref, out, name = fast_pair[0], str(tmp_path / "resumed"), "insgd_l2"
  _launch(tmp_path, "a", _args(name, epochs=1, mesh="data=2") + ["--out", out], 1, 2)
  _launch(tmp_path, "b", _args(name, epochs=3) + ["--out", out, "--resume"], 2, 4)
  _assert_continued(ref, out, name, same_order=0)


def _assert_continued(ref: str, out: str, name: str, same_order: int) -> None:
  """``out``, resumed across layouts, ends where ``ref`` ends; its first ``same_order``
  steps ran on layouts that reduce as ``ref``'s does."""
  la, lb = _losses(ref, name), _losses(out, name)
  np.testing.assert_allclose(la[:same_order], lb[:same_order], rtol=0, atol=1e-6)
  np.testing.assert_allclose(la, lb, rtol=0, atol=1e-5)
  sa, sb = _final_state(ref, name), _final_state(out, name)
  assert int(sb["step"]) == STEPS
  for x, y in zip(jax.tree.leaves(sa["params"]), jax.tree.leaves(sb["params"])):
    np.testing.assert_allclose(x, y, rtol=0, atol=1e-5)
  for x, y in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "extra, message",
  [
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2"], "go together"),
    (["--coordinator", "nohost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"], "0..1"),
    (["--distributed", "--heartbeat-timeout", "0"], "at least 1 s"),
  ],
)
def test_bad_launch_options_fail_before_joining(capsys, extra, message):
  from train.cli import main

  assert main(_args("sgd") + extra) == 2
  assert message in capsys.readouterr().err


def _kill_mid_run(tmp_path, victim: int) -> tuple[str, float]:
  """Starts a long two-process run, kills process ``victim`` once training has written a
  checkpoint, and returns the survivor's log and how long it took to exit."""
  out = str(tmp_path / "run")
  port = _free_port()
  args = _args("sgd", epochs=100000) + ["--checkpoint-every", "2", "--out", out]
  logs = [str(tmp_path / f"p{i}.log") for i in range(2)]
  procs = []
  try:
    for i in range(2):
      dist = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)]
      procs.append(_start(args + dist + ["--heartbeat-timeout", str(HEARTBEAT)], 4, logs[i]))
    ckpt = os.path.join(out, "sgd", "checkpoints")
    end = time.monotonic() + DEADLINE
    while not (os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))):
      assert all(p.poll() is None for p in procs), _read(logs[0])[-3000:]
      assert time.monotonic() < end, "no checkpoint before the deadline"
      time.sleep(0.2)
    os.killpg(procs[victim].pid, signal.SIGKILL)
    killed = time.monotonic()
    survivor = procs[1 - victim]
    rc = survivor.wait(timeout=HEARTBEAT + 20)
    waited = time.monotonic() - killed
    assert rc != 0
    return _read(logs[1 - victim]), waited
  except subprocess.TimeoutExpired:
    pytest.fail(f"process {1 - victim} still running {HEARTBEAT + 20} s after its peer died")
  finally:
    _kill(procs)


# A dead process is found by the coordinator (process 0) when its heartbeats stop, or
# by its peers when their next collective's connection closes.
_DIED = ("another task died", "one of them died")


def test_killed_process_stops_the_other(tmp_path):
  log, waited = _kill_mid_run(tmp_path, victim=1)
  assert any(m in log for m in _DIED), log[-3000:]
  assert waited < HEARTBEAT + 20


@pytest.mark.slow
def test_killed_coordinator_stops_the_other(tmp_path):
  log, waited = _kill_mid_run(tmp_path, victim=0)
  assert any(m in log for m in _DIED), log[-3000:]
  assert waited < HEARTBEAT + 20
