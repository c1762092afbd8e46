"""Orbax checkpoints of the train state: save, restore the latest, resume.

The train state is saved as a plain nested dict (flax.serialization's state
dict) with `StandardSave`, so a checkpoint can be read without this package:

  ocp.CheckpointManager(path, item_handlers=ocp.StandardCheckpointHandler()
                        ).restore(step)  # -> {'params': ..., 'step': ...}

(without `item_handlers` Orbax still restores it, but first warns twice that
item "default" "could not be restored": it looks the handler up on disk only
after reading the metadata).

Orbax writes each step to a temporary directory and renames it when complete,
so a process killed mid-save leaves the previous step restorable. A step
damaged afterwards (a truncated or emptied file: a full disk, a bad copy) is
`CheckpointUnreadableError`, one line naming it; `restore_or` (the training
resume) then moves it aside and resumes from the newest readable step.
`BestCheckpoint` keeps the best-by-validation state apart from the periodic
ones, with its rule for ties.

Orbax keeps no checksum of the arrays: flipped bytes in a data file restore
silently as other numbers (NaN, 1e38). So each save records a sha256 per
array in the step's own metadata (`default/_METADATA`'s custom_metadata, key
`smsdd_digest`: written inside the step before Orbax renames it complete, so a
step never carries another save's digest), and every restore checks the
arrays it read against it: a mismatch is `CheckpointUnreadableError` too.
Steps saved before digests were recorded restore unchecked (said once).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Any, Optional

import flax.serialization
import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

from smsdd_jax import metrics as metrics_lib
from smsdd_jax import models
from smsdd_jax import rundir


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not fit the model the config describes."""


class CheckpointUnreadableError(ValueError):
  """A checkpoint's files are damaged (truncated, emptied, missing): the
  message names the step directory and, where it can, the file."""


log = logging.getLogger('smsdd_jax')


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
    """Asynchronous save; returns once the arrays are copied off the device
    and their digest is computed (it travels in the step's metadata)."""
    tree = flax.serialization.to_state_dict(state)
    digest = tree_digest(tree)
    self._manager.save(step, args=ocp.args.StandardSave(
        tree, custom_metadata=None if digest is None else {DIGEST_KEY: digest}))

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores `step` (default: latest) into the structure of `target`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    try:
      # Runs saved before the layers were named (each backbone states its
      # old names): read under them, renamed below (the one place old trees
      # are translated).
      legacy = models.uses_legacy_names(self._saved_tree(step))
      self._check_shapes(step, target)
      abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                        flax.serialization.to_state_dict(target))
      if legacy:
        abstract = models.rename_legacy(abstract, inverse=True)
      restored = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
      self._check_digest(step, restored)  # Under the names it was saved with.
      if legacy:
        restored = models.rename_legacy(restored)
    except (CheckpointMismatchError, CheckpointUnreadableError):
      raise
    except Exception as e:  # Orbax and TensorStore raise bare Exceptions too.
      why = _damage(os.path.join(self.directory, str(step)), e)
      if why is None:
        raise  # No sign of a damaged file: not ours to relabel.
      raise CheckpointUnreadableError(
          f'checkpoint {self.directory}/{step} is unreadable: {why}') from e
    return flax.serialization.from_state_dict(target, restored)

  def _saved_tree(self, step: int) -> dict:
    """The saved state's structure (metadata only, no array read)."""
    return self._manager.item_metadata(step).tree

  def _check_digest(self, step: int, restored: dict) -> None:
    """CheckpointUnreadableError when the arrays read differ from those saved
    (by the digest saved with them); a step saved without one is said once."""
    custom = self._manager.item_metadata(step).custom_metadata or {}
    saved = custom.get(DIGEST_KEY)
    if not isinstance(saved, dict) or not isinstance(saved.get('leaves'), dict):
      if self.directory not in _UNCHECKED_SAID:
        _UNCHECKED_SAID.add(self.directory)
        log.warning('checkpoint %s/%d has no digest (saved before digests were '
                    'recorded): restored without checking its bytes', self.directory, step)
      return
    now = _flat_leaves(restored)
    wrong = [k for k, want in saved['leaves'].items()
             if k not in now or not _matches(now[k], want)]
    if wrong:
      raise CheckpointUnreadableError(
          f'checkpoint {self.directory}/{step} is unreadable: {wrong[0]} does not match '
          f'the digest saved with it ({len(wrong)} of {len(saved["leaves"])} arrays '
          'differ: its files changed after the save, e.g. bit rot or a bad copy)')

  def _check_shapes(self, step: int, target: Any) -> None:
    """Names the first mismatching array instead of a deep Orbax traceback."""
    saved = _flat_shapes(models.rename_legacy(self._saved_tree(step)))
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
    """The newest readable checkpoint, else `target` unchanged.

    Each newer step that is unreadable is moved aside (`<step>.unreadable`,
    kept for inspection; left in place its step could never be saved again)
    and logged in one line saying which step the run resumes from."""
    unreadable = []
    restored = target
    for step in sorted(self.all_steps(), reverse=True):
      try:
        restored = self.restore(target, step)
        break
      except CheckpointUnreadableError as e:
        unreadable.append((step, str(e)))
    else:
      step = None
    resume = f'resuming from step {step}' if step is not None else \
        'no readable checkpoint left: starting from scratch'
    for bad, why in unreadable:
      log.warning('%s; moved aside to %s; %s', why, self._move_aside(bad), resume)
    return restored

  def _move_aside(self, step: int) -> str:
    """Renames directory/<step> to <step>.unreadable (a name Orbax does not
    list) on process 0, once every process is past reading it."""
    src = os.path.join(self.directory, str(step))
    dst, k = f'{src}.unreadable', 1
    while os.path.exists(dst):
      k += 1
      dst = f'{src}.unreadable{k}'
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f'smsdd_unreadable_{step}_read')
    if jax.process_index() == 0:
      os.rename(src, dst)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f'smsdd_unreadable_{step}_moved')
    self._manager.reload()
    return dst

  def wait(self) -> None:
    """Blocks until every started save is complete on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


DIGEST_KEY = 'smsdd_digest'  # In the step's custom_metadata.
_UNCHECKED_SAID: set = set()  # Directories whose undigested step was said.


def _flat_leaves(tree) -> dict:
  return flax.traverse_util.flatten_dict(tree, sep='/') if isinstance(tree, dict) else {}


def _host(x) -> Optional[np.ndarray]:
  """The array's values on this host, or None where this process holds only
  part of it (sharded across processes: no whole-array digest here)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      return None
    x = x.addressable_data(0)
  return np.asarray(x)


def _leaf_digest(a: np.ndarray) -> str:
  """sha256 of the array's dtype, shape and bytes."""
  a = np.ascontiguousarray(a)
  h = hashlib.sha256(f'{a.dtype.str}{a.shape}'.encode())
  h.update(memoryview(a.reshape(-1).view(np.uint8)))
  return h.hexdigest()


def _matches(x, saved: Any) -> bool:
  """Whether restored array `x` has the digest `saved` ({'sha256', 'dtype'}),
  compared in the saved dtype (a restore may read into a wider one); an
  array this process holds only part of cannot be checked here (True)."""
  if not isinstance(saved, dict):
    return False
  a = _host(x)
  if a is None:
    return True
  dtype = saved.get('dtype')
  if dtype is not None and str(a.dtype) != dtype:
    a = a.astype(dtype)
  return _leaf_digest(a) == saved.get('sha256')


def tree_digest(tree: dict) -> Optional[dict]:
  """{'algorithm': 'sha256', 'leaves': {'params/.../kernel': {'sha256',
  'dtype'}}} of a state dict, or None when an array is not whole on this
  process (then the step is saved without a digest)."""
  leaves = {}
  for key, x in _flat_leaves(tree).items():
    a = _host(x)
    if a is None:
      return None
    leaves[key] = {'sha256': _leaf_digest(a), 'dtype': str(a.dtype)}
  return {'algorithm': 'sha256', 'leaves': leaves}


# TensorStore's status codes that mean the bytes on disk are not what was saved.
_DAMAGE_CODES = ('DATA_LOSS', 'OUT_OF_RANGE', 'NOT_FOUND', 'FAILED_PRECONDITION')


def _damage(step_dir: str, error: BaseException) -> Optional[str]:
  """Why the checkpoint at step_dir cannot be read, in one line (an empty or
  non-JSON metadata file by name, else TensorStore's or the OS's reason), or
  None when nothing points at damaged files (another error: re-raised)."""
  found = _damaged_file(step_dir)
  if found:
    return found
  chain, e = [], error
  while e is not None and len(chain) < 8:
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in reversed(chain):  # The innermost says most.
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, OSError) or text.split(':')[0] in _DAMAGE_CODES:
      text = text.split(' [tensorstore_spec=')[0].replace(f'{step_dir}/', '')
      return text if len(text) <= 300 else text[:297] + '...'
  return None


def _damaged_file(step_dir: str) -> Optional[str]:
  """'<file> is empty' / '<file> is not valid JSON' for the first such file
  under step_dir (Orbax's metadata files are JSON), else None."""
  for root, _, files in sorted(os.walk(step_dir)):
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      try:
        if os.path.getsize(path) == 0:
          return f'{rel} is empty'
        if name.startswith('_') or os.path.basename(root) == 'array_metadatas':
          with open(path, encoding='utf-8') as f:
            json.load(f)
      except (OSError, ValueError) as e:
        return f'{rel} is not valid JSON ({e})' if isinstance(e, ValueError) else \
            f'{rel}: {e.strerror or e}'
  return None


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


class BestCheckpoint:
  """Keeps the state with the best validation metric in checkpoints_best/,
  apart from the periodic ones so pruning never removes it; best.json says
  which step and value it holds.

  A tie in `checkpoint.best_metric` (common: balanced accuracy on a few dozen
  val images takes few values) goes to the better `checkpoint.best_tie_breakers`
  ('metric:max' or 'metric:min', in order); a full tie keeps the earlier step.
  An undefined (NaN) value is worse than any number."""

  def __init__(self, workdir: str, ckpt_config):
    self.keys = [(ckpt_config.best_metric, ckpt_config.best_mode)] + [
        _metric_and_mode(t) for t in ckpt_config.best_tie_breakers]
    self.metric, self.mode = self.keys[0]
    for name, mode in self.keys:
      if mode not in ('max', 'min'):
        raise ValueError(f'config.checkpoint: {name!r} has mode {mode!r}: expected '
                         'max or min')
    self.path = os.path.join(workdir, rundir.BEST)
    self.checkpoints = Checkpointer(
        os.path.join(workdir, rundir.CHECKPOINTS_BEST), max_to_keep=1)
    self.values = None  # Of self.keys, for the step held now.
    if os.path.exists(self.path):
      saved = rundir.read_json(self.path, 'best checkpoint record')
      ties = saved.get('tie_breakers', {})
      self.values = [_float(saved['value'])] + [_float(ties.get(name))
                                                for name, _ in self.keys[1:]]

  @property
  def value(self):
    return None if self.values is None else self.values[0]

  def update(self, step: int, state, metrics: dict) -> bool:
    for name, _ in self.keys:
      if name not in metrics:
        raise ValueError(f'config.checkpoint: best metric {name!r} is not among '
                         f'the eval metrics {sorted(metrics)}')
    values = [_float(metrics[name]) for name, _ in self.keys]
    if self.values is not None and not better(values, self.values,
                                              [mode for _, mode in self.keys]):
      return False
    self.checkpoints.save(step, state)
    self.checkpoints.wait()  # best.json must never name an unfinished save.
    self.values = values
    if jax.process_index() == 0:
      ties = metrics_lib.nan_to_none(
          {name: v for (name, _), v in zip(self.keys[1:], values[1:])})
      rundir.write_json(self.path, metrics_lib.nan_to_none(
          {'step': step, 'metric': self.metric, 'value': values[0],
           'tie_breakers': ties}))
    return True

  def close(self) -> None:
    self.checkpoints.close()


# Values this close count as a tie: the same balanced accuracy reached from
# different confusion counts can differ in the last bits of a float.
TIE_REL_TOL = 1e-9


def better(new: list[float], old: list[float], modes: list[str]) -> bool:
  """Whether `new` beats `old`, compared key by key (lexicographically), each
  by its mode; a NaN loses to any number; a full tie is not better."""
  for a, b, mode in zip(new, old, modes):
    if math.isnan(a) or math.isnan(b):
      if math.isnan(a) and math.isnan(b):
        continue
      return math.isnan(b)
    if math.isclose(a, b, rel_tol=TIE_REL_TOL, abs_tol=0.0):
      continue
    return a > b if mode == 'max' else a < b
  return False


def _metric_and_mode(spec: str) -> tuple[str, str]:
  name, sep, mode = spec.rpartition(':')
  if not sep:
    raise ValueError(f'config.checkpoint.best_tie_breakers: {spec!r} should be '
                     "'metric:max' or 'metric:min'")
  return name, mode


def _float(x) -> float:
  return float('nan') if x is None else float(x)
