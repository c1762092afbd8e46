"""bfloat16 training through oneDNN (smsdd_jax/onednn): the bfloat16 kernels
give the float32 path's values within bfloat16's rounding, float32 gradients
for float32 master weights, a finite train step; and where they cannot run,
one line says which path ran instead."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smsdd_jax import conv, onednn

needs_onednn = pytest.mark.skipif(not onednn.available(),
                                  reason=f'oneDNN conv unavailable: {onednn.reason()}')
# A library built before bfloat16 training has none of it (native_bf16 says so).
needs_bf16_library = pytest.mark.skipif(
    not onednn.available() or not hasattr(onednn.load_library()[0], 'SmsddOnednnIsa'),
    reason='no oneDNN conv library with the bfloat16 training kernels')
needs_native_bf16 = pytest.mark.skipif(not onednn.native_bf16()[0],
                                       reason=f'no native bfloat16: {onednn.native_bf16()[1]}')
# (n, h, w, c, k): the first layer's C = 3, a 64 -> 128 layer, odd sizes.
SHAPES = [(2, 7, 9, 3, 16), (1, 5, 7, 64, 128), (3, 6, 11, 8, 16)]
BF16_TARGET = 'smsdd_onednn_conv3x3_bias_relu_fwd_bf16'
DN = ('NHWC', 'HWIO', 'NHWC')


def _inputs(shape, seed=0):
  n, h, w, c, k = shape
  r = np.random.default_rng(seed)
  return (jnp.asarray(r.standard_normal((n, h, w, c)), jnp.float32),
          jnp.asarray(r.standard_normal((3, 3, c, k)) * (2 / (9 * c)) ** 0.5, jnp.float32),
          jnp.asarray(r.standard_normal(k) * 0.1, jnp.float32),
          jnp.asarray(r.standard_normal((n, h, w, k)), jnp.float32))


def _round(a):
  return a.astype(jnp.bfloat16).astype(jnp.float32)


def _assert_bf16_close(got, want, name):
  """Within bfloat16's rounding (8 bits: 2^-8 ~ 0.4%) of the reference's
  largest magnitude, with room for the different summation order."""
  got = np.asarray(jnp.asarray(got, jnp.float32))
  scale = max(float(np.max(np.abs(want))), 1e-6)
  np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * scale, err_msg=name)


@needs_onednn
@needs_native_bf16
@pytest.mark.parametrize('shape', SHAPES)
def test_bf16_kernels_match_the_float32_path(shape):
  """Forward, dx, dw and db of the bfloat16 kernels against the float32
  oneDNN path on the same (bfloat16-rounded) inputs: only the rounding of
  the activations, dy and dx differs. dw and db come back float32."""
  x, w, b, ct = _inputs(shape)

  def loss(x, w, b):
    return jnp.sum(onednn.conv3x3_bias_relu(x, w, b).astype(jnp.float32) * ct)

  xb = x.astype(jnp.bfloat16)
  grads = jax.grad(loss, argnums=(0, 1, 2))
  assert BF16_TARGET in str(jax.make_jaxpr(grads)(xb, w, b))
  y = jax.jit(onednn.conv3x3_bias_relu)(xb, w, b)
  dx, dw, db = jax.jit(grads)(xb, w, b)
  assert y.dtype == dx.dtype == jnp.bfloat16
  assert dw.dtype == db.dtype == jnp.float32  # The master weights' gradients.
  # The reference: float32 throughout (oneDNN's float32 kernels) on the same values.
  want_y = onednn.conv3x3_bias_relu(_round(x), _round(w), b)
  want = jax.grad(lambda x, w, b: jnp.sum(onednn.conv3x3_bias_relu(x, w, b) * _round(ct)),
                  argnums=(0, 1, 2))(_round(x), _round(w), b)
  for name, g, r in zip(('y', 'dx', 'dw', 'db'), (y, dx, dw, db), (want_y, *want)):
    _assert_bf16_close(g, r, name)


@needs_onednn
@needs_native_bf16
def _pair_batch() -> dict:
  """Two 32 x 64 pairs (one different, one same), seeded: the tiny steps' batch."""
  rng = np.random.default_rng(0)
  return {'image_a': rng.standard_normal((2, 32, 64, 3), np.float32),
          'image_b': rng.standard_normal((2, 32, 64, 3), np.float32),
          'label_a': np.array([0, 1], np.int32), 'label_b': np.array([1, 1], np.int32),
          'same': np.array([0, 1], np.float32)}


def test_bf16_train_step_keeps_float32_params_and_logs_its_kernels(caplog, monkeypatch):
  """A tiny-width train step with model.dtype='bfloat16' runs the bfloat16
  kernels (logged, with oneDNN's implementation names), gives a finite loss
  and float32 parameters that moved."""
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import models, step as step_lib  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(onednn._state, 'bf16_impls', {})  # Log as if first seen.
  config = default.get_config()
  config.model.width_mult, config.model.dtype = 0.0625, 'bfloat16'
  config.model.conv_impl = 'onednn_fused'
  config.data.image_size = (32, 64)
  model = models.create(config.model)
  tx = step_lib.make_optimizer(config.optimizer)
  batch = _pair_batch()
  with caplog.at_level(logging.INFO, logger=onednn.__name__):  # init traces the tower too.
    state = step_lib.create_train_state(config, model, tx)
    before = jax.tree_util.tree_map(np.asarray, state.params)
    state, metrics = step_lib.make_train_step(model, tx, config.loss)(state, batch)
  assert np.isfinite(float(metrics['loss']))
  leaves = jax.tree_util.tree_leaves(state.params)
  assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)
  assert any(np.any(np.asarray(a) != b) for a, b in
             zip(leaves, jax.tree_util.tree_leaves(before)))
  line = next(r.getMessage() for r in caplog.records
              if 'bfloat16 training through oneDNN' in r.getMessage())
  assert all(op in line for op in onednn.BF16_OPS) and 'bf16' in line.split(': ', 1)[1]
  assert any(p.startswith('bwd_weights_bias_bf16') for p in onednn.plans())


def test_bf16_without_native_support_says_which_path_ran(caplog, monkeypatch):
  """No native bfloat16 (or no library): XLA:CPU's bfloat16 conv, the same
  values, and one warning line naming that path and why."""
  monkeypatch.setattr(onednn, 'native_bf16', lambda: (False, 'no native bfloat16 (test)'))
  monkeypatch.setitem(onednn._state, 'warned_bf16', False)
  x, w, b, _ = _inputs((2, 5, 7, 4, 8))
  xb = x.astype(jnp.bfloat16)
  with caplog.at_level(logging.WARNING, logger=onednn.__name__):
    y = onednn.conv3x3_bias_relu(xb, w, b)
    onednn.conv3x3_bias_relu(xb, w, b)  # Said once, not per layer.
  lines = [r.getMessage() for r in caplog.records if 'bfloat16 training' in r.getMessage()]
  assert len(lines) == 1 and 'no native bfloat16 (test)' in lines[0] and 'XLA' in lines[0]
  assert 'smsdd_onednn' not in str(jax.make_jaxpr(onednn.conv3x3_bias_relu)(xb, w, b))
  want = conv.conv3x3_bias_relu(xb, w.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))


@needs_bf16_library
def test_native_bf16_needs_the_cpu_flag(monkeypatch):
  """A CPU whose flags lack avx512_bf16 / amx_bf16 is not native, and the
  line says so (with oneDNN's ISA)."""
  monkeypatch.setattr(onednn, '_cpu_flags', lambda: {'avx512f', 'avx512_core'})
  monkeypatch.delitem(onednn._state, 'bf16', raising=False)
  native, why = onednn.native_bf16()
  assert not native and 'no avx512_bf16/amx_bf16 CPU flag' in why and 'oneDNN ISA' in why


def _unfused(x, w):
  return onednn.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=DN)


@needs_onednn
@needs_native_bf16
@pytest.mark.parametrize('w_dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('shape', SHAPES)
def test_unfused_bf16_conv_matches_the_float32_path(shape, w_dtype):
  """The plain conv (batch norm's path) in bfloat16: forward, dx and dw of
  oneDNN's bfloat16 kernels against its float32 ones on the same rounded
  inputs. A float32 (master) w, as models.py passes it, gets a float32 dw
  (not rounded: oneDNN accumulates and returns float32); a bfloat16 w, as
  nn.Conv's own promotion gives it, gets dw in bfloat16, as JAX requires."""
  x, w, _, ct = _inputs(shape)
  xb, w = x.astype(jnp.bfloat16), w.astype(w_dtype)

  def loss(x, w):
    return jnp.sum(_unfused(x, w).astype(jnp.float32) * ct)

  grads = jax.grad(loss, argnums=(0, 1))
  jaxpr = str(jax.make_jaxpr(grads)(xb, w))
  for target in ('fwd_bf16', 'bwd_data_bf16', 'bwd_weights_bf16'):
    assert f'smsdd_onednn_conv3x3_{target}' in jaxpr, target
  y = jax.jit(_unfused)(xb, w)
  dx, dw = jax.jit(grads)(xb, w)
  assert y.dtype == dx.dtype == jnp.bfloat16 and dw.dtype == w_dtype
  want_y = onednn.conv3x3(_round(x), _round(w))
  want = jax.grad(lambda x, w: jnp.sum(onednn.conv3x3(x, w) * _round(ct)),
                  argnums=(0, 1))(_round(x), _round(w))
  for name, g, r in zip(('y', 'dx', 'dw'), (y, dx, dw), (want_y, *want)):
    _assert_bf16_close(g, r, name)
  if w_dtype == jnp.float32:  # Float32 all the way: some entries are not bfloat16 values.
    assert np.any(np.asarray(dw) != np.asarray(_round(dw)))


def test_unfused_bf16_without_native_support_says_which_path_ran(caplog, monkeypatch):
  """The plain conv in bfloat16 where oneDNN's bfloat16 kernels cannot run:
  one line naming XLA and why, and the pure-JAX conv's values (a float32
  w cast to bfloat16 first)."""
  monkeypatch.setattr(onednn, 'native_bf16', lambda: (False, 'no native bfloat16 (test)'))
  monkeypatch.setitem(onednn._state, 'warned_bf16', False)
  x, w, _, _ = _inputs((1, 5, 6, 4, 8))
  xb = x.astype(jnp.bfloat16)
  with caplog.at_level(logging.WARNING, logger=onednn.__name__):
    y = _unfused(xb, w)
    _unfused(xb, w.astype(jnp.bfloat16))  # Said once, not per layer.
  lines = [r.getMessage() for r in caplog.records if 'bfloat16 training' in r.getMessage()]
  assert len(lines) == 1 and 'no native bfloat16 (test)' in lines[0] and 'XLA' in lines[0]
  assert 'smsdd_onednn' not in str(jax.make_jaxpr(_unfused)(xb, w))
  want = conv.conv_general_dilated(xb, w.astype(jnp.bfloat16), (1, 1), 'SAME',
                                   dimension_numbers=DN)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(y, np.float32), np.asarray(want, np.float32))


@needs_onednn
@needs_native_bf16
def test_bf16_learn_step_runs_the_unfused_kernels(caplog, monkeypatch):
  """A tiny-width ':quick,learn' step (batch norm: the plain conv) with
  model.dtype='bfloat16' runs oneDNN's plain bfloat16 kernels (logged),
  gives finite losses, float32 parameters and statistics that moved, and
  the convs' kernel gradients in float32, not rounded to bfloat16."""
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import models, step as step_lib  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(onednn._state, 'bf16_impls', {})  # Log as if first seen.
  config = default.get_config('quick,learn')
  config.model.dtype, config.model.conv_impl = 'bfloat16', 'onednn'
  config.data.image_size = (32, 64)
  assert config.model.batch_norm
  model = models.create(config.model)
  tx = step_lib.make_optimizer(config.optimizer)
  batch = _pair_batch()
  with caplog.at_level(logging.INFO, logger=onednn.__name__):
    state = step_lib.create_train_state(config, model, tx)
    before = jax.tree_util.tree_map(np.asarray, (state.params, state.model_state))

    def logits_sum(params):
      logits, _ = models.siamese_forward(params, batch['image_a'], batch['image_b'],
                                         model=model, model_state=state.model_state,
                                         train=True)
      return jnp.sum(logits)

    grads = jax.jit(jax.grad(logits_sum))(state.params)
    train_step = step_lib.make_train_step(model, tx, config.loss)
    for _ in range(2):  # The warm-up's first rate is 0: the second step moves the weights.
      state, metrics = train_step(state, batch)
  assert np.isfinite(float(metrics['loss']))
  for tree, old in zip((state.params, state.model_state), before):
    leaves = jax.tree_util.tree_leaves(tree)
    assert leaves and all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert any(np.any(np.asarray(a) != b) for a, b in
               zip(leaves, jax.tree_util.tree_leaves(old)))
  kernels = [g for path, g in jax.tree_util.tree_leaves_with_path(grads)
             if 'kernel' in jax.tree_util.keystr(path) and g.ndim == 4]
  assert len(kernels) == 13 and all(g.dtype == jnp.float32 for g in kernels)
  assert any(np.any(np.asarray(g) != np.asarray(_round(g))) for g in kernels)
  line = next(r.getMessage() for r in caplog.records
              if 'bfloat16 training through oneDNN' in r.getMessage())
  assert all(op in line for op in onednn.BF16_CONV_OPS) and 'bf16' in line.split(': ', 1)[1]
  assert any(p.startswith('bwd_weights_bf16') for p in onednn.plans())
  assert not any('not through oneDNN' in r.getMessage() for r in caplog.records)


@needs_onednn
@needs_native_bf16
def test_benchmark_names_the_bf16_kernels():
  """The benchmark's bfloat16 line names oneDNN's implementations, the
  fused path's and the plain conv's."""
  from smsdd_jax import benchmark  # pylint: disable=import-outside-toplevel
  x, w, b, _ = _inputs((1, 5, 7, 8, 16))
  jax.jit(onednn.conv3x3_bias_relu)(x.astype(jnp.bfloat16), w, b)
  jax.jit(_unfused)(x.astype(jnp.bfloat16), w)
  line = benchmark.bf16_path('onednn_fused')
  assert line.startswith('oneDNN bfloat16') and 'fwd_bias_relu_bf16 ' in line
  assert 'fwd_bf16 ' in benchmark.bf16_path('onednn')
  assert 'avx512_core_bf16' in line or 'amx' in line
  assert benchmark.bf16_path('custom').startswith('conv_impl custom: XLA:CPU')
