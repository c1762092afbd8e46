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
                    where the network looked (smsdd_jax/maps.py; --map_method,
                    default the best by evidence), the defect mask outlined
                    where the export has one; on the run's calibrated scale
                    (its map_scale.json, else one made now from the export's
                    validation split and said on stderr; map_scale.py)

A run of a sweep is a directory OUT/<variant>_s<seed>[_f<fold>]/ holding
sweep.json (written by the launcher), the training workdir files and, once
finished, eval.json, eval_val.npz and eval_test.npz (evaluation.final_evaluation).
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
import sys
from typing import Optional, Sequence


from smsdd_jax import rundir
from smsdd_jax import stats
from smsdd_jax.sweep_runs import (COUNTS, as_float, check_one_dataset, load_eval_npz, load_runs,
                                  mean_std, nested_sweeps, no_runs_reason, variant_names)

# The paper's Table 2: accuracy (%) on its private set, (validation, test).
PAPER_TABLE2 = {'beta_a': (85, 83), 'beta_b': (79, 74), 'beta_c': (96, 93),
                'beta_d': (95, 91), 'beta_e': (91, 88)}

METRICS = ('accuracy', 'balanced_accuracy', 'precision', 'recall', 'specificity', 'f1',
           'auroc', 'average_precision', 'escape_rate', 'overkill_rate')
CSV_COLUMNS = ('variant', 'recipe', 'beta', 'seed', 'fold', 'split', 'step', 'checkpoint',
               'threshold_rule', 'threshold', *METRICS, *COUNTS, 'all_good_accuracy',
               'health', 'health_reasons', 'recall_by_type', 'run')
# Compared against beta = 0, paired on the same seeds and folds (test split).
PAIRED_METRICS = ('auroc', 'balanced_accuracy')
PAIRED_LABELS = {'auroc': 'test AUROC', 'balanced_accuracy': 'test balanced acc. (points)'}


# ------------------------------------------------------------------ tables


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


def _readable_outputs(runs: list[dict], unreadable: dict) -> list[dict]:
  """The runs whose eval_{val,test}.npz (what the ROC and embedding figures
  read) can be read; the others left out, their reason in `unreadable`."""
  kept = []
  for run in runs:
    try:
      for split in ('val', 'test') if run['finished'] else ():
        load_eval_npz(run, split)
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
  p.add_argument('--map_method', default='fine',
                 help='the method maps.png draws (smsdd_jax/maps.py METHODS; default the '
                 'best by evidence)')
  args = p.parse_args(argv)
  unreadable = {}
  try:
    from smsdd_jax import figures  # pylint: disable=import-outside-toplevel  (matplotlib)
    runs = load_runs(args.sweep, unreadable)
    if not runs and not unreadable:
      raise ValueError(no_runs_reason(args.sweep))
    check_one_dataset(runs, args.sweep)
    runs = _readable_outputs(runs, unreadable)
    for run, why in unreadable.items():  # Said, then drawn without them.
      print(f'left out {run}: {why}', file=sys.stderr)
    if not runs:
      return 1
    for nested in nested_sweeps(args.sweep):
      print(f'not included: {nested} is a sweep of its own (report it with '
            f'--sweep={nested})', file=sys.stderr)
    export = None
    if args.export:
      from smsdd_jax import dataset_export, maps  # pylint: disable=import-outside-toplevel
      maps.check_method(args.map_method)  # Before any figure is drawn.
      export = dataset_export.load(args.export)
    paths = figures.write_figures(args.sweep, args.out, runs, export=export,
                                  map_method=args.map_method)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for path in paths:
    print(path)
  return 1 if unreadable else 0


if __name__ == '__main__':
  sys.exit(main())
