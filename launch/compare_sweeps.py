#!/usr/bin/env python3
"""Pairs sweeps of the same folds and seeds (e.g. recipes) run by run.

  python launch/compare_sweeps.py --base=docs/sweeps/mt_k5_quick \\
      --other=docs/sweeps/mt_k5_quick_learn [--other=...] [--variant=beta_a] [--per_run]

Reads each sweep's results.csv (launch/sweep.py) and prints two markdown
tables: every sweep's test AUROC and balanced accuracy (mean +- std over its
runs) with its collapsed runs counted; then, per other sweep, variant and
metric, other minus base on the test rows paired by (variant, seed, fold):
the mean difference, the 95% bootstrap interval, the exact signed-rank p and
the verdict of smsdd_jax/stats.py. With --per_run, a third table per other
sweep: each of its runs beside the base run of the same variant, seed and
fold, with its health, best step and the floors of its fold (the floor:* rows
of its results.csv), so a run below a floor of its own fold shows.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from smsdd_jax import report, stats  # pylint: disable=wrong-import-position

METRICS = ('auroc', 'balanced_accuracy')


def read_results(sweep: str) -> list[dict]:
  """The rows of sweep/results.csv; ValueError naming the file when a column
  or number these tables read is missing or broken."""
  path = os.path.join(sweep, 'results.csv')
  with open(path, encoding='utf-8', newline='') as f:
    rows = list(csv.DictReader(f))
  for line, r in enumerate(rows, 2):
    try:
      for key in ('variant', 'seed', 'fold', 'split'):
        if r.get(key) is None:
          raise ValueError(f'no "{key}" column')
      for key in METRICS:
        float(r.get(key))
    except (TypeError, ValueError) as e:
      raise ValueError(f'{path} line {line}: {e} (rewrite it: launch/sweep.py '
                       f'--out={sweep} --aggregate_only)') from None
  return rows


def test_rows(sweep: str) -> dict:
  """(variant, seed, fold) -> the test row of sweep/results.csv."""
  return {(r['variant'], r['seed'], r['fold']): r for r in read_results(sweep)
          if r['split'] == 'test' and not r['variant'].startswith('floor:')}


def compare(base: dict, other: dict, variant: str, metric: str) -> dict:
  pick = lambda rows: {k[1:]: float(r[metric]) for k, r in rows.items() if k[0] == variant}
  return stats.compare(pick(other), pick(base))


def floor_rows(sweep: str) -> dict:
  """fold -> {floor model: test AUROC} from sweep/results.csv's floor:* rows."""
  floors = {}
  for r in read_results(sweep):
    if r['split'] == 'test' and r['variant'].startswith('floor:'):
      floors.setdefault(r['fold'], {})[r['variant'].removeprefix('floor:')] = float(r['auroc'])
  return floors


def per_run_lines(base: dict, other: dict, floors: dict, variants) -> list[str]:
  """One line per run of `other`: its test AUROC / balanced accuracy, the base
  run's, health, step, and its fold's floors; 'below <floor>' where a floor's
  AUROC is higher than the run's, 'ties <floor>' where it is equal."""
  models = sorted({m for f in floors.values() for m in f})
  lines = ['| variant | seed | fold | test (defective / good) | AUROC | balanced acc. | health '
           '| best step | base: AUROC / bal. acc. | floors: ' + ' / '.join(models) +
           ' AUROC | below or tied with a floor |', '|---' * 10 + '|']
  for key in sorted(k for k in other if k[0] in variants):
    r, b = other[key], base.get(key)
    auc = float(r['auroc'])
    fold = floors.get(key[2], {})
    # A floor above the run, or tied with it (both 1.000 on a small fold is a tie, not a loss).
    below = [f'below {m}' for m in models if m in fold and fold[m] > auc + 1e-9]
    below += [f'ties {m}' for m in models if m in fold and abs(fold[m] - auc) <= 1e-9]
    base_cell = (f"{float(b['auroc']):.3f} / {float(b['balanced_accuracy']):.3f}"
                 if b else '–')
    lines.append(
        f"| {key[0]} | {key[1]} | {key[2]} | {r.get('num_defective', '?')} / "
        f"{r.get('num_good', '?')} | {auc:.3f} | {float(r['balanced_accuracy']):.3f} | "
        f"{r.get('health', '')} | {r.get('step', '')} | {base_cell} | "
        + ' / '.join(f'{fold[m]:.3f}' if m in fold else '–' for m in models)
        + f" | {', '.join(below) or 'no'} |")
  return lines


def summary_line(sweep: str, rows: dict, variant: str) -> str:
  """'| sweep | variant | runs | AUROC | balanced acc. | collapsed |' (test)."""
  mine = [r for k, r in rows.items() if k[0] == variant]
  cells = [report.mean_std([float(r[m]) for r in mine], scale=1.0, digits=3) for m in METRICS]
  collapsed = sum(r.get('health') == 'collapsed' for r in mine)
  return f'| {sweep} | {variant} | {len(mine)} | {cells[0]} | {cells[1]} | {collapsed} |'


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--base', required=True)
  p.add_argument('--other', required=True, action='append',
                 help='a sweep to pair with --base (repeatable)')
  p.add_argument('--variant', default=None, help='one variant (default: all in both)')
  p.add_argument('--per_run', action='store_true',
                 help="also each run of the other sweeps beside its base run and its fold's floors")
  args = p.parse_args(argv)
  for sweep in (args.base, *args.other):
    if not os.path.isfile(os.path.join(sweep, 'results.csv')):
      print(f'error: {sweep}/results.csv does not exist (launch/sweep.py writes it when the '
            'sweep ends; --aggregate_only writes it from the finished runs)', file=sys.stderr)
      return 2
  try:
    base = test_rows(args.base)
    others = {o: test_rows(o) for o in args.other}
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  variants = sorted({k[0] for k in base}.intersection(*({k[0] for k in o}
                                                        for o in others.values())))
  if args.variant:
    variants = [v for v in variants if v == args.variant]
  print('Test split, every run of each sweep (collapsed: eval.json health)\n')
  print('| sweep | variant | runs | AUROC | balanced accuracy | collapsed |')
  print('|---|---|---|---|---|---|')
  for sweep, rows in {args.base: base, **others}.items():
    for v in variants:
      print(summary_line(sweep, rows, v))
  for name, other in others.items():
    print(f'\n{name} minus {args.base}, test split, paired by seed and fold\n')
    print('| variant | metric | pairs | mean difference | 95% interval | p | verdict |')
    print('|---|---|---|---|---|---|---|')
    for v in variants:
      for m in METRICS:
        r = compare(base, other, v, m)
        print(f"| {v} | {m} | {r['n']} | {r['mean']:+.3f} | [{r['ci_low']:+.3f}, "
              f"{r['ci_high']:+.3f}] | {r['p']:.3f} | {r['verdict']} |")
    if args.per_run:
      print(f'\n{name}, test split, run by run beside {args.base}\n')
      print('\n'.join(per_run_lines(base, other, floor_rows(name), variants)))
  return 0


if __name__ == '__main__':
  sys.exit(main())
