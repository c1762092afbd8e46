"""Reading a dataset export: what both data sources need, below them.

`load` reads a file written by `python -m smsdd_jax.dataset_export` (which
writes it, and holds the file format's description) into an
`ExportedDataset`; `read_meta` reads its meta entry alone; `identity` says
what its data was made from. numpy and OpenCV only: no TensorFlow. Kept
apart from the writer so the pipelines (input_pipeline, numpy_pipeline) read
exports without importing the command that builds them through those
pipelines.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import types
import zipfile
import zlib

import cv2
import numpy as np

from smsdd_jax import pairs
from smsdd_jax import preprocess


FORMAT = 'smsdd_jax.dataset_export/1'
_ARRAYS = ('png', 'png_offsets', 'label', 'defect_type', 'file_name', 'group')


class ExportError(ValueError):
  """A file that is not a usable export, or one that does not fit what it
  meets (a run, an existing export): one line naming the file(s)."""


# What a truncated or overwritten .npz raises on reading (its zip directory,
# a member's CRC, a short array): each is "damaged", never a traceback.
_DAMAGED = (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError)
_WAY_OUT = 'remove it and export it again (python -m smsdd_jax.dataset_export)'


# ------------------------------------------------------------------ reading


class ExportedDataset:
  """A loaded export: decoded uint8 images and their labels, splits, meta.

  `name`, `version`, `builder_config.name` and `info.metadata` are the parts
  of a TFDS builder a run reads besides the data (train writes them into
  preprocessing.json), so a run records the same build on either source."""

  def __init__(self, path: str, arrays: dict, meta: dict, images: np.ndarray):
    self.path, self.meta, self.images = path, meta, images
    self.labels = arrays['label']
    self.defect_types = arrays['defect_type']
    self.file_names = arrays['file_name']
    self.groups = arrays['group']
    self.splits = {k.removeprefix('split/'): v for k, v in arrays.items()
                   if k.startswith('split/')}
    # (n, H, W) uint8 defect masks (255 inside), or None: the build had none.
    self.masks = (_decode(arrays['mask_png'], arrays['mask_offsets'], {**meta,
                                                                       'stored_channels': 1},
                          path)[..., 0] if 'mask_png' in arrays else None)
    self._normalized = (None, None, None)  # (stats key, images, means): the last asked for.
    self.name = meta['name']
    self.version = meta['version']
    self.builder_config = types.SimpleNamespace(name=meta['config'])
    self.info = types.SimpleNamespace(metadata=meta['metadata'])

  @property
  def image_size(self) -> tuple[int, int]:
    return tuple(self.meta['image_size'])

  @property
  def has_defect_types(self) -> bool:
    return bool(self.meta['has_defect_types'])

  def indices(self, split: str) -> np.ndarray:
    """Example indices of a TFDS split string ('fold_1+fold_2'), in TFDS'
    reading order where the export recorded it (every split and k-fold
    training split), else the pieces one after another."""
    if split in self.splits:
      return self.splits[split]
    parts = [p.strip() for p in split.split('+')]
    missing = [p for p in parts if p not in self.splits]
    if missing:
      raise ValueError(f'{self.path}: no split {missing[0]!r} in this export (it has '
                       f'{", ".join(sorted(self.splits))})')
    return np.concatenate([self.splits[p] for p in parts])

  def rgb(self, index: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, 3) images: a gray export replicated to RGB, as the
    build stores them."""
    images = self.images[index]
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images

  def normalized(self, stats: dict) -> tuple[np.ndarray, np.ndarray]:
    """Every image as the model sees it, float32 (n, H, W, 3)
    (preprocess.normalize with `stats`), and each one's channel means,
    (n, 1, 1, 3). Kept for the next call with the same stats: the runs of one
    process on one export share them."""
    key = json.dumps({k: list(map(float, stats[k])) for k in ('mean', 'std')})
    if self._normalized[0] != key:
      self._normalized = (None, None, None)  # Frees the old arrays first.
      images = preprocess.normalize(self.images, stats)
      self._normalized = (key, images, pairs.channel_means(images))
    return self._normalized[1], self._normalized[2]

  @property
  def fingerprint(self) -> dict:
    """What made the export (identity): the build and its preprocessing,
    and the sha256 of what it holds."""
    return {**identity(self.meta), 'sha256': self.meta['sha256']}

  def describe(self) -> str:
    n = len(self.labels)
    h, w = self.image_size
    return (f'{self.name}/{self.builder_config.name} {self.version}: {n} examples '
            f'({int(self.labels.sum())} defective), {h}x{w}, '
            f'{self.images.shape[-1]} channel(s) stored, splits '
            f'{", ".join(sorted(k for k in self.splits if "+" not in k))}')


def _open(path: str):
  if not path:
    raise ValueError('config.data.export_path is empty: name a file written by '
                     'python -m smsdd_jax.dataset_export')
  if not os.path.isfile(path):
    raise ValueError(f'config.data.export_path={path!r}: no such file (write it with '
                     'python -m smsdd_jax.dataset_export)')
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'{path}: not a dataset export or a damaged one ({e}): {_WAY_OUT}') \
        from None


def _read_meta(path: str, data) -> dict:
  if 'meta' not in data.files:
    raise ExportError(f'{path}: not a dataset export (no "meta" entry)')
  meta = json.loads(str(data['meta']))
  if not isinstance(meta, dict) or meta.get('format') != FORMAT:
    found = meta.get('format') if isinstance(meta, dict) else None
    raise ExportError(f'{path}: format {found!r}, this code reads {FORMAT!r}')
  return meta


def _decode(png: np.ndarray, offsets: np.ndarray, meta: dict, path: str) -> np.ndarray:
  """Every image, (n, H, W, channels stored) uint8."""
  h, w = meta['image_size']
  c = int(meta['stored_channels'])
  images = np.empty((len(offsets) - 1, h, w, c), np.uint8)
  for i in range(len(images)):
    image = cv2.imdecode(png[offsets[i]:offsets[i + 1]], cv2.IMREAD_UNCHANGED)
    if image is None:
      raise ValueError(f'{path}: image {i} does not decode')
    image = image.reshape(image.shape[0], image.shape[1], -1)
    if image.shape != (h, w, c):
      raise ValueError(f'{path}: image {i} is {image.shape}, expected {(h, w, c)}')
    images[i] = image if c == 1 else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  return images


def digest(arrays: dict) -> str:
  """sha256 over the named arrays' bytes and the split arrays, in a fixed order."""
  h = hashlib.sha256()
  for key in sorted(arrays):
    value = np.ascontiguousarray(arrays[key])
    h.update(key.encode() + b'\0' + str(value.dtype).encode() + b'\0')
    h.update(value.tobytes())
  return h.hexdigest()


def _damaged(path: str, error: Exception) -> ValueError:
  return ValueError(f'{path}: a damaged or truncated dataset export '
                    f'({type(error).__name__}: {error}): {_WAY_OUT}')


def read_meta(path: str) -> dict:
  """An export's meta entry alone (cheap: the arrays are not read);
  ValueError naming the file when it is not a readable export."""
  data = _open(path)
  try:
    with data:
      return _read_meta(path, data)
  except ExportError:
    raise
  except _DAMAGED as e:
    raise _damaged(path, e) from None


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, mtime_ns: int, size: int) -> ExportedDataset:
  del mtime_ns, size  # Cache keys: a rewritten file is read again.
  data = _open(path)
  try:
    with data:
      meta = _read_meta(path, data)
      arrays = {k: data[k] for k in data.files if k != 'meta'}
  except ExportError:
    raise
  except _DAMAGED as e:
    raise _damaged(path, e) from None
  missing = [k for k in _ARRAYS if k not in arrays]
  if missing:
    raise ValueError(f'{path}: not a dataset export (no {missing[0]!r} array)')
  if digest(arrays) != meta['sha256']:
    raise ValueError(f'{path}: contents do not match the sha256 recorded when it was '
                     'written (a damaged or edited file): export it again')
  images = _decode(arrays['png'], arrays['png_offsets'], meta, path)
  return ExportedDataset(path, arrays, meta, images)


def load(path: str) -> ExportedDataset:
  """Reads (once per file version and process: runs of one process share it)
  an export; ValueError in one line naming the file when it is not one."""
  if not path or not os.path.isfile(path):
    _open(path)  # Raises its one-line error.
  st = os.stat(path)
  return _load_cached(os.path.abspath(path), st.st_mtime_ns, st.st_size)


def _fields(dataset: str, version, source_fingerprint, size, spec: dict, folds: int) -> dict:
  """{field: text} of what defines a build's data, '' where unrecorded."""
  return {'dataset': dataset or '', 'version': str(version or ''),
          'source fingerprint': source_fingerprint or '',
          'image size': 'x'.join(str(v) for v in size)
                        if size and all(isinstance(v, int) for v in size) else '',
          **{k: str(spec.get(k) or '') for k in ('roi', 'aspect', 'channels')},
          'folds': str(folds) if folds else ''}


def _num_folds(split_names) -> int:
  """k of the fold_0 ... fold_{k-1} splits (not the joined training splits)."""
  return sum(bool(re.fullmatch(r'fold_\d+', str(name))) for name in split_names)


def identity(meta: dict) -> dict:
  """What an export's data was made from (read from its meta)."""
  md = meta.get('metadata') or {}
  return _fields(f'{meta.get("name")}/{meta.get("config")}', meta.get('version'),
                 ((md.get('card') or {}).get('source') or {}).get('fingerprint'),
                 meta.get('image_size'), md.get('preprocessing') or {},
                 _num_folds(meta.get('split_sizes') or ()))

