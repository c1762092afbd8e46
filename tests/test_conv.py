"""smsdd_jax/conv.py: the custom-backward 3x3 conv equals lax's, values and grads."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import default
from smsdd_jax import conv, losses, models

SHAPES = [(2, 13, 28, 3, 4), (3, 3, 7, 8, 16), (1, 5, 5, 8, 16), (2, 6, 9, 4, 3)]


def _ref(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _inputs(shape, seed=0):
  n, h, w, c, k = shape
  r = np.random.default_rng(seed)
  return (jnp.asarray(r.standard_normal((n, h, w, c)), jnp.float32),
          jnp.asarray(r.standard_normal((3, 3, c, k)), jnp.float32),
          jnp.asarray(r.standard_normal((k,)), jnp.float32),
          jnp.asarray(r.standard_normal((n, h, w, k)), jnp.float32))


@pytest.mark.parametrize('shape', SHAPES)
def test_forward_and_grads_match_lax(shape):
  x, w, b, ct = _inputs(shape)

  def loss(f):
    # Bias + ReLU as in the model, then a random cotangent.
    return lambda x, w, b: jnp.sum(jax.nn.relu(f(x, w) + b) * ct)

  np.testing.assert_allclose(conv.conv3x3(x, w), _ref(x, w), rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(loss(conv.conv3x3), argnums=(0, 1, 2)))(x, w, b)
  want = jax.jit(jax.grad(loss(_ref), argnums=(0, 1, 2)))(x, w, b)
  for name, g, r in zip(('dx', 'dw', 'db'), got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize('method', conv.DW_METHODS)
@pytest.mark.parametrize('shape', SHAPES[:2])
def test_every_dw_method(shape, method):
  x, w, _, ct = _inputs(shape, seed=1)
  _, vjp = jax.vjp(lambda w: _ref(x, w), w)
  np.testing.assert_allclose(conv.conv3x3_dw(x, ct, method), vjp(ct)[0],
                             rtol=1e-4, atol=1e-4)
  _, vjp = jax.vjp(lambda x: _ref(x, w), x)
  np.testing.assert_allclose(conv.conv3x3_dx(ct, w), vjp(ct)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('shape', [(2, 13, 28, 4), (1, 7, 5, 3), (2, 4, 6, 8)])
def test_max_pool_matches_flax(shape, dtype):
  """Both backwards (float32: the maxima found again from x; bfloat16: the
  forward's choice kept as a byte) are select-and-scatter's, bit for bit."""
  import flax.linen as nn
  r = np.random.default_rng(2)
  # ReLU'd input: many tied zeros, where the gradient must go to the first max.
  x = jax.nn.relu(jnp.asarray(r.standard_normal(shape), dtype))
  ref_fn = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))
  y, vjp = jax.vjp(conv.max_pool2x2, x)
  y_ref, vjp_ref = jax.vjp(ref_fn, x)
  np.testing.assert_array_equal(y, y_ref)
  ct = jnp.asarray(r.standard_normal(y.shape), dtype)
  np.testing.assert_array_equal(vjp(ct)[0], vjp_ref(ct)[0])


def test_drop_in_falls_back_for_other_convs():
  x = jnp.ones((1, 8, 8, 2))
  w = jnp.ones((5, 5, 2, 3))
  got = conv.conv_general_dilated(x, w, (2, 2), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  want = lax.conv_general_dilated(x, w, (2, 2), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(got, want)


def test_model_loss_and_grads_match_xla_impl():
  config = default.get_config('quick')
  config.model.width_mult = 1 / 32
  image_size = (32, 64)
  r = np.random.default_rng(0)
  images = jnp.asarray(r.standard_normal((4, *image_size, 3)), jnp.float32)
  labels = jnp.asarray([0, 1, 1, 0], jnp.int32)
  same = jnp.asarray([0.0, 1.0], jnp.float32)

  def loss_and_grads(impl):
    config.model.conv_impl = impl
    model = models.create(config.model)
    params, state = models.init(model, jax.random.PRNGKey(0), (*image_size, 3))

    def loss_fn(p):
      logits, out = models.siamese_forward(p, images[:2], images[2:], model=model,
                                           model_state=state, train=True)
      ctx = {'logits': logits, 'labels': labels, 'emb_a': out['emb_a'],
             'emb_b': out['emb_b'], 'same': same, 'rng': jax.random.PRNGKey(1)}
      return losses.combined_loss(ctx, config.loss)[0]

    return jax.jit(jax.value_and_grad(loss_fn))(params)

  l_x, g_x = loss_and_grads('xla')
  from smsdd_jax import onednn
  impls = ('custom', 'custom_fused', 'winograd') + (('onednn', 'onednn_fused') if onednn.available() else ())
  for impl in impls:  # Same parameter tree: checkpoints move between impls.
    l_c, g_c = loss_and_grads(impl)
    np.testing.assert_allclose(l_c, l_x, rtol=1e-5)
    assert jax.tree_util.tree_structure(g_c) == jax.tree_util.tree_structure(g_x)
    for a, b in zip(jax.tree_util.tree_leaves(g_c), jax.tree_util.tree_leaves(g_x)):
      np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize('shape', SHAPES[:2])
def test_fused_bias_relu_matches_the_three_ops(shape):
  x, w, b, ct = _inputs(shape)
  b = b.at[0].set(-1e3)  # One channel dead everywhere: its gradients must be 0.
  fused = lambda x, w, b: jnp.sum(conv.conv3x3_bias_relu(x, w, b) * ct)
  apart = lambda x, w, b: jnp.sum(jax.nn.relu(_ref(x, w) + b) * ct)
  np.testing.assert_allclose(conv.conv3x3_bias_relu(x, w, b), jax.nn.relu(_ref(x, w) + b),
                             rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(fused, argnums=(0, 1, 2)))(x, w, b)
  want = jax.grad(apart, argnums=(0, 1, 2))(x, w, b)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)
  assert float(got[2][0]) == 0.0
