"""Training pairs and eval batches from a dataset export, in numpy.

The second data source beside tf.data (input_pipeline.py), chosen by
`config.data.source='export'` with `config.data.export_path` naming a file
written by `python -m smsdd_jax.dataset_export`. It imports no TensorFlow, so
a run on an export trains where TensorFlow is not installed (the GPU
machine). input_pipeline's functions hand an export here; train.py does not
know which source it reads.

The rules are input_pipeline's (its module doc), not its random numbers:

* pairs: two independent image streams A and B; each picks a defective image
  with probability `config.data.defective_fraction`, else a good one, each
  class cycling through its own seeded shuffle (every image of a class once
  before any twice, reshuffled each pass); pair i is (A_i, B_i). Stream seeds
  are config.seed * 1000 + 100 * process (A) and that + 10 (B), as there.
* augmentation (`augment_flips`, `augment_jitter`), after normalisation:
  horizontal and vertical flips with probability 1/2 each, contrast scaled by
  a factor in [1 - a, 1 + a) about each channel's mean, brightness shifted
  by [-a, a); drawn per step from (seed, step), so a resumed stream (start at
  step s) augments exactly as the uninterrupted one.
* sharding: process i of n samples from every n-th training image (in the
  split's order) and yields batch_size // n pairs.
* eval: every example of a split once, in TFDS' order, padded to
  `eval_batch_size` with `mask` 0.0 on padding.

Batches are made one step ahead in a background thread while the device
trains on the current one.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Iterator

import numpy as np

from smsdd_jax import dataset_export
from smsdd_jax import input_pipeline

GOOD, DEFECTIVE = input_pipeline.GOOD, input_pipeline.DEFECTIVE
# config.data fields that change what the model sees: a run must ask for what
# the export holds. (data_dir says only where the TFDS build lay.)
_MATCHING = ('name', 'aspect', 'channels')
# Where the build came from: a run on an export records the export's (its
# config.json would otherwise name a build it never read), so a value set
# must be the export's, and an empty one is filled in (recorded_data).
_WHERE_FROM = ('builder_config', 'manual_dir')


def _same_origin(field: str, value: str, export) -> bool:
  """Whether config.data.<field>=value names what `export` was built from."""
  built = export.meta['data'].get(field) or ''
  if field == 'manual_dir':
    source = ((export.info.metadata.get('card') or {}).get('source') or {}).get('root')
    return any(os.path.realpath(value) == os.path.realpath(p)
               for p in (built, source) if p)
  # The export's own config name, or the named config it was derived from
  # when the export was asked for the builder's default ('').
  name = export.builder_config.name
  return value in (built, name) or (not built and name.startswith(f'{value}_'))


def recorded_data(data: dict, export) -> dict:
  """config.data (a dict) as a run on `export` records it: builder_config
  and manual_dir, where left empty, are the export's."""
  data = dict(data)
  for field in _WHERE_FROM:
    if not data.get(field):
      data[field] = export.meta['data'].get(field) or ''
  return data


def prepare(data_config) -> dataset_export.ExportedDataset:
  """The export config.data.export_path names, checked against config.data."""
  export = dataset_export.load(data_config.export_path)
  built = export.meta['data']
  for field in _MATCHING:
    if data_config[field] != built.get(field):
      raise ValueError(f'config.data.{field}={data_config[field]!r}, but '
                       f'{data_config.export_path} was exported from {field}='
                       f'{built.get(field)!r}')
  if tuple(data_config.image_size) != export.image_size:
    h, w = export.image_size
    raise ValueError(f'config.data.image_size={tuple(data_config.image_size)}: the export '
                     f'{data_config.export_path} holds {h}x{w} images')
  for field in _WHERE_FROM:
    value = data_config.get(field) or ''
    if value and not _same_origin(field, value, export):
      raise ValueError(f'config.data.{field}={value!r}, but {data_config.export_path} was '
                       f'exported from {field}={built.get(field)!r}: leave it empty (the '
                       "run then records the export's) or pass that build's export")
  threshold = data_config.get('near_dup_threshold')
  built_threshold = export.info.metadata.get('near_dup_threshold')
  if threshold is not None and built_threshold is not None and threshold != built_threshold:
    raise ValueError(f'config.data.near_dup_threshold={threshold}, but '
                     f'{data_config.export_path} was built with {built_threshold}')
  return export


def split_info(export, split: str) -> input_pipeline.SplitInfo:
  labels = export.labels[export.indices(split)]
  return input_pipeline.SplitInfo(len(labels), int((labels == GOOD).sum()),
                                  int((labels == DEFECTIVE).sum()))


def defect_types(export, split: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(labels, defect type names) in eval order; None without defect types."""
  if not export.has_defect_types:
    return None
  index = export.indices(split)
  return export.labels[index].astype(np.int64), export.defect_types[index].astype(str)


def compute_stats(export, data_config) -> dict:
  """input_pipeline.compute_stats on the export's training split."""
  if data_config.normalize == 'fixed':
    return input_pipeline.FIXED_STATS
  if data_config.normalize != 'train_stats':
    raise ValueError(f'config.data.normalize={data_config.normalize!r}: expected '
                     "'fixed' or 'train_stats'")
  index = export.indices(input_pipeline.split_names(data_config)['train'])
  return input_pipeline.pixel_stats(export.rgb(index[start:start + 256])
                                    for start in range(0, len(index), 256))


class ClassStream:
  """Endless image indices: a defective one with probability `fraction`,
  each class cycling through its own shuffle (reshuffled every pass)."""

  def __init__(self, labels: np.ndarray, fraction: float, seed: int):
    self._rng = np.random.default_rng([seed, 0])
    self._fraction = fraction
    self._members = [np.flatnonzero(labels == c) for c in (GOOD, DEFECTIVE)]
    for c, members in enumerate(self._members):
      if not len(members):
        raise ValueError(f'no {("good", "defective")[c]} image to sample pairs from '
                         'in this process\'s share of the training split')
    self._order = [np.empty(0, np.int64), np.empty(0, np.int64)]
    self._next = [0, 0]

  def _draw(self, c: int) -> int:
    if self._next[c] == len(self._order[c]):
      self._order[c] = self._rng.permutation(self._members[c])
      self._next[c] = 0
    self._next[c] += 1
    return int(self._order[c][self._next[c] - 1])

  def take(self, n: int) -> np.ndarray:
    """The next n positions (into the labels given)."""
    classes = (self._rng.random(n) < self._fraction).astype(int)
    return np.asarray([self._draw(c) for c in classes], np.int64)


def augment(images: np.ndarray, data_config, rng: np.random.Generator,
            means: np.ndarray | None = None) -> np.ndarray:
  """input_pipeline.augment's changes on a batch of normalised images, in
  place. means: each image's per-channel mean, (n, 1, 1, 3), if known (a
  flip keeps it)."""
  n = len(images)
  flips = rng.random((n, 2)) < 0.5  # Drawn whatever the config: seeds stay aligned.
  a = float(data_config.augment_jitter)
  contrast = rng.uniform(1.0 - a, 1.0 + a, n).astype(np.float32)
  brightness = rng.uniform(-a, a, n).astype(np.float32)
  if data_config.augment_flips:
    images[flips[:, 0]] = images[flips[:, 0], :, ::-1]
    images[flips[:, 1]] = images[flips[:, 1], ::-1]
  if a > 0:
    if means is None:
      means = images.mean(axis=(1, 2), keepdims=True)
    # (x - mean) * c + mean + b, as x * c + (mean * (1 - c) + b): two passes.
    c = contrast[:, None, None, None]
    images *= c
    images += means * (1.0 - c) + brightness[:, None, None, None]
  return images


def _pair_batches(export, positions: np.ndarray, config, stats: dict, start_step: int,
                  shard: tuple[int, int]) -> Iterator[dict]:
  index, count = shard
  data_config = config.data
  seed = int(config.seed) * 1000 + 100 * index
  labels = export.labels[positions]
  # Normalised once (the tf.data source caches decoded images likewise): a
  # batch is then a gather and the augmentation.
  normalized, means = export.normalized(stats)
  streams = (ClassStream(labels, data_config.defective_fraction, seed),
             ClassStream(labels, data_config.defective_fraction, seed + 10))
  size = config.batch_size // count
  for _ in range(start_step):  # Indices only: skipping costs no image work.
    for s in streams:
      s.take(size)
  step = start_step
  while True:
    a, b = (s.take(size) for s in streams)
    rng = np.random.default_rng([seed, 1, step])
    both = positions[np.concatenate([a, b])]
    images = augment(normalized[both], data_config, rng, means[both])
    label_a, label_b = labels[a].astype(np.int32), labels[b].astype(np.int32)
    yield {'image_a': images[:size], 'image_b': images[size:],
           'label_a': label_a, 'label_b': label_b,
           'same': (label_a == label_b).astype(np.float32)}
    step += 1


def train_pairs(export, config, *, stats: dict = input_pipeline.FIXED_STATS,
                start_step: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
  """Endless numpy batches of pairs (input_pipeline.train_pairs' contract)."""
  data_config = config.data
  if not 0.0 < data_config.defective_fraction < 1.0:
    raise ValueError(f'config.data.defective_fraction={data_config.defective_fraction}:'
                     ' must be in (0, 1)')
  index, count = shard
  positions = export.indices(input_pipeline.split_names(data_config)['train'])[index::count]
  return _prefetch(_pair_batches(export, positions, config, stats, start_step, shard))


def eval_batches(export, split: str, config, *,
                 stats: dict = input_pipeline.FIXED_STATS) -> Iterator[dict]:
  """Every example of `split` once, in order; the last batch padded, `mask`
  1.0 for real examples (input_pipeline.eval_batches' contract)."""
  size = config.eval_batch_size
  index = export.indices(split)
  for start in range(0, len(index), size):
    part = index[start:start + size]
    n = len(part)
    image = np.zeros((size, *export.image_size, 3), np.float32)
    image[:n] = export.normalized(stats)[0][part]
    label = np.zeros(size, np.int32)
    label[:n] = export.labels[part]
    mask = np.zeros(size, np.float32)
    mask[:n] = 1.0
    yield {'image': image, 'label': label, 'mask': mask}


_DONE = object()


def _prefetch(batches: Iterator[dict], depth: int = 2) -> Iterator[dict]:
  """`batches`, made up to `depth` ahead in a daemon thread. Closing (or
  dropping) the returned generator stops the thread."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def produce():
    try:
      for item in batches:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)
      return
    q.put(_DONE)

  def consume():
    # Started on the first next(): a generator never read leaves no thread.
    threading.Thread(target=produce, daemon=True, name='numpy_pipeline').start()
    try:
      while True:
        item = q.get()
        if item is _DONE:
          return
        if isinstance(item, BaseException):
          raise item
        yield item
    finally:
      stop.set()

  return consume()
