"""What both data sources (tf.data and a dataset export) share, below them.

Which split a run trains, validates and tests on (`split_names`, k-fold
aware), the label values, per-class counts of a split (`SplitInfo`) and the
pixel statistics measured on a training split. input_pipeline.py (the tf.data
source and the one entry callers use), numpy_pipeline.py (the export source)
and pairs.py (the pair sampler) import this module; it imports none of them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

GOOD, DEFECTIVE = 0, 1  # The `label` of every build and export.
NORMALIZE = ('fixed', 'train_stats')  # config.data.normalize.


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  num_examples: int
  num_good: int
  num_defective: int


def split_info(labels: np.ndarray) -> SplitInfo:
  """Example counts per class of a split's labels."""
  return SplitInfo(len(labels), int((labels == GOOD).sum()), int((labels == DEFECTIVE).sum()))


def split_names(data_config) -> dict[str, str]:
  """TFDS split strings for 'train', 'val' and 'test' (k-fold aware)."""
  if data_config.kfold:
    from smsdd_jax.datasets import splits  # pylint: disable=import-outside-toplevel
    try:
      folds = splits.kfold_splits(data_config.kfold, data_config.fold)
    except ValueError as e:
      raise ValueError(f'config.data.kfold/fold: {e}') from None
    return {'train': folds['train'], 'val': folds['validation'], 'test': folds['test']}
  return {'train': data_config.train_split, 'val': data_config.val_split,
          'test': data_config.test_split}


def check_normalize(data_config) -> str:
  """config.data.normalize, checked: 'fixed' or 'train_stats'."""
  if data_config.normalize not in NORMALIZE:
    raise ValueError(f'config.data.normalize={data_config.normalize!r}: expected '
                     "'fixed' or 'train_stats'")
  return data_config.normalize


def pixel_stats(image_batches) -> dict:
  """Per-channel mean and std of uint8 RGB image batches (both sources)."""
  total, total_sq, count = np.zeros(3), np.zeros(3), 0
  for images in image_batches:
    pixels = images.reshape(-1, 3).astype(np.float64)
    total += pixels.sum(0)
    total_sq += (pixels ** 2).sum(0)
    count += len(pixels)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 1e-6))
  return {'mean': mean.tolist(), 'std': std.tolist()}
