"""Orbax checkpoints of the train state: save, restore the latest, resume.

The train state is saved as a plain nested dict (flax.serialization's state
dict) with `StandardSave`, so a checkpoint can be read without this package:

  ocp.CheckpointManager(path).restore(step)  # -> {'params': ..., 'step': ...}

Orbax writes each step to a temporary directory and renames it when complete,
so a process killed mid-save leaves the previous step restorable.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import flax.serialization
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` for one run's workdir."""

  def __init__(self, directory: str, *, max_to_keep: int):
    self.directory = os.path.abspath(directory)  # Orbax wants absolute paths.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any) -> None:
    """Asynchronous save; returns once the arrays are copied off the device."""
    self._manager.save(step, args=ocp.args.StandardSave(
        flax.serialization.to_state_dict(state)))

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores `step` (default: latest) into the structure of `target`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                      flax.serialization.to_state_dict(target))
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return flax.serialization.from_state_dict(target, restored)

  def restore_or(self, target: Any) -> Any:
    """The latest checkpoint if there is one, else `target` unchanged."""
    return target if self.latest_step() is None else self.restore(target)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
