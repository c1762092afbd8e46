"""Shared fixtures. Tests run on CPU with tiny models; real data is optional."""
import os
import pathlib

import jax
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def pytest_configure(config):
  """Identical programs (the same tiny step compiled by several tests, and by
  the `python -m smsdd_jax.main` processes tests launch) are compiled once per
  test session, through JAX's persistent cache: set in this process and, by
  environment, in every process it starts."""
  cache = getattr(config, 'cache', None)  # None under -p no:cacheprovider.
  if cache is None or os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    _runs_cache_to(os.environ.get('JAX_COMPILATION_CACHE_DIR'))
    return
  settings = {'jax_compilation_cache_dir': str(cache.mkdir('jax_compilation_cache')),
              'jax_persistent_cache_min_compile_time_secs': 0.0,
              'jax_persistent_cache_min_entry_size_bytes': -1}
  for name, value in settings.items():
    jax.config.update(name, value)
    os.environ[name.upper()] = str(value)
  _runs_cache_to(settings['jax_compilation_cache_dir'])


def _runs_cache_to(folder) -> None:
  """The runs of sweeps that tests launch use their own compilation cache
  (launch/sweep.py's --compile_cache, default in ~/.cache): the session's,
  or none; never the user's."""
  os.environ['SMSDD_COMPILE_CACHE'] = folder or ''


def _loss_ctx(seed: int = 0) -> dict:
  """A combined_loss ctx (smsdd_jax/losses.py's contract): 4 pairs, 6-d
  embeddings, drawn from `seed`."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  k = jax.random.split(jax.random.PRNGKey(seed), 3)
  return {'logits': jax.random.normal(k[0], (8, 2)),
          'labels': jnp.array([0, 1, 0, 1, 1, 0, 0, 1]),
          'emb_a': jax.random.normal(k[1], (4, 6)),
          'emb_b': jax.random.normal(k[2], (4, 6)),
          'same': jnp.array([1.0, 0.0, 0.0, 1.0]), 'rng': k[0]}


@pytest.fixture
def loss_ctx():
  """The builder of a loss ctx from a seed (`_loss_ctx`)."""
  return _loss_ctx


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """The workplace's real images, if present (SMSDD_SHARED_DATA overrides);
  tests that need them skip cleanly elsewhere."""
  root = pathlib.Path(os.environ.get('SMSDD_SHARED_DATA', REPO.parent / 'shared' / 'data'))
  if not root.is_dir():
    pytest.skip(f'shared real data not found at {root}')
  return root


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory) -> str:
  """A TFDS data_dir holding the built `synthetic_screens/small` (built once)."""
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import input_pipeline  # pylint: disable=import-outside-toplevel
  path = str(tmp_path_factory.mktemp('tfds'))
  config = default.get_config('quick')
  config.data.data_dir = path
  input_pipeline.prepare(config.data)
  return path


@pytest.fixture
def quick_config(data_dir):
  """The quick config reading the session's built dataset."""
  from configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config('quick')
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope='session')
def trained_run(tmp_path_factory, data_dir) -> str:
  """A finished 2-step quick run (a checkpoint each step), trained once per
  session for the tests that restore, score or export a run."""
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import train  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp('trained_run')
  config = default.get_config('quick')
  config.data.data_dir = data_dir
  config.batch_size = 32  # The small train split: 2 steps an epoch.
  config.num_epochs = 1
  config.log_every_steps = 1
  config.checkpoint.every_steps = 1
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


def _write_crops(root: pathlib.Path) -> pathlib.Path:
  """50 distinct small gray crops: 30 good, 10 'scratch' and 10 'oil'."""
  import cv2  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  for folder, n in (('good', 30), ('scratch', 10), ('oil', 10)):
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      small = rng.integers(0, 255, (5, 9), dtype=np.uint8)
      cv2.imwrite(str(root / folder / f'{folder}{i}.png'),
                  cv2.resize(small, (60, 30), interpolation=cv2.INTER_CUBIC))
  return root


@pytest.fixture(scope='session')
def crops_data(tmp_path_factory):
  """config.data of a tiny built image_folder set (gray crops, grouped
  5-fold, no near-duplicate grouping) and the path of its dataset export."""
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import dataset_export, input_pipeline  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp('crops')
  d = default.get_config('quick').data
  d.name, d.builder_config, d.near_dup_threshold = 'image_folder', 'none', -1
  d.manual_dir = str(_write_crops(root / 'images'))
  d.data_dir, d.kfold, d.fold = str(root / 'tfds'), 5, 0
  path = str(root / 'crops.npz')
  dataset_export.write(input_pipeline.prepare(d), d, path)
  return d, path
