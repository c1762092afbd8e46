#!/usr/bin/env python3
"""Does the feature distance find what the classifier misses? The memory bank's
score (smsdd_jax/memory_bank) alone, the classifier's probability alone, and
the two combined, each decided at a threshold chosen on the validation split
only; and the bank's map against magnetic_tile's masks.

  python launch/anomaly_scores.py --sweep=runs/w16 --export=exports/magnetic_tile_110x230.npz \
      [--taps=block3,block4,block5,block4+block5,block3+block4] [--positions=z,none] \
      [--max_cells=16384] [--sampling=greedy] [--floors=docs/sweeps/mt_k5_quick/floors.json] \
      [--out=FILE.json] [--cache=DIR]
  python launch/anomaly_scores.py --report=FILE.json        # its tables again, nothing computed

Per finished run of the sweep (with its best checkpoint kept), on its own
folds: a bank of the good images of its training split per --taps entry (a
tap or taps joined by '+'; memory_bank.build with --max_cells, --sampling, the
library's aggregate, sigma and topk), its cells read each way of --positions
(standardised per position or not): a config is 'tap:position'. Each is
scored on the run's validation and test splits. Chosen per run on its
VALIDATION split only: the config with the best image AUROC for the score,
the one with the best mean of pixel AUROC and pointing game for the map. Its
test numbers are the ones reported; every config's are in the JSON.

Scores, each made a probability on the validation split (a logistic fit with
the two classes weighted equally, as the runs' balanced pairs train the
classifier) and decided by the run's own threshold rule (threshold.json: its
'argmax' is 0.5 on that probability) chosen on validation, then applied to
test unchanged:

  classifier          the run's probability at the run's own threshold
  classifier_recal    the probability's logit, refitted on validation: what
                      recalibration alone moves
  distance            log of the bank's image score
  logistic            both (logit and log distance) in one logistic fit
  rank_mean           the mean of the two scores' ranks among the validation
                      images (their empirical distributions), refitted
  either              the larger of the classifier's probability and the
                      distance's (as fitted above): at 0.5, flagged when
                      either flags it, so no type's recall can fall below
                      the classifier's; what it costs is in the overkill

Per score on test: AUROC, AUROC per defect type against the good crops,
recall per defect type, overkill and escape rates at the threshold; and the
share of good test crops above the median `uneven` crop's score (what a
threshold that finds half of them costs). Paired over the runs' folds
(smsdd_jax.stats.compare) against the classifier alone. Maps on the test
folds' defective crops with a mask: the bank's map (the map config chosen on
validation) beside Grad-CAM at block5 and the residual floor on the same
crops (maps.pixel_auroc, maps.pointing_hit), paired. Floors (launch/floors.py's
floors.json of the same folds) beside. Writes a JSON (default
<sweep>/anomaly_scores.json) and prints markdown tables.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
for path in (REPO, HERE):
  if path not in sys.path:
    sys.path.insert(0, path)

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

import prediction_gains  # pylint: disable=wrong-import-position
from smsdd_jax import (dataset_export, inference, maps, memory_bank, metrics,  # pylint: disable=wrong-import-position
                       rundir, stats)

DEFAULT_TAPS = 'block3,block4,block5,block4+block5,block3+block4'
SCORES = ('classifier', 'classifier_recal', 'distance', 'logistic', 'rank_mean', 'either')
TARGET_TYPE = 'uneven'


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python launch/anomaly_scores.py',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--sweep', help='sweep directory with checkpoints kept (required)')
  p.add_argument('--export', help='dataset export with masks (.npz) (required)')
  p.add_argument('--taps', default=DEFAULT_TAPS,
                 help='bank taps to try, comma-separated (taps joined by +)')
  p.add_argument('--positions', default='z,none',
                 help='how cells are read, comma-separated (memory_bank.POSITIONS): each tap '
                 'is tried with each')
  p.add_argument('--max_cells', type=int, default=memory_bank.DEFAULT_MAX_CELLS)
  p.add_argument('--sampling', default='greedy', choices=memory_bank.SAMPLINGS)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--variant', default=None, help='only this variant (default: all)')
  p.add_argument('--floors', default=None, help="launch/floors.py's floors.json of the folds")
  p.add_argument('--out', default=None, help='JSON (default <sweep>/anomaly_scores.json)')
  p.add_argument('--cache', default=None,
                 help='folder for the banks\' distances (reused when the run and bank match)')
  p.add_argument('--batch_size', type=int, default=32)
  p.add_argument('--report', default=None,
                 help='print the tables of a JSON this command wrote, and nothing else')
  return p


# ------------------------------------------------------------------ fitting on validation


def fit_logistic(x: np.ndarray, y: np.ndarray, *, ridge: float = 1e-3, steps: int = 50):
  """Logistic regression of y on the columns of x (n, k), the two classes
  weighted equally, by Newton's method on standardised columns -> a function
  x -> probability."""
  x = np.asarray(x, np.float64).reshape(len(y), -1)
  mean, std = x.mean(0), x.std(0) + 1e-12
  z = np.c_[np.ones(len(x)), (x - mean) / std]
  y = np.asarray(y, np.float64)
  weight = np.where(y == 1, 0.5 / max(y.sum(), 1), 0.5 / max((1 - y).sum(), 1)) * len(y)
  beta = np.zeros(z.shape[1])
  penalty = ridge * np.eye(z.shape[1])
  penalty[0, 0] = 0.0
  for _ in range(steps):
    p = 1 / (1 + np.exp(-np.clip(z @ beta, -30, 30)))
    grad = z.T @ (weight * (p - y)) + penalty @ beta
    hess = (z * (weight * p * (1 - p))[:, None]).T @ z + penalty
    step = np.linalg.solve(hess, grad)
    beta -= step
    if np.abs(step).max() < 1e-10:
      break

  def predict(v):
    v = (np.asarray(v, np.float64).reshape(len(v), -1) - mean) / std
    return 1 / (1 + np.exp(-np.clip(np.c_[np.ones(len(v)), v] @ beta, -30, 30)))
  return predict


def logit(p: np.ndarray) -> np.ndarray:
  p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
  return np.log(p / (1 - p))


def ecdf(reference: np.ndarray):
  """x -> the share of `reference` at or below x (ties: half)."""
  ref = np.sort(np.asarray(reference, np.float64))
  return lambda x: (np.searchsorted(ref, x, 'left') + np.searchsorted(ref, x, 'right')) / \
      (2.0 * len(ref))


def combined_scores(val: dict, test: dict, labels: np.ndarray) -> dict:
  """{score: (val probability, test probability)} of SCORES but the
  classifier; every fit sees validation only."""
  lp, ld = (logit(val['prob']), np.log(val['distance'] + 1e-12))
  tp, td = (logit(test['prob']), np.log(test['distance'] + 1e-12))
  out = {}
  for name, v, t in (('classifier_recal', lp, tp), ('distance', ld, td),
                     ('logistic', np.c_[lp, ld], np.c_[tp, td])):
    f = fit_logistic(v, labels)
    out[name] = (f(v), f(t))
  rp, rd = ecdf(val['prob']), ecdf(val['distance'])
  rv, rt = (rp(val['prob']) + rd(val['distance'])) / 2, (rp(test['prob']) + rd(test['distance'])) / 2
  f = fit_logistic(rv, labels)
  out['rank_mean'] = (f(rv), f(rt))
  out['either'] = (np.maximum(val['prob'], out['distance'][0]),
                   np.maximum(test['prob'], out['distance'][1]))
  return out


# ------------------------------------------------------------------ one score on test


def score_report(labels, prob, types, threshold: float) -> dict:
  """Test metrics of one score at its threshold."""
  labels, prob, types = np.asarray(labels), np.asarray(prob, np.float64), np.asarray(types)
  s = metrics.summary(labels, prob, threshold, warn=False)
  out = {'threshold': float(threshold), 'auroc': s['auroc'], 'overkill_rate': s['overkill_rate'],
         'escape_rate': s['escape_rate'], 'balanced_accuracy': s['balanced_accuracy']}
  good = labels == 0
  for name, r in metrics.recall_by_type(labels, prob, types, threshold).items():
    sel = good | (types == name)
    out[f'recall/{name}'] = r['recall']
    out[f'auroc/{name}'] = metrics.auroc(labels[sel], prob[sel])
  target = (labels == 1) & (types == TARGET_TYPE)
  if target.any():  # What a threshold finding half the target type costs in good crops.
    out[f'overkill_at_half_{TARGET_TYPE}'] = float(np.mean(prob[good] >= np.median(prob[target])))
  return out


# ------------------------------------------------------------------ maps


def map_report(heat: np.ndarray, masks: np.ndarray, types: np.ndarray) -> dict:
  """Means over crops of pixel AUROC and the pointing game, overall and per type."""
  per = {'pixel_auroc': np.array([maps.pixel_auroc(h, m) for h, m in zip(heat, masks)]),
         'pointing': np.array([maps.pointing_hit(h, m) for h, m in zip(heat, masks)])}
  out = {}
  for name, v in per.items():
    out[name] = float(np.nanmean(v))
    for t in sorted(set(types)):
      sel = v[types == t]
      out[f'{name}/{t}'] = float(np.nanmean(sel)) if np.isfinite(sel).any() else float('nan')
  return out


def masked_defects(export, index: np.ndarray) -> np.ndarray:
  """Which of `index` are defective with a non-empty mask."""
  return (export.labels[index] == 1) & (export.masks[index] > 0).any(axis=(1, 2))


# ------------------------------------------------------------------ one run


def bank_distances(predictor, export, images, source, splits: dict, config: str, args):
  """{split: cell distances (n, h, w)} of a bank of `config` (a tap), and the
  bank with its position statistics (`fit_positions` on the bank's images);
  read from --cache when the same run, bank settings and export made them."""
  key = {'model_sha256': memory_bank.model_digest(predictor), 'tap': config,
         'max_cells': args.max_cells, 'sampling': args.sampling, 'seed': args.seed,
         'aggregate': memory_bank.DEFAULT_AGGREGATE, 'export': export.fingerprint['sha256']}
  path = None
  if args.cache:
    name = os.path.basename(predictor.run.workdir)
    path = os.path.join(args.cache, f'{name}_{config}_{args.sampling}_{args.max_cells}.npz')
    if os.path.isfile(path):
      with np.load(path, allow_pickle=False) as data:
        if json.loads(str(data['key'])) == key:
          bank = memory_bank.load(str(data['bank']), predictor, export=export) \
              if 'bank' in data.files and os.path.isfile(str(data['bank'])) else None
          if bank is not None and bank.position_mean is None:
            bank.fit_positions(images)
            bank.save(str(data['bank']))
          if bank is not None:
            return {s: data[f'grid_{s}'] for s in splits}, bank
  bank = memory_bank.build(predictor, images, tap=config, max_cells=args.max_cells,
                           seed=args.seed, sampling=args.sampling, position='z',
                           source=source)
  grids = {s: bank.distances(export.rgb(index)) for s, index in splits.items()}
  if path:
    os.makedirs(args.cache, exist_ok=True)
    bank_path = path.replace('.npz', '_bank.npz')
    bank.save(bank_path)
    rundir.write_npz(path, key=np.asarray(json.dumps(key)), bank=np.asarray(bank_path),
                     **{f'grid_{s}': g for s, g in grids.items()})
  return grids, bank


def evaluate_run(run: dict, export, taps: list[str], positions: list[str], args) -> dict:
  predictor = inference.Predictor(run['workdir'], batch_size=args.batch_size)
  if tuple(predictor.image_size) != tuple(export.image_size):
    raise ValueError(f'{run["workdir"]}: image size {predictor.image_size} but '
                     f'{export.path} holds {export.image_size}')
  images, source = memory_bank.good_training_images(export, predictor)
  names = memory_bank.training_split(predictor.config.data)[1]  # [val, test]
  splits = {'val': export.indices(names[0]), 'test': export.indices(names[1])}
  labels = {s: np.asarray(export.labels[i]) for s, i in splits.items()}
  types = {s: np.asarray(export.defect_types[i]).astype(str) for s, i in splits.items()}
  prob = {s: predictor.predict_proba(export.rgb(i)) for s, i in splits.items()}
  recorded = {}
  for s in splits:  # The run's own scores, as a check that these are its splits.
    saved = np.load(os.path.join(run['workdir'], rundir.eval_npz(s)))
    if not np.array_equal(saved['label'], labels[s]):
      raise ValueError(f'{run["workdir"]}: {rundir.eval_npz(s)} holds other examples than '
                       f'{export.path}\'s split {names[0] if s == "val" else names[1]}')
    recorded[s] = float(np.abs(saved['prob'] - prob[s]).max())

  out = {'split': source['split'], 'val_split': names[0], 'test_split': names[1],
         'bank_images': len(images), 'prob_max_diff_from_eval_npz': recorded, 'configs': {}}
  grids, banks = {}, {}
  for tap in taps:
    grid, bank = bank_distances(predictor, export, images, source, splits, tap, args)
    for position in positions:  # One bank, its cells read either way.
      config = f'{tap}:{position}'
      grids[config] = grid
      banks[config] = dataclasses.replace(bank, record={**bank.record, 'position': position})
  configs = list(banks)
  for config in configs:
    row = {'cost': banks[config].cost(), 'cells_total': banks[config].record['cells_total']}
    for s, index in splits.items():
      score = banks[config].to_scores(grids[config][s])
      row[f'{s}/auroc'] = metrics.auroc(labels[s], score)
      for t in sorted(set(types[s][labels[s] == 1])):
        sel = (labels[s] == 0) | (types[s] == t)
        row[f'{s}/auroc/{t}'] = metrics.auroc(labels[s][sel], score[sel])
      chosen = masked_defects(export, index)
      heat = banks[config].to_maps(grids[config][s][chosen])
      for k, v in map_report(heat, export.masks[index[chosen]], types[s][chosen]).items():
        row[f'{s}/{k}'] = v
    out['configs'][config] = row
    print(f'{run["run"]} {config}: val AUROC {row["val/auroc"]:.3f}, test {row["test/auroc"]:.3f}; '
          f'pixel AUROC val {row["val/pixel_auroc"]:.3f} test {row["test/pixel_auroc"]:.3f}; '
          f'pointing val {row["val/pointing"]:.3f} test {row["test/pointing"]:.3f}', flush=True)
  score_config = max(configs, key=lambda c: out['configs'][c]['val/auroc'])
  map_config = max(configs, key=lambda c: (out['configs'][c]['val/pixel_auroc']
                                           + out['configs'][c]['val/pointing']) / 2)
  out['score_config'], out['map_config'] = score_config, map_config

  # Scores: fitted and thresholded on validation, applied to test.
  rule = predictor.run.config.get('eval', {})
  threshold_rule = rule.get('threshold_rule', 'argmax')
  max_escape = float(rule.get('max_escape_rate', 0.05))
  bank = banks[score_config]
  dist = {s: bank.to_scores(grids[score_config][s]) for s in splits}
  fitted = combined_scores({'prob': prob['val'], 'distance': dist['val']},
                           {'prob': prob['test'], 'distance': dist['test']}, labels['val'])
  fitted['classifier'] = (prob['val'], prob['test'])
  out['threshold_rule'] = threshold_rule
  out['scores'] = {}
  for name in SCORES:
    v, t = fitted[name]
    threshold = (predictor.threshold if name == 'classifier' else
                 metrics.choose_threshold(labels['val'], v, threshold_rule,
                                          max_escape_rate=max_escape))
    out['scores'][name] = {'val': score_report(labels['val'], v, types['val'], threshold),
                           'test': score_report(labels['test'], t, types['test'], threshold)}

  # Maps on test's masked defects: the bank's beside Grad-CAM and the residual floor.
  index = splits['test'][masked_defects(export, splits['test'])]
  crops, masks = export.rgb(index), export.masks[index]
  crop_types = np.asarray(export.defect_types[index]).astype(str)
  chosen = masked_defects(export, splits['test'])
  out['maps'] = {
      'feature_distance': map_report(banks[map_config].to_maps(grids[map_config]['test'][chosen]),
                                     masks, crop_types),
      'gradcam_block5': map_report(predictor.maps(crops, 'gradcam', layer='block5'), masks,
                                   crop_types),
      'residual': map_report(np.stack([maps.residual_map(c) for c in crops]), masks,
                             crop_types),
      'crops': int(len(index))}
  out['ms_per_roi'] = time_per_roi({
      'score': predictor.predict_proba,
      'map_feature_distance': banks[map_config].maps,
      'score_feature_distance': banks[score_config].scores,
      'map_gradcam_block5': lambda x: predictor.maps(x, 'gradcam', layer='block5')}, crops)
  return out


def time_per_roi(fns: dict, images: np.ndarray, repeats: int = 3) -> dict:
  """{name: milliseconds per ROI}: each function over `images` after one
  warm-up call (compiles), the fastest of `repeats`, interleaved so a busy
  moment of a shared machine hits all alike; with the load average then."""
  for fn in fns.values():
    fn(images)
  best = {name: float('inf') for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn(images)
      best[name] = min(best[name], (time.perf_counter() - start) * 1e3 / len(images))
  return {**best, 'load_average_1min': os.getloadavg()[0]}


# ------------------------------------------------------------------ over runs


def _unit(run: dict) -> str:
  return f's{run["seed"]}_f{run["fold"]}'


def comparisons(per_run: dict) -> dict:
  """Paired over the runs: each score against the classifier alone, and
  the bank's map against Grad-CAM and the residual floor."""
  out = {}
  units = {k: _unit(r) for k, r in per_run.items()}
  keys = sorted({k for r in per_run.values() for k in r['scores']['classifier']['test']})
  lower_better = ('overkill_rate', 'escape_rate', f'overkill_at_half_{TARGET_TYPE}')
  for name in SCORES[1:]:
    for key in keys:
      if key == 'threshold':
        continue
      out[f'{name} minus classifier: {key}'] = stats.compare(
          {units[k]: r['scores'][name]['test'].get(key, np.nan) for k, r in per_run.items()},
          {units[k]: r['scores']['classifier']['test'].get(key, np.nan)
           for k, r in per_run.items()}, higher_is_better=key not in lower_better)
  for base in ('residual', 'gradcam_block5'):
    for metric in ('pixel_auroc', 'pointing'):
      out[f'map {metric}: feature_distance minus {base}'] = stats.compare(
          {units[k]: r['maps']['feature_distance'][metric] for k, r in per_run.items()},
          {units[k]: r['maps'][base][metric] for k, r in per_run.items()})
  return out


def read_floors(path: str | None, folds: list) -> dict:
  """{fold: {model: test AUROC}} from launch/floors.py's JSON."""
  if not path:
    return {}
  rows = rundir.read_json(path, 'floors record').get('rows', [])
  out = collections.defaultdict(dict)
  for r in rows:
    if r.get('fold') in folds:
      out[str(r['fold'])][r['model']] = r['test']['auroc']
  return dict(out)


def _mean(values) -> str:
  v = np.asarray([np.nan if x is None else x for x in values], np.float64)
  if not np.isfinite(v).any():
    return 'n/a'
  return f'{np.nanmean(v):.3f}' + (f' ± {np.nanstd(v):.3f}' if v.size > 1 else '')


def markdown(result: dict) -> str:
  runs = list(result['runs'].values())
  types = sorted({k.split('/', 1)[1] for r in runs for k in r['scores']['classifier']['test']
                  if k.startswith('recall/')})
  lines = ['| score (test, threshold chosen on val) | AUROC | overkill | balanced acc. | '
           + ' | '.join(f'recall {t}' for t in types)
           + f' | AUROC {TARGET_TYPE} vs good | good flagged at half {TARGET_TYPE} |',
           '|' + '---|' * (6 + len(types))]
  for name in SCORES:
    rows = [r['scores'][name]['test'] for r in runs]
    lines.append(f'| {name} | {_mean([x["auroc"] for x in rows])} | '
                 f'{_mean([x["overkill_rate"] for x in rows])} | '
                 f'{_mean([x["balanced_accuracy"] for x in rows])} | '
                 + ' | '.join(_mean([x.get(f'recall/{t}') for x in rows]) for t in types)
                 + f' | {_mean([x.get(f"auroc/{TARGET_TYPE}") for x in rows])}'
                 + f' | {_mean([x.get(f"overkill_at_half_{TARGET_TYPE}") for x in rows])} |')
  if result.get('floors'):
    models = sorted({m for f in result['floors'].values() for m in f})
    lines.append('| floors (test AUROC): ' + ', '.join(
        f'{m} {_mean([f.get(m) for f in result["floors"].values()])}' for m in models)
        + ' |' + ' |' * (5 + len(types)))
  configs = list(runs[0]['configs'])
  lines += ['', '| bank tap | val AUROC | test AUROC | test AUROC uneven | val pixel AUROC | '
            'test pixel AUROC | val pointing | test pointing | chosen (score/map) |',
            '|---|---|---|---|---|---|---|---|---|']
  for c in configs:
    rows = [r['configs'][c] for r in runs]
    chosen = (sum(r['score_config'] == c for r in runs), sum(r['map_config'] == c for r in runs))
    lines.append(f'| {c} | ' + ' | '.join(_mean([x.get(k) for x in rows]) for k in (
        'val/auroc', 'test/auroc', f'test/auroc/{TARGET_TYPE}', 'val/pixel_auroc',
        'test/pixel_auroc', 'val/pointing', 'test/pointing')) + f' | {chosen[0]}/{chosen[1]} |')
  crop_types = sorted({k.split('/', 1)[1] for r in runs for k in r['maps']['residual']
                       if k.startswith('pointing/')})
  lines += ['', '| map (test, masked defects) | pixel AUROC | pointing | '
            + ' | '.join(f'pointing {t}' for t in crop_types) + ' |',
            '|' + '---|' * (3 + len(crop_types))]
  for name in ('feature_distance', 'gradcam_block5', 'residual'):
    rows = [r['maps'][name] for r in runs]
    lines.append(f'| {name} | {_mean([x["pixel_auroc"] for x in rows])} | '
                 f'{_mean([x["pointing"] for x in rows])} | '
                 + ' | '.join(_mean([x.get(f'pointing/{t}') for x in rows]) for t in crop_types)
                 + ' |')
  if all('ms_per_roi' in r for r in runs):
    names = [k for k in runs[0]['ms_per_roi'] if k != 'load_average_1min']
    lines += ['', '| ms per ROI (fastest of 3, interleaved) | ' + ' | '.join(names)
              + ' | load average |', '|' + '---|' * (len(names) + 2),
              '| mean over runs | ' + ' | '.join(_mean([r['ms_per_roi'][n] for r in runs])
                                                 for n in names)
              + f' | {_mean([r["ms_per_roi"]["load_average_1min"] for r in runs])} |',
              '| x the score, mean of the runs\' ratios | ' + ' | '.join(
                  _mean([r['ms_per_roi'][n] / r['ms_per_roi']['score'] for r in runs])
                  for n in names) + ' | |']
  lines += ['', '| paired over folds | pairs | mean difference | 95% interval | p | verdict |',
            '|---|---|---|---|---|---|']
  for name, c in result['comparisons'].items():
    if 'auroc/' in name.split(': ', 1)[-1]:
      continue  # Per-type AUROCs stay in the JSON.
    lines.append(f'| {name} | {c["n"]} | {c["mean"]:+.3f} | [{c["ci_low"]:+.3f}, '
                 f'{c["ci_high"]:+.3f}] | {c["p"]:.3f} | {c["verdict"]} |')
  return '\n'.join(lines)


def json_safe(value):
  """NaN and infinities -> None, numpy scalars -> numbers, all the way down."""
  if isinstance(value, dict):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_safe(v) for v in value]
  if isinstance(value, (np.integer, np.bool_)):
    return value.item()
  if isinstance(value, (float, np.floating)):
    return float(value) if np.isfinite(value) else None
  return value


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  if args.report:
    try:
      print(markdown(rundir.read_json(args.report, 'anomaly scores record')))
    except (ValueError, FileNotFoundError, KeyError) as e:
      print(f'error: --report={args.report}: {e}', file=sys.stderr)
      return 2
    return 0
  try:
    if not args.sweep or not args.export:
      raise ValueError('--sweep and --export are required (or --report=FILE.json)')
    if not os.path.isdir(args.sweep):
      raise ValueError(f'--sweep={args.sweep}: no such directory')
    taps = [c.strip() for c in args.taps.split(',') if c.strip()]
    for c in taps:
      memory_bank.parse_taps(c, 'vgg16')
    positions = [c.strip() for c in args.positions.split(',') if c.strip()]
    bad = [c for c in positions if c not in memory_bank.POSITIONS]
    if bad or not positions:
      raise ValueError(f'--positions={args.positions}: expected some of {memory_bank.POSITIONS}')
    runs = prediction_gains.finished_runs(args.sweep, args.variant)
    if not runs:
      raise ValueError(f'--sweep={args.sweep}: no finished run with its best checkpoint kept')
    export = dataset_export.load(args.export)
    if export.masks is None:
      raise ValueError(f'--export={args.export}: holds no masks')
    for run in runs:
      dataset_export.check_run(export, run['workdir'])
      if run['fold'] is None:
        raise ValueError(f'{run["workdir"]}: made without k-fold; this measures k-fold runs')
    per_run = {}
    for run in runs:
      per_run[run['run']] = {'seed': run['seed'], 'fold': run['fold'],
                             **evaluate_run(run, export, taps, positions, args)}
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  result = {'sweep': os.path.relpath(os.path.abspath(args.sweep), REPO),
            'export': os.path.basename(args.export),
            'export_sha256': export.fingerprint['sha256'],
            'machine': {'cpu': rundir.cpu_field('model name'), 'cores': os.cpu_count(),
                        'backend': jax.default_backend()},
            'settings': {'taps': taps, 'positions': positions, 'max_cells': args.max_cells,
                         'sampling': args.sampling, 'seed': args.seed,
                         'aggregate': memory_bank.DEFAULT_AGGREGATE,
                         'sigma': memory_bank.DEFAULT_SIGMA, 'topk': memory_bank.DEFAULT_TOPK},
            'runs': per_run, 'comparisons': comparisons(per_run),
            'floors': read_floors(args.floors, [r['fold'] for r in per_run.values()])}
  out = args.out or os.path.join(args.sweep, 'anomaly_scores.json')
  rundir.write_json(out, json_safe(result))
  print(markdown(result))
  print(f'wrote {out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
