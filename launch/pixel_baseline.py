#!/usr/bin/env python3
"""A floor for any dataset: ridge regression on downsampled grey pixels.

  python launch/pixel_baseline.py --data=magnetic_tile --builder_config=stretch \
      --manual_dir=PATH/TO/magnetic_tile [--kfold=5 --fold=0] [--size=16,32]

Reads the same TFDS splits a run of smsdd_jax.main would (configs/default.py's
data settings with these overrides), shrinks each ROI to --size grey pixels
(area interpolation), standardises with the training split's statistics,
fits w = (X'X + lambda I)^-1 X'y on the training split with y = +-1, and
prints AUROC and average precision of the scores X w per split (threshold
free), then one JSON line. It answers two questions before anyone tunes a
network: is there signal a trivial model finds, and does what is learned on
train carry over to val and test (a train AUROC near 1 with val/test near or
below 0.5 means the splits differ, or the defects are too small for this
resolution)?
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from configs import default  # pylint: disable=wrong-import-position
from smsdd_jax import input_pipeline, metrics  # pylint: disable=wrong-import-position


def features(images_rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(N, H, W, 3) uint8 -> (N, h*w) float64 grey pixels in [0, 1]."""
  h, w = size
  return np.stack([cv2.resize(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), (w, h),
                              interpolation=cv2.INTER_AREA).ravel() / 255.0
                   for im in images_rgb])


def fit_ridge(x: np.ndarray, labels: np.ndarray, lam: float) -> np.ndarray:
  """Weights (with a trailing bias) for targets +1 defective / -1 good.
  The bias is not penalised."""
  xb = np.c_[x, np.ones(len(x))]
  penalty = lam * np.eye(xb.shape[1])
  penalty[-1, -1] = 0.0
  return np.linalg.solve(xb.T @ xb + penalty, xb.T @ np.where(labels == 1, 1.0, -1.0))


def scores(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  return np.c_[x, np.ones(len(x))] @ w


def load_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  images, labels = [], []
  for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    images.append(ex['image'])
    labels.append(int(ex['label']))
  return np.stack(images), np.asarray(labels)


def run(data_config, size=(16, 32), lam: float = 10.0) -> dict:
  builder = input_pipeline.prepare(data_config)
  splits = input_pipeline.split_names(data_config)
  data = {name: load_split(builder, split) for name, split in splits.items()}
  feats = {name: features(images, size) for name, (images, _) in data.items()}
  mean, std = feats['train'].mean(0), feats['train'].std(0) + 1e-6
  feats = {name: (f - mean) / std for name, f in feats.items()}
  w = fit_ridge(feats['train'], data['train'][1], lam)
  out = {'size': list(size), 'lambda': lam}
  for name, f in feats.items():
    labels = data[name][1]
    s = scores(f, w)
    out[name] = {'n': int(len(labels)), 'defective': int(labels.sum()),
                 'auroc': round(metrics.auroc(labels, s), 4),
                 'average_precision': round(metrics.average_precision(labels, s), 4)}
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--data', default='synthetic_screens', help='TFDS builder name')
  p.add_argument('--builder_config', default='small')
  p.add_argument('--manual_dir', default='')
  p.add_argument('--data_dir', default='')
  p.add_argument('--kfold', type=int, default=0)
  p.add_argument('--fold', type=int, default=0)
  p.add_argument('--size', default='16,32', help='grey feature size h,w')
  p.add_argument('--ridge', type=float, default=10.0, help='lambda')
  args = p.parse_args(argv)
  config = default.get_config()
  d = config.data
  d.name, d.builder_config = args.data, args.builder_config
  d.manual_dir, d.data_dir = args.manual_dir, args.data_dir
  d.kfold, d.fold = args.kfold, args.fold
  try:
    size = tuple(int(v) for v in args.size.split(','))
    if len(size) != 2 or min(size) < 1:
      raise ValueError
  except ValueError:
    print(f'error: --size={args.size!r}: expected two positive integers h,w', file=sys.stderr)
    return 2
  result = run(d, size, args.ridge)
  for name in ('train', 'val', 'test'):
    r = result[name]
    print(f'{name:5s} n={r["n"]:5d} defective={r["defective"]:4d} '
          f'AUROC {r["auroc"]:.3f} AP {r["average_precision"]:.3f}')
  print(json.dumps(result))
  return 0


if __name__ == '__main__':
  sys.exit(main())
