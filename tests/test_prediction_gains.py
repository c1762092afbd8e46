"""launch/prediction_gains.py: flips and seed ensembles scored on each run's
own test fold of a dataset export, paired, and its numbers equal what
`predict`'s Predictor / ensemble give on the same images."""
import json
import os
import sys

import numpy as np
import pytest

from configs import default
from smsdd_jax import dataset_export, inference, metrics, rundir, train

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'launch'))
import prediction_gains  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope='module')
def sweep(crops_data, tmp_path_factory):
  """Two seeds of one variant on fold 0 of the tiny crops export, laid out as
  launch/sweep.py lays out runs (sweep.json beside each run)."""
  data, path = crops_data
  out = tmp_path_factory.mktemp('sweep')
  for seed in (0, 1):
    config = default.get_config('quick')
    config.data.update(data.to_dict())
    config.data.source, config.data.export_path = 'export', path
    config.seed, config.batch_size, config.num_epochs = seed, 4, 1
    config.eval_batch_size, config.log_every_steps = 8, 5
    workdir = out / f'beta_a_s{seed}_f0'
    train.train_and_evaluate(config, str(workdir))
    rundir.write_json(str(workdir / rundir.SWEEP),
                      {'variant': 'beta_a', 'seed': seed, 'fold': 0, 'args': []})
  return out, path


def test_gains_are_scored_on_each_runs_test_fold_and_paired(sweep, tmp_path):
  out_dir, export_path = sweep
  result_path = tmp_path / 'gains.json'
  assert prediction_gains.main([f'--sweep={out_dir}', f'--export={export_path}',
                                f'--out={result_path}']) == 0
  result = json.loads(result_path.read_text())
  assert sorted(result['runs']) == ['beta_a_s0_f0', 'beta_a_s1_f0']
  export = dataset_export.load(export_path)
  index = export.indices('fold_0')
  images, labels = export.rgb(index), export.labels[index]
  runs = [str(out_dir / r) for r in sorted(result['runs'])]
  for name, workdir in zip(sorted(result['runs']), runs):
    plain = inference.Predictor(workdir).predict_proba(images)
    assert result['runs'][name]['auroc'] == pytest.approx(metrics.auroc(labels, plain))
  ensemble = inference.ensemble_probabilities(runs, images, tta='flips')
  row = result['ensembles']['beta_a_f0']
  assert row['ensemble_auroc_flips'] == pytest.approx(metrics.auroc(labels, ensemble), abs=1e-6)
  assert row['members_best_auroc'] == pytest.approx(
      max(r['auroc'] for r in result['runs'].values()))
  one_pair = result['comparisons']['beta_a: flips minus plain (runs)']
  assert one_pair['n'] == 2 and one_pair['verdict'] == 'not distinguishable'  # 2 < min pairs.
  assert np.isfinite(one_pair['mean'])


def test_a_sweep_without_kept_checkpoints_is_one_line(tmp_path, capsys, crops_data):
  run = tmp_path / 'beta_a_s0_f0'
  run.mkdir()
  rundir.write_json(str(run / rundir.SWEEP), {'variant': 'beta_a', 'seed': 0, 'fold': 0})
  rundir.write_json(str(run / rundir.EVAL), {})
  assert prediction_gains.main([f'--sweep={tmp_path}', f'--export={crops_data[1]}']) == 2
  err = capsys.readouterr().err
  assert 'no checkpoints_best/' in err and err.strip().endswith(
      'no finished run with its best checkpoint kept')


def _masked_export_and_runs(out_dir, export_path):
  """The sweep's export with a hand-made mask on each defective crop (in
  memory: the crops carry none), and its finished runs keyed as
  localization.py keys them."""
  export = dataset_export.load(export_path)
  h, w = export.image_size
  export.masks = np.zeros((len(export.labels), h, w), np.uint8)
  export.masks[export.labels == 1, h // 4:h // 2, w // 4:w // 2] = 255
  runs = [{**r, 'key': r['run']} for r in prediction_gains.finished_runs(str(out_dir), None)]
  return export, runs


def test_localization_scores_each_runs_maps_against_masks_and_floors(sweep, tmp_path):
  """launch/localization.py on the same two runs, with hand-made masks added to
  the export in memory (the crops carry none): one map per defective crop,
  values equal to maps.py's metrics on Predictor.maps, floors per fold."""
  import localization  # pylint: disable=import-outside-toplevel
  from smsdd_jax import maps  # pylint: disable=import-outside-toplevel
  out_dir, export_path = sweep
  export, runs = _masked_export_and_runs(out_dir, export_path)
  args = localization.parser().parse_args([f'--sweep={out_dir}', f'--export={export_path}',
                                           '--layers=block5,block4'])
  result = localization.evaluate(runs, export, args)
  index = export.indices('fold_0')
  crops = index[export.labels[index] == 1]
  heat = inference.Predictor(runs[0]['workdir']).maps(export.rgb(crops), 'gradcam')
  got = result['runs']['beta_a_s0_f0']
  assert got['crops'] == len(crops)
  assert got['maps']['gradcam_block5']['pixel_auroc'] == pytest.approx(np.mean(
      [maps.pixel_auroc(m, export.masks[i]) for m, i in zip(heat, crops)]))
  assert set(got['maps']) == {'gradcam_block5', 'gradcam_block4'}
  assert result['floors']['0']['random']['pixel_auroc'] == pytest.approx(0.5, abs=0.05)
  key = 'pixel_auroc: beta_a gradcam_block5 minus residual floor'
  assert result['comparisons'][key]['n'] == 2
  assert '| floor: residual |' in localization.markdown(result)
  assert localization._bases('b/beta_c', ['a/beta_a', 'a/beta_c', 'b/beta_a', 'b/beta_c']) == [
      'b/beta_a', 'a/beta_c']


def test_localization_chooses_on_val_pairs_per_crop_and_times_each_map(sweep, tmp_path):
  """--methods (one map, a tap, a product of two normalised maps), --split=val,
  --peaks, the per-crop pairing and --cost, against what maps.py and the
  Predictor give on the same crops."""
  import localization  # pylint: disable=import-outside-toplevel
  from smsdd_jax import data_splits, maps  # pylint: disable=import-outside-toplevel
  out_dir, export_path = sweep
  export, runs = _masked_export_and_runs(out_dir, export_path)
  args = localization.parser().parse_args([
      f'--sweep={out_dir}', f'--export={export_path}', '--split=val', '--peaks',
      '--methods=fine,gradcampp@block3,gradcam@block4*gradcam@block5'])
  result = localization.evaluate(runs, export, args)
  predictor = inference.Predictor(runs[0]['workdir'])
  index = export.indices(data_splits.split_names(predictor.config.data)['val'])
  assert index.size and not np.intersect1d(index, export.indices('fold_0')).size
  crops = index[export.labels[index] == 1]
  got = result['runs']['beta_a_s0_f0']
  assert result['split'] == 'val' and got['crops'] == len(crops)
  images, masks = export.rgb(crops), export.masks[crops]
  fine = predictor.maps(images, 'fine')
  assert got['maps']['fine']['pointing'] == pytest.approx(np.mean(
      [maps.pointing_hit(m, k) for m, k in zip(fine, masks)]))
  both = np.asarray(maps.normalise(predictor.maps(images, 'gradcam', layer='block4'))) * \
      np.asarray(maps.normalise(predictor.maps(images, 'gradcam', layer='block5')))
  assert got['maps']['gradcam@block4*gradcam@block5']['pixel_auroc'] == pytest.approx(np.mean(
      [maps.pixel_auroc(m, k) for m, k in zip(both, masks)]))
  assert 0 <= got['peaks']['fine']['peak_auroc'] <= 1
  pooled = sum(r['crops'] for r in result['runs'].values())
  assert result['crop_comparisons']['pointing: beta_a fine minus residual floor']['n'] == pooled
  assert result['comparisons']['pixel_auroc: beta_a fine minus gradcam_block5']['n'] == 2
  assert 'peak AUROC, good vs defective crops' in localization.markdown(result)
  with pytest.raises(ValueError, match="one map, or two joined"):
    localization.parse_spec('fine*gradcam*gradxinput')
  out = tmp_path / 'cost.json'
  assert localization.main([f'--sweep={out_dir}', f'--export={export_path}', '--cost',
                            '--repeats=1', '--methods=fine', f'--out={out}']) == 0
  cost = json.loads(out.read_text())['cost']
  assert set(cost['ms_per_roi']) == {'score', 'gradcam_block5', 'fine'}
  assert all(v > 0 for v in cost['ms_per_roi'].values()) and cost['cores'] >= 1
