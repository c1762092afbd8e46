"""smsdd_jax/onednn: the oneDNN conv equals lax's, values and grads, and
everything it does not cover falls back to the pure-JAX conv."""
import logging
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from smsdd_jax import onednn

REPO = pathlib.Path(__file__).resolve().parents[1]

DN = ('NHWC', 'HWIO', 'NHWC')
needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason=f'oneDNN conv unavailable: {onednn.reason()}')
# (n, h, w, c, k): odd sizes, the first layer's C = 3, a 64 -> 128 layer,
# batch 1 and 3.
SHAPES = [(1, 7, 9, 3, 64), (3, 5, 7, 64, 128), (3, 13, 28, 8, 16), (1, 6, 14, 16, 8)]


def _ref(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)


def _inputs(shape, seed=0):
  n, h, w, c, k = shape
  r = np.random.default_rng(seed)
  return (jnp.asarray(r.standard_normal((n, h, w, c)), jnp.float32),
          jnp.asarray(r.standard_normal((3, 3, c, k)), jnp.float32),
          jnp.asarray(r.standard_normal((n, h, w, k)), jnp.float32))


def _value_and_grads(conv_fn, x, w, ct):
  """y, dx, dw of sum(conv(x, w) * ct), jitted."""
  def f(x, w):
    y = conv_fn(x, w)
    return jnp.sum(y * ct), y
  (_, y), (dx, dw) = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, w)
  return y, dx, dw


def _assert_close(got, want, name):
  """Within 1e-4 of the reference's largest magnitude (relative)."""
  scale = max(float(jnp.max(jnp.abs(want))), 1e-6) if want.size else 1.0
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale, err_msg=name)


def _uses_onednn(fn, *args) -> bool:
  return 'smsdd_onednn_conv3x3' in str(jax.make_jaxpr(fn)(*args))


def _lax_sig(conv_fn, *conv_args, **conv_kwargs):
  return lambda x, w: conv_fn(x, w, *conv_args, **conv_kwargs)


@needs_onednn
@pytest.mark.parametrize('shape', SHAPES)
def test_forward_and_grads_match_lax(shape):
  x, w, ct = _inputs(shape)
  got = _value_and_grads(onednn.conv3x3, x, w, ct)
  want = _value_and_grads(_ref, x, w, ct)
  for name, g, r in zip(('y', 'dx', 'dw'), got, want):
    _assert_close(g, r, name)


@needs_onednn
def test_cache_keeps_shapes_apart():
  """Alternating shapes (and new values) reuse each shape's own primitives."""
  runs = [((2, 5, 7, 8, 16), 0), ((2, 5, 7, 8, 8), 1), ((1, 5, 7, 8, 16), 2),
          ((2, 5, 7, 8, 16), 3)]
  for shape, seed in runs:
    x, w, ct = _inputs(shape, seed)
    got = _value_and_grads(onednn.conv3x3, x, w, ct)
    want = _value_and_grads(_ref, x, w, ct)
    for name, g, r in zip(('y', 'dx', 'dw'), got, want):
      _assert_close(g, r, f'{shape} seed {seed} {name}')
  cached = {tuple(map(int, line.split()[1:6])) for line in onednn.plans()}
  assert {s for s, _ in runs} <= cached


@needs_onednn
def test_kept_reorders_follow_the_weights_bytes():
  """Small weights keep their reordered copy per plan (several per shape,
  the oldest replaced): each call still convolves with the weights it was
  given, when they alternate, exceed the copies kept, or differ from a kept
  one in their last byte only."""
  shape = (2, 5, 7, 8, 16)  # oneDNN reorders these weights (checked below).
  x, w, ct = _inputs(shape)
  ws = [w + i for i in range(6)]  # More than the 4 copies a plan keeps.
  last = w.reshape(-1).at[-1].add(1.0).reshape(w.shape)  # Same bytes but the last 4.
  fwd = jax.jit(onednn.conv3x3)
  dx = jax.jit(jax.grad(lambda x, w: jnp.sum(onednn.conv3x3(x, w) * ct)))
  onednn.stats(reset=True)
  for i, wi in enumerate(ws + ws[::-1] + [w, last, w, last]):
    np.testing.assert_allclose(fwd(x, wi), _ref(x, wi), rtol=1e-4, atol=1e-3, err_msg=str(i))
    want = jax.grad(lambda x, w: jnp.sum(_ref(x, w) * ct))(x, wi)
    np.testing.assert_allclose(dx(x, wi), want, rtol=1e-4, atol=1e-3, err_msg=str(i))
  rows = {r['op']: r for r in onednn.stats(reset=True) if r['shape'] == shape}
  assert rows['fwd']['reorder_ms'] > 0 and rows['bwd_data']['reorder_ms'] > 0, rows
  assert any('fwd 2 5 7 8 16' in p and 'weights reordered' in p for p in onednn.plans())


@needs_onednn
def test_empty_batch():
  x, w, ct = _inputs((0, 5, 7, 4, 8))
  y, dx, dw = _value_and_grads(onednn.conv3x3, x, w, ct)
  assert y.shape == (0, 5, 7, 8) and dx.shape == x.shape
  np.testing.assert_array_equal(dw, np.zeros(w.shape, np.float32))


@needs_onednn
def test_dispatch_uses_onednn_under_jit_and_grad():
  x, w, ct = _inputs((2, 6, 9, 4, 8))
  fn = _lax_sig(onednn.conv_general_dilated, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN)
  assert _uses_onednn(jax.grad(lambda x, w: jnp.sum(fn(x, w) * ct), argnums=(0, 1)), x, w)
  for name, g, r in zip(('y', 'dx', 'dw'), _value_and_grads(fn, x, w, ct),
                        _value_and_grads(_ref, x, w, ct)):
    _assert_close(g, r, name)


@needs_onednn
def test_one_device_explicit_mesh():
  """train.py's layout on one CPU: the batch sharded over a 1-device mesh."""
  mesh = jax.make_mesh((1,), ('data',))
  x, w, ct = _inputs((2, 5, 6, 4, 8))
  shard = lambda a, spec: jax.device_put(a, jax.sharding.NamedSharding(mesh, spec))
  x, ct = shard(x, jax.sharding.PartitionSpec('data')), shard(ct, jax.sharding.PartitionSpec('data'))
  w = shard(w, jax.sharding.PartitionSpec())
  fn = _lax_sig(onednn.conv_general_dilated, (1, 1), 'SAME', dimension_numbers=DN)
  assert _uses_onednn(fn, x, w)
  got = _value_and_grads(fn, x, w, ct)
  assert got[1].sharding.spec[0] == 'data'
  for name, g, r in zip(('y', 'dx', 'dw'), got, _value_and_grads(_ref, x, w, ct)):
    _assert_close(g, r, name)


@needs_onednn
def test_flax_conv_uses_onednn():
  """What models.py would do: nn.Conv with conv_general_dilated=onednn's."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  x, _, ct = _inputs((2, 6, 7, 3, 8))
  make = lambda fn: nn.Conv(8, (3, 3), padding='SAME', conv_general_dilated=fn)
  params = make(lax.conv_general_dilated).init(jax.random.key(0), x)
  loss = lambda fn: lambda p, x: jnp.sum(jax.nn.relu(make(fn).apply(p, x)) * ct)
  assert _uses_onednn(loss(onednn.conv_general_dilated), params, x)
  got = jax.jit(jax.grad(loss(onednn.conv_general_dilated), argnums=(0, 1)))(params, x)
  want = jax.jit(jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(params, x)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    _assert_close(g, r, 'flax grads')


def _bias_relu_ref(x, w, b):
  return jax.nn.relu(_ref(x, w) + b)


@needs_onednn
@pytest.mark.parametrize('shape', SHAPES)
def test_fused_bias_relu_matches_the_three_ops(shape):
  """One primitive with bias and ReLU post-ops forward, the bias gradient
  from the weight-gradient kernel backward: the values of the three ops."""
  x, w, ct = _inputs(shape)
  b = jnp.asarray(np.random.default_rng(1).standard_normal(shape[-1]), jnp.float32)
  b = b.at[0].set(-1e3)  # One channel dead everywhere: its gradients must be 0.
  loss = lambda fn: lambda x, w, b: jnp.sum(fn(x, w, b) * ct)
  assert _uses_onednn(jax.grad(loss(onednn.conv3x3_bias_relu), argnums=(0, 1, 2)), x, w, b)
  got = jax.jit(jax.grad(loss(onednn.conv3x3_bias_relu), argnums=(0, 1, 2)))(x, w, b)
  want = jax.grad(loss(_bias_relu_ref), argnums=(0, 1, 2))(x, w, b)
  _assert_close(jax.jit(onednn.conv3x3_bias_relu)(x, w, b), _bias_relu_ref(x, w, b), 'y')
  for name, g, r in zip(('dx', 'dw', 'db'), got, want):
    _assert_close(g, r, name)
  assert float(got[2][0]) == 0.0 and not np.any(np.asarray(got[1][..., 0]))


def test_fused_bias_relu_falls_back_without_the_library(monkeypatch):
  monkeypatch.setattr(onednn, '_state', {'lib': None, 'reason': 'library missing (test)',
                                         'warned': True})
  x, w, _ = _inputs((2, 5, 7, 4, 8))
  b = jnp.zeros(8, jnp.float32)
  assert not _uses_onednn(onednn.conv3x3_bias_relu, x, w, b)
  _assert_close(onednn.conv3x3_bias_relu(x, w, b), _bias_relu_ref(x, w, b), 'y')


@needs_onednn
@pytest.mark.parametrize('shape', SHAPES[:3])
def test_packed_kernel_gives_the_fused_conv_at_any_batch(shape):
  """Packed once (for the layer's h x w), served to batches of 1 and more."""
  x, w, _ = _inputs(shape)
  b = jnp.asarray(np.random.default_rng(2).standard_normal(shape[-1]), jnp.float32)
  packed = onednn.pack_kernel(w, shape[1], shape[2])
  assert packed is not None and packed.shape == w.shape and packed.dtype == np.float32
  for batch in (x[:1], jnp.concatenate([x, x])):
    got = jax.jit(onednn.packed_conv3x3_bias_relu)(batch, jnp.asarray(packed), b)
    _assert_close(got, _bias_relu_ref(batch, w, b), f'batch {len(batch)}')


@needs_onednn
def test_bfloat16_packed_kernel_is_near_the_float32_conv():
  x, w, _ = _inputs((2, 6, 9, 32, 64))
  b = jnp.asarray(np.random.default_rng(2).standard_normal(64), jnp.float32)
  packed = onednn.pack_kernel(w, 6, 9, 'bfloat16')
  assert packed is not None and packed.shape == w.shape and packed.dtype == jnp.bfloat16
  got = jax.jit(onednn.packed_conv3x3_bias_relu)(x, jnp.asarray(packed), b)
  assert got.dtype == jnp.float32  # Back in x's dtype.
  want = _bias_relu_ref(x, w, b)
  # bfloat16 keeps 8 bits of mantissa: ~0.4% per product, accumulated in float32.
  np.testing.assert_allclose(got, want, atol=0.03 * float(jnp.abs(want).max()))
  assert float(jnp.abs(got - want).max()) > 0  # It did run in bfloat16.


def test_pack_kernel_is_none_where_it_cannot(monkeypatch):
  x, w, _ = _inputs((1, 5, 7, 8, 16))
  assert onednn.pack_kernel(np.zeros((5, 5, 8, 16), np.float32), 5, 7) is None  # Not 3x3.
  monkeypatch.setattr(onednn, '_state', {'lib': None, 'reason': 'library missing (test)'})
  assert onednn.pack_kernel(w, 5, 7) is None


@needs_onednn
def test_stats_count_calls_and_time():
  x, w, ct = _inputs((2, 5, 7, 8, 16))
  onednn.stats(reset=True)
  # Waited for: jit dispatches asynchronously, and stats() may otherwise read first.
  jax.block_until_ready(_value_and_grads(onednn.conv3x3, x, w, ct))
  rows = {r['op']: r for r in onednn.stats(reset=True) if r['shape'] == (2, 5, 7, 8, 16)}
  assert set(rows) == {'fwd', 'bwd_data', 'bwd_weights'}, rows
  assert all(r['calls'] == 1 and r['conv_ms'] > 0 and r['reorder_ms'] >= 0
             for r in rows.values()), rows
  assert onednn.stats() == []  # Reset after the read.


@pytest.mark.parametrize('case', ['stride2', '5x5', 'float16', 'dilated'])
def test_other_convs_fall_back(case):
  x, w, _ = _inputs((2, 9, 11, 4, 8))
  strides, kwargs = (1, 1), {}
  if case == 'stride2':
    strides = (2, 2)
  elif case == '5x5':
    w = jnp.asarray(np.random.default_rng(1).standard_normal((5, 5, 4, 8)), jnp.float32)
  elif case == 'float16':
    x, w = x.astype(jnp.float16), w.astype(jnp.float16)
  else:
    kwargs = {'rhs_dilation': (2, 2)}
  ours = _lax_sig(onednn.conv_general_dilated, strides, 'SAME', dimension_numbers=DN, **kwargs)
  ref = _lax_sig(lax.conv_general_dilated, strides, 'SAME', dimension_numbers=DN, **kwargs)
  assert not _uses_onednn(ours, x, w)
  tol = 1e-2 if case == 'float16' else 1e-4
  np.testing.assert_allclose(np.asarray(jax.jit(ours)(x, w), np.float32),
                             np.asarray(ref(x, w), np.float32), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize('how', ['argument', 'environment'])
def test_load_failure_is_one_line(how, monkeypatch, tmp_path):
  missing = tmp_path / 'no_such_conv_ffi.so'
  if how == 'argument':
    lib, why = onednn.load_library(missing)
  else:
    monkeypatch.setenv(onednn.LIB_ENV, str(missing))
    lib, why = onednn.load_library()
  assert lib is None
  assert why and '\n' not in why and 'no_such_conv_ffi.so' in why


def test_unavailable_library_falls_back_with_one_log_line(monkeypatch, caplog):
  monkeypatch.setattr(onednn, '_state', {'lib': None, 'reason': 'library missing (test)'})
  x, w, ct = _inputs((2, 5, 7, 4, 8))
  fn = _lax_sig(onednn.conv_general_dilated, (1, 1), 'SAME', dimension_numbers=DN)
  with caplog.at_level(logging.WARNING, logger=onednn.__name__):
    assert not onednn.available()
    assert not _uses_onednn(fn, x, w)
    got = _value_and_grads(fn, x, w, ct)
  lines = [r.getMessage() for r in caplog.records]
  assert len(lines) == 1 and '\n' not in lines[0] and 'library missing (test)' in lines[0]
  for name, g, r in zip(('y', 'dx', 'dw'), got, _value_and_grads(_ref, x, w, ct)):
    _assert_close(g, r, name)


def test_multi_device_batch_falls_back():
  """A batch sharded over 2 devices takes the pure-JAX path (own process:
  the device count is fixed at JAX's start)."""
  code = textwrap.dedent('''
      import jax, jax.numpy as jnp
      from jax.sharding import NamedSharding, PartitionSpec as P
      from smsdd_jax import onednn
      mesh = jax.make_mesh((2,), ('data',))
      x = jax.device_put(jnp.ones((2, 5, 5, 3)), NamedSharding(mesh, P('data')))
      w = jax.device_put(jnp.ones((3, 3, 3, 4)), NamedSharding(mesh, P()))
      f = lambda x, w: onednn.conv_general_dilated(x, w, (1, 1), 'SAME',
                                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      ref = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                         dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
      print('smsdd_onednn' in str(jax.make_jaxpr(f)(x, w)), float(jnp.abs(jax.jit(f)(x, w) - ref).max()))
  ''')
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=2', 'JAX_PLATFORMS': 'cpu',
         'PYTHONPATH': str(REPO)}
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120, check=True).stdout.split()
  assert out == ['False', '0.0']
