"""Training of SMSDD: the run's set-up and the loop.

  train_and_evaluate(config, workdir)

runs `config.num_epochs` epochs of paired batches, evaluates the validation
split after each epoch (at threshold 0.5) and, at the end, chooses the decision
threshold on validation and evaluates test at it (evaluation.final_evaluation).
It writes to workdir: config.json, preprocessing.json and data_stats.json
(run_records.py, which also checks what a resume may change), metrics.jsonl,
TensorBoard events and Orbax checkpoints under checkpoints/, saved every
config.checkpoint.every_steps steps (default: each epoch), at the end and on
Ctrl-C, from which a rerun resumes; the best one by validation is kept apart
(checkpointing.BestCheckpoint). At the end evaluation.py writes threshold.json,
eval.json and eval_val.npz / eval_test.npz.

It also watches the model's health (health.py): a constant, dead or stalled
model is logged as a WARNING line when it sets in, and eval.json's "health"
says {"status": "ok" | "suspect" | "collapsed", "reasons": [...]}.

The step itself is step.py's; the split of batches over devices
data_parallel.py's.
"""
from __future__ import annotations

import functools
import itertools
import os
import signal
import threading
import time

import logging
import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from smsdd_jax import checkpointing
from smsdd_jax import evaluation
from smsdd_jax import health
from smsdd_jax import input_pipeline
from smsdd_jax import losses
from smsdd_jax import metric_writers
from smsdd_jax import metrics as metrics_lib
from smsdd_jax import models
from smsdd_jax import run_records
from smsdd_jax import rundir
from smsdd_jax import startup
from smsdd_jax.data_parallel import make_mesh, params_fingerprint, to_global
from smsdd_jax.rundir import write_json
from smsdd_jax.step import (TrainState, create_train_state, eval_step, make_optimizer,
                            make_train_step)


# The package's own logger: main.py shows it at INFO while third-party absl
# INFO chatter (Orbax logs every save in detail) stays hidden.
logging = logging.getLogger('smsdd_jax')


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


# ------------------------------------------------------------------ set-up


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuses a bad config before anything is built or compiled."""
  _check_image_size(config.data.image_size)
  losses.validate(config.loss)
  models.feature_shape(config.data.image_size, config.model.width_mult, config.model.backbone)
  for field in ('batch_size', 'eval_batch_size', 'num_epochs', 'log_every_steps'):
    if config[field] <= 0:
      raise ValueError(f'config.{field}={config[field]}: must be > 0')
  if config.checkpoint.every_steps < 0 or config.checkpoint.max_to_keep < 1:
    raise ValueError('config.checkpoint: every_steps must be >= 0 and max_to_keep >= 1')
  if config.data.normalize not in ('fixed', 'train_stats'):
    raise ValueError(f'config.data.normalize={config.data.normalize!r}: expected '
                     "'fixed' or 'train_stats'")
  metrics_lib.validate_rule(config.eval.threshold_rule, config.eval.max_escape_rate)
  if config.eval.checkpoint not in ('best', 'final'):
    raise ValueError(f'config.eval.checkpoint={config.eval.checkpoint!r}: expected '
                     "'best' or 'final'")
  if config.optimizer.learning_rate <= 0:
    raise ValueError(f'config.optimizer.learning_rate={config.optimizer.learning_rate}:'
                     ' must be > 0')
  n = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % n:
      raise ValueError(f'config.{field}={config[field]} is not divisible by the '
                       f'{n} devices of the data mesh')


def _check_image_size(size) -> None:
  """(height, width), two whole numbers >= 1: ml_collections takes
  --config.data.image_size=64x128 as ('64x128',)."""
  try:
    ok = len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                for v in size)
  except TypeError:
    ok = False
  if not ok:
    raise ValueError(f'config.data.image_size={size!r}: expected (height, width), two '
                     'whole numbers >= 1, e.g. --config.data.image_size="(110,230)"')


class Progress:
  """Step rate and ETA on the terminal."""

  def __init__(self, start_step: int, total_steps: int, batch_size: int):
    self.start_step, self.total, self.batch_size = start_step, total_steps, batch_size
    self.t0 = None

  def report(self, step: int, metrics: dict) -> str:
    now = time.perf_counter()
    if self.t0 is None:  # Start timing after the first step (its warm-up).
      self.t0, self.start_step = now, step
      return f'step {step}/{self.total} loss {metrics["loss"]:.4f}'
    rate = (step - self.start_step) / max(now - self.t0, 1e-9)
    eta = (self.total - step) / max(rate, 1e-9)
    return (f'step {step}/{self.total} loss {metrics["loss"]:.4f} '
            f'acc {metrics["accuracy"]:.3f} | {rate:.2f} steps/s '
            f'{rate * self.batch_size:.1f} pairs/s | ETA {eta / 60:.1f} min')


def _check_finite(step: int, metrics: dict, checkpointer) -> None:
  if not np.isfinite(metrics['loss']):
    last = checkpointer.latest_step()
    raise NonFiniteLossError(
        f'non-finite loss {metrics["loss"]} at step {step} (terms: '
        f'{ {k: v for k, v in metrics.items() if k != "loss"} }); last good '
        f'checkpoint: {"none" if last is None else f"step {last}"}')


class Run:
  """What one training run holds besides the state: data, functions, files."""

  def __init__(self, config, workdir: str, clock: startup.Clock | None = None):
    self.config, self.workdir = config, workdir
    self.clock = clock or startup.Clock()
    phase = self.clock.phase
    if config.data.get('source', 'tfds') == 'tfds':
      with phase('tensorflow'):  # Once per process; an export never loads it.
        input_pipeline.load_tensorflow()
    with phase('data'):  # Opens the build (or the export), building it the first time.
      self.builder = input_pipeline.prepare(config.data)
    with phase('splits'):
      self._check_splits(config)
    with phase('records'):
      # What config.json records, and on a resume the checks that it may.
      self.record = run_records.recorded_config(config, self.builder)
      taken = run_records.steps_taken(workdir)
      self.changes, self.earlier = run_records.check_resume(workdir, self.record, taken,
                                                            self.steps_per_epoch)
      preprocessing = run_records.preprocessing_record(self.builder, self.record['data'])
      run_records.check_same_data(workdir, preprocessing, taken)
    with phase('stats'):
      self.stats = run_records.data_stats(self.builder, config, workdir)
    if jax.process_index() == 0:
      write_json(os.path.join(workdir, rundir.PREPROCESSING), preprocessing)
    with phase('model'):
      mesh = make_mesh()
      self.data_sharding = NamedSharding(mesh, P('data'))
      self.replicated = NamedSharding(mesh, P())
      self.model = models.create(config.model)
      self.tx = make_optimizer(config.optimizer, self.total_steps)
      self.checkpoints = checkpointing.Checkpointer(
          os.path.join(workdir, rundir.CHECKPOINTS), max_to_keep=config.checkpoint.max_to_keep)
      self.best = checkpointing.BestCheckpoint(workdir, config.checkpoint)
      self.eval_fn = jax.jit(functools.partial(eval_step, model=self.model))

  def _check_splits(self, config) -> None:
    """Counts the splits' classes (refusing a training split without both,
    or too small for a batch, and an eval split a threshold rule cannot use)."""
    self.splits = input_pipeline.split_names(config.data)
    info = input_pipeline.split_info(self.builder, self.splits['train'])
    if not (info.num_good and info.num_defective):
      raise ValueError(f'training split {self.splits["train"]!r} of '
                       f'{config.data.name!r} lacks a class: {info}')
    if 2 * config.batch_size > info.num_examples:
      raise ValueError(f'config.batch_size={config.batch_size} pairs needs '
                       f'{2 * config.batch_size} images but the training split has '
                       f'{info.num_examples}')
    self.train_info = info
    evaluation.check_eval_splits(self.builder, self.splits, config.eval)
    self.steps_per_epoch = input_pipeline.steps_per_epoch(info.num_examples,
                                                          config.batch_size)
    self.total_steps = self.steps_per_epoch * config.num_epochs

  def resumed(self, step: int) -> list[dict]:
    """config.json's "resumed": the earlier resumes' changes, and this one's
    if it changed a field and resumes at `step` > 0 ({'step': from which
    step the new values hold, 'changed': {field: [was, now]}})."""
    if not step:  # Starts afresh (no usable checkpoint): the config is the run's.
      return []
    return self.earlier + ([{'step': step, 'changed': self.changes}] if self.changes else [])

  def initial_state(self) -> TrainState:
    with self.clock.phase('init'):
      state = create_train_state(self.config, self.model, self.tx)
    with self.clock.phase('restore'):
      return jax.device_put(self.checkpoints.restore_or(state), self.replicated)

  def compile_eval(self, state) -> None:
    """Compiles the eval step for the batches predict will give it (before
    training, so that its compile is start-up, not a pause after the first
    epoch); the first evaluation then compiles nothing."""
    size, (h, w) = self.config.eval_batch_size, self.config.data.image_size
    batch = {'image': jax.ShapeDtypeStruct((size, h, w, 3), np.float32,
                                           sharding=self.data_sharding),
             'label': jax.ShapeDtypeStruct((size,), np.int32, sharding=self.data_sharding)}
    self.eval_fn.lower(state.params, state.model_state, batch).compile()

  def predict(self, state, prefix: str) -> dict:
    """Per-example arrays of split 'val' or 'test' (evaluation.predict_split)."""
    batches = input_pipeline.eval_batches(self.builder, self.splits[prefix], self.config,
                                          stats=self.stats)
    return evaluation.predict_split(self.eval_fn, state, batches, self.data_sharding)

  def evaluate(self, state, prefix: str, threshold: float = 0.5) -> dict:
    """evaluation.summarize()'s metrics of one split, keys prefixed ('val/accuracy')."""
    result = evaluation.summarize(self.predict(state, prefix), threshold)
    return {f'{prefix}/{k}': v for k, v in result.items()}

  def close(self) -> None:
    self.checkpoints.close()
    self.best.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       clock: startup.Clock | None = None) -> dict:
  """Trains, evaluates val each epoch and test at the end; returns the last
  metrics written ({'val/accuracy': ..., 'test/accuracy': ...}).

  The start-up's phases (startup.Clock: `clock`, holding any phase timed
  before, e.g. main.py's imports) are logged in one line before step 1.

  Resumes from workdir's latest checkpoint. Ctrl-C saves the current step
  before it exits (KeyboardInterrupt is re-raised).

  Process 0 owns workdir while it runs (rundir.Claim): a second training on
  it is refused (rundir.WorkdirError) before writing anything, and a run
  refused before its first step removes the workdir it created."""
  validate_config(config)
  workdir = os.path.abspath(workdir)
  with rundir.Claim(workdir, lock=jax.process_index() == 0) as claim:
    run = Run(config, workdir, clock)
    try:
      state = run.initial_state()  # Refuses a mismatching checkpoint first...
      # ...so config.json still describes it.
      with run.clock.phase('records'):
        run_records.write_run_info(config, workdir, run.record, run.resumed(int(state.step)))
      logging.info('train split: %s; %d steps/epoch, %d steps; params %d; start at %d',
                   run.train_info, run.steps_per_epoch, run.total_steps,
                   models.count_params(state.params), int(state.step))
      claim.keep()
      return _train_loop(run, state)
    finally:
      run.close()


def _train_loop(run: Run, state: TrainState) -> dict:
  config, start_step = run.config, int(state.step)
  # A resumed run first drops the records written after its checkpoint, so
  # metrics.jsonl never repeats a step or runs backwards.
  writer = metric_writers.MetricWriter(run.workdir, enabled=jax.process_index() == 0,
                                       resume_step=start_step)
  monitor = health.Monitor(_records_up_to(run.workdir, start_step))
  train_step_fn = make_train_step(run.model, run.tx, config.loss)
  batches = _compiled_start(run, state, train_step_fn)
  progress = Progress(start_step, run.total_steps, config.batch_size)
  every_ckpt = config.checkpoint.every_steps or run.steps_per_epoch
  last = {}
  with _DeferredInterrupt() as interrupt:
    try:
      for step in range(start_step + 1, run.total_steps + 1):
        if interrupt.requested:  # Checked between steps: state is whole here.
          raise KeyboardInterrupt
        state, metrics = train_step_fn(state, next(batches))
        metrics = jax.device_get(metrics)
        _check_finite(step, metrics, run.checkpoints)
        if step % config.log_every_steps == 0 or step == start_step + 1:
          _record(writer, monitor, step, {f'train/{k}': v for k, v in metrics.items()})
          logging.info(progress.report(step, metrics))
        if step % run.steps_per_epoch == 0 or step == run.total_steps:
          last = run.evaluate(state, 'val')
          undefined = _record(writer, monitor, step, last, 'val')
          best = run.best.update(step, state, last)
          logging.info('step %d: %s%s', step, evaluation.format_metrics(last, undefined),
                       ' (best)' if best else '')
        if step % every_ckpt == 0 or step == run.total_steps:
          run.checkpoints.save(step, state)
      test, report = evaluation.final_evaluation(run, state, monitor)
      undefined = metrics_lib.undefined_reasons(test, 'test/')
      writer.write(int(state.step), test, undefined)
      logging.info('test: %s', evaluation.format_metrics(test, undefined))
      logging.info('process %d/%d: final params fingerprint %.10e', jax.process_index(),
                   jax.process_count(), params_fingerprint(state.params))
      evaluation.log_health(report)
      evaluation.log_summary(run, test, report)
      return {**last, **test, 'health': report}
    except KeyboardInterrupt:
      if interrupt.requested:  # A clean stop between steps: save it.
        done = int(state.step)
        if done > start_step and run.checkpoints.latest_step() != done:
          run.checkpoints.save(done, state)
        logging.info('interrupted: saved step %d in %s; rerun to resume', done,
                     run.checkpoints.directory)
      raise
    finally:
      writer.close()


def _compiled_start(run: Run, state: TrainState, train_step_fn):
  """The training batches, from the run's first step on, with the train and
  eval steps compiled for them; logs the start-up's line."""
  config, start_step = run.config, int(state.step)
  with run.clock.phase('pairs'):  # The training images read, the first batch made.
    pairs = input_pipeline.train_pairs(
        run.builder, config, stats=run.stats, start_step=start_step,
        shard=(jax.process_index(), jax.process_count()))
    batches = (to_global(batch, run.data_sharding) for batch in pairs)
    first = next(batches) if start_step < run.total_steps else None
  with run.clock.phase('compile'):
    if first is not None:
      train_step_fn.lower(state, first).compile()
    run.compile_eval(state)
  run.clock.log_once()
  return batches if first is None else itertools.chain([first], batches)


def _records_up_to(workdir: str, step: int) -> list[dict]:
  """The metrics.jsonl records of steps <= `step` (what a resumed run's
  health history starts from)."""
  if not os.path.exists(os.path.join(workdir, rundir.METRICS)):
    return []
  return [r for r in rundir.read_metrics(workdir) if r.get('step', 0) <= step]


def _record(writer, monitor: health.Monitor, step: int, scalars: dict,
            split: str | None = None) -> dict:
  """Writes one record, warns of a health condition that sets in with it;
  returns the reasons of the eval `split`'s undefined metrics ({key: why})."""
  undefined = metrics_lib.undefined_reasons(scalars, f'{split}/') if split else {}
  writer.write(step, scalars, undefined)
  for finding in monitor.observe(step, scalars):
    logging.warning('WARNING health: %s: %s', finding.severity, finding.reason())
  return undefined


class _DeferredInterrupt:
  """Turns the first Ctrl-C (SIGINT) into a flag the loop checks between
  steps, so the save happens on a whole state (a step interrupted midway has
  already consumed its donated input state). A second Ctrl-C interrupts at
  once. Outside the main thread signals cannot be caught: a no-op there."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def _handler(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    logging.info('Ctrl-C: stopping after this step (press again to abort now)')

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handler)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
    return False

