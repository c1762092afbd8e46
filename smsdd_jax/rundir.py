"""The run directory (workdir): what a training run writes and how it is read.

Every file of a workdir is named here, written through here and read back here:

  config.json          {'config': ..., 'versions': ..., 'git_commit': ...} (train.write_run_info)
  data_stats.json      input normalisation {'mean', 'std', 'normalize', ...}
  preprocessing.json   what the build did to each file (preprocess.Spec), which build
  best.json            {'step', 'metric', 'value', 'tie_breakers'} of checkpoints_best/
  threshold.json       {'threshold': t, ...}: the decision threshold chosen on val
  eval.json            val and test metrics; written last, so it marks a finished run
  eval_val.npz, eval_test.npz   per-example prob, label, embedding
  metrics.jsonl        one JSON object per line (metric_writers.MetricWriter)
  tensorboard/         TensorBoard events
  checkpoints/<step>/, checkpoints_best/<step>/   Orbax checkpoints
  sweep.json           launch/sweep.py's runs only: variant, seed, fold, arguments

Writes are atomic (`atomic_file`: a temporary file renamed over the target),
so a reader, or a rerun after a kill, sees the old file or the new one, never
half of one. `resolve_run` turns a workdir into the `RunFiles` inference
needs; old runs (no preprocessing.json, no threshold.json, no data_stats.json
with fixed normalisation) still resolve.

Imports stay light (no TensorFlow, JAX, Orbax; preprocess and ml_collections
only inside the functions that need them), so the checkpoint and metric
writers and the launchers can use this module, and `resolve_run` refuses a
bad workdir in well under a second.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
from typing import TYPE_CHECKING, Any, Iterator, Optional

import numpy as np

if TYPE_CHECKING:
  from smsdd_jax import preprocess

CONFIG = 'config.json'
DATA_STATS = 'data_stats.json'
PREPROCESSING = 'preprocessing.json'
BEST = 'best.json'
THRESHOLD = 'threshold.json'
EVAL = 'eval.json'
METRICS = 'metrics.jsonl'
TENSORBOARD = 'tensorboard'
CHECKPOINTS = 'checkpoints'
CHECKPOINTS_BEST = 'checkpoints_best'
SWEEP = 'sweep.json'  # launch/sweep.py's runs: variant, seed, fold, arguments.

DEFAULT_THRESHOLD = 0.5  # On the defect probability, when a run has no threshold.json.


def eval_npz(split: str) -> str:
  """'eval_val.npz' / 'eval_test.npz': one split's per-example outputs."""
  return f'eval_{split}.npz'


# ------------------------------------------------------------------ writing


@contextlib.contextmanager
def atomic_file(path: str, mode: str = 'w', **open_kwargs) -> Iterator[Any]:
  """Yields an open temporary file that replaces `path` when the block ends
  without an exception (flushed and fsynced first); on an exception it is
  removed and `path` is left as it was. A process killed inside the block
  leaves `path` whole (a stray `<path>.tmp<pid>.<thread>` may remain)."""
  if 'b' not in mode:
    open_kwargs.setdefault('encoding', 'utf-8')
  tmp = f'{path}.tmp{os.getpid()}.{threading.get_ident()}'
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_json(path: str, obj) -> None:
  """`obj` as indented JSON (anything else as its str()), atomically."""
  with atomic_file(path) as f:
    json.dump(obj, f, indent=2, default=str)


def write_text(path: str, text: str) -> None:
  with atomic_file(path) as f:
    f.write(text)


def write_npz(path: str, **arrays) -> None:
  """np.savez_compressed, atomically."""
  with atomic_file(path, 'wb') as f:
    np.savez_compressed(f, **arrays)


# ------------------------------------------------------------------ reading


def read_json(path: str, what: str) -> Any:
  """The file's JSON, or ValueError('cannot read <what> <path>: why')."""
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {what} {path}: {e}') from None


def read_metrics(workdir: str) -> list[dict]:
  """All records of a run's metrics.jsonl, in order (a last line cut short
  by a kill is skipped)."""
  records = []
  with open(os.path.join(workdir, METRICS), encoding='utf-8') as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except ValueError:
        if line.strip() and line.endswith('\n'):
          raise  # Not a cut-short last line: a broken file.
  return records


def finished_steps(directory: str) -> list[int]:
  """Finished Orbax steps in `directory` (unfinished saves have other names)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def read_config(workdir: str) -> dict:
  """The "config" entry of workdir/config.json (a plain dict).

  Raises FileNotFoundError (no workdir, empty, no config.json) or ValueError."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'workdir {workdir} does not exist')
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    what = 'is empty' if not os.listdir(workdir) else f'has no {CONFIG}'
    raise FileNotFoundError(f'workdir {workdir} {what}: not a training run')
  info = read_json(path, 'run config')
  if not isinstance(info, dict) or not isinstance(info.get('config'), dict):
    raise ValueError(f'run config {path} has no "config" entry')
  return info['config']


# The config fields serving reads that were added after the first release,
# with the value that reproduces what a run saved before the field existed
# did. Serving needs no other default: every other field it reads is in every
# config.json ever written, and configs/default.py (the one place defaults
# live) belongs to the training side, which serving never imports.
FIELDS_ADDED = {
    'recipe': 'paper',
    'model.conv_impl': 'auto',  # Speed only: every implementation computes the same function.
    'model.init': '',
    'data.normalize': 'fixed',
    'data.aspect': 'stretch',
    'data.channels': 'rgb',
    # The restore target's optimiser state: plain SGD before these existed.
    'optimizer.name': 'sgd',
    'optimizer.schedule': 'constant',
    'optimizer.warmup_steps': 0,
    'optimizer.weight_decay': 0.0,
}


def run_config(saved: dict):
  """A run's saved config as a ConfigDict, with the fields of FIELDS_ADDED
  that a run saved before they existed lacks filled in. Raises ValueError
  when a saved group is not a group (a hand-edited or foreign file)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = json.loads(json.dumps(saved))  # A deep copy; tuples as lists, as JSON has them.
  for dotted, value in FIELDS_ADDED.items():
    *groups, key = dotted.split('.')
    node = config
    for i, group in enumerate(groups):
      node = node.setdefault(group, {})
      if not isinstance(node, dict):
        raise ValueError(f'saved config field config.{".".join(groups[:i + 1])} is '
                         f'{node!r}, not a group of fields')
    node.setdefault(key, value)
  return ml_collections.ConfigDict(config)


def read_stats(workdir: str, config: dict) -> tuple[dict, str]:
  """(normalisation stats, where they came from): data_stats.json, or the
  fixed stats when the run normalised with them and saved none."""
  from smsdd_jax import preprocess  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, DATA_STATS)
  if os.path.isfile(path):
    stats = read_json(path, 'normalisation stats')
    source = f'{stats.get("normalize", "?")} ({path})'
  elif config.get('data', {}).get('normalize', 'fixed') == 'fixed':
    stats, source = preprocess.FIXED_STATS, f'fixed (no {DATA_STATS}; config says fixed)'
  else:
    raise FileNotFoundError(
        f'{path} is missing and the run normalised with '
        f'{config["data"]["normalize"]!r} stats: cannot reproduce its input')
  for key in ('mean', 'std'):
    if len(np.asarray(stats.get(key, []), np.float64).reshape(-1)) != 3:
      raise ValueError(f'{path}: "{key}" must be 3 numbers, got {stats.get(key)!r}')
  return stats, source


def read_threshold(workdir: str) -> tuple[float, str]:
  """(decision threshold, where it came from): threshold.json or the default."""
  path = os.path.join(workdir, THRESHOLD)
  if not os.path.isfile(path):
    return DEFAULT_THRESHOLD, f'default (no {THRESHOLD})'
  entry = read_json(path, 'threshold file')
  try:
    threshold = float(entry['threshold'])
  except (KeyError, TypeError, ValueError):
    raise ValueError(f'{path}: expected {{"threshold": <number>}}, '
                     f'got {entry!r}') from None
  if not 0.0 <= threshold <= 1.0:
    raise ValueError(f'{path}: threshold {threshold} is not in [0, 1]')
  return threshold, path


def read_preprocessing(workdir: str, config: dict) -> preprocess.Spec:
  """The run's preprocessing.json; a run older than it used the screen
  search on every builder but magnetic_tile and image_folder/none, and the
  stretch of its aspect (the only policy then)."""
  from smsdd_jax import preprocess  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, PREPROCESSING)
  if os.path.isfile(path):
    try:
      return preprocess.Spec.from_dict(read_json(path, 'preprocessing record'))
    except (TypeError, ValueError) as e:
      raise ValueError(f'{path}: {e}') from None
  data = config.get('data', {})
  crops = data.get('name') == 'magnetic_tile' or data.get('builder_config') == 'none'
  return preprocess.Spec(roi='none' if crops else 'hough', aspect='stretch',
                         channels='rgb', size=tuple(data.get('image_size', (110, 230))))


# ------------------------------------------------------------------ which checkpoint


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """One checkpoint of a run: directory/<step>/. source: 'best', 'periodic'
  (asked for by step) or 'latest periodic' (no best checkpoint); note: one
  line saying which and why."""
  directory: str
  step: int
  source: str
  note: str


def _best(workdir: str) -> Optional[tuple[int, str]]:
  """(step, description) of the best checkpoint, or None: the step best.json
  names if checkpoints_best/ holds it, else the last one there."""
  steps = finished_steps(os.path.join(workdir, CHECKPOINTS_BEST))
  if not steps:
    return None
  path = os.path.join(workdir, BEST)
  if os.path.isfile(path):
    entry = read_json(path, 'best checkpoint record')
    if entry.get('step') in steps:
      return int(entry['step']), f'best checkpoint ({entry.get("metric")}={entry.get("value")})'
  return steps[-1], 'best checkpoint'


def choose_checkpoint(workdir: str, step: Optional[int] = None) -> Checkpoint:
  """The asked `step` (periodic first, then best), else the best checkpoint,
  else the latest periodic one. Raises ValueError (no such step) or
  FileNotFoundError (no checkpoints)."""
  periodic_dir = os.path.join(workdir, CHECKPOINTS)
  best_dir = os.path.join(workdir, CHECKPOINTS_BEST)
  periodic, best = finished_steps(periodic_dir), _best(workdir)
  if step is not None:
    if step in periodic:
      return Checkpoint(periodic_dir, step, 'periodic',
                        f'periodic checkpoint step {step} (asked for)')
    if best is not None and step == best[0]:
      return Checkpoint(best_dir, step, 'best', f'{best[1]} step {step} (asked for)')
    raise ValueError(
        f'no checkpoint for step {step} in {workdir}: periodic steps '
        f'{periodic or "none"}, best step {best[0] if best else "none"}')
  if best is not None:
    return Checkpoint(best_dir, best[0], 'best', f'{best[1]} step {best[0]}')
  if periodic:
    return Checkpoint(periodic_dir, periodic[-1], 'latest periodic',
                      f'latest periodic checkpoint step {periodic[-1]} (no best '
                      f'checkpoint in {best_dir})')
  raise FileNotFoundError(f'no checkpoints in {workdir} (looked in {CHECKPOINTS_BEST}/ '
                          f'and {CHECKPOINTS}/)')


# ------------------------------------------------------------------ the whole run


@dataclasses.dataclass(frozen=True)
class RunFiles:
  """What inference reads from a workdir (resolved without loading arrays).

  source: 'best', 'periodic' (asked for by step) or 'latest periodic' (no
  best checkpoint); note: one line saying which checkpoint and why.
  """
  workdir: str
  config: dict
  stats: dict
  stats_source: str
  checkpoint_dir: str
  step: int
  source: str
  note: str
  threshold: float
  threshold_source: str
  preprocessing: preprocess.Spec  # What the run's build did to each file.


def resolve_run(workdir: str, step: Optional[int] = None) -> RunFiles:
  """Finds config, stats, threshold, preprocessing and the checkpoint to use
  in `workdir`.

  Raises FileNotFoundError (missing/empty workdir, no checkpoints) or
  ValueError (unreadable files, no such step), each with a one-line message
  naming the path.
  """
  workdir = os.path.abspath(workdir)
  config = read_config(workdir)
  stats, stats_source = read_stats(workdir, config)
  threshold, threshold_source = read_threshold(workdir)
  spec = read_preprocessing(workdir, config)
  ckpt = choose_checkpoint(workdir, step)
  return RunFiles(workdir, config, stats, stats_source, ckpt.directory, ckpt.step,
                  ckpt.source, ckpt.note, threshold, threshold_source, spec)
