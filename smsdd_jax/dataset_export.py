"""A built dataset as one file that trains without TensorFlow.

  python -m smsdd_jax.dataset_export --data=msd_screens \
      --manual_dir=DIR [--set=KEY=VALUE ...] [--out=PATH]

builds (or reuses) the TFDS dataset a run with these `config.data` settings
reads, exactly as `python -m smsdd_jax.main` would, and writes every example
of it once into one file, by default `exports/<name>_<height>x<width>.npz`.
A file there holding an export of other data (another folder, aspect,
channel count, size: `identity`) is never replaced (one line, exit 2; the
same build again is allowed), nor is a folder or a device named by --out.
A run reads that file with `--config.data.source=export
--config.data.export_path=PATH` (smsdd_jax/numpy_pipeline.py: the same pairs
and eval batches, in numpy) and then imports no TensorFlow: what a machine
without TensorFlow (the GPU machine) needs. Writing needs TensorFlow (it reads
the TFDS build); `load` needs numpy and OpenCV only. Where an export meets a
run (launch/prediction_gains.py, localization.py, report --export) `check_run`
refuses one of other data than the run recorded.

The file is a plain .npz (read with allow_pickle=False):

  png, png_offsets  every example's image once, PNG-encoded (lossless): the
                    build's model inputs; one channel when every image of the
                    set is gray (R = G = B, e.g. magnetic tiles: a third of
                    the bytes), else RGB. Example i is png[offsets[i]:offsets[i+1]].
  label             int64, 0 good / 1 defective
  defect_type       str ('' where the build has no defect types)
  file_name         str ('' where the build has no file names)
  group             int64 near-duplicate group (-1 where the build has none)
  mask_png, mask_offsets
                    only where the build has a `mask` feature (magnetic_tile):
                    every example's defect mask, one channel, PNG, as png
  split/<name>      int64 indices of every TFDS split's examples (train,
                    validation, test, fold_0, ...) in the order TFDS reads them,
                    and of each k-fold training split ('fold_1+fold_2+fold_3'):
                    TFDS interleaves the pieces of such a split as it reads them
  meta              JSON: format, dataset, config, version, image size, the
                    channels stored, the build's metadata (dataset card,
                    preprocessing, source fingerprint), the config.data it was
                    made with and the sha256 of the arrays above

An example in several splits (train and fold_3) is stored once.

Why not TFDS' array_record files read by Grain: neither package is on the GPU
machine (they would travel as wheels with their own dependencies), a TFDS
build stores each example once per split it is in (magnetic_tile: 114 MB,
past what travels), and the pair rule (two class-conditional streams, each
class reshuffled per pass) is this project's own code under any reader.
"""
from __future__ import annotations

import argparse
import ast
import functools
import hashlib
import json
import os
import re
import sys
import types
import zipfile
import zlib
from typing import Optional

import cv2
import numpy as np

FORMAT = 'smsdd_jax.dataset_export/1'
DEFAULT_DIR = 'exports'
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
      from smsdd_jax import preprocess  # pylint: disable=import-outside-toplevel
      self._normalized = (None, None, None)  # Frees the old arrays first.
      images = preprocess.normalize(self.images, stats)
      self._normalized = (key, images, images.mean(axis=(1, 2), keepdims=True))
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


# ------------------------------------------------------------------ what made it


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


def build_identity(builder) -> dict:
  """identity() of the export a TFDS build would be written as."""
  md = dict(builder.info.metadata or {})
  return _fields(f'{builder.name}/{builder.builder_config.name}', builder.version,
                 ((md.get('card') or {}).get('source') or {}).get('fingerprint'),
                 builder.info.features['image'].shape[:2], md.get('preprocessing') or {},
                 _num_folds(builder.info.splits.keys()))


def run_identity(workdir: str) -> tuple[dict, str]:
  """identity() of the data a run was trained on, from its
  preprocessing.json and config.json (whatever it recorded), and the files
  read. `builder`: config.json's data.name."""
  from smsdd_jax import rundir  # pylint: disable=import-outside-toplevel
  data = rundir.read_config(workdir).get('data') or {}
  pre_path = os.path.join(workdir, rundir.PREPROCESSING)
  pre = rundir.read_json(pre_path, 'preprocessing record') if os.path.isfile(pre_path) else {}
  if not isinstance(pre, dict):
    raise ValueError(f'{pre_path}: not a preprocessing record (remove it and rerun the run)')
  fields = _fields(pre.get('dataset'), pre.get('version'), pre.get('source_fingerprint'),
                   pre.get('size') or data.get('image_size'), pre or data,
                   int(data.get('kfold') or 0))
  if pre.get('export_sha256'):
    fields['sha256'] = pre['export_sha256']
  fields['builder'] = str(data.get('name') or '')
  files = rundir.CONFIG + (f' and {rundir.PREPROCESSING}' if pre else '')
  return fields, files


def differences(have: dict, want: dict) -> list[str]:
  """'field A vs B' for each field both record and that differs."""
  def short(key, value):  # A digest: its first 16 hex digits say enough.
    return value[:16] if key in ('source fingerprint', 'sha256') else value
  return [f'{k} {short(k, have[k])} vs {short(k, want[k])}' for k in have
          if k in want and have[k] and want[k] and have[k] != want[k]]


def check_run(export: ExportedDataset, workdir: str) -> None:
  """ExportError in one line naming both when `export` does not hold the
  data the run in `workdir` was trained on (its build, preprocessing, image
  size and folds as the run recorded them)."""
  run, files = run_identity(workdir)
  have = {**export.fingerprint, 'builder': export.name}
  diffs = differences(have, run)
  if diffs:
    raise ExportError(
        f'{export.path} is not the data run {workdir} was trained on ({"; ".join(diffs)}: '
        f'the export vs the run\'s {files}): pass the export of the run\'s build')


def check_replace(path: str, builder) -> None:
  """Refuses (ExportError, one line) to write over `path` when it holds
  something other than an export of the same build: an export of another
  folder, aspect, channel count or size, or a file that is no export.
  Re-exporting the same build is allowed."""
  if not os.path.lexists(path):
    return
  try:
    old = identity(read_meta(path))
  except ValueError as e:
    raise ExportError(f'--out={path} exists and is not a readable dataset export ({e}); '
                      'not replaced: remove it or pass another --out') from None
  diffs = differences(old, build_identity(builder))
  if diffs:
    raise ExportError(f'--out={path} holds an export of other data ({"; ".join(diffs)}: '
                      'that file vs this build); not replaced: pass --out=ANOTHER.npz, or '
                      'remove it first')


def check_out(path: str) -> str:
  """The file to write for --out=path, checked before any work: a folder or
  a device, FIFO or socket is refused (an export is a file that runs read
  back; writing a temporary file and renaming it over a node would replace
  the node). Through a symbolic link its target is written, the link kept."""
  target = os.path.realpath(path)
  if os.path.isdir(target):
    raise ExportError(f'--out={path} is a directory: name a file, e.g. {path}/data.npz')
  if os.path.exists(target) and not os.path.isfile(target):
    raise ExportError(f'--out={path} is not a regular file (a device, FIFO or socket): '
                      'an export is a file runs read back; name a .npz path')
  try:
    os.makedirs(os.path.dirname(target), exist_ok=True)
  except OSError as e:
    raise ExportError(f'--out={path}: cannot create its folder ({e.strerror or e})') from None
  return target


# ------------------------------------------------------------------ writing


def _json_safe(value):
  """Builder metadata -> plain JSON types (numpy scalars and arrays too)."""
  if isinstance(value, dict):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, bytes):
    return value.decode('utf-8', 'replace')
  return value


def _png(image: np.ndarray) -> bytes:
  if image.shape[-1] == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  ok, buf = cv2.imencode('.png', np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, 9])
  if not ok:
    raise ValueError('PNG encoding failed')
  return buf.tobytes()


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def kfold_train_splits(split_names) -> list[str]:
  """The training split strings of every fold of the builder's k-fold
  splits (fold_0 ... fold_{k-1}), as a k-fold run asks for them."""
  from smsdd_jax.datasets import splits  # pylint: disable=import-outside-toplevel
  k = sum(name.startswith('fold_') for name in split_names)
  if k < 3 or set(splits.kfold_split_names(k)) - set(split_names):
    return []
  return [splits.kfold_splits(k, i)['train'] for i in range(k)]


def _read_build(builder) -> tuple[list[dict], dict[str, list[int]]]:
  """Every example of every split once (keyed by file name, label and
  pixels) and each split's example indices in reading order, k-fold
  training splits included."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  features = builder.info.features
  type_names = getattr(features['defect_type'], 'names', None) \
      if 'defect_type' in features else None
  examples, index_of, splits = [], {}, {}
  for split in sorted(builder.info.splits.keys()):
    order = []
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
      image = np.asarray(ex['image'], np.uint8)
      defect = ''
      if 'defect_type' in ex:
        defect = type_names[int(ex['defect_type'])] if type_names else _text(ex['defect_type'])
      row = {'image': image, 'label': int(ex['label']), 'defect_type': defect,
             'file_name': _text(ex.get('file_name', b'')), 'group': int(ex.get('group', -1))}
      if 'mask' in ex:
        row['mask'] = np.asarray(ex['mask'], np.uint8).reshape(image.shape[:2])
      key = (row['file_name'], row['label'], hashlib.sha256(image.tobytes()).hexdigest())
      if key not in index_of:
        index_of[key] = len(examples)
        examples.append(row)
      order.append(index_of[key])
    splits[split] = order
  by_name = {ex['file_name']: i for i, ex in enumerate(examples)}
  combined = kfold_train_splits(splits)
  if combined and (len(by_name) != len(examples) or '' in by_name):
    raise ValueError(f'{builder.name}: k-fold splits need unique file names to export')
  for split in combined:
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()})
    splits[split] = [by_name[_text(ex['file_name'])] for ex in tfds.as_numpy(ds.map(
        lambda ex: {'file_name': ex['file_name']}))]
  return examples, splits


def to_arrays(examples: list[dict], splits: dict[str, list[int]]) -> tuple[dict, int]:
  """The file's arrays (module doc) and the channels stored."""
  gray = all(np.array_equal(ex['image'][..., :1].repeat(3, -1), ex['image'])
             for ex in examples)
  blobs = [_png(ex['image'][..., :1] if gray else ex['image']) for ex in examples]
  offsets = np.zeros(len(blobs) + 1, np.int64)
  offsets[1:] = np.cumsum([len(b) for b in blobs])
  arrays = {'png': np.frombuffer(b''.join(blobs), np.uint8), 'png_offsets': offsets,
            'label': np.asarray([ex['label'] for ex in examples], np.int64),
            'defect_type': np.asarray([ex['defect_type'] for ex in examples], str),
            'file_name': np.asarray([ex['file_name'] for ex in examples], str),
            'group': np.asarray([ex['group'] for ex in examples], np.int64)}
  if examples and all('mask' in ex for ex in examples):
    masks = [_png(ex['mask'][..., None]) for ex in examples]
    mask_offsets = np.zeros(len(masks) + 1, np.int64)
    mask_offsets[1:] = np.cumsum([len(b) for b in masks])
    arrays.update(mask_png=np.frombuffer(b''.join(masks), np.uint8), mask_offsets=mask_offsets)
  for name, order in splits.items():
    arrays[f'split/{name}'] = np.asarray(order, np.int64)
  return arrays, 1 if gray else 3


def write(builder, data_config, path: str) -> ExportedDataset:
  """Writes the export of a built TFDS dataset (atomically) and returns it
  as `load` reads it back. Refuses (ExportError) a path that is a folder or
  a device, or that holds an export of other data (check_out, check_replace)."""
  from smsdd_jax import rundir  # pylint: disable=import-outside-toplevel
  target = check_out(path)
  check_replace(path, builder)
  examples, splits = _read_build(builder)
  if not examples:
    raise ValueError(f'{builder.name}: the build holds no examples')
  arrays, channels = to_arrays(examples, splits)
  features = builder.info.features
  meta = {
      'format': FORMAT, 'name': builder.name, 'config': builder.builder_config.name,
      'version': str(builder.version),
      'image_size': [int(v) for v in examples[0]['image'].shape[:2]],
      'stored_channels': channels, 'has_defect_types': 'defect_type' in features,
      'has_masks': 'mask_png' in arrays,
      'num_examples': len(examples), 'split_sizes': {k: len(v) for k, v in splits.items()},
      'metadata': _json_safe(dict(builder.info.metadata or {})),
      'data': _json_safe(data_config.to_dict()), 'sha256': digest(arrays)}
  with rundir.atomic_file(target, 'wb') as f:
    np.savez(f, meta=np.asarray(json.dumps(meta)), **arrays)
  return load(path)


def default_path(data_config) -> str:
  from smsdd_jax import datasets  # pylint: disable=import-outside-toplevel
  h, w = datasets.image_size(data_config)  # Checked: one line naming the field.
  return os.path.join(DEFAULT_DIR, f'{data_config.name}_{int(h)}x{int(w)}.npz')


# ------------------------------------------------------------------ command line


def _value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # A bare word: a string.


def data_config_from(args):
  """configs/default.py's config.data with the command line's settings."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  if repo not in sys.path:
    sys.path.insert(0, repo)
  from configs import default  # pylint: disable=import-outside-toplevel
  data = default.get_config().data
  settings = {'name': args.data, 'builder_config': args.builder_config,
              'manual_dir': args.manual_dir, 'data_dir': args.data_dir}
  for item in args.set:
    key, sep, value = item.partition('=')
    if not sep or not key.strip():
      raise ValueError(f'--set={item!r}: expected KEY=VALUE, e.g. image_size=(110,230)')
    settings[key.strip().removeprefix('data.')] = _value(value)
  for key, value in settings.items():
    if value is None:
      continue
    if key not in data or key in ('source', 'export_path'):
      raise ValueError(f'--set: config.data has no field {key!r} to build with')
    value = tuple(value) if isinstance(value, list) else value
    try:
      data[key] = value
    except TypeError:  # ml_collections keeps each field's type.
      example = repr(data[key]).replace(' ', '')
      raise ValueError(f'--set={key}={value!r}: config.data.{key} is a '
                       f'{type(data[key]).__name__}, e.g. --set={key}={example}') from None
  return data


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m smsdd_jax.dataset_export',
                              description=__doc__.splitlines()[0])
  p.add_argument('--data', default=None, help='config.data.name (TFDS builder)')
  p.add_argument('--builder_config', default=None, help='config.data.builder_config')
  p.add_argument('--manual_dir', default=None, help='config.data.manual_dir')
  p.add_argument('--data_dir', default=None, help='config.data.data_dir (TFDS data_dir)')
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='any other config.data field, e.g. image_size=(110,230) (repeatable)')
  p.add_argument('--out', default='', help='the file to write (default '
                 'exports/<name>_<height>x<width>.npz)')
  return p


def main(argv: Optional[list[str]] = None) -> int:
  args = parser().parse_args(argv)
  try:
    data_config = data_config_from(args)
    path = args.out or default_path(data_config)
    check_out(path)  # Before the build: a folder or a device is refused at once.
    from smsdd_jax import input_pipeline  # pylint: disable=import-outside-toplevel
    builder = input_pipeline.prepare(data_config)
    export = write(builder, data_config, path)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{path}: {export.describe()}; {os.path.getsize(path) / 2 ** 20:.1f} MiB')
  return 0


if __name__ == '__main__':
  sys.exit(main())
