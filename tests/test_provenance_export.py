"""Issue 29, exports: an export is never replaced by one of other data nor
written over a folder or a device node, a damaged one is one line wherever
it is read, and it is checked against the run it meets (prediction_gains,
report --export, localization); report names a nested sweep, a damaged
eval npz, and refuses runs of several datasets drawn together."""
import hashlib
import json
import os
import shutil
import stat
import sys

import cv2
import numpy as np
import pytest

from configs import default
from smsdd_jax import dataset_export, input_pipeline, report, rundir, train

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), 'launch'))
import localization  # noqa: E402  pylint: disable=wrong-import-position
import prediction_gains  # noqa: E402  pylint: disable=wrong-import-position


def _cli(data, manual_dir=None) -> list[str]:
  """dataset_export's arguments for the crops build (or the same builder on
  another folder)."""
  return ['--data=image_folder', '--builder_config=none',
          f'--manual_dir={manual_dir or data.manual_dir}', f'--data_dir={data.data_dir}',
          '--set=near_dup_threshold=-1', '--set=quick=True']


def _sha(path) -> str:
  return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def _one_error_line(err: str) -> str:
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: '), err
  return lines[0]


@pytest.fixture(scope='module')
def other_export(crops_data, tmp_path_factory):
  """The crops' builder on another folder (the same crops mirrored): the same
  splits and size, other images; (its folder, its export)."""
  data, _ = crops_data
  root = tmp_path_factory.mktemp('mirrored')
  for dirpath, _, files in os.walk(data.manual_dir):
    rel = os.path.relpath(dirpath, data.manual_dir)
    os.makedirs(root / rel, exist_ok=True)
    for name in files:
      cv2.imwrite(str(root / rel / name), cv2.flip(cv2.imread(os.path.join(dirpath, name)), 1))
  d = data.copy_and_resolve_references()
  d.manual_dir = str(root)
  path = str(root.parent / 'mirrored.npz')
  dataset_export.write(input_pipeline.prepare(d), d, path)
  return str(root), path


@pytest.fixture(scope='module')
def export_sweep(crops_data, tmp_path_factory):
  """A sweep of one run trained on fold 0 of the crops export, as
  launch/sweep.py lays it out, its best checkpoint kept."""
  data, path = crops_data
  out = tmp_path_factory.mktemp('export_sweep')
  config = default.get_config('quick')
  config.data.update(data.to_dict())
  config.data.source, config.data.export_path = 'export', path
  config.batch_size, config.num_epochs, config.eval_batch_size = 4, 1, 8
  workdir = out / 'beta_a_s0_f0'
  train.train_and_evaluate(config, str(workdir))
  rundir.write_json(str(workdir / rundir.SWEEP),
                    {'variant': 'beta_a', 'seed': 0, 'fold': 0, 'args': []})
  return out


# ------------------------------------------------------------------ writing an export


def test_the_default_export_path_is_not_replaced_by_other_data(crops_data, other_export,
                                                               tmp_path, monkeypatch, capsys):
  data, _ = crops_data
  monkeypatch.chdir(tmp_path)
  assert dataset_export.main(_cli(data)) == 0
  path = dataset_export.default_path(data)
  before = _sha(path)
  # Another folder to the same default path: refused, the export kept whole.
  capsys.readouterr()
  assert dataset_export.main(_cli(data, manual_dir=other_export[0])) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert f'--out={path} holds an export of other data' in line
  assert 'dataset image_folder/none_stretch_rgb_tm1_' in line and 'not replaced' in line
  assert _sha(path) == before
  # The same build again: allowed (the same bytes).
  assert dataset_export.main(_cli(data)) == 0
  assert dataset_export.load(path).meta['sha256'] == dataset_export.load(
      crops_data[1]).meta['sha256']
  # A file that is no export is not replaced either.
  (tmp_path / 'notes.npz').write_text('mine')
  assert dataset_export.main(_cli(data) + [f'--out={tmp_path / "notes.npz"}']) == 2
  assert 'is not a readable dataset export' in _one_error_line(capsys.readouterr().err)
  assert (tmp_path / 'notes.npz').read_text() == 'mine'


def test_out_naming_a_fifo_or_a_folder_is_refused_before_any_work(crops_data, tmp_path,
                                                                  capsys):
  data, _ = crops_data
  fifo = tmp_path / 'fifo'
  os.mkfifo(fifo)
  assert dataset_export.main(_cli(data) + [f'--out={fifo}']) == 2
  assert 'is not a regular file' in _one_error_line(capsys.readouterr().err)
  assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # The node is still there.
  assert os.listdir(tmp_path) == ['fifo']  # No temporary file beside it.
  # A folder: refused before the build (here: before the dataset is even looked up).
  assert dataset_export.main(['--data=no_such_dataset', f'--out={tmp_path}']) == 2
  assert f'--out={tmp_path} is a directory' in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize('value', ['64x128', '64'])
def test_set_image_size_of_the_wrong_shape_is_one_line(value, capsys):
  assert dataset_export.main(['--data=image_folder', f'--set=image_size={value}']) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert 'config.data.image_size' in line and 'image_size=(110,230)' in line


# ------------------------------------------------------------------ reading a damaged export


def _damaged_copies(path: str, tmp_path) -> list[str]:
  raw = open(path, 'rb').read()
  truncated, flipped = tmp_path / 'truncated.npz', tmp_path / 'flipped.npz'
  truncated.write_bytes(raw[:len(raw) // 2])
  middle = len(raw) // 3
  flipped.write_bytes(raw[:middle] + bytes(b ^ 0xFF for b in raw[middle:middle + 64])
                      + raw[middle + 64:])
  return [str(truncated), str(flipped)]


def test_a_damaged_export_is_one_line_for_every_reader(crops_data, export_sweep, tmp_path,
                                                       capsys):
  data, path = crops_data
  for damaged in _damaged_copies(path, tmp_path):
    with pytest.raises(ValueError, match='export it again') as e:
      dataset_export.load(damaged)
    assert damaged in str(e.value) and '\n' not in str(e.value)
    # Training reads it through input_pipeline.prepare (main.py: ValueError -> exit 2).
    d = data.copy_and_resolve_references()
    d.source, d.export_path = 'export', damaged
    with pytest.raises(ValueError, match='export it again'):
      input_pipeline.prepare(d)
    capsys.readouterr()
    assert prediction_gains.main([f'--sweep={export_sweep}', f'--export={damaged}',
                                  f'--out={tmp_path / "gains.json"}']) == 2
    assert damaged in _one_error_line(capsys.readouterr().err)
    assert report.main([f'--sweep={export_sweep}', f'--out={tmp_path / "fig"}',
                        f'--export={damaged}']) == 2
    assert damaged in _one_error_line(capsys.readouterr().err)


# ------------------------------------------------------------------ an export meets a run


def test_an_export_of_other_data_is_refused_where_it_meets_a_run(export_sweep, other_export,
                                                                crops_data, tmp_path, capsys):
  other = other_export[1]
  run = str(export_sweep / 'beta_a_s0_f0')
  assert prediction_gains.main([f'--sweep={export_sweep}', f'--export={other}',
                                f'--out={tmp_path / "gains.json"}']) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert f'{other} is not the data run {run} was trained on' in line
  assert 'source fingerprint' in line and not (tmp_path / 'gains.json').exists()
  assert report.main([f'--sweep={export_sweep}', f'--out={tmp_path / "fig"}',
                      f'--export={other}']) == 2
  assert f'{other} is not the data run {run}' in _one_error_line(capsys.readouterr().err)
  assert not (tmp_path / 'fig' / 'maps.png').exists()
  # localization: masks added in memory (the crops carry none).
  export = dataset_export.load(other)
  h, w = export.image_size
  export.masks = np.zeros((len(export.labels), h, w), np.uint8)
  export.masks[export.labels == 1, h // 4:h // 2, w // 4:w // 2] = 255
  runs = [{**r, 'key': r['run']} for r in prediction_gains.finished_runs(str(export_sweep), None)]
  args = localization.parser().parse_args([f'--sweep={export_sweep}', f'--export={other}'])
  with pytest.raises(ValueError, match=f'{other} is not the data run {run}'):
    localization.evaluate(runs, export, args)
  dataset_export.check_run(dataset_export.load(crops_data[1]), run)  # Its own: fine.
  # A run that recorded another k than the export's folds.
  copy = tmp_path / 'k3'
  shutil.copytree(run, copy, ignore=shutil.ignore_patterns('checkpoints*'))
  info = json.loads((copy / rundir.CONFIG).read_text())
  info['config']['data']['kfold'] = 3
  (copy / rundir.CONFIG).write_text(json.dumps(info))
  with pytest.raises(ValueError, match='folds 5 vs 3'):
    dataset_export.check_run(dataset_export.load(crops_data[1]), str(copy))


def test_localization_on_a_sweep_made_without_kfold(trained_run, tmp_path):
  config = rundir.run_config(rundir.read_config(trained_run))
  path = str(tmp_path / 'build.npz')
  dataset_export.write(input_pipeline.prepare(config.data), config.data, path)
  export = dataset_export.load(path)
  h, w = export.image_size
  export.masks = np.zeros((len(export.labels), h, w), np.uint8)
  export.masks[export.labels == 1, h // 4:h // 2, w // 4:w // 2] = 255
  runs = [{'run': 'r', 'key': 'r', 'workdir': trained_run, 'variant': 'beta_a', 'seed': 0,
           'fold': None}]
  args = localization.parser().parse_args([f'--sweep={tmp_path}', f'--export={path}'])
  result = localization.evaluate(runs, export, args)
  assert list(result['floors']) == [localization.NO_FOLD]
  assert result['runs']['r']['crops'] > 0


# ------------------------------------------------------------------ report over runs


def _hand_run(path, dataset=None, sweep_meta=None):
  """An unfinished run as train.py leaves it (curves only)."""
  path.mkdir(parents=True)
  (path / 'config.json').write_text(json.dumps(
      {'config': {'seed': 0, 'data': {'kfold': 0, 'fold': 0},
                  'loss': {'beta': 0.0, 'classification': 'cross_entropy',
                           'pair': 'contrastive'}}}))
  (path / 'metrics.jsonl').write_text(json.dumps({'step': 5, 'train/loss': 0.5}) + '\n')
  if dataset:
    (path / 'preprocessing.json').write_text(json.dumps(
        {'roi': 'none', 'aspect': 'stretch', 'channels': 'rgb', 'size': [110, 230],
         'dataset': dataset, 'version': '1.0.0'}))
  if sweep_meta:
    (path / 'sweep.json').write_text(json.dumps(sweep_meta))


def test_report_refuses_runs_of_several_datasets_in_one_line(tmp_path, capsys):
  _hand_run(tmp_path / 'runs' / 'a_s0', 'magnetic_tile/default')
  _hand_run(tmp_path / 'runs' / 'a_s1', 'magnetic_tile/default')
  _hand_run(tmp_path / 'runs' / 'b_s0', 'msd_screens/default')
  assert report.main([f'--sweep={tmp_path / "runs"}', f'--out={tmp_path / "fig"}']) == 2
  line = _one_error_line(capsys.readouterr().err)
  assert 'holds runs of 2 datasets (magnetic_tile/default: 2 runs' in line
  assert 'msd_screens/default: 1 run, e.g. b_s0' in line
  assert not (tmp_path / 'fig').exists()


def test_report_names_a_nested_sweep_it_leaves_out(tmp_path, capsys):
  sweep = tmp_path / 'sweep'
  _hand_run(sweep / 'beta_a_s0', sweep_meta={'variant': 'beta_a', 'seed': 0, 'args': []})
  nested = sweep / 'older'
  _hand_run(nested / 'beta_a_s0', sweep_meta={'variant': 'beta_a', 'seed': 0, 'args': []})
  (nested / 'sweep.json').write_text(json.dumps({'configs': 'beta_a'}))
  assert report.main([f'--sweep={sweep}', f'--out={tmp_path / "fig"}']) == 0
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f'not included: {nested} is a sweep of its own (report it with '
                 f'--sweep={nested})']


def test_report_names_a_truncated_eval_npz_and_draws_the_rest(export_sweep, tmp_path, capsys):
  sweep = tmp_path / 'sweep'
  for seed in (0, 1):
    shutil.copytree(export_sweep / 'beta_a_s0_f0', sweep / f'beta_a_s{seed}_f0',
                    ignore=shutil.ignore_patterns('checkpoints*'))
  broken = sweep / 'beta_a_s1_f0' / 'eval_test.npz'
  broken.write_bytes(broken.read_bytes()[:100])
  assert report.main([f'--sweep={sweep}', f'--out={tmp_path / "fig"}']) == 1
  out, err = capsys.readouterr()
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f'left out beta_a_s1_f0: {broken} cannot be '
                                                 'read'), err
  assert (tmp_path / 'fig' / 'roc_curves.png').exists() and len(out.strip().splitlines()) == 3
