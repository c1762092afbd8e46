"""Checkpoints: best kept apart, mismatch messages, atomic saves, Ctrl-C,
damaged steps, the plain-Orbax restore."""
import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from smsdd_jax import checkpointing
from smsdd_jax import metric_writers
from smsdd_jax import models
from smsdd_jax import step
from smsdd_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def small_run(config, epochs):
  config.batch_size = 32  # 128 train images -> 2 steps an epoch.
  config.num_epochs = epochs
  config.log_every_steps = 1
  return config


def target_for(config):
  return step.create_train_state(config, models.create(config.model),
                                 step.make_optimizer(config.optimizer))


def test_best_checkpoint_is_kept_apart_from_pruned_periodic_ones(quick_config, tmp_path):
  config = small_run(quick_config, epochs=3)
  config.checkpoint.max_to_keep = 1
  config.checkpoint.best_metric = 'val/cross_entropy'
  config.checkpoint.best_mode = 'min'
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  best = json.loads((workdir / 'best.json').read_text())
  val = [r for r in metric_writers.read_metrics(str(workdir)) if 'val/cross_entropy' in r]
  want = min(val, key=lambda r: r['val/cross_entropy'])
  assert best['step'] == want['step'] and best['value'] == pytest.approx(
      want['val/cross_entropy'])
  assert sorted(os.listdir(workdir / 'checkpoints_best')) == [str(best['step'])]
  assert checkpointing.Checkpointer(str(workdir / 'checkpoints'),
                                    max_to_keep=1).all_steps() == [6]
  restored = checkpointing.Checkpointer(str(workdir / 'checkpoints_best'),
                                        max_to_keep=1).restore(target_for(config))
  assert int(restored.step) == best['step']


def test_a_checkpoint_of_another_model_is_refused_by_name(quick_config, trained_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(trained_run, workdir)  # A finished 1-epoch run at 1/16 width.
  wider = small_run(quick_config.copy_and_resolve_references(), 2)
  wider.model.width_mult = 1 / 8
  bn = small_run(quick_config.copy_and_resolve_references(), 2)
  bn.model.batch_norm = True
  # The run's config.json refuses them first, naming the field ...
  with pytest.raises(ValueError, match=r'model.width_mult 0.0625 -> 0.125'):
    train.train_and_evaluate(wider, str(workdir))
  with pytest.raises(ValueError, match=r'model.batch_norm False -> True'):
    train.train_and_evaluate(bn, str(workdir))
  saved = json.loads((workdir / 'config.json').read_text())
  # ... and without it (a copied checkpoint folder) the checkpoint's shapes do.
  bare = tmp_path / 'bare'
  shutil.copytree(workdir / 'checkpoints', bare / 'checkpoints')
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r'params/block1_conv1/bias is \(4,\) there but \(8,\) here'):
    train.train_and_evaluate(wider, str(bare))
  with pytest.raises(checkpointing.CheckpointMismatchError, match='block1_conv1_bn'):
    train.train_and_evaluate(bn, str(bare))
  assert saved['config']['model']['width_mult'] == 1 / 16  # Not overwritten.


_SAVER = textwrap.dedent('''
    import sys, numpy as np
    from smsdd_jax import checkpointing
    ckpt = checkpointing.Checkpointer(sys.argv[1], max_to_keep=3)
    ckpt.save(1, {'w': np.ones((4, 4), np.float32)})
    ckpt.wait()
    print('saved 1', flush=True)
    big = {f'w{i}': np.full((64, 1024, 1024), i, np.float32) for i in range(6)}  # 1.5 GB
    ckpt.save(2, big)
    ckpt.wait()
    print('saved 2', flush=True)
''')


def test_a_process_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
  directory = tmp_path / 'ckpt'
  proc = subprocess.Popen([sys.executable, '-c', _SAVER, str(directory)], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    assert proc.stdout.readline().strip() == 'saved 1'
    deadline = time.time() + 120
    while not any('tmp' in p.name for p in directory.iterdir()):
      assert time.time() < deadline and proc.poll() is None, 'save 2 never started'
      time.sleep(0.01)
  finally:
    proc.kill()  # SIGKILL: no handler, no cleanup, mid-write.
    proc.wait()
  ckpt = checkpointing.Checkpointer(str(directory), max_to_keep=3)
  assert ckpt.latest_step() == 1
  restored = ckpt.restore({'w': np.zeros((4, 4), np.float32)})
  np.testing.assert_array_equal(restored['w'], np.ones((4, 4)))
  ckpt.close()


def test_ctrl_c_saves_the_current_step_and_a_rerun_resumes(quick_config, tmp_path):
  workdir = tmp_path / 'run'
  cmd = [sys.executable, '-m', 'smsdd_jax.main', '--config=configs/beta_c.py:quick',
         f'--workdir={workdir}', f'--config.data.data_dir={quick_config.data.data_dir}',
         '--config.num_epochs=50', '--config.log_every_steps=1']
  proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for line in proc.stdout:
    if 'step 3/' in line:
      proc.send_signal(signal.SIGINT)
      break
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 130, out
  ckpt = checkpointing.Checkpointer(str(workdir / 'checkpoints'), max_to_keep=3)
  interrupted_at = ckpt.latest_step()
  ckpt.close()
  assert interrupted_at is not None and interrupted_at >= 3, out
  cmd[-2] = '--config.num_epochs=1'  # 16 steps: the rerun does the rest.
  rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert f'start at {interrupted_at}' in rerun.stdout


# ------------------------------------------------------------------ damaged checkpoints


def _largest_data_file(step_dir):
  """The biggest array data file of an Orbax step (OCDBT's d/ files)."""
  files = [p for p in pathlib.Path(step_dir).rglob('*') if p.parent.name == 'd']
  return max(files, key=lambda p: p.stat().st_size)


def test_resume_skips_an_unreadable_latest_checkpoint(quick_config, trained_run, tmp_path,
                                                     caplog):
  workdir = tmp_path / 'run'
  shutil.copytree(trained_run, workdir)  # Periodic steps 1 and 2.
  data = _largest_data_file(workdir / 'checkpoints' / '2')
  os.truncate(data, data.stat().st_size // 2)  # A disk that filled up mid-copy.
  config = small_run(quick_config, epochs=1)  # The fixture's run: 2 steps.
  config.checkpoint.every_steps = 1
  with caplog.at_level(logging.INFO, logger='smsdd_jax'):
    train.train_and_evaluate(config, str(workdir))
  log = [r.getMessage() for r in caplog.records]
  unreadable = [m for m in log if 'is unreadable' in m]
  assert len(unreadable) == 1, log
  assert unreadable[0].startswith(f'checkpoint {workdir / "checkpoints" / "2"} is unreadable: ')
  assert 'resuming from step 1' in unreadable[0] and '2.unreadable' in unreadable[0]
  assert any('start at 1' in m for m in log), log
  assert (workdir / 'checkpoints' / '2.unreadable').is_dir()  # Kept for a look.
  ckpt = checkpointing.Checkpointer(str(workdir / 'checkpoints'), max_to_keep=3)
  assert ckpt.all_steps() == [1, 2]  # Step 2 trained and saved again, readable.
  assert int(ckpt.restore(target_for(config)).step) == 2
  ckpt.close()
  assert (workdir / 'eval.json').is_file()


def _tiny_checkpoints(directory, steps):
  ckpt = checkpointing.Checkpointer(str(directory), max_to_keep=5)
  for s in steps:
    ckpt.save(s, {'w': np.full((8, 8), s, np.float32)})
  ckpt.close()


def test_an_emptied_metadata_file_is_named(tmp_path, caplog):
  _tiny_checkpoints(tmp_path, (1, 2))
  (tmp_path / '2' / 'default' / '_METADATA').write_text('')
  ckpt = checkpointing.Checkpointer(str(tmp_path), max_to_keep=5)
  target = {'w': np.zeros((8, 8), np.float32)}
  with pytest.raises(checkpointing.CheckpointUnreadableError,
                     match=f'^checkpoint {tmp_path}/2 is unreadable: '
                           r'default/_METADATA is empty$'):
    ckpt.restore(target, 2)
  with caplog.at_level(logging.WARNING, logger='smsdd_jax'):
    restored = ckpt.restore_or(target)
  np.testing.assert_array_equal(restored['w'], np.ones((8, 8)))
  assert [r.getMessage() for r in caplog.records] == [
      f'checkpoint {tmp_path}/2 is unreadable: default/_METADATA is empty; moved aside '
      f'to {tmp_path}/2.unreadable; resuming from step 1']
  ckpt.save(2, {'w': np.full((8, 8), 7, np.float32)})  # The step can be saved again.
  ckpt.wait()
  np.testing.assert_array_equal(ckpt.restore(target)['w'], np.full((8, 8), 7))
  ckpt.close()


def test_the_readme_plain_orbax_restore_is_silent(trained_run, caplog):
  """README's one-liner restores a run's checkpoint with Orbax alone and
  without Orbax's 'could not be restored' warnings (issue 22)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  readme = (REPO / 'README.md').read_text(encoding='utf-8')
  lines = [s.strip() for s in readme.splitlines()
           if s.strip().startswith('state = ocp.CheckpointManager(')]
  assert len(lines) == 1, 'README shows no plain-Orbax restore'
  scope = {'ocp': ocp, 'path': os.path.join(trained_run, 'checkpoints'), 'step': 2}
  with caplog.at_level(logging.WARNING):
    exec(lines[0], scope)  # pylint: disable=exec-used
  assert sorted(scope['state']) == ['model_state', 'opt_state', 'params', 'rng', 'step']
  assert int(scope['state']['step']) == 2
  assert not [r for r in caplog.records if 'could not' in r.getMessage()], caplog.text


def test_a_run_saved_with_flax_automatic_layer_names_still_loads(trained_run, tmp_path):
  """Runs saved before the layers had VGG16's names (Conv_0 .. Conv_12,
  Dense_0) restore, renamed, through checkpointing alone."""
  from smsdd_jax import inference  # pylint: disable=import-outside-toplevel
  workdir = tmp_path / 'old_run'
  shutil.copytree(trained_run, workdir)
  new = inference.load_run(str(workdir))
  best = str(workdir / 'checkpoints_best')
  handler = ocp.StandardCheckpointHandler()
  with ocp.CheckpointManager(best, item_handlers=handler) as manager:
    saved = manager.restore(new.step)
  old_tree = models.rename_legacy(saved, inverse=True)
  assert {'Conv_0', 'Conv_12', 'Dense_0'} <= set(old_tree['params'])
  assert not any(k.startswith('block') for k in old_tree['params'])
  shutil.rmtree(os.path.join(best, str(new.step)))
  with ocp.CheckpointManager(best, item_handlers=ocp.StandardCheckpointHandler()) as manager:
    manager.save(new.step, args=ocp.args.StandardSave(old_tree))
    manager.wait_until_finished()
    assert models.uses_legacy_names(manager.item_metadata(new.step).tree)
  old = inference.load_run(str(workdir))
  assert list(old.params) == list(new.params)  # VGG16's names, network order.
  for a, b in ((old.params, new.params), (old.model_state, new.model_state)):
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    assert all(np.array_equal(x, y) for x, y in leaves)
  rois = np.random.default_rng(0).integers(0, 256, (3, 110, 230, 3), dtype=np.uint8)
  np.testing.assert_array_equal(inference.Predictor(str(workdir)).predict_proba(rois),
                                inference.Predictor(trained_run).predict_proba(rois))


def test_legacy_names_cover_batch_norm_and_round_trip():
  """Flax numbered BatchNorm_i like Conv_i (one per conv); the names map both
  ways and touch nothing else."""
  config = default.get_config('quick')
  config.model.batch_norm = True
  model = models.create(config.model)
  params, state = jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0),
                                                     (32, 32, 3)))
  tree = {'params': params, 'model_state': state, 'step': 0}
  old = models.rename_legacy(tree, inverse=True)
  assert sorted(old['params']) == sorted(
      [f'Conv_{i}' for i in range(13)] + [f'BatchNorm_{i}' for i in range(13)] + ['Dense_0'])
  assert sorted(old['model_state']['batch_stats']) == sorted(f'BatchNorm_{i}' for i in range(13))
  assert old['params']['BatchNorm_12']['scale'].shape == params['block5_conv3_bn']['scale'].shape
  assert models.uses_legacy_names(old) and not models.uses_legacy_names(tree)
  assert models.rename_legacy(old) == tree
