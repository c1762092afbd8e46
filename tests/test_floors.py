"""launch/floors.py: the features, linear fits and boosted trees by hand, the
command end to end."""
import importlib.util
import json
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('floors', REPO / 'launch' / 'floors.py')
floors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(floors)


def _separable(n=200):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, 5))
  return x, (x[:, 2] - 0.5 * x[:, 0] > 0.3).astype(int)


def test_ridge_separates_a_linearly_separable_set():
  x, labels = _separable()
  w = floors.fit_ridge(x, labels, lam=1e-3)
  s = floors.scores(x, w)
  assert np.mean((s > 0) == (labels == 1)) > 0.9
  # The direction found is the one that generated the labels.
  assert w[2] > 0 > w[0] and abs(w[1]) < abs(w[2]) / 3


def test_logistic_regression_reaches_its_optimum_and_shrinks_with_lambda():
  x, labels = _separable()
  w = floors.fit_logistic(x, labels, lam=1.0)
  # Stationary point of sum log-loss + lam/2 |w|^2 (bias unpenalised).
  xb = np.c_[x, np.ones(len(x))]
  grad = xb.T @ (floors.sigmoid(xb @ w) - labels) + np.r_[w[:-1], 0.0]
  np.testing.assert_allclose(grad, 0.0, atol=1e-6)
  assert w[2] > 0 > w[0] and np.mean((floors.scores(x, w) > 0) == (labels == 1)) > 0.9
  strong = floors.fit_logistic(x, labels, lam=1e4)
  assert np.linalg.norm(strong[:-1]) < 0.1 * np.linalg.norm(w[:-1])


def test_pixel_features_are_grey_pixels_at_the_asked_size():
  images = np.zeros((2, 110, 230, 3), np.uint8)
  images[1] = 255
  f = floors.pixel_features(images, (4, 8))
  assert f.shape == (2, 32)
  np.testing.assert_allclose(f[0], 0.0)
  np.testing.assert_allclose(f[1], 1.0)
  # One-channel images (config.data.channels = 1) read the same.
  np.testing.assert_allclose(floors.pixel_features(images[..., :1], (4, 8)), f)


def test_anomaly_stats_of_a_flat_image_and_of_one_dark_spot():
  named = lambda im: dict(zip(floors.ANOMALY_FEATURES, floors.anomaly_stats(im)))
  flat = np.full((110, 230, 3), 128, np.uint8)
  assert len(floors.ANOMALY_FEATURES) == 14
  s = named(flat)
  for key in ('residual_p1', 'residual_p99', 'residual_std', 'dark_fraction',
              'bright_fraction', 'largest_blob_fraction', 'gradient_energy', 'grey_std'):
    assert s[key] == 0.0, key
  assert s['grey_mean'] == pytest.approx(128 / 255)
  spot = flat.copy()
  spot[50:55, 100:105] = 0  # 25 pixels; the 11 x 11 median still sees grey there.
  s = named(spot)
  assert s['dark_fraction'] == pytest.approx(25 / (110 * 230))
  assert s['largest_blob_fraction'] == pytest.approx(25 / (110 * 230))
  assert s['bright_fraction'] == 0.0 and s['residual_p1'] == 0.0  # 25 px < 1% of 25300.
  assert s['gradient_energy'] > 0


def test_hog_of_an_edge_and_of_a_flat_image():
  assert floors.hog_size((110, 230), 64, 16) == (64, 128)
  flat = np.full((64, 128), 77, np.uint8)
  np.testing.assert_array_equal(floors.hog(flat, 16), 0.0)
  edge = flat.copy()
  edge[:, 64:] = 200  # A vertical edge: gradient along x, orientation 0 degrees.
  h = floors.hog(edge, 16).reshape(3 * 7, 4, floors.HOG_BINS)
  assert h.shape[0] * h.shape[1] * h.shape[2] == 756
  # 0 degrees lies halfway between the centres of bins 0 (10) and 8 (170).
  assert np.all(h[:, :, 1:8] == 0)
  np.testing.assert_allclose(h[:, :, 0], h[:, :, 8])
  assert h.max() > 0
  images = np.repeat(edge[None, :, :, None], 2, 0)
  assert floors.hog_features(images, 64, 16).shape == (2, 756)


def _xor(n, seed):
  """Defective when exactly one of x0, x1 is positive: no direction separates
  it (a linear score is near chance), two levels of splits do."""
  x = np.random.default_rng(seed).standard_normal((n, 6))
  return x, ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)


def _xor_splits():
  pairs = {'train': _xor(400, 1), 'val': _xor(200, 2), 'test': _xor(400, 3)}
  return {n: x for n, (x, _) in pairs.items()}, {n: y for n, (_, y) in pairs.items()}


def test_boosted_trees_solve_xor_where_logistic_regression_cannot():
  feats, labels = _xor_splits()
  probs, choice = floors.fit_predict('boosted', feats, labels, ridge=10.0)
  assert floors.metrics.auroc(labels['test'], probs['test']) > 0.9
  assert choice['rounds'] in floors.BOOST_ROUNDS and choice['lambda'] == floors.BOOST_L2
  assert np.all((probs['test'] > 0) & (probs['test'] < 1))
  linear, _ = floors.fit_predict('anomaly', feats, labels, ridge=10.0)
  assert abs(floors.metrics.auroc(labels['test'], linear['test']) - 0.5) < 0.1


def test_boosted_fit_is_deterministic_and_seeded():
  x, labels = _xor(300, 4)
  a, b = floors.fit_boosted(x, labels, rounds=60), floors.fit_boosted(x, labels, rounds=60)
  for field in ('feature', 'threshold', 'leaf'):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  sa, sb = floors.boosted_stages(a, x, (60,)), floors.boosted_stages(b, x, (60,))
  np.testing.assert_array_equal(sa[60], sb[60])
  # The seed draws the rows each round sees: another seed, another fit.
  other = floors.fit_boosted(x, labels, rounds=60, seed=1)
  assert not np.array_equal(other.leaf, a.leaf)


def test_boosted_rounds_are_the_best_validation_prefix():
  feats, labels = _xor_splits()
  feats = {n: f[:, ::-1] for n, f in feats.items()}  # Same problem, other columns.
  labels['val'] = labels['val'].copy()
  labels['val'][:60] = 1 - labels['val'][:60]  # Noisy validation: prefixes differ.
  probs, rounds = floors.fit_predict_boosted(feats, labels)
  model = floors.fit_boosted(feats['train'], labels['train'])
  stages = floors.boosted_stages(model, feats['val'], floors.BOOST_ROUNDS)
  val = {r: floors.metrics.auroc(labels['val'], z) for r, z in stages.items()}
  assert rounds in floors.BOOST_ROUNDS
  assert rounds == min(r for r in floors.BOOST_ROUNDS if val[r] == max(val.values()))
  np.testing.assert_array_equal(probs['val'], floors.sigmoid(stages[rounds]))
  # Validation far from the boundary x0 = 0: every prefix ranks it perfectly,
  # and a tie goes to the fewest rounds.
  x = np.random.default_rng(5).standard_normal((600, 3))
  easy = {'train': x[:400], 'val': x[400:][np.abs(x[400:, 0]) > 0.5]}
  _, rounds = floors.fit_predict_boosted(easy, {n: (f[:, 0] > 0).astype(int)
                                                for n, f in easy.items()})
  assert rounds == min(floors.BOOST_ROUNDS)
  labels['val'][:] = 0  # One class on validation: no AUROC, the default.
  assert floors.fit_predict_boosted(feats, labels)[1] == 100
  with pytest.raises(ValueError, match='rounds'):
    floors.boosted_stages(model, feats['val'], (800,))


def test_one_boosting_round_takes_the_newton_step_on_each_side():
  x, labels = _separable()
  model = floors.fit_boosted(x, labels, rounds=1, depth=1, subsample=1.0)
  f, t = model.feature[0, 0], model.threshold[0, 0]
  assert f == 2 and np.isfinite(t)  # The most informative feature splits first.
  p = labels.mean()
  assert model.base == pytest.approx(np.log(p / (1 - p)))
  left = x[:, f] <= t
  for side, value in ((left, model.leaf[0, 0]), (~left, model.leaf[0, 1])):
    newton = -np.sum(p - labels[side]) / (side.sum() * p * (1 - p) + floors.BOOST_L2)
    assert value == pytest.approx(floors.BOOST_RATE * newton)
  # New rows route by value as training rows did by bin code.
  z = floors.boosted_stages(model, x, (1,))[1]
  np.testing.assert_allclose(z, model.base + np.where(left, *model.leaf[0]))


def test_boosted_reads_the_anomaly_features_extracted_once(monkeypatch):
  images = np.zeros((3, 8, 8, 3), np.uint8)
  monkeypatch.setattr(floors, 'load_split', lambda builder, split: (images, np.arange(3) % 2))
  calls = []
  monkeypatch.setattr(floors, 'anomaly_features',
                      lambda ims: calls.append(len(ims)) or np.ones((len(ims), 14)))
  features = floors.Features(None, {})
  a, ya = features('fold_0+fold_1', 'anomaly')
  b, yb = features('fold_1+fold_0', 'boosted')
  assert calls == [3, 3] and a.shape == b.shape == (6, 14)
  np.testing.assert_array_equal(ya, yb)


def test_command_on_the_built_synthetic_set(data_dir, tmp_path, capsys):
  out = tmp_path / 'floors.json'
  assert floors.main([f'--data_dir={data_dir}', '--builder_config=small', '--size=8,16',
                      f'--out={out}']) == 0
  printed = capsys.readouterr().out.strip().splitlines()
  result = json.loads(printed[-1])
  assert json.loads(out.read_text()) == result
  assert [r['model'] for r in result['rows']] == ['pixel', 'anomaly', 'hog', 'boosted']
  for row in result['rows']:
    assert row['fold'] is None and row['threshold_rule'] == 'best_f1'
    assert row['val']['threshold'] == row['test']['threshold'] == row['threshold']
    for split in ('val', 'test'):
      assert row[split]['num_examples'] > 0
      assert 0.0 <= row[split]['auroc'] <= 1.0
      assert 0.0 <= row[split]['balanced_accuracy'] <= 1.0
  pixel = result['rows'][0]
  assert pixel['num_features'] == 128 and pixel['lambda'] == 10.0
  assert pixel['train']['auroc'] > 0.9  # 128 features, a few dozen images.
  assert result['rows'][1]['num_features'] == 14
  assert result['rows'][2]['lambda'] in floors.LAMBDAS
  assert [r['rounds'] for r in result['rows'][:3]] == [None] * 3
  boosted = result['rows'][3]
  assert boosted['num_features'] == 14 and boosted['lambda'] == floors.BOOST_L2
  assert boosted['rounds'] in floors.BOOST_ROUNDS
  assert any(line.startswith('hog      over 1: test AUROC') for line in printed)
  assert any(line.startswith('boosted  over 1: test AUROC') for line in printed)
  assert any(line.startswith('boosted ') and 'rounds)' in line for line in printed)


@pytest.mark.parametrize('argv,match', [
    (['--size=16'], '--size'), (['--model=knn'], '--model'),
    (['--threshold_rule=median'], 'threshold rule'), (['--set=colour=3'], '--set'),
    (['--kfold=5', '--fold=7'], '--fold')])
def test_bad_arguments_are_one_line_and_exit_2(argv, match, capsys):
  assert floors.main(argv) == 2
  assert match in capsys.readouterr().err
