#!/usr/bin/env python3
"""Floors for any dataset: trivial models on the splits a run reads.

  python launch/floors.py --data=msd_screens --builder_config=default \
      --manual_dir=PATH/TO/msd_screens --kfold=5 [--fold=all] \
      [--model=all|pixel|anomaly|hog|boosted[,...]] [--out=SWEEP/floors.json]

The splits are those of smsdd_jax.main with the same data settings
(configs/default.py's config.data with these overrides; --set KEY=VALUE sets
any other config.data field), read through input_pipeline.prepare and
split_names, fold by fold (--fold=all: every fold of --kfold); with
--set=source=export --set=export_path=PATH from a dataset export, without
TensorFlow (smsdd_jax/dataset_export.py). Models:

  pixel    ridge regression (y = +-1, lambda --ridge) on --size grey pixels
           (area interpolation): is there signal a linear look at the image finds?
  anomaly  14 local-anomaly statistics per image (ANOMALY_FEATURES: percentiles
           of the grey image minus its median-blurred background, dark and bright
           pixel shares, the largest anomalous blob, gradient and Laplacian
           energy, grey level) -> L2-regularised logistic regression
  hog      histograms of oriented gradients of the grey image (HOG_* below)
           -> L2-regularised logistic regression
  boosted  the anomaly model's 14 statistics (extracted once for both) ->
           gradient-boosted trees on the log-loss (BOOST_* below, numpy): can a
           non-linear look at the same statistics (a threshold on one, an
           interaction of two) find what the linear one misses?

Features are standardised with the training split's statistics; the logistic
models' lambda is chosen from LAMBDAS by validation AUROC, boosted's number of
rounds from BOOST_ROUNDS (its `lambda` is the leaf L2, BOOST_L2). The decision
threshold is chosen on validation by --threshold_rule (smsdd_jax.metrics, as a
run chooses its own) and applied unchanged to test. Printed per model and fold:
train/val/test AUROC, test balanced accuracy at that threshold; then the mean
and std over folds, and one JSON line, which --out also writes (launch/sweep.py
puts the floors beside the variants when SWEEP/floors.json exists). A train
AUROC near 1 with val/test near 0.5 says the splits differ or the defects are
too small for the model's resolution.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from typing import NamedTuple

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import default  # pylint: disable=wrong-import-position
from smsdd_jax import dataset_export, input_pipeline  # pylint: disable=wrong-import-position
from smsdd_jax import metrics, rundir  # pylint: disable=wrong-import-position

MODELS = ('pixel', 'anomaly', 'hog', 'boosted')
FEATURES_OF = {'boosted': 'anomaly'}  # Models reading another model's features.
LAMBDAS = (0.1, 1.0, 10.0, 100.0, 1000.0)  # L2 strength of the logistic models.
ANOMALY_FEATURES = (
    'residual_p1', 'residual_p5', 'residual_p50', 'residual_p95', 'residual_p99',
    'residual_std', 'dark_fraction', 'bright_fraction', 'largest_blob_fraction',
    'gradient_energy', 'gradient_p99', 'laplacian_var', 'grey_mean', 'grey_std')
ANOMALY_LEVEL = 0.08  # |grey - background| (in [0, 1]) that counts as anomalous.
HOG_BINS, HOG_BLOCK = 9, 2  # Unsigned orientation bins; cells per block side.
# Boosted trees: candidate round counts (prefixes of one fit), tree depth,
# learning rate, leaf L2, least sampled rows per leaf, quantile bins per
# feature, share of rows each round sees.
BOOST_ROUNDS = (50, 100, 200, 400)
BOOST_DEPTH, BOOST_RATE, BOOST_L2, BOOST_MIN_LEAF = 3, 0.1, 1.0, 5
BOOST_BINS, BOOST_SUBSAMPLE = 32, 0.8


# ------------------------------------------------------------------ features


def grey(image: np.ndarray) -> np.ndarray:
  """(H, W, 3|1) or (H, W) uint8 -> (H, W) uint8."""
  if image.ndim == 3 and image.shape[-1] == 3:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
  return image.reshape(image.shape[:2])


def pixel_features(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(N, H, W, C) uint8 -> (N, h*w) grey pixels in [0, 1] at size (h, w)."""
  h, w = size
  return np.stack([cv2.resize(grey(im), (w, h), interpolation=cv2.INTER_AREA).ravel() / 255.0
                   for im in images]).reshape(len(images), h * w)


def anomaly_stats(image: np.ndarray) -> np.ndarray:
  """ANOMALY_FEATURES of one image. The background is a median blur over a
  tenth of the short side: larger than a stain or scratch is wide, so what
  differs from it is local."""
  g = grey(image)
  k = max(3, int(0.1 * min(g.shape)) | 1)
  gf = g / 255.0
  r = gf - cv2.medianBlur(g, k) / 255.0
  dark, bright = r < -ANOMALY_LEVEL, r > ANOMALY_LEVEL
  n, _, blobs, _ = cv2.connectedComponentsWithStats((dark | bright).astype(np.uint8), None, 8)
  largest = blobs[1:, cv2.CC_STAT_AREA].max() / r.size if n > 1 else 0.0
  grad2 = cv2.Sobel(gf, cv2.CV_64F, 1, 0) ** 2 + cv2.Sobel(gf, cv2.CV_64F, 0, 1) ** 2
  return np.array([*np.percentile(r, (1, 5, 50, 95, 99)), r.std(), dark.mean(),
                   bright.mean(), largest, grad2.mean(), np.sqrt(np.percentile(grad2, 99)),
                   cv2.Laplacian(gf, cv2.CV_64F).var(), gf.mean(), gf.std()])


def anomaly_features(images: np.ndarray) -> np.ndarray:
  return np.stack([anomaly_stats(im) for im in images]).reshape(len(images), -1)


def hog(g: np.ndarray, cell: int) -> np.ndarray:
  """HOG of a grey image (Dalal & Triggs without their spatial interpolation):
  centred-difference gradients, HOG_BINS unsigned orientation bins per
  cell x cell pixels (magnitude-weighted, linear between bins), blocks of
  HOG_BLOCK^2 cells at a one-cell stride, each L2-Hys normalised. In numpy:
  OpenCV 5 no longer ships cv2.HOGDescriptor."""
  gf = g.astype(np.float32)
  kernel = np.array([[-1, 0, 1]], np.float32)
  gx, gy = cv2.filter2D(gf, -1, kernel), cv2.filter2D(gf, -1, kernel.T)
  mag = np.hypot(gx, gy)
  pos = (np.degrees(np.arctan2(gy, gx)) % 180.0) / (180.0 / HOG_BINS) - 0.5
  lo = np.floor(pos)
  frac, lo = pos - lo, lo.astype(np.int64) % HOG_BINS
  ch, cw = g.shape[0] // cell, g.shape[1] // cell
  cell_id = (np.arange(ch * cell)[:, None] // cell) * cw + np.arange(cw * cell)[None, :] // cell
  crop = (slice(0, ch * cell), slice(0, cw * cell))
  hist = np.zeros(ch * cw * HOG_BINS)
  for bins, weight in ((lo, 1.0 - frac), ((lo + 1) % HOG_BINS, frac)):
    hist += np.bincount((cell_id * HOG_BINS + bins[crop]).ravel(),
                        (mag * weight)[crop].ravel(), minlength=hist.size)
  hist = hist.reshape(ch, cw, HOG_BINS)
  blocks = np.lib.stride_tricks.sliding_window_view(hist, (HOG_BLOCK, HOG_BLOCK), (0, 1))
  v = blocks.transpose(0, 1, 3, 4, 2).reshape(blocks.shape[0] * blocks.shape[1], -1)
  for clip in (0.2, None):  # L2, clip at 0.2, L2 again (L2-Hys).
    v = v / np.sqrt(np.sum(v ** 2, axis=1, keepdims=True) + 1e-6)
    v = np.minimum(v, clip) if clip else v
  return v.ravel()


def hog_size(shape: tuple[int, ...], height: int, cell: int) -> tuple[int, int]:
  """(h, w) to resize to before HOG: `height` rows, the image's aspect, whole cells."""
  width = max(HOG_BLOCK * cell, cell * round(height * shape[1] / shape[0] / cell))
  return height, width


def hog_features(images: np.ndarray, height: int = 64, cell: int = 16) -> np.ndarray:
  h, w = hog_size(images.shape[1:3], height, cell)
  return np.stack([hog(cv2.resize(grey(im), (w, h), interpolation=cv2.INTER_AREA), cell)
                   for im in images]).reshape(len(images), -1)


# ------------------------------------------------------------------ linear models


def fit_ridge(x: np.ndarray, labels: np.ndarray, lam: float) -> np.ndarray:
  """Ridge weights (with a trailing, unpenalised bias) for targets +1
  defective / -1 good."""
  xb = np.c_[x, np.ones(len(x))]
  penalty = lam * np.eye(xb.shape[1])
  penalty[-1, -1] = 0.0
  return np.linalg.solve(xb.T @ xb + penalty, xb.T @ np.where(labels == 1, 1.0, -1.0))


def scores(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """x w + b for weights with a trailing bias."""
  return np.c_[x, np.ones(len(x))] @ w


def sigmoid(z: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(x: np.ndarray, labels: np.ndarray, lam: float, iters: int = 100) -> np.ndarray:
  """Weights (trailing unpenalised bias) minimising the summed log-loss +
  lam / 2 |w|^2, by Newton's method with step halving."""
  xb = np.c_[x, np.ones(len(x))]
  y = (labels == 1).astype(np.float64)
  pen = np.full(xb.shape[1], float(lam))
  pen[-1] = 0.0

  def objective(w):
    z = xb @ w
    return np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * np.sum(pen * w ** 2)

  w = np.zeros(xb.shape[1])
  for _ in range(iters):
    p = sigmoid(xb @ w)
    grad = xb.T @ (p - y) + pen * w
    hess = (xb * (p * (1.0 - p))[:, None]).T @ xb + np.diag(pen + 1e-9)
    step = np.linalg.solve(hess, grad)
    t, f0 = 1.0, objective(w)
    while objective(w - t * step) > f0 - 1e-4 * t * (grad @ step) and t > 1e-6:
      t /= 2
    w -= t * step
    if np.max(np.abs(t * step)) < 1e-8:
      break
  return w


# ------------------------------------------------------------------ boosted trees


class Boosted(NamedTuple):
  """A fitted booster: the prior log-odds, then per round (R rows) one tree in
  heap order (node k's children are 2k+1 for x <= threshold and 2k+2 above;
  threshold +inf: no split, all rows go left) and its leaf values, the
  learning rate already applied."""
  base: float
  feature: np.ndarray  # (R, 2^depth - 1) int
  threshold: np.ndarray  # (R, 2^depth - 1)
  leaf: np.ndarray  # (R, 2^depth)


def bin_edges(x: np.ndarray, bins: int = BOOST_BINS) -> np.ndarray:
  """(F, bins - 1) candidate thresholds per feature: the training split's inner
  quantiles, repeats (ties, discrete features) dropped and the rest padded with
  +inf, so a split search costs `bins` per feature whatever the row count."""
  edges = np.full((x.shape[1], bins - 1), np.inf)
  qs = np.linspace(0.0, 1.0, bins + 1)[1:-1]
  for f in range(x.shape[1]):
    u = np.unique(np.quantile(x[:, f], qs))
    edges[f, :len(u)] = u
  return edges


def bin_codes(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
  """(n, F) bin of each value: how many of its feature's thresholds lie below
  it, so x > edges[f, j] exactly when code > j (training rows route by code
  as new rows route by value)."""
  return np.stack([np.searchsorted(e, x[:, f], side='left') for f, e in enumerate(edges)], 1)


def best_splits(codes, node, nodes, g, h, w, edges, l2, min_leaf):
  """The best split of each of `nodes` nodes of one level: gradient, Hessian
  and row-count histograms over (node, feature, bin) in three bincounts, their
  cumulative sums the left sides of every threshold at once. The split
  maximises the Newton gain GL^2/(HL+l2) + GR^2/(HR+l2) - G^2/(H+l2) with at
  least min_leaf sampled rows each side. Returns (feature, bin, threshold) per
  node; a node where nothing gains gets bin = #bins (never right) and +inf."""
  nf, nb = codes.shape[1], edges.shape[1] + 1
  idx = ((node[:, None] * nf + np.arange(nf)) * nb + codes).ravel()

  def hist(v):
    return np.bincount(idx, np.repeat(v, nf), nodes * nf * nb).reshape(nodes, nf, nb).cumsum(2)

  gs, hs, cs = hist(g * w), hist(h * w), hist(w)
  gl, hl, cl = gs[..., :-1], hs[..., :-1], cs[..., :-1]
  gt, ht, ct = gs[..., -1:], hs[..., -1:], cs[..., -1:]
  gain = gl ** 2 / (hl + l2) + (gt - gl) ** 2 / (ht - hl + l2) - gt ** 2 / (ht + l2)
  ok = np.isfinite(edges)[None] & (cl >= min_leaf) & (ct - cl >= min_leaf)
  gain = np.where(ok, gain, -np.inf).reshape(nodes, -1)
  best = gain.argmax(1)
  feat, j = np.divmod(best, nb - 1)
  split = gain[np.arange(nodes), best] > 1e-12
  return feat, np.where(split, j, nb), np.where(split, edges[feat, j], np.inf)


def fit_tree(codes, edges, g, h, w, depth, l2, min_leaf):
  """One regression tree on the Newton step, grown level by level to `depth`
  (a node that cannot split sends its rows left, so the tree stays complete
  and routes in fixed steps). Returns (features, thresholds, leaf values
  -G/(H+l2) over the sampled rows, each row's leaf)."""
  node = np.zeros(len(g), np.int64)  # Index within the current level.
  rows, feats, thrs = np.arange(len(g)), [], []
  for d in range(depth):
    f, j, t = best_splits(codes, node, 2 ** d, g, h, w, edges, l2, min_leaf)
    node = 2 * node + (codes[rows, f[node]] > j[node])
    feats.append(f)
    thrs.append(t)
  leaves = 2 ** depth
  leaf = -np.bincount(node, g * w, leaves) / (np.bincount(node, h * w, leaves) + l2)
  return np.concatenate(feats), np.concatenate(thrs), leaf, node


def fit_boosted(x: np.ndarray, labels: np.ndarray, rounds: int = max(BOOST_ROUNDS),
                depth: int = BOOST_DEPTH, rate: float = BOOST_RATE, l2: float = BOOST_L2,
                min_leaf: int = BOOST_MIN_LEAF, bins: int = BOOST_BINS,
                subsample: float = BOOST_SUBSAMPLE, seed: int = 0) -> Boosted:
  """Gradient boosting on the log-loss from the prior log-odds: each round a
  tree fits the Newton step on a `subsample` share of the rows (seeded, so a
  fit repeats exactly; less overfitting on a few hundred images) and `rate`
  times it joins the sum. Thresholds come from the training quantiles once."""
  y = (labels == 1).astype(np.float64)
  prior = np.clip(y.mean(), 1e-3, 1.0 - 1e-3)
  base = float(np.log(prior / (1.0 - prior)))
  edges = bin_edges(x, bins)
  codes = bin_codes(x, edges)
  rng = np.random.default_rng(seed)
  z, trees = np.full(len(y), base), []
  for _ in range(rounds):
    p = sigmoid(z)
    w = (rng.random(len(y)) < subsample).astype(np.float64)
    feat, thr, leaf, row_leaf = fit_tree(codes, edges, p - y, p * (1.0 - p), w, depth, l2,
                                         min_leaf)
    z += rate * leaf[row_leaf]
    trees.append((feat, thr, rate * leaf))
  return Boosted(base, *(np.stack(a) for a in zip(*trees)))


def boosted_stages(model: Boosted, x: np.ndarray, stages) -> dict:
  """{r: log-odds of x after the first r rounds} for each r in `stages`, all
  rounds routed at once and summed cumulatively: every candidate round count
  costs one pass."""
  internal, rounds = model.feature.shape[1], model.feature.shape[0]
  if max(stages) > rounds:
    raise ValueError(f'stages {stages}: the model has {rounds} rounds')
  node, cols = np.zeros((rounds, len(x)), np.int64), np.arange(len(x))[None]
  for _ in range(int(np.log2(internal + 1))):
    f = np.take_along_axis(model.feature, node, 1)
    t = np.take_along_axis(model.threshold, node, 1)
    node = 2 * node + 1 + (x[cols, f] > t)
  z = model.base + np.cumsum(np.take_along_axis(model.leaf, node - internal, 1), 0)
  return {r: z[r - 1] for r in stages}


def fit_predict_boosted(feats: dict, labels: dict) -> tuple[dict, int]:
  """({split: defect probability}, rounds): one fit of max(BOOST_ROUNDS)
  rounds whose prefixes are scored on validation; the best AUROC wins (ties:
  fewer rounds), 100 when validation has one class."""
  model = fit_boosted(feats['train'], labels['train'])
  stages = {n: boosted_stages(model, f, BOOST_ROUNDS) for n, f in feats.items()}
  val = {r: metrics.auroc(labels['val'], z) for r, z in stages['val'].items()}
  finite = [r for r in BOOST_ROUNDS if np.isfinite(val[r])]
  rounds = max(finite, key=lambda r: (val[r], -r)) if finite else 100
  return {n: sigmoid(s[rounds]) for n, s in stages.items()}, rounds


# ------------------------------------------------------------------ model choice


def standardise(feats: dict) -> dict:
  """Each split's features with the training split's mean and std."""
  mean, std = feats['train'].mean(0), feats['train'].std(0) + 1e-6
  return {name: (f - mean) / std for name, f in feats.items()}


def fit_predict(model: str, feats: dict, labels: dict, ridge: float) -> tuple[dict, dict]:
  """({split: defect probability}, {'lambda': used, 'rounds': boosted's or
  None}). pixel: sigmoid of the ridge score (0 -> 0.5); boosted:
  fit_predict_boosted; the logistic models: lambda from LAMBDAS with the best
  validation AUROC (ties: the stronger), 10 when validation has one class."""
  if model == 'pixel':
    w = fit_ridge(feats['train'], labels['train'], ridge)
    probs = {n: sigmoid(scores(f, w)) for n, f in feats.items()}
    return probs, {'lambda': ridge, 'rounds': None}
  if model == 'boosted':
    probs, rounds = fit_predict_boosted(feats, labels)
    return probs, {'lambda': BOOST_L2, 'rounds': rounds}
  fits = {lam: fit_logistic(feats['train'], labels['train'], lam) for lam in LAMBDAS}
  val = {lam: metrics.auroc(labels['val'], scores(feats['val'], w)) for lam, w in fits.items()}
  finite = [lam for lam in LAMBDAS if np.isfinite(val[lam])]
  lam = max(finite, key=lambda lam: (val[lam], lam)) if finite else 10.0
  probs = {n: sigmoid(scores(f, fits[lam])) for n, f in feats.items()}
  return probs, {'lambda': lam, 'rounds': None}


# ------------------------------------------------------------------ data and runs


def load_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """uint8 RGB images and labels of a split: of a TFDS build, or of a dataset
  export (--set=source=export --set=export_path=PATH; no TensorFlow then)."""
  if isinstance(builder, dataset_export.ExportedDataset):
    index = builder.indices(split)
    return builder.rgb(index), builder.labels[index].astype(np.int64)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  images, labels = [], []
  for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    images.append(ex['image'])
    labels.append(int(ex['label']))
  return np.stack(images), np.asarray(labels, np.int64)


class Features:
  """Features per model of each TFDS split piece ('fold_3'), computed once:
  k-fold splits share their pieces ('fold_0+fold_2+fold_3')."""

  def __init__(self, builder, opts):
    self.builder, self.opts, self.cache = builder, opts, {}

  def _piece(self, piece: str, model: str):
    if (piece, 'labels') not in self.cache:
      self.cache[(piece, 'images')], self.cache[(piece, 'labels')] = load_split(
          self.builder, piece)
    if (piece, model) not in self.cache:
      images = self.cache[(piece, 'images')]
      self.cache[(piece, model)] = {
          'pixel': lambda: pixel_features(images, self.opts['size']),
          'anomaly': lambda: anomaly_features(images),
          'hog': lambda: hog_features(images, self.opts['hog_height'], self.opts['hog_cell']),
      }[model]()
    return self.cache[(piece, model)], self.cache[(piece, 'labels')]

  def __call__(self, split: str, model: str) -> tuple[np.ndarray, np.ndarray]:
    model = FEATURES_OF.get(model, model)  # boosted: anomaly's, extracted once.
    parts = [self._piece(piece, model) for piece in split.split('+')]
    return np.concatenate([f for f, _ in parts]), np.concatenate([y for _, y in parts])


def evaluate(labels: dict, probs: dict, rule: str, max_escape_rate: float) -> dict:
  """Threshold chosen on val, applied to test; train threshold-free."""
  threshold = metrics.choose_threshold(labels['val'], probs['val'], rule,
                                       max_escape_rate=max_escape_rate)
  y, p = labels['train'], probs['train']
  out = {'threshold': threshold,
         'train': {'n': int(len(y)), 'defective': int(y.sum()), 'auroc': metrics.auroc(y, p),
                   'average_precision': metrics.average_precision(y, p)}}
  for name in ('val', 'test'):
    out[name] = metrics.summary(labels[name], probs[name], threshold, warn=False)
  return {k: metrics.nan_to_none(v) if isinstance(v, dict) else v for k, v in out.items()}


def run_fold(data_config, features: Features, models, opts) -> list[dict]:
  """One row per model on the splits data_config names."""
  rows = []
  for model in models:
    pairs = {n: features(s, model) for n, s in input_pipeline.split_names(data_config).items()}
    labels = {n: y for n, (_, y) in pairs.items()}
    feats = standardise({n: f for n, (f, _) in pairs.items()})
    probs, choice = fit_predict(model, feats, labels, opts['ridge'])
    rows.append({'model': model, 'fold': data_config.fold if data_config.kfold else None,
                 'num_features': int(feats['train'].shape[1]), **choice,
                 'threshold_rule': opts['threshold_rule'],
                 **evaluate(labels, probs, opts['threshold_rule'], opts['max_escape_rate'])})
  return rows


def run(data_config, models=MODELS, folds=None, **options) -> dict:
  """{'data': ..., 'rows': [one per model and fold]}; folds None = every fold
  of data_config.kfold (or the one split without k-fold)."""
  opts = {'size': (16, 32), 'ridge': 10.0, 'hog_height': 64, 'hog_cell': 16,
          'threshold_rule': 'best_f1', 'max_escape_rate': 0.05, **options}
  metrics.validate_rule(opts['threshold_rule'], opts['max_escape_rate'])
  builder = input_pipeline.prepare(data_config)
  features = Features(builder, opts)
  if folds is None:
    folds = range(data_config.kfold) if data_config.kfold else [data_config.fold]
  rows = []
  for fold in folds:
    data_config.fold = fold
    rows += run_fold(data_config, features, models, opts)
  data = {k: v for k, v in data_config.to_dict().items() if k != 'fold'}
  return {'data': data, 'options': opts, 'rows': rows}


# ------------------------------------------------------------------ command line


def _mean_std(values) -> str:
  v = np.asarray([np.nan if x is None else x for x in values], np.float64)
  v = v[np.isfinite(v)]
  if not len(v):
    return '-'
  return f'{v.mean():.3f}' + (f' ± {v.std(ddof=1):.3f}' if len(v) > 1 else '')


def _f(x) -> float:
  return float('nan') if x is None else x


def print_table(result: dict) -> None:
  for r in result['rows']:
    fold = '' if r['fold'] is None else f' fold {r["fold"]}'
    auc = ' '.join(f'{s} {_f(r[s]["auroc"]):.3f}' for s in ('train', 'val', 'test'))
    rounds = f', {r["rounds"]} rounds' if r.get('rounds') else ''
    print(f'{r["model"]:8s}{fold:8s} AUROC {auc}   test balanced acc. '
          f'{_f(r["test"]["balanced_accuracy"]):.3f} (threshold {r["threshold"]:.3g} by '
          f'{r["threshold_rule"]} on val, lambda {r["lambda"]:g}{rounds})')
  for model in dict.fromkeys(r['model'] for r in result['rows']):
    rows = [r for r in result['rows'] if r['model'] == model]
    print(f'{model:8s} over {len(rows)}: test AUROC {_mean_std(r["test"]["auroc"] for r in rows)}'
          f', test balanced acc. {_mean_std(r["test"]["balanced_accuracy"] for r in rows)}')


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _pair(text: str, name: str) -> tuple[int, int]:
  try:
    pair = tuple(int(v) for v in text.split(','))
    if len(pair) != 2 or min(pair) < 1:
      raise ValueError
  except ValueError:
    raise ValueError(f'{name}={text!r}: expected two positive integers h,w') from None
  return pair


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python launch/floors.py',
                              description=__doc__.splitlines()[0])
  p.add_argument('--model', default='all',
                 help='pixel, anomaly, hog, boosted, a comma list, or all')
  p.add_argument('--data', default=None, help='config.data.name (TFDS builder)')
  p.add_argument('--builder_config', default=None, help="config.data.builder_config "
                 "('' = the builder's default)")
  p.add_argument('--manual_dir', default=None)
  p.add_argument('--data_dir', default=None)
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='any other config.data field, e.g. --set=normalize=fixed (repeatable)')
  p.add_argument('--kfold', type=int, default=0)
  p.add_argument('--fold', default='all', help="a fold, or 'all' (every fold of --kfold)")
  p.add_argument('--size', default='16,32', help='pixel: grey feature size h,w')
  p.add_argument('--ridge', type=float, default=10.0, help='pixel: ridge lambda')
  p.add_argument('--hog_height', type=int, default=64, help='hog: rows the image is resized to')
  p.add_argument('--hog_cell', type=int, default=16, help='hog: cell side in pixels')
  p.add_argument('--threshold_rule', default='best_f1',
                 help=f'on val: one of {sorted(metrics.THRESHOLD_RULES)}')
  p.add_argument('--max_escape_rate', type=float, default=0.05)
  p.add_argument('--out', default='', help='write the JSON here (a directory: DIR/floors.json)')
  return p


def data_config_from(args):
  d = default.get_config().data
  for key, value in (('name', args.data), ('builder_config', args.builder_config),
                     ('manual_dir', args.manual_dir), ('data_dir', args.data_dir)):
    if value is not None:
      d[key] = value
  for item in args.set:
    key, sep, value = item.partition('=')
    key = key.strip().removeprefix('data.')
    if not sep or key not in d:
      raise ValueError(f'--set={item!r}: expected KEY=VALUE with KEY a config.data field')
    try:
      d[key] = _literal(value)
    except TypeError as e:
      raise ValueError(f'--set={item!r}: {e}') from None
  d.kfold = args.kfold
  return d


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  try:
    models = MODELS if args.model == 'all' else tuple(args.model.split(','))
    if not models or set(models) - set(MODELS):
      raise ValueError(f'--model={args.model!r}: expected all or some of {",".join(MODELS)}')
    folds = None if args.fold == 'all' else [int(args.fold)]
    d = data_config_from(args)
    if folds and args.kfold and not 0 <= folds[0] < args.kfold:
      raise ValueError(f'--fold={args.fold}: must be in [0, {args.kfold})')
    opts = {'size': _pair(args.size, '--size'), 'ridge': args.ridge,
            'hog_height': args.hog_height, 'hog_cell': args.hog_cell,
            'threshold_rule': args.threshold_rule, 'max_escape_rate': args.max_escape_rate}
    if args.hog_cell < 1 or args.hog_height < HOG_BLOCK * args.hog_cell:
      raise ValueError('--hog_height must hold at least two --hog_cell cells')
    metrics.validate_rule(args.threshold_rule, args.max_escape_rate)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  result = run(d, models, folds, **opts)
  print_table(result)
  text = json.dumps(result)
  if args.out:
    path = os.path.join(args.out, 'floors.json') if os.path.isdir(args.out) else args.out
    rundir.write_text(path, text + '\n')
    print(f'wrote {path}', file=sys.stderr)
  print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
