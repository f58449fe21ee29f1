"""The supervisor of one process of a multi-process run: one line when a peer is lost.

A process that loses a peer is ended from C++: by JAX's coordination service when a
peer's heartbeats stop (``--heartbeat-timeout``), at once when the coordinator goes
away, or when the peers do not all join in time (``--init-timeout``), each with
``LOG(FATAL)``, exit status 134 and a stack trace; or by Gloo, whose exception
escapes one of its threads when a collective's connection breaks mid-transfer. The
client's ``missed_heartbeat_callback`` cannot be given from Python in jaxlib 0.10.2
(it aborts converting the status it passes), and a thread inside the process would
lose the race. So :func:`supervise` runs the training as a child process, which
reports joining and checkpoints over a pipe, and watches it from plain Python:

- the child's output passes through as it comes, less Gloo's connection messages
  (unless ``--gloo-logs``) and, when it is ended so, less the ending's lines;
- after two seconds of joining the supervisor says which processes it waits for;
  for an ending it prints one line, the processes that stopped (from the service's
  status; for Gloo's, in a two-process run, the other one) and the newest
  checkpoint, or that the processes did not all join in time, and exits with 1;
- it ignores SIGINT (Ctrl-C reaches the child, in the same process group) and
  forwards SIGTERM and SIGHUP; the child ends itself should the supervisor die.

A collective that fails in Python waits for the service's verdict instead
(:func:`train.distributed.end_if_peer_lost`): every way of losing a peer ends alike.
"""

from __future__ import annotations

import codecs
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence

from train import launch
from train.errors import UsageError
from train.launch import _ENV, Launch

__all__ = ["run_supervised", "supervise"]

_WAIT_NOTE = 2.0  # seconds of joining before the supervisor says whom it waits for
_HOLD = 3.0  # seconds the service's error lines are held back awaiting its verdict

# Gloo's message and its pieces, which its threads may interleave piece by piece.
_GLOO_PIECES = (
  "[Gloo] Rank ",
  " is connected to ",
  " peer ranks. ",
  "Expected number of connected peer ranks is : ",
)
_GLOO = re.compile(
  r"\[Gloo\] Rank \d+ is connected to \d+ peer ranks\. Expected number of "
  r"connected peer ranks is : \d+"
)
_LOG_START = re.compile(r"^[EFWI]\d{0,4}$|^[EFWI]\d{4} ")
# The coordination service's error lines that come before it ends a process.
_SERVICE_NOISE = re.compile(
  r"^[EW]\d{4} [\d:.]+\s+\d+ (coordination_service\w*|preemption_sync_manager|client)\.(cc|h):\d+\]"
  r"|^Additional GRPC error information from remote target coordination_service"
)
# How the process ends when it loses a peer: the coordination service's verdict, or
# Gloo's exception escaping one of its threads mid-collective.
_ENDINGS = {
  "service": re.compile(
    r"^F\d{4} .*\] Terminating process because the JAX distributed service detected fatal"
  ),
  "gloo": re.compile(r"^terminate called after throwing an instance of 'gloo::"),
}


class _GlooFilter:
  """Standard output less Gloo's connection messages: one in a row goes wherever it is
  (even between the text of a line of the child's and its newline), a line of nothing
  but their pieces and numbers goes, and so do the newlines they leave."""

  def __init__(self, keep: bool = False):
    self.keep, self.buf, self.owed = keep, "", 0

  def feed(self, text: str) -> str:
    self.buf += text
    cut = self.buf.rfind("\n") + 1
    lines, self.buf = self.buf[:cut], self.buf[cut:]
    if self.keep:
      return lines
    return "".join(self._line(line) for line in lines.splitlines(keepends=True))

  def _line(self, line: str) -> str:
    text, whole = _GLOO.subn("", line)
    rest = text
    for piece in _GLOO_PIECES:
      rest = rest.replace(piece, " ")
    only_numbers = not rest.replace(" ", "").replace("\n", "").strip("0123456789")
    if rest != text or whole:  # Gloo's, in a row or in pieces
      if only_numbers:
        self.owed += max(line.count(_GLOO_PIECES[0]) - 1, 0)
        return ""
      self.owed += whole
      return text
    if self.owed and only_numbers:
      self.owed -= 1
      return ""
    self.owed = 0
    return line

  def close(self) -> str:
    out, self.buf = self.feed("\n")[:-1] if self.buf else "", ""
    return out


class _EndingFilter:
  """Standard error less what is written when the process ends for a lost peer:
  the coordination service's error lines (held back a few seconds, then
  passed on if no ending follows), its ``Terminating process`` line or Gloo's
  uncaught exception, and everything after. :attr:`kind` is then ``"service"`` or
  ``"gloo"`` and :attr:`status` the text of the ending."""

  def __init__(self):
    self.buf, self.held, self.hold_since = "", [], None
    self.kind: Optional[str] = None
    self.fatal: Optional[list[str]] = None

  @property
  def status(self) -> Optional[str]:
    if self.fatal is None:
      return None
    return "".join(self.fatal).split("*** Check failure")[0]

  def feed(self, text: str, now: float) -> str:
    self.buf += text
    out = []
    while "\n" in self.buf:
      line, self.buf = self.buf.split("\n", 1)
      out.append(self._line(line + "\n", now))
    return "".join(out)

  def _line(self, line: str, now: float) -> str:
    if self.fatal is not None:
      self.fatal.append(line)
      return ""
    for kind, pattern in _ENDINGS.items():
      if pattern.match(line):
        self.kind, self.fatal, self.held, self.hold_since = kind, [line], [], None
        return ""
    if self.hold_since is None and _SERVICE_NOISE.match(line):
      self.hold_since = now
    if self.hold_since is not None:
      self.held.append(line)
      return ""
    return line

  def tick(self, now: float) -> str:
    out = ""
    if self.hold_since is not None and now - self.hold_since > _HOLD:
      out, self.held, self.hold_since = "".join(self.held), [], None
    if self.buf and self.fatal is None and self.hold_since is None:
      if not _LOG_START.match(self.buf[:6]):  # a progress bar, not a log line's first bytes
        out, self.buf = out + self.buf, ""
    return out

  def close(self) -> str:
    if self.fatal is not None:
      return ""
    out, self.held, self.buf = "".join(self.held) + self.buf, [], ""
    return out


def _stopped_processes(status: str) -> Optional[list[int]]:
  """The processes the coordination service's ``status`` says stopped: those it lists
  as unhealthy, or process 0 when the service (which process 0 runs) is unreachable;
  None when it says neither."""
  listed = re.search(r"following tasks are unhealthy[^\n]*\n((?:[ \t]*\d+[ \t]*\n)+)", status)
  if listed:
    return sorted({int(t) for t in listed.group(1).split()})
  if "leader task" in status or "Failed to send RPC to coordination service" in status:
    return [0]
  return None


def _processes(ids: Sequence[int]) -> str:
  ids = list(ids)
  if len(ids) > 6 and ids == list(range(ids[0], ids[-1] + 1)):
    return f"processes {ids[0]}-{ids[-1]}"
  return ("process " if len(ids) == 1 else "processes ") + ", ".join(map(str, ids))


class _Child:
  """What the supervisor knows of its child, from the launch options and its reports."""

  def __init__(self, launch: Launch):
    self.process_id = launch.process_id
    self.num_processes = launch.num_processes
    self.coordinator = launch.coordinator
    self.init_timeout = launch.init_timeout
    self.joining_since: Optional[float] = None
    self.joined = False
    self.announced = False
    self.checkpoint_dir: Optional[str] = None
    self.checkpoint_step: Optional[int] = None

  def report(self, line: str, now: float) -> None:
    event, _, rest = line.partition(" ")
    fields = rest.split(" ")
    if event == "join":
      self.joining_since = now
    elif event == "joined":
      self.joined = True
      self.process_id, self.num_processes = int(fields[0]), int(fields[1])
    elif event == "checkpoint":
      self.checkpoint_step = None if fields[0] == "none" else int(fields[0])
      self.checkpoint_dir = rest.partition(" ")[2]

  def who(self) -> str:
    if self.process_id is None or self.num_processes is None:
      return "this process"
    return f"process {self.process_id} of {self.num_processes}"

  def others(self) -> str:
    if self.process_id is None or self.num_processes is None:
      return "the other processes"
    others = [p for p in range(self.num_processes) if p != self.process_id]
    return f"{len(others)} of {self.num_processes} processes ({_processes(others)})"

  def waiting_note(self, now: float) -> Optional[str]:
    since = self.joining_since
    if self.announced or self.joined or since is None or now - since < _WAIT_NOTE:
      return None
    self.announced = True
    where = f" at {self.coordinator}" if self.coordinator else ""
    return (
      f"{self.who()}: waiting for {self.others()} to join{where}; giving up after "
      f"{self.init_timeout} s (--init-timeout)"
    )

  def newest_checkpoint(self) -> Optional[int]:
    """The newest complete step in the run's checkpoint folder: read off the folder,
    which a step enters whole (renamed into place), since the report of a save that a
    dead peer interrupted never comes."""
    try:
      names = os.listdir(self.checkpoint_dir)
    except OSError:
      return self.checkpoint_step
    steps = [int(n) for n in names if n.isdigit()]
    return max(steps) if steps else self.checkpoint_step

  def checkpoints(self) -> str:
    if self.checkpoint_dir is None:
      return ""
    step = self.newest_checkpoint()
    if step is None:
      return f"; no checkpoint was written yet in {self.checkpoint_dir}"
    return (
      f"; checkpoints up to step {step} are in {self.checkpoint_dir} "
      "(rerun every process with --resume)"
    )

  def verdict(self, kind: str, status: str) -> str:
    """The one line for a child ended by the coordination service or by Gloo (``kind``)
    with ``status``."""
    if not self.joined:
      where = f" at {self.coordinator}" if self.coordinator else ""
      return (
        f"{self.who()}: gave up waiting for {self.others()} to join{where} after "
        f"{self.init_timeout} s (--init-timeout); start every process with the same "
        "--coordinator and --num-processes and its own --process-id"
      )
    if kind == "gloo":  # a collective failed mid-transfer: its peer went away
      gone = [1 - self.process_id] if self.num_processes == 2 else None
      if gone is None:
        reason = status.strip().splitlines()[-1].strip()
        return (
          f"{self.who()}: a collective failed, most likely because another process "
          f"stopped ({reason}){self.checkpoints()}"
        )
    else:
      gone = _stopped_processes(status)
    if gone is None:  # another reason: the service's own words
      said = status.split("absl::Status:", 1)[-1].strip().splitlines()[0][:200]
      return f"{self.who()} was ended by JAX's coordination service ({said}){self.checkpoints()}"
    who = _processes(gone) + (f" of {self.num_processes}" if self.num_processes else "")
    return f"{who} stopped responding{self.checkpoints()}"


def _write(stream, text: str) -> None:
  try:
    stream.write(text)
    stream.flush()
  except (BrokenPipeError, ValueError):  # nobody reads any more: keep supervising
    pass


class _Signals:
  """In the supervisor: SIGINT ignored (it reaches the child through the process
  group), SIGTERM and SIGHUP forwarded; the previous handlers back on exit."""

  def __init__(self, child: subprocess.Popen):
    self.child, self.previous = child, {}

  def __enter__(self):
    forward = lambda signum, frame: self.child.send_signal(signum)
    wanted = {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: forward}
    if hasattr(signal, "SIGHUP"):
      wanted[signal.SIGHUP] = forward
    for signum, handler in wanted.items():
      try:
        self.previous[signum] = signal.signal(signum, handler)
      except ValueError:  # not the main thread: leave signals alone
        break
    return self

  def __exit__(self, *exc):
    for signum, handler in self.previous.items():
      signal.signal(signum, handler)


def supervise(argv: Sequence[str], launch: Launch, gloo_logs: bool = False) -> int:
  """Runs ``python -m train argv`` as a child process, passes its output on, and turns
  its ending for a lost peer into one line and exit status 1. Returns the exit status."""
  status_r, status_w = os.pipe()
  life_r, life_w = os.pipe()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env[_ENV] = f"{status_w},{life_r}"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
  if "COLUMNS" not in env and sys.stderr.isatty():  # the progress bar's width
    env["COLUMNS"] = str(shutil.get_terminal_size().columns)
  try:
    child = subprocess.Popen(
      [sys.executable, "-m", "train", *argv],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      pass_fds=(status_w, life_r),
    )
  finally:
    os.close(status_w)
    os.close(life_r)
  state = _Child(launch)
  try:
    with _Signals(child):
      err = _follow(child, status_r, state, _GlooFilter(keep=gloo_logs))
      rc = child.wait()
  finally:
    os.close(life_w)
    os.close(status_r)
    if child.poll() is None:
      child.kill()
      child.wait()
  if err.status is not None:
    _write(sys.stderr, f"error: {state.verdict(err.kind, err.status)}\n")
    return 1
  if rc < 0:
    name = signal.Signals(-rc).name if -rc in signal.valid_signals() else str(-rc)
    _write(sys.stderr, f"error: {state.who()} was ended by {name}{state.checkpoints()}\n")
    return 128 - rc
  return rc


def _follow(child: subprocess.Popen, status_fd: int, state: _Child, out: _GlooFilter):
  """Passes the child's output on until it closes, and reads its reports; returns the
  filter of its standard error."""
  err = _EndingFilter()
  decoders = {
    fd: codecs.getincrementaldecoder("utf-8")("replace")
    for fd in (child.stdout.fileno(), child.stderr.fileno(), status_fd)
  }
  stdout_fd, stderr_fd = child.stdout.fileno(), child.stderr.fileno()
  reports = ""
  open_fds = set(decoders)
  exited_at = None
  while open_fds:
    ready, _, _ = select.select(sorted(open_fds), [], [], 0.25)
    now = time.monotonic()
    for fd in ready:
      data = os.read(fd, 1 << 16)
      text = decoders[fd].decode(data, final=not data)
      if not data:
        open_fds.discard(fd)
      if fd == stdout_fd:
        _write(sys.stdout, out.feed(text) + ("" if data else out.close()))
      elif fd == stderr_fd:
        _write(sys.stderr, err.feed(text, now) + ("" if data else err.close()))
      else:
        reports += text
        while "\n" in reports:
          line, reports = reports.split("\n", 1)
          state.report(line, now)
    _write(sys.stderr, err.tick(now))
    note = state.waiting_note(now)
    if note:
      _write(sys.stderr, note + "\n")
    if child.poll() is not None:  # a grandchild may hold the pipes: not for long
      exited_at = exited_at or now
      if now - exited_at > 2.0:
        break
  return err


def run_supervised(argv: Optional[Sequence[str]]) -> Optional[int]:
  """Runs a command for several processes under :func:`supervise`
  and returns its exit status; 2 for launch options that cannot work; None when the
  command runs here (one process, or this is the supervised child). ``argv`` None
  means ``sys.argv[1:]``."""
  if launch.attach():
    return None
  argv = list(sys.argv[1:] if argv is None else argv)
  try:
    several = launch.requested(argv)
  except UsageError as e:
    sys.stderr.write(f"error: {e}\n")
    return 2
  if several is None or os.name != "posix":
    return None
  return supervise(list(argv), *several)
