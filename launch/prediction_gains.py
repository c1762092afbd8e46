#!/usr/bin/env python3
"""The cheap gains at prediction time, measured paired on a sweep's test folds:
flip test-time augmentation (`predict --tta=flips`) and an ensemble of the
seeds of one variant and fold (`predict --workdir=A --workdir=B`).

  python launch/prediction_gains.py --sweep=runs/mt_learn --export=exports/magnetic_tile_110x230.npz \
      [--variant=beta_a] [--out=runs/mt_learn/prediction_gains.json]

Every finished run of the sweep with its best checkpoint kept is scored on its
own test split, read from the dataset export (smsdd_jax.dataset_export) the
runs were trained on or exported from the same build: the folds are the
build's, so a run's test split is the export's. Per run: test AUROC as
trained, and with flips. An export of other data than a run recorded (its
build, preprocessing, image size or folds) is refused in one line, exit 2. Per (variant, fold) with two or more seeds: the AUROC
of the seeds' mean probability, without and with flips.

Comparisons (smsdd_jax.stats.compare: bootstrap 95% interval, signed-rank p):
flips minus plain over runs (seed, fold); ensemble minus the mean of its
members' AUROCs over folds, and minus its best member's (the ensemble must
beat the seeds it averages, not only their mean). Writes a JSON and prints a
markdown table. No TensorFlow is imported.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import numpy as np  # pylint: disable=wrong-import-position

from smsdd_jax import dataset_export, inference, metrics, rundir, stats  # pylint: disable=wrong-import-position


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python launch/prediction_gains.py', description=__doc__.split(
      '\n\n')[0])
  p.add_argument('--sweep', required=True, help='sweep directory (runs with checkpoints_best/)')
  p.add_argument('--export', required=True, help='dataset export of the same build (.npz)')
  p.add_argument('--variant', default=None, help='only this variant (default: all)')
  p.add_argument('--out', default=None, help='JSON to write (default SWEEP/prediction_gains.json)')
  p.add_argument('--batch_size', type=int, default=32)
  return p


def finished_runs(sweep: str, variant: str | None) -> list[dict]:
  """{'run', 'workdir', 'variant', 'seed', 'fold'} of every finished run whose
  best checkpoint is kept."""
  runs = []
  for name in sorted(os.listdir(sweep)):
    workdir = os.path.join(sweep, name)
    meta_path = os.path.join(workdir, rundir.SWEEP)
    if not (os.path.isfile(meta_path) and os.path.isfile(os.path.join(workdir, rundir.EVAL))):
      continue
    meta = rundir.read_json(meta_path, 'sweep record')
    if variant and meta['variant'] != variant:
      continue
    if not os.path.isdir(os.path.join(workdir, rundir.CHECKPOINTS_BEST)):
      print(f'skip {name}: no {rundir.CHECKPOINTS_BEST}/ (checkpoints not kept)', file=sys.stderr)
      continue
    runs.append({'run': name, 'workdir': workdir, 'variant': meta['variant'],
                 'seed': meta['seed'], 'fold': meta['fold']})
  return runs


def score_run(run: dict, export, batch_size: int) -> dict:
  """Test labels and probabilities of one run, plain and with flips."""
  index = export.indices(rundir.test_split(run['workdir']))
  images, labels = export.rgb(index), np.asarray(export.labels[index])
  out = {'labels': labels}
  for tta in ('none', 'flips'):
    predictor = inference.Predictor(run['workdir'], batch_size=batch_size, tta=tta)
    if tuple(predictor.image_size) != tuple(export.image_size):
      raise ValueError(f'{run["workdir"]}: image size {predictor.image_size} but '
                       f'{export.path} holds {export.image_size}')
    out[tta] = predictor.predict_proba(images)
  return out


def evaluate(runs: list[dict], export, batch_size: int) -> dict:
  for run in runs:  # Before any scoring: every run's data must be the export's.
    dataset_export.check_run(export, run['workdir'])
  per_run, groups = {}, collections.defaultdict(list)
  for run in runs:
    scored = score_run(run, export, batch_size)
    per_run[run['run']] = {
        'variant': run['variant'], 'seed': run['seed'], 'fold': run['fold'],
        'auroc': metrics.auroc(scored['labels'], scored['none']),
        'auroc_flips': metrics.auroc(scored['labels'], scored['flips'])}
    groups[(run['variant'], run['fold'])].append((run['run'], scored))
    print(f'{run["run"]}: test AUROC {per_run[run["run"]]["auroc"]:.3f}, '
          f'flips {per_run[run["run"]]["auroc_flips"]:.3f}', flush=True)
  per_fold = {}
  for (variant, fold), members in sorted(groups.items(), key=str):
    if len(members) < 2:
      continue
    labels = members[0][1]['labels']
    row = {'variant': variant, 'fold': fold, 'members': [m[0] for m in members]}
    for tta, key in (('none', 'auroc'), ('flips', 'auroc_flips')):
      mean_prob = np.mean([m[1][tta] for m in members], axis=0)
      member = [per_run[m[0]][key] for m in members]
      row.update({f'ensemble_{key}': metrics.auroc(labels, mean_prob),
                  f'members_mean_{key}': float(np.mean(member)),
                  f'members_best_{key}': float(np.max(member))})
    per_fold[f'{variant}_f{fold}'] = row
  return {'runs': per_run, 'ensembles': per_fold, 'comparisons': comparisons(per_run, per_fold)}


def comparisons(per_run: dict, per_fold: dict) -> dict:
  out = {}
  for variant in sorted({r['variant'] for r in per_run.values()}):
    runs = {k: r for k, r in per_run.items() if r['variant'] == variant}
    out[f'{variant}: flips minus plain (runs)'] = stats.compare(
        {k: r['auroc_flips'] for k, r in runs.items()}, {k: r['auroc'] for k, r in runs.items()})
    folds = {k: r for k, r in per_fold.items() if r['variant'] == variant}
    if not folds:
      continue
    for key in ('auroc', 'auroc_flips'):
      ens = {k: r[f'ensemble_{key}'] for k, r in folds.items()}
      for base in ('mean', 'best'):
        out[f'{variant}: ensemble{" + flips" if key != "auroc" else ""} minus members\' '
            f'{base}{" (with flips)" if key != "auroc" else ""} (folds)'] = stats.compare(
                ens, {k: r[f'members_{base}_{key}'] for k, r in folds.items()})
  return out


def markdown(result: dict) -> str:
  lines = ['| comparison (test AUROC) | pairs | mean difference | 95% interval | p | verdict |',
           '|---|---|---|---|---|---|']
  for name, c in result['comparisons'].items():
    lines.append(f'| {name} | {c["n"]} | {c["mean"]:+.3f} | [{c["ci_low"]:+.3f}, '
                 f'{c["ci_high"]:+.3f}] | {c["p"]:.3f} | {c["verdict"]} |')
  lines += ['', '| run | AUROC | with flips |', '|---|---|---|']
  lines += [f'| {k} | {r["auroc"]:.3f} | {r["auroc_flips"]:.3f} |'
            for k, r in result['runs'].items()]
  if result['ensembles']:
    lines += ['', '| variant, fold | members\' mean / best | ensemble | members\' mean / best, '
              'flips | ensemble, flips |', '|---|---|---|---|---|']
    lines += [f'| {k} | {r["members_mean_auroc"]:.3f} / {r["members_best_auroc"]:.3f} | '
              f'{r["ensemble_auroc"]:.3f} | {r["members_mean_auroc_flips"]:.3f} / '
              f'{r["members_best_auroc_flips"]:.3f} | {r["ensemble_auroc_flips"]:.3f} |'
              for k, r in result['ensembles'].items()]
  return '\n'.join(lines)


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    if not os.path.isdir(args.sweep):
      raise ValueError(f'--sweep={args.sweep}: no such directory')
    runs = finished_runs(args.sweep, args.variant)
    if not runs:
      raise ValueError(f'--sweep={args.sweep}: no finished run with its best checkpoint kept')
    export = dataset_export.load(args.export)
    result = evaluate(runs, export, args.batch_size)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  out = args.out or os.path.join(args.sweep, 'prediction_gains.json')
  rundir.write_json(out, {'sweep': os.path.relpath(os.path.abspath(args.sweep), REPO),
                          'export': os.path.basename(args.export), **result})
  print(markdown(result))
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
