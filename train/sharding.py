"""Data-parallel and FSDP-style sharding on a ``jax.sharding.Mesh``.

The mesh has two axes, ``data`` and ``fsdp``; ``--mesh data=8`` is pure data
parallelism, ``--mesh data=2,fsdp=4`` shards parameters too. The rule:

- the batch is split over every device (both axes), so each device sees
  ``batch / (data * fsdp)`` examples, and every batch statistic (the loss,
  INSGD's input power, GAL's per-sample terms) is still a mean over the global
  batch: ``jax.jit`` keeps the program's single-device meaning and inserts the
  collectives;
- a parameter (and every optimizer-state leaf of the same shape) with at least
  ``min_shard_size`` values is split over ``fsdp`` along its largest dimension
  that ``fsdp`` divides; everything else is replicated.

On several hosts, call ``jax.distributed.initialize()`` first (``--distributed``);
the mesh then spans every process's devices.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from train.errors import UsageError

__all__ = [
  "AXES",
  "all_gather_sizes",
  "batch_sharding",
  "check_batch",
  "leaf_spec",
  "make_mesh",
  "parse_mesh",
  "state_shardings",
]

#: The mesh axes ``--mesh`` accepts: the batch over ``data``, parameters over ``fsdp``.
AXES = ("data", "fsdp")


def parse_mesh(text: str) -> dict[str, int]:
  """Parses ``data=4,fsdp=2`` into ``{'data': 4, 'fsdp': 2}``."""
  sizes = {"data": 1, "fsdp": 1}
  for part in filter(None, text.split(",")):
    name, sep, value = part.partition("=")
    name = name.strip()
    if not sep or name not in sizes:
      raise UsageError(f"bad --mesh {text!r}: expected e.g. data=8 or data=2,fsdp=4")
    try:
      sizes[name] = int(value)
    except ValueError:
      raise UsageError(f"bad --mesh {text!r}: {value!r} is not an integer") from None
    if sizes[name] < 1:
      raise UsageError(f"bad --mesh {text!r}: sizes must be positive")
  return sizes


def make_mesh(sizes: dict[str, int]) -> Mesh:
  """A ``data`` × ``fsdp`` mesh over the first devices; a clear error when too few are visible."""
  n = sizes["data"] * sizes["fsdp"]
  devices = jax.devices()
  if n > len(devices):
    raise UsageError(
      f"--mesh needs {n} devices but {len(devices)} are visible "
      "(on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N)"
    )
  grid = np.asarray(devices[:n]).reshape(sizes["data"], sizes["fsdp"])
  return Mesh(grid, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The batch split along its first axis over every device of ``mesh``."""
  return NamedSharding(mesh, P(AXES))


def leaf_spec(shape: tuple[int, ...], fsdp: int, min_shard_size: int = 2**14) -> P:
  """The partition of one array under the FSDP rule in the module docstring."""
  if fsdp == 1 or not shape or math.prod(shape) < min_shard_size:
    return P()
  order = sorted(range(len(shape)), key=lambda d: -shape[d])
  for d in order:
    if shape[d] % fsdp == 0:
      spec = [None] * len(shape)
      spec[d] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(mesh: Mesh, tree: Any, min_shard_size: int = 2**14) -> Any:
  """NamedShardings for every leaf of ``tree`` (params, optimizer state, ...)."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, leaf_spec(tuple(np.shape(x)), fsdp, min_shard_size)), tree
  )


def all_gather_sizes(hlo: str) -> list[int]:
  """Element counts of the results of every all-gather in a compiled HLO module.

  For checking what a sharded step gathers: ``jit(f).lower(...).compile().as_text()``.
  """
  sizes = []
  for m in re.finditer(r"= \w+\[([\d,]*)\][^\n]*? all-gather(?:-start)?\(", hlo):
    sizes.append(math.prod(int(d) for d in m.group(1).split(",") if d))
  return sizes


def check_batch(batch_size: int, mesh: Mesh) -> None:
  """Refuses a batch that the mesh's devices cannot share equally."""
  n = mesh.devices.size
  if batch_size % n:
    raise UsageError(f"--batch-size {batch_size} is not divisible by the {n} devices of --mesh")
