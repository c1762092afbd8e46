"""TFDS builders, and `builder(config.data)`: the one way a run gets its data.

Importing a builder module registers it with tensorflow-datasets.

  synthetic_screens  the embedded default: generated raw frames, ROI at build time
  msd_screens        real raw phone-screen frames from a manual dir
  magnetic_tile      real magnetic-tile crops (manual dir or download)
  image_folder       any folder of class sub-folders

For the folder builders, `builder` derives the build's config from the
builder's named config, the run's `config.data` (aspect, channels,
near-duplicate threshold) and the source folder's fingerprint, so each
(folder content, preprocessing) pair builds into its own place under
data_dir, and a missing or unreadable folder fails even when an old build
exists. A new build prints its dataset card's summary and warnings and writes
`dataset_card.md` beside itself.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os

log = logging.getLogger(__name__)

CARD_FILE = 'dataset_card.md'


def register_all() -> None:
  """Imports every builder so `tfds.builder(name)` finds it."""
  # pylint: disable=import-outside-toplevel,unused-import
  from smsdd_jax.datasets import image_folder  # noqa: F401
  from smsdd_jax.datasets import magnetic_tile  # noqa: F401
  from smsdd_jax.datasets import msd_screens  # noqa: F401
  from smsdd_jax.datasets import synthetic_screens  # noqa: F401


@contextlib.contextmanager
def _quiet_absl():
  """TFDS logs a warning for every derived config ('Using custom data
  configuration'): that is how this module works, not news."""
  logger = logging.getLogger('absl')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def config_name(cls, data_config) -> str:
  """The named config to start from: the one asked for, else in quick mode
  the builder's QUICK_CONFIG_NAME if it has one, else its default."""
  name = data_config.builder_config
  if not name and data_config.get('quick') and getattr(cls, 'QUICK_CONFIG_NAME', None):
    name = cls.QUICK_CONFIG_NAME
  name = name or cls.DEFAULT_BUILDER_CONFIG_NAME
  if name not in cls.builder_configs:
    raise ValueError(f'config.data.builder_config={name!r}: {cls.name} has '
                     f'{sorted(cls.builder_configs)}')
  return name


def folder_config(cls, data_config):
  """The config a folder build really uses (module doc)."""
  from smsdd_jax.datasets import source  # pylint: disable=import-outside-toplevel
  base = cls.builder_configs[config_name(cls, data_config)]
  if data_config.manual_dir or cls.NEEDS_MANUAL_DIR:
    root = source.check_root(data_config.manual_dir)
    fp = source.fingerprint(root)
  else:
    root, fp = '', source.Fingerprint(source.DOWNLOAD, 0, 0)
  threshold = data_config.get('near_dup_threshold')
  threshold = base.near_dup_threshold if threshold is None else int(threshold)
  roi = base.roi
  geometry = roi if roi == 'hough' else data_config.aspect
  name = f'{base.name}_{geometry}_{data_config.channels}_t{threshold}_{fp.short}'
  return dataclasses.replace(
      base, name=name.replace('-', 'm'), aspect=data_config.aspect,
      channels=data_config.channels, near_dup_threshold=threshold,
      source_root=str(root), source_fingerprint=fp.digest,
      description=f'{base.description} Source {root or "download"} ({fp.num_files} '
                  f'files, sha256 {fp.digest[:16]}).')


def builder(data_config):
  """Builds (once per source and preprocessing) and returns the TFDS builder."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from smsdd_jax import preprocess  # pylint: disable=import-outside-toplevel
  from smsdd_jax.datasets import card, image_folder  # pylint: disable=import-outside-toplevel
  register_all()
  preprocess.Spec(aspect=data_config.aspect, channels=data_config.channels)  # Validates.
  try:
    cls = tfds.builder_cls(data_config.name)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f'config.data.name={data_config.name!r}: no such TFDS '
                     f'dataset ({str(e).splitlines()[0]})') from None
  data_dir = data_config.data_dir or None
  if issubclass(cls, image_folder.FolderBuilder):
    with _quiet_absl():
      b = cls(config=folder_config(cls, data_config), data_dir=data_dir)
  else:
    b = cls(config=config_name(cls, data_config), data_dir=data_dir)
  with _quiet_absl():
    if b.is_prepared():
      return b
  tfds.disable_progress_bar()
  with _quiet_absl():
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=data_config.manual_dir or None))
  info_card = b.info.metadata.get('card') if b.info.metadata else None
  if info_card:
    path = os.path.join(b.data_dir, CARD_FILE)
    with open(path, 'w') as f:
      f.write(card.to_markdown(info_card))
    print(card.summary_line(info_card), flush=True)
    for warning in info_card['warnings']:
      print(f'  warning: {warning}', flush=True)
    print(f'  dataset card: {path}', flush=True)
  return b
