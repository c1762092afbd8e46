"""The real training program, end to end on the tiny quick config."""
import functools
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from smsdd_jax import checkpointing
from smsdd_jax import input_pipeline
from smsdd_jax import losses
from smsdd_jax import metric_writers
from smsdd_jax import models
from smsdd_jax import metrics as metrics_lib
from smsdd_jax import rundir
from smsdd_jax import step as step_lib
from smsdd_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


def two_step_config(config, epochs=1):
  """The small train split has 128 images: batch 32 pairs = 2 steps an epoch."""
  config.batch_size = 32
  config.num_epochs = epochs
  config.log_every_steps = 1
  return config


def test_train_and_evaluate_writes_the_run(quick_config, tmp_path):
  workdir = str(tmp_path / 'run')
  result = train.train_and_evaluate(two_step_config(quick_config), workdir)
  for name in ('config.json', 'metrics.jsonl', 'tensorboard', 'checkpoints'):
    assert os.path.exists(os.path.join(workdir, name)), name
  info = json.load(open(os.path.join(workdir, 'config.json')))
  assert info['config']['loss']['beta'] == quick_config.loss.beta
  assert 'jax' in info['versions'] and 'flax' in info['versions']
  records = metric_writers.read_metrics(workdir)
  keys = set().union(*records)
  for key in ('train/loss', 'train/cross_entropy', 'train/contrastive', 'train/l2_grads',
              'val/accuracy', 'val/balanced_accuracy', 'test/accuracy'):
    assert key in keys, key
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2]
  assert 0.0 <= result['test/accuracy'] <= 1.0
  test_row = next(r for r in records if 'test/accuracy' in r)
  for key in ('test/tp', 'test/fp', 'test/tn', 'test/fn', 'test/num_examples',
              'test/checkpoint_step'):
    assert type(test_row[key]) is int, key
  ev = json.load(open(os.path.join(workdir, 'eval.json')))
  assert type(ev['test']['tp']) is int and type(ev['val']['num_good']) is int
  # Two steps in, a model may still call every image one class ('suspect'),
  # but nothing here is dead.
  assert ev['health']['status'] in ('ok', 'suspect'), ev['health']
  assert isinstance(ev['undefined'], dict)
  assert checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                    max_to_keep=3).all_steps() == [2]
  scalars = metric_writers.read_tensorboard_scalars(workdir)
  assert [step for step, _ in scalars['train/loss']] == [1, 2]
  assert scalars['test/accuracy'][0][1] == pytest.approx(result['test/accuracy'])


def _final_params(workdir, config):
  model = models.create(config.model)
  tx = step_lib.make_optimizer(config.optimizer)
  target = step_lib.create_train_state(config, model, tx)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'), max_to_keep=3)
  try:
    state = ckpt.restore(target)
  finally:
    ckpt.close()
  return state


def test_resume_continues_where_it_stopped_and_matches_a_straight_run(
    quick_config, tmp_path):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  train.train_and_evaluate(two_step_config(quick_config.copy_and_resolve_references(), 2),
                           straight)
  train.train_and_evaluate(two_step_config(quick_config.copy_and_resolve_references(), 1),
                           resumed)
  train.train_and_evaluate(two_step_config(quick_config.copy_and_resolve_references(), 2),
                           resumed)
  steps = [r['step'] for r in metric_writers.read_metrics(resumed) if 'train/loss' in r]
  assert steps == [1, 2, 3, 4]  # The rerun started at step 3, not from scratch.
  a = _final_params(straight, quick_config)
  b = _final_params(resumed, quick_config)
  assert int(a.step) == int(b.step) == 4
  for x, y in zip(jax.tree_util.tree_leaves(a.params), jax.tree_util.tree_leaves(b.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _setup(config):
  model = models.create(config.model)
  tx = step_lib.make_optimizer(config.optimizer)
  state = step_lib.create_train_state(config, model, tx)
  return model, tx, state


@pytest.mark.parametrize('batch_norm,max_ratio', [(True, 0.1), (False, 0.93)])
def test_loss_goes_down_on_a_fixed_batch(quick_config, batch_norm, max_ratio):
  """40 steps on one batch of 8 pairs. The paper's plain VGG16 at 1/16 width
  learns slowly from scratch at lr 0.01 (0.695 -> 0.61 here); with batch norm
  it fits the batch (0.71 -> 0.001). A broken gradient fails either bound."""
  builder = input_pipeline.prepare(quick_config.data)
  quick_config.batch_size = 8
  quick_config.model.batch_norm = batch_norm
  batch = next(input_pipeline.train_pairs(builder, quick_config))
  model, tx, state = _setup(quick_config)
  step = step_lib.make_train_step(model, tx, quick_config.loss)
  first = None
  for _ in range(40):
    state, metrics = step(state, batch)
    first = float(metrics['loss']) if first is None else first
  assert float(metrics['loss']) < max_ratio * first, (first, float(metrics['loss']))
  assert int(state.step) == 40


def test_step_compiles_once(quick_config):
  builder = input_pipeline.prepare(quick_config.data)
  pairs = input_pipeline.train_pairs(builder, quick_config)
  model, tx, state = _setup(quick_config)
  chex.clear_trace_counter()

  @functools.partial(jax.jit, donate_argnums=0)
  @chex.assert_max_traces(n=1)
  def step(state, batch):
    return step_lib.train_step(state, batch, model=model, tx=tx,
                               loss_config=quick_config.loss)

  for _ in range(4):  # Host batches, donated state: no retrace after the first.
    state, _ = step(state, next(pairs))


def test_the_loop_guard_catches_a_retrace(quick_config):
  builder = input_pipeline.prepare(quick_config.data)
  pairs = input_pipeline.train_pairs(builder, quick_config)
  model, tx, state = _setup(quick_config)
  step = step_lib.make_train_step(model, tx, quick_config.loss)
  for _ in range(2):
    state, _ = step(state, next(pairs))
  smaller = {k: v[:2] for k, v in next(pairs).items()}
  with pytest.raises(step_lib.RetraceError, match='traced 2 times'):
    step(state, smaller)


def test_non_finite_loss_stops_the_run_naming_the_step(quick_config, tmp_path):
  if 'test_nan' not in losses.registered():
    losses.register('test_nan')(lambda ctx, cfg: jnp.mean(ctx['logits']) * jnp.nan)
  quick_config.loss.extra = ml_collections.ConfigDict({'test_nan': 1.0})
  with pytest.raises(train.NonFiniteLossError, match='at step 1'):
    train.train_and_evaluate(two_step_config(quick_config), str(tmp_path / 'nan'))


@pytest.mark.parametrize('field,value,match', [
    ('batch_size', 0, 'config.batch_size'), ('num_epochs', -1, 'config.num_epochs'),
    ('batch_size', 65, 'config.batch_size=65 pairs needs 130 images'),
    ('data.image_size', (20, 230), 'too small'),
    ('loss.beta', -0.5, 'config.loss.beta'), ('loss.margin', 0.0, 'config.loss.margin'),
    ('data.normalize', 'imagenet', 'config.data.normalize')])
def test_bad_config_is_refused_before_training(quick_config, field, value, match,
                                               tmp_path):
  holder, _, key = field.rpartition('.')
  (quick_config[holder] if holder else quick_config)[key] = value
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(quick_config, str(tmp_path / 'bad'))
  assert not os.path.exists(tmp_path / 'bad' / 'checkpoints')


def test_summary_on_a_hand_made_case():
  labels = np.array([0, 0, 0, 1, 1])
  prob = np.array([0.1, 0.6, 0.2, 0.9, 0.4])
  s = metrics_lib.summary(labels, prob)
  assert s['accuracy'] == pytest.approx(3 / 5)
  assert s['recall_defective'] == pytest.approx(0.5)
  assert s['overkill_rate'] == pytest.approx(1 / 3)
  assert s['balanced_accuracy'] == pytest.approx((0.5 + 2 / 3) / 2)


# ------------------------------------------------------------------ best checkpoint ties


def _best(workdir, *tie_breakers, metric='val/balanced_accuracy', mode='max'):
  return checkpointing.BestCheckpoint(str(workdir), ml_collections.ConfigDict(
      {'best_metric': metric, 'best_mode': mode, 'best_tie_breakers': tie_breakers}))


def test_a_tie_in_the_best_metric_goes_to_the_tie_breakers(tmp_path):
  state = {'w': np.zeros(3, np.float32)}
  best = _best(tmp_path, 'val/auroc:max', 'val/cross_entropy:min')
  try:
    m = lambda ba, auroc, ce: {'val/balanced_accuracy': ba, 'val/auroc': auroc,
                               'val/cross_entropy': ce}
    assert best.update(2, state, m(0.75, 0.60, 0.70))
    assert best.update(4, state, m(0.75, 0.80, 0.90))  # Tie: the higher AUROC.
    assert not best.update(6, state, m(0.75, 0.70, 0.10))  # Tie, lower AUROC.
    assert best.update(8, state, m(0.75, 0.80, 0.50))  # Tie twice: the lower CE.
    assert not best.update(10, state, m(0.75, 0.80, 0.50))  # A full tie: the earlier.
    assert not best.update(12, state, m(float('nan'), 0.99, 0.01))  # Undefined loses.
    # Float noise is a tie (lost here on AUROC), not a better balanced accuracy.
    assert not best.update(14, state, m(0.7500000000000001, 0.5, 0.9))
  finally:
    best.close()
  saved = json.loads((tmp_path / 'best.json').read_text())
  assert saved == {'step': 8, 'metric': 'val/balanced_accuracy', 'value': 0.75,
                   'tie_breakers': {'val/auroc': 0.8, 'val/cross_entropy': 0.5}}
  assert sorted(os.listdir(tmp_path / 'checkpoints_best')) == ['8']
  resumed = _best(tmp_path, 'val/auroc:max', 'val/cross_entropy:min')
  try:  # A resumed run breaks ties against the saved tie-breaker values.
    assert not resumed.update(16, state, m(0.75, 0.80, 0.60))
    assert resumed.update(18, state, m(0.75, 0.80, 0.40))
  finally:
    resumed.close()


def test_an_undefined_first_best_does_not_block_later_ones(tmp_path):
  best = _best(tmp_path)
  try:
    assert best.update(1, {'w': np.zeros(2)}, {'val/balanced_accuracy': float('nan')})
    assert json.loads((tmp_path / 'best.json').read_text())['value'] is None
    assert best.update(2, {'w': np.zeros(2)}, {'val/balanced_accuracy': 0.5})
  finally:
    best.close()


def test_a_bad_tie_breaker_is_refused(tmp_path):
  with pytest.raises(ValueError, match="'val/auroc' has mode 'up'"):
    _best(tmp_path, 'val/auroc:up')
  with pytest.raises(ValueError, match="'val/auroc' should be 'metric:max'"):
    _best(tmp_path, 'val/auroc')


# ------------------------------------------------------------------ metrics.jsonl


def test_metrics_jsonl_keeps_counts_integer_and_writes_null_with_a_reason(tmp_path):
  writer = metric_writers.MetricWriter(str(tmp_path))
  writer.write(3, {'test/tp': np.int64(3), 'test/precision': float('nan'),
                   'test/accuracy': np.float32(0.75), 'test/checkpoint_step': 2},
               {'test/precision': 'no image predicted defective'})
  writer.write(4, {'train/l2_grads': np.float32(np.inf)})
  writer.close()
  text = (tmp_path / 'metrics.jsonl').read_text()
  assert 'NaN' not in text and 'Infinity' not in text
  first, second = metric_writers.read_metrics(str(tmp_path))
  assert first == {'step': 3, 'test/tp': 3, 'test/precision': None, 'test/accuracy': 0.75,
                   'test/checkpoint_step': 2,
                   'undefined': {'test/precision': 'no image predicted defective'}}
  assert type(first['test/tp']) is int and '"test/tp": 3,' in text
  assert second['undefined'] == {'train/l2_grads': 'not a finite number (inf)'}


def test_drop_records_after_a_step(tmp_path):
  rows = [{'step': 1, 'train/loss': 1.0}, {'step': 2, 'train/loss': 0.9},
          {'step': 2, 'val/accuracy': 0.5}, {'step': 2, 'test/accuracy': 0.4},
          {'step': 3, 'train/loss': 0.8}, {'step': 4, 'val/accuracy': 0.6}]
  path = tmp_path / 'metrics.jsonl'
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 5, "train/lo')
  # The final test row at the restored step goes too: the rerun writes it again.
  assert metric_writers.drop_records_after(str(tmp_path), 2) == 4
  assert metric_writers.read_metrics(str(tmp_path)) == rows[:3]
  assert os.listdir(tmp_path) == ['metrics.jsonl']  # The temporary file was renamed.
  assert metric_writers.drop_records_after(str(tmp_path), 2) == 0
  assert metric_writers.drop_records_after(str(tmp_path), 0) == 3


def test_after_a_kill_and_resume_metrics_jsonl_holds_each_step_once_in_order(
    quick_config, tmp_path):
  """Killed at step 4 after its metrics were written, before its checkpoint
  (nor that of step 3) landed, mid-line: the rerun restores step 2."""
  workdir = tmp_path / 'run'
  config = two_step_config(quick_config, epochs=2)
  config.checkpoint.every_steps = 1
  config.checkpoint.max_to_keep = 5
  train.train_and_evaluate(config.copy_and_resolve_references(), str(workdir))
  for step in ('3', '4'):
    shutil.rmtree(workdir / 'checkpoints' / step)
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 5, "train/loss": 0.6')  # Cut short by the kill.
  before = metric_writers.read_metrics(str(workdir))
  train.train_and_evaluate(config, str(workdir))
  records = metric_writers.read_metrics(str(workdir))
  steps = [r['step'] for r in records]
  assert steps == sorted(steps), steps  # Never backwards.
  seen = [(r['step'], k) for r in records for k in r if k not in ('step', 'undefined')]
  assert len(seen) == len(set(seen)), steps  # No step's metric written twice.
  assert [r['step'] for r in records if 'train/loss' in r] == [1, 2, 3, 4]
  assert [r['step'] for r in records if 'val/accuracy' in r] == [2, 4]
  assert [r['step'] for r in records if 'test/accuracy' in r] == [4]
  assert records[:3] == before[:3]  # Up to the checkpoint: kept as written.
  assert not [p for p in os.listdir(workdir) if '.tmp' in p]


# ------------------------------------------------------------------ the workdir


def _snapshot(directory):
  """{name: (size, mtime, bytes)} of every file under `directory`."""
  return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns,
                                          p.read_bytes())
          for p in sorted(pathlib.Path(directory).rglob('*')) if p.is_file()}


def test_a_claim_is_refused_while_its_owner_lives_and_freed_when_it_dies(tmp_path):
  workdir = tmp_path / 'run'
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from smsdd_jax import rundir; '
       'rundir.Claim(sys.argv[1]).__enter__(); print("held", flush=True); time.sleep(600)',
       str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    assert rundir.owner(str(workdir)) == str(holder.pid)
    with pytest.raises(rundir.WorkdirError) as refused:
      with rundir.Claim(str(workdir)):
        pass
    assert str(refused.value) == (
        f'workdir {workdir} is in use by process {holder.pid} ({workdir}/.lock): wait for '
        'it to end, or pass another --workdir')
  finally:
    holder.send_signal(signal.SIGKILL)  # No handler, no clean-up: the kernel frees it.
    holder.wait()
  assert rundir.owner(str(workdir)) is None
  with rundir.Claim(str(workdir)) as claim:  # Its stale .lock file is no obstacle.
    assert not claim.created and rundir.owner(str(workdir)) == str(os.getpid())
  assert os.listdir(workdir) == []  # The lock file goes with the claim.


def test_a_second_training_on_a_busy_workdir_is_refused_touching_nothing(
    quick_config, tmp_path):
  workdir = tmp_path / 'run'
  with rundir.Claim(str(workdir)):  # As a training process holds it.
    (workdir / 'metrics.jsonl').write_text('{"step": 1, "train/loss": 0.7}\n')
    before = _snapshot(workdir)
    proc = subprocess.run(
        [sys.executable, '-m', 'smsdd_jax.main', '--config=configs/beta_c.py:quick',
         f'--workdir={workdir}', f'--config.data.data_dir={quick_config.data.data_dir}'],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'})
    assert _snapshot(workdir) == before
  assert proc.returncode == 2, proc.stdout + proc.stderr
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error')]
  assert errors == [f'error: workdir {workdir} is in use by process {os.getpid()} '
                    f'({workdir}/.lock): wait for it to end, or pass another --workdir']
  assert proc.stderr.endswith(errors[0] + '\n') and 'Traceback' not in proc.stderr


def test_a_workdir_that_is_a_file_is_one_line(quick_config, tmp_path):
  path = tmp_path / 'run'
  path.write_text('mine')
  with pytest.raises(rundir.WorkdirError) as refused:
    train.train_and_evaluate(quick_config, str(path))
  assert str(refused.value) == (f'workdir {path} is a file, not a directory; pass another '
                                '--workdir (or move the file)')
  with pytest.raises(rundir.WorkdirError) as refused:
    train.train_and_evaluate(quick_config, str(path / 'run'))
  assert str(refused.value) == (f'cannot create workdir {path / "run"}: {path} is a file, '
                                'not a directory; pass another --workdir (or move the file)')
  assert path.read_text() == 'mine'


def test_a_workdir_where_nothing_can_be_written_is_one_line(quick_config):
  """sysfs takes no new file or folder, not even from root (which any
  chmod-ed folder would let through): the closest to a read-only disk that
  every Linux machine has."""
  with open('/proc/mounts', encoding='utf-8') as f:
    if not any(line.split()[1:3] == ['/sys', 'sysfs'] for line in f):
      pytest.skip('no sysfs mounted at /sys: no location that refuses writes')
  with pytest.raises(rundir.WorkdirError) as refused:
    train.train_and_evaluate(quick_config, '/sys/kernel/smsdd_run')
  assert str(refused.value) == ('cannot create workdir /sys/kernel/smsdd_run: Operation '
                                'not permitted; pass another --workdir')
  with pytest.raises(rundir.WorkdirError) as refused:
    train.train_and_evaluate(quick_config, '/sys/kernel')
  assert str(refused.value) == ('cannot write in workdir /sys/kernel: Permission denied '
                                '(/sys/kernel/.lock); pass another --workdir')


def _refuse(config, tmp_path, refusal):
  """Sets `config` up for a refusal before training; returns what it says."""
  if refusal == 'fold':
    config.data.kfold, config.data.fold = 5, 5
    return 'config.data.kfold/fold'
  init = tmp_path / refusal
  config.model.init = str(init)
  if refusal == 'junk_file':
    init.write_bytes(b'not a weights file')
    return 'unknown format'
  init.mkdir()
  if refusal == 'run_dir':
    (init / 'config.json').write_text('{}')
    return (f'config.model.init={init}: a training run directory, not a weights file: '
            'expected an ImageNet VGG16 weights file (.pth state dict, .safetensors or '
            f'Keras .h5); to continue that run, rerun its command with --workdir={init} '
            'and no model.init')
  return (f'config.model.init={init}: a directory, not a file: expected an ImageNet '
          'VGG16 weights file (.pth state dict, .safetensors or Keras .h5)')


@pytest.mark.parametrize('refusal', ['fold', 'junk_file', 'weights_dir', 'run_dir'])
def test_a_run_refused_before_training_leaves_no_workdir_behind(quick_config, tmp_path,
                                                               refusal):
  want = _refuse(quick_config, tmp_path, refusal)
  theirs = tmp_path / 'theirs'  # A workdir this run did not make: it stays as it was.
  theirs.mkdir()
  (theirs / 'notes.txt').write_text('keep me')
  for workdir in (tmp_path / 'new' / 'run', theirs):
    with pytest.raises(ValueError) as refused:
      train.train_and_evaluate(quick_config, str(workdir))
    assert want in str(refused.value) and '\n' not in str(refused.value)
  assert not (tmp_path / 'new' / 'run').exists()
  assert os.listdir(theirs) == ['notes.txt']
