"""The model's training step, apart from the loop and the data.

  state = create_train_state(config, model, make_optimizer(config.optimizer))
  step = make_train_step(model, tx, config.loss)   # jitted, donates the state
  state, metrics = step(state, batch)
  loss, aux = loss_fn(params, batch, model=model, loss_config=config.loss)  # for jax.grad

A pure SGD step on paired batches (both images through one tower: shared
weights by construction), its optimiser, the train state and the eval step.
No TensorFlow here: serving (inference, export) and benchmarks build the
state from this module without importing the input pipeline.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from smsdd_jax import losses
from smsdd_jax import models
from smsdd_jax import pretrained


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  model_state: Any  # BatchNorm statistics ({} without batch norm).
  opt_state: Any
  rng: jax.Array  # Raw uint32 key data, so checkpoints hold a plain array.



OPTIMIZERS = ('sgd', 'adamw')
SCHEDULES = ('constant', 'warmup_cosine')


def learning_rate(opt_config, total_steps: int | None = None):
  """The paper's constant rate, or linear warm-up then cosine decay to 0
  over `total_steps` (the run's length; needed only for the schedule)."""
  lr = opt_config.learning_rate
  if opt_config.schedule == 'constant':
    return lr
  if opt_config.schedule != 'warmup_cosine':
    raise ValueError(f'config.optimizer.schedule={opt_config.schedule!r}: expected one '
                     f'of {SCHEDULES}')
  # At least 2 steps, so that the cosine part is never empty: without a
  # length (inference's restore target, whose values nothing reads) or for a
  # 1-step run, optax refuses a decay over 0 steps.
  total = max(int(total_steps or 0), 2)
  warmup = min(int(opt_config.warmup_steps), total - 1)
  return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 0) or 1, total)


def make_optimizer(opt_config, total_steps: int | None = None
                   ) -> optax.GradientTransformation:
  """SGD with momentum (the paper's, constant rate) or AdamW, with the
  schedule of `learning_rate` and optional global-norm clipping. Weight decay
  is decoupled (AdamW's, or added to SGD's gradient) and skips biases and
  batch-norm scales (1-D parameters), which it would only pull to zero."""
  lr = learning_rate(opt_config, total_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  if opt_config.name == 'sgd':
    opt = optax.sgd(lr, momentum=opt_config.momentum or None, nesterov=opt_config.nesterov)
    if opt_config.weight_decay:
      opt = optax.chain(optax.add_decayed_weights(opt_config.weight_decay, decay_mask), opt)
  elif opt_config.name == 'adamw':
    opt = optax.adamw(lr, weight_decay=opt_config.weight_decay, mask=decay_mask)
  else:
    raise ValueError(f'config.optimizer.name={opt_config.name!r}: expected one of '
                     f'{OPTIMIZERS}')
  if opt_config.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), opt)
  return opt


def create_train_state(config, model, tx) -> TrainState:
  rng = jax.random.PRNGKey(config.seed)
  init_rng, state_rng = jax.random.split(rng)
  params, model_state = models.init(model, init_rng, (*config.data.image_size, 3))
  # Not under jax.eval_shape (inference's restore target): a checkpoint
  # overwrites the values there, and the weights file need not exist.
  if config.model.init and not isinstance(jax.tree.leaves(params)[0], jax.core.Tracer):
    params, model_state = jax.tree.map(
        jnp.asarray, pretrained.load(config.model, params, model_state))
  # Jitted: one program (one compile, cached across runs: smsdd_jax/startup.py)
  # rather than a zeros_like compiled for each parameter shape.
  opt_state = jax.jit(tx.init)(params)
  return TrainState(step=jnp.asarray(0, jnp.int32), params=params,
                    model_state=model_state, opt_state=opt_state, rng=state_rng)


# ------------------------------------------------------------------ the step


def loss_fn(params, batch: dict, *, model, loss_config, model_state=None, rng=None):
  """The training objective of one batch of pairs: (loss, aux), for jax.grad.

  The train step differentiates exactly this (training-mode forward: batch
  norm on the batch's statistics). batch: 'image_a', 'image_b' (N, H, W, 3)
  float32, normalised as training feeds them (`inference.Run.normalize`),
  'label_a', 'label_b' (N,) int32, 'same' (N,) float32. model_state: the
  batch-norm statistics (None: {}, a model without batch norm); rng: the
  key a stochastic term reads (None: PRNGKey(0)). aux: 'terms' (each term's
  value), 'logits', 'labels', 'emb_a', 'emb_b', 'model_state' (updated).

    run = inference.load_run(workdir)  # its own loss terms registered again
    grads, aux = jax.grad(step.loss_fn, has_aux=True)(run.params, batch, model=run.model,
        loss_config=run.config.loss, model_state=run.model_state)
  """
  labels = jnp.concatenate([batch['label_a'], batch['label_b']])
  logits, out = models.siamese_forward(
      params, batch['image_a'], batch['image_b'], model=model,
      model_state=model_state, train=True)
  ctx = {'logits': logits, 'labels': labels, 'emb_a': out['emb_a'],
         'emb_b': out['emb_b'], 'same': batch['same'],
         'rng': jax.random.PRNGKey(0) if rng is None else rng}
  loss, terms = losses.combined_loss(ctx, loss_config)
  return loss, {'terms': terms, 'logits': logits, 'labels': labels, **out}


def train_step(state: TrainState, batch: dict, *, model, tx, loss_config):
  """One SGD step on a batch of pairs. Pure; jitted by `make_train_step`."""
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params, batch, model=model, loss_config=loss_config,
      model_state=state.model_state, rng=jax.random.fold_in(state.rng, state.step))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {'loss': loss, **aux['terms'],
             'accuracy': jnp.mean(jnp.argmax(aux['logits'], -1) == aux['labels']),
             'l2_grads': optax.tree.norm(grads),
             'l2_params': optax.tree.norm(params),
             **_pair_distances(aux['emb_a'], aux['emb_b'], batch['same'])}
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            model_state=aux['model_state'])
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
  """Per-example defect probability, cross-entropy and embedding (padding
  included)."""
  logits, out = models.forward(params, batch['image'], model=model,
                               model_state=model_state, train=False)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  return {'prob_defective': jax.nn.softmax(logits)[:, 1], 'cross_entropy': ce,
          'embedding': out['embedding']}
