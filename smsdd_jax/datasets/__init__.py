"""TFDS builders, and `builder(config.data)`: the one way a run gets its data.

Importing a builder module registers it with tensorflow-datasets.

  synthetic_screens  the embedded default: generated raw frames, ROI at build time
  msd_screens        real raw phone-screen frames from a manual dir
  magnetic_tile      real magnetic-tile crops (manual dir or download)
  image_folder       any folder of class sub-folders

For the folder builders, `builder` derives the build's config from the
builder's named config, the run's `config.data` (aspect, channels,
near-duplicate threshold, image size) and the source folder's fingerprint, so
each (folder content, preprocessing) pair builds into its own place under
data_dir, and a missing or unreadable folder fails even when an old build
exists. The input size (`config.data.image_size`) is in the config name
unless it is the paper's 110 x 230 (`size_tag`: builds made before sizes
could change keep their names); `synthetic_screens` takes it the same way. A new build prints its dataset card's summary and warnings and writes
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


def image_size(data_config) -> tuple[int, int]:
  """config.data.image_size as (height, width), checked."""
  from smsdd_jax import preprocess  # pylint: disable=import-outside-toplevel
  size = data_config.get('image_size') or preprocess.ROI_SIZE
  try:
    h, w = (int(v) for v in size)
  except (TypeError, ValueError):
    raise ValueError(f'config.data.image_size={size!r}: expected (height, width), '
                     'e.g. (110, 230)') from None
  if min(h, w) < 1:
    raise ValueError(f'config.data.image_size={size!r}: both sides must be >= 1')
  return h, w


def size_tag(size) -> str:
  """'_<h>x<w>' for a build's config name; '' for the default size, so
  builds made before the size could change keep their names."""
  from smsdd_jax import preprocess  # pylint: disable=import-outside-toplevel
  h, w = size
  return '' if (h, w) == tuple(preprocess.ROI_SIZE) else f'_{h}x{w}'


def sized_config(cls, data_config):
  """A builder without a folder (synthetic_screens): its named config, at
  config.data.image_size when its configs have a size."""
  name = config_name(cls, data_config)
  base = cls.builder_configs[name]
  size = image_size(data_config)
  if not hasattr(base, 'size') or tuple(base.size) == size:
    return name
  return dataclasses.replace(base, name=f'{name}{size_tag(size)}', size=size,
                             description=f'{base.description} Inputs {size[0]}x{size[1]}.')


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
  size = image_size(data_config)
  geometry = (roi if roi == 'hough' else data_config.aspect) + size_tag(size)
  name = f'{base.name}_{geometry}_{data_config.channels}_t{threshold}_{fp.short}'
  return dataclasses.replace(
      base, name=name.replace('-', 'm'), aspect=data_config.aspect,
      channels=data_config.channels, near_dup_threshold=threshold,
      source_root=str(root), source_fingerprint=fp.digest, size=size,
      description=f'{base.description} Source {root or "download"} ({fp.num_files} '
                  f'files, sha256 {fp.digest[:16]}).')


def builder(data_config):
  """Builds (once per source and preprocessing) and returns the TFDS builder."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from smsdd_jax import preprocess  # pylint: disable=import-outside-toplevel
  from smsdd_jax.datasets import card, image_folder  # pylint: disable=import-outside-toplevel
  register_all()
  preprocess.Spec(aspect=data_config.aspect, channels=data_config.channels,
                  size=image_size(data_config))  # Validates.
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
    with _quiet_absl():
      b = cls(config=sized_config(cls, data_config), data_dir=data_dir)
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
