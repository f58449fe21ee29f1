"""Several processes (hosts) running one program: start-up, per-process input, coordination.

The runtime is JAX's own: :func:`jax.distributed.initialize` connects the
processes through a coordinator (process 0), after which ``jax.devices()``
lists every process's devices and one ``jax.jit`` program spans them all; on
CPU the cross-process collectives go through Gloo over TCP
(``jax_cpu_collectives_implementation``).

Input. A global batch of ``B`` rows on a mesh of ``n`` devices is split into
``n`` consecutive blocks of ``B / n`` rows, block ``k`` on the mesh's ``k``-th
device (:func:`train.sharding.batch_sharding`). The mesh lists devices in
process order, so process ``p`` owns one consecutive range of rows,
``rows(p) = [p·B/P, (p+1)·B/P)`` for ``P`` processes of equal device count
(:func:`process_rows` reads it off the sharding rather than assuming it).
Each process gathers only those rows of each global batch
(``x[perm[rows(p)]]``, :func:`train.data.batches`) and hands them to
:func:`jax.make_array_from_process_local_data`; the global batch, and its
order, are exactly those of a one-process run, so every batch statistic (the
loss, INSGD's input power, GAL's per-sample terms) is the same mean over the
same rows.

Failure. Every process sends heartbeats to the coordinator; one that stops for
``heartbeat_timeout`` seconds is declared dead and the coordination service
terminates the others ("the JAX distributed service detected fatal errors ...
another task died"). A process blocked in a collective with a dead peer fails
sooner, as soon as Gloo sees the TCP connection close. Either way no process
waits for a dead one longer than the heartbeat timeout.

References: JAX, "Multi-controller and multi-process environments"
(https://docs.jax.dev/en/latest/multi_process.html); ``jax.distributed.initialize``.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple, Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from train.errors import UsageError

__all__ = [
  "Launch",
  "add_options",
  "barrier",
  "devices_note",
  "feed_eval",
  "initialize",
  "is_primary",
  "join",
  "lost_peer",
  "mesh_of",
  "process_rows",
  "put_replicas",
  "put_rows",
]

DEFAULT_HEARTBEAT_TIMEOUT = 60


class Launch(NamedTuple):
  """How this process joins the others; ``None`` fields are left to JAX's detection.

  JAX reads ``JAX_COORDINATOR_ADDRESS`` when ``coordinator`` is None, and on the
  clusters it knows (Slurm, Open MPI, Kubernetes, Cloud TPU) finds every field itself.
  """

  coordinator: Optional[str] = None  # HOST:PORT of process 0's coordination service
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT  # seconds


def _check(launch: Launch) -> None:
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


def initialize(launch: Launch) -> None:
  """Joins the processes of ``launch``: must run before anything touches a device.

  On CPU, cross-process collectives use Gloo unless another implementation
  (``mpi``) was configured. A process whose peers stop sending heartbeats for
  ``launch.heartbeat_timeout`` seconds is terminated with an error naming them.
  """
  _check(launch)
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(
    coordinator_address=launch.coordinator,
    num_processes=launch.num_processes,
    process_id=launch.process_id,
    heartbeat_timeout_seconds=launch.heartbeat_timeout,
  )


def add_options(p: argparse.ArgumentParser) -> None:
  """The command line's launch options (README, "Several devices")."""
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
    help="a process silent this long is declared dead and the others exit with an error",
  )


def join(args: argparse.Namespace) -> None:
  """:func:`initialize` when the command line asks for several processes."""
  launch = Launch(args.coordinator, args.num_processes, args.process_id, args.heartbeat_timeout)
  if args.distributed or any(v is not None for v in launch[:3]):
    initialize(launch)


def mesh_of(spec: Optional[str]):
  """The mesh of ``--mesh`` (None: one device), or on several processes by default
  ``data=<every device>``; there the mesh must take every process's devices."""
  from train import sharding

  if not spec and jax.process_count() == 1:
    return None
  mesh = sharding.make_mesh(sharding.parse_mesh(spec or f"data={jax.device_count()}"))
  if mesh.devices.size != jax.device_count() and jax.process_count() > 1:
    raise UsageError(
      f"--mesh {spec} covers {mesh.devices.size} of the {jax.device_count()} devices of the "
      f"{jax.process_count()} processes: on several processes the mesh takes them all"
    )
  return mesh


def devices_note(mesh) -> str:
  """``", mesh data=2,fsdp=4 (8 devices on 2 processes)"`` for the run's header; "" without a mesh."""
  if mesh is None:
    return ""
  per = f" on {jax.process_count()} processes" if jax.process_count() > 1 else ""
  sizes = ",".join(f"{k}={v}" for k, v in mesh.shape.items())
  return f", mesh {sizes} ({mesh.devices.size} devices{per})"


def is_primary() -> bool:
  """Whether this is process 0, the one that writes the run's files and prints."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier ``name`` (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def process_rows(sharding: NamedSharding, batch_size: int) -> slice:
  """The rows of a global batch of ``batch_size`` that this process's devices hold.

  Raises:
    UsageError: the rows are not one consecutive range (a mesh whose devices are not
      in process order), or this process holds none of them.
  """
  index = sharding.addressable_devices_indices_map((batch_size,))
  spans = sorted({(s[0].indices(batch_size)[:2]) for s in index.values()})
  if not spans:
    raise UsageError(f"process {jax.process_index()} has no device in the mesh")
  lo, hi = spans[0][0], spans[-1][1]
  if sum(b - a for a, b in spans) != hi - lo:
    raise UsageError(
      "this process's batch rows are not consecutive: build the mesh in process order"
    )
  return slice(lo, hi)


def put_rows(sharding: NamedSharding, local: np.ndarray, batch_size: int) -> jax.Array:
  """The global batch (``batch_size`` rows) of which this process supplies ``local``,
  its :func:`process_rows`."""
  shape = (batch_size,) + tuple(np.shape(local)[1:])
  return jax.make_array_from_process_local_data(sharding, np.asarray(local), shape)


def put_replicas(tree, shardings):
  """``tree``, which every process holds whole and alike, laid out as ``shardings`` say.

  Each process fills only its own devices' shards from its copy. (``jax.device_put``
  would also compare the copies across processes, leaf by leaf, and reads a NaN
  entry, which some optimizer states start with, as a difference.)
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, shardings)

  def put(leaf, sharding):
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

  return jax.tree.map(put, tree, shardings)


def feed_eval(eval_step, sharding: NamedSharding):
  """``eval_step(state, x, y, n_valid)`` taking a whole host batch of which this process
  puts only its rows on the mesh; the step's sums then cover the global batch."""

  def fed(state, x, y, n_valid):
    b = len(x)
    rows = process_rows(sharding, b)
    return eval_step(state, put_rows(sharding, x[rows], b), put_rows(sharding, y[rows], b), n_valid)

  return fed


def lost_peer(error: BaseException) -> Optional[str]:
  """A one-line account of ``error`` when it is a collective that failed because another
  process went away (Gloo sees its connection close), else None."""
  if jax.process_count() == 1 or not isinstance(error, jax.errors.JaxRuntimeError):
    return None
  first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return (
    f"process {jax.process_index()} of {jax.process_count()}: a collective with the other "
    f"processes failed, most likely because one of them died; completed checkpoints are "
    f"kept, rerun every process with --resume ({first})"
  )
