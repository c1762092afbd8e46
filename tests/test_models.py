"""The VGG16 tower: shapes, shared weights, the paper's size, init health."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from smsdd_jax import models


def tiny(**kw):
  cfg = default.get_config('quick').model
  for k, v in kw.items():
    cfg[k] = v
  return models.create(cfg)


def test_paper_size_tower_shapes_and_param_count():
  model = models.create(default.get_config().model)
  params = jax.eval_shape(lambda: models.init(model, jax.random.PRNGKey(0),
                                              (110, 230, 3))[0])
  # VGG16's own names (Keras'), sorted in network order.
  assert list(params) == sorted(params) == [
      'block1_conv1', 'block1_conv2', 'block2_conv1', 'block2_conv2',
      'block3_conv1', 'block3_conv2', 'block3_conv3', 'block4_conv1', 'block4_conv2',
      'block4_conv3', 'block5_conv1', 'block5_conv2', 'block5_conv3', 'predictions']
  assert models.feature_shape((110, 230), 1.0) == (3, 7, 512)
  assert params['predictions']['kernel'].shape == (3 * 7 * 512, 2)
  # VGG16 conv tower has 14,714,688 parameters; plus the 10752 x 2 + 2 head.
  assert models.count_params(params) == 14_714_688 + 3 * 7 * 512 * 2 + 2


@pytest.mark.parametrize('batch_norm', [False, True])
def test_forward_shapes_and_embedding_norm(batch_norm):
  model = tiny(batch_norm=batch_norm)
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 110, 230, 3))
  logits, out = models.forward(params, x, model=model, model_state=state)
  assert logits.shape == (3, 2)
  emb = out['embedding']
  assert emb.shape == (3, 3 * 7 * models.channels(1 / 16)[-2])
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-4)


def test_siamese_pair_swap_gives_swapped_outputs():
  """One tower, shared weights: (a, b) and (b, a) give the same numbers swapped."""
  model = tiny()
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  a = jax.random.normal(jax.random.PRNGKey(1), (2, 110, 230, 3))
  b = jax.random.normal(jax.random.PRNGKey(2), (2, 110, 230, 3))
  l_ab, o_ab = models.siamese_forward(params, a, b, model=model, model_state=state)
  l_ba, o_ba = models.siamese_forward(params, b, a, model=model, model_state=state)
  np.testing.assert_allclose(l_ab[:2], l_ba[2:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(o_ab['emb_a'], o_ba['emb_b'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(o_ab['emb_b'], o_ba['emb_a'], rtol=1e-5, atol=1e-6)


def test_batch_norm_updates_statistics_in_training_only():
  model = tiny(batch_norm=True)
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 110, 230, 3)) + 3.0
  _, out = models.forward(params, x, model=model, model_state=state, train=True)
  before = jax.tree_util.tree_leaves(state)
  after = jax.tree_util.tree_leaves(out['model_state'])
  assert any(not np.allclose(b, a) for b, a in zip(before, after))
  _, out_eval = models.forward(params, x, model=model, model_state=state, train=False)
  assert out_eval['model_state'] is state


def test_initial_logits_near_zero_and_features_alive():
  """The documented init: logits start near 0 (loss ~ ln 2) and the deep
  ReLU features neither vanish nor explode through 13 layers."""
  model = tiny(width_mult=0.25, embedding='flatten')
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 110, 230, 3), minval=-1, maxval=1)
  logits, out = models.forward(params, x, model=model, model_state=state)
  assert float(jnp.max(jnp.abs(logits))) < 0.5
  rms = float(jnp.sqrt(jnp.mean(out['embedding'] ** 2)))
  assert 1e-2 < rms < 1e2, rms


def test_too_small_image_and_bad_fields_are_refused():
  with pytest.raises(ValueError, match='too small'):
    models.feature_shape((20, 230), 1.0)
  cfg = default.get_config().model
  cfg.embedding = 'pooled'
  with pytest.raises(ValueError, match='config.model.embedding'):
    models.create(cfg)


def test_packed_for_inference_scores_as_the_model_it_packs():
  """Kernels packed for oneDNN (where it runs) give the same logits; layers
  whose packed layout would change size (few channels) stay as they were."""
  config = default.get_config('quick')
  config.model.width_mult = 0.25  # 16-128 channels: oneDNN's blocked layouts.
  model = models.create(config.model)
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  packed_model, packed_params = models.packed_for_inference(model, params, (110, 230))
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 110, 230, 3))
  want = models.forward(params, x, model=model, model_state=state)[0]
  got = models.forward(packed_params, x, model=packed_model, model_state=state)[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if model.conv_impl == 'onednn_fused':
    assert packed_model.packed  # Something was packed (rearranged) ...
    assert any(not np.array_equal(packed_params[n]['kernel'], params[n]['kernel'])
               for n in packed_model.packed)
    # ... in the copy only: the originals still give the same logits.
    np.testing.assert_array_equal(
        models.forward(params, x, model=model, model_state=state)[0], want)
  custom = model.clone(conv_impl='custom')
  assert models.packed_for_inference(custom, params, (110, 230)) == (custom, params)
  bf16_model, bf16_params = models.packed_for_inference(model, params, (110, 230), 'bfloat16')
  got = models.forward(bf16_params, x, model=bf16_model, model_state=state)[0]
  np.testing.assert_allclose(got, want, atol=0.05 * float(jnp.abs(want).max()) + 1e-3)
  with pytest.raises(ValueError, match="precision='int8'"):
    models.packed_for_inference(model, params, (110, 230), 'int8')


def test_folded_batch_norm_gives_the_eval_logits_without_batch_norm():
  """Each conv's batch norm folded into it (running statistics that are not
  the identity's): the eval-mode logits, from fused conv + bias + ReLU."""
  model = tiny(batch_norm=True)
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  keys = iter(jax.random.split(jax.random.PRNGKey(2), 256))
  stats = jax.tree_util.tree_map(
      lambda v: v + 0.5 * jax.random.uniform(next(keys), v.shape), state['batch_stats'])
  state = {**state, 'batch_stats': stats}
  params = jax.tree_util.tree_map(lambda v: v + 0.1 * jax.random.normal(next(keys), v.shape),
                                  params)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 110, 230, 3))
  want = models.forward(params, x, model=model, model_state=state)[0]
  folded, fparams, fstate = models.folded_batch_norm(model, params, state)
  assert not folded.batch_norm and 'batch_stats' not in fstate
  assert not any(k.endswith('_bn') for k in fparams)
  got = models.forward(fparams, x, model=folded, model_state=fstate)[0]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(jnp.abs(want).max()))
  plain = tiny(batch_norm=False)  # Nothing to fold: the same three back.
  assert models.folded_batch_norm(plain, params, {}) == (plain, params, {})
  resnet = tiny(batch_norm=True, backbone='resnet18')
  assert models.folded_batch_norm(resnet, params, state)[0] is resnet


def test_conv_impl_auto_per_platform():
  # Measured: oneDNN through the FFI wins on CPU, then the custom backward
  # where the library was not built; on GPU/TPU cuDNN/XLA's own do.
  assert models.resolve_conv_impl('auto', 'cpu', onednn_built=True) == 'onednn_fused'
  assert models.resolve_conv_impl('auto', 'cpu', onednn_built=False) == 'custom'
  for built in (True, False):
    assert models.resolve_conv_impl('auto', 'gpu', onednn_built=built) == 'xla'
    assert models.resolve_conv_impl('auto', 'tpu', onednn_built=built) == 'xla'
  assert models.resolve_conv_impl('xla', 'cpu') == 'xla'
  config = default.get_config('quick')
  assert config.model.conv_impl == 'auto'
  assert models.create(config.model).conv_impl == models.resolve_conv_impl('auto')
