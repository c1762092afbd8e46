"""Winograd minimal filtering (Lavin & Gray 2016) for the VGG16's 3x3 SAME convs.

Why: F(m x m, 3 x 3) makes an m x m output tile from an (m+2)^2 input tile
with (m+2)^2 multiplies instead of 9 m^2 per channel pair: 2.25x fewer for
F(2,3), 4x for F(4,3). This module measures whether that speeds the jitted
train step on XLA:CPU, where conv.py runs forward and dx as YNNPACK direct
convolutions and dw as shifted matmuls (docs/performance.md).

How: V = B^T d B for every tile (strided views of the padded input, no
gather), U = G g G^T, then ONE batched GEMM over the (m+2)^2 transform
positions, [(m+2)^2, tiles, C] @ [(m+2)^2, C, K], then A^T M A per tile,
un-tiled by a reshape and cropped (any H, W). The transforms are
multiply-adds that XLA fuses into loops. Gradients (`conv3x3`, a
custom_vjp): dx is the same Winograd conv of dy with the kernel flipped and
I <-> O swapped (conv.conv3x3_dx's identity); dw is computed in the
transform domain, dU = sum over tiles of V^T dM (one batched GEMM that
contracts the tiles), dw = G^T dU G. Layers run a batch chunk of about
CHUNK_BYTES at a time (a loop), which halved the time at 55 x 115.

Numerics, float32, max |err| / max |exact| against a float64 reference
(`error_report()`, N=2, He-normal weights, ReLU'd inputs):

                          55x115, 64->128           13x28, 512->512
                          fwd     dx      dw        fwd     dx      dw
  lax conv (reference)    6.8e-7  6.7e-7  3.0e-6    4.1e-7  5.7e-7  4.4e-7
  F(2,3)                  3.3e-7  4.8e-7  4.8e-7    8.6e-7  9.7e-7  6.1e-7
  F(4,3) 0,+-1,1/2,-2     2.2e-6  3.7e-6  2.1e-6    5.4e-6  6.3e-6  1.7e-6
  F(4,3) 0,+-1,+-2        6.2e-6  8.0e-6  6.0e-6    1.8e-5  1.7e-5  4.2e-6
  F(4,3) 0,+-1,+-1/2      5.6e-6  1.2e-5  5.6e-6    1.2e-5  1.8e-5  4.7e-6

F(2,3) is as exact as lax's conv; F(4,3) at the paper's points 0, +-1, +-2
is up to 40x worse (forward, dx), and at 0, +-1, 1/2, -2 (used here, POINTS)
2-3x better than that; 0, +-1, +-1/2 gains nothing. Against lax's float32
result the errors are about the same (printed too). tests/test_winograd.py
allows 10x these (1e-5, 1e-4).

Speed, rough (2 shared cores at load 5-6, so not final): effective GFLOP/s
(direct-conv FLOPs / median time) at 16 images, interleaved in one process;
"conv.py" is its path: lax conv forward, dx as a forward conv, dw by
conv._pick_dw_method (shift9; XLA's on 6 x 14 and on the first layer, whose
row is from a separate run at load 4.7).

  layer              forward            dx                 dw
                     conv.py  F2   F4   conv.py  F2   F4   conv.py  F2   F4
  110x230, 3->64        21     6    7                         7      4    5
  110x230, 64->64       90    53   59     66    49   54      14     26   32
  55x115, 64->128       65    68   81     73    67   73      30     57   64
  55x115, 128->128     101    90  110     98    88  107      37     70   75
  27x57, 128->256      102   104   96    106    91   95      51     79   95
  27x57, 256->256      101   105  100     96   105   98      54     88  100
  13x28, 256->512       93    81   71    101    74   69      66     88   82
  13x28, 512->512      100    78   70     76    71   71      76     98   96
  6x14, 512->512        92    43   28     81    40   27      78     79   42

So Winograd pays off in the weight gradient (1.3-2.3x from 13 x 28 up: 4x
fewer multiplies than shift9's nine matmuls and no shifted copies), only
~10% in forward / dx at 55 x 115 (its GEMMs, with a reduction of only C,
run at half the direct conv's speed, and the transforms cost as much
again), and not at all in the first layer (C = 3) or at 6 x 14. `pick_plan`
encodes this per layer; M = 4 is the tile where it is used, F(2,3) for dw at
13 x 28 (F(4,3) pads 13 rows to 16 there). Layers it leaves alone go
through conv.py unchanged.

Whole train step (8 pairs, full width, float32; two interleaved A/B runs of
5 rounds x 2 steps at load ~6, throw-away scripts, nn.Conv given this
module's conv_general_dilated): conv.py ('custom') 9.80 / 9.88 s median,
this module 7.69 / 7.74 s, i.e. 1.27x the pairs/s (paired ratio 0.75 /
0.78); with Winograd in dw only, 7.95 s.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec as P

from smsdd_jax import conv

# ------------------------------------------------------------ the transforms
# F(m x m, 3 x 3): an (m+2) x (m+2) input tile d and the 3 x 3 filter g give
# the m x m output tile  Y = A^T [(G g G^T) * (B^T d B)] A.


def toom_cook(m: int, points, r: int = 3):
  """(B^T, G, A^T) of F(m, r) from m + r - 2 finite points plus infinity.

  F(m, r) is the transpose of Toom-Cook's linear convolution of an m-tap and
  an r-tap sequence: evaluate both at the points (V_h, V_g), multiply, then
  interpolate (V^-1). Transposed, y = V_h^T [(V_g g) * (V^-T d)], so
  A^T = V_h^T, G = V_g, B^T = V^-T. Each row of B^T is then divided by its
  smallest nonzero entry and that row of G multiplied by it (same product),
  which gives the paper's integer B^T for its points.
  """
  alpha = m + r - 1
  pts = np.asarray(points, np.float64)
  if pts.size != alpha - 1:
    raise ValueError(f'F({m}, {r}) needs {alpha - 1} finite points, got {points}')

  def vander(cols):  # Rows p^0 .. p^(cols-1) per finite point, then infinity.
    return np.concatenate([pts[:, None] ** np.arange(cols), np.eye(cols)[-1:]])

  bt, g, at = np.linalg.inv(vander(alpha)).T, vander(r), vander(m).T
  bt[np.abs(bt) < 1e-12] = 0.0
  scale = np.array([row[row != 0][np.argmin(np.abs(row[row != 0]))] for row in bt])
  return bt / scale[:, None], g * scale[:, None], at


# Lavin & Gray's tables (points 0, +-1 and 0, +-1, +-2). toom_cook at those
# points gives the same products (rows may differ in sign); the tests check
# that both, and MATRICES, compute the 1-D correlation exactly.
PAPER = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}
# F(4, 3) at 0, +-1, 1/2, -2 instead of the paper's 0, +-1, +-2: 3x less
# float32 error (module docstring), for the same cost.
POINTS = {2: (0, 1, -1), 4: (0, 1, -1, 0.5, -2)}
MATRICES = {m: toom_cook(m, p) for m, p in POINTS.items()}
M = 4  # The tile size where Winograd is used (pick_plan) and conv3x3_winograd's default.


def _coef(vec, ndim: int, axis: int, dtype):
  """A constant vector laid along `axis` of an ndim array (broadcasts)."""
  shape = [1] * ndim
  shape[axis] = len(vec)
  return jnp.asarray(np.asarray(vec).reshape(shape), dtype)


def _lincomb(vecs, arrays, ndim, axis):
  """sum_i vecs[:, i] (laid on `axis`) * arrays[i], as one fused loop."""
  out = None
  for i, a in enumerate(arrays):
    if not np.any(vecs[:, i]):
      continue
    term = _coef(vecs[:, i], ndim, axis, a.dtype) * a
    out = term if out is None else out + term
  return out


def _ntiles(h, w, m):
  return -(-h // m), -(-w // m)


def input_transform(x, bt):
  """x (N, H, W, C) -> V (a, a, N, th, tw, C) = B^T d B for every (m+2)^2
  tile (stride m) of the SAME-padded x. Separable: rows, then columns."""
  a = bt.shape[0]
  m = a - 2
  n, h, w, c = x.shape
  th, tw = _ntiles(h, w, m)
  xp = jnp.pad(x, ((0, 0), (1, th * m + 1 - h), (1, tw * m + 1 - w), (0, 0)))
  # Strided views (no gather, no tile copies); XLA fuses both stages into
  # one loop that writes V once.
  rows = [xp[None, :, i:i + (th - 1) * m + 1:m] for i in range(a)]      # (1, N, th, Wp, C)
  r = _lincomb(bt, rows, 5, 0)                                        # (a, N, th, Wp, C)
  cols = [r[:, None, :, :, j:j + (tw - 1) * m + 1:m] for j in range(a)]  # (a, 1, N, th, tw, C)
  return _lincomb(bt, cols, 6, 1)


def output_transform(mm, at, h, w):
  """M (a, a, N, th, tw, K) -> y (N, h, w, K): A^T M A per tile, un-tiled."""
  m = at.shape[0]
  _, _, n, th, tw, k = mm.shape
  z = [mm[:, v][:, None] for v in range(at.shape[1])]                # (a, 1, N, th, tw, K)
  z = _lincomb(at, z, 6, 1)                                           # (a, m_j, N, th, tw, K)
  # Laid out directly as (N, th, i, tw, j, K), so that un-tiling is a reshape.
  y = _lincomb(at, [zu.transpose(1, 2, 3, 0, 4)[:, :, None] for zu in z], 6, 2)
  return y.reshape(n, th * m, tw * m, k)[:, :h, :w]


def output_transform_t(dy, at):
  """Transpose of output_transform: dy (N, H, W, K) -> dM (a, a, N, th, tw, K)."""
  m, a = at.shape
  n, h, w, k = dy.shape
  th, tw = _ntiles(h, w, m)
  dyp = jnp.pad(dy, ((0, 0), (0, th * m - h), (0, tw * m - w), (0, 0)))  # Cropped rows: 0.
  cols = [dyp[None, :, :, j::m] for j in range(m)]                    # (1, N, Hp, tw, K)
  q = _lincomb(at.T, cols, 5, 0)                                      # (a_v, N, Hp, tw, K)
  rows = [q[None, :, :, i::m] for i in range(m)]                      # (1, a_v, N, th, tw, K)
  return _lincomb(at.T, rows, 6, 0)


def filter_transform(w, g):
  """w (3, 3, C, K) -> U (a, a, C, K) = G w G^T per (c, k)."""
  g = jnp.asarray(g, w.dtype)
  return jnp.einsum('ua,vb,abck->uvck', g, g, w, precision=lax.Precision.HIGHEST)


def filter_transform_t(du, g):
  """Transpose of filter_transform: dU (a, a, C, K) -> dw (3, 3, C, K)."""
  g = jnp.asarray(g, du.dtype)
  return jnp.einsum('ua,vb,uvck->abck', g, g, du, precision=lax.Precision.HIGHEST)


# ------------------------------------------------------------ the convolution


def _flat(t):
  """(a, a, ..., ch) -> (a*a, rows, ch): the batched GEMMs below run on 3-D
  views. On the 6-D arrays XLA's dot lowering gave the transform's output a
  transposed layout, and the transform fused into that transposed write ran
  5x slower (the weight gradient of the 55 x 115 layer: 2.1 s, not 0.39 s)."""
  return t.reshape(t.shape[0] * t.shape[1], -1, t.shape[-1])


def _matrices(m, points):
  return MATRICES[m] if points is None else toom_cook(m, points)


CHUNK_BYTES = 4 << 20  # Batch chunk: about this many bytes of input or output.


def _chunk(n: int, bytes_per_image: int, u_bytes: int) -> int:
  """Images per chunk: the largest divisor of n within CHUNK_BYTES, or within
  the transformed filter's size where that is larger (every chunk's GEMM
  reads all of it again)."""
  budget = max(CHUNK_BYTES, u_bytes)
  return max(d for d in range(1, n + 1) if n % d == 0 and (d == 1 or d * bytes_per_image <= budget))


def _take(a, i, chunk):
  return lax.dynamic_slice_in_dim(a, i * chunk, chunk)


def conv3x3_winograd(x, w, m: int = M, points=None):
  """3x3, stride 1, SAME conv by F(m x m, 3 x 3); x NHWC, w HWIO.
  `points` overrides POINTS[m] (for error_report)."""
  bt, g, at = _matrices(m, points)
  n, h, wd, c = x.shape
  u = _flat(filter_transform(w, g))

  def one(xc):
    v = input_transform(xc, bt)
    mm = jnp.einsum('ptc,pck->ptk', _flat(v), u)  # ONE batched GEMM.
    return output_transform(mm.reshape(*v.shape[:-1], -1), at, h, wd)

  # A batch chunk at a time (a loop): its V and M (2.25x / 4x the chunk's
  # input and output) stay in cache and the buffers are reused; at 55 x 115
  # this halved the time against the whole batch at once. A fori_loop over
  # slices of x rather than lax.map: map copies its input into the loop.
  k = u.shape[-1]
  chunk = _chunk(n, h * wd * max(c, k) * x.dtype.itemsize, u.size * u.dtype.itemsize)
  if chunk == n:
    return one(x)
  return lax.fori_loop(0, n // chunk, lambda i, y: lax.dynamic_update_slice_in_dim(
      y, one(_take(x, i, chunk)), i * chunk, 0), jnp.zeros((n, h, wd, k), x.dtype))


def conv3x3_dw_winograd(x, dy, m: int = M, points=None):
  """Weight gradient in the transform domain: dU = sum_tiles V^T dM (one
  batched GEMM per batch chunk), then dw = G^T dU G (filter_transform^T)."""
  bt, g, at = _matrices(m, points)
  n, h, wd, c = x.shape
  k, a = dy.shape[-1], m + 2

  def one(xc, dyc):
    v, dm = input_transform(xc, bt), output_transform_t(dyc, at)
    return jnp.einsum('ptc,ptk->pck', _flat(v), _flat(dm))

  chunk = _chunk(n, h * wd * max(c, k) * x.dtype.itemsize, a * a * c * k * x.dtype.itemsize)
  if chunk == n:
    du = one(x, dy)
  else:  # Summed over batch chunks, as the forward.
    du = lax.fori_loop(
        0, n // chunk, lambda i, du: du + one(_take(x, i, chunk), _take(dy, i, chunk)),
        jnp.zeros((a * a, c, k), x.dtype))
  return filter_transform_t(du.reshape(a, a, c, k), g)


# ------------------------------------------------- the custom-backward conv
# A plan says, per direction (forward, dx, dw), which tile size to use, or 0
# for conv.py's path (the lax conv for forward and dx; its per-shape dw).


def pick_plan(x_shape, k: int, dtype=jnp.float32) -> tuple[int, int, int]:
  """(forward, dx, dw) tile sizes for a layer, 0 = conv.py's path, from the
  per-layer timings in the module docstring (interleaved, 16 images)."""
  del k
  _, h, w, c = x_shape
  if jnp.dtype(dtype) != jnp.float32 or c < 16 or h * w <= 128:
    # Other dtypes: not measured (bfloat16's epsilon is 2^16 float32's, and
    # F(4,3) amplifies rounding 5-10x more than lax's conv). First layer
    # (C = 3): the GEMMs reduce over 3 channels; Winograd was 3x slower
    # forward, 1.5x in dw. 6 x 14 maps: lax's forward 2x faster, dw even.
    return (0, 0, 0)
  # dw: 1.3-2.3x faster from 13 x 28 up; F(2,3) on 13 x 28, where F(4,3)
  # pads 13 rows to 16. Forward and dx: only the 55 x 115 layers gained
  # (~10%); elsewhere YNNPACK's direct conv was as fast or faster.
  fwd = M if 2048 < h * w <= 8192 else 0
  return (fwd, fwd, M if h * w >= 1024 else 2)


def _flip(w):
  return jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv3x3(x, w, plan):
  return conv3x3_winograd(x, w, plan[0]) if plan[0] else conv._conv(x, w)


def _conv3x3_fwd(x, w, plan):
  return _conv3x3(x, w, plan), (x, w)


def _conv3x3_bwd(plan, res, dy):
  x, w = res
  dx = conv3x3_winograd(dy, _flip(w), plan[1]) if plan[1] else conv.conv3x3_dx(dy, w)
  dw = (conv3x3_dw_winograd(x, dy, plan[2]) if plan[2]
        else conv.conv3x3_dw(x, dy, conv._pick_dw_method(x.shape, dy.shape[-1])))
  return dx.astype(x.dtype), dw.astype(w.dtype)


_conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def conv3x3(x, w, plan=None):
  """3x3, stride 1, SAME conv (x NHWC, w HWIO) with Winograd where `plan`
  (default: pick_plan for this shape) says so, in both directions."""
  axes = conv._batch_axes(x)
  if any(size > 1 for size in axes.values()):
    # The tiles mix the batch into one GEMM dimension; on a multi-device
    # mesh leave the placement to conv.py (which leaves it to JAX).
    return conv.conv3x3(x, w)
  plan = tuple(plan or pick_plan(x.shape, w.shape[-1], x.dtype))
  if not axes:
    return _conv3x3(x, w, plan)
  # A 1-device explicit mesh (train.py's on one CPU): drop the batch's
  # sharding annotation (free) so that it can be tiled, then put it back.
  sharding = jax.typeof(x).sharding
  x = jax.sharding.reshard(x, NamedSharding(sharding.mesh, P()))
  return jax.sharding.reshard(_conv3x3(x, w, plan), sharding)


# `conv3x3` for 3x3 / stride 1 / SAME / NHWC-HWIO, conv.py's drop-in (so its
# custom conv, or lax's) for anything else.
conv_general_dilated = conv.make_drop_in(conv3x3, conv.conv_general_dilated)


# ------------------------------------------------------------------ numerics


def _ref64(x, w):
  """3x3 SAME conv in float64 numpy (9 shifted matmuls): the exact answer."""
  n, h, wd, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(xp[:, i:i + h, j:j + wd] @ w[i, j] for i in range(3) for j in range(3))


def _dw64(x, dy):
  n, h, wd, c = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dy2 = dy.reshape(-1, dy.shape[-1])
  return np.array([[xp[:, i:i + h, j:j + wd].reshape(-1, c).T @ dy2 for j in range(3)]
                   for i in range(3)])


ERROR_SHAPES = ((2, 55, 115, 64, 128), (2, 13, 28, 512, 512))


def error_report(shapes=ERROR_SHAPES, seed: int = 0) -> dict:
  """float32 error of forward, dx and dw of lax's conv and of each Winograd
  variant against a float64 reference, and of each Winograd variant against
  lax's float32 result; He-normal weights, ReLU'd normal inputs, normal
  output gradients. Prints max |err| and max |err| / max |reference|.

    python -c 'from smsdd_jax import winograd; winograd.error_report()'
  """
  variants = {'lax': None, 'F(2,3)': (2, None), 'F(4,3) 0,+-1,1/2,-2': (4, None),
              'F(4,3) 0,+-1,+-2 (paper)': (4, (0, 1, -1, 2, -2)),
              'F(4,3) 0,+-1,+-1/2': (4, (0, 1, -1, 0.5, -0.5))}
  lax_conv = jax.jit(conv._conv)
  lax_dw = jax.jit(lambda x, dy: jax.vjp(lambda w: conv._conv(x, w), jnp.zeros(
      (3, 3, x.shape[-1], dy.shape[-1]), x.dtype))[1](dy)[0])
  out = {}
  for n, h, wd, c, k in shapes:
    r = np.random.default_rng(seed)
    x = np.maximum(r.standard_normal((n, h, wd, c)), 0)
    w = r.standard_normal((3, 3, c, k)) * np.sqrt(2 / (9 * c))
    dy = r.standard_normal((n, h, wd, k))
    exact = (_ref64(x, w), _ref64(dy, np.flip(w, (0, 1)).transpose(0, 1, 3, 2)), _dw64(x, dy))
    xf, wf, dyf = (jnp.asarray(t, jnp.float32) for t in (x, w, dy))
    lax32 = tuple(np.asarray(t, np.float64) for t in (
        lax_conv(xf, wf), lax_conv(dyf, _flip(wf)), lax_dw(xf, dyf)))
    print(f'N={n} {h}x{wd} {c}->{k}: max |err|, max |err| / max |reference|')
    for name, v in variants.items():
      if v is None:
        got = lax32
      else:
        m, pts = v
        got = (conv3x3_winograd(xf, wf, m, pts), conv3x3_winograd(dyf, _flip(wf), m, pts),
               conv3x3_dw_winograd(xf, dyf, m, pts))
      for ref_name, refs in (('float64', exact), ('lax f32', lax32)):
        if v is None and ref_name == 'lax f32':
          continue
        errs = []
        for g, t in zip(got, refs):
          e = np.abs(np.asarray(g, np.float64) - t).max()
          errs.append((float(e), float(e / np.abs(t).max())))
        out[((n, h, wd, c, k), name, ref_name)] = errs
        print(f'  {name:25s} vs {ref_name}' + ''.join(
            f' | {d} {a:.1e} {rel:.1e}' for d, (a, rel) in zip(('fwd', 'dx', 'dw'), errs)))
  return out
