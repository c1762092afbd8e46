"""Training pairs and eval batches from a dataset export, in numpy.

The second data source beside tf.data (input_pipeline.py), chosen by
`config.data.source='export'` with `config.data.export_path` naming a file
written by `python -m smsdd_jax.dataset_export`. It imports no TensorFlow, so
a run on an export trains where TensorFlow is not installed (the GPU
machine). input_pipeline's functions hand an export here; train.py does not
know which source it reads.

Pairs and their augmentation are decided by the one sampler (pairs.py), as
for tf.data: this module hands it the export's normalised training images, so
both sources give the same batches. Eval: every example of a split once, in
TFDS' order, padded to `eval_batch_size` with `mask` 0.0 on padding.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from smsdd_jax import data_splits
from smsdd_jax import export_reader
from smsdd_jax import pairs
from smsdd_jax import preprocess

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


def prepare(data_config) -> export_reader.ExportedDataset:
  """The export config.data.export_path names, checked against config.data."""
  export = export_reader.load(data_config.export_path)
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


def split_info(export, split: str) -> data_splits.SplitInfo:
  return data_splits.split_info(export.labels[export.indices(split)])


def defect_types(export, split: str) -> tuple[np.ndarray, np.ndarray] | None:
  """(labels, defect type names) in eval order; None without defect types."""
  if not export.has_defect_types:
    return None
  index = export.indices(split)
  return export.labels[index].astype(np.int64), export.defect_types[index].astype(str)


def compute_stats(export, data_config) -> dict:
  """input_pipeline.compute_stats on the export's training split."""
  if data_splits.check_normalize(data_config) == 'fixed':
    return preprocess.FIXED_STATS
  index = export.indices(data_splits.split_names(data_config)['train'])
  return data_splits.pixel_stats(export.rgb(index[start:start + 256])
                                 for start in range(0, len(index), 256))


def train_pairs(export, config, *, stats: dict = preprocess.FIXED_STATS,
                start_step: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
  """Endless numpy batches of pairs (input_pipeline.train_pairs' contract)."""
  index, count = shard
  positions = export.indices(data_splits.split_names(config.data)['train'])[index::count]
  # Normalised once (kept by the export for the runs of one process): a
  # batch is then a gather and the augmentation.
  normalized, means = export.normalized(stats)
  return pairs.train_batches(normalized, means, positions, export.labels[positions], config,
                             start_step=start_step, shard=shard)


def eval_batches(export, split: str, config, *,
                 stats: dict = preprocess.FIXED_STATS) -> Iterator[dict]:
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
