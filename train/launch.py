"""How one process of a multi-process run is launched: the command line's launch
options, and this process's side of the supervisor that watches it.

With several processes, ``python -m train`` runs the training as a child process of
a supervisor (:mod:`train.supervisor`), which turns every way of losing a peer into
one line. :func:`train.supervisor.run_supervised` decides, from the launch options alone (no JAX
import), whether a command needs one; in the child, :func:`attach` opens the pipe
on which :func:`notify` reports joining and checkpoints, and ends the child should
the supervisor go away.
"""

from __future__ import annotations

import argparse
import os
import threading
from typing import NamedTuple, Optional, Sequence

from train.errors import UsageError

__all__ = [
  "DEFAULT_HEARTBEAT_TIMEOUT",
  "DEFAULT_INIT_TIMEOUT",
  "Launch",
  "add_options",
  "attach",
  "check",
  "from_args",
  "notify",
  "requested",
]

#: Seconds without heartbeats after which a process counts as dead (``--heartbeat-timeout``).
DEFAULT_HEARTBEAT_TIMEOUT = 60
#: Seconds every process waits for all the others to join (``--init-timeout``), JAX's default.
DEFAULT_INIT_TIMEOUT = 300

_ENV = "TRAIN_SUPERVISOR_FDS"  # in the child: "<status fd>,<lifeline fd>"


class Launch(NamedTuple):
  """How this process joins the others; ``None`` fields are left to JAX's detection.

  JAX reads ``JAX_COORDINATOR_ADDRESS`` when ``coordinator`` is None, and on the
  clusters it knows (Slurm, Open MPI, Kubernetes, Cloud TPU) finds every field itself.
  """

  coordinator: Optional[str] = None  # HOST:PORT of process 0's coordination service
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT  # seconds
  init_timeout: int = DEFAULT_INIT_TIMEOUT  # seconds


def check(launch: Launch) -> None:
  """Raises :class:`~train.errors.UsageError`, naming the option, for launch options
  that cannot work."""
  explicit = (launch.coordinator, launch.num_processes, launch.process_id)
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise UsageError(
      "--coordinator, --num-processes and --process-id go together (or none of them, "
      "to let JAX detect the cluster)"
    )
  if launch.coordinator is not None:
    host, sep, port = launch.coordinator.rpartition(":")
    if not sep or not host or not port.isdigit():
      raise UsageError(f"bad --coordinator {launch.coordinator!r}: expected HOST:PORT")
  if launch.num_processes is not None and launch.num_processes < 1:
    raise UsageError(f"--num-processes must be positive, got {launch.num_processes}")
  if launch.num_processes is not None and not 0 <= launch.process_id < launch.num_processes:
    raise UsageError(
      f"--process-id {launch.process_id} is not in 0..{launch.num_processes - 1} "
      f"(--num-processes {launch.num_processes})"
    )
  if launch.heartbeat_timeout < 1:
    raise UsageError(f"--heartbeat-timeout must be at least 1 s, got {launch.heartbeat_timeout}")
  if launch.init_timeout < 1:
    raise UsageError(f"--init-timeout must be at least 1 s, got {launch.init_timeout}")


def add_options(p: argparse.ArgumentParser) -> None:
  """The command line's launch options (docs/devices.md, "Several processes or hosts")."""
  g = p.add_argument_group("several processes (hosts)")
  g.add_argument(
    "--distributed",
    action="store_true",
    help="join the other processes with jax.distributed.initialize() (implied by "
    "--coordinator); without --coordinator JAX reads JAX_COORDINATOR_ADDRESS or detects "
    "the cluster (Slurm, Open MPI, Kubernetes, Cloud TPU); the mesh then spans every "
    "process's devices (default --mesh data=<all devices>)",
  )
  g.add_argument("--coordinator", default=None, metavar="HOST:PORT", help="process 0's address")
  g.add_argument("--num-processes", type=int, default=None, metavar="N")
  g.add_argument("--process-id", type=int, default=None, metavar="I", help="0 .. N-1")
  g.add_argument(
    "--heartbeat-timeout",
    type=int,
    default=DEFAULT_HEARTBEAT_TIMEOUT,
    metavar="SECONDS",
    help="a process silent this long is declared dead and the others exit with one line naming it",
  )
  g.add_argument(
    "--init-timeout",
    type=int,
    default=DEFAULT_INIT_TIMEOUT,
    metavar="SECONDS",
    help="give up when the processes have not all joined after this long",
  )
  g.add_argument(
    "--gloo-logs",
    action="store_true",
    help="show Gloo's connection messages (hidden by default)",
  )


def from_args(args: argparse.Namespace) -> Launch:
  """The :class:`Launch` of parsed command-line options."""
  return Launch(
    args.coordinator,
    args.num_processes,
    args.process_id,
    args.heartbeat_timeout,
    args.init_timeout,
  )


def _wants_processes(args: argparse.Namespace) -> bool:
  launch = from_args(args)
  return bool(args.distributed) or any(v is not None for v in launch[:3])


class _Unparsable(Exception):
  pass


class _QuietParser(argparse.ArgumentParser):
  def error(self, message):  # the full parser reports it
    raise _Unparsable(message)


def requested(argv: Sequence[str]) -> Optional[tuple[Launch, bool]]:
  """``(launch, gloo_logs)`` when ``argv`` asks for several processes, else None.

  Reads only the launch options (no JAX import); None also when they do not parse,
  for the full parser to report.

  Raises:
    UsageError: launch options that cannot work (:func:`check`).
  """
  p = _QuietParser(add_help=False)
  add_options(p)
  try:
    args, _ = p.parse_known_args(list(argv))
  except _Unparsable:
    return None
  if not _wants_processes(args):
    return None
  launch = from_args(args)
  check(launch)
  return launch, bool(args.gloo_logs)


# ------------------------------------------------------------------------ the child


_STATUS: list[int] = []  # the status pipe's write end, in a supervised child


def attach() -> bool:
  """In a child of :func:`train.supervisor.supervise`: opens the status pipe and ends this process when
  the supervisor goes away. Returns whether this process is such a child."""
  spec = os.environ.pop(_ENV, None)
  if spec is None:
    return False
  status, lifeline = (int(v) for v in spec.split(","))
  _STATUS[:] = [status]
  threading.Thread(target=_follow_supervisor, args=(lifeline,), daemon=True).start()
  return True


def _follow_supervisor(fd: int) -> None:
  """Returns only by ending the process: the supervisor's end of the pipe closed."""
  try:
    while os.read(fd, 1):
      pass
  except OSError:
    pass
  os._exit(1)  # nobody reads this process's output any more; the others see it stop


def notify(event: str, *fields) -> None:
  """Tells the supervisor an ``event`` (``join``, ``joined`` or ``checkpoint``) and its
  fields; does nothing in a process without one."""
  if not _STATUS:
    return
  text = " ".join([event, *(str(f).replace("\n", " ") for f in fields)])
  try:
    os.write(_STATUS[0], (text + "\n").encode())
  except OSError:
    pass
