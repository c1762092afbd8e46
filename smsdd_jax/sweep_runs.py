"""Reading a sweep's runs: the run directories of launch/sweep.py's OUT folder
(or training workdirs made one by one), what each says about itself
(sweep.json, config.json, eval.json, eval_{val,test}.npz), checked for what
the tables and figures read, with one-line reasons naming the file.

Shared by the tables (report.py) and the figures (figures.py); numpy only.
"""
from __future__ import annotations

import os
import re
import zipfile
import zlib
from typing import Optional, Sequence

import numpy as np

from smsdd_jax import rundir

COUNTS = ('tp', 'fp', 'tn', 'fn', 'num_examples', 'num_defective', 'num_good')


# What a run's files must hold for its rows; a file without them is unreadable.
_EVAL_KEYS = ('step', 'checkpoint', 'threshold_rule', 'threshold')
_EVAL_WAY_OUT = 'remove it and rerun the sweep to evaluate the run again'


def run_dirs(sweep: str) -> list[str]:
  """Run directories of a sweep (those with a sweep.json), sorted by name;
  a sweep's own folder below (its sweep.json describes the launcher) is none."""
  if not os.path.isdir(sweep):
    raise FileNotFoundError(f'sweep directory {sweep} does not exist')
  return sorted(os.path.join(sweep, d) for d in os.listdir(sweep)
                if os.path.isfile(os.path.join(sweep, d, rundir.SWEEP))
                and not is_sweep(os.path.join(sweep, d)))


def is_sweep(path: str) -> bool:
  """True for launch/sweep.py's OUT folder: its sweep.json records the
  launcher's arguments ('configs'), a run's records its 'variant'."""
  try:
    meta = rundir.read_json(os.path.join(path, rundir.SWEEP), 'sweep record')
  except (OSError, ValueError):
    return False
  return isinstance(meta, dict) and 'configs' in meta and 'variant' not in meta


def is_single_run(path: str) -> bool:
  """A training workdir made outside a sweep: config.json, no sweep.json."""
  return (os.path.isfile(os.path.join(path, rundir.CONFIG))
          and not os.path.isfile(os.path.join(path, rundir.SWEEP)))


def sweeps_below(path: str) -> list[str]:
  """Folders directly below `path` that are sweeps (for a helpful error)."""
  if not os.path.isdir(path):
    return []
  return sorted(os.path.join(path, d) for d in os.listdir(path)
                if os.path.isdir(os.path.join(path, d))
                and (is_sweep(os.path.join(path, d)) or run_dirs(os.path.join(path, d))))


def no_runs_reason(path: str) -> str:
  """One line saying why `path` holds no run, and what to pass instead."""
  below = sweeps_below(path)
  if below:
    return (f'{path} holds no run itself but {len(below)} sweep(s): '
            f'{", ".join(below)}; pass one of them as --sweep')
  return (f'{path}: no run found (a sweep folder of launch/sweep.py, one run '
          'directory with config.json, or a folder of them)')


def run_dataset(path: str) -> str:
  """The build a run was trained on: preprocessing.json's 'dataset'
  ('<name>/<config>'), else config.json's data.name[/builder_config]; ''
  where the run recorded neither."""
  pre = os.path.join(path, rundir.PREPROCESSING)
  try:
    if os.path.isfile(pre):
      dataset = rundir.read_json(pre, 'preprocessing record').get('dataset')
      if dataset:
        return str(dataset)
    data = rundir.read_config(path).get('data') or {}
  except (OSError, ValueError, AttributeError):
    return ''
  return '/'.join(str(v) for v in (data.get('name'), data.get('builder_config')) if v)


def check_one_dataset(runs: Sequence[dict], sweep: str) -> None:
  """ValueError (one line) when the runs were trained on several datasets:
  one ROC or table over them would pair and overlay unrelated test sets
  under one variant name."""
  by_dataset = {}
  for run in runs:
    dataset = run_dataset(run['path'])
    if dataset:
      by_dataset.setdefault(dataset, []).append(run['run'])
  if len(by_dataset) > 1:
    raise ValueError(
        f'{sweep} holds runs of {len(by_dataset)} datasets (' + '; '.join(
            f'{d}: {len(r)} run{"s" * (len(r) != 1)}, e.g. {r[0]}'
            for d, r in sorted(by_dataset.items())) + '): not drawn together; pass a '
        'folder holding one dataset\'s runs as --sweep')


def nested_sweeps(path: str) -> list[str]:
  """Sweeps in folders below a sweep or folder of runs: not part of its
  report (named by the report command)."""
  if is_single_run(path):
    return []
  return sweeps_below(path)


def _field(obj, path: str, *keys):
  """obj[k0][k1]..., or ValueError naming the file and the missing entry."""
  for i, key in enumerate(keys):
    if not isinstance(obj, dict) or key not in obj:
      raise ValueError(f'{path}: no "{".".join(keys[:i + 1])}" entry')
    obj = obj[key]
  return obj


def read_eval(path: str) -> dict:
  """A run's eval.json, checked for what rows() reads; ValueError naming the
  file (and the way out) when it is broken."""
  try:
    ev = rundir.read_json(path, 'eval record')
    for key in _EVAL_KEYS:
      _field(ev, path, key)
    for split in ('val', 'test'):
      for key in COUNTS:
        if not isinstance(_field(ev, path, split, key), int):
          raise ValueError(f'{path}: "{split}.{key}" is {ev[split][key]!r}, not a count')
  except ValueError as e:
    raise ValueError(f'{e} ({_EVAL_WAY_OUT})') from None
  return ev


def load_run(path: str, meta: Optional[dict] = None) -> dict:
  """What a run directory says about itself: name, variant, seed, fold,
  beta, terms ({loss term: weight}, empty without config.json), finished
  (eval.json present) and eval (its contents). `meta`: its sweep.json's
  entries (read from it by default). Raises ValueError naming the file when
  one cannot be read."""
  meta_path = os.path.join(path, rundir.SWEEP)
  meta = rundir.read_json(meta_path, 'sweep record') if meta is None else meta
  run = {'run': os.path.basename(path), 'path': path,
         'variant': _field(meta, meta_path, 'variant'), 'seed': _field(meta, meta_path, 'seed'),
         'fold': meta.get('fold'), 'beta': None, 'finished': False, 'eval': None,
         'recipe': 'paper', 'terms': {}}
  config_path = os.path.join(path, rundir.CONFIG)
  if os.path.isfile(config_path):
    info = rundir.read_json(config_path, 'run config')
    config = _field(info, config_path, 'config')
    run['beta'] = _field(config, config_path, 'loss', 'beta')
    run['terms'] = loss_terms(info, config_path)
    run['recipe'] = recipe_label(config.get('recipe', 'paper'),  # Before recipes: the paper's.
                                 meta.get('args', ()))
  eval_path = os.path.join(path, rundir.EVAL)
  if os.path.isfile(eval_path):
    run['eval'] = read_eval(eval_path)
    run['finished'] = True
  return run


def loss_terms(info: dict, path: str) -> dict:
  """{term: weight} of a run's config.json: its 'loss_terms' record, or for
  runs made before it, what config.loss names (classification, pair, extra;
  the paper's terms where a field is absent)."""
  if isinstance(info.get('loss_terms'), dict):
    return {k: float(_field(v, path, 'weight')) for k, v in info['loss_terms'].items()}
  loss = _field(info, path, 'config', 'loss')
  return {loss.get('classification', 'cross_entropy'): 1.0,
          loss.get('pair', 'contrastive'): float(_field(loss, path, 'beta')),
          **{k: float(w) for k, w in (loss.get('extra') or {}).items()}}


def load_single_run(path: str) -> dict:
  """load_run of a training workdir made outside a sweep: seed and fold come
  from its config.json, the variant is the folder's name (less a sweep-style
  '_s<seed>[_f<fold>]' ending, so that seeds of one variant group)."""
  config_path = os.path.join(path, rundir.CONFIG)
  config = _field(rundir.read_json(config_path, 'run config'), config_path, 'config')
  data = config.get('data') or {}
  name = os.path.basename(os.path.normpath(path))
  variant = re.sub(r'_s\d+(_f\d+)?$', '', name) or name
  meta = {'variant': variant, 'seed': config.get('seed', 0),
          'fold': data.get('fold') if data.get('kfold') else None}
  return load_run(path, meta)


def single_runs_below(path: str) -> list[str]:
  """Run directories made outside a sweep directly below `path`."""
  return sorted(os.path.join(path, d) for d in os.listdir(path)
                if is_single_run(os.path.join(path, d)))


# main.py arguments a sweep sets on every run to place it (which data, seed,
# fold, read from a TFDS build or its export): they choose the data, not the
# training recipe.
_PLACEMENT_KEYS = ('seed', 'data.name', 'data.builder_config', 'data.manual_dir',
                   'data.data_dir', 'data.kfold', 'data.fold', 'data.source',
                   'data.export_path')


def recipe_label(recipe: str, args: Sequence[str]) -> str:
  """The recipe a run was made with: the config's named recipe, followed by
  the --config.KEY=VALUE overrides of its launch arguments that are not its
  placement (data, seed, fold), e.g. 'paper + optimizer.name=adamw'. Without
  this an ablation run with the paper's config and a changed optimiser would be
  reported as made by 'paper'."""
  overrides = []
  for arg in args:
    key, sep, value = arg.removeprefix('--config.').partition('=')
    if arg.startswith('--config.') and sep and key not in _PLACEMENT_KEYS:
      overrides.append(f'{key}={value}')
  return ' + '.join([recipe, *overrides])


def load_runs(sweep: str, unreadable: Optional[dict] = None) -> list[dict]:
  """load_run of every run of the sweep. With `unreadable` (a dict), a run
  whose files cannot be read is left out and its one-line reason stored
  there under its name, so that one broken file does not stop the others;
  without, its ValueError is raised. A single run directory (config.json,
  no sweep.json) is a sweep of that one run; a folder of such runs, a sweep
  of them (load_single_run)."""
  if is_single_run(sweep):
    return [load_single_run(sweep)]
  runs = []
  paths = run_dirs(sweep)
  # A folder of runs made one by one (no sweep.json) is read the same way.
  load = load_run if paths else load_single_run
  for path in paths or single_runs_below(sweep):
    try:
      runs.append(load(path))
    except (OSError, ValueError) as e:
      if unreadable is None:
        raise
      unreadable[os.path.basename(path)] = str(e)
  return runs


def relative_reasons(unreadable: dict, sweep: str) -> dict:
  """{run: why} with the sweep's path cut from each why (results.md is kept
  with the sweep: a path of this machine has no place there)."""
  def cut(why: str) -> str:
    for prefix in (os.path.abspath(sweep), sweep):
      why = why.replace(os.path.join(prefix, ''), '')
    return why
  return {run: cut(why) for run, why in unreadable.items()}


def as_float(x) -> float:
  """A JSON number or null as a float (null -> NaN)."""
  return float('nan') if x is None else float(x)


def load_eval_npz(run: dict, split: str) -> Optional[dict]:
  """A run's eval_<split>.npz, None without one; ValueError naming the file
  when it cannot be read (truncated, damaged)."""
  path = os.path.join(run['path'], rundir.eval_npz(split))
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
    raise ValueError(f'{path} cannot be read ({type(e).__name__}: {e}): remove it and '
                     'rerun the sweep to evaluate the run again') from None


def mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
  """'85.3 ± 1.2' (sample std over the finite values), '85.3' for one,
  '–' for none; 'n=k/m' appended when some were NaN."""
  v = np.asarray([x for x in values], np.float64) * scale
  finite = v[np.isfinite(v)]
  if not len(finite):
    return '–'
  text = f'{finite.mean():.{digits}f}'
  if len(finite) > 1:
    text += f' ± {finite.std(ddof=1):.{digits}f}'
  if len(finite) < len(v):
    text += f' (n={len(finite)}/{len(v)})'
  return text


def variant_names(table: Sequence[dict]) -> list[str]:
  """The variants of `table` in their order of first appearance."""
  seen = []
  for row in table:
    if row['variant'] not in seen:
      seen.append(row['variant'])
  return seen
