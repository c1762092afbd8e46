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
import flax.traverse_util
import jax
import orbax.checkpoint as ocp

from smsdd_jax import rundir


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the model the config describes."""


class Checkpointer:
  """A thin wrapper over `ocp.CheckpointManager` for one run's workdir."""

  def __init__(self, directory: str, *, max_to_keep: int):
    self.directory = os.path.abspath(directory)  # Orbax wants absolute paths.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        # Named up front so metadata can be read before any save or restore.
        item_handlers=ocp.StandardCheckpointHandler())

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
    self._check_shapes(step, target)
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                      flax.serialization.to_state_dict(target))
    restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return flax.serialization.from_state_dict(target, restored)

  def _check_shapes(self, step: int, target: Any) -> None:
    """Names the first mismatching array instead of a deep Orbax traceback."""
    saved = _flat_shapes(self._manager.item_metadata(step).tree)
    wanted = _flat_shapes(flax.serialization.to_state_dict(target))
    order = lambda k: (not k.startswith('params/'), k)  # Name a param first.
    missing = sorted(set(wanted) - set(saved), key=order)
    extra = sorted(set(saved) - set(wanted), key=order)
    wrong = [k for k in sorted(set(saved) & set(wanted), key=order)
             if saved[k] != wanted[k]]
    if not (missing or extra or wrong):
      return
    if wrong:
      what = f'{wrong[0]} is {saved[wrong[0]]} there but {wanted[wrong[0]]} here'
    elif missing:
      what = f'{missing[0]} is missing there (model here has it)'
    else:
      what = f'{extra[0]} is there but not in the model here'
    raise CheckpointMismatchError(
        f'checkpoint {self.directory}/{step} does not match the configured model: '
        f'{what} ({len(wrong) + len(missing) + len(extra)} arrays differ)'
        f'{_saved_model_hint(self.directory)}')

  def restore_or(self, target: Any) -> Any:
    """The latest checkpoint if there is one, else `target` unchanged."""
    return target if self.latest_step() is None else self.restore(target)

  def wait(self) -> None:
    """Blocks until every started save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _flat_shapes(tree) -> dict[str, tuple]:
  flat = flax.traverse_util.flatten_dict(tree, sep='/')
  return {k: tuple(getattr(v, 'shape', ())) for k, v in flat.items()}


def _saved_model_hint(directory: str) -> str:
  """'; that run used model.width_mult=..., ...' from the run's config.json."""
  try:
    model = rundir.read_config(os.path.dirname(directory.rstrip('/')))['model']
  except (OSError, KeyError, ValueError):
    return ''
  fields = ', '.join(f'model.{k}={model[k]}' for k in ('width_mult', 'batch_norm')
                     if k in model)
  return f'; the checkpoint\'s run used {fields}'
