"""The run directory: atomic writes, and resolve_run on hand-made workdirs."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from smsdd_jax import preprocess
from smsdd_jax import rundir

REPO = pathlib.Path(__file__).resolve().parents[1]

# Writes a JSON of a few MB and, part-way through (after the rows, which
# json.dump has already streamed to the temporary file), stops and waits to
# be killed: `Stall` is serialised through write_json's default=str.
_KILLED_WRITER = '''
import pathlib, sys, time
from smsdd_jax import rundir

class Stall:
  def __str__(self):
    pathlib.Path(sys.argv[2]).touch()
    time.sleep(600)
    return 'never'

rundir.write_json(sys.argv[1], {'rows': list(range(300_000)), 'stall': Stall()})
'''


# ------------------------------------------------------------------ writing


def test_a_writer_killed_mid_write_leaves_the_old_file_whole(tmp_path):
  path = tmp_path / rundir.THRESHOLD
  old = {'threshold': 0.25, 'threshold_rule': 'youden'}
  rundir.write_json(str(path), old)
  marker = tmp_path / 'stalled'
  proc = subprocess.Popen([sys.executable, '-c', _KILLED_WRITER, str(path), str(marker)],
                          cwd=REPO, env={**os.environ, 'PYTHONPATH': str(REPO)})
  try:
    deadline = time.monotonic() + 120
    while not marker.exists():
      assert proc.poll() is None, 'the writer ended before it stalled'
      assert time.monotonic() < deadline, 'the writer never reached the stall'
      time.sleep(0.05)
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(f'{path.name}.tmp')]
    assert len(partial) == 1 and partial[0].stat().st_size > 1_000_000  # Mid-write.
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  assert proc.returncode == -signal.SIGKILL
  assert json.loads(path.read_text()) == old  # The target never saw the new bytes.
  assert rundir.read_threshold(str(tmp_path)) == (0.25, str(path))
  rundir.write_json(str(path), {'threshold': 0.5})  # A rerun writes over it.
  assert json.loads(path.read_text()) == {'threshold': 0.5}


def test_an_error_mid_write_keeps_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / 'results.md'
  rundir.write_text(str(path), 'old\n')
  with pytest.raises(RuntimeError):
    with rundir.atomic_file(str(path)) as f:
      f.write('half of the new')
      raise RuntimeError('disk full')
  assert path.read_text() == 'old\n'
  assert [p.name for p in tmp_path.iterdir()] == ['results.md']


def test_what_is_written_is_what_train_always_wrote(tmp_path):
  """Indented JSON, no trailing newline, str() for the rest; npz round-trips."""
  obj = {'step': 4, 'value': 0.5, 'path': pathlib.Path('a/b'), 'none': None}
  rundir.write_json(str(tmp_path / rundir.BEST), obj)
  assert (tmp_path / rundir.BEST).read_text() == json.dumps(obj, indent=2, default=str)
  rundir.write_npz(str(tmp_path / rundir.eval_npz('val')), prob=np.arange(3.0), step=4)
  with np.load(tmp_path / 'eval_val.npz') as z:
    assert z['prob'].tolist() == [0.0, 1.0, 2.0] and int(z['step']) == 4
  assert sorted(p.name for p in tmp_path.iterdir()) == ['best.json', 'eval_val.npz']


# ------------------------------------------------------------------ resolve_run


def _workdir(tmp_path, *, periodic=(2, 4, 6), best=(5,), best_json=None,
             data=None) -> pathlib.Path:
  """A workdir of empty step folders: only names matter to resolve_run."""
  workdir = tmp_path / 'run'
  workdir.mkdir(parents=True)
  data = data or {'name': 'synthetic_screens', 'normalize': 'fixed',
                  'image_size': [110, 230]}
  rundir.write_json(str(workdir / rundir.CONFIG), {'config': {'data': data}})
  for folder, steps in ((rundir.CHECKPOINTS, periodic), (rundir.CHECKPOINTS_BEST, best)):
    for step in steps:
      (workdir / folder / str(step)).mkdir(parents=True)
  (workdir / rundir.CHECKPOINTS / '8.orbax-checkpoint-tmp-17').mkdir(parents=True)  # Unfinished save.
  if best_json is not None:
    rundir.write_json(str(workdir / rundir.BEST), best_json)
  return workdir


def test_resolve_run_chooses_best_periodic_or_the_asked_step(tmp_path):
  workdir = _workdir(tmp_path, best_json={'step': 5, 'metric': 'val/auroc', 'value': 0.9})
  run = rundir.resolve_run(str(workdir))
  assert (run.source, run.step) == ('best', 5)
  assert run.checkpoint_dir == str(workdir / 'checkpoints_best')
  assert run.note == 'best checkpoint (val/auroc=0.9) step 5'
  asked = rundir.resolve_run(str(workdir), 4)
  assert (asked.source, asked.step, asked.checkpoint_dir) == (
      'periodic', 4, str(workdir / 'checkpoints'))
  assert 'asked for' in asked.note
  assert rundir.resolve_run(str(workdir), 5).source == 'best'
  with pytest.raises(ValueError, match=r'no checkpoint for step 8 .*\[2, 4, 6\], best step 5'):
    rundir.resolve_run(str(workdir), 8)  # The unfinished save is not a step.


def test_best_json_naming_a_missing_step_falls_back_to_the_last_best(tmp_path):
  workdir = _workdir(tmp_path, best=(3, 5), best_json={'step': 9, 'metric': 'm', 'value': 1})
  run = rundir.resolve_run(str(workdir))
  assert (run.source, run.step, run.note) == ('best', 5, 'best checkpoint step 5')


def test_without_a_best_checkpoint_the_latest_periodic_one(tmp_path):
  workdir = _workdir(tmp_path, best=())
  run = rundir.resolve_run(str(workdir))
  assert (run.source, run.step) == ('latest periodic', 6)
  assert 'no best checkpoint' in run.note
  empty = _workdir(tmp_path / 'empty', periodic=(), best=())
  with pytest.raises(FileNotFoundError, match='no checkpoints in'):
    rundir.resolve_run(str(empty))


def test_an_old_run_without_preprocessing_threshold_or_stats_still_resolves(tmp_path):
  workdir = _workdir(tmp_path)
  run = rundir.resolve_run(str(workdir))
  assert run.preprocessing == preprocess.Spec(roi='hough', aspect='stretch', channels='rgb',
                                              size=(110, 230))
  assert (run.threshold, run.threshold_source) == (0.5, 'default (no threshold.json)')
  assert run.stats == preprocess.FIXED_STATS and run.stats_source.startswith('fixed')
  for data, roi in (({'name': 'magnetic_tile', 'image_size': [64, 64]}, 'none'),
                    ({'name': 'image_folder', 'builder_config': 'none'}, 'none')):
    spec = rundir.read_preprocessing(str(workdir), {'data': data})
    assert spec.roi == roi and spec.aspect == 'stretch'
  assert spec.size == (110, 230)  # image_size absent: the paper's ROI.
  record = {'roi': 'none', 'aspect': 'letterbox', 'channels': 'gray', 'size': [64, 96],
            'dataset': 'msd_screens/none', 'source_fingerprint': 'abc'}
  rundir.write_json(str(workdir / rundir.PREPROCESSING), record)
  assert rundir.resolve_run(str(workdir)).preprocessing == preprocess.Spec(
      roi='none', aspect='letterbox', channels='gray', size=(64, 96))


def test_stats_and_threshold_files_are_read_and_checked(tmp_path):
  workdir = _workdir(tmp_path, data={'normalize': 'train_stats'})
  with pytest.raises(FileNotFoundError, match="data_stats.json is missing.*'train_stats'"):
    rundir.resolve_run(str(workdir))
  stats = {'mean': [1, 2, 3], 'std': [4, 5, 6], 'normalize': 'train_stats'}
  rundir.write_json(str(workdir / rundir.DATA_STATS), stats)
  rundir.write_json(str(workdir / rundir.THRESHOLD), {'threshold': 0.3})
  run = rundir.resolve_run(str(workdir))
  assert run.stats == stats and run.stats_source.startswith('train_stats (')
  assert (run.threshold, run.threshold_source) == (0.3, str(workdir / 'threshold.json'))
  (workdir / rundir.DATA_STATS).write_text('{"mean": [1, 2], "std": [1, 1, 1]}')
  with pytest.raises(ValueError, match='"mean" must be 3 numbers'):
    rundir.resolve_run(str(workdir))


def test_not_a_run_is_refused_with_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    rundir.resolve_run(str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match='is empty: not a training run'):
    rundir.resolve_run(str(tmp_path))
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(FileNotFoundError, match='has no config.json'):
    rundir.resolve_run(str(tmp_path))
  (tmp_path / rundir.CONFIG).write_text('{"config": ')
  with pytest.raises(ValueError, match='cannot read run config'):
    rundir.resolve_run(str(tmp_path))
  (tmp_path / rundir.CONFIG).write_text('{"versions": {}}')
  with pytest.raises(ValueError, match='has no "config" entry'):
    rundir.resolve_run(str(tmp_path))


def test_run_config_fills_fields_an_old_run_lacks():
  saved = {'loss': {'beta': 0.3}, 'model': {'width_mult': 0.25}, 'optimizer': {}}
  config = rundir.run_config(saved)
  assert config.loss.beta == 0.3 and config.model.width_mult == 0.25
  # What a run from before these fields did, not today's training defaults.
  assert config.optimizer.name == 'sgd' and config.optimizer.weight_decay == 0.0
  assert config.data.aspect == 'stretch' and config.recipe == 'paper'
  assert saved == {'loss': {'beta': 0.3}, 'model': {'width_mult': 0.25}, 'optimizer': {}}
  with pytest.raises(ValueError, match='config.optimizer is 3'):
    rundir.run_config({'optimizer': 3})


def test_the_serving_path_and_rundir_stay_light():
  """rundir loads no TensorFlow, JAX or train; inference/predict no TensorFlow,
  and reading a run's config needs no configs/ (the training side's defaults)."""
  code = ('import sys; from smsdd_jax import rundir; a = sorted(m for m in ("jax", '
          '"tensorflow", "orbax", "smsdd_jax.train") if m in sys.modules); '
          'import smsdd_jax.inference, smsdd_jax.predict; rundir.run_config({}); '
          'print(a, "tensorflow" in sys.modules, "smsdd_jax.train" in sys.modules, '
          '"configs" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                       text=True, check=True).stdout.strip()
  assert out == '[] False False False'
