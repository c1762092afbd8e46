#!/usr/bin/env python3
"""Do the maps find the defect? Checked against magnetic_tile's masks on each
run's own test fold (its test split for a sweep made without --kfold; its
validation split with --split=val, where a method is chosen), beside floors
made without the network.

  python launch/localization.py --sweep=runs/w16 --export=exports/magnetic_tile_110x230.npz \
      [--layers=block5,block4] [--methods=fine,gradcampp@block3,gradxinput,...] \
      [--split=test|val] [--peaks] [--cost] [--occlusion=20] [--bank=PATH_WITH_{run}]
      [--sweep=ANOTHER ...] \
      [--out=FILE.json] [--examples=FILE.png]

Every finished run of the sweeps with its best checkpoint kept (as
launch/prediction_gains.py finds them) maps the defective crops of the split
that have a non-empty mask (smsdd_jax/maps.py): Grad-CAM at each --layers
(labelled gradcam_<layer>, gradcam_block5 being the baseline every method is
paired against), each --methods entry (a method, `method@layer` for one
reading a tap, or two such joined by '*' or '+': the product or the mean of
the two maps each divided by its own maximum), and occlusion on the first
--occlusion crops only (it costs hundreds of forwards a crop; Grad-CAM on the
same crops beside it). Per map: pixel AUROC against the mask and the pointing
game (is the map's peak inside the mask?); a run's value is the mean over its
crops, and per defect type. Floors per fold: the residual against a median
blur (launch/floors.py's anomaly background) and a uniform random map.

Comparisons (smsdd_jax.stats.compare): paired over (seed, fold), each method
against the residual floor and against gradcam_block5, every variant against
beta_a (beta = 0) on the same units, and with several sweeps (variants
labelled '<sweep>/<variant>') each sweep's variant against the first sweep's.
Five folds of one seed give at most p = 0.0625, never a verdict (stats.py), so
each method is also paired per crop (units: run and crop, every run's crops
pooled; overall and per defect type): that asks whether the method localises
better on these runs' crops, not whether it would on other trainings.

--peaks also maps the split's good crops and reports, per method, the AUROC
of a map's maximum between good and defective crops (does a good crop look
cool?) and the good crops' median peak as a fraction of the defective crops'
median peak (the map_scale.py scale). --cost, instead of all that, times each
method per ROI on the first run (jitted, one --batch_size batch of its test
crops, after a warm-up, the median of --repeats calls) beside the score's time
per ROI (Predictor.predict_proba), with the processor it ran on. The export must carry masks (dataset_export
writes them for builds with a `mask` feature) and hold the runs' data (the
build each run recorded, dataset_export.check_run). Writes a JSON (default
<first sweep>/localization.json) and prints markdown tables.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
  if path not in sys.path:
    sys.path.insert(0, path)

import numpy as np  # pylint: disable=wrong-import-position

import prediction_gains  # pylint: disable=wrong-import-position
from smsdd_jax import data_splits, dataset_export, figures, inference, maps, metrics, run_records, rundir, stats, sweep_runs  # pylint: disable=wrong-import-position

METRICS = ('pixel_auroc', 'pointing')
BASE_VARIANT = 'beta_a'
BASE_MAP = 'gradcam_block5'  # Today's map, which every method is paired against.
NO_FOLD = 'test'  # The "fold" of a run made without k-fold: its test split.


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python launch/localization.py',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--sweep', action='append', required=True,
                 help='sweep directory with checkpoints kept (repeatable)')
  p.add_argument('--export', required=True, help='dataset export with masks (.npz)')
  p.add_argument('--layers', default='block5', help='Grad-CAM layers, comma-separated')
  p.add_argument('--methods', default='',
                 help='more maps, comma-separated: METHOD, METHOD@LAYER, or two joined by '
                 '"*" (product) or "+" (mean) of the maps each divided by its maximum')
  p.add_argument('--bank', default=None,
                 help='memory bank of each run for feature_distance, a path where {run} '
                 'stands for the run\'s directory name (default <workdir>/memory_bank.npz)')
  p.add_argument('--split', choices=('test', 'val'), default='test',
                 help="the runs' split the maps are scored on ('val': where a method is chosen)")
  p.add_argument('--occlusion', type=int, default=0,
                 help='occlusion maps for this many crops per run (0 = none)')
  p.add_argument('--peaks', action='store_true',
                 help='also map the good crops: AUROC of the map\'s peak, good vs defective')
  p.add_argument('--cost', action='store_true',
                 help='instead of scoring maps: time each method per ROI beside the score on '
                 'the first run (default --out <first sweep>/map_cost.json)')
  p.add_argument('--repeats', type=int, default=7, help='timed calls per method (--cost)')
  p.add_argument('--variant', default=None, help='only this variant (default: all)')
  p.add_argument('--out', default=None, help='JSON (default <first sweep>/localization.json)')
  p.add_argument('--examples', default=None,
                 help='PNG of test decisions with their maps, as report --export draws them '
                 '(default <first sweep>/maps.png)')
  p.add_argument('--batch_size', type=int, default=32)
  return p


# ------------------------------------------------------------------ maps


def parse_spec(spec: str) -> tuple[str, list[tuple[str, str | None]]]:
  """'a@l*b' -> ('*', [('a', 'l'), ('b', None)]); one map -> ('', [...])."""
  join = '*' if '*' in spec else '+' if '+' in spec else ''
  parts = spec.split(join) if join else [spec]
  out = []
  for part in parts:
    method, _, layer = part.strip().partition('@')
    maps.check_method(method)
    out.append((method, layer or None))
  if len(out) > 2 or (join and len(out) != 2):
    raise ValueError(f'--methods entry {spec!r}: one map, or two joined by "*" or "+"')
  return join, out


def method_maps(predictor, images: np.ndarray, spec: str, bank=None) -> np.ndarray:
  """(n, H, W) raw maps of a --methods entry (see the module doc);
  feature_distance against `bank` (default the run's own)."""
  join, parts = parse_spec(spec)
  heat = [predictor.maps(images, m, layer=layer,
                         **({'bank': bank} if m == 'feature_distance' and bank else {}))
          for m, layer in parts]
  if not join:
    return heat[0]
  a, b = (np.asarray(maps.normalise(h)) for h in heat)
  return a * b if join == '*' else 0.5 * (a + b)


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


def split_of(workdir: str, which: str) -> str:
  if which == 'test':
    return rundir.test_split(workdir)
  return data_splits.split_names(rundir.run_config(rundir.read_config(workdir)).data)['val']


def defective_crops(export, workdir: str, which: str = 'test'):
  """Indices of the run's split, and which of them are defective with a mask."""
  index = export.indices(split_of(workdir, which))
  has_mask = (export.masks[index] > 0).any(axis=(1, 2))
  return index, (export.labels[index] == 1) & has_mask


def floor_maps(export, index: np.ndarray, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  images = export.rgb(index)
  return {'residual': np.stack([maps.residual_map(im) for im in images]),
          'random': np.stack([maps.random_map(rng, export.image_size) for _ in index])}


def floors(export, index: np.ndarray, seed: int = 0) -> dict:
  masks, types = export.masks[index], np.asarray(export.defect_types[index])
  return {name: summarise(score_maps(heat, masks), types)
          for name, heat in floor_maps(export, index, seed).items()}


def peak_auroc(good: np.ndarray, defective: np.ndarray) -> dict:
  """The map's maximum as a score, good vs defective crops, and the good
  crops' median peak over the defective crops' (map_scale.py's scale)."""
  pg = good.reshape(len(good), -1).max(axis=1)
  pd = defective.reshape(len(defective), -1).max(axis=1)
  labels = np.r_[np.zeros(len(pg)), np.ones(len(pd))].astype(np.int64)
  scale = float(np.median(pd)) if len(pd) else float('nan')
  return {'peak_auroc': float(metrics.auroc(labels, np.r_[pg, pd])),
          'good_peak_median': float(np.median(pg) / scale) if scale > 0 else float('nan')}


def evaluate_run(run: dict, export, layers: list[str], specs: list[str], args):
  """(summaries per map, per-crop values per map, the crops, peaks or None)."""
  predictor = inference.Predictor(run['workdir'], batch_size=args.batch_size)
  if tuple(predictor.image_size) != tuple(export.image_size):
    raise ValueError(f'{run["workdir"]}: image size {predictor.image_size} but '
                     f'{export.path} holds {export.image_size}')
  index, chosen = defective_crops(export, run['workdir'], args.split)
  crops = index[chosen]
  images, masks = export.rgb(crops), export.masks[crops]
  types = np.asarray(export.defect_types[crops])
  good = index[export.labels[index] == 0] if args.peaks else None
  bank = None
  if any(m == 'feature_distance' for s in specs for m, _ in parse_spec(s)[1]):
    bank = predictor.memory_bank(args.bank.format(run=run['run']) if args.bank else None)
  out, per_crop, peaks = {}, {}, {}
  named = [(f'gradcam_{layer}', f'gradcam@{layer}') for layer in layers] + \
      [(s, s) for s in specs]
  for label, spec in named:
    heat = method_maps(predictor, images, spec, bank)
    per_crop[label] = score_maps(heat, masks)
    out[label] = summarise(per_crop[label], types)
    if good is not None:
      peaks[label] = peak_auroc(method_maps(predictor, export.rgb(good), spec, bank), heat)
  if args.occlusion:
    k = min(args.occlusion, len(crops))
    out['occlusion'] = summarise(score_maps(predictor.maps(images[:k], 'occlusion'),
                                            masks[:k]), types[:k])
    # Grad-CAM on the same crops, so the two methods compare paired.
    out[f'gradcam_{layers[0]}@occlusion_crops'] = summarise(score_maps(
        predictor.maps(images[:k], 'gradcam', layer=layers[0]), masks[:k]), types[:k])
  for name, heat in floor_maps(export, crops, seed=_seed(run)).items():
    per_crop[f'floor:{name}'] = score_maps(heat, masks)
  return out, per_crop, crops, (peaks if good is not None else None)


def _seed(run: dict) -> int:
  return int(run['fold']) if isinstance(run['fold'], int) else 0


# ------------------------------------------------------------------ cost


def cost_per_roi(predictor, images: np.ndarray, labels: list[tuple[str, str]],
                 repeats: int, bank=None) -> dict:
  """ms per ROI of the score and of each map, jitted, one batch of
  predictor.batch_size images, after a warm-up call each (the compile): the
  median of `repeats` rounds, each round timing every one in turn (so a
  machine shared with other work slows all of them alike)."""
  batch = images[:predictor.batch_size]
  if len(batch) < predictor.batch_size:
    batch = np.resize(batch, (predictor.batch_size, *batch.shape[1:]))
  calls = {'score': lambda: predictor.predict_proba(batch)}
  for label, spec in labels:
    calls[label] = lambda spec=spec: method_maps(predictor, batch, spec, bank)
  times = {name: [] for name in calls}
  for fn in calls.values():
    fn()
  for _ in range(max(1, repeats)):
    for name, fn in calls.items():
      t0 = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - t0)
  out = {name: float(np.median(t)) * 1e3 / len(batch) for name, t in times.items()}
  flags = rundir.cpu_field('flags').split()
  return {'ms_per_roi': out, 'batch': len(batch), 'repeats': repeats,
          'cpu': rundir.cpu_field('model name'), 'cores': os.cpu_count(),
          'avx512_bf16': 'avx512_bf16' in flags, 'amx_bf16': 'amx_bf16' in flags,
          'width_mult': float(predictor.model.width_mult),
          'conv_impl': predictor.model.conv_impl, 'git_commit': run_records.git_commit()}


# ------------------------------------------------------------------ comparisons


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
  methods = list(dict.fromkeys(m for r in per_run.values() for m in r['maps']))
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
        if method not in (BASE_MAP, 'occlusion') and BASE_MAP in methods:
          base = {_unit(r): r['maps'][BASE_MAP][metric] for r in runs.values()
                  if BASE_MAP in r['maps']}
          out[f'{metric}: {variant} {method} minus {BASE_MAP}'] = stats.compare(values, base)
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


def crop_comparisons(per_run: dict, per_crop: dict) -> dict:
  """Each map against the residual floor and against BASE_MAP, paired per
  crop (units: run key and crop index, every run's crops pooled), overall
  and per defect type. Variant by variant."""
  out = {}
  variants = list(dict.fromkeys(r['variant'] for r in per_run.values()))
  for variant in variants:
    keys = [k for k, r in per_run.items() if r['variant'] == variant]
    methods = [m for m in per_crop[keys[0]]['maps'] if not m.startswith('floor:')]
    types = sorted({t for k in keys for t in per_crop[k]['types']})
    for metric in METRICS:
      for method in methods:
        for base in ('floor:residual', BASE_MAP):
          if base == method or base not in per_crop[keys[0]]['maps']:
            continue
          for t in [None] + types:
            values, baseline = {}, {}
            for k in keys:
              crop_types = per_crop[k]['types']
              a, b = (per_crop[k]['maps'][m][metric] for m in (method, base))
              for i, (va, vb) in enumerate(zip(a, b)):
                if t is None or crop_types[i] == t:
                  values[(k, i)], baseline[(k, i)] = va, vb
            name = 'residual floor' if base.startswith('floor:') else base
            where = '' if t is None else f' [{t}]'
            c = stats.compare(values, baseline)
            c.pop('units')
            out[f'{metric}: {variant} {method} minus {name}{where}'] = c
  return out


def evaluate(runs: list[dict], export, args) -> dict:
  layers = [v.strip() for v in args.layers.split(',') if v.strip()]
  specs = [v.strip() for v in (args.methods or '').split(',') if v.strip()]
  for spec in specs:
    parse_spec(spec)  # A bad entry before any map.
  for run in runs:  # Before any map: every run's data must be the export's.
    dataset_export.check_run(export, run['workdir'])
  # A sweep made without --kfold: every run is tested on the test split.
  runs = [{**run, 'fold': NO_FOLD if run['fold'] is None else run['fold']} for run in runs]
  per_run, fold_floors, per_crop = {}, {}, {}
  for run in runs:
    result, crop_values, crops, peaks = evaluate_run(run, export, layers, specs, args)
    if run['fold'] not in fold_floors:
      fold_floors[run['fold']] = floors(export, crops, seed=_seed(run))
    per_run[run['key']] = {'variant': run['variant'], 'seed': run['seed'], 'fold': run['fold'],
                           'crops': int(len(crops)), 'maps': result}
    if peaks is not None:
      per_run[run['key']]['peaks'] = peaks
    per_crop[run['key']] = {'maps': {m: {k: [round(float(v), 6) for v in values]
                                         for k, values in metric_values.items()}
                                     for m, metric_values in crop_values.items()},
                            'types': [str(t) for t in export.defect_types[crops]]}
    print(f'{run["key"]}: ' + ', '.join(f'{m} {v["pixel_auroc"]:.3f} / {v["pointing"]:.2f}'
                                        for m, v in result.items()), flush=True)
  out = {'split': args.split, 'runs': per_run,
         'floors': {str(k): v for k, v in sorted(fold_floors.items(), key=lambda kv: str(kv[0]))},
         'comparisons': comparisons(per_run, fold_floors),
         'crop_comparisons': crop_comparisons(per_run, per_crop),
         'per_crop': per_crop}
  return out


def measure_cost(run: dict, export, args) -> dict:
  """--cost: each map's time per ROI beside the score's, on `run`'s test crops."""
  layers = [v.strip() for v in args.layers.split(',') if v.strip()]
  specs = [v.strip() for v in (args.methods or '').split(',') if v.strip()]
  dataset_export.check_run(export, run['workdir'])
  predictor = inference.Predictor(run['workdir'], batch_size=args.batch_size)
  bank = None
  if any(m == 'feature_distance' for s in specs for m, _ in parse_spec(s)[1]):
    bank = predictor.memory_bank(args.bank.format(run=run['run']) if args.bank else None)
  labels = [(f'gradcam_{layer}', f'gradcam@{layer}') for layer in layers] + \
      [(s, s) for s in specs]
  images = export.rgb(export.indices(rundir.test_split(run['workdir'])))
  return {'cost': {'run': run['key'],
                   **cost_per_roi(predictor, images, labels, args.repeats, bank)}}


# ------------------------------------------------------------------ tables


def _mean(rows: list[dict], key: str) -> str:
  v = np.asarray([r.get(key, np.nan) for r in rows], np.float64)
  return f'{np.nanmean(v):.3f}' if np.isfinite(v).any() else 'n/a'


def _groups(result: dict) -> dict:
  groups = collections.defaultdict(list)
  for r in result['runs'].values():
    for method, values in r['maps'].items():
      groups[f'{r["variant"]} {method}'].append(values)
  for name, fl in (('floor: residual', 'residual'), ('floor: random', 'random')):
    groups[name] = [f[fl] for f in result['floors'].values()]
  return groups


def markdown(result: dict) -> str:
  types = sorted({k.split('/', 1)[1] for f in result.get('floors', {}).values()
                  for k in f['residual'] if '/' in k})
  groups = _groups(result) if 'runs' in result else {}
  lines = []
  for metric, title in (('pointing', 'pointing'), ('pixel_auroc', 'pixel AUROC')) if groups else ():
    header = ['map', 'runs', 'pixel AUROC', 'pointing'] + [f'{title} {t}' for t in types]
    lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for name, rows in groups.items():
      lines.append(f'| {name} | {len(rows)} | {_mean(rows, "pixel_auroc")} | '
                   f'{_mean(rows, "pointing")} | '
                   + ' | '.join(_mean(rows, f'{metric}/{t}') for t in types) + ' |')
    lines.append('')
  peaks = [r for r in result.get('runs', {}).values() if r.get('peaks')]
  if peaks:
    lines += ['| map | peak AUROC, good vs defective crops | good crops\' median peak / '
              'defective crops\' |', '|---|---|---|']
    for method in peaks[0]['peaks']:
      rows = [r['peaks'][method] for r in peaks if method in r['peaks']]
      lines.append(f'| {method} | {_mean(rows, "peak_auroc")} | '
                   f'{_mean(rows, "good_peak_median")} |')
    lines.append('')
  if result.get('cost'):
    c = result['cost']
    lines += [f'Cost per ROI ({c["run"]}; {c["cpu"]}, {c["cores"]} cores, avx512_bf16 '
              f'{c["avx512_bf16"]}, width {c["width_mult"]:g}, {c["conv_impl"]}, batch '
              f'{c["batch"]}, median of {c["repeats"]}):', '',
              '| what | ms per ROI | x the score |', '|---|---|---|']
    for name, ms in c['ms_per_roi'].items():
      lines.append(f'| {name} | {ms:.2f} | {ms / c["ms_per_roi"]["score"]:.2f} |')
    lines.append('')
  for key, title in (('comparisons', 'paired over (seed, fold)'),
                     ('crop_comparisons', 'paired per crop')):
    if key not in result:
      continue
    lines += [f'| {title} | pairs | mean difference | 95% interval | p | verdict |',
              '|---|---|---|---|---|---|']
    for name, c in result.get(key, {}).items():
      lines.append(f'| {name} | {c["n"]} | {c["mean"]:+.3f} | [{c["ci_low"]:+.3f}, '
                   f'{c["ci_high"]:+.3f}] | {c["p"]:.3g} | {c["verdict"]} |')
    lines.append('')
  return '\n'.join(lines).rstrip()


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
    first = min(runs, key=lambda r: (not r['variant'].endswith(BASE_VARIANT), r['seed'],
                                   r['fold'] or 0))
    if args.cost:
      return _write_cost(args, measure_cost(first, export, args))
    result = evaluate(runs, export, args)
    examples = args.examples or os.path.join(args.sweep[0], 'maps.png')
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


def _write_cost(args, result: dict) -> int:
  out = args.out or os.path.join(args.sweep[0], 'map_cost.json')
  rundir.write_json(out, {'sweeps': [os.path.relpath(os.path.abspath(s), REPO)
                                     for s in args.sweep], 'export': os.path.basename(args.export),
                          **result})
  print(markdown(result))
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
