"""Input: balanced training pairs and single-image eval batches.

Data comes from a TFDS builder (`config.data.name`), whose examples carry an
`image` (the rectified screen ROI, uint8 RGB) and a `label` (0 good,
1 defective), read with tf.data: `config.data.source='tfds'`, the default.
With `config.data.source='export'` it comes from a file written by
`python -m smsdd_jax.dataset_export` (`config.data.export_path`) and is read
by numpy_pipeline.py with no TensorFlow: the functions below hand an export
there, so callers never ask which source they read.

Training pairs and their augmentation are decided by the one pair sampler,
smsdd_jax/pairs.py (the pair rule, seeds, resuming, sharding, epochs: its
module doc). Each source only reads and normalises the training images it is
asked for, so both give bit-identical batches on the same build. The split
helpers both sources share (split_names, SplitInfo, pixel_stats) live in
data_splits.py, the export reader in export_reader.py.

TensorFlow here is only an input library: it is imported on first use (an
export never loads it) and kept off any GPU.
"""
from __future__ import annotations

import importlib
import json
import os
import re
from typing import Iterator

import numpy as np

from smsdd_jax import data_splits
from smsdd_jax import export_reader
from smsdd_jax import numpy_pipeline
from smsdd_jax import pairs
from smsdd_jax import preprocess

SOURCES = ('tfds', 'export')  # config.data.source.


class _LazyModule:
  """A module imported on first attribute use: the tf.data code below loads
  TensorFlow, a run on an export (numpy_pipeline) never does."""

  def __init__(self, name: str):
    self._name, self._module = name, None

  def __getattr__(self, attr: str):
    if self._module is None:
      load_tensorflow()
      self._module = importlib.import_module(self._name)
    return getattr(self._module, attr)


tf = _LazyModule('tensorflow')
tfds = _LazyModule('tensorflow_datasets')
_tf_loaded = False


# TensorFlow's import prints "oneDNN custom operations are on ..." through
# absl before any log level applies (TF_CPP_MIN_LOG_LEVEL does not hide it):
# only turning those ops off does. They are matmul/convolution kernels, which
# this tf.data pipeline (decode, resize, flips, jitter) does not run. Level 1
# hides TF's INFO lines (CPU-instruction notes) and keeps warnings and errors.
# A value the user set wins.
QUIET_TENSORFLOW = {'TF_ENABLE_ONEDNN_OPTS': '0', 'TF_CPP_MIN_LOG_LEVEL': '1'}


def load_tensorflow() -> None:
  """Imports TensorFlow once, without its start-up lines, and keeps it away
  from accelerators: JAX owns them (big_vision does the same)."""
  global _tf_loaded
  if not _tf_loaded:
    for name, value in QUIET_TENSORFLOW.items():
      os.environ.setdefault(name, value)
    importlib.import_module('tensorflow').config.set_visible_devices([], 'GPU')
    _tf_loaded = True

# Shared with the export source (data_splits, pairs); known here by these names.
GOOD, DEFECTIVE = data_splits.GOOD, data_splits.DEFECTIVE
SplitInfo = data_splits.SplitInfo
split_names = data_splits.split_names
pixel_stats = data_splits.pixel_stats
steps_per_epoch = pairs.steps_per_epoch


def _export(builder) -> bool:
  """True when `builder` is a dataset export (numpy_pipeline reads it)."""
  return isinstance(builder, export_reader.ExportedDataset)


# Normalisation: (pixel - mean) / std per RGB channel, pixels in [0, 255].
# 'fixed' maps [0, 255] to [-1, 1]; 'train_stats' measures the training split.
FIXED_STATS = preprocess.FIXED_STATS


def normalize(image: tf.Tensor, stats: dict) -> tf.Tensor:
  """uint8 RGB -> normalised float32: `preprocess.normalize` in TF. The build
  already holds model inputs (smsdd_jax.preprocess); nothing is resized here."""
  image = tf.cast(image, tf.float32)
  return (image - tf.constant(stats['mean'], tf.float32)) / tf.constant(
      stats['std'], tf.float32)


def check_image_size(builder, data_config) -> None:
  """A build holds inputs of one size; a config asking for another is refused
  (resizing here would be a second preprocessing path)."""
  shape = tuple(builder.info.features['image'].shape[:2])
  if shape != tuple(data_config.image_size):
    raise ValueError(f'config.data.image_size={tuple(data_config.image_size)}: the '
                     f'{builder.name} build holds {shape[0]}x{shape[1]} images')


normalize_np = preprocess.normalize  # The numpy twin of `preprocess` above.


def compute_stats(builder, data_config) -> dict:
  """Per-channel mean/std: fixed, or measured on the training split only
  (never validation or test, which would leak them into training)."""
  if _export(builder):
    return numpy_pipeline.compute_stats(builder, data_config)
  if data_splits.check_normalize(data_config) == 'fixed':
    return FIXED_STATS
  ds = builder.as_dataset(split=split_names(data_config)['train']).map(
      lambda ex: ex['image'])
  return pixel_stats(tfds.as_numpy(ds.batch(256)))


def prepare(data_config):
  """Builds (once per source and preprocessing) and returns the builder
  (`smsdd_jax.datasets.builder`), or with source 'export' the export it
  names, checked against config.data (numpy_pipeline.prepare)."""
  source = data_config.get('source', 'tfds')
  if source not in SOURCES:
    raise ValueError(f'config.data.source={source!r}: expected one of {SOURCES}')
  if source == 'export':
    export = numpy_pipeline.prepare(data_config)
    check_kfold(export, data_config)
    return export
  load_tensorflow()
  from smsdd_jax import datasets  # pylint: disable=import-outside-toplevel
  builder = datasets.builder(data_config)
  check_image_size(builder, data_config)
  check_kfold(builder, data_config)
  return builder


def recorded_data(data: dict, builder) -> dict:
  """config.data (a dict) as a run records it: on an export, the export's
  builder_config and manual_dir where it leaves them empty."""
  return numpy_pipeline.recorded_data(data, builder) if _export(builder) else dict(data)


def num_folds(builder) -> int:
  """k of a build's fold_0 .. fold_{k-1} splits (0: it has none); the joined
  k-fold training splits an export records ('fold_1+fold_2') do not count."""
  names = builder.splits if _export(builder) else builder.info.splits.keys()
  return sum(bool(re.fullmatch(r'fold_\d+', str(name))) for name in names)


def check_kfold(builder, data_config) -> None:
  """A build's folds are made once, for its own k (the builder's num_folds):
  a run asking for another k would test and validate on some folds and
  never use the rest (k=3 of 5 trains on fold_2 alone). Refused."""
  kfold = data_config.kfold
  if not kfold:
    return
  split_names(data_config)  # A fold outside [0, kfold) first: its own message.
  k = num_folds(builder)
  if k == kfold:
    return
  what = (data_config.export_path if _export(builder) else
          f'{builder.name}/{builder.builder_config.name}')
  has = f'{k} folds (fold_0..fold_{k - 1})' if k else 'no folds (no fold_0.. splits)'
  way_out = (f'set --config.data.kfold={k} (and a fold in [0, {k}))' if k else
             'set --config.data.kfold=0 (its train/validation/test splits)')
  raise ValueError(f'config.data.kfold={kfold}, but the build {what} has {has}: {way_out}')


def split_info(builder, split: str) -> SplitInfo:
  """Example counts per class (one pass over the labels only)."""
  if _export(builder):
    return numpy_pipeline.split_info(builder, split)
  ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  return data_splits.split_info(np.fromiter((ex['label'] for ex in tfds.as_numpy(ds.map(
      lambda ex: {'label': ex['label']}))), dtype=np.int64))


def defect_types(builder, split: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(labels, defect type names) of every example of `split`, in the order
  eval_batches gives them (no image decoded); None when the builder has no
  `defect_type` feature."""
  if _export(builder):
    return numpy_pipeline.defect_types(builder, split)
  features = builder.info.features
  if 'defect_type' not in features:
    return None
  skip = {k: tfds.decode.SkipDecoding() for k, f in features.items()
          if isinstance(f, tfds.features.Image)}
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=skip).map(
      lambda ex: {'label': ex['label'], 'defect_type': ex['defect_type']})
  rows = list(tfds.as_numpy(ds))
  names = getattr(features['defect_type'], 'names', None)  # ClassLabel; Text has none.
  types = [names[r['defect_type']] if names else r['defect_type'].decode('utf-8')
           for r in rows]
  return (np.asarray([r['label'] for r in rows], np.int64),
          np.asarray(types, dtype=str))


def _images(builder, split, stats) -> tf.data.Dataset:
  ds = builder.as_dataset(split=split, shuffle_files=False)
  return ds.map(lambda ex: {'image': normalize(ex['image'], stats),
                            'label': tf.cast(ex['label'], tf.int32)},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# The last training images read (key, normalised images, means, labels): the
# runs of one process on one build share them (config.data.cache).
_train_cache: tuple = (None, None, None, None)


def _train_images(builder, data_config, stats: dict, shard: tuple[int, int]):
  """This process's share of the training split (every n-th image), read
  with tf.data and normalised as an export's are (preprocess.normalize):
  (images, channel means, labels). Pairs pick images at random, so the
  share is held in memory while it trains."""
  global _train_cache
  index, count = shard
  split = split_names(data_config)['train']
  key = (builder.data_dir, split, index, count, json.dumps(stats, sort_keys=True))
  if _train_cache[0] == key:
    return _train_cache[1:]
  _train_cache = (None, None, None, None)  # Frees the old arrays first.
  ds = builder.as_dataset(split=split, shuffle_files=False).shard(count, index)
  ds = ds.map(lambda ex: {'image': ex['image'], 'label': ex['label']}).batch(256)
  images, labels = [], []
  for batch in tfds.as_numpy(ds):
    images.append(batch['image'])
    labels.append(batch['label'])
  if not images:
    raise ValueError(f'no training image in this process\'s share of split {split!r}')
  normalized = preprocess.normalize(np.concatenate(images), stats)
  held = (normalized, pairs.channel_means(normalized), np.concatenate(labels))
  if data_config.cache:
    _train_cache = (key, *held)
  return held


def train_pairs(builder, config, *, stats: dict = FIXED_STATS, start_step: int = 0,
                shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
  """Endless numpy batches of pairs: image_a, image_b, label_a, label_b, same.

  The pairs and their augmentation are pairs.PairSampler's: deterministic for
  a given config.seed, the same on both sources; starts at batch
  `start_step` as a run from 0 reaches it. With shard=(i, n) (process i of n)
  it samples from every n-th training image only and yields
  batch_size // n pairs: this process's part of the global batch.
  """
  if _export(builder):
    return numpy_pipeline.train_pairs(builder, config, stats=stats,
                                      start_step=start_step, shard=shard)
  pairs.check_fraction(config.data)  # Before any image is read.
  images, means, labels = _train_images(builder, config.data, stats, shard)
  return pairs.train_batches(images, means, np.arange(len(labels)), labels, config,
                             start_step=start_step, shard=shard)


def eval_batches(builder, split: str, config, *,
                 stats: dict = FIXED_STATS) -> Iterator[dict]:
  """Every example of `split` exactly once, in fixed order.

  The last batch is padded to `config.eval_batch_size` (so the jitted eval
  step sees one shape) and `mask` is 1.0 for real examples, 0.0 for padding.
  """
  if _export(builder):
    yield from numpy_pipeline.eval_batches(builder, split, config, stats=stats)
    return
  size = config.eval_batch_size
  ds = _images(builder, split, stats).batch(size)
  for batch in tfds.as_numpy(ds.prefetch(2)):
    n = len(batch['label'])
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    if n < size:
      batch = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
               for k, v in batch.items()}
    yield {**batch, 'mask': mask}
