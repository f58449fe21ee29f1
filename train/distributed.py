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
(``x[perm[rows(p)]]``, :func:`train.inputs.batches`) and hands them to
:func:`jax.make_array_from_process_local_data`; the global batch, and its
order, are exactly those of a one-process run, so every batch statistic (the
loss, INSGD's input power, GAL's per-sample terms) is the same mean over the
same rows.

Failure. Every process sends heartbeats to the coordinator; one that stops for
``heartbeat_timeout`` seconds is declared dead, and the coordination service ends
the others from C++ (so does the coordinator's death, at once, and a start-up whose
processes have not all joined within ``init_timeout``). The command line runs each
process under a supervisor (:mod:`train.supervisor`) that turns that end into one
line naming the dead process. A collective blocked on a dead peer may fail first
(Gloo sees its connection close): :func:`end_if_peer_lost` then waits for the
service's verdict, so no process outlives a dead one by more than the heartbeat
timeout, and every way of losing a peer ends the same way.

References: JAX, "Multi-controller and multi-process environments"
(https://docs.jax.dev/en/latest/multi_process.html); ``jax.distributed.initialize``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from train import launch as launch_lib
from train.errors import UsageError
from train.launch import Launch, check

__all__ = [
  "barrier",
  "devices_note",
  "end_if_peer_lost",
  "feed_eval",
  "initialize",
  "is_primary",
  "join",
  "mesh_of",
  "note_checkpoint",
  "process_rows",
  "put_replicas",
  "put_rows",
]

_JOINED: list[Launch] = []  # the launch this process joined with


def initialize(launch: Launch) -> None:
  """Joins the processes of ``launch``: must run before anything touches a device.

  On CPU, cross-process collectives use Gloo unless another implementation
  (``mpi``) was configured. Gives up after ``launch.init_timeout`` seconds, and ends
  when a peer stops sending heartbeats for ``launch.heartbeat_timeout`` seconds
  (both from C++; :mod:`train.supervisor` says so in one line).
  """
  check(launch)
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  launch_lib.notify("join")
  jax.distributed.initialize(
    coordinator_address=launch.coordinator,
    num_processes=launch.num_processes,
    process_id=launch.process_id,
    initialization_timeout=launch.init_timeout,
    heartbeat_timeout_seconds=launch.heartbeat_timeout,
  )
  _JOINED[:] = [launch]
  launch_lib.notify("joined", jax.process_index(), jax.process_count())


def join(args: argparse.Namespace) -> None:
  """:func:`initialize` when the command line asks for several processes."""
  launch = launch_lib.from_args(args)
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


def note_checkpoint(directory: str, step: Optional[int]) -> None:
  """Tells a supervisor (:mod:`train.launch`) the newest complete checkpoint of the
  current run (None: none yet), for its message should a peer die."""
  launch_lib.notify("checkpoint", "none" if step is None else step, directory)


def end_if_peer_lost(error: BaseException) -> None:
  """Ends this process if ``error`` was raised by a collective of a multi-process run;
  returns for any other error.

  Gloo may fail a collective with a dead peer, with any of several messages, before
  the coordination service has decided; so this waits for the service to end the
  process, as it does once a peer has been silent for the heartbeat timeout (or at
  once if the coordinator died), and a supervisor (:mod:`train.supervisor`) turns
  that into one line naming the dead process. Should the verdict not come, it
  prints a line of its own and exits with status 1, skipping JAX's exit, which
  waits for every process to shut down.
  """
  if not _JOINED or not isinstance(error, jax.errors.JaxRuntimeError):
    return
  text = str(error).strip()
  first = text.splitlines()[0] if text else type(error).__name__
  deadline = time.monotonic() + _JOINED[0].heartbeat_timeout + 15
  while time.monotonic() < deadline:
    time.sleep(0.2)
  sys.stderr.write(
    f"error: process {jax.process_index()} of {jax.process_count()}: a collective with the "
    f"other processes failed and none was declared dead; rerun every process with --resume "
    f"({first})\n"
  )
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(1)
