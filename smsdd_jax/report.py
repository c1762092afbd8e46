"""Tables and figures of a sweep (launch/sweep.py's OUT directory).

  python -m smsdd_jax.report --sweep=OUT [--out=OUT/figures]

writes three PNGs:

  loss_curves.png   training loss, its cross-entropy part and validation
                    balanced accuracy against the step, one colour per variant
                    (thin: each seed / fold; thick: their mean): the paper's Fig. 5
  roc_curves.png    ROC curves (overkill rate against 1 - escape rate) on val
                    and test, each run's operating point at its chosen threshold
  embeddings.png    test embeddings projected on their first two principal
                    components, coloured by class, for beta = 0 beside the best
                    beta > 0 by mean val balanced accuracy (the idea of Fig. 3)

A run of a sweep is a directory OUT/<variant>_s<seed>[_f<fold>]/ holding
sweep.json (written by the launcher), the training workdir files and, once
finished, eval.json, eval_val.npz and eval_test.npz (train.final_evaluation).
The table functions here (rows, floor_rows, paired, write_csv, markdown) are
what the launcher aggregates with: the runs' rows (with eval.json's health
status, 'unknown' without one), the floors of launch/floors.py beside them when
its JSON is given, and each variant against beta = 0 paired on the same seeds
and folds (smsdd_jax.stats). They need numpy only. Figures import matplotlib.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
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
               'health', 'health_reasons', 'run')
# Compared against beta = 0, paired on the same seeds and folds (test split).
PAIRED_METRICS = ('auroc', 'balanced_accuracy')
PAIRED_LABELS = {'auroc': 'test AUROC', 'balanced_accuracy': 'test balanced acc. (points)'}


# ------------------------------------------------------------------ reading runs


def _read_json(path: str):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def run_dirs(sweep: str) -> list[str]:
  """Run directories of a sweep (those with a sweep.json), sorted by name."""
  if not os.path.isdir(sweep):
    raise FileNotFoundError(f'sweep directory {sweep} does not exist')
  return sorted(os.path.join(sweep, d) for d in os.listdir(sweep)
                if os.path.isfile(os.path.join(sweep, d, rundir.SWEEP)))


def load_run(path: str) -> dict:
  """What a run directory says about itself: name, variant, seed, fold,
  beta, finished (eval.json present) and eval (its contents)."""
  meta = _read_json(os.path.join(path, rundir.SWEEP))
  run = {'run': os.path.basename(path), 'path': path, 'variant': meta['variant'],
         'seed': meta['seed'], 'fold': meta.get('fold'), 'beta': None,
         'finished': False, 'eval': None, 'recipe': 'paper'}
  config_path = os.path.join(path, rundir.CONFIG)
  if os.path.isfile(config_path):
    config = _read_json(config_path)['config']
    run['beta'] = config['loss']['beta']
    run['recipe'] = recipe_label(config.get('recipe', 'paper'),  # Before recipes: the paper's.
                                 meta.get('args', ()))
  eval_path = os.path.join(path, rundir.EVAL)
  if os.path.isfile(eval_path):
    run['eval'] = _read_json(eval_path)
    run['finished'] = True
  return run


# main.py arguments a sweep sets on every run to place it (which data, seed,
# fold): they choose the data, not the training recipe.
_PLACEMENT_KEYS = ('seed', 'data.name', 'data.builder_config', 'data.manual_dir',
                   'data.data_dir', 'data.kfold', 'data.fold')


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


def load_runs(sweep: str) -> list[dict]:
  return [load_run(p) for p in run_dirs(sweep)]


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
             'health': health, 'health_reasons': reasons, 'run': run['run']}
      row['all_good_accuracy'] = _all_good(row)
      out.append(row)
  return out


def _all_good(row: dict) -> float:
  return row['num_good'] / row['num_examples'] if row['num_examples'] else float('nan')


# ------------------------------------------------------------------ floors


def load_floors(path: str) -> dict:
  """launch/floors.py's JSON: {'data': {...}, 'options': {...}, 'rows': [...]}."""
  floors = _read_json(path)
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


def write_csv(path: str, table: Sequence[dict]) -> None:
  with rundir.atomic_file(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in table:
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
             missing: Sequence[str] = (), floors: Optional[dict] = None) -> str:
  """results.md: mean ± std per variant beside the paper's Table 2 and the
  floors, the inspection metrics accuracy hides, and each variant against
  beta = 0 paired on the same units. `floors`: launch/floors.py's JSON."""
  floor_table = floor_rows(floors)
  lines = (_header_lines(table, meta or {}, floors) + _accuracy_lines(table, floor_table)
           + _collapsed_lines(table) + [''] + _hidden_lines(list(table) + floor_table)
           + [''] + _paired_lines(table))
  lines += [
      '', 'Validation numbers are optimistic: the threshold (and, with checkpoint '
      '`best`, the checkpoint) were chosen on that split. A model that always answers '
      '"good" scores the last column of the first table in accuracy, with 50% '
      'balanced accuracy and a 100% escape rate.']
  if missing:
    lines += ['', f'Not finished (left out above): {", ".join(missing)}.']
  return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog='python -m smsdd_jax.report', description=(
      'Figures of a sweep: loss curves (Fig. 5), ROC curves, test-embedding '
      'projections (Fig. 3 idea).'))
  p.add_argument('--sweep', required=True, help='the OUT directory of launch/sweep.py')
  p.add_argument('--out', default=None, help='folder for the PNGs (default SWEEP/figures)')
  args = p.parse_args(argv)
  try:
    from smsdd_jax import figures  # pylint: disable=import-outside-toplevel  (matplotlib)
    paths = figures.write_figures(args.sweep, args.out)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for path in paths:
    print(path)
  return 0


if __name__ == '__main__':
  sys.exit(main())
