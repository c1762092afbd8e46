#!/usr/bin/env python3
"""Training curves of a few runs side by side: validation AUROC and the
training cross-entropy (smoothed) against the step, one line per run.

  python launch/run_curves.py --out=docs/figures/full_width_recipe.png \\
      --run="1/16, AdamW 1e-3=docs/sweeps/mt_k5_ladder/w16/beta_a_s0_f0" \\
      --run="full, AdamW 1e-3=docs/sweeps/mt_k5_ladder/w1/beta_a_s0_f0" ...

Reads each run's metrics.jsonl (smsdd_jax.figures.read_curves); a run
without one is an error naming it.
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from smsdd_jax import figures, rundir  # pylint: disable=wrong-import-position

KEYS = ('val/auroc', 'train/cross_entropy')


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python launch/run_curves.py',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--run', action='append', required=True, metavar='LABEL=RUN_DIR')
  p.add_argument('--out', required=True, help='PNG to write')
  p.add_argument('--title', default='')
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  runs = []
  for item in args.run:
    label, sep, path = item.rpartition('=')
    if not sep or not os.path.isfile(os.path.join(path, rundir.METRICS)):
      print(f'error: --run={item!r}: expected LABEL=RUN_DIR with a {rundir.METRICS}',
            file=sys.stderr)
      return 2
    runs.append((label, figures.read_curves(path, KEYS)))
  plt = figures._pyplot()  # pylint: disable=protected-access
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
  for label, curves in runs:
    steps, auroc = curves['val/auroc']
    axes[0].plot(steps, auroc, marker='o', ms=3, label=label)
    steps, ce = curves['train/cross_entropy']
    axes[1].plot(steps, figures._smooth(ce, 10), label=label)  # pylint: disable=protected-access
  axes[0].axhline(0.5, color='grey', lw=0.8, ls=':')
  axes[0].set(xlabel='step', ylabel='validation AUROC')
  axes[1].set(xlabel='step', ylabel='training cross-entropy (10-record mean)')
  axes[0].legend(fontsize=7)
  if args.title:
    fig.suptitle(args.title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(args.out) or '.', exist_ok=True)
  fig.savefig(args.out, dpi=110)
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
