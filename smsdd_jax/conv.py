"""A 3x3 SAME convolution and a 2x2 max-pool with hand-written backward passes.

Why: on this project's CPU (2 cores, AVX-512) XLA:CPU's backward pass of
VGG16 was much slower than PyTorch's (oneDNN), which made the jitted train
step 0.4x PyTorch's pairs/s. A profile (docs/performance.md) put the loss in
two places, which this module rewrites:

  max-pool backward   nn.max_pool's gradient is XLA's select-and-scatter,
                      a slow scalar loop on CPU (~15% of the step). Here it
                      is 4 strided views and 4 masked interior-padded pads,
                      ~10x faster, with the same first-max tie-break.
  conv weight grad    dw[i, j] = sum_{n,h,w} xpad[n, h+i, w+j, :]^T dy[n, h, w, :]
                      XLA lowers it as a conv whose "batch" is the input
                      channels: 3-4x slower than 9 matmuls of shifted views
                      ('shift9') on the 55 x 115 layers. The method is picked
                      per layer shape by `_pick_dw_method`.

The input gradient is written as a forward conv with the kernel flipped in
space and its in/out channels swapped, dx = conv(dy, flip(w)^T); with jax
0.10.2 that measured the same as XLA's own transpose conv inside the step.

Everything is a pure function; `conv3x3` and `max_pool2x2` have a
`jax.custom_vjp`, and `conv_general_dilated` has `lax.conv_general_dilated`'s
signature so that `flax.linen.Conv(..., conv_general_dilated=...)` uses it
(other shapes, strides or layouts fall back to the lax op unchanged).
tests/test_conv.py checks values and gradients against lax / flax.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P

DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')
DW_METHODS = ('xla', 'shift9', 'rows3')


def _conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=DIMENSION_NUMBERS)


DX_METHOD = 'fwd'  # 'fwd' (below) | 'xla' (jax.vjp of the lax conv); for benchmarks.


def conv3x3_dx(dy: jax.Array, w: jax.Array) -> jax.Array:
  """Input gradient of a 3x3 SAME conv, as a forward conv (flipped, I<->O)."""
  if DX_METHOD == 'xla':
    shape = (*dy.shape[:-1], w.shape[2])
    return jax.vjp(lambda x: _conv(x, w), jnp.zeros(shape, dy.dtype))[1](dy)[0]
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
  if method == 'rows3':
    # The 3 horizontal shifts side by side on channels (one 3x copy), then
    # 3 taller matmuls (3C x K) over the vertical shifts.
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x3 = jnp.concatenate([xp[:, :, j:j + w, :] for j in range(3)], axis=-1)
    dy2 = dy.reshape(-1, k)
    taps = [x3[:, i:i + h].reshape(-1, 3 * c).T @ dy2 for i in range(3)]
    return jnp.stack(taps).reshape(3, 3, c, k)
  raise ValueError(f'dw method {method!r}: expected one of {DW_METHODS}')


def _pick_dw_method(x_shape, k: int) -> str:
  """The faster weight-gradient method for this layer shape on XLA:CPU,
  from the per-layer measurements in docs/performance.md."""
  del k
  _, h, w, c = x_shape
  if c < 16 or h * w <= 128:  # First layer (C = 3) and the 6 x 14 maps.
    return 'xla'
  # 'rows3' was faster than 'shift9' on the 110 x 230 layer in isolation
  # but slower inside the whole step (its 3x copy); shift9 everywhere else.
  return 'shift9'


@jax.custom_vjp
def conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
  """3x3, stride 1, SAME conv; x NHWC, w HWIO. Same values as lax's."""
  return _conv(x, w)


def _conv3x3_fwd(x, w):
  return _conv(x, w), (x, w)


def _batch_axes(x) -> dict:
  """Mesh axes (name -> size) that x's dims are sharded over, explicitly."""
  sharding = getattr(jax.typeof(x), 'sharding', None)
  mesh, spec = getattr(sharding, 'mesh', None), getattr(sharding, 'spec', None)
  if mesh is None or spec is None or getattr(mesh, 'empty', True):
    return {}
  names = [n for e in spec if e is not None for n in (e if isinstance(e, tuple) else (e,))]
  return {n: dict(mesh.shape).get(n, 1) for n in names}


def _conv3x3_bwd(res, dy):
  x, w = res
  axes = _batch_axes(x)
  if any(size > 1 for size in axes.values()):
    # The matmuls below contract over the batch; on a multi-device mesh let
    # JAX's own conv transpose rules place the cross-device reduction.
    return jax.vjp(_conv, x, w)[1](dy)
  dx = conv3x3_dx(dy, w)
  if axes:  # A 1-device explicit mesh (train.py's on one CPU): drop the
    # batch's sharding annotation (free) so the batch can be contracted.
    x, dy = (jax.sharding.reshard(a, jax.sharding.NamedSharding(jax.typeof(a).sharding.mesh, P()))
             for a in (x, dy))
  dw = conv3x3_dw(x, dy, _pick_dw_method(x.shape, dy.shape[-1]))
  return dx.astype(x.dtype), dw.astype(w.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


# ------------------------------------------------- conv + bias + ReLU, fused
# A lever from the issue "Speed, second round": one custom_vjp for the
# whole layer, so the backward starts from the ReLU mask of the layer's
# output (kept for the next layer anyway) instead of a separately kept
# pre-activation, and the bias gradient is one reduction of the masked
# gradient. Measured beside the unfused layer in docs/performance.md.


@jax.custom_vjp
def conv3x3_bias_relu(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """relu(conv3x3(x, w) + b); the same values as the three ops apart."""
  return jax.nn.relu(_conv(x, w) + b)


def _conv3x3_bias_relu_fwd(x, w, b):
  y = conv3x3_bias_relu(x, w, b)
  return y, (x, w, y)


def relu_backward(y: jax.Array, dy: jax.Array) -> jax.Array:
  """dy through a ReLU whose output was y (relu'(0) = 0, as jax.nn.relu):
  what every fused conv + bias + ReLU backward starts with."""
  return jnp.where(y > 0, dy, jnp.zeros_like(dy))


def _conv3x3_bias_relu_bwd(res, dy):
  x, w, y = res
  g = relu_backward(y, dy)
  dx, dw = _conv3x3_bwd((x, w), g)
  return dx, dw, g.sum(axis=(0, 1, 2)).astype(w.dtype)


conv3x3_bias_relu.defvjp(_conv3x3_bias_relu_fwd, _conv3x3_bias_relu_bwd)


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


def make_drop_in(conv3x3_fn, fallback):
  """A drop-in for `lax.conv_general_dilated` (its signature, so that
  `flax.linen.Conv(..., conv_general_dilated=...)` takes it): `conv3x3_fn(lhs,
  rhs)` for 3x3 / stride 1 / SAME / NHWC-HWIO at default precision, and
  `fallback` (a function of the same signature) for anything else. One
  dispatch rule for every conv path (this module's, winograd.py's)."""

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                           rhs_dilation=None, dimension_numbers=None,
                           feature_group_count=1, batch_group_count=1,
                           precision=None, preferred_element_type=None):
    if precision is None and preferred_element_type is None and _is_3x3_same(
        rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers, feature_group_count, batch_group_count):
      return conv3x3_fn(lhs, rhs)
    return fallback(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)

  return conv_general_dilated


# The custom-backward conv for 3x3 / stride 1 / SAME / NHWC-HWIO, the lax op
# for anything else.
conv_general_dilated = make_drop_in(conv3x3, lax.conv_general_dilated)


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


def max_pool2x2(x: jax.Array) -> jax.Array:
  """2x2, stride 2, VALID max-pool of NHWC x; flax.linen.max_pool's values,
  and its gradient (select-and-scatter's: to the first maximum of each
  window, row-major)."""
  return _max_pool(x.shape[1] % 2, x.shape[2] % 2, x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _max_pool(odd_h: int, odd_w: int, x: jax.Array) -> jax.Array:
  del odd_h, odd_w  # The backward's: the rows and columns no window covers.
  a, b, c, d = _windows(x)
  return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _max_pool_fwd(odd_h, odd_w, x):
  views = _windows(x)
  y = jnp.maximum(jnp.maximum(views[0], views[1]), jnp.maximum(views[2], views[3]))
  if x.dtype != jnp.bfloat16:
    return y, x  # The backward finds the maxima again (cheaper in float32, below).
  # In bfloat16, which of the 4 positions each output took (the first
  # maximum), kept as one byte an output: finding it again in the backward
  # from x (4 compares, 4 interior-padded selects and their sum) cost 14x as
  # much there, XLA:CPU's bfloat16 elementwise code being slow; in float32
  # that is the cheaper way (docs/performance.md, "bfloat16 training").
  first = jnp.where(views[0] == y, 0, jnp.where(views[1] == y, 1,
                                                jnp.where(views[2] == y, 2, 3)))
  return y, first.astype(jnp.uint8)


def _max_pool_bwd(odd_h, odd_w, saved, dy):
  if saved.dtype != jnp.uint8:
    return _max_pool_bwd_from_x(saved, dy)
  n, h2, w2, c = dy.shape
  position = jnp.arange(4, dtype=jnp.uint8).reshape(1, 1, 2, 1, 2, 1)
  # (n, h2, 2, w2, 2, c): the window's 2 x 2 beside each output, then the
  # input's rows and columns by a reshape that leaves the batch axis alone
  # (so dx keeps dy's sharding: said, as explicit sharding asks).
  dx = jnp.where(saved[:, :, None, :, None, :] == position, dy[:, :, None, :, None, :],
                 jnp.zeros((), dy.dtype))
  dx = jnp.reshape(dx, (n, 2 * h2, 2 * w2, c), out_sharding=jax.typeof(dy).sharding)
  return (jnp.pad(dx, ((0, 0), (0, odd_h), (0, odd_w), (0, 0))),)


def first_max_hits(x: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
  """(y, hits) of a 2x2 / stride 2 max-pool of NHWC x: y its output, hits
  4 bool arrays of y's shape, one per window position in `_windows`' order,
  each True where that position holds the window's first maximum
  (row-major): where select-and-scatter, and so the pool's gradient, sends
  dy."""
  views = _windows(x)
  y = jnp.maximum(jnp.maximum(views[0], views[1]), jnp.maximum(views[2], views[3]))
  taken = jnp.zeros(y.shape, bool)
  hits = []
  for v in views:
    hit = (v == y) & ~taken
    taken = taken | hit
    hits.append(hit)
  return y, hits


def _max_pool_bwd_from_x(x, dy):
  y, hits = first_max_hits(x)
  grads = [jnp.where(hit, dy, jnp.zeros_like(dy)) for hit in hits]
  # Scatter each view's gradient back to its stride-2 positions with an
  # interior-padded pad (no reshapes, so it also works on sharded batches).
  h, w = x.shape[1], x.shape[2]
  h2, w2 = y.shape[1], y.shape[2]
  zero = jnp.zeros((), dy.dtype)
  dx = None
  for (i, j), gij in zip(((0, 0), (0, 1), (1, 0), (1, 1)), grads):
    part = lax.pad(gij, zero, ((0, 0, 0), (i, h - 2 * h2 + 1 - i, 1),
                               (j, w - 2 * w2 + 1 - j, 1), (0, 0, 0)))
    dx = part if dx is None else dx + part
  return (dx,)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
