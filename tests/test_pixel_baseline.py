"""launch/pixel_baseline.py: the ridge fit and the command end to end."""
import importlib.util
import json
import pathlib

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    'pixel_baseline', REPO / 'launch' / 'pixel_baseline.py')
pixel_baseline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pixel_baseline)


def test_ridge_separates_a_linearly_separable_set():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((200, 5))
  labels = (x[:, 2] - 0.5 * x[:, 0] > 0.3).astype(int)
  w = pixel_baseline.fit_ridge(x, labels, lam=1e-3)
  s = pixel_baseline.scores(x, w)
  assert np.mean((s > 0) == (labels == 1)) > 0.9
  # The direction found is the one that generated the labels.
  assert w[2] > 0 > w[0] and abs(w[1]) < abs(w[2]) / 3


def test_features_are_grey_pixels_at_the_asked_size():
  images = np.zeros((2, 110, 230, 3), np.uint8)
  images[1] = 255
  f = pixel_baseline.features(images, (4, 8))
  assert f.shape == (2, 32)
  np.testing.assert_allclose(f[0], 0.0)
  np.testing.assert_allclose(f[1], 1.0)


def test_command_on_the_built_synthetic_set(data_dir, capsys):
  assert pixel_baseline.main([f'--data_dir={data_dir}', '--size=8,16']) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for split in ('train', 'val', 'test'):
    assert result[split]['n'] > 0
    assert 0.0 <= result[split]['auroc'] <= 1.0
  # 128 features, a few dozen training images: the fit separates its own data.
  assert result['train']['auroc'] > 0.9


def test_bad_size_is_one_line_and_exit_2(data_dir, capsys):
  assert pixel_baseline.main([f'--data_dir={data_dir}', '--size=16']) == 2
  assert '--size' in capsys.readouterr().err
