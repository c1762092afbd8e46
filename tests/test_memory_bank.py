"""The memory bank (smsdd_jax/memory_bank.py): nearest-cell distances against
brute force, a bank image's own cells at distance 0, a pasted defect above its
clean twin, provenance (a bank of another checkpoint or model refused), the
bank's images from the run's training split only, and the command."""
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smsdd_jax import (dataset_export, export_reader, inference, input_pipeline, maps,
                       memory_bank, rundir)
from smsdd_jax.memory_bank import __main__ as command

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def predictor(trained_run):
  return inference.Predictor(trained_run, batch_size=4)


def _textures(n, size, seed):
  """Good-looking images: a smooth gradient with fine noise, gray as RGB."""
  rng = np.random.default_rng(seed)
  h, w = size
  out = []
  for _ in range(n):
    ramp = np.linspace(0, 1, w)[None] * rng.uniform(40, 80) + rng.uniform(80, 120)
    grey = ramp + rng.normal(0, 6, (h, w))
    out.append(np.repeat(np.clip(grey, 0, 255)[..., None], 3, -1))
  return np.asarray(out, np.uint8)


# ------------------------------------------------------------------ pieces


def test_upsample_is_maps_to_input_grid():
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 6, 14))
  for stride, size in ((16, (110, 230)), (4, (27, 57)), (1, (6, 14))):
    got = memory_bank.upsample(x[..., None], size, stride)[..., 0]
    np.testing.assert_allclose(got, maps.to_input_grid(x, size, stride), rtol=1e-6, atol=1e-6)


def test_nearest_distance_is_brute_force_and_zero_on_bank_rows():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(37, 5)).astype(np.float32) * 3
  queries = np.concatenate([rng.normal(size=(20, 5)).astype(np.float32), bank[[3, 17, 36]]])
  want = np.sqrt(((queries[:, None] - bank[None]) ** 2).sum(-1)).min(1)
  got = np.asarray(memory_bank.nearest_distance(jnp.asarray(queries), jnp.asarray(bank),
                                                chunk=8))  # 23 queries: a padded chunk.
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert (got[-3:] == 0).all()


def test_greedy_coreset_picks_the_farthest_each_time():
  points = np.array([[0.], [1.], [2.], [10.], [4.], [9.5]], np.float32)
  picked = np.asarray(memory_bank.greedy_coreset(jnp.asarray(points), 3, 0))
  assert picked.tolist() == [0, 3, 4]  # 0, then 10 (farthest), then 4 (4 from 0, 6 from 10).
  kept = memory_bank.subsample(points, 3, 'greedy', seed=0)
  assert len(kept) == 3 and len(set(kept.tolist())) == 3
  assert len(memory_bank.subsample(points, 99, 'random', seed=0)) == len(points)
  with pytest.raises(ValueError, match='sampling'):
    memory_bank.subsample(points, 3, 'kmeans', seed=0)


def test_taps_are_the_backbones():
  assert memory_bank.parse_taps('block5+block4', 'vgg16') == ('block4', 'block5')
  with pytest.raises(ValueError, match='tap='):
    memory_bank.parse_taps('block9', 'vgg16')


# ------------------------------------------------------------------ with a run


def test_a_bank_images_own_cells_are_at_distance_zero(predictor):
  images = _textures(3, predictor.image_size, seed=0)
  bank = memory_bank.build(predictor, images, tap='block4+block5', max_cells=10 ** 6,
                           sampling='random')
  assert bank.record['cells_kept'] == bank.record['cells_total']  # Every cell kept.
  grid = bank.distances(images)
  assert grid.shape == (3, 13, 28) and (grid == 0).all()
  heat = bank.maps(images)
  assert heat.shape == (3, *predictor.image_size) and (heat == 0).all()
  other = bank.distances(_textures(2, predictor.image_size, seed=1))
  assert (other > 0).all()


def test_position_statistics_centre_the_training_images(predictor):
  images = _textures(6, predictor.image_size, seed=2)
  bank = memory_bank.build(predictor, images, tap='block4', max_cells=200, sampling='random')
  assert bank.record['position'] == 'z' and bank.position_mean.shape == (13, 28)
  z = bank.standardised(bank.distances(images))
  np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
  raw = memory_bank.build(predictor, images, tap='block4', max_cells=200, sampling='random',
                          position='none')
  assert raw.position_mean is None
  np.testing.assert_array_equal(raw.standardised(raw.distances(images)),
                                raw.distances(images))
  assert (bank.maps(images) >= 0).all()  # Below what good images show is nothing.


def test_a_pasted_defect_scores_above_its_clean_twin(predictor):
  good = _textures(12, predictor.image_size, seed=0)
  bank = memory_bank.build(predictor, good, tap='block3', max_cells=4096, sampling='greedy')
  clean = _textures(4, predictor.image_size, seed=5)
  defect = clean.copy()
  h, w = predictor.image_size
  defect[:, 40:56, 100:116] = 10  # A dark blowhole-sized blot.
  mask = np.zeros((h, w), np.uint8)
  mask[40:56, 100:116] = 255
  assert (bank.scores(defect) > bank.scores(clean)).all()
  heat = bank.maps(defect)
  assert np.mean([maps.pixel_auroc(m, mask) for m in heat]) > 0.9
  assert heat.max() > bank.maps(clean).max()  # Absolute: one scale for every image.


def test_saved_bank_loads_for_its_run_and_is_refused_elsewhere(predictor, trained_run,
                                                              tmp_path):
  images = _textures(3, predictor.image_size, seed=0)
  bank = memory_bank.build(predictor, images, tap='block5', max_cells=64, seed=3)
  path = str(tmp_path / 'bank.npz')
  bank.save(path)
  again = memory_bank.load(path, predictor)
  probe = _textures(2, predictor.image_size, seed=9)
  np.testing.assert_array_equal(again.distances(probe), bank.distances(probe))
  assert again.record['run']['step'] == predictor.run.step
  np.testing.assert_array_equal(again.position_std, bank.position_std)
  np.testing.assert_array_equal(again.maps(probe), bank.maps(probe))

  steps = rundir.finished_steps(os.path.join(trained_run, rundir.CHECKPOINTS))
  other_step = inference.Predictor(trained_run, step=min(steps), batch_size=4)
  assert other_step.run.step != predictor.run.step
  with pytest.raises(ValueError, match='another run or checkpoint'):
    memory_bank.load(path, other_step)
  other_model = inference.Predictor(trained_run, batch_size=4)  # Same step, other weights.
  other_model.params = jax.tree_util.tree_map(lambda x: x * 1.01, other_model.params)
  with pytest.raises(ValueError, match='another run or checkpoint'):
    memory_bank.load(path, other_model)
  (tmp_path / 'not.npz').write_bytes(b'no')
  with pytest.raises(ValueError, match='not a memory bank'):
    memory_bank.load(str(tmp_path / 'not.npz'), predictor)


# ------------------------------------------------------------------ which images


def _held_out(export, data_config):
  _, held_out = memory_bank.training_split(data_config)
  return np.concatenate([export.indices(s) for s in held_out])


def test_bank_images_come_from_the_training_split_only(crops_data):
  data_config, path = crops_data
  export = export_reader.load(path)
  index, source = memory_bank.good_indices(export, data_config)
  assert source['split'] == 'fold_2+fold_3+fold_4' and source['held_out'] == ['fold_1',
                                                                              'fold_0']
  train = export.indices(source['split'])
  assert set(index) == set(train[export.labels[train] == 0])
  assert not set(index) & set(_held_out(export, data_config))
  assert (export.labels[index] == 0).all()


@pytest.fixture(scope='module')
def run_export(trained_run, tmp_path_factory):
  """An export of the trained run's own data."""
  config = rundir.run_config(rundir.read_config(trained_run))
  path = str(tmp_path_factory.mktemp('export') / 'build.npz')
  dataset_export.write(input_pipeline.prepare(config.data), config.data, path)
  return path


def test_command_writes_a_bank_of_training_images_and_refuses_inputs(trained_run, run_export,
                                                                     crops_data, tmp_path,
                                                                     capsys):
  out = str(tmp_path / 'b.npz')
  base = [f'--workdir={trained_run}', f'--export={run_export}', '--max_cells=256',
          '--tap=block5']
  assert command.main(base + [f'--out={out}']) == 0
  assert 'wrote' in capsys.readouterr().out
  predictor = inference.Predictor(trained_run, batch_size=4)
  bank = memory_bank.load(out, predictor, export=export_reader.load(run_export))
  export = export_reader.load(run_export)
  assert len(bank.indices) and not set(bank.indices) & set(
      _held_out(export, predictor.config.data))
  assert (export.labels[bank.indices] == 0).all()
  assert command.main(base + [f'--out={out}']) == 0  # A bank replaces a bank.

  for bad, why in ((run_export, 'is the --export file'),
                   (os.path.join(trained_run, rundir.CONFIG), "run's own files"),
                   (str(tmp_path), 'is a directory')):
    assert command.main(base + [f'--out={bad}']) == 2
    assert why in capsys.readouterr().err
  (tmp_path / 'other.npz').write_bytes(b'keep me')
  assert command.main(base + [f'--out={tmp_path / "other.npz"}']) == 2
  assert (tmp_path / 'other.npz').read_bytes() == b'keep me'
  _, crops = crops_data  # An export of other data than the run's.
  assert command.main([f'--workdir={trained_run}', f'--export={crops}',
                           f'--out={tmp_path / "c.npz"}']) == 2
  assert 'not the data run' in capsys.readouterr().err


def test_real_export_banks_never_hold_validation_or_test_images(shared_data):
  """On magnetic_tile's export (when made here): for every fold of the
  grouped 5-fold, the bank's images are good training images of that fold."""
  path = REPO / 'exports' / 'magnetic_tile_110x230.npz'
  if not path.is_file():
    pytest.skip('no magnetic_tile export here (python -m smsdd_jax.dataset_export)')
  del shared_data
  import ml_collections  # pylint: disable=import-outside-toplevel
  export = export_reader.load(str(path))
  for fold in range(5):
    config = ml_collections.ConfigDict({'kfold': 5, 'fold': fold, 'train_split': 'train',
                                        'val_split': 'validation', 'test_split': 'test'})
    index, _ = memory_bank.good_indices(export, config)
    assert len(index) > 100
    assert not set(index) & set(export.indices(f'fold_{fold}'))
    assert not set(index) & set(export.indices(f'fold_{(fold + 1) % 5}'))


# ------------------------------------------------------------------ launch/anomaly_scores.py


def _anomaly_scores():
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('anomaly_scores',
                                                REPO / 'launch' / 'anomaly_scores.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_scores_are_fitted_on_validation_only():
  scores = _anomaly_scores()
  rng = np.random.default_rng(0)
  labels = np.r_[np.zeros(60), np.ones(20)].astype(int)
  val = {'prob': np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.1, 80), 0.01, 0.99),
         'distance': np.exp(labels + rng.normal(0, 0.5, 80))}
  test = {k: v[::-1].copy() for k, v in val.items()}
  first = scores.combined_scores(val, test, labels)
  other = {k: v * 0 + v.mean() for k, v in test.items()}  # Test changed: validation's fit not.
  second = scores.combined_scores(val, other, labels)
  for name in first:
    np.testing.assert_array_equal(first[name][0], second[name][0])
  # Balanced weights: a score that separates the classes puts 0.5 between them,
  # whatever the classes' shares.
  fit = scores.fit_logistic(np.r_[np.zeros(90), np.ones(10)], np.r_[np.zeros(90), np.ones(10)])
  assert fit(np.array([0.0]))[0] < 0.5 < fit(np.array([1.0]))[0]
  report = scores.score_report(labels, first['logistic'][0],
                               np.where(labels == 1, 'uneven', 'none'), 0.5)
  assert 0 <= report['overkill_at_half_uneven'] <= 1 and report['auroc'] > 0.8
