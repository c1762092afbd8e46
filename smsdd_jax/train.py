"""Training and evaluation of SMSDD: state, the jitted step, eval, the loop.

  train_and_evaluate(config, workdir)

runs `config.num_epochs` epochs of paired batches, evaluates the validation
split after each epoch and the test split at the end, and writes to workdir:
config.json (with package versions), metrics.jsonl, TensorBoard events and
Orbax checkpoints under checkpoints/, from which a rerun resumes.
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from typing import Any, Iterator

import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from smsdd_jax import checkpointing
from smsdd_jax import input_pipeline
from smsdd_jax import losses
from smsdd_jax import metric_writers
from smsdd_jax import models


# The package's own logger: main.py shows it at INFO while third-party absl
# INFO chatter (Orbax logs every save in detail) stays hidden.
logging = logging.getLogger('smsdd_jax')


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any  # BatchNorm statistics ({} without batch norm).
  opt_state: Any
  rng: jax.Array  # Raw uint32 key data, so checkpoints hold a plain array.


# ------------------------------------------------------------------ set-up


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuses a bad config before anything is built or compiled."""
  losses.validate(config.loss)
  models.feature_shape(config.data.image_size, config.model.width_mult)
  for field in ('batch_size', 'eval_batch_size', 'num_epochs', 'log_every_steps'):
    if config[field] <= 0:
      raise ValueError(f'config.{field}={config[field]}: must be > 0')
  if config.optimizer.learning_rate <= 0:
    raise ValueError(f'config.optimizer.learning_rate={config.optimizer.learning_rate}:'
                     ' must be > 0')
  n = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    if config[field] % n:
      raise ValueError(f'config.{field}={config[field]} is not divisible by the '
                       f'{n} devices of the data mesh')


def make_optimizer(opt_config) -> optax.GradientTransformation:
  """SGD with constant learning rate (the paper), optional global-norm clip."""
  sgd = optax.sgd(opt_config.learning_rate, momentum=opt_config.momentum or None,
                  nesterov=opt_config.nesterov)
  if opt_config.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), sgd)
  return sgd


def create_train_state(config, model, tx) -> TrainState:
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  params, model_state = models.init(model, init_rng, (*config.data.image_size, 3))
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    model_state=model_state, opt_state=tx.init(params),
                    rng=state_rng)


def make_mesh() -> Mesh:
  """A 1-D mesh over all devices; batches are split along its 'data' axis."""
  return jax.make_mesh((jax.device_count(),), ('data',))


# ------------------------------------------------------------------ the step


def train_step(state: TrainState, batch: dict, *, model, tx, loss_config):
  """One SGD step on a batch of pairs. Pure; jitted by `make_train_step`."""
  rng = jax.random.fold_in(state.rng, state.step)
  labels = jnp.concatenate([batch['label_a'], batch['label_b']])

  def loss_fn(params):
    logits, out = models.siamese_forward(
        params, batch['image_a'], batch['image_b'], model=model,
        model_state=state.model_state, train=True)
    ctx = {'logits': logits, 'labels': labels, 'emb_a': out['emb_a'],
           'emb_b': out['emb_b'], 'same': batch['same'], 'rng': rng}
    loss, terms = losses.combined_loss(ctx, loss_config)
    return loss, (terms, logits, out)

  (loss, (terms, logits, out)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, **terms,
             'accuracy': jnp.mean(jnp.argmax(logits, -1) == labels),
             'l2_grads': optax.tree.norm(grads),
             'l2_params': optax.tree.norm(params),
             **_pair_distances(out['emb_a'], out['emb_b'], batch['same'])}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=out['model_state'])
  return new_state, metrics


def _pair_distances(emb_a, emb_b, same) -> dict:
  """Mean embedding distance of same- and different-class pairs (shows
  whether the margin is on the embedding's scale)."""
  d = losses.pairwise_distance(emb_a, emb_b)
  return {'distance_same': jnp.sum(d * same) / jnp.maximum(jnp.sum(same), 1.0),
          'distance_different': jnp.sum(d * (1 - same)) /
                                jnp.maximum(jnp.sum(1 - same), 1.0)}


class RetraceError(RuntimeError):
  """The train step was traced (so compiled) more than once."""


def make_train_step(model, tx, loss_config, *, max_traces: int = 1):
  """The jitted step. It donates the state and must compile exactly once: a
  changed shape, dtype or weak type that forces a retrace (and a multi-second
  recompile, silently, every time) raises RetraceError instead."""
  traces = 0

  def step(state, batch):
    nonlocal traces
    traces += 1  # Runs only while tracing, never per executed step.
    if traces > max_traces:
      raise RetraceError(
          f'train step traced {traces} times (max {max_traces}): the inputs '
          f'changed shape or dtype; batch shapes: '
          f'{jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), batch)}')
    return train_step(state, batch, model=model, tx=tx, loss_config=loss_config)

  return jax.jit(step, donate_argnums=0)


def eval_step(params, model_state, batch, *, model):
  """Per-example defect probability and cross-entropy (padding included)."""
  logits, _ = models.forward(params, batch['image'], model=model,
                             model_state=model_state, train=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  return {'prob_defective': jax.nn.softmax(logits)[:, 1], 'cross_entropy': ce}


# ------------------------------------------------------------------ evaluation


def classification_summary(labels: np.ndarray, prob: np.ndarray,
                           threshold: float = 0.5) -> dict:
  """Accuracy plus the numbers accuracy hides on an imbalanced set."""
  pred = (prob >= threshold).astype(np.int64)
  labels = labels.astype(np.int64)
  tp = int(np.sum((pred == 1) & (labels == 1)))
  tn = int(np.sum((pred == 0) & (labels == 0)))
  n_def, n_good = int(np.sum(labels == 1)), int(np.sum(labels == 0))
  recall = tp / n_def if n_def else float('nan')
  specificity = tn / n_good if n_good else float('nan')
  return {'accuracy': float(np.mean(pred == labels)) if len(labels) else float('nan'),
          'balanced_accuracy': float(np.nanmean([recall, specificity])),
          'recall_defective': recall,
          'escape_rate': 1.0 - recall,  # Defective passed as good.
          'overkill_rate': 1.0 - specificity,  # Good rejected.
          'num_examples': len(labels)}


def evaluate(eval_fn, state: TrainState, batches: Iterator[dict], sharding) -> dict:
  """Runs eval_fn over every batch; padding is dropped with the mask."""
  labels, probs, ces = [], [], []
  for batch in batches:
    keep = batch.pop('mask') > 0
    out = jax.device_get(eval_fn(state.params, state.model_state,
                                 jax.device_put(batch, sharding)))
    labels.append(batch['label'][keep])
    probs.append(out['prob_defective'][keep])
    ces.append(out['cross_entropy'][keep])
  labels, probs = np.concatenate(labels), np.concatenate(probs)
  return {**classification_summary(labels, probs),
          'cross_entropy': float(np.mean(np.concatenate(ces)))}


# ------------------------------------------------------------------ the loop


def write_run_info(config, workdir: str) -> None:
  """config.json with the package versions and git commit beside it."""
  packages = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
              'tensorflow-cpu', 'tensorflow', 'tensorflow-datasets', 'ml-collections',
              'opencv-python-headless')
  versions = {}
  for p in packages:
    try:
      versions[p] = metadata.version(p)
    except metadata.PackageNotFoundError:
      pass
  info = {'config': config.to_dict(), 'versions': versions,
          'python': sys.version.split()[0], 'git_commit': _git_commit(),
          'devices': [str(d) for d in jax.devices()]}
  with open(os.path.join(workdir, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump(info, f, indent=2, default=str)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates val each epoch and test at the end; returns the last
  metrics written ({'val/accuracy': ..., 'test/accuracy': ...})."""
  validate_config(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  write_run_info(config, workdir)

  builder = input_pipeline.prepare(config.data)
  train_info = input_pipeline.split_info(builder, config.data.train_split)
  if not (train_info.num_good and train_info.num_defective):
    raise ValueError(f'training split {config.data.train_split!r} of '
                     f'{config.data.name!r} lacks a class: {train_info}')
  steps_per_epoch = input_pipeline.steps_per_epoch(train_info.num_examples,
                                                   config.batch_size)
  total_steps = steps_per_epoch * config.num_epochs

  mesh = make_mesh()
  data_sharding = NamedSharding(mesh, P('data'))
  model = models.create(config.model)
  tx = make_optimizer(config.optimizer)
  checkpointer = checkpointing.Checkpointer(os.path.join(workdir, 'checkpoints'),
                                            max_to_keep=config.checkpoint.max_to_keep)
  state = checkpointer.restore_or(create_train_state(config, model, tx))
  state = jax.device_put(state, NamedSharding(mesh, P()))  # Replicated.
  start_step = int(state.step)
  logging.info('train split: %s; %d steps/epoch, %d steps; params %d; start at %d',
               train_info, steps_per_epoch, total_steps,
               models.count_params(state.params), start_step)

  writer = metric_writers.MetricWriter(workdir)
  train_step_fn = make_train_step(model, tx, config.loss)
  eval_fn = jax.jit(functools.partial(eval_step, model=model))
  pairs = input_pipeline.train_pairs(builder, config, start_step=start_step)
  progress = Progress(start_step, total_steps, config.batch_size)
  every_ckpt = config.checkpoint.every_steps or steps_per_epoch
  last = {}
  try:
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = train_step_fn(state, jax.device_put(next(pairs), data_sharding))
      metrics = jax.device_get(metrics)
      _check_finite(step, metrics, checkpointer)
      if step % config.log_every_steps == 0 or step == start_step + 1:
        writer.write(step, {f'train/{k}': v for k, v in metrics.items()})
        logging.info(progress.report(step, metrics))
      if step % steps_per_epoch == 0 or step == total_steps:
        last = _evaluate_split(eval_fn, state, builder, config, 'val', data_sharding)
        writer.write(step, last)
        logging.info('step %d: %s', step, _fmt(last))
      if step % every_ckpt == 0 or step == total_steps:
        checkpointer.save(step, state)
    test = _evaluate_split(eval_fn, state, builder, config, 'test', data_sharding)
    writer.write(int(state.step), test)
    logging.info('test: %s', _fmt(test))
    last = {**last, **test}
  finally:
    checkpointer.close()
    writer.close()
  return last


def _evaluate_split(eval_fn, state, builder, config, prefix: str, sharding) -> dict:
  split = config.data.val_split if prefix == 'val' else config.data.test_split
  result = evaluate(eval_fn, state, input_pipeline.eval_batches(builder, split, config),
                    sharding)
  return {f'{prefix}/{k}': v for k, v in result.items()}


def _fmt(metrics: dict) -> str:
  return ' '.join(f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'
                  for k, v in metrics.items())
