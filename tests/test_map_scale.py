"""A run's map calibration (smsdd_jax/map_scale): made on the run's validation
split, bound to the run's model (another run's or checkpoint's is refused in
one line), drawn on one absolute scale, and overlays that print the
probability, the decision, the method and the scale (per image, said, where
there is no calibration)."""
import csv
import json
import pathlib
import shutil

import cv2
import numpy as np
import pytest

from smsdd_jax import data_splits, inference, map_scale, maps, predict, rundir
from smsdd_jax.map_scale import __main__ as map_scale_main


@pytest.fixture(scope='module')
def export(trained_run, tmp_path_factory):
  """A dataset export of the trained run's build (its validation images)."""
  from smsdd_jax import dataset_export, input_pipeline  # pylint: disable=import-outside-toplevel
  config = rundir.run_config(rundir.read_config(trained_run))
  path = tmp_path_factory.mktemp('export') / 'build.npz'
  dataset_export.write(input_pipeline.prepare(config.data), config.data, str(path))
  return dataset_export.load(str(path))


@pytest.fixture(scope='module')
def predictor(trained_run):
  return inference.Predictor(trained_run, batch_size=4)


@pytest.fixture(scope='module')
def calibration_file(predictor, export, tmp_path_factory):
  path = tmp_path_factory.mktemp('scale') / 'map_scale.json'
  map_scale.save(str(path), map_scale.calibrate(predictor, export, ['fine', 'gradcam']))
  return path


def _copy_run(trained_run, tmp_path) -> str:
  """A copy of the session's run, so a calibration can sit in its workdir
  without changing what the other tests see."""
  copy = tmp_path / 'run'
  shutil.copytree(trained_run, copy)
  return str(copy)


def test_the_scale_is_the_median_defect_peak_of_the_validation_split(predictor, export,
                                                                      calibration_file):
  record = json.loads(calibration_file.read_text())
  split = data_splits.split_names(predictor.config.data)['val']
  index = export.indices(split)
  defective = index[export.labels[index] == 1]
  assert len(defective) and record['data']['split'] == split
  assert record['data']['export_sha256'] == export.fingerprint['sha256']
  assert record['run']['step'] == predictor.run.step
  assert record['run']['workdir'] == predictor.run.workdir
  assert record['rule'] == map_scale.RULE
  for method in ('fine', 'gradcam'):
    peaks = predictor.maps(export.rgb(defective), method).reshape(len(defective), -1).max(1)
    entry = record['methods'][method]
    assert entry['value'] == pytest.approx(float(np.median(peaks)), rel=1e-5)
    assert entry['params'] == predictor.map_params(method)
    assert entry['defective_crops'] == len(defective)
    assert 0 <= entry['peak_auroc'] <= 1
  assert record['methods']['fine']['params'] == {
      'method': 'fine', 'layer': 'block3', 'amount_layer': 'block5',
      'sigma': maps.DEFAULT_SIGMA}


def test_the_scale_is_absolute_not_per_image(predictor, calibration_file):
  calibration = map_scale.load(str(calibration_file), predictor)
  scale = calibration.scale('fine', predictor.map_params('fine'))
  assert scale.kind == 'run' and scale.short == 'run scale'
  rois = np.random.default_rng(0).integers(0, 256, (3, *predictor.image_size, 3), np.uint8)
  rois[2] = 128  # A flat grey ROI: little to see.
  raw = predictor.maps(rois)
  predictor.use_map_scale(str(calibration_file))
  shown, used = predictor.readable_maps(rois)
  assert used == scale
  np.testing.assert_allclose(shown, np.clip(raw / scale.value, 0, 1), rtol=1e-6)
  np.testing.assert_allclose(predictor.maps(rois, scale='run'), raw / scale.value, rtol=1e-6)
  peaks = shown.reshape(3, -1).max(1)
  # Each image keeps its own strength: not every map reaches the top of the scale.
  assert len(set(np.round(peaks, 6))) > 1 and peaks.min() < 1
  # By hand: a run scale divides and clips; a per-image one stretches each map to 1.
  heat = np.array([[[0.0, 1.0, 4.0]], [[0.0, 0.1, 0.2]]], np.float32)
  np.testing.assert_allclose(map_scale.Scale('run', 2.0, '').apply(heat),
                             [[[0, 0.5, 1]], [[0, 0.05, 0.1]]])
  np.testing.assert_allclose(map_scale.per_image('why').apply(heat),
                             [[[0, 0.25, 1]], [[0, 0.5, 1]]])
  np.testing.assert_array_equal(map_scale.per_image_max(np.zeros((1, 2, 2))), 0)
  # A method or setting the calibration lacks: per image, and why.
  missing = calibration.scale('gradxinput', predictor.map_params('gradxinput'))
  assert missing.kind == 'image' and 'has no calibration of gradxinput' in missing.note
  other = calibration.scale('gradcam', predictor.map_params('gradcam', layer='block4'))
  assert other.kind == 'image' and "'layer': 'block5'" in other.note
  with pytest.raises(ValueError, match="scale='run': .*no calibration of gradxinput"):
    predictor.maps(rois, 'gradxinput', scale='run')


def test_a_calibration_of_another_run_or_checkpoint_is_refused(trained_run, calibration_file,
                                                               tmp_path, capsys):
  steps = rundir.finished_steps(pathlib.Path(trained_run) / rundir.CHECKPOINTS)
  best = inference.Predictor(trained_run).run.step
  other_step = next(s for s in steps if s != best)
  other = inference.Predictor(trained_run, step=other_step)
  with pytest.raises(ValueError, match=r'is a map calibration of run .* not of run') as e:
    map_scale.load(str(calibration_file), other)
  assert '\n' not in str(e.value) and 'model_sha256, step differ' in str(e.value)
  # A copied file is caught by the model it names, wherever it lies.
  run = _copy_run(trained_run, tmp_path)
  shutil.copy(calibration_file, pathlib.Path(run) / map_scale.DEFAULT_NAME)
  assert inference.Predictor(run).calibration is not None  # Same model: accepted.
  with pytest.raises(ValueError, match='is a map calibration of run'):
    _ = inference.Predictor(run, step=other_step).calibration
  # predict: one line, exit 2, before any frame is scored.
  frames = tmp_path / 'in'
  frames.mkdir()
  cv2.imwrite(str(frames / 'a.png'), np.full((40, 80, 3), 128, np.uint8))
  out = tmp_path / 'p.csv'
  rc = predict.main([f'--workdir={trained_run}', f'--step={other_step}', f'--input={frames}',
                     f'--output={out}', f'--maps={tmp_path / "maps"}',
                     f'--map_scale={calibration_file}'])
  err = capsys.readouterr().err
  assert rc == 2 and err.startswith('error: ') and err.count('\n') == 1
  assert 'is a map calibration of run' in err and not out.exists()


def test_overlays_print_probability_decision_method_and_scale(trained_run, calibration_file,
                                                              tmp_path, capsys):
  frames = tmp_path / 'in'
  frames.mkdir()
  rng = np.random.default_rng(1)
  for i in range(3):
    cv2.imwrite(str(frames / f'f{i}.png'), rng.integers(0, 256, (60, 120, 3), np.uint8))
  out, maps_dir = tmp_path / 'p.csv', tmp_path / 'maps'
  rc = predict.main([f'--workdir={trained_run}', f'--input={frames}', f'--output={out}',
                     f'--maps={maps_dir}', f'--map_scale={calibration_file}', '--roi=none',
                     f'--save_rois={tmp_path / "rois"}'])
  said = capsys.readouterr()
  assert rc == 0, said.err
  assert "maps: fine on the run's scale" in said.out and 'no run scale' not in said.err
  predictor = inference.Predictor(trained_run)
  predictor.use_map_scale(str(calibration_file))
  with open(out) as f:
    rows = list(csv.DictReader(f))
  for row in rows:
    name = pathlib.Path(row['file']).with_suffix('.png').name
    roi = cv2.cvtColor(cv2.imread(str(tmp_path / 'rois' / name)), cv2.COLOR_BGR2RGB)
    shown, scale = predictor.readable_maps(roi[None])
    caption = [maps.decision_line(float(row['prob_defective']), float(row['threshold'])),
               'fine map, run scale']
    assert caption[0].startswith(f'p={float(row["prob_defective"]):.3f} ')
    assert ('DEFECTIVE' in caption[0]) == (row['decision'] == 'defective')
    expected = maps.overlay(roi, shown[0], caption=caption)
    got = cv2.cvtColor(cv2.imread(str(maps_dir / name)), cv2.COLOR_BGR2RGB)
    assert got.shape == expected.shape and np.abs(got.astype(int) - expected).max() <= 2
  # The text is what it says: the same overlay with another probability differs there only.
  other = maps.overlay(roi, shown[0], caption=['p=0.000 good (threshold 0.5)', caption[1]])
  differ = np.abs(other.astype(int) - expected).max(axis=2) > 0
  assert differ.any() and not differ[:roi.shape[0]].any()
  # --map_scale and --bank are for maps, for one run.
  for extra in ([f'--map_scale={calibration_file}'],
                [f'--maps={maps_dir}', f'--map_scale={tmp_path / "none.json"}'],
                [f'--maps={maps_dir}', '--map_method=feature_distance'],  # The run has no bank.
                [f'--maps={maps_dir}', f'--map_scale={calibration_file}',
                 f'--workdir={_copy_run(trained_run, tmp_path)}']):
    assert predict.main([f'--workdir={trained_run}', f'--input={frames}',
                         f'--output={tmp_path / "q.csv"}', *extra]) == 2
    assert capsys.readouterr().err.count('\n') == 1


def test_the_command_writes_the_runs_calibration_and_ensembles_use_each_runs(
    trained_run, export, tmp_path, capsys):
  run_a, run_b = _copy_run(trained_run, tmp_path / 'a'), _copy_run(trained_run, tmp_path / 'b')
  assert map_scale_main.main([f'--workdir={run_a}', f'--export={export.path}',
                              '--methods=fine,gradcam', '--batch_size=4']) == 0
  said = capsys.readouterr().out
  assert 'fine: 1 = ' in said and f'wrote {run_a}/{map_scale.DEFAULT_NAME}' in said
  assert map_scale_main.main([f'--workdir={run_a}', f'--export={export.path}',
                              '--methods=saliency']) == 2
  assert "method='saliency'" in capsys.readouterr().err
  a, b = inference.Predictor(run_a, batch_size=4), inference.Predictor(run_b, batch_size=4)
  assert a.map_scale('fine').kind == 'run' and b.map_scale('fine').kind == 'image'
  rois = np.random.default_rng(2).integers(0, 256, (2, *a.image_size, 3), np.uint8)
  ensemble = inference.Ensemble([a, b])
  shown, scale = ensemble.readable_maps(rois)
  assert scale.kind == 'image' and f'run {b.run.workdir} has no map calibration' in scale.note
  np.testing.assert_allclose(shown.reshape(2, -1).max(1), 1.0)
  b.use_map_scale(f'{run_a}/{map_scale.DEFAULT_NAME}')  # The same model: its scale holds.
  shown, scale = ensemble.readable_maps(rois)
  assert scale.kind == 'run'
  np.testing.assert_allclose(shown, a.readable_maps(rois)[0], rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="scale='raw'"):
    ensemble.maps(rois, scale='raw')


def test_predict_offers_every_map_method_the_default_first():
  assert predict.MAP_METHODS == maps.METHODS and predict.MAP_METHODS[0] == maps.DEFAULT_METHOD


def test_feature_distance_maps_are_the_runs_bank_and_calibrate_with_it(predictor, export,
                                                                       tmp_path):
  from smsdd_jax import memory_bank  # pylint: disable=import-outside-toplevel
  rois = np.random.default_rng(3).integers(0, 256, (3, *predictor.image_size, 3), np.uint8)
  with pytest.raises(ValueError, match='feature_distance needs a memory bank: no '):
    predictor.maps(rois, 'feature_distance')
  images, source = memory_bank.good_training_images(export, predictor)
  bank = memory_bank.build(predictor, images[:8], max_cells=64, sampling='random',
                           source=source)
  path = str(tmp_path / 'bank.npz')
  bank.save(path)
  loaded = predictor.memory_bank(path)
  np.testing.assert_allclose(predictor.maps(rois, 'feature_distance', bank=loaded),
                             bank.maps(rois), rtol=1e-6)
  params = predictor.map_params('feature_distance', bank=loaded)
  assert params['method'] == 'feature_distance' and len(params['bank_sha256']) == 64
  other = memory_bank.build(predictor, images[8:16], max_cells=64, sampling='random')
  assert predictor.map_params('feature_distance', bank=other) != params
  record = map_scale.calibrate(predictor, export, ['feature_distance'], bank=loaded)
  calibration = map_scale.bind(record, 'made here', predictor)
  assert calibration.scale('feature_distance', params).kind == 'run'
  # Another bank's distances are not on this scale.
  assert calibration.scale('feature_distance',
                           predictor.map_params('feature_distance', bank=other)).kind == 'image'
