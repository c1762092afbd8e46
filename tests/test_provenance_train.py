"""Issue 29, training: a run's k-fold is its build's, a resume keeps what
the steps taken meant (config and data) or records the change, a run on an
export records the export's origin, and two flag mistakes are one line."""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from smsdd_jax import dataset_export
from smsdd_jax import input_pipeline
from smsdd_jax import rundir
from smsdd_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _trained_run_config(data_dir):
  """The config `trained_run` (conftest) was made with."""
  config = default.get_config('quick')
  config.data.data_dir = data_dir
  config.batch_size = 32
  config.num_epochs = 1
  config.log_every_steps = 1
  config.checkpoint.every_steps = 1
  return config


def _copy(run, tmp_path) -> pathlib.Path:
  """A copy of the session's run to resume (the original stays as it is)."""
  workdir = tmp_path / 'run'
  shutil.copytree(run, workdir)
  return workdir


def _snapshot(directory):
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(pathlib.Path(directory).rglob('*')) if p.is_file()}


def _export_config(crops_data, path, **data):
  d, _ = crops_data
  config = default.get_config('quick')
  config.data.update(d.to_dict())
  config.data.source, config.data.export_path = 'export', str(path)
  config.data.builder_config = config.data.manual_dir = config.data.data_dir = ''
  config.data.update(data)
  config.batch_size, config.num_epochs, config.eval_batch_size = 8, 1, 8
  return config


# ------------------------------------------------------------------ 1. k-fold


def test_a_kfold_other_than_the_builds_is_refused_naming_both(crops_data, tmp_path):
  d, path = crops_data  # A 5-fold build and its export.
  for source in ('tfds', 'export'):
    bad = d.copy_and_resolve_references()
    bad.kfold, bad.fold = 3, 0
    if source == 'export':
      bad.source, bad.export_path = 'export', path
    with pytest.raises(ValueError) as refused:
      input_pipeline.prepare(bad)
    message = str(refused.value)
    assert message.startswith('config.data.kfold=3, but the build ') and '\n' not in message
    assert 'has 5 folds (fold_0..fold_4): set --config.data.kfold=5' in message
  # Through training: refused before any step, nothing left behind.
  config = _export_config(crops_data, path, kfold=3, fold=0)
  with pytest.raises(ValueError, match=r'config.data.kfold=3, but the build .* has 5 folds'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


# ------------------------------------------------------------------ 2. resume, config


def test_a_resume_that_changes_what_the_steps_meant_is_refused(trained_run, data_dir,
                                                               tmp_path):
  workdir = _copy(trained_run, tmp_path)
  before = _snapshot(workdir)
  config = _trained_run_config(data_dir)
  config.num_epochs = 2
  config.loss.beta = 0.5
  config.data.normalize = 'train_stats'
  with pytest.raises(ValueError) as refused:
    train.train_and_evaluate(config, str(workdir))
  message = str(refused.value)
  assert message.startswith(f'workdir {workdir} holds a run trained 2 steps with another '
                            'config') and '\n' not in message
  assert "config.json): data.normalize 'fixed' -> 'train_stats', loss.beta 0.01 -> 0.5;" \
      in message
  assert 'num_epochs' not in message  # A longer schedule alone would be allowed.
  assert _snapshot(workdir) == before  # config.json, preprocessing.json untouched.


def test_a_longer_schedule_that_depends_on_the_length_is_refused(trained_run, data_dir,
                                                                 tmp_path):
  workdir = _copy(trained_run, tmp_path)
  info = json.loads((workdir / 'config.json').read_text())
  info['config']['optimizer']['schedule'] = 'warmup_cosine'  # As a cosine run saved it.
  (workdir / 'config.json').write_text(json.dumps(info))
  before = _snapshot(workdir)
  config = _trained_run_config(data_dir)
  config.optimizer.schedule, config.num_epochs = 'warmup_cosine', 2
  with pytest.raises(ValueError, match=r"config.num_epochs 1 -> 2: with optimizer.schedule="
                                       r"'warmup_cosine' the learning rate"):
    train.train_and_evaluate(config, str(workdir))
  assert _snapshot(workdir) == before


def test_a_longer_schedule_is_allowed_and_recorded(trained_run, data_dir, tmp_path):
  workdir = _copy(trained_run, tmp_path)
  config = _trained_run_config(data_dir)
  config.num_epochs = 2
  config.log_every_steps = 2  # Never changes what a step meant: allowed, recorded.
  train.train_and_evaluate(config, str(workdir))
  info = json.loads((workdir / 'config.json').read_text())
  assert info['config']['num_epochs'] == 2
  assert info['resumed'] == [{'step': 2, 'changed': {'num_epochs': [1, 2],
                                                     'log_every_steps': [1, 2]}}]
  steps = [r['step'] for r in rundir.read_metrics(str(workdir)) if 'train/loss' in r]
  assert steps == [1, 2, 3, 4]


def test_a_saved_config_older_than_a_field_compares_as_its_default():
  now = default.get_config('quick').to_dict()
  saved = json.loads(json.dumps(now))
  for group, key in (('model', 'head'), ('data', 'aspect'), ('data', 'source'),
                     ('data', 'export_path'), (None, 'recipe')):
    (saved[group] if group else saved).pop(key)  # A run made before these existed.
  defaults = default.get_config().to_dict()
  assert rundir.config_changes(saved, now, defaults) == {}
  now['loss']['extra'] = {'focal': 0.5}
  now['data']['aspect'] = 'letterbox'
  assert rundir.config_changes(saved, now, defaults) == {
      'data.aspect': ['stretch', 'letterbox'], 'loss.extra': [{}, {'focal': 0.5}]}


# ------------------------------------------------------------------ 3. resume, data


def _other_data(path, out):
  """The export at `path` with other labels: another data set, a whole,
  readable export (its sha256 recomputed)."""
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  meta = json.loads(str(arrays.pop('meta')))
  arrays['label'] = arrays['label'].copy()
  arrays['label'][:4] = 1 - arrays['label'][:4]
  meta['sha256'] = dataset_export.digest(arrays)
  np.savez(out, meta=np.asarray(json.dumps(meta)), **arrays)
  return meta['sha256']


def test_a_run_on_an_export_records_its_origin_and_resumes_only_on_its_data(
    crops_data, tmp_path):
  d, path = crops_data
  export = tmp_path / 'exports' / 'crops.npz'
  export.parent.mkdir()
  shutil.copy(path, export)
  workdir = tmp_path / 'run'
  config = _export_config(crops_data, export)
  train.train_and_evaluate(config.copy_and_resolve_references(), str(workdir))
  # 12: the export's origin, not the empty fields, in config.json.
  saved = rundir.read_config(str(workdir))['data']
  assert saved['builder_config'] == 'none' and saved['manual_dir'] == d.manual_dir
  sha = dataset_export.load(str(export)).meta['sha256']
  assert json.loads((workdir / 'preprocessing.json').read_text())['export_sha256'] == sha
  # 3: other data exported to the same path, the same command again.
  other = _other_data(str(export), str(tmp_path / 'other.npz'))
  os.replace(tmp_path / 'other.npz', export)
  before = _snapshot(workdir)
  with pytest.raises(ValueError) as refused:
    train.train_and_evaluate(config.copy_and_resolve_references(), str(workdir))
  message = str(refused.value)
  assert f"export_sha256 '{sha}' vs '{other}'" in message and '\n' not in message
  assert message.startswith(f'workdir {workdir} was trained (1 steps) on other data')
  assert _snapshot(workdir) == before


def test_an_export_with_another_origin_is_refused_naming_the_field(crops_data, tmp_path):
  _, path = crops_data
  for field, value in (('builder_config', 'default'), ('manual_dir', str(tmp_path))):
    config = _export_config(crops_data, path, **{field: value})
    with pytest.raises(ValueError, match=rf"config.data.{field}='{value}', but .* was "
                                         rf'exported from {field}='):
      input_pipeline.prepare(config.data)
  d, _ = crops_data  # The export's own values are accepted.
  input_pipeline.prepare(_export_config(crops_data, path, builder_config='none',
                                        manual_dir=d.manual_dir).data)


def test_a_tfds_run_resumed_on_another_build_is_refused(trained_run, data_dir, tmp_path):
  workdir = _copy(trained_run, tmp_path)
  record = json.loads((workdir / 'preprocessing.json').read_text())
  assert record['dataset'] == 'synthetic_screens/small'
  record['dataset'] = 'synthetic_screens/default'  # As a run on another build records it.
  (workdir / 'preprocessing.json').write_text(json.dumps(record))
  before = _snapshot(workdir)
  with pytest.raises(ValueError) as refused:
    train.train_and_evaluate(_trained_run_config(data_dir), str(workdir))
  assert ("on other data than config.data reads now: dataset 'synthetic_screens/default' "
          "vs 'synthetic_screens/small' (its preprocessing.json vs now)") in str(refused.value)
  assert _snapshot(workdir) == before


# ------------------------------------------------------------------ flags


def _cli(*args):
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  return subprocess.run([sys.executable, '-m', 'smsdd_jax.main', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=180, env=env)


def test_two_config_flags_and_a_bad_image_size_are_one_line(tmp_path):
  workdir = tmp_path / 'run'
  proc = _cli('--config=configs/beta_c.py:quick', '--config=configs/beta_a.py',
              f'--workdir={workdir}')
  assert proc.returncode == 2 and proc.stdout == ''
  assert proc.stderr == (
      'error: --config given 2 times (--config=configs/beta_c.py:quick, '
      '--config=configs/beta_a.py): only one --config is allowed; set its keys with '
      '--config.KEY=VALUE, or its modes with one argument, e.g. '
      '--config=configs/beta_c.py:quick,learn\n')
  proc = _cli('--config=configs/beta_c.py:quick', '--config.data.image_size=64x128',
              f'--workdir={workdir}')
  assert proc.returncode == 2, proc.stderr
  errors = proc.stderr.strip().splitlines()
  assert errors[-1] == ("error: config.data.image_size=('64x128',): expected (height, "
                        'width), two whole numbers >= 1, e.g. '
                        '--config.data.image_size="(110,230)"')
  assert 'Traceback' not in proc.stderr and not workdir.exists()
