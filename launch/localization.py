#!/usr/bin/env python3
"""Do the maps find the defect? Checked against magnetic_tile's masks on each
run's own test fold (its test split for a sweep made without --kfold), beside
floors made without the network.

  python launch/localization.py --sweep=docs/sweeps/mt_k5_quick_learn_ckpt \
      --export=exports/magnetic_tile_110x230.npz [--sweep=ANOTHER ...] \
      [--occlusion=20] [--out=FILE.json] [--examples=FILE.png]

Every finished run of the sweeps with its best checkpoint kept (as
launch/prediction_gains.py finds them) maps the defective crops of its test
fold that have a non-empty mask (smsdd_jax/maps.py: Grad-CAM at each
--layers; occlusion on the first --occlusion crops only: it costs hundreds of
forwards a crop). Per map: pixel AUROC against the mask and the pointing game
(is the map's peak inside the mask?); a run's value is the mean over its
crops, and per defect type. Floors per fold: the residual against a median
blur (launch/floors.py's anomaly background) and a uniform random map.

Comparisons (smsdd_jax.stats.compare, paired over (seed, fold)): each method
against the residual floor, every variant against beta_a (beta = 0) on the
same units, and with several sweeps (variants labelled '<sweep>/<variant>')
each sweep's variant against the first sweep's. The export must carry masks (dataset_export writes them
for builds with a `mask` feature) and hold the runs' data (the build each
run recorded, dataset_export.check_run). Writes a JSON (default
<first sweep>/localization.json) and prints markdown tables.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
  if path not in sys.path:
    sys.path.insert(0, path)

import numpy as np  # pylint: disable=wrong-import-position

import prediction_gains  # pylint: disable=wrong-import-position
from smsdd_jax import dataset_export, figures, inference, maps, rundir, stats, sweep_runs  # pylint: disable=wrong-import-position

METRICS = ('pixel_auroc', 'pointing')
BASE_VARIANT = 'beta_a'
NO_FOLD = 'test'  # The "fold" of a run made without k-fold: its test split.


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python launch/localization.py',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--sweep', action='append', required=True,
                 help='sweep directory with checkpoints kept (repeatable)')
  p.add_argument('--export', required=True, help='dataset export with masks (.npz)')
  p.add_argument('--layers', default='block5', help='Grad-CAM layers, comma-separated')
  p.add_argument('--occlusion', type=int, default=0,
                 help='occlusion maps for this many crops per run (0 = none)')
  p.add_argument('--variant', default=None, help='only this variant (default: all)')
  p.add_argument('--out', default=None, help='JSON (default <first sweep>/localization.json)')
  p.add_argument('--examples', default=None,
                 help='PNG of test decisions with their maps, as report --export draws them '
                 '(default <first sweep>/maps.png)')
  p.add_argument('--batch_size', type=int, default=32)
  return p


def score_maps(heat: np.ndarray, masks: np.ndarray) -> dict:
  """{metric: per-crop values} of maps (n, H, W) against masks (n, H, W)."""
  return {'pixel_auroc': [maps.pixel_auroc(h, m) for h, m in zip(heat, masks)],
          'pointing': [maps.pointing_hit(h, m) for h, m in zip(heat, masks)]}


def summarise(per_crop: dict, types: np.ndarray) -> dict:
  """Means over crops, overall and per defect type."""
  out = {}
  for name, values in per_crop.items():
    v = np.asarray(values, np.float64)
    out[name] = float(np.nanmean(v)) if np.isfinite(v).any() else float('nan')
    for t in sorted(set(types)):
      sel = v[types == t]
      out[f'{name}/{t}'] = float(np.nanmean(sel)) if np.isfinite(sel).any() else float('nan')
  return out


def defective_crops(export, workdir: str):
  """Indices of the run's test split, and which of them are defective with a mask."""
  index = export.indices(rundir.test_split(workdir))
  has_mask = (export.masks[index] > 0).any(axis=(1, 2))
  return index, (export.labels[index] == 1) & has_mask


def floors(export, index: np.ndarray, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  images, masks = export.rgb(index), export.masks[index]
  types = np.asarray(export.defect_types[index])
  residual = np.stack([maps.residual_map(im) for im in images])
  random = np.stack([maps.random_map(rng, export.image_size) for _ in index])
  return {'residual': summarise(score_maps(residual, masks), types),
          'random': summarise(score_maps(random, masks), types)}


def evaluate_run(run: dict, export, layers: list[str], n_occlusion: int, batch_size: int):
  predictor = inference.Predictor(run['workdir'], batch_size=batch_size)
  if tuple(predictor.image_size) != tuple(export.image_size):
    raise ValueError(f'{run["workdir"]}: image size {predictor.image_size} but '
                     f'{export.path} holds {export.image_size}')
  index, chosen = defective_crops(export, run['workdir'])
  crops = index[chosen]
  images, masks = export.rgb(crops), export.masks[crops]
  types = np.asarray(export.defect_types[crops])
  out = {}
  for layer in layers:
    out[f'gradcam_{layer}'] = summarise(score_maps(predictor.maps(images, layer=layer), masks),
                                        types)
  if n_occlusion:
    k = min(n_occlusion, len(crops))
    out['occlusion'] = summarise(score_maps(predictor.maps(images[:k], 'occlusion'),
                                            masks[:k]), types[:k])
    # Grad-CAM on the same crops, so the two methods compare paired.
    out[f'gradcam_{layers[0]}@occlusion_crops'] = summarise(score_maps(
        predictor.maps(images[:k], layer=layers[0]), masks[:k]), types[:k])
  return out, crops


def _bases(label: str, labels: list[str]) -> list[str]:
  """What a variant is paired against: beta_a of its own sweep, and (several
  sweeps, labels '<sweep>/<variant>') the same variant of the first sweep."""
  sweep, _, variant = label.rpartition('/')
  out = []
  own = f'{sweep}/{BASE_VARIANT}' if sweep else BASE_VARIANT
  if variant != BASE_VARIANT and own in labels:
    out.append(own)
  first = labels[0].rpartition('/')[0] if sweep else ''
  if sweep and sweep != first and f'{first}/{variant}' in labels:
    out.append(f'{first}/{variant}')
  return out


def _unit(run: dict) -> str:
  """The pairing unit of a run: its seed and fold."""
  return f's{run["seed"]}_f{run["fold"]}'


def comparisons(per_run: dict, per_fold_floors: dict) -> dict:
  out = {}
  methods = sorted({m for r in per_run.values() for m in r['maps']})
  variants = list(dict.fromkeys(r['variant'] for r in per_run.values()))  # Sweeps' order.
  for metric in METRICS:
    for variant in variants:
      runs = {k: r for k, r in per_run.items() if r['variant'] == variant}
      for method in methods:
        if '@' in method:
          continue
        values = {_unit(r): r['maps'][method][metric] for r in runs.values()
                  if method in r['maps']}
        floor = {_unit(r): per_fold_floors[r['fold']]['residual'][metric] for r in runs.values()}
        out[f'{metric}: {variant} {method} minus residual floor'] = stats.compare(values, floor)
      if 'occlusion' in methods:
        occ = {_unit(r): r['maps']['occlusion'][metric]
               for r in runs.values() if 'occlusion' in r['maps']}
        grad = {_unit(r): r['maps'][m][metric]
                for r in runs.values() for m in r['maps'] if m.endswith('@occlusion_crops')}
        out[f'{metric}: {variant} occlusion minus Grad-CAM (same crops)'] = stats.compare(occ,
                                                                                       grad)
    for variant in variants:
      for base in _bases(variant, variants):
        a = {_unit(r): r for r in per_run.values() if r['variant'] == variant}
        b = {_unit(r): r for r in per_run.values() if r['variant'] == base}
        for method in methods:
          if '@' in method or method == 'occlusion':
            continue
          out[f'{metric}: {variant} minus {base}, {method}'] = stats.compare(
              {k: r['maps'][method][metric] for k, r in a.items() if method in r['maps']},
              {k: r['maps'][method][metric] for k, r in b.items() if method in r['maps']})
  return out


def evaluate(runs: list[dict], export, args) -> dict:
  layers = [v.strip() for v in args.layers.split(',') if v.strip()]
  for run in runs:  # Before any map: every run's data must be the export's.
    dataset_export.check_run(export, run['workdir'])
  # A sweep made without --kfold: every run is tested on the test split.
  runs = [{**run, 'fold': NO_FOLD if run['fold'] is None else run['fold']} for run in runs]
  per_run, fold_floors = {}, {}
  for run in runs:
    result, crops = evaluate_run(run, export, layers, args.occlusion, args.batch_size)
    if run['fold'] not in fold_floors:
      seed = int(run['fold']) if isinstance(run['fold'], int) else 0
      fold_floors[run['fold']] = floors(export, crops, seed=seed)
    per_run[run['key']] = {'variant': run['variant'], 'seed': run['seed'], 'fold': run['fold'],
                           'crops': int(len(crops)), 'maps': result}
    print(f'{run["key"]}: ' + ', '.join(f'{m} {v["pixel_auroc"]:.3f} / {v["pointing"]:.2f}'
                                        for m, v in result.items()), flush=True)
  return {'runs': per_run, 'floors': {str(k): v for k, v in sorted(fold_floors.items(),
                                                                     key=lambda kv: str(kv[0]))},
          'comparisons': comparisons(per_run, fold_floors)}


def _mean(rows: list[dict], key: str) -> str:
  v = np.asarray([r.get(key, np.nan) for r in rows], np.float64)
  return f'{np.nanmean(v):.3f}' if np.isfinite(v).any() else 'n/a'


def markdown(result: dict) -> str:
  types = sorted({k.split('/', 1)[1] for f in result['floors'].values()
                  for k in f['residual'] if '/' in k})
  header = ['map', 'runs', 'pixel AUROC', 'pointing'] + [f'pointing {t}' for t in types]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  groups = collections.defaultdict(list)
  for r in result['runs'].values():
    for method, values in r['maps'].items():
      groups[f'{r["variant"]} {method}'].append(values)
  for name, fl in (('floor: residual', 'residual'), ('floor: random', 'random')):
    groups[name] = [f[fl] for f in result['floors'].values()]
  for name, rows in groups.items():
    lines.append(f'| {name} | {len(rows)} | {_mean(rows, "pixel_auroc")} | '
                 f'{_mean(rows, "pointing")} | '
                 + ' | '.join(_mean(rows, f'pointing/{t}') for t in types) + ' |')
  lines += ['', '| comparison | pairs | mean difference | 95% interval | p | verdict |',
            '|---|---|---|---|---|---|']
  for name, c in result['comparisons'].items():
    lines.append(f'| {name} | {c["n"]} | {c["mean"]:+.3f} | [{c["ci_low"]:+.3f}, '
                 f'{c["ci_high"]:+.3f}] | {c["p"]:.3f} | {c["verdict"]} |')
  return '\n'.join(lines)


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    runs = []
    for sweep in args.sweep:
      if not os.path.isdir(sweep):
        raise ValueError(f'--sweep={sweep}: no such directory')
      name = os.path.basename(os.path.normpath(sweep))
      for run in prediction_gains.finished_runs(sweep, args.variant):
        # Several sweeps: a variant is labelled by its sweep too (their runs pair by seed and fold).
        label = f'{name}/{run["variant"]}' if len(args.sweep) > 1 else run['variant']
        runs.append({**run, 'variant': label, 'key': f'{name}/{run["run"]}'})
    if not runs:
      raise ValueError(f'--sweep={",".join(args.sweep)}: no finished run with its best '
                       'checkpoint kept')
    export = dataset_export.load(args.export)
    if export.masks is None:
      raise ValueError(f'--export={args.export}: holds no masks (export a build with a '
                       '`mask` feature, e.g. magnetic_tile, again)')
    result = evaluate(runs, export, args)
    examples = args.examples or os.path.join(args.sweep[0], 'maps.png')
    first = min(runs, key=lambda r: (not r['variant'].endswith(BASE_VARIANT), r['seed'],
                                   r['fold'] or 0))
    figures.plot_maps([sweep_runs.load_run(first['workdir'])], examples, export)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  out = args.out or os.path.join(args.sweep[0], 'localization.json')
  rundir.write_json(out, {'sweeps': [os.path.relpath(os.path.abspath(s), REPO)
                                     for s in args.sweep],
                          'export': os.path.basename(args.export),
                          'examples': os.path.relpath(os.path.abspath(examples), REPO),
                          'examples_run': first['key'], **result})
  print(markdown(result))
  print(f'wrote {out} and {examples}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
