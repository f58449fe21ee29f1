"""Orbax checkpoints of the whole training state plus the metrics history.

Orbax writes each checkpoint into a temporary directory and renames it into
place when complete, so a process killed mid-write leaves the previous
checkpoint intact; unfinished temporaries are ignored on restore. Old
checkpoints are removed the same way in reverse: renamed out of the step
namespace first (``.removing-<step>``, atomic), then deleted, so a process
killed while deleting never leaves a half-deleted step that looks like a
checkpoint; leftovers are cleared when the next ``Checkpointer`` opens the
directory.

On several processes every process calls :meth:`Checkpointer.save` and
:meth:`Checkpointer.restore_latest`: each writes and reads the shards its
devices hold, Orbax's primary (process 0) writes the metadata and the history,
and the directory must be one that every process sees (a shared file system or
a bucket). The files record the global arrays, not the mesh, so a checkpoint
restores onto any mesh and process count: the restore reads into the layout of
the ``like`` state it is given. Removing old steps is process 0's, between
barriers.

A folder holds other files too without harm: what is not a step (a number), an
unfinished write or a half-deleted step is neither read nor removed, and
:func:`discard` (``--overwrite``) leaves it in place.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from typing import Any, Callable, Optional

import jax
import orbax.checkpoint as ocp

from train import distributed
from train.errors import UsageError

__all__ = ["Checkpointer", "UnreadableCheckpointError", "discard", "steps_in"]

_REMOVING = ".removing-"
# A step (orbax names it by its number), one being written, one being removed.
_OURS = re.compile(rf"(\d+)(\.orbax-checkpoint-tmp-\d+)?|{re.escape(_REMOVING)}\d+")


class UnreadableCheckpointError(UsageError):
  """A checkpoint folder's newest step does not read back as this run's state."""


class _NoMissingMetadataWarning(logging.Filter):
  """Orbax warns of a step folder without its metadata file whenever it looks at one;
  :meth:`Checkpointer.restore_latest` says so itself, in its one-line error."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Metadata file does not exist")


@contextlib.contextmanager
def _quiet_orbax():
  logger, quiet = logging.getLogger("absl"), _NoMissingMetadataWarning()
  logger.addFilter(quiet)
  try:
    yield
  finally:
    logger.removeFilter(quiet)


def steps_in(directory: str) -> list[int]:
  """The checkpoint steps in ``directory`` (complete or not), oldest first; [] if none."""
  if not os.path.isdir(directory):
    return []
  found = (_OURS.fullmatch(n) for n in os.listdir(directory))
  return sorted({int(m.group(1)) for m in found if m and m.group(1)})


def discard(directory: str) -> tuple[list[int], list[str]]:
  """Removes the checkpoints in ``directory``: its steps, unfinished writes and
  half-deleted steps, and the folder itself once empty. Returns the steps removed and
  the names of the other entries, left in place."""
  if not os.path.isdir(directory):
    return [], []
  removed, kept = steps_in(directory), []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if not _OURS.fullmatch(name):
      kept.append(name)
    elif os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  if not kept:
    os.rmdir(directory)
  return removed, kept


class Checkpointer:
  """Saves every ``every`` steps and at the last step; keeps the newest ``keep``.

  Args:
    directory: Where the checkpoints live (created if needed).
    every: Save interval in optimizer steps (0: only at the end).
    keep: How many checkpoints to keep.
    on_restore: Called with the step :meth:`restore_latest` has restored.
  """

  def __init__(
    self,
    directory: str,
    every: int = 0,
    keep: int = 2,
    on_restore: Optional[Callable[[int], None]] = None,
  ):
    if keep < 1:
      raise ValueError(f"keep must be at least 1, got {keep}")
    self.directory = os.path.abspath(directory)
    self.every = every
    self.keep = keep
    self.on_restore = on_restore
    os.makedirs(self.directory, exist_ok=True)
    if distributed.is_primary():
      for name in os.listdir(self.directory):
        if name.startswith(_REMOVING):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    distributed.barrier("checkpointer-open")
    # Retention is ours (see _prune), so orbax keeps every step it writes.
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with _quiet_orbax():
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    distributed.note_checkpoint(self.directory, self._manager.latest_step())

  def should_save(self, step: int, total: int) -> bool:
    return step == total or (self.every > 0 and step % self.every == 0)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(
    self, step: int, state: Any, history: list[dict], input_position: Optional[dict] = None
  ) -> None:
    """Saves ``state``, ``history`` and, as item ``input``, where the run stands in its
    data (:class:`train.inputs.InputPosition`)."""
    items = dict(state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history))
    if input_position is not None:
      items["input"] = ocp.args.JsonSave(input_position)
    self._manager.save(step, args=ocp.args.Composite(**items))
    self._manager.wait_until_finished()
    distributed.note_checkpoint(self.directory, step)
    self._prune()

  def _prune(self) -> None:
    """Removes all but the newest ``keep`` steps: rename out of sight, then delete."""
    old = sorted(self._manager.all_steps())[: -self.keep]
    for step in old if distributed.is_primary() else ():
      path = os.path.join(self.directory, str(step))
      if not os.path.isdir(path):
        continue
      hidden = os.path.join(self.directory, f"{_REMOVING}{step}")
      shutil.rmtree(hidden, ignore_errors=True)
      os.replace(path, hidden)
      shutil.rmtree(hidden, ignore_errors=True)
    if old:
      distributed.barrier("checkpointer-prune")
      self._manager.reload()

  def restore_latest(self, like: Any) -> Optional[tuple[Any, list[dict]]]:
    """Restores the newest checkpoint into the structure of ``like``, or None.

    Raises:
      UnreadableCheckpointError: the newest step is not a checkpoint of ``like``'s
        structure (another program's files, another model, a damaged copy).
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    try:
      if not os.path.isfile(os.path.join(self.directory, str(step), "_CHECKPOINT_METADATA")):
        raise FileNotFoundError("no _CHECKPOINT_METADATA, the file orbax writes with each step")
      out = self._manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
        ),
      )
    except jax.errors.JaxRuntimeError:  # a collective failed: not the folder's fault
      raise
    except Exception as e:  # orbax raises KeyError, ValueError, FileNotFoundError...
      reason = (str(e).strip().splitlines() or [""])[0].strip("'\"")[:160]
      raise UnreadableCheckpointError(
        f"cannot resume from {self.directory}: step {step} there is not a checkpoint of this "
        f"run ({type(e).__name__}: {reason}); pass --overwrite instead of --resume to discard "
        "its checkpoints and start afresh"
      ) from None
    if self.on_restore is not None:
      self.on_restore(step)
    return out["state"], list(out["history"] or [])

  def restore_input(self, step: int) -> Optional[dict]:
    """The input position saved with checkpoint ``step``, or None (saved without one)."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "input")):
      return None
    return dict(
      self._manager.restore(step, args=ocp.args.Composite(input=ocp.args.JsonRestore()))["input"]
    )

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
