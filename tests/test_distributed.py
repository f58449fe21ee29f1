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
import re
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
  assert not any("[Gloo]" in _read(log) for log in logs)  # unless --gloo-logs
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


def _kill_mid_run(tmp_path, victim: int) -> tuple[str, float, int]:
  """Starts a long two-process run, kills process ``victim`` (and its supervisor) once
  training has written a checkpoint, and returns the survivor's log, how long it took to
  exit and its exit status."""
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
    rc = survivor.wait(timeout=HEARTBEAT + 30)
    return _read(logs[1 - victim]), time.monotonic() - killed, rc
  except subprocess.TimeoutExpired:
    pytest.fail(f"process {1 - victim} still running {HEARTBEAT + 30} s after its peer died")
  finally:
    _kill(procs)


def _assert_one_line(log: str, pattern: str) -> None:
  """The survivor's last line is ``pattern``; no C++ message or stack trace before it."""
  assert re.fullmatch(pattern, log.strip().splitlines()[-1]), log[-3000:]
  for noise in ("Check failure stack trace", "terminate called", "client.h", "[Gloo]"):
    assert noise not in log, log[-3000:]


# The coordinator (process 0) finds a dead worker when its heartbeats stop; a worker finds
# the coordinator gone at once (its connection to the coordination service closes), or
# first in a collective (Gloo ends the process from one of its threads). Each way ends in
# the same line, from the supervisor of the surviving process.
def test_killed_process_stops_the_other(tmp_path):
  log, waited, rc = _kill_mid_run(tmp_path, victim=1)
  assert rc == 1
  _assert_one_line(
    log,
    r"error: process 1 of 2 stopped responding; checkpoints up to step \d+ are in "
    r".*/run/sgd/checkpoints \(rerun every process with --resume\)",
  )
  assert waited < HEARTBEAT + 30


@pytest.mark.slow
def test_killed_coordinator_stops_the_other(tmp_path):
  log, waited, rc = _kill_mid_run(tmp_path, victim=0)
  assert rc == 1
  _assert_one_line(
    log, r"error: process 0 of 2 stopped responding; checkpoints up to step \d+ are in .*"
  )
  assert waited < HEARTBEAT + 30


@pytest.mark.slow
def test_a_peer_that_never_starts(tmp_path):
  """Process 0 of 2 alone: it says whom it waits for, and gives up after --init-timeout."""
  port = _free_port()
  log = str(tmp_path / "p0.log")
  args = _args("sgd") + ["--out", str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{port}"]
  args += ["--num-processes", "2", "--process-id", "0", "--init-timeout", "4"]
  proc = _start(args, 4, log)
  try:
    rc = proc.wait(timeout=DEADLINE)
  finally:
    _kill([proc])
  text = _read(log)
  assert rc == 1, text
  assert "process 0 of 2: waiting for 1 of 2 processes (process 1) to join at 127.0.0.1:" in text
  _assert_one_line(
    text,
    r"error: process 0 of 2: gave up waiting for 1 of 2 processes \(process 1\) to join at "
    r"127\.0\.0\.1:\d+ after 4 s \(--init-timeout\); start every process .*",
  )


# --------------------------------------------------------------------------- supervisor
# What the supervisor reads, as JAX 0.10.2 and Gloo write it.

_M = "[Gloo] Rank {} is connected to 1 peer ranks. Expected number of connected peer ranks is : 1\n"
_HEARTBEAT_END = """\
E1202 16:33:21.953630   15090 coordination_service.cc:1549] [38246] Use error polling to \
propagate the following error to all tasks: UNAVAILABLE: The following tasks are unhealthy \
(stopped sending heartbeats):
1
The tasks have crashed. [type.googleapis.com/tensorflow.CoordinationServiceError='']
E1202 16:33:21.954090   15101 coordination_service_agent.cc:289] Polled an error from \
coordination service (this can be an error from this or another task).
F1202 16:33:21.954224   15101 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. This most likely indicates that another task died. \
absl::Status: UNAVAILABLE: The following tasks are unhealthy (stopped sending heartbeats):
1
The tasks have crashed. Check the task logs for an earlier error.

RPC: /xla.coordination.CoordinationService/PollForError
*** Check failure stack trace: ***
    @     0x7f2538640634  absl::lts_20260107::log_internal::LogMessage::SendToLog()
    @     0x7fa1a48a71f5  (unknown)
"""
_LEADER_END = """\
F1202 16:31:05.519487   12290 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. absl::Status: UNAVAILABLE: Failed to send RPC to coordination \
service. Either the leader task was preempted/died/restarted unexpectedly or this task is \
experiencing network issues.
*** Check failure stack trace: ***
"""
_GLOO_END = """\
terminate called after throwing an instance of 'gloo::EnforceNotMet'
  what():  [enforce fail at external/gloo/gloo/transport/tcp/pair.cc:459] op.preamble.length \
<= op.nbytes. 8192 vs 4. Received data size doesn't match expected size.
"""
_START_END = """\
F1202 16:32:28.102073   14015 client.h:80] Terminating process because the JAX distributed \
service detected fatal errors. absl::Status: DEADLINE_EXCEEDED: Deadline Exceeded

RPC: /xla.coordination.CoordinationService/RegisterTask
*** Check failure stack trace: ***
"""


def _in_pieces(text: str, size: int = 7):
  return [text[i : i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize(
  "written",
  [
    _M.format(0) + _M.format(1),
    # Two threads' pieces interleaved, their newlines last, as seen on two busy cores.
    "[Gloo] Rank 1[Gloo] Rank  is connected to 01 is connected to  peer ranks. 1 peer ranks. "
    "Expected number of connected peer ranks is : Expected number of connected peer ranks "
    "is : 11\n\n",
    "[Gloo] Rank 1 is connected to 1 peer ranks. [Gloo] Rank 0Expected number of connected "
    "peer ranks is : 1 is connected to 1 peer ranks. Expected number of connected peer ranks "
    "is : 1\n\n",
    # Between the text of one of the child's lines and its newline.
    "a line" + _M.format(0) + "\n",
  ],
)
def test_gloo_messages_are_hidden(written):
  from train.supervisor import _GlooFilter

  text = "header\n\n" + written + "table\n\nlast"
  hide, keep = _GlooFilter(), _GlooFilter(keep=True)
  hidden = "".join(hide.feed(p) for p in _in_pieces(text)) + hide.close()
  kept = "".join(keep.feed(p) for p in _in_pieces(text)) + keep.close()
  mine = "a line\n" if written.startswith("a line") else ""
  assert hidden == "header\n\n" + mine + "table\n\nlast"
  assert kept == text


@pytest.mark.parametrize(
  "ending, kind, me, line",
  [
    (_HEARTBEAT_END, "service", 0, "process 1 of 2 stopped responding; checkpoints up to step 6"),
    (_LEADER_END, "service", 1, "process 0 of 2 stopped responding; checkpoints up to step 6"),
    (_GLOO_END, "gloo", 1, "process 0 of 2 stopped responding; checkpoints up to step 6"),
  ],
)
def test_supervisor_turns_each_ending_into_one_line(ending, kind, me, line):
  from train.launch import Launch
  from train.supervisor import _Child, _EndingFilter

  err = _EndingFilter()
  before = "progress\rbar 50%\n" + "W1202 16:00:00.000000   1 spmd_partitioner.cc:656] remat\n"
  shown = "".join(err.feed(p, 0.0) for p in _in_pieces(before + ending)) + err.close()
  assert shown == before  # the service's lines, the ending and the trace are not shown
  assert err.kind == kind and "Check failure" not in err.status
  child = _Child(Launch("127.0.0.1:1", 2, me))
  for report in ("join", f"joined {me} 2", "checkpoint none /r/sgd/checkpoints"):
    child.report(report, 0.0)
  assert child.verdict(err.kind, err.status).endswith(
    "no checkpoint was written yet in /r/sgd/checkpoints"
  )
  child.report("checkpoint 6 /r/sgd/checkpoints", 0.0)
  assert child.verdict(err.kind, err.status) == (
    f"{line} are in /r/sgd/checkpoints (rerun every process with --resume)"
  )


def test_supervisor_quotes_an_ending_it_cannot_read():
  from train.launch import Launch
  from train.supervisor import _Child, _EndingFilter

  err = _EndingFilter()
  err.feed(
    "F1202 16:00:00.000000   7 client.h:80] Terminating process because the JAX distributed "
    "service detected fatal errors. absl::Status: INTERNAL: something else\n*** Check failure\n",
    0.0,
  )
  child = _Child(Launch("127.0.0.1:1", 2, 1))
  child.report("joined 1 2", 0.0)
  assert child.verdict(err.kind, err.status) == (
    "process 1 of 2 was ended by JAX's coordination service (INTERNAL: something else)"
  )


def test_supervisor_at_start_up():
  from train.launch import Launch
  from train.supervisor import _Child, _EndingFilter

  child = _Child(Launch("127.0.0.1:5", 4, 2, init_timeout=30))
  child.report("join", 10.0)
  assert child.waiting_note(11.0) is None  # a normal start says nothing
  assert child.waiting_note(12.5) == (
    "process 2 of 4: waiting for 3 of 4 processes (processes 0, 1, 3) to join at "
    "127.0.0.1:5; giving up after 30 s (--init-timeout)"
  )
  assert child.waiting_note(20.0) is None  # once
  err = _EndingFilter()
  assert err.feed(_START_END, 40.0) == ""
  assert child.verdict(err.kind, err.status).startswith(
    "process 2 of 4: gave up waiting for 3 of 4 processes (processes 0, 1, 3) to join at "
    "127.0.0.1:5 after 30 s (--init-timeout)"
  )


def test_service_lines_without_an_ending_are_shown():
  """Error lines of the coordination service that no ending follows are passed on, late."""
  from train.supervisor import _EndingFilter

  line = "E1202 16:33:21.954090   15101 coordination_service_agent.cc:289] Polled an error\n"
  err = _EndingFilter()
  assert err.feed(line + "more\n", 1.0) == ""
  assert err.tick(2.0) == ""
  assert err.tick(5.0) == line + "more\n"
  assert err.feed("after\n", 5.0) == "after\n"
  assert err.status is None


def test_a_failed_collective_waits_for_the_services_verdict(monkeypatch, capsys):
  """A collective that fails in Python waits out the heartbeat timeout (and a margin)
  for the coordination service to end the process; only then does it say so itself."""
  import types

  from train import distributed
  from train.launch import Launch

  error = jax.errors.JaxRuntimeError("INTERNAL: Gloo: connection closed by peer\ndetails")
  distributed.end_if_peer_lost(error)  # one process: returns, not a peer's death
  monkeypatch.setattr(distributed, "_JOINED", [Launch("h:1", 2, 0, heartbeat_timeout=5)])
  distributed.end_if_peer_lost(ValueError("a bug"))  # not a collective: returns
  clock = [100.0]
  fake = types.SimpleNamespace(
    monotonic=lambda: clock[0], sleep=lambda s: clock.__setitem__(0, clock[0] + s)
  )
  monkeypatch.setattr(distributed, "time", fake)
  monkeypatch.setattr(distributed.os, "_exit", lambda rc: (_ for _ in ()).throw(SystemExit(rc)))
  with pytest.raises(SystemExit) as ended:
    distributed.end_if_peer_lost(error)
  assert ended.value.code == 1 and clock[0] - 100.0 >= 5 + 15  # after waiting for a verdict
  line = capsys.readouterr().err
  assert line.startswith("error: process 0 of 1: a collective with the other processes failed")
  assert line.endswith("(INTERNAL: Gloo: connection closed by peer)\n")
