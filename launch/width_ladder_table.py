#!/usr/bin/env python3
"""The width ladder's table and plot, from the sweeps launch/width_ladder.sh made.

  python launch/width_ladder_table.py --ladder=docs/sweeps/mt_k5_ladder \\
      [--figure=docs/figures/width_ladder.png]

LADDER holds one sweep per width (w16, w8, w4, w2, w1: 1/16 ... the paper's
full width), each with its results.csv (launch/sweep.py), its runs'
config.json (width, commit) and wall.jsonl (seconds of every process that
trained the run), and, where launch/prediction_gains.py was run on it, its
prediction_gains.json (test AUROC with flips). Writes LADDER/ladder.md: per
width the parameters, the training GFLOP per pair, the seconds per run (and
the CPU), test AUROC as trained and with flips, recall per defect type, the
runs above every floor of their fold, and each width minus 1/16 paired on
the same folds (smsdd_jax.stats.compare; "not distinguishable" below 3
pairs). The figure: test AUROC per fold against GFLOP per pair.
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from smsdd_jax import benchmark, rundir, stats  # pylint: disable=wrong-import-position

BASE = 'w16'  # The width every other one is paired against.


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python launch/width_ladder_table.py',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--ladder', default='docs/sweeps/mt_k5_ladder',
                 help='folder of the per-width sweeps (w16, w8, ...)')
  p.add_argument('--figure', default='docs/figures/width_ladder.png')
  return p


def param_count(config: dict) -> int:
  """Parameters of the model a run's config builds (shapes only: no weights
  are computed)."""
  import jax  # pylint: disable=import-outside-toplevel
  from smsdd_jax import models  # pylint: disable=import-outside-toplevel
  cfg = rundir.run_config(config)
  model = models.create(cfg.model)
  shape = (*cfg.data.image_size, 3)
  params, _ = jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0), shape))
  return sum(x.size for x in jax.tree_util.tree_leaves(params))


def _wall(workdir: str) -> tuple[float, str]:
  """(seconds over every process that trained the run, CPU), NaN if unrecorded."""
  path = os.path.join(workdir, 'wall.jsonl')
  if not os.path.isfile(path):
    return float('nan'), ''
  with open(path, encoding='utf-8') as f:
    lines = [json.loads(line) for line in f if line.strip()]
  return sum(x['seconds'] for x in lines), (lines[-1].get('cpu', '') if lines else '')


def read_rung(sweep: str) -> dict:
  """One width: its finished runs' test rows by fold, floors by fold, costs."""
  with open(os.path.join(sweep, 'results.csv'), encoding='utf-8', newline='') as f:
    rows = [r for r in csv.DictReader(f) if r['split'] == 'test']
  runs = {int(r['fold']): r for r in rows if not r['variant'].startswith('floor:')}
  floors = collections.defaultdict(dict)
  for r in rows:
    if r['variant'].startswith('floor:'):
      floors[int(r['fold'])][r['variant']] = float(r['auroc'])
  if not runs:
    raise ValueError(f'{sweep}: no finished run in results.csv')
  first = os.path.join(sweep, runs[min(runs)]['run'])
  saved = rundir.read_config(first)
  model, data = saved['model'], saved['data']
  walls = {fold: _wall(os.path.join(sweep, r['run'])) for fold, r in runs.items()}
  flips = {}
  gains = os.path.join(sweep, 'prediction_gains.json')
  if os.path.isfile(gains):
    with open(gains, encoding='utf-8') as f:
      flips = {int(v['fold']): v['auroc_flips'] for v in json.load(f)['runs'].values()}
  commits = {rundir.read_json(os.path.join(sweep, r['run'], rundir.CONFIG),
                              'run config').get('git_commit', '?')[:7] for r in runs.values()}
  return {'width': float(model['width_mult']), 'runs': runs, 'floors': floors, 'flips': flips,
          'params': param_count(saved), 'commits': sorted(commits),
          'gflop': benchmark.train_gflop_per_pair(tuple(data['image_size']),
                                                  float(model['width_mult'])),
          'seconds': {f: s for f, (s, _) in walls.items()},
          'cpu': sorted({c for _, c in walls.values() if c})}


def _width_name(width: float) -> str:
  return 'full' if width == 1.0 else f'1/{round(1 / width)}'


def _mean_sd(values) -> str:
  values = list(values)
  if not values:
    return '-'
  sd = statistics.stdev(values) if len(values) > 1 else 0.0
  return f'{statistics.mean(values):.3f} ± {sd:.3f}'


def _recall_by_type(runs: dict) -> str:
  """Pooled over the folds: 'type hits/total' from each run's recall_by_type."""
  hits, totals = collections.Counter(), collections.Counter()
  for r in runs.values():
    for part in filter(None, (p.strip() for p in r['recall_by_type'].split(';'))):
      name, frac = part.rsplit(' ', 1)
      k, n = frac.split('/')
      hits[name] += int(k)
      totals[name] += int(n)
  return ', '.join(f'{t} {100 * hits[t] / totals[t]:.0f}%' for t in sorted(totals))


def _paired(rung: dict, base: dict, key: str) -> str:
  if rung is base:
    return '(base)'
  get = (lambda r: {f: float(x['auroc']) for f, x in r['runs'].items()}) if key == 'plain' \
      else (lambda r: r['flips'])
  c = stats.compare(get(rung), get(base))
  if not c['n']:
    return '-'
  return (f'{c["mean"]:+.3f} [{c["ci_low"]:+.3f}, {c["ci_high"]:+.3f}], n={c["n"]}, '
          f'p={c["p"]:.2f}, {c["verdict"]}')


def markdown(rungs: dict) -> str:
  base = rungs[BASE]
  lines = [
      '| width | params | GFLOP / pair | s / run (mean) | folds | test AUROC | with flips '
      '| minus 1/16 (paired) | flips minus 1/16 | above every floor | collapsed | recall per type |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in rungs.values():
    aurocs = {f: float(x['auroc']) for f, x in r['runs'].items()}
    above = sum(all(a > v for v in r['floors'].get(f, {}).values()) for f, a in aurocs.items())
    secs = [s for s in r['seconds'].values() if s == s]
    lines.append(
        f'| {_width_name(r["width"])} | {r["params"]:,} | {r["gflop"]:.2f} | '
        f'{statistics.mean(secs):.0f} | {",".join(map(str, sorted(aurocs)))} | '
        f'{_mean_sd(aurocs.values())} | {_mean_sd(r["flips"].values())} | '
        f'{_paired(r, base, "plain")} | {_paired(r, base, "flips")} | '
        f'{above} of {len(aurocs)} | {sum(x["health"] == "collapsed" for x in r["runs"].values())} '
        f'| {_recall_by_type(r["runs"])} |')
  commits = sorted({c for r in rungs.values() for c in r['commits']})
  cpus = sorted({c for r in rungs.values() for c in r['cpu']})
  lines += ['', f'Commit of every run: {", ".join(commits)}. Seconds on: {"; ".join(cpus)}.']
  return '\n'.join(lines) + '\n'


def plot(rungs: dict, path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, r in rungs.items():
    aurocs = [float(x['auroc']) for x in r['runs'].values()]
    ax.scatter([r['gflop']] * len(aurocs), aurocs, s=14, color='#1f77b4', alpha=0.5)
    ax.errorbar(r['gflop'], statistics.mean(aurocs), fmt='o', color='#1f77b4',
                yerr=statistics.stdev(aurocs) if len(aurocs) > 1 else 0)
    if r['flips']:
      ax.scatter(r['gflop'] * 1.08, statistics.mean(r['flips'].values()), marker='^',
                 color='#ff7f0e', label='with flips (mean)' if name == BASE else None)
    ax.annotate(_width_name(r['width']), (r['gflop'], min(aurocs) - 0.03), ha='center',
                fontsize=8)
  ax.set_xscale('log')
  ax.set_xlabel('training GFLOP per pair (log)')
  ax.set_ylabel('test AUROC (per fold; mean ± sd)')
  ax.set_title('magnetic_tile, :learn + gmp head, beta = 0: width ladder')
  if any(r['flips'] for r in rungs.values()):
    ax.legend(loc='lower left', fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fig.savefig(path, dpi=120)


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  names = sorted((n for n in os.listdir(args.ladder)
                  if n.startswith('w') and os.path.isfile(os.path.join(args.ladder, n,
                                                                       'results.csv'))),
                 key=lambda n: -int(n[1:]))
  if BASE not in names:
    print(f'error: {args.ladder}/{BASE}/results.csv missing: the base width has not run',
          file=sys.stderr)
    return 2
  rungs = {n: read_rung(os.path.join(args.ladder, n)) for n in names}
  text = markdown(rungs)
  rundir.write_text(os.path.join(args.ladder, 'ladder.md'), text)
  plot(rungs, args.figure)
  print(text + f'\nwrote {os.path.join(args.ladder, "ladder.md")}, {args.figure}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
