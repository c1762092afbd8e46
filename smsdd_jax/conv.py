"""A 3x3 SAME convolution with a hand-written backward pass, for XLA:CPU.

Why: on this project's CPU (2 cores, AVX-512) XLA:CPU runs VGG16's forward
convolutions at about oneDNN's speed, but its backward pass is 2-4x slower
than PyTorch's, which made the jitted train step 0.4x PyTorch's pairs/s (see
docs/performance.md). The backward of y = conv(x, w) has two parts:

  dx = conv(dy, flip(w)^T)   an ordinary forward 3x3 SAME convolution with the
                             kernel flipped in space and its in/out channels
                             swapped; written that way XLA runs it at forward
                             speed instead of through its slower
                             transposed-convolution path.
  dw[i, j] = sum_{n,h,w} xpad[n, h+i, w+j, :]^T dy[n, h, w, :]
                             a reduction over batch and space. XLA:CPU lowers
                             it as a convolution whose "batch" is the input
                             channels; here it can instead be computed as 9
                             matmuls of shifted views (`dw_method='shift9'`),
                             chosen per layer shape by `_pick_dw_method`.

Everything is a pure function; `conv3x3` has a `jax.custom_vjp`, and
`conv_general_dilated` has `lax.conv_general_dilated`'s signature so that
`flax.linen.Conv(..., conv_general_dilated=conv.conv_general_dilated)` uses
it (other shapes, strides or layouts fall back to the lax op unchanged).
tests/test_conv.py checks values and gradients against `lax`.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
DW_METHODS = ('xla', 'shift9')


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=DIMENSION_NUMBERS)


def conv3x3_dx(dy: jax.Array, w: jax.Array) -> jax.Array:
  """Input gradient of a 3x3 SAME conv, as a forward conv (flipped, I<->O)."""
  return _conv(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2))


def conv3x3_dw(x: jax.Array, dy: jax.Array, method: str = 'xla') -> jax.Array:
  """Weight gradient (3, 3, C, K) of a 3x3 SAME conv of x (N, H, W, C)."""
  n, h, w, c = x.shape
  k = dy.shape[-1]
  if method == 'xla':
    # What jax.vjp emits: a conv whose batch dim is C and feature dim is N.
    out = lax.conv_general_dilated(x, dy, (1, 1), ((1, 1), (1, 1)),
                                   dimension_numbers=('CHWN', 'IHWO', 'NHWC'))
    return out.transpose(1, 2, 0, 3)
  if method == 'shift9':
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dy2 = dy.reshape(-1, k)
    taps = [xp[:, i:i + h, j:j + w, :].reshape(-1, c).T @ dy2
            for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, c, k)
  raise ValueError(f'dw method {method!r}: expected one of {DW_METHODS}')


def _pick_dw_method(x_shape, k: int) -> str:
  """The faster weight-gradient method for this layer shape on XLA:CPU,
  from the per-layer measurements in docs/performance.md."""
  del x_shape, k
  return 'xla'


@jax.custom_vjp
def conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
  """3x3, stride 1, SAME conv; x NHWC, w HWIO. Same values as lax's."""
  return _conv(x, w)


def _conv3x3_fwd(x, w):
  return _conv(x, w), (x, w)


def _conv3x3_bwd(res, dy):
  x, w = res
  dx = conv3x3_dx(dy, w)
  dw = conv3x3_dw(x, dy, _pick_dw_method(x.shape, dy.shape[-1]))
  return dx.astype(x.dtype), dw.astype(w.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _is_3x3_same(rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                 dimension_numbers, feature_group_count, batch_group_count):
  if rhs.ndim != 4 or tuple(rhs.shape[:2]) != (3, 3):
    return False
  if tuple(window_strides) != (1, 1) or feature_group_count != 1 or batch_group_count != 1:
    return False
  if any(d not in (None, 1) and tuple(d) != (1, 1) for d in (lhs_dilation, rhs_dilation)):
    return False
  if not (padding == 'SAME' or (not isinstance(padding, str)
                                and [tuple(p) for p in padding] == [(1, 1), (1, 1)])):
    return False
  dn = lax.conv_dimension_numbers((1, 1, 1, 1), rhs.shape, dimension_numbers)
  return dn == lax.conv_dimension_numbers((1, 1, 1, 1), rhs.shape, DIMENSION_NUMBERS)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """Drop-in for `lax.conv_general_dilated`: the custom-backward conv for
  3x3 / stride 1 / SAME / NHWC-HWIO, the lax op for anything else."""
  if precision is None and preferred_element_type is None and _is_3x3_same(
      rhs, window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, batch_group_count):
    return conv3x3(lhs, rhs)
  return lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)


# ------------------------------------------------------------------ max-pool
# nn.max_pool's gradient is XLA's select-and-scatter, which XLA:CPU runs as a
# slow scalar loop: at the paper's size it cost about as much as two conv
# layers' backward (docs/performance.md). A 2x2 / stride 2 pool is 4 strided
# views, so both directions can be written as fused elementwise code.


def _windows(x):
  """The 4 strided (N, H//2, W//2, C) views of a 2x2 / stride 2 pool, in
  select-and-scatter's scan order (row-major inside the window)."""
  return [x[:, i::2, j::2][:, :x.shape[1] // 2, :x.shape[2] // 2]
          for i in (0, 1) for j in (0, 1)]


@jax.custom_vjp
def max_pool2x2(x: jax.Array) -> jax.Array:
  """2x2, stride 2, VALID max-pool of NHWC x; flax.linen.max_pool's values."""
  a, b, c, d = _windows(x)
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _max_pool_fwd(x):
  return max_pool2x2(x), x


def _max_pool_bwd(x, dy):
  views = _windows(x)
  y = jnp.maximum(jnp.maximum(views[0], views[1]), jnp.maximum(views[2], views[3]))
  taken = jnp.zeros(y.shape, bool)
  grads = []
  for v in views:  # The gradient goes to the first maximum, as select-and-scatter.
    hit = (v == y) & ~taken
    taken = taken | hit
    grads.append(jnp.where(hit, dy, jnp.zeros_like(dy)))
  n, h2, w2, c = y.shape
  dx = jnp.stack(grads, axis=3).reshape(n, h2, w2, 2, 2, c)
  dx = dx.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h2, 2 * w2, c)
  dx = jnp.pad(dx, ((0, 0), (0, x.shape[1] - 2 * h2), (0, x.shape[2] - 2 * w2), (0, 0)))
  return (dx,)


max_pool2x2.defvjp(_max_pool_fwd, _max_pool_bwd)
