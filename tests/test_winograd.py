"""smsdd_jax/winograd.py: Winograd F(2x2,3x3) / F(4x4,3x3) equals lax's conv.

Tolerances are relative to the output's scale (max |err| / max |ref|), 10x
the float32 errors winograd.error_report() measured on the VGG16's shapes
(module docstring): F(2,3) is as exact as lax's conv (<= 1e-6), F(4,3) at
points 0, +-1, 1/2, -2 is ~5x worse (<= 7e-6, dx of the 512-channel layer).
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from smsdd_jax import winograd

DN = ('NHWC', 'HWIO', 'NHWC')
TOL = {2: 1e-5, 4: 1e-4}
# (N, H, W, C, K): odd sizes, sizes that are not multiples of 2 or 4,
# smaller than a tile, batch 1 and 3.
SHAPES = [(1, 7, 9, 4, 8), (3, 5, 6, 8, 4), (2, 13, 10, 3, 5), (1, 1, 3, 2, 2), (3, 4, 8, 16, 16)]


def _ref(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)


def _inputs(shape, seed=0):
  n, h, w, c, k = shape
  r = np.random.default_rng(seed)
  f32 = lambda *s: jnp.asarray(r.standard_normal(s), jnp.float32)
  return f32(n, h, w, c), f32(3, 3, c, k) / np.sqrt(9 * c), f32(k), f32(n, h, w, k)


def _close(got, want, tol, name=''):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, name
  err = np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)
  assert err <= tol, f'{name}: relative error {err:.2e} > {tol:.0e}'


@pytest.mark.parametrize('m', [2, 4])
def test_transforms_compute_a_1d_correlation(m):
  """The paper's tables, toom_cook at the paper's points and MATRICES (the
  points used) all give y_i = sum_k d_{i+k} g_k exactly (float64)."""
  r = np.random.default_rng(0)
  d, g = r.standard_normal(m + 2), r.standard_normal(3)
  want = np.array([d[i:i + 3] @ g for i in range(m)])
  paper_points = {2: (0, 1, -1), 4: (0, 1, -1, 2, -2)}[m]
  for bt, gm, at in (winograd.PAPER[m], winograd.toom_cook(m, paper_points),
                     winograd.MATRICES[m]):
    np.testing.assert_allclose(at @ ((gm @ g) * (bt @ d)), want, atol=1e-12)


@functools.partial(jax.jit, static_argnums=3)
def _winograd_fwd_dx_dw(x, w, dy, m):
  flip = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  return (winograd.conv3x3_winograd(x, w, m), winograd.conv3x3_winograd(dy, flip, m),
          winograd.conv3x3_dw_winograd(x, dy, m))


@jax.jit
def _lax_fwd_dx_dw(x, w, dy):
  y, vjp = jax.vjp(_ref, x, w)
  return (y, *vjp(dy))


@pytest.mark.parametrize('m', [2, 4])
@pytest.mark.parametrize('shape', SHAPES)
def test_forward_dx_dw_match_lax(shape, m):
  x, w, _, dy = _inputs(shape)
  for name, g, r in zip(('forward', 'dx', 'dw'), _winograd_fwd_dx_dw(x, w, dy, m),
                        _lax_fwd_dx_dw(x, w, dy)):
    _close(g, r, TOL[m], name)


@pytest.mark.parametrize('m', [2, 4])
def test_batch_chunks(m, monkeypatch):
  """Large layers run a batch chunk at a time (a loop); here 1 image."""
  monkeypatch.setattr(winograd, 'CHUNK_BYTES', 1)
  x, w, _, dy = _inputs((3, 7, 6, 4, 8), seed=4)
  assert winograd._chunk(3, 7 * 6 * 8 * 4, 0) == 1
  for name, g, r in zip(('forward', 'dx', 'dw'), _winograd_fwd_dx_dw(x, w, dy, m),
                        _lax_fwd_dx_dw(x, w, dy)):
    _close(g, r, TOL[m], name)


@pytest.mark.parametrize('plan', [(2, 2, 2), (4, 4, 4), (0, 4, 2), (4, 0, 0)])
@pytest.mark.parametrize('shape', SHAPES[:3])
def test_custom_vjp_under_jit_and_grad(shape, plan):
  """conv3x3 with bias + ReLU after it, as in the model; every direction
  either Winograd or conv.py's path."""
  x, w, b, ct = _inputs(shape, seed=1)

  def loss(f):
    return lambda x, w, b: jnp.sum(jax.nn.relu(f(x, w) + b) * ct)

  got = jax.jit(jax.value_and_grad(loss(lambda x, w: winograd.conv3x3(x, w, plan)),
                                   argnums=(0, 1, 2)))(x, w, b)
  want = jax.jit(jax.value_and_grad(loss(_ref), argnums=(0, 1, 2)))(x, w, b)
  _close(got[0], want[0], TOL[4], 'loss')
  for name, g, r in zip(('dx', 'dw', 'db'), got[1], want[1]):
    _close(g, r, TOL[4], name)


def test_pick_plan():
  """The per-layer choice at the VGG16's shapes (16 images), and the cases
  that stay on conv.py's path: first layer, bfloat16."""
  assert winograd.pick_plan((16, 110, 230, 3), 64) == (0, 0, 0)
  assert winograd.pick_plan((16, 110, 230, 64), 64) == (0, 0, winograd.M)
  assert winograd.pick_plan((16, 55, 115, 64), 128) == (winograd.M,) * 3
  assert winograd.pick_plan((16, 55, 115, 128), 128, jnp.bfloat16) == (0, 0, 0)
  assert winograd.pick_plan((16, 27, 57, 256), 256) == (0, 0, winograd.M)
  assert winograd.pick_plan((16, 13, 28, 512), 512) == (0, 0, 2)
  assert winograd.pick_plan((16, 6, 14, 512), 512) == (0, 0, 0)


def _uses_winograd(fn, *args):
  return 'custom_vjp_call' in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize('case', ['stride2', '5x5', 'nchw', 'valid', 'precision'])
def test_dispatch_falls_back_to_lax(case):
  x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 8, 9, 4)), jnp.float32)
  w = jnp.ones((5, 5, 4, 3)) if case == '5x5' else jnp.ones((3, 3, 4, 3)) / 9
  kw = dict(window_strides=(2, 2) if case == 'stride2' else (1, 1),
            padding='VALID' if case == 'valid' else 'SAME', dimension_numbers=DN,
            precision=lax.Precision.HIGHEST if case == 'precision' else None)
  if case == 'nchw':
    x, kw['dimension_numbers'] = x.transpose(0, 3, 1, 2), ('NCHW', 'HWIO', 'NCHW')
  fn = lambda x, w: winograd.conv_general_dilated(x, w, **kw)
  assert not _uses_winograd(fn, x, w)
  np.testing.assert_array_equal(fn(x, w), lax.conv_general_dilated(x, w, **kw))


def test_dispatch_takes_3x3_same():
  x, w, _, _ = _inputs((2, 9, 10, 16, 16))
  for padding in ('SAME', ((1, 1), (1, 1))):
    # Traced and called within this iteration only: sees this padding.
    fn = lambda x, w: winograd.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=DN)  # noqa: B023
    assert _uses_winograd(fn, x, w)
    _close(fn(x, w), _ref(x, w), TOL[4])


def test_one_device_explicit_mesh():
  """train.py's layout on one CPU: the batch sharded over a 1-device mesh."""
  mesh = jax.make_mesh((1,), ('data',))
  spec = jax.sharding.PartitionSpec
  x, w, _, ct = _inputs((2, 5, 6, 16, 8))
  shard = lambda a, s: jax.device_put(a, jax.sharding.NamedSharding(mesh, s))
  x, ct, w = shard(x, spec('data')), shard(ct, spec('data')), shard(w, spec())

  def grads(f):
    return jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(f(x, w) * ct), argnums=(0, 1)))(x, w)

  got = grads(lambda x, w: winograd.conv3x3(x, w, (4, 4, 4)))
  want = grads(_ref)
  for name, g, r in zip(('loss', 'dx', 'dw'), jax.tree.leaves(got), jax.tree.leaves(want)):
    _close(g, r, TOL[4], name)


def test_two_layer_flax_stack_grads_match_lax(monkeypatch):
  """conv -> ReLU -> conv through flax.linen.Conv's conv_general_dilated hook,
  the way models.py plugs conv implementations in; Winograd in every
  direction (pick_plan would keep these small layers' forward on lax)."""
  monkeypatch.setattr(winograd, 'pick_plan', lambda *args, **kwargs: (4, 2, 4))
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  class Stack(nn.Module):
    conv_fn: object

    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(16, (3, 3), padding='SAME', conv_general_dilated=self.conv_fn)(x))
      return nn.Conv(24, (3, 3), padding='SAME', conv_general_dilated=self.conv_fn)(x)

  r = np.random.default_rng(3)
  x = jnp.asarray(r.standard_normal((3, 11, 14, 16)), jnp.float32)
  ct = jnp.asarray(r.standard_normal((3, 11, 14, 24)), jnp.float32)
  params = Stack(lax.conv_general_dilated).init(jax.random.key(0), x)
  loss = lambda fn: lambda p, x: jnp.sum(jnp.tanh(Stack(fn).apply(p, x)) * ct)
  assert _uses_winograd(loss(winograd.conv_general_dilated), params, x)
  got = jax.jit(jax.grad(loss(winograd.conv_general_dilated), argnums=(0, 1)))(params, x)
  want = jax.jit(jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    _close(g, w, TOL[4])
