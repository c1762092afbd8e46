"""Loss terms of SMSDD and a registry to swap or add them.

The paper's objective (eq. 8) is  L = CE + beta * contrastive.  Here:

  L = terms[config.loss.classification]           (weight 1)
    + beta * terms[config.loss.pair]               (beta = config.loss.beta)
    + sum(w * terms[name] for name, w in config.loss.extra.items())

A research variant is one registered function and one config line, e.g.

  @losses.register('my_term')
  def _my_term(ctx, cfg):  # ctx: logits, labels, emb_a, emb_b, same
    return ...

  config.loss.extra = {'my_term': 0.5}     # or --config.loss.pair=my_term

The base losses below are pure, keyword-only after their tensors, and reduce
to a scalar mean exactly as their docstrings state (reductions differ between
libraries, so beta and margin only transfer between identical reductions).
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

LossContext = Mapping[str, jax.Array]
LossTerm = Callable[[LossContext, object], jax.Array]
_TERMS: dict[str, LossTerm] = {}


def pairwise_distance(emb_a: jax.Array, emb_b: jax.Array) -> jax.Array:
  """Euclidean distance per pair, with a finite gradient at distance 0.

  d/dx sqrt(x) is infinite at 0 and identical pairs hit it (jax #4177): the
  clamp keeps sqrt's argument positive, so the gradient there is 0, not NaN.
  """
  sq = jnp.sum(jnp.square(emb_a - emb_b), axis=-1)
  return jnp.sqrt(jnp.maximum(sq, 1e-12))


def contrastive_loss(emb_a: jax.Array, emb_b: jax.Array, same: jax.Array, *,
                     margin: float) -> jax.Array:
  """Hadsell et al. (2006), the paper's eq. 4 with Y in {0, 1}.

  mean over pairs of 0.5 * [same * D^2 + (1 - same) * max(margin - D, 0)^2],
  D the Euclidean distance, `same` 1.0 for a same-class pair, else 0.0.
  """
  # D^2 straight from the sum of squares: exact 0 for identical embeddings.
  sq = jnp.sum(jnp.square(emb_a - emb_b), axis=-1)
  d = pairwise_distance(emb_a, emb_b)
  same = same.astype(d.dtype)
  per_pair = same * sq + (1.0 - same) * jnp.square(jnp.maximum(margin - d, 0.0))
  return 0.5 * jnp.mean(per_pair)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy with integer labels, mean over examples (eq. 3)."""
  return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - pick(logits, labels))


def pick(values: jax.Array, labels: jax.Array) -> jax.Array:
  """values[i, labels[i]], as a one-hot contraction: exactly the picked value
  (the others add 0 x a finite number), and its gradient is no scatter, which
  jax 0.11 refuses to shard on the train step's explicit mesh (the batch
  split over 'data'; take_along_axis, as optax's integer-label cross-entropy
  uses, fails there)."""
  return jnp.sum(values * jax.nn.one_hot(labels, values.shape[-1], dtype=values.dtype),
                 axis=-1)


def focal_loss(logits: jax.Array, labels: jax.Array, *, gamma: float) -> jax.Array:
  """Lin et al. (2017) focal loss, mean over examples; gamma = 0 is CE.

  Down-weights easy examples, a common remedy for a rare defective class.
  """
  log_p = jax.nn.log_softmax(logits)
  log_pt = pick(log_p, labels)
  return jnp.mean(-jnp.power(1.0 - jnp.exp(log_pt), gamma) * log_pt)


def cosine_margin_loss(emb_a: jax.Array, emb_b: jax.Array, same: jax.Array, *,
                       margin: float) -> jax.Array:
  """Pair loss on cosine similarity s: same pairs pull s to 1, different
  pairs push s below `margin`. Mean over pairs of
  same * (1 - s) + (1 - same) * max(s - margin, 0)."""
  s = jnp.sum(emb_a * emb_b, -1) * jax.lax.rsqrt(
      jnp.sum(emb_a ** 2, -1) * jnp.sum(emb_b ** 2, -1) + 1e-12)
  same = same.astype(s.dtype)
  return jnp.mean(same * (1.0 - s) + (1.0 - same) * jnp.maximum(s - margin, 0.0))


# ------------------------------------------------------------------ registry


def register(name: str) -> Callable[[LossTerm], LossTerm]:
  """Decorator: registers `fn(ctx, loss_config) -> scalar` under `name`."""
  def wrap(fn: LossTerm) -> LossTerm:
    if name in _TERMS:
      raise ValueError(f'loss term {name!r} is already registered')
    _TERMS[name] = fn
    return fn
  return wrap


def get_term(name: str) -> LossTerm:
  if name not in _TERMS:
    raise KeyError(f'unknown loss term {name!r}; registered: {sorted(_TERMS)}')
  return _TERMS[name]


def registered() -> list[str]:
  return sorted(_TERMS)


@register('cross_entropy')
def _cross_entropy_term(ctx, cfg):
  del cfg
  return cross_entropy(ctx['logits'], ctx['labels'])


@register('focal')
def _focal_term(ctx, cfg):
  return focal_loss(ctx['logits'], ctx['labels'], gamma=cfg.focal_gamma)


@register('contrastive')
def _contrastive_term(ctx, cfg):
  return contrastive_loss(ctx['emb_a'], ctx['emb_b'], ctx['same'], margin=cfg.margin)


@register('cosine_margin')
def _cosine_margin_term(ctx, cfg):
  return cosine_margin_loss(ctx['emb_a'], ctx['emb_b'], ctx['same'],
                            margin=cfg.cosine_margin)


def validate(loss_config) -> None:
  """Fails before any compile on an unknown term or a bad weight."""
  for field in ('classification', 'pair'):
    name = loss_config[field]
    if name not in _TERMS:
      raise ValueError(f'config.loss.{field}={name!r}: unknown loss term; '
                       f'registered: {registered()}')
  for name, weight in loss_config.extra.items():
    if name not in _TERMS:
      raise ValueError(f'config.loss.extra.{name}: unknown loss term; '
                       f'registered: {registered()}')
    if weight < 0:
      raise ValueError(f'config.loss.extra.{name}={weight}: must be >= 0')
  if loss_config.beta < 0:
    raise ValueError(f'config.loss.beta={loss_config.beta}: must be >= 0')
  if loss_config.margin <= 0:
    raise ValueError(f'config.loss.margin={loss_config.margin}: must be > 0')


def combined_loss(ctx: LossContext, loss_config) -> tuple[jax.Array, dict]:
  """The total objective and each term's value (for logging).

  Weights are Python floats, fixed at trace time: a term with weight 0 is
  still computed for the logs but under stop_gradient and NOT added, so
  beta = 0 is exactly the cross-entropy run (no 0 * inf = NaN either).
  """
  weighted = [(loss_config.classification, 1.0),
              (loss_config.pair, float(loss_config.beta)),
              *((k, float(w)) for k, w in loss_config.extra.items())]
  total = jnp.zeros((), jnp.float32)
  aux = {}
  for name, weight in weighted:
    value = get_term(name)(ctx, loss_config)
    aux[name] = value
    if weight != 0.0:
      total = total + weight * value
    else:
      aux[name] = jax.lax.stop_gradient(value)
  return total, aux
