"""Exports of a real (tiny) run: jax.export and the jax2tf SavedModel."""
import json

import numpy as np
import pytest
from jax import export as jax_export

from smsdd_jax import export
from smsdd_jax import inference


@pytest.fixture(scope='module')
def run_dir(trained_run):
  return trained_run


@pytest.fixture(scope='module')
def predictor(run_dir):
  return inference.Predictor(run_dir, batch_size=8)


@pytest.fixture(scope='module')
def exported(run_dir, tmp_path_factory):
  out = tmp_path_factory.mktemp('export')
  assert export.main([f'--workdir={run_dir}', f'--out={out}']) == 0
  return out


def _rois(n, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (n, 110, 230, 3), dtype=np.uint8)


def test_jax_export_round_trips_with_a_symbolic_batch(exported, predictor):
  with open(exported / export.JAX_EXPORT_NAME, 'rb') as f:
    restored = jax_export.deserialize(bytearray(f.read()))
  assert jax_export.is_symbolic_dim(restored.in_avals[0].shape[0])
  assert restored.in_avals[0].shape[1:] == (110, 230, 3)
  assert str(restored.in_avals[0].dtype) == 'uint8'
  assert set(restored.platforms) == {'cpu', 'cuda'}
  for n in (5, 2):  # Two batch sizes, one artifact.
    x = _rois(n, seed=n)
    np.testing.assert_allclose(np.asarray(restored.call(x)), predictor.predict_proba(x),
                               atol=1e-5)


def test_saved_model_round_trips(exported, predictor):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  loaded = tf.saved_model.load(str(exported / export.SAVED_MODEL_NAME))
  x = _rois(4)
  want = predictor.predict_proba(x)
  np.testing.assert_allclose(loaded.serve(tf.constant(x))['prob_defective'].numpy(), want,
                             atol=1e-5)
  out = loaded.signatures['serving_default'](images=tf.constant(x[:3]))
  np.testing.assert_allclose(out['prob_defective'].numpy(), want[:3], atol=1e-5)


def test_export_info_records_the_run(exported, predictor):
  info = json.load(open(exported / export.INFO_NAME))
  assert info['input']['shape'] == [None, 110, 230, 3]
  assert info['threshold'] == 0.5 and info['checkpoint']['step'] == predictor.run.step
  assert info['artifacts']['jax_export']['verified']
  assert info['artifacts']['jax_export']['batch'] == 'symbolic'
  assert info['artifacts']['saved_model']['verified']


def test_fixed_batch_export(predictor, tmp_path):
  path = tmp_path / 'fixed.jax_export'
  exp, note = export.export_jax(predictor, str(path), platforms=('cpu',), fixed_batch=4)
  assert note == 'fixed 4' and exp.in_avals[0].shape == (4, 110, 230, 3)
  restored = jax_export.deserialize(bytearray(path.read_bytes()))
  x = _rois(4)
  np.testing.assert_allclose(np.asarray(restored.call(x)), predictor.predict_proba(x),
                             atol=1e-5)


def test_export_usage_errors(tmp_path, capsys):
  assert export.main([f'--workdir={tmp_path / "missing"}']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and err.count('\n') == 1 and 'missing' in err
  assert export.main([f'--workdir={tmp_path}']) == 2  # Empty: no run there.
  assert 'is empty' in capsys.readouterr().err
