"""Figures of a sweep (launch/sweep.py's OUT directory) or of one run,
written by `python -m smsdd_jax.report --sweep=OUT|RUN [--out=...]` (see
report.py for what each PNG shows). Apart from the tables because it needs
matplotlib.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np

from smsdd_jax import rundir
from smsdd_jax.sweep_runs import (as_float, load_eval_npz, load_runs, mean_std, no_runs_reason,
                                  variant_names)


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _colours(variants):
  palette = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b',
             '#e377c2', '#7f7f7f', '#bcbd22', '#17becf']
  return {v: palette[i % len(palette)] for i, v in enumerate(variants)}


def _label(variant: str, beta) -> str:
  return f'{variant} (β={beta:g})' if beta is not None else variant


def read_curves(path: str, keys: Sequence[str]) -> dict:
  """{key: (steps, values)} from a run's metrics.jsonl; a step logged twice
  (a run resumed from an older checkpoint) keeps its last value."""
  out = {k: {} for k in keys}
  metrics_path = os.path.join(path, rundir.METRICS)
  if not os.path.isfile(metrics_path):
    return {k: (np.zeros(0), np.zeros(0)) for k in keys}
  for record in rundir.read_metrics(path):  # A broken line: ValueError naming the file.
    for k in keys:
      if k in record:
        out[k][record['step']] = as_float(record[k])
  return {k: (np.asarray(sorted(v), np.float64),
              np.asarray([v[s] for s in sorted(v)], np.float64)) for k, v in out.items()}


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
  if window <= 1 or len(y) < window:
    return y
  kernel = np.ones(window) / window
  padded = np.r_[np.full(window // 2, y[0]), y, np.full(window - 1 - window // 2, y[-1])]
  return np.convolve(padded, kernel, mode='valid')


def term_weights(runs: Sequence[dict]) -> dict:
  """{term: sorted weights over the runs} of every loss term the runs used,
  in the order their objectives add them (run['terms'], from config.json)."""
  out = {}
  for run in runs:
    for term, weight in (run.get('terms') or {}).items():
      out.setdefault(term, set()).add(weight)
  return {term: sorted(weights) for term, weights in out.items()}


def _weighted(term: str, weights: Sequence[float]) -> str:
  """'contrastive', '0.01·contrastive', or 'w·contrastive' when runs differ."""
  if len(weights) > 1:
    return f'w·{term}'
  return term if weights[0] == 1.0 else f'{weights[0]:g}·{term}'


def objective_title(runs: Sequence[dict]) -> str:
  """The training loss as the runs' configs define it, e.g.
  'training loss = cross_entropy + 0.01·contrastive'; 'training loss' when
  no run recorded its terms."""
  terms = term_weights(runs)
  if not terms:
    return 'training loss'
  return 'training loss = ' + ' + '.join(_weighted(t, w) for t, w in terms.items())


def _term_title(term: str, weights: Sequence[float]) -> str:
  if len(weights) > 1:
    return f'train/{term} (weight {", ".join(f"{w:g}" for w in weights)} by variant)'
  return f'train/{term} (weight {weights[0]:g})'


def plot_loss_curves(runs: Sequence[dict], path: str) -> str:
  """The training loss, every loss term the runs logged (train/<term>, its
  weight from config.json in the title) and val balanced accuracy."""
  plt = _pyplot()
  terms = term_weights(runs)
  keys = ('train/loss', *(f'train/{t}' for t in terms), 'val/balanced_accuracy')
  titles = (objective_title(runs), *(_term_title(t, w) for t, w in terms.items()),
            'validation balanced accuracy (threshold 0.5)')
  variants = variant_names(runs)
  colours = _colours(variants)
  ncols = min(3, len(keys))
  nrows = math.ceil(len(keys) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(5.4 * ncols, 4.5 * nrows), squeeze=False)
  axes = axes.ravel()
  for ax in axes[len(keys):]:
    ax.set_visible(False)
  for v in variants:
    members = [r for r in runs if r['variant'] == v]
    curves = [read_curves(r['path'], keys) for r in members]
    for ax, key in zip(axes, keys):
      series = [c[key] for c in curves if len(c[key][0])]
      if not series:
        continue
      marker = 'o' if max(len(steps) for steps, _ in series) < 20 else None
      for steps, values in series:
        ax.plot(steps, values, color=colours[v], alpha=0.25, lw=0.8, marker=marker, ms=3)
      common = series[0][0]
      for steps, _ in series[1:]:
        common = np.intersect1d(common, steps)
      if not len(common):
        continue
      mean = np.mean([vals[np.searchsorted(steps, common)] for steps, vals in series], 0)
      window = max(1, len(common) // 25) if key.startswith('train/') else 1
      ax.plot(common, _smooth(mean, window), color=colours[v], lw=2, marker=marker,
              label=_label(v, members[0]['beta']) + (f', {len(series)} runs'
                                                      if len(series) > 1 else ''))
  for ax, title in zip(axes, titles):
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle('Training curves per variant (thin: each run; thick: mean, smoothed)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def plot_roc_curves(runs: Sequence[dict], path: str) -> str:
  from smsdd_jax import metrics  # pylint: disable=import-outside-toplevel
  plt = _pyplot()
  finished = [r for r in runs if r['finished']]
  variants = variant_names(finished)
  colours = _colours(variants)
  beta_of = {r['variant']: r['beta'] for r in finished}
  fig, axes = plt.subplots(1, 2, figsize=(12, 5.5))
  for ax, split in zip(axes, ('val', 'test')):
    for v in variants:
      aucs, labelled = [], False
      for run in (r for r in finished if r['variant'] == v):
        arrays = load_eval_npz(run, split)
        if arrays is None or metrics.missing_classes(arrays['label']):
          continue
        fpr, tpr, _ = metrics.roc_curve(arrays['label'], arrays['prob'])
        aucs.append(metrics.auroc(arrays['label'], arrays['prob']))
        ax.plot(fpr, tpr, color=colours[v], alpha=0.6, lw=1.2)
        m = run['eval'][split]
        if m.get('overkill_rate') is not None and m.get('escape_rate') is not None:
          ax.plot(m['overkill_rate'], 1 - m['escape_rate'], 'o', color=colours[v], ms=5)
        labelled = True
      if labelled:
        ax.plot([], [], color=colours[v], label=f'{_label(v, beta_of[v])} AUROC '
                f'{mean_std(aucs, scale=1.0, digits=3)}')
    ax.plot([0, 1], [0, 1], ls='--', color='grey', lw=0.8)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel('overkill rate (good rejected)')
    ax.set_ylabel('1 - escape rate (defective caught)')
    ax.set_title(f'ROC on {split} (dots: chosen threshold)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def pca_2d(x: np.ndarray):
  """(n, 2) projection on the first two principal components and the share
  of variance each explains."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  x = x - x.mean(0)
  u, s, _ = np.linalg.svd(x, full_matrices=False)
  total = float(np.sum(s ** 2)) or 1.0
  k = min(2, len(s))
  proj = np.zeros((len(x), 2))
  proj[:, :k] = u[:, :k] * s[:k]
  share = np.zeros(2)
  share[:k] = s[:k] ** 2 / total
  return proj, share


def embedding_pair(runs: Sequence[dict]) -> list[tuple[dict, str]]:
  """The runs to project: beta = 0 (else the lowest beta) and the variant
  with beta > 0 of best mean val balanced accuracy (chosen on val, never on
  test); the first run (lowest seed / fold) of each. [(run, why)]."""
  finished = [r for r in runs if r['finished'] and r['beta'] is not None]
  if not finished:
    return []
  by_variant = {}
  for r in sorted(finished, key=lambda r: (r['seed'], r['fold'] or 0)):
    by_variant.setdefault(r['variant'], []).append(r)
  betas = {v: rs[0]['beta'] for v, rs in by_variant.items()}
  base = min(by_variant, key=lambda v: (betas[v], v))
  chosen = [(by_variant[base][0], 'cross-entropy only' if betas[base] == 0
              else 'lowest β in the sweep')]

  def score(v, key='balanced_accuracy'):
    vals = [as_float(r['eval']['val'].get(key)) for r in by_variant[v]]
    vals = [x for x in vals if math.isfinite(x)]
    return float(np.mean(vals)) if vals else -1.0

  others = [v for v in by_variant if v != base and betas[v] > 0]
  if others:  # Ties: the higher mean val AUROC, then the name.
    best = max(others, key=lambda v: (score(v), score(v, 'auroc'), v))
    chosen.append((by_variant[best][0],
                   f'best β > 0 by mean val balanced acc. ({100 * score(best):.1f}%)'))
  return chosen


def plot_embeddings(runs: Sequence[dict], path: str) -> str:
  plt = _pyplot()
  chosen = embedding_pair(runs)
  fig, axes = plt.subplots(1, max(1, len(chosen)), figsize=(6.5 * max(1, len(chosen)), 5.5),
                           squeeze=False)
  for ax, (run, why) in zip(axes[0], chosen):
    arrays = load_eval_npz(run, 'test')
    if arrays is None:
      ax.set_title(f'{run["run"]}: no eval_test.npz')
      continue
    proj, share = pca_2d(arrays['embedding'])
    labels = arrays['label']
    for value, name, colour in ((0, 'good', '#1f77b4'), (1, 'defective', '#d62728')):
      keep = labels == value
      ax.scatter(proj[keep, 0], proj[keep, 1], s=14, c=colour, alpha=0.7,
                 label=f'{name} ({int(keep.sum())})')
    auroc = run['eval']['test'].get('auroc')
    ax.set_title(f'{run["run"]}: β={run["beta"]:g} ({why})\n'
                 f'test AUROC {auroc:.3f}' if auroc is not None else run['run'],
                 fontsize=10)
    ax.set_xlabel(f'PC 1 ({100 * share[0]:.0f}% of variance)')
    ax.set_ylabel(f'PC 2 ({100 * share[1]:.0f}% of variance)')
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  if not chosen:
    axes[0][0].set_title('no finished run')
  fig.suptitle('Test embeddings, first two principal components (one projection per model)')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


FIGURES = {'loss_curves.png': plot_loss_curves, 'roc_curves.png': plot_roc_curves,
           'embeddings.png': plot_embeddings}


def maps_run(runs: Sequence[dict]) -> Optional[dict]:
  """The run whose test decisions maps.png shows: finished, its best
  checkpoint kept; beta = 0 first, then the lowest seed and fold."""
  kept = [r for r in runs if r['finished'] and
          os.path.isdir(os.path.join(r['path'], rundir.CHECKPOINTS_BEST))]
  if not kept:
    return None
  return min(kept, key=lambda r: (r['beta'] != 0, r['seed'], r['fold'] or 0, r['run']))


def calibrated(predictor, export, method: str, log=None) -> None:
  """Gives `predictor` a map calibration of `method` when its run has none:
  made now from the export's validation split (not saved), and said on
  `log` (default stderr). A calibration of another run in the workdir is
  refused (ValueError), never replaced."""
  # pylint: disable=import-outside-toplevel
  import sys
  from smsdd_jax import map_scale
  if predictor.map_scale(method).kind == 'run':
    return
  record = map_scale.calibrate(predictor, export, [method])
  predictor.use_map_scale(f'a calibration made now from {record["data"]["split"]} of '
                          f'{record["data"]["export"]}', record)
  print(f'note: run {predictor.run.workdir} has no map calibration of {method}: made one '
        f'from its validation split in {export.path} (not saved; python -m '
        'smsdd_jax.map_scale saves one)', file=log or sys.stderr)


def plot_maps(runs: Sequence[dict], path: str, export, method: str = 'fine'
              ) -> Optional[str]:
  """maps.png: true and false decisions on one run's test split with
  where the network looked (maps.decision_sheet, `method` on the run's
  calibrated scale: `calibrated`), from a dataset export of the run's build
  (the images are not in the run directory)."""
  # pylint: disable=import-outside-toplevel
  import cv2
  from smsdd_jax import dataset_export, inference, maps
  maps.check_method(method)
  run = maps_run(runs)
  if run is None:
    return None
  dataset_export.check_run(export, run['path'])  # Its images, not another set's.
  predictor = inference.Predictor(run['path'])
  if tuple(predictor.image_size) != tuple(export.image_size):
    raise ValueError(f'{run["path"]}: image size {predictor.image_size} but '
                     f'{export.path} holds {export.image_size}')
  calibrated(predictor, export, method)
  index = export.indices(rundir.test_split(run['path']))
  names = export.defect_types[index] if export.has_defect_types else None
  sheet = maps.decision_sheet(predictor, export.rgb(index), export.labels[index],
                              masks=None if export.masks is None else export.masks[index],
                              names=names, method=method)
  if sheet is None:
    return None
  caption = np.zeros((22, sheet.shape[1], 3), np.uint8)
  cv2.putText(caption, f'{run["run"]}, test split {rundir.test_split(run["path"])}', (4, 15),
              cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
  with rundir.atomic_file(path, 'wb') as f:
    f.write(cv2.imencode('.png', cv2.cvtColor(np.concatenate([caption, sheet]),
                                              cv2.COLOR_RGB2BGR))[1].tobytes())
  return path


def write_figures(sweep: str, out: Optional[str] = None,
                  runs: Optional[Sequence[dict]] = None, export=None,
                  map_method: str = 'fine') -> list[str]:
  """Every figure of FIGURES into `out` (default SWEEP/figures); their paths.
  `runs`: the sweep's load_runs, when the caller has read them already.
  `export` (a loaded dataset export of the runs' build): maps.png too, of
  `map_method`."""
  runs = load_runs(sweep) if runs is None else runs
  if not runs:
    raise ValueError(no_runs_reason(sweep))
  # An unfinished run (no eval.json yet) still has its training curves.
  names = FIGURES if any(r['finished'] for r in runs) else ('loss_curves.png',)
  out = out or os.path.join(sweep, 'figures')
  os.makedirs(out, exist_ok=True)
  paths = [FIGURES[name](runs, os.path.join(out, name)) for name in names]
  if export is not None:
    made = plot_maps(runs, os.path.join(out, 'maps.png'), export, map_method)
    paths += [made] if made else []
  return paths
