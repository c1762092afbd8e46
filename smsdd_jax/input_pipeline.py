"""Input: balanced training pairs and single-image eval batches.

Data comes from a TFDS builder (`config.data.name`), whose examples carry an
`image` (the rectified screen ROI, uint8 RGB) and a `label` (0 good,
1 defective), read with tf.data: `config.data.source='tfds'`, the default.
With `config.data.source='export'` it comes from a file written by
`python -m smsdd_jax.dataset_export` (`config.data.export_path`) and is read
by numpy_pipeline.py with the same rules and no TensorFlow: the functions
below hand an export there, so callers never ask which source they read.

Pair sampling rule (training). Two independent image streams A and B are
drawn; each picks a defective image with probability
`config.data.defective_fraction` (default 0.5) and otherwise a good one, each
class cycling through its own seeded shuffle. Pair i is (A_i, B_i). With 0.5,
every class makes half of the images the tower sees and same/different pairs
come 1:1 (GG, GD, DG, DD each 1/4), so the rare defective class is never
drowned. Drawing pairs uniformly from 168/1032 images would instead give ~76%
same-class pairs, nearly all good-good.

An epoch is `len(train split) // (2 * batch_size)` steps: as many images as
the split holds. The stream is one seeded, deterministic sequence; resuming at
step s skips its first s batches, so a resumed run sees the same data.

TensorFlow here is only an input library: it is imported on first use (an
export never loads it) and kept off any GPU.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
from typing import Iterator

import numpy as np

from smsdd_jax import dataset_export
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

GOOD, DEFECTIVE = 0, 1


def _export(builder) -> bool:
  """True when `builder` is a dataset export (numpy_pipeline reads it)."""
  return isinstance(builder, dataset_export.ExportedDataset)


def _numpy_pipeline():
  from smsdd_jax import numpy_pipeline  # pylint: disable=import-outside-toplevel
  return numpy_pipeline


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
    return _numpy_pipeline().compute_stats(builder, data_config)
  if data_config.normalize == 'fixed':
    return FIXED_STATS
  if data_config.normalize != 'train_stats':
    raise ValueError(f'config.data.normalize={data_config.normalize!r}: expected '
                     "'fixed' or 'train_stats'")
  ds = builder.as_dataset(split=split_names(data_config)['train']).map(
      lambda ex: ex['image'])
  return pixel_stats(tfds.as_numpy(ds.batch(256)))


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


def prepare(data_config):
  """Builds (once per source and preprocessing) and returns the builder
  (`smsdd_jax.datasets.builder`), or with source 'export' the export it
  names, checked against config.data (numpy_pipeline.prepare)."""
  source = data_config.get('source', 'tfds')
  if source not in SOURCES:
    raise ValueError(f'config.data.source={source!r}: expected one of {SOURCES}')
  if source == 'export':
    export = _numpy_pipeline().prepare(data_config)
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
  return _numpy_pipeline().recorded_data(data, builder) if _export(builder) else dict(data)


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


@dataclasses.dataclass(frozen=True)
class SplitInfo:
  num_examples: int
  num_good: int
  num_defective: int


def split_info(builder, split: str) -> SplitInfo:
  """Example counts per class (one pass over the labels only)."""
  if _export(builder):
    return _numpy_pipeline().split_info(builder, split)
  ds = builder.as_dataset(split=split, decoders={'image': tfds.decode.SkipDecoding()})
  labels = np.fromiter((ex['label'] for ex in tfds.as_numpy(ds.map(
      lambda ex: {'label': ex['label']}))), dtype=np.int64)
  return SplitInfo(len(labels), int((labels == GOOD).sum()),
                   int((labels == DEFECTIVE).sum()))


def defect_types(builder, split: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(labels, defect type names) of every example of `split`, in the order
  eval_batches gives them (no image decoded); None when the builder has no
  `defect_type` feature."""
  if _export(builder):
    return _numpy_pipeline().defect_types(builder, split)
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


def steps_per_epoch(num_train_examples: int, batch_size: int) -> int:
  return max(1, num_train_examples // (2 * batch_size))


def _images(builder, split, data_config, stats, cache: bool) -> tf.data.Dataset:
  ds = builder.as_dataset(split=split, shuffle_files=False)
  ds = ds.map(lambda ex: {'image': normalize(ex['image'], stats),
                          'label': tf.cast(ex['label'], tf.int32)},
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.cache() if cache else ds


def _class_stream(images: tf.data.Dataset, data_config, seed: int) -> tf.data.Dataset:
  """Endless image stream: a defective image with prob defective_fraction."""
  per_class = []
  for offset, label in enumerate((GOOD, DEFECTIVE)):
    ds = images.filter(lambda ex, label=label: ex['label'] == label)
    ds = ds.shuffle(4096, seed=seed + offset, reshuffle_each_iteration=True).repeat()
    per_class.append(ds)
  f = float(data_config.defective_fraction)
  return tf.data.Dataset.sample_from_datasets(per_class, weights=[1.0 - f, f],
                                              seed=seed + 2)


def _pair_seed(seed: int, index: tf.Tensor) -> tf.Tensor:
  return tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])


def augment(image: tf.Tensor, data_config, seed) -> tf.Tensor:
  """Label-preserving changes of a normalised image (a flipped or slightly
  brighter screen keeps its defect), from stateless seeded ops."""
  seeds = tf.random.experimental.stateless_split(seed, 4)
  if data_config.augment_flips:
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    image = tf.image.stateless_random_flip_up_down(image, seeds[1])
  a = float(data_config.augment_jitter)
  if a > 0:
    image = tf.image.stateless_random_contrast(image, 1.0 - a, 1.0 + a, seeds[2])
    image = image + tf.random.stateless_uniform([], seeds[3], -a, a)
  return image


def train_pairs(builder, config, *, stats: dict = FIXED_STATS, start_step: int = 0,
                shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
  """Endless numpy batches of pairs: image_a, image_b, label_a, label_b, same.

  Deterministic for a given config.seed; starts at batch `start_step`. With
  shard=(i, n) (process i of n) it samples from every n-th training image
  only and yields batch_size // n pairs: this process's part of the global
  batch.
  """
  if _export(builder):
    return _numpy_pipeline().train_pairs(builder, config, stats=stats,
                                         start_step=start_step, shard=shard)
  index, count = shard
  data_config = config.data
  if not 0.0 < data_config.defective_fraction < 1.0:
    raise ValueError(f'config.data.defective_fraction={data_config.defective_fraction}:'
                     ' must be in (0, 1)')
  images = _images(builder, split_names(data_config)['train'], data_config, stats,
                   data_config.cache).shard(count, index)
  seed = int(config.seed) * 1000 + 100 * index
  a = _class_stream(images, data_config, seed)
  b = _class_stream(images, data_config, seed + 10)
  # The counter numbers the pairs: augmentation seeds come from it, so a
  # resumed stream (skip) augments exactly as the uninterrupted one.
  pairs = tf.data.Dataset.zip(a, b, tf.data.Dataset.counter()).map(
      lambda x, y, i: {'image_a': augment(x['image'], data_config, _pair_seed(seed, 2 * i)),
                       'image_b': augment(y['image'], data_config, _pair_seed(seed, 2 * i + 1)),
                       'label_a': x['label'], 'label_b': y['label'],
                       'same': tf.cast(tf.equal(x['label'], y['label']), tf.float32)},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  pairs = pairs.batch(config.batch_size // count, drop_remainder=True)
  pairs = pairs.skip(start_step).prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return iter(tfds.as_numpy(pairs.with_options(options)))


def eval_batches(builder, split: str, config, *,
                 stats: dict = FIXED_STATS) -> Iterator[dict]:
  """Every example of `split` exactly once, in fixed order.

  The last batch is padded to `config.eval_batch_size` (so the jitted eval
  step sees one shape) and `mask` is 1.0 for real examples, 0.0 for padding.
  """
  if _export(builder):
    yield from _numpy_pipeline().eval_batches(builder, split, config, stats=stats)
    return
  size = config.eval_batch_size
  ds = _images(builder, split, config.data, stats, cache=False).batch(size)
  for batch in tfds.as_numpy(ds.prefetch(2)):
    n = len(batch['label'])
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    if n < size:
      batch = {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
               for k, v in batch.items()}
    yield {**batch, 'mask': mask}
