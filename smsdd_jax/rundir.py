"""The run directory (workdir): what a training run writes and how it is read.

Every file of a workdir is named here, written through here and read back here:

  config.json          {'config': ..., 'versions': ..., 'git_commit': ...}
                       (run_records.write_run_info); 'resumed': [{'step', 'changed':
                       {field: [was, now]}}] where a resume changed a field a resume
                       may change (run_records.check_resume)
  data_stats.json      input normalisation {'mean', 'std', 'normalize', ...}
  preprocessing.json   what the build did to each file (preprocess.Spec), which build
  best.json            {'step', 'metric', 'value', 'tie_breakers'} of checkpoints_best/
  threshold.json       {'threshold': t, ...}: the decision threshold chosen on val
  eval.json            val and test metrics; written last, so it marks a finished run
  eval_val.npz, eval_test.npz   per-example prob, label, embedding, defect_type
  metrics.jsonl        one JSON object per line (metric_writers.MetricWriter)
  tensorboard/         TensorBoard events
  checkpoints/<step>/, checkpoints_best/<step>/   Orbax checkpoints
  sweep.json           launch/sweep.py's runs only: variant, seed, fold, arguments
  .lock                while a process trains here: its pid, flock-ed (`Claim`)

Writes are atomic (`atomic_file`: a temporary file renamed over the target),
so a reader, or a rerun after a kill, sees the old file or the new one, never
half of one. `resolve_run` turns a workdir into the `RunFiles` inference
needs; old runs (no preprocessing.json, no threshold.json, no data_stats.json
with fixed normalisation) still resolve. `Claim` makes one live process the
owner of a directory (a training run's workdir, a sweep's --out).

Imports stay light (no TensorFlow, JAX, Orbax; preprocess and ml_collections
only inside the functions that need them), so the checkpoint and metric
writers and the launchers can use this module, and `resolve_run` refuses a
bad workdir in well under a second.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import threading
import time
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
LOCK = '.lock'  # The owning process's pid, flock-ed while it lives (Claim).

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


# ------------------------------------------------------------------ owning


class WorkdirError(ValueError):
  """A directory that cannot be used: a file, not writable, or owned by
  another live process. The message is one line naming it and the way out."""


# What a training run writes into its workdir: a workdir holding nothing else
# was all written by the run (Claim.release may remove it).
_RUN_FILES = frozenset({CONFIG, DATA_STATS, PREPROCESSING, BEST, THRESHOLD, EVAL, METRICS,
                        TENSORBOARD, CHECKPOINTS, CHECKPOINTS_BEST, LOCK, eval_npz('val'),
                        eval_npz('test')})
_CLAIM_TRIES, _CLAIM_WAIT_S = 20, 0.05  # Rides out another process's brief look (owner()).


class Claim:
  """Makes this process the owner of directory `path` (created if missing)
  while the `with` block runs: an exclusive flock on `path/.lock`, which
  holds the pid. The kernel drops the lock when the process dies, kill -9
  included, so a lock is never stale. A second claimant is refused with a
  WorkdirError naming the owner, having changed nothing.

  Leaving the block removes the lock file; if the block raised before `keep()`
  and this claim created the directory, which holds nothing but run files
  (a run refused before training), the directory goes too. `lock=False`
  (the other processes of a multi-process run) only creates the directory."""

  def __init__(self, path: str, what: str = 'workdir', flag: str = '--workdir',
               lock: bool = True):
    self.path, self.what, self.lock = os.path.abspath(path), what, lock
    self.way_out = f'pass another {flag}'
    self.created = False
    self._fd: Optional[int] = None
    self._kept = False

  def __enter__(self) -> Claim:
    self._make_dir()
    if self.lock:
      self._acquire()
    return self

  def __exit__(self, exc_type, *unused) -> bool:
    self.release(discard=exc_type is not None and not self._kept)
    return False

  def keep(self) -> None:
    """From here on the directory holds work worth keeping, whatever happens."""
    self._kept = True

  def release(self, discard: bool = False) -> None:
    if self._fd is None:
      return
    try:  # Still holding the lock: nobody else is in the directory.
      if discard and self.created and _only_run_files(self.path):
        shutil.rmtree(self.path, ignore_errors=True)
      else:
        with contextlib.suppress(OSError):
          os.remove(os.path.join(self.path, LOCK))
    finally:
      os.close(self._fd)
      self._fd = None

  def _error(self, what_failed: str, error: OSError) -> WorkdirError:
    where = f' ({error.filename})' if error.filename not in (None, self.path) else ''
    return WorkdirError(f'{what_failed} {self.what} {self.path}: {error.strerror}{where}; '
                        f'{self.way_out}')

  def _make_dir(self) -> None:
    path, parent = self.path, os.path.dirname(self.path)
    while parent != path:  # The directory itself, or one above it, a file?
      if os.path.lexists(path) and not os.path.isdir(path):
        what = (f'{self.what} {self.path} is a file' if path == self.path else
                f'cannot create {self.what} {self.path}: {path} is a file')
        raise WorkdirError(f'{what}, not a directory; {self.way_out} (or move the file)')
      path, parent = parent, os.path.dirname(parent)
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
      os.mkdir(self.path)
      self.created = True
    except FileExistsError:
      pass  # Made by another process just now: the lock decides.
    except OSError as e:
      raise self._error('cannot create', e) from None

  def _acquire(self) -> None:
    lock_path, pid = os.path.join(self.path, LOCK), ''
    for _ in range(_CLAIM_TRIES):
      try:  # Not inherited by child processes (PEP 446): they cannot hold it.
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
      except FileNotFoundError:  # Removed by its last owner just now: again.
        self._make_dir()
        continue
      except OSError as e:
        raise self._error('cannot write in', e) from None
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        pid = _read_pid(fd) or pid
        os.close(fd)
        time.sleep(_CLAIM_WAIT_S)
        continue
      if not _names(fd, lock_path):  # Its owner removed it while we waited: again.
        os.close(fd)
        continue
      os.ftruncate(fd, 0)
      os.write(fd, f'{os.getpid()}\n'.encode())
      self._fd = fd
      return
    owner = f'process {pid}' if pid else 'another process'
    raise WorkdirError(f'{self.what} {self.path} is in use by {owner} ({lock_path}): '
                       f'wait for it to end, or {self.way_out}')


def owner(path: str) -> Optional[str]:
  """The pid (as text; '' if not yet written) of the live process that
  claimed directory `path`, or None when no process holds it."""
  try:
    fd = os.open(os.path.join(path, LOCK), os.O_RDONLY)
  except OSError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # Shared, and held for a moment.
    return None
  except BlockingIOError:
    return _read_pid(fd)
  finally:
    os.close(fd)


def _read_pid(fd: int) -> str:
  with contextlib.suppress(OSError):
    return os.pread(fd, 32, 0).decode('ascii', 'replace').strip()
  return ''


def _names(fd: int, path: str) -> bool:
  """Whether `path` is still the file open as `fd`."""
  try:
    here, there = os.fstat(fd), os.stat(path)
  except OSError:
    return False
  return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _only_run_files(path: str) -> bool:
  """Whether every entry of `path` is a run file (or an atomic write's
  temporary copy of one)."""
  try:
    return all(name.split('.tmp')[0] in _RUN_FILES for name in os.listdir(path))
  except OSError:
    return False


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
  by a kill is skipped).

  Raises FileNotFoundError (no metrics.jsonl) or ValueError (a broken line),
  each naming the file."""
  path = os.path.join(workdir, METRICS)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no metrics log {path}: the run wrote none, or it was removed')
  records = []
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      try:
        records.append(json.loads(line))
      except ValueError as e:
        if line.strip() and line.endswith('\n'):  # Not a cut-short last line: a broken file.
          raise ValueError(f'cannot read metrics log {path}: line {number}: {e}') from None
  return records


def finished_steps(directory: str) -> list[int]:
  """Finished Orbax steps in `directory` (unfinished saves have other names)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def test_split(workdir: str) -> str:
  """The TFDS split a run was tested on: its fold under k-fold, else its
  config's test split."""
  data = read_config(workdir).get('data', {})
  if not data.get('kfold'):
    return data.get('test_split', 'test')
  return f'fold_{data["fold"]}'


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
    'model.backbone': 'vgg16',  # The only tower before the registry.
    'model.head': 'flatten',
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


def _flat(tree: dict, leaves: frozenset = frozenset(), prefix: str = '') -> dict:
  """{'data.kfold': 5, ...}: every field of a nested config dict; a dict is
  one field where it is empty or its path is in `leaves` (loss.extra: its
  entries are the value, not fields)."""
  out = {}
  for key, value in tree.items():
    path = f'{prefix}{key}'
    if isinstance(value, dict) and value and path not in leaves:
      out.update(_flat(value, leaves, f'{path}.'))
    else:
      out[path] = value
  return out


def config_changes(saved: dict, now: dict, defaults: Optional[dict] = None
                   ) -> dict[str, list]:
  """{field: [saved value, value now]} of every config field that differs
  between a run's saved config and `now` (plain dicts, as config.json holds
  them). A field the saved config lacks had, when the run was made, its
  FIELDS_ADDED value, else its value in `defaults` (configs/default.py's
  config, as a dict), else None; a field
  only the saved config has (no longer in the code) is not compared."""
  plain = lambda tree: json.loads(json.dumps(tree, default=str))  # noqa: E731  Tuples as lists.
  defaults = plain(defaults or {})
  leaves = frozenset(k for k, v in _flat(defaults).items() if v == {})
  was = _flat(plain(run_config(saved).to_dict()), leaves)
  before = _flat(defaults, leaves)
  changes = {}
  for field, value in _flat(plain(now), leaves).items():
    old = was.get(field, before.get(field))
    if old != value:
      changes[field] = [old, value]
  return changes


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


CPUINFO = '/proc/cpuinfo'  # The kernel's interface (Linux), not a path of one machine.


def cpu_field(name: str) -> str:
  """The value of the first `name` line of the processor description
  ('model name', 'flags'); '' where there is none (not Linux)."""
  try:
    with open(CPUINFO, encoding='utf-8', errors='replace') as f:
      for line in f:
        if line.startswith(name):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return ''
