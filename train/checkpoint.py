"""Orbax checkpoints of the whole training state plus the metrics history.

Orbax writes each checkpoint into a temporary directory and renames it into
place when complete, so a process killed mid-write leaves the previous
checkpoint intact; unfinished temporaries are ignored on restore.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every ``every`` steps and at the last step; keeps the newest ``keep``.

  Args:
    directory: Where the checkpoints live (created if needed).
    every: Save interval in optimizer steps (0: only at the end).
    keep: How many checkpoints to keep.
  """

  def __init__(self, directory: str, every: int = 0, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.every = every
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def should_save(self, step: int, total: int) -> bool:
    return step == total or (self.every > 0 and step % self.every == 0)

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, history: list[dict]) -> None:
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)
      ),
    )

  def restore_latest(self, like: Any) -> Optional[tuple[Any, list[dict]]]:
    """Restores the newest checkpoint into the structure of ``like``, or None."""
    step = self._manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    out = self._manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), history=ocp.args.JsonRestore()
      ),
    )
    return out["state"], list(out["history"] or [])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
