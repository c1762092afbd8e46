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
the TFDS build); `load` (smsdd_jax/export_reader.py) needs numpy and OpenCV
only. Where an export meets a run (launch/prediction_gains.py,
localization.py, report --export) `check_run` refuses one of other data than
the run recorded.

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
import hashlib
import json
import os
import sys
from typing import Optional

import cv2
import numpy as np

# Reading lives in export_reader, below both pipelines (this module's command
# builds through them); the names callers know from here.
from smsdd_jax.export_reader import (  # noqa: F401  pylint: disable=unused-import
    FORMAT, ExportedDataset, ExportError, _decode, _fields, _num_folds, digest, identity,
    load, read_meta)

DEFAULT_DIR = 'exports'


# ------------------------------------------------------------------ what made it


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
