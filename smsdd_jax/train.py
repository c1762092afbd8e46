"""Training and evaluation of SMSDD: state, the jitted step, eval, the loop.

  train_and_evaluate(config, workdir)

runs `config.num_epochs` epochs of paired batches, evaluates the validation
split after each epoch (at threshold 0.5) and, at the end, chooses the decision
threshold on validation by `config.eval.threshold_rule` and evaluates test at
it. It writes to workdir: config.json (with package versions), metrics.jsonl,
TensorBoard events and Orbax checkpoints under checkpoints/, from which a
rerun resumes; at the end threshold.json, eval.json (val and test metrics at
that threshold, and the recall per defect type) and eval_val.npz /
eval_test.npz (per-example prob, label, embedding, defect type).

It also watches the model's health (health.py): a constant, dead or stalled
model is logged as a WARNING line when it sets in, and eval.json's "health"
says {"status": "ok" | "suspect" | "collapsed", "reasons": [...]}. Metrics a
split leaves undefined (precision with nothing flagged, AUROC with one class)
are null in the files, with the reason under "undefined".
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from importlib import metadata
from typing import Iterator

import logging
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from smsdd_jax import checkpointing
from smsdd_jax import dataset_export
from smsdd_jax import health
from smsdd_jax import input_pipeline
from smsdd_jax import losses
from smsdd_jax import metric_writers
from smsdd_jax import metrics as metrics_lib
from smsdd_jax import models
from smsdd_jax import pretrained
from smsdd_jax import rundir
from smsdd_jax.rundir import write_json  # noqa: F401  (callers use train.write_json)
from smsdd_jax.step import (RetraceError, TrainState, create_train_state, eval_step,  # noqa: F401
                            make_optimizer, make_train_step, train_step)


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


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices; batches are split along its 'data' axis."""
  return jax.make_mesh((jax.device_count(),), ('data',))


# ------------------------------------------------------------------ evaluation


def to_global(local_batch: dict, sharding) -> dict:
  """This process's rows -> one global array per key, split over the mesh.
  With one process, local and global are the same batch."""
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def process_rows(batch: dict) -> dict:
  """This process's contiguous share of a batch every process holds whole."""
  n, i = jax.process_count(), jax.process_index()
  return jax.tree_util.tree_map(
      lambda x: x[i * (len(x) // n):(i + 1) * (len(x) // n)], batch)


def to_host(tree):
  """Global arrays -> full numpy arrays on every process."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def predict_split(eval_fn, state: TrainState, batches: Iterator[dict],
                  sharding) -> dict:
  """Runs eval_fn over every batch; padding is dropped with the mask. Every
  process reads every batch and feeds its share of the rows to the mesh.
  Returns per-example numpy arrays: label, prob, cross_entropy, embedding."""
  parts = {'label': [], 'prob': [], 'cross_entropy': [], 'embedding': []}
  for batch in batches:
    keep = batch.pop('mask') > 0
    out = to_host(eval_fn(state.params, state.model_state,
                          to_global(process_rows(batch), sharding)))
    parts['label'].append(batch['label'][keep])
    parts['prob'].append(out['prob_defective'][keep])
    parts['cross_entropy'].append(out['cross_entropy'][keep])
    parts['embedding'].append(out['embedding'][keep])
  return {k: np.concatenate(v) for k, v in parts.items()}


def summarize(outputs: dict, threshold: float = 0.5) -> dict:
  """predict_split's arrays -> metrics.summary (accuracy and the numbers it
  hides on an imbalanced set) + mean cross-entropy +
  the numbers the health checks read (health.eval_stats: probability spread,
  share predicted defective, share of all-zero embeddings)."""
  return {**metrics_lib.summary(outputs['label'], outputs['prob'], threshold),
          'cross_entropy': float(np.mean(outputs['cross_entropy'])),
          **health.eval_stats(outputs['prob'], outputs['embedding'], threshold)}


# ------------------------------------------------------------------ the loop


def write_run_info(config, workdir: str, record: dict | None = None,
                   resumed: list | None = None) -> None:
  """config.json with the package versions and git commit beside it.
  record: the config as the run records it (Run.record; default the config
  as given); resumed: the config changes made on resuming (Run.resumed)."""
  packages = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
              'tensorflow-cpu', 'tensorflow', 'tensorflow-datasets', 'ml-collections',
              'opencv-python-headless')
  versions = {}
  for p in packages:
    try:
      versions[p] = metadata.version(p)
    except metadata.PackageNotFoundError:
      pass
  info = {'config': record or config.to_dict(), 'versions': versions,
          'python': sys.version.split()[0], 'git_commit': _git_commit(),
          'devices': [str(d) for d in jax.devices()],
          # Weights alone do not say which code ran: a term may come from a config file.
          'loss_terms': losses.describe(config.loss),
          # Their files' text, which inference.load_run runs where a term is not registered.
          'loss_term_sources': losses.term_sources(config.loss)}
  if config.model.init:  # The input convention the pretrained weights fixed.
    info['init_convention'] = pretrained.stats(config.model)['convention']
  if resumed:  # From which step on each changed value of "config" holds.
    info['resumed'] = resumed
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, rundir.CONFIG), info)


def _git_commit() -> str:
  try:
    return subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


class Progress:
  """Step rate and ETA on the terminal."""

  def __init__(self, start_step: int, total_steps: int, batch_size: int):
    self.start_step, self.total, self.batch_size = start_step, total_steps, batch_size
    self.t0 = None

  def report(self, step: int, metrics: dict) -> str:
    now = time.perf_counter()
    if self.t0 is None:  # Start timing after the first (compiling) step.
      self.t0, self.start_step = now, step
      return f'step {step}/{self.total} loss {metrics["loss"]:.4f} (compiled)'
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

  def __init__(self, config, workdir: str):
    self.config, self.workdir = config, workdir
    self.builder = input_pipeline.prepare(config.data)
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
    _check_eval_splits(self.builder, self.splits, config.eval)
    self.steps_per_epoch = input_pipeline.steps_per_epoch(info.num_examples,
                                                          config.batch_size)
    self.total_steps = self.steps_per_epoch * config.num_epochs
    # What config.json records, and on a resume the checks that it may.
    self.record = _recorded_config(config, self.builder)
    taken = _steps_taken(workdir)
    self.changes, self.earlier = _check_resume(workdir, self.record, taken,
                                               self.steps_per_epoch)
    preprocessing = _preprocessing_record(self.builder, self.record['data'])
    _check_same_data(workdir, preprocessing, taken)
    self.stats = _data_stats(self.builder, config, workdir)
    if jax.process_index() == 0:
      write_json(os.path.join(workdir, rundir.PREPROCESSING), preprocessing)
    mesh = make_mesh()
    self.data_sharding = NamedSharding(mesh, P('data'))
    self.replicated = NamedSharding(mesh, P())
    self.model = models.create(config.model)
    self.tx = make_optimizer(config.optimizer, self.total_steps)
    self.checkpoints = checkpointing.Checkpointer(
        os.path.join(workdir, rundir.CHECKPOINTS), max_to_keep=config.checkpoint.max_to_keep)
    self.best = checkpointing.BestCheckpoint(workdir, config.checkpoint)
    self.eval_fn = jax.jit(functools.partial(eval_step, model=self.model))

  def resumed(self, step: int) -> list[dict]:
    """config.json's "resumed": the earlier resumes' changes, and this one's
    if it changed a field and resumes at `step` > 0 ({'step': from which
    step the new values hold, 'changed': {field: [was, now]}})."""
    if not step:  # Starts afresh (no usable checkpoint): the config is the run's.
      return []
    return self.earlier + ([{'step': step, 'changed': self.changes}] if self.changes else [])

  def initial_state(self) -> TrainState:
    state = create_train_state(self.config, self.model, self.tx)
    return jax.device_put(self.checkpoints.restore_or(state), self.replicated)

  def predict(self, state, prefix: str) -> dict:
    """Per-example arrays of split 'val' or 'test' (predict_split)."""
    batches = input_pipeline.eval_batches(self.builder, self.splits[prefix], self.config,
                                          stats=self.stats)
    return predict_split(self.eval_fn, state, batches, self.data_sharding)

  def evaluate(self, state, prefix: str, threshold: float = 0.5) -> dict:
    """summarize()'s metrics of one split, keys prefixed ('val/accuracy')."""
    result = summarize(self.predict(state, prefix), threshold)
    return {f'{prefix}/{k}': v for k, v in result.items()}

  def close(self) -> None:
    self.checkpoints.close()
    self.best.close()


def _check_eval_splits(builder, splits: dict, eval_config) -> None:
  """A threshold chosen from data on a validation split that lacks a class is
  arbitrary: refused before training. With 'argmax' (no data needed) a
  missing class only leaves some metrics NaN: a warning."""
  for prefix in ('val', 'test'):
    info = input_pipeline.split_info(builder, splits[prefix])
    missing = metrics_lib.missing_classes([0] * info.num_good + [1] * info.num_defective)
    if not missing:
      continue
    what = (f'{prefix} split {splits[prefix]!r} has no {" and no ".join(missing)} '
            f'examples ({info})')
    if prefix == 'val' and eval_config.threshold_rule != 'argmax':
      raise ValueError(f'{what}: config.eval.threshold_rule='
                       f'{eval_config.threshold_rule!r} cannot choose a threshold on it; '
                       "use 'argmax' or a split with both classes")
    logging.warning('%s: recall, escape rate, AUROC etc. will be undefined (null)', what)


def _preprocessing_record(builder, data: dict) -> dict:
  """preprocessing.json: how the build turned files into inputs (what
  predict must do to a new file), and which build it was (on an export,
  also the export's sha256 and path). data: config.data as recorded."""
  md = builder.info.metadata or {}
  spec = md.get('preprocessing') or {'roi': 'hough'}  # Synthetic frames: screen search.
  card = md.get('card') or {}
  record = {**spec, 'dataset': f'{builder.name}/{builder.builder_config.name}',
            'version': str(builder.version), 'manual_dir': data.get('manual_dir', ''),
            'source_fingerprint': card.get('source', {}).get('fingerprint', '')}
  if isinstance(builder, dataset_export.ExportedDataset):
    record.update(export_sha256=builder.meta['sha256'],
                  export_path=os.path.abspath(builder.path))
  return record


# preprocessing.json entries that say where the data lay, not what it was.
_LOCATIONS = ('manual_dir', 'export_path')


def _check_same_data(workdir: str, record: dict, taken: int) -> None:
  """A resumed run (`taken` steps in checkpoints) must read the data its
  steps were taken on: every entry of its preprocessing.json but the
  locations (the build, its version, source fingerprint, preprocessing, the
  export's sha256) must be what config.data reads now. An entry either side
  lacks (a run older than it) is not compared."""
  path = os.path.join(workdir, rundir.PREPROCESSING)
  if not taken or not os.path.isfile(path):
    return
  old = rundir.read_json(path, 'preprocessing record')
  if not isinstance(old, dict):
    raise ValueError(f'{path}: not a preprocessing record; pass another --workdir')
  plain = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731  Tuples as lists.
  diffs = [f'{key} {old[key]!r} vs {value!r}' for key, value in record.items()
           if key not in _LOCATIONS and old.get(key) not in (None, '')
           and value not in (None, '') and plain(old[key]) != plain(value)]
  if diffs:
    raise ValueError(
        f'workdir {workdir} was trained ({taken} steps) on other data than config.data '
        f'reads now: {"; ".join(diffs)} (its {rundir.PREPROCESSING} vs now): rerun with '
        'the data it was trained on, or pass another --workdir')


# Config fields a resume may change: each leaves what the steps already
# taken computed, and what they mean, as it was. Any other change (loss,
# optimiser, model, data, seed, batch, ...) is refused; num_epochs alone is
# allowed under conditions (_check_resume). Every change is recorded in
# config.json's "resumed" with the step from which it holds.
_RESUME_FREE = frozenset({
    'log_every_steps',  # How often train metrics are written.
    'eval_batch_size',  # Eval batches are padded and masked: the same per-example outputs.
    'checkpoint.every_steps', 'checkpoint.max_to_keep',  # Which states are kept.
    'model.conv_impl',  # Speed only: every implementation computes the same function.
    'data.cache',  # Memory only.
    # Where the data lies; that it is the same data is checked (_check_same_data).
    'data.data_dir', 'data.manual_dir', 'data.export_path',
    # The final evaluation: redone whole after the last step, on the run's states.
    'eval.threshold_rule', 'eval.max_escape_rate', 'eval.checkpoint',
})


def _steps_taken(workdir: str) -> int:
  """The last step of any finished checkpoint in workdir (0: none)."""
  return max(rundir.finished_steps(os.path.join(workdir, rundir.CHECKPOINTS)) +
             rundir.finished_steps(os.path.join(workdir, rundir.CHECKPOINTS_BEST)),
             default=0)


def _default_config() -> dict | None:
  """configs/default.py's config as a dict (the value of a field a saved
  config predates), or None where configs/ cannot be imported."""
  try:
    from configs import default  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return default.get_config().to_dict()


def _recorded_config(config, builder) -> dict:
  """The config as config.json records it (input_pipeline.recorded_data)."""
  record = config.to_dict()
  record['data'] = input_pipeline.recorded_data(record['data'], builder)
  return record


def _check_resume(workdir: str, record: dict, taken: int, steps_per_epoch: int
                  ) -> tuple[dict, list]:
  """On a resume (`taken` steps in checkpoints), refuses a config that
  changes what those steps meant (ValueError naming the fields). A longer
  or shorter schedule (num_epochs) is allowed while it does not end before
  the steps taken and the learning rate does not depend on the run's length
  (schedule 'constant'): the resumed run is then the run a fresh one with
  the new value would be. Returns (the changes, {field: [was, now]}; the
  saved config.json's earlier "resumed" entries)."""
  path = os.path.join(workdir, rundir.CONFIG)
  if not taken or not os.path.isfile(path):
    return {}, []
  info = rundir.read_json(path, 'run config')
  if not isinstance(info, dict) or not isinstance(info.get('config'), dict):
    raise ValueError(f'run config {path} has no "config" entry; pass another --workdir')
  saved = json.loads(json.dumps(info['config']))
  if isinstance(saved.get('data'), dict) and saved['data'].get('source') == 'export':
    # Fields a run before recorded_data left empty: the export's, as now.
    saved['data'] = {**saved['data'], **{
        k: v for k, v in record['data'].items()
        if k in ('builder_config', 'manual_dir') and not saved['data'].get(k)}}
  changes = rundir.config_changes(saved, record, _default_config())
  refused = {k: v for k, v in changes.items() if k not in _RESUME_FREE | {'num_epochs'}}
  where = f'workdir {workdir} holds a run trained {taken} steps'
  way_out = 'rerun with the saved values, or pass another --workdir'
  if refused:
    fields = ', '.join(f'{k} {_shown(was)} -> {_shown(now)}'
                       for k, (was, now) in refused.items())
    raise ValueError(f'{where} with another config ({path}): {fields}; a resume must not '
                     f'change what those steps meant: {way_out}')
  if 'num_epochs' in changes:
    was, now = changes['num_epochs']
    schedule = record['optimizer']['schedule']
    if schedule != 'constant':
      raise ValueError(f'{where}: config.num_epochs {was} -> {now}: with '
                       f'optimizer.schedule={schedule!r} the learning rate of those steps '
                       f"depends on the run's length: {way_out}")
    if now * steps_per_epoch < taken:
      raise ValueError(f'{where}: config.num_epochs {was} -> {now} ends at step '
                       f'{now * steps_per_epoch}, before them: {way_out}')
  earlier = info.get('resumed')
  return changes, list(earlier) if isinstance(earlier, list) else []


def _shown(value) -> str:
  return 'unset' if value is None else repr(value)


def _data_stats(builder, config, workdir: str) -> dict:
  """Normalisation stats, saved beside the checkpoints for inference; a
  resumed run reuses the saved ones. Pretrained weights (config.model.init)
  fix them to the convention they were trained with."""
  path = os.path.join(workdir, rundir.DATA_STATS)
  if os.path.exists(path):
    return rundir.read_json(path, 'normalisation stats')
  if config.model.init:  # Also refuses a file that does not fit the model.
    stats = pretrained.stats(config.model)
    if config.data.normalize != 'fixed':
      logging.warning('config.data.normalize=%r ignored: %s weights expect their own '
                      'normalisation', config.data.normalize, stats['convention'])
    record = {**stats, 'normalize': f'pretrained_{stats["convention"]}',
              'init': config.model.init}
  else:
    stats = input_pipeline.compute_stats(builder, config.data)
    record = {**stats, 'normalize': config.data.normalize}
  if jax.process_index() == 0:
    write_json(path, record)
  return stats


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates val each epoch and test at the end; returns the last
  metrics written ({'val/accuracy': ..., 'test/accuracy': ...}).

  Resumes from workdir's latest checkpoint. Ctrl-C saves the current step
  before it exits (KeyboardInterrupt is re-raised).

  Process 0 owns workdir while it runs (rundir.Claim): a second training on
  it is refused (rundir.WorkdirError) before writing anything, and a run
  refused before its first step removes the workdir it created."""
  validate_config(config)
  workdir = os.path.abspath(workdir)
  with rundir.Claim(workdir, lock=jax.process_index() == 0) as claim:
    run = Run(config, workdir)
    try:
      state = run.initial_state()  # Refuses a mismatching checkpoint first...
      # ...so config.json still describes it.
      write_run_info(config, workdir, run.record, run.resumed(int(state.step)))
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
  pairs = input_pipeline.train_pairs(
      run.builder, config, stats=run.stats, start_step=start_step,
      shard=(jax.process_index(), jax.process_count()))
  progress = Progress(start_step, run.total_steps, config.batch_size)
  every_ckpt = config.checkpoint.every_steps or run.steps_per_epoch
  last = {}
  with _DeferredInterrupt() as interrupt:
    try:
      for step in range(start_step + 1, run.total_steps + 1):
        if interrupt.requested:  # Checked between steps: state is whole here.
          raise KeyboardInterrupt
        state, metrics = train_step_fn(state, to_global(next(pairs), run.data_sharding))
        metrics = jax.device_get(metrics)
        _check_finite(step, metrics, run.checkpoints)
        if step % config.log_every_steps == 0 or step == start_step + 1:
          _record(writer, monitor, step, {f'train/{k}': v for k, v in metrics.items()})
          logging.info(progress.report(step, metrics))
        if step % run.steps_per_epoch == 0 or step == run.total_steps:
          last = run.evaluate(state, 'val')
          undefined = _record(writer, monitor, step, last, 'val')
          best = run.best.update(step, state, last)
          logging.info('step %d: %s%s', step, _fmt(last, undefined),
                       ' (best)' if best else '')
        if step % every_ckpt == 0 or step == run.total_steps:
          run.checkpoints.save(step, state)
      test, report = final_evaluation(run, state, monitor)
      undefined = metrics_lib.undefined_reasons(test, 'test/')
      writer.write(int(state.step), test, undefined)
      logging.info('test: %s', _fmt(test, undefined))
      logging.info('process %d/%d: final params fingerprint %.10e', jax.process_index(),
                   jax.process_count(), params_fingerprint(state.params))
      _log_health(report)
      _log_summary(run, test, report)
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


def _log_summary(run: Run, test: dict, report: dict) -> None:
  """The few numbers a person reads at the end, and where the rest is."""
  def num(key, fmt='.3f'):
    v = test.get(f'test/{key}')
    return 'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
  logging.info('result: test AUROC %s, balanced accuracy %s, escape %s, overkill %s at '
               'threshold %s (checkpoint step %s); health %s', num('auroc'),
               num('balanced_accuracy'), num('escape_rate'), num('overkill_rate'),
               num('threshold', '.4g'), test.get('test/checkpoint_step'), report['status'])
  logging.info('written: %s (all metrics), %s (best checkpoint, used by predict)',
               os.path.join(run.workdir, rundir.EVAL), run.best.checkpoints.directory)


def _log_health(report: dict) -> None:
  if report['status'] == health.OK:
    logging.info('health: ok')
  else:
    logging.warning('WARNING health: the run is %s (eval.json "health"): %s',
                    report['status'].upper(), '; '.join(report['reasons']))


def final_evaluation(run: Run, state: TrainState,
                     monitor: health.Monitor | None = None) -> tuple[dict, dict]:
  """Chooses the threshold on validation (config.eval.threshold_rule) with the
  state config.eval.checkpoint names and evaluates test at it, unchanged.

  Writes (process 0) threshold.json (read by inference.Predictor), eval.json
  ({'step', 'checkpoint', 'threshold', 'threshold_rule', 'val': {...},
  'test': {...}, 'undefined': {'test/precision': why, ...}, 'health':
  {'status', 'reasons'}, 'recall_by_type': {'val': {type: {'defective',
  'detected', 'recall'}}, 'test': ...}}; undefined metrics are null; no
  recall_by_type for a dataset without defect types) and eval_val.npz /
  eval_test.npz (prob, label, embedding, defect_type). Returns the test metrics
  ({'test/accuracy': ..., 'test/threshold': ...}) and the health report of the
  training history (`monitor`) plus the evaluated outputs."""
  cfg = run.config.eval
  step, which = int(state.step), 'final'
  if cfg.checkpoint == 'best':
    best_step = run.best.checkpoints.latest_step()
    if best_step is None:
      logging.warning('no best checkpoint: evaluating the final state')
    else:
      which = 'best'
      if best_step != step:
        state = jax.device_put(run.best.checkpoints.restore(state, best_step),
                               run.replicated)
        step = best_step
  val, test = run.predict(state, 'val'), run.predict(state, 'test')
  threshold = metrics_lib.choose_threshold(val['label'], val['prob'], cfg.threshold_rule,
                                           max_escape_rate=cfg.max_escape_rate)
  val_m, test_m = summarize(val, threshold), summarize(test, threshold)
  logging.info('threshold %.6g (%s) chosen on val with the %s checkpoint, step %d: '
               'val escape %.4f overkill %.4f', threshold, cfg.threshold_rule, which, step,
               val_m['escape_rate'], val_m['overkill_rate'])
  report = (monitor or health.Monitor()).diagnose({'val': val_m, 'test': test_m}, step)
  types = {name: _defect_types(run, name, arrays['label'])
           for name, arrays in (('val', val), ('test', test))}
  by_type = {name: metrics_lib.recall_by_type(arrays['label'], arrays['prob'], types[name],
                                              threshold)
             for name, arrays in (('val', val), ('test', test)) if types[name] is not None}
  if by_type.get('test'):
    logging.info('test recall by defect type at threshold %.4g: %s', threshold, ', '.join(
        f'{t} {r["recall"]:.3f} ({r["detected"]}/{r["defective"]})'
        for t, r in by_type['test'].items()))
  if jax.process_index() == 0:
    base = {'threshold': threshold, 'threshold_rule': cfg.threshold_rule,
            'max_escape_rate': cfg.max_escape_rate, 'checkpoint': which, 'step': step}
    write_json(os.path.join(run.workdir, rundir.THRESHOLD),
               {**base, 'val': metrics_lib.nan_to_none(
                   metrics_lib.threshold_report(val['label'], val['prob'], threshold))})
    for name, arrays in (('val', val), ('test', test)):
      extra = {} if types[name] is None else {'defect_type': types[name]}
      rundir.write_npz(os.path.join(run.workdir, rundir.eval_npz(name)), step=step,
                       threshold=threshold, prob=arrays['prob'], label=arrays['label'],
                       embedding=arrays['embedding'], **extra)
    undefined = {f'{name}/{k}': why for name, m in (('val', val_m), ('test', test_m))
                 for k, why in metrics_lib.undefined_reasons(m).items()}
    # Last: a finished eval.json marks a finished run (launch/sweep.py).
    write_json(os.path.join(run.workdir, rundir.EVAL),
               {**base, 'val': metrics_lib.nan_to_none(val_m),
                'test': metrics_lib.nan_to_none(test_m), 'undefined': undefined,
                'health': report, **({'recall_by_type': by_type} if by_type else {})})
  return {**{f'test/{k}': v for k, v in test_m.items()},
          'test/checkpoint_step': step}, report


def _defect_types(run: Run, prefix: str, labels: np.ndarray) -> np.ndarray | None:
  """The defect type of each example predict_split gave for split 'val' or
  'test', or None (the builder has none, or its order did not match the
  labels: a per-type recall would then be wrong, not just missing)."""
  found = input_pipeline.defect_types(run.builder, run.splits[prefix])
  if found is None:
    return None
  if not np.array_equal(found[0], labels):
    logging.warning('%s: defect types read in another order than the predictions; '
                    'no recall per defect type', prefix)
    return None
  return found[1]


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


def params_fingerprint(params) -> float:
  """A number that differs if this process's copy of the params differs:
  processes of one data-parallel run must all print the same one."""
  leaves = jax.tree_util.tree_leaves(params)
  return float(sum(np.sum(np.asarray(x.addressable_data(0), np.float64) *
                          (1.0 + np.arange(x.size).reshape(x.shape) % 7))
                   for x in leaves))


# What a person reads on a validation or test line; every metric is in
# metrics.jsonl and eval.json.
LOG_KEYS = ('balanced_accuracy', 'auroc', 'escape_rate', 'overkill_rate', 'cross_entropy')


def _fmt(metrics: dict, undefined: dict | None = None) -> str:
  """'k=v ...' of the LOG_KEYS for a log line, and any undefined metric as
  'k=null (why)'."""
  undefined = undefined or {}
  metrics = {k: v for k, v in metrics.items()
             if k.split('/')[-1] in LOG_KEYS or k in undefined}

  def one(k, v):
    if k in undefined or (isinstance(v, float) and not math.isfinite(v)):
      return f'{k}=null ({undefined.get(k, v)})'
    return f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'

  return ' '.join(one(k, v) for k, v in metrics.items())
