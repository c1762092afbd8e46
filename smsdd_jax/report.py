"""Tables and figures of a sweep (launch/sweep.py's OUT directory).

  python -m smsdd_jax.report --sweep=OUT [--out=OUT/figures]
  python -m smsdd_jax.report --sweep=RUN     (one workdir: figures in RUN/figures)

writes three PNGs:

  loss_curves.png   training loss, each loss term the run logged (train/<term>,
                    titled with its weight from config.json) and validation
                    balanced accuracy against the step, one colour per variant
                    (thin: each seed / fold; thick: their mean): the paper's Fig. 5
  roc_curves.png    ROC curves (overkill rate against 1 - escape rate) on val
                    and test, each run's operating point at its chosen threshold
  embeddings.png    test embeddings projected on their first two principal
                    components, coloured by class, for beta = 0 beside the best
                    beta > 0 by mean val balanced accuracy (the idea of Fig. 3)

and with --export=FILE (a dataset export of the runs' build, whose test
images the runs do not keep) a fourth, from the first run with its best
checkpoint kept (beta = 0 first):

  maps.png          true and false decisions on its test split, each ROI beside
                    where the network looked (smsdd_jax/maps.py), the defect
                    mask outlined where the export has one

A run of a sweep is a directory OUT/<variant>_s<seed>[_f<fold>]/ holding
sweep.json (written by the launcher), the training workdir files and, once
finished, eval.json, eval_val.npz and eval_test.npz (train.final_evaluation).
The table functions here (rows, floor_rows, paired, write_csv, markdown) are
what the launcher aggregates with: the runs' rows (with eval.json's health
status, 'unknown' without one, and its recall per defect type, n/a for a run
made before eval.json recorded it), the floors of launch/floors.py beside them
when its JSON is given, and each variant against beta = 0 paired on the same
seeds and folds (smsdd_jax.stats). They need numpy only. Figures import
matplotlib. A run whose files cannot be read is left out with its reason
(load_runs), named on stderr by the report command (exit status 1) and in
results.md by the launcher; the report command does the same with a run
whose eval_{val,test}.npz cannot be read. It refuses (one line, exit status
2) a folder whose runs were trained on several datasets (their preprocessing.json
names the build), a bad argument, and an --export that is not the data the
maps' run recorded; it names a sweep in a folder below the one it reports.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from typing import Optional, Sequence

import numpy as np

from smsdd_jax import rundir
from smsdd_jax import stats

# The paper's Table 2: accuracy (%) on its private set, (validation, test).
PAPER_TABLE2 = {'beta_a': (85, 83), 'beta_b': (79, 74), 'beta_c': (96, 93),
                'beta_d': (95, 91), 'beta_e': (91, 88)}

METRICS = ('accuracy', 'balanced_accuracy', 'precision', 'recall', 'specificity', 'f1',
           'auroc', 'average_precision', 'escape_rate', 'overkill_rate')
COUNTS = ('tp', 'fp', 'tn', 'fn', 'num_examples', 'num_defective', 'num_good')
CSV_COLUMNS = ('variant', 'recipe', 'beta', 'seed', 'fold', 'split', 'step', 'checkpoint',
               'threshold_rule', 'threshold', *METRICS, *COUNTS, 'all_good_accuracy',
               'health', 'health_reasons', 'recall_by_type', 'run')
# Compared against beta = 0, paired on the same seeds and folds (test split).
PAIRED_METRICS = ('auroc', 'balanced_accuracy')
PAIRED_LABELS = {'auroc': 'test AUROC', 'balanced_accuracy': 'test balanced acc. (points)'}


# ------------------------------------------------------------------ reading runs


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


# ------------------------------------------------------------------ tables


def as_float(x) -> float:
  """A JSON number or null as a float (null -> NaN)."""
  return float('nan') if x is None else float(x)


def _health(ev: dict) -> tuple[str, str]:
  """(status, '; '-joined reasons) of eval.json's "health"; 'unknown' without one."""
  health = ev.get('health') or {}
  return health.get('status') or 'unknown', '; '.join(health.get('reasons') or ())


def rows(runs: Sequence[dict]) -> list[dict]:
  """One row per finished run and split (val, test), CSV_COLUMNS keys."""
  out = []
  for run in runs:
    if not run['finished']:
      continue
    ev = run['eval']
    health, reasons = _health(ev)
    for split in ('val', 'test'):
      m = ev[split]
      row = {'variant': run['variant'], 'recipe': run['recipe'], 'beta': run['beta'],
             'seed': run['seed'],
             'fold': '' if run['fold'] is None else run['fold'], 'split': split,
             'step': ev['step'], 'checkpoint': ev['checkpoint'],
             'threshold_rule': ev['threshold_rule'], 'threshold': ev['threshold'],
             **{k: as_float(m.get(k)) for k in METRICS},
             **{k: int(m[k]) for k in COUNTS},
             'health': health, 'health_reasons': reasons, 'run': run['run'],
             # None: a run made before eval.json recorded it.
             'recall_by_type': (ev.get('recall_by_type') or {}).get(split)}
      row['all_good_accuracy'] = _all_good(row)
      out.append(row)
  return out


def _all_good(row: dict) -> float:
  return row['num_good'] / row['num_examples'] if row['num_examples'] else float('nan')


# ------------------------------------------------------------------ floors


def load_floors(path: str) -> dict:
  """launch/floors.py's JSON: {'data': {...}, 'options': {...}, 'rows': [...]}."""
  floors = rundir.read_json(path, 'floors file')
  if not isinstance(floors, dict) or not isinstance(floors.get('rows'), list):
    raise ValueError(f'{path}: not a launch/floors.py JSON (no "rows" list)')
  return floors


def floor_rows(floors: Optional[dict]) -> list[dict]:
  """The floors as rows of the runs' table: variant 'floor:<model>', one row
  per model, fold and split (val, test); no beta, seed, step or health."""
  out = []
  for r in (floors or {}).get('rows', ()):
    name = f'floor:{r["model"]}'
    fold = '' if r.get('fold') is None else r['fold']
    for split in ('val', 'test'):
      m = r[split]
      row = {'variant': name, 'beta': '', 'seed': '', 'fold': fold, 'split': split,
             'step': '', 'checkpoint': '', 'threshold_rule': r['threshold_rule'],
             'threshold': r['threshold'], **{k: as_float(m.get(k)) for k in METRICS},
             **{k: int(m[k]) for k in COUNTS}, 'health': '', 'health_reasons': '',
             'run': name + ('' if fold == '' else f'_f{fold}')}
      row['all_good_accuracy'] = _all_good(row)
      out.append(row)
  return out


# ------------------------------------------------------------------ paired statistics


def baseline_variant(table: Sequence[dict]) -> Optional[str]:
  """'beta_a' when present, else the first variant with beta = 0, else None."""
  variants = variant_names(table)
  if 'beta_a' in variants:
    return 'beta_a'
  return next((v for v in variants if any(
      row['beta'] == 0 for row in table if row['variant'] == v)), None)


def _units(table, variant, split, key) -> dict:
  """{(seed, fold): value} of one variant: the pairing units."""
  return {(row['seed'], row.get('fold', '')): as_float(row[key]) for row in table
          if row['variant'] == variant and row['split'] == split}


def paired(table: Sequence[dict], baseline: Optional[str] = None,
           keys: Sequence[str] = PAIRED_METRICS, split: str = 'test') -> list[dict]:
  """Each variant against the baseline on the same (seed, fold) units:
  stats.compare's numbers with 'variant', 'baseline' and 'metric'."""
  baseline = baseline or baseline_variant(table)
  if baseline is None:
    return []
  return [{'variant': v, 'baseline': baseline, 'metric': key,
           **stats.compare(_units(table, v, split, key), _units(table, baseline, split, key))}
          for v in variant_names(table) if v != baseline for key in keys]


# ------------------------------------------------------------------ tables


def defect_types(table: Sequence[dict]) -> list[str]:
  """The defect types any row has a recall of, sorted."""
  return sorted({t for row in table for t in (row.get('recall_by_type') or {})})


def csv_type_text(by_type: Optional[dict]) -> str:
  """results.csv's recall_by_type: 'crack 1/4; fray 4/4' (found / defective of
  each type in the split); 'n/a' for a run made before eval.json recorded it,
  or a floor."""
  if by_type is None:
    return 'n/a'
  return '; '.join(f'{t} {r["detected"]}/{r["defective"]}' for t, r in sorted(by_type.items()))


def write_csv(path: str, table: Sequence[dict]) -> None:
  with rundir.atomic_file(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in table:
      row = {**row, 'recall_by_type': csv_type_text(row.get('recall_by_type'))}
      writer.writerow({k: (f'{v:.6g}' if isinstance(v, float) else v)
                       for k, v in row.items()})


def read_csv(path: str) -> list[dict]:
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


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


def _select(table, variant, split, key):
  return [row[key] for row in table if row['variant'] == variant and row['split'] == split]


def health_cell(statuses: Sequence[str]) -> str:
  """'1/5' collapsed runs, then ', 2 suspect' and ', 1 unknown' when any."""
  text = f'{sum(s == "collapsed" for s in statuses)}/{len(statuses)}'
  for word in ('suspect', 'unknown'):
    count = sum(s == word for s in statuses)
    text += f', {count} {word}' if count else ''
  return text


def _header_lines(table, meta, floors) -> list[str]:
  lines = ['# Sweep results', '']
  if meta:
    lines += ['Sweep: ' + ', '.join(f'{k} `{v}`' for k, v in meta.items()) + '.', '']
  rules = sorted({row['threshold_rule'] for row in table})
  checkpoints = sorted({row['checkpoint'] for row in table})
  recipes = sorted({row.get('recipe', 'paper') for row in table if 'recipe' in row})
  if recipes:
    lines += [f'Training recipe: `{", ".join(recipes)}` (configs/default.py: `paper` is the '
              "literal one, `learn` is `:learn`'s apply_learn; `+ KEY=VALUE` an override "
              'the sweep passed to every run).', '']
  lines += [
      f'Decision threshold: chosen on validation by `{", ".join(rules) or "-"}` and '
      'applied unchanged to test; evaluated checkpoint: '
      f'`{", ".join(checkpoints) or "-"}`. Mean ± sample std over the runs '
      '(seeds or folds) of each variant. The paper reports one run per variant on '
      'its private set (1200 frames, 14% defective).']
  if floors:
    data, rule = floors.get('data', {}), floors.get('options', {}).get('threshold_rule', '?')
    lines += ['', 'Floors (`floor:*`, launch/floors.py): trivial models on the same splits '
              f'(data `{data.get("name", "?")}`, builder config '
              f'`{data.get("builder_config", "?")}`, kfold {data.get("kfold", "?")}), '
              f'threshold by `{rule}` on validation: pixel = ridge on grey pixels, '
              'anomaly = logistic regression on 14 local-anomaly statistics, boosted = '
              'gradient-boosted trees on the same statistics, hog = '
              'logistic regression on HOG. A variant below them has learned less than '
              'they find.']
  else:
    lines += ['', 'No floors beside these: `python launch/floors.py ... --out=SWEEP/floors.json` '
              '(or the sweep\'s --run_floors) computes them on the same splits.']
  return lines + ['']


def _accuracy_lines(table, floor_table) -> list[str]:
  lines = ['## Accuracy beside the paper\'s Table 2 (%)', '',
           'Collapsed: runs whose eval.json health says the model is constant or dead '
           '(its numbers say nothing about the method); suspect and unknown (no health '
           'record) counted beside.', '',
           '| variant | beta | runs | val accuracy | test accuracy | paper val | paper test '
           '| test accuracy of always "good" | collapsed |',
           '|---|---|---|---|---|---|---|---|---|']
  for rows, runs in ((table, True), (floor_table, False)):
    for v in variant_names(rows):
      beta, paper = _select(rows, v, 'test', 'beta'), PAPER_TABLE2.get(v)
      health = health_cell([row.get('health') or 'unknown' for row in rows
                            if row['variant'] == v and row['split'] == 'test'])
      lines.append(
          f'| {v} | {beta[0] if runs and beta else "–"} | {len(beta)} '
          f'| {mean_std(_select(rows, v, "val", "accuracy"))} '
          f'| {mean_std(_select(rows, v, "test", "accuracy"))} '
          f'| {paper[0] if paper else "–"} | {paper[1] if paper else "–"} '
          f'| {mean_std(_select(rows, v, "test", "all_good_accuracy"))} '
          f'| {health if runs else "–"} |')
  return lines


def _collapsed_lines(table) -> list[str]:
  bad = [row for row in table if row['split'] == 'test' and row.get('health') == 'collapsed']
  if not bad:
    return []
  return ['', 'Collapsed runs: ' + '; '.join(
      f'{row["run"]} ({row.get("health_reasons") or "no reason given"})' for row in bad) + '.']


def _hidden_lines(table) -> list[str]:
  lines = [
      '## What accuracy hides (%; AUROC and AP in [0, 1])', '',
      'Escape: defective passed as good. Overkill: good rejected. Both at the chosen '
      'threshold; AUROC and AP need none.', '',
      '| variant | split | balanced acc. | precision | recall | F1 | escape | overkill '
      '| AUROC | AP |',
      '|---|---|---|---|---|---|---|---|---|---|']
  for v in variant_names(table):
    for split in ('val', 'test'):
      pct = [mean_std(_select(table, v, split, k)) for k in
             ('balanced_accuracy', 'precision', 'recall', 'f1', 'escape_rate',
              'overkill_rate')]
      raw = [mean_std(_select(table, v, split, k), scale=1.0, digits=3)
             for k in ('auroc', 'average_precision')]
      lines.append(f'| {v} | {split} | ' + ' | '.join(pct + raw) + ' |')
  return lines


def _mean_type_cell(known: Sequence[dict], defect_type: str) -> str:
  """Mean ± std of the runs' recall of one type (NaN where a run's split
  has none of it), then detected / defective pooled over the runs."""
  of = [k.get(defect_type) or {} for k in known]
  total = sum(int(r.get('defective', 0)) for r in of)
  if not total:
    return '–'
  detected = sum(int(r.get('detected', 0)) for r in of)
  return f'{mean_std([as_float(r.get("recall")) for r in of])}; {detected}/{total}'


def _type_lines(table) -> list[str]:
  test = [row for row in table if row['split'] == 'test']
  types = defect_types(test)
  lines = ['## Where it fails: recall per defect type (test, %)', '']
  if not types:
    return lines + [
        'n/a: no run here recorded it. Runs made before eval.json kept '
        '"recall_by_type" lack it, and their eval_test.npz hold no defect types to '
        'recompute it from.']
  lines += ['Share of the defective test images of each type found at the chosen '
            'threshold: mean ± sample std over the runs whose test split holds the type '
            '(n=k/m when some do not), then found / defective pooled over them. Runs with '
            'types: those whose eval.json records them; n/a: every run of the variant was '
            'made before eval.json recorded types.', '',
            '| variant | runs with types | ' + ' | '.join(types) + ' |',
            '|---|---|' + '---|' * len(types)]
  for v in variant_names(test):
    mine = [row for row in test if row['variant'] == v]
    known = [row['recall_by_type'] for row in mine if row.get('recall_by_type') is not None]
    cells = [_mean_type_cell(known, t) if known else 'n/a' for t in types]
    lines.append(f'| {v} | {len(known)}/{len(mine)} | ' + ' | '.join(cells) + ' |')
  return lines


def _left_out_lines(missing: Sequence[str], unreadable: dict) -> list[str]:
  """The runs not in the tables, and why."""
  lines = []
  if missing:
    lines += ['', f'Not finished (left out above): {", ".join(missing)} '
              f'({len(missing)} run{"s" * (len(missing) != 1)}).']
  if unreadable:
    lines += ['', f'Unreadable (left out above, {len(unreadable)} '
              f'run{"s" * (len(unreadable) != 1)}): '
              + '; '.join(f'{run}: {why}' for run, why in unreadable.items()) + '.']
  return lines


def _paired_cells(r: dict) -> list[str]:
  """AUROC differences as they are, balanced accuracy in percentage points."""
  scale, digits = (1.0, 3) if r['metric'] == 'auroc' else (100.0, 1)
  fmt = lambda x: '–' if math.isnan(x) else f'{scale * x:+.{digits}f}'
  ci = '–' if math.isnan(r['ci_low']) else f'[{fmt(r["ci_low"])}, {fmt(r["ci_high"])}]'
  p = '–' if math.isnan(r['p']) else f'{r["p"]:.3f}'
  return [r['variant'], PAIRED_LABELS[r['metric']], str(r['n']), fmt(r['mean']), ci, p,
          r['verdict'] if r['n'] else '–']


def _paired_lines(table) -> list[str]:
  comparisons = paired(table)
  if not comparisons:
    names = variant_names(table)
    why = ('one variant only: nothing to pair (launch/compare_sweeps.py pairs two sweeps)'
           if len(names) == 1 and baseline_variant(table) else
           'no baseline variant (beta_a, or one with beta = 0) among the finished runs')
    return ['## Against beta = 0, paired', '', f'Not computed: {why}.']
  return ['## Against beta = 0, paired (test)', '',
          f'Each variant minus `{comparisons[0]["baseline"]}` on the same seeds and folds '
          '(the units both finished): the mean difference, its 95% bootstrap interval '
          '(10000 resamples of the units, seed 0) and the exact Wilcoxon signed-rank p. '
          'Verdict: better or worse when the interval excludes 0 and p <= '
          f'{stats.ALPHA}, else not distinguishable (always with fewer than '
          f'{stats.MIN_PAIRS} pairs; with 5 pairs the smallest exact p is 0.0625, so 5 '
          'folds of one seed cannot decide). Collapsed runs count as they came out.', '',
          '| variant | metric | pairs | mean difference | 95% interval | p | verdict |',
          '|---|---|---|---|---|---|---|'] + [
              '| ' + ' | '.join(_paired_cells(r)) + ' |' for r in comparisons]


def markdown(table: Sequence[dict], meta: Optional[dict] = None,
             missing: Sequence[str] = (), floors: Optional[dict] = None,
             unreadable: Optional[dict] = None) -> str:
  """results.md: mean ± std per variant beside the paper's Table 2 and the
  floors, the inspection metrics accuracy hides, the recall per defect type,
  and each variant against beta = 0 paired on the same units. `floors`:
  launch/floors.py's JSON; `missing`: the unfinished runs; `unreadable`:
  {run: why} of those whose files could not be read (load_runs)."""
  floor_table = floor_rows(floors)
  lines = (_header_lines(table, meta or {}, floors) + _accuracy_lines(table, floor_table)
           + _collapsed_lines(table) + [''] + _hidden_lines(list(table) + floor_table)
           + [''] + _type_lines(table) + [''] + _paired_lines(table))
  lines += [
      '', 'Validation numbers are optimistic: the threshold (and, with checkpoint '
      '`best`, the checkpoint) were chosen on that split. A model that always answers '
      '"good" scores the last column of the first table in accuracy, with 50% '
      'balanced accuracy and a 100% escape rate.']
  lines += _left_out_lines(missing, unreadable or {})
  return '\n'.join(lines) + '\n'


def _readable_outputs(runs: list[dict], unreadable: dict, figures) -> list[dict]:
  """The runs whose eval_{val,test}.npz (what the ROC and embedding figures
  read) can be read; the others left out, their reason in `unreadable`."""
  kept = []
  for run in runs:
    try:
      for split in ('val', 'test') if run['finished'] else ():
        figures._load_npz(run, split)  # pylint: disable=protected-access
    except ValueError as e:
      unreadable[run['run']] = str(e)
      continue
    kept.append(run)
  return kept


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog='python -m smsdd_jax.report', description=(
      'Figures of a sweep: loss curves (Fig. 5), ROC curves, test-embedding '
      'projections (Fig. 3 idea).'))
  p.add_argument('--sweep', required=True, help='the OUT directory of launch/sweep.py, '
                 'or one run directory (a workdir with config.json)')
  p.add_argument('--out', default=None, help='folder for the PNGs (default SWEEP/figures)')
  p.add_argument('--export', default=None, help='dataset export of the runs\' build '
                 '(python -m smsdd_jax.dataset_export): adds maps.png')
  args = p.parse_args(argv)
  unreadable = {}
  try:
    from smsdd_jax import figures  # pylint: disable=import-outside-toplevel  (matplotlib)
    runs = load_runs(args.sweep, unreadable)
    if not runs and not unreadable:
      raise ValueError(no_runs_reason(args.sweep))
    check_one_dataset(runs, args.sweep)
    runs = _readable_outputs(runs, unreadable, figures)
    for run, why in unreadable.items():  # Said, then drawn without them.
      print(f'left out {run}: {why}', file=sys.stderr)
    if not runs:
      return 1
    for nested in nested_sweeps(args.sweep):
      print(f'not included: {nested} is a sweep of its own (report it with '
            f'--sweep={nested})', file=sys.stderr)
    export = None
    if args.export:
      from smsdd_jax import dataset_export  # pylint: disable=import-outside-toplevel
      export = dataset_export.load(args.export)
    paths = figures.write_figures(args.sweep, args.out, runs, export=export)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for path in paths:
    print(path)
  return 1 if unreadable else 0


if __name__ == '__main__':
  sys.exit(main())
