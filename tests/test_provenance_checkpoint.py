"""Issue 29: a checkpoint records a digest of its arrays and every restore
checks it; health is never recomputed from a missing history; a damaged run
of a sweep is named and makes the exit status 1, for sweep.py as for report."""
import json
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import cv2
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from smsdd_jax import checkpointing
from smsdd_jax import rundir
from smsdd_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
# A byte-flip try that Orbax itself refuses leaves TensorStore futures unread.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


# ------------------------------------------------------------------ 6: digests


def _plain_restore(step_dir):
  """The step's arrays read with Orbax alone (no digest check), or None when
  Orbax itself sees the damage."""
  try:
    with ocp.StandardCheckpointer() as ckpt:
      return ckpt.restore(os.path.join(step_dir, 'default'))
  except Exception:  # pylint: disable=broad-except  (TensorStore's errors)
    return None


def _rot(step_dir, flips=64):
  """Flips `flips` bytes in the middle half of the step's largest array data
  file (OCDBT's d/ files), as bit rot or a bad copy would, at places where
  Orbax alone restores it silently as other numbers (zstd decodes most such
  damage without noticing; the first seeds that do so are kept)."""
  files = [p for p in pathlib.Path(step_dir).rglob('*') if p.parent.name == 'd']
  path = max(files, key=lambda p: p.stat().st_size)
  before = _plain_restore(step_dir)
  clean = path.read_bytes()
  for seed in range(20):
    data = bytearray(clean)
    rng = np.random.default_rng(seed)
    for i in rng.choice(np.arange(len(data) // 4, len(data) * 3 // 4), flips, replace=False):
      data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    after = _plain_restore(step_dir)
    if after is not None and not all(
        np.array_equal(a, b, equal_nan=True)
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)):
      return
  raise AssertionError(f'no byte flips in {path} that Orbax restores silently')


def _weights(step):
  return {'w': np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32) * step,
          'b': np.ones(3, np.float32)}


def test_a_bit_rotted_step_is_unreadable_and_resume_moves_it_aside(tmp_path, caplog):
  ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=5)
  for step in (1, 2):
    ckpt.save(step, _weights(step))
  ckpt.close()
  _rot(tmp_path / '2')
  ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=5)
  target = _weights(0)
  with pytest.raises(checkpointing.CheckpointUnreadableError,
                     match=f'^checkpoint {tmp_path}/2 is unreadable: w does not match the '
                           r'digest saved with it \(1 of 2 arrays differ'):
    ckpt.restore(target, 2)
  with caplog.at_level(logging.WARNING, logger='smsdd_jax'):
    restored = ckpt.restore_or(target)
  np.testing.assert_array_equal(restored['w'], _weights(1)['w'])
  said = [r.getMessage() for r in caplog.records]
  assert len(said) == 1 and said[0].endswith(
      f'moved aside to {tmp_path}/2.unreadable; resuming from step 1'), said
  assert ckpt.all_steps() == [1]
  ckpt.close()


def test_a_step_saved_without_a_digest_restores_and_says_so_once(tmp_path, caplog):
  with ocp.CheckpointManager(str(tmp_path), item_handlers=ocp.StandardCheckpointHandler()
                             ) as manager:  # As every step was saved before digests.
    for step in (1, 2):
      manager.save(step, args=ocp.args.StandardSave(_weights(step)))
    manager.wait_until_finished()
  ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=5)
  with caplog.at_level(logging.WARNING, logger='smsdd_jax'):
    for step in (1, 2, 2):
      np.testing.assert_array_equal(ckpt.restore(_weights(0), step)['w'], _weights(step)['w'])
  ckpt.close()
  said = [r.getMessage() for r in caplog.records]
  assert len(said) == 1 and 'has no digest' in said[0], said


def test_training_resume_moves_a_bit_rotted_latest_step_aside(quick_config, trained_run,
                                                             tmp_path, caplog):
  workdir = tmp_path / 'run'
  shutil.copytree(trained_run, workdir)  # Periodic steps 1 and 2.
  _rot(workdir / 'checkpoints' / '2')
  config = quick_config
  config.batch_size, config.num_epochs, config.log_every_steps = 32, 1, 1  # As trained.
  config.checkpoint.every_steps = 1
  with caplog.at_level(logging.INFO, logger='smsdd_jax'):
    train.train_and_evaluate(config, str(workdir))
  log = [r.getMessage() for r in caplog.records]
  rotted = [m for m in log if 'does not match the digest' in m]
  assert len(rotted) == 1 and rotted[0].startswith(
      f'checkpoint {workdir / "checkpoints" / "2"} is unreadable: '), log
  assert rotted[0].endswith('2.unreadable; resuming from step 1'), rotted
  assert any('start at 1' in m for m in log), log
  assert (workdir / 'checkpoints' / '2.unreadable').is_dir()


def _rois(folder):
  folder.mkdir()
  rng = np.random.default_rng(0)
  for i in range(2):
    cv2.imwrite(str(folder / f'roi{i}.png'), rng.integers(0, 256, (110, 230, 3), np.uint8))
  return folder


@pytest.mark.parametrize('command', ['predict', 'export'])
def test_predict_and_export_refuse_a_bit_rotted_best_checkpoint(trained_run, tmp_path,
                                                               command):
  workdir = tmp_path / 'run'
  shutil.copytree(trained_run, workdir)
  best = json.loads((workdir / rundir.BEST).read_text())['step']
  _rot(workdir / rundir.CHECKPOINTS_BEST / str(best))
  args = {'predict': [f'--input={_rois(tmp_path / "rois")}', '--roi=none',
                      f'--output={tmp_path / "scores.csv"}'],
          'export': [f'--out={tmp_path / "export"}', '--saved_model=false',
                     '--platforms=cpu']}[command]
  proc = subprocess.run([sys.executable, '-m', f'smsdd_jax.{command}',
                         f'--workdir={workdir}', *args], cwd=REPO, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 2, proc.stdout + proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and errors[0].startswith(
      f'error: checkpoint {workdir / rundir.CHECKPOINTS_BEST}/{best} is unreadable: '), errors
  assert 'does not match the digest' in errors[0]
  assert 'Traceback' not in proc.stderr
  assert not (tmp_path / 'scores.csv').exists()


# ------------------------------------------------------------------ 13: health history


def _recheck(argv):
  """launch/recheck_health.py's main in a subprocess: (exit status, stdout, stderr)."""
  proc = subprocess.run([sys.executable, 'launch/recheck_health.py', *argv], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  return proc.returncode, proc.stdout, proc.stderr


def _collapsed_run(run):
  """A finished sweep run whose val AUROC stayed at chance in every
  evaluation (magnetic_tile's split sizes): collapsed by its history alone."""
  from smsdd_jax import health  # pylint: disable=import-outside-toplevel
  run.mkdir(parents=True)
  (run / rundir.SWEEP).write_text(json.dumps({'variant': 'beta_a', 'seed': 0, 'fold': 4}))
  rows = [{'step': 100 * (i + 1), 'val/prob_spread': 0.3,
           'val/predicted_defective_fraction': 0.4, 'val/zero_embedding_fraction': 0.0,
           'val/auroc': a, 'val/num_defective': 79, 'val/num_good': 190}
          for i, a in enumerate((0.53, 0.51, 0.55, 0.49))]
  (run / rundir.METRICS).write_text(''.join(json.dumps(r) + '\n' for r in rows))
  split = {'prob_spread': 0.4, 'predicted_defective_fraction': 0.5,
           'zero_embedding_fraction': 0.0, 'auroc': 0.8, 'num_defective': 79, 'num_good': 190}
  verdict = health.diagnose(rows, {'val': split, 'test': split}, 400)
  assert verdict['status'] == 'collapsed' and verdict['reasons']
  ev = {'step': 400, 'val': split, 'test': split, 'health': verdict}
  (run / rundir.EVAL).write_text(json.dumps(ev))
  return rows, ev


@pytest.mark.parametrize('history', ['emptied', 'cut short'])
def test_recheck_health_never_drops_reasons_for_a_missing_history(tmp_path, history):
  run = tmp_path / 'sweep' / 'beta_a_s0_f4'
  rows, ev = _collapsed_run(run)
  (run / rundir.METRICS).write_text('' if history == 'emptied' else json.dumps(rows[0]) + '\n')
  rc, out, err = _recheck([str(tmp_path / 'sweep'), '--write'])
  assert rc == 1, out + err
  assert err.strip().splitlines() == [err.strip()], err  # One line.
  assert f'cannot recheck {run}: {run / rundir.METRICS}: ' in err
  assert 'cannot be checked (health left as trained)' in err
  assert ('holds no records' if history == 'emptied' else 'last record is at step 100') in err
  assert '0 finished runs checked' in out
  assert json.loads((run / rundir.EVAL).read_text()) == ev  # Not rewritten.


def test_recheck_health_of_one_run_directory_checks_that_run(tmp_path):
  run = tmp_path / 'sweep' / 'beta_a_s0_f4'
  _, ev = _collapsed_run(run)
  ev['health'] = {'status': 'ok', 'reasons': []}  # As older checks said.
  (run / rundir.EVAL).write_text(json.dumps(ev))
  rc, out, err = _recheck([str(run)])
  assert rc == 0, out + err
  assert '| ok | collapsed |' in out and '1 finished runs checked, 1 with a different' in out
  empty = tmp_path / 'empty'
  empty.mkdir()
  rc, out, err = _recheck([str(empty)])
  assert rc == 2 and err.startswith(f'error: {empty}: no run found') and '\n' == err[-1:], err
  assert len(err.strip().splitlines()) == 1 and 'checked' not in out


# ------------------------------------------------------------------ damaged sweep records


def _sweep_module():
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('sweep', REPO / 'launch' / 'sweep.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _finished_sweep(out, sweep, argv):
  """The runs sweep.py plans for `argv`, each left finished as train.py
  leaves it (no training: config.json, eval.json and the run's sweep.json)."""
  split = {k: 0.5 for k in ('accuracy', 'balanced_accuracy', 'auroc', 'escape_rate',
                            'overkill_rate')}
  split.update(tp=2, fp=1, tn=3, fn=2, num_examples=8, num_defective=4, num_good=4)
  runs = sweep.plan(sweep.parser().parse_args(argv))
  for run in runs:
    workdir = out / run['run']
    workdir.mkdir(parents=True)
    (workdir / rundir.SWEEP).write_text(json.dumps(
        {k: run[k] for k in ('variant', 'seed', 'fold', 'args')}))
    (workdir / rundir.CONFIG).write_text(json.dumps({'config': {'loss': {'beta': 0.0}}}))
    (workdir / rundir.EVAL).write_text(json.dumps(
        {'step': 10, 'checkpoint': 'best', 'threshold_rule': 'best_f1', 'threshold': 0.5,
         'val': split, 'test': split}))
  return [r['run'] for r in runs]


@pytest.mark.parametrize('damage', ['cut short', 'no variant'])
def test_a_damaged_run_record_is_named_and_exits_1_in_sweep_as_in_report(tmp_path, capsys,
                                                                        damage):
  from smsdd_jax import report  # pylint: disable=import-outside-toplevel
  sweep = _sweep_module()
  out = tmp_path / 'sweep'
  argv = [f'--out={out}', '--configs=beta_a,beta_c', '--seeds=0', '--quick',
          f'--data_dir={tmp_path / "tfds"}']
  names = _finished_sweep(out, sweep, argv)
  record = out / names[1] / rundir.SWEEP
  if damage == 'cut short':
    record.write_text(record.read_text()[:20])
  else:
    meta = json.loads(record.read_text())
    del meta['variant']
    record.write_text(json.dumps(meta))
  for command in (argv, [f'--out={out}', '--aggregate_only']):  # Full rerun, then tables.
    assert sweep.main(command) == 1, command
    said = capsys.readouterr().out
    assert f'left out {names[1]}: ' in said and str(record) in said, said
    assert f'1 run(s) could not be read (named above): {names[1]}' in said, said
    assert 'Traceback' not in said
  assert report.main([f'--sweep={out}', f'--out={tmp_path / "fig"}']) == 1
  assert str(record) in capsys.readouterr().err
  rows = report.read_csv(out / 'results.csv')
  assert {r['run'] for r in rows} == {names[0]}


def test_a_damaged_sweep_record_of_the_launcher_is_one_line(tmp_path, capsys):
  sweep = _sweep_module()
  out = tmp_path / 'sweep'
  argv = [f'--out={out}', '--configs=beta_a', '--seeds=0', '--quick']
  _finished_sweep(out, sweep, argv)
  (out / rundir.SWEEP).write_text('{"configs": "beta_a", ')
  assert sweep.main([f'--out={out}', '--aggregate_only']) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: cannot read sweep record {out / rundir.SWEEP}: ') and \
      len(err.strip().splitlines()) == 1, err
