#!/usr/bin/env python3
"""Pairs two sweeps of the same folds and seeds (e.g. two recipes) run by run.

  python launch/compare_sweeps.py --base=docs/sweeps/mt_k5_quick \\
      --other=docs/sweeps/mt_k5_quick_learn [--variant=beta_a]

Reads each sweep's results.csv (launch/sweep.py), pairs the test rows by
(variant, seed, fold) and prints, per variant and metric, other minus base:
the mean difference, the 95% bootstrap interval, the exact signed-rank p and
the verdict of smsdd_jax/stats.py, as a markdown table.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from smsdd_jax import stats  # pylint: disable=wrong-import-position

METRICS = ('auroc', 'balanced_accuracy')


def test_rows(sweep: str) -> dict:
  """(variant, seed, fold) -> the test row of sweep/results.csv."""
  with open(os.path.join(sweep, 'results.csv'), encoding='utf-8') as f:
    return {(r['variant'], r['seed'], r['fold']): r for r in csv.DictReader(f)
            if r['split'] == 'test' and not r['variant'].startswith('floor:')}


def compare(base: dict, other: dict, variant: str, metric: str) -> dict:
  pick = lambda rows: {k[1:]: float(r[metric]) for k, r in rows.items() if k[0] == variant}
  return stats.compare(pick(other), pick(base))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--base', required=True)
  p.add_argument('--other', required=True)
  p.add_argument('--variant', default=None, help='one variant (default: all in both)')
  args = p.parse_args(argv)
  base, other = test_rows(args.base), test_rows(args.other)
  variants = sorted({k[0] for k in base} & {k[0] for k in other})
  if args.variant:
    variants = [v for v in variants if v == args.variant]
  print(f'{args.other} minus {args.base}, test split, paired by seed and fold\n')
  print('| variant | metric | pairs | mean difference | 95% interval | p | verdict |')
  print('|---|---|---|---|---|---|---|')
  for v in variants:
    for m in METRICS:
      r = compare(base, other, v, m)
      print(f"| {v} | {m} | {r['n']} | {r['mean']:+.3f} | [{r['ci_low']:+.3f}, "
            f"{r['ci_high']:+.3f}] | {r['p']:.3f} | {r['verdict']} |")
  return 0


if __name__ == '__main__':
  sys.exit(main())
