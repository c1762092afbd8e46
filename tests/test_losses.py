"""Loss values against hand-computed numbers, and the combined objective."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from smsdd_jax import losses


def loss_config(**overrides):
  cfg = default.get_config().loss
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


def test_contrastive_same_pair_at_distance_zero_is_zero():
  e = jnp.array([[1.0, 2.0, 3.0]])
  assert float(losses.contrastive_loss(e, e, jnp.array([1.0]), margin=1.0)) == 0.0


def test_contrastive_hand_computed_values():
  a = jnp.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
  b = jnp.array([[3.0, 4.0],   # same pair, D = 5      -> D^2 = 25
                 [0.3, 0.4],   # different, D = 0.5 < m=2 -> (2 - 0.5)^2 = 2.25
                 [6.0, 8.0],   # different, D = 10 > m  -> 0
                 [0.0, 0.0]])  # different, D = 0       -> m^2 = 4
  same = jnp.array([1.0, 0.0, 0.0, 0.0])
  got = losses.contrastive_loss(a, b, same, margin=2.0)
  np.testing.assert_allclose(float(got), 0.5 * (25 + 2.25 + 0 + 4) / 4, rtol=1e-6)


def test_contrastive_gradient_finite_at_zero_distance():
  e = jnp.ones((2, 4))
  g = jax.grad(lambda x: losses.contrastive_loss(x, e, jnp.array([1.0, 0.0]),
                                                 margin=1.0))(e)
  assert np.all(np.isfinite(np.asarray(g)))


def test_cross_entropy_hand_computed():
  logits = jnp.array([[0.0, 0.0], [2.0, 0.0]])
  labels = jnp.array([1, 0])
  want = (np.log(2.0) + np.log(1 + np.exp(-2.0))) / 2
  np.testing.assert_allclose(float(losses.cross_entropy(logits, labels)), want, rtol=1e-6)


def test_focal_with_gamma_zero_is_cross_entropy_and_downweights_easy():
  logits = jnp.array([[3.0, -1.0], [0.2, 0.1], [-1.0, 2.0]])
  labels = jnp.array([0, 1, 1])
  ce = losses.cross_entropy(logits, labels)
  np.testing.assert_allclose(float(losses.focal_loss(logits, labels, gamma=0.0)),
                             float(ce), rtol=1e-6)
  assert float(losses.focal_loss(logits, labels, gamma=2.0)) < float(ce)


def test_cosine_margin_hand_computed():
  a = jnp.array([[1.0, 0.0], [1.0, 0.0]])
  b = jnp.array([[0.0, 1.0], [1.0, 1.0]])  # cos 0 (same), cos 0.7071 (different)
  got = losses.cosine_margin_loss(a, b, jnp.array([1.0, 0.0]), margin=0.5)
  np.testing.assert_allclose(float(got), (1.0 + (np.sqrt(0.5) - 0.5)) / 2, rtol=1e-5)


def test_combined_is_ce_plus_beta_contrastive(loss_ctx):
  ctx, cfg = loss_ctx(), loss_config(beta=0.1, margin=1.5)
  total, aux = losses.combined_loss(ctx, cfg)
  ce = losses.cross_entropy(ctx['logits'], ctx['labels'])
  con = losses.contrastive_loss(ctx['emb_a'], ctx['emb_b'], ctx['same'], margin=1.5)
  np.testing.assert_allclose(float(total), float(ce + 0.1 * con), rtol=1e-6)
  assert set(aux) == {'cross_entropy', 'contrastive'}


def test_beta_zero_is_exactly_cross_entropy_value_and_gradient(loss_ctx):
  ctx, cfg = loss_ctx(1), loss_config(beta=0.0)

  def total(emb_a, logits):
    return losses.combined_loss({**ctx, 'emb_a': emb_a, 'logits': logits}, cfg)[0]

  def ce(emb_a, logits):
    return losses.cross_entropy(logits, ctx['labels']) + 0.0 * jnp.sum(emb_a)

  v1, g1 = jax.value_and_grad(total, argnums=(0, 1))(ctx['emb_a'], ctx['logits'])
  v2, g2 = jax.value_and_grad(ce, argnums=(0, 1))(ctx['emb_a'], ctx['logits'])
  assert float(v1) == float(v2)  # Bitwise, not approximately.
  for a, b in zip(g1, g2):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_swap_terms_and_extra_term_by_config(loss_ctx):
  ctx = loss_ctx(2)
  cfg = loss_config(classification='focal', pair='cosine_margin', beta=0.5)
  cfg.extra = ml_collections.ConfigDict({'contrastive': 0.25})
  total, aux = losses.combined_loss(ctx, cfg)
  want = (losses.focal_loss(ctx['logits'], ctx['labels'], gamma=cfg.focal_gamma)
          + 0.5 * losses.cosine_margin_loss(ctx['emb_a'], ctx['emb_b'], ctx['same'],
                                            margin=cfg.cosine_margin)
          + 0.25 * losses.contrastive_loss(ctx['emb_a'], ctx['emb_b'], ctx['same'],
                                           margin=cfg.margin))
  np.testing.assert_allclose(float(total), float(want), rtol=1e-6)
  assert set(aux) == {'focal', 'cosine_margin', 'contrastive'}


def test_registering_a_new_term_is_one_function(loss_ctx):
  name = 'test_mean_logit'
  if name not in losses.registered():
    losses.register(name)(lambda ctx, cfg: jnp.mean(ctx['logits']))
  cfg = loss_config(beta=0.0)
  cfg.extra = ml_collections.ConfigDict({name: 2.0})
  ctx = loss_ctx(3)
  total, _ = losses.combined_loss(ctx, cfg)
  want = losses.cross_entropy(ctx['logits'], ctx['labels']) + 2 * jnp.mean(ctx['logits'])
  np.testing.assert_allclose(float(total), float(want), rtol=1e-6)


@pytest.mark.parametrize('field,value,match', [
    ('beta', -0.1, 'config.loss.beta'), ('margin', 0.0, 'config.loss.margin'),
    ('classification', 'nope', 'config.loss.classification'),
    ('pair', 'nope', 'config.loss.pair')])
def test_validate_names_the_bad_field(field, value, match):
  with pytest.raises(ValueError, match=match):
    losses.validate(loss_config(**{field: value}))
