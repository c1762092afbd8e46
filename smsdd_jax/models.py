"""The SMSDD network: a conv tower shared by both images of a pair.

The paper's backbone is VGG16 without its fully connected layers (13 conv 3x3 +
ReLU, 5 max-pools) followed by one Dense layer with two outputs;
`config.model.backbone` picks another tower from smsdd_jax/backbones/ (which
states everything outside the tower needs: taps, sizes, names). A Siamese pair
is run as ONE concatenated batch through ONE tower, so the two branches share
their weights by construction rather than by bookkeeping.

Everything outside this file sees pure functions over pytrees:

  model = models.create(config.model)
  params, model_state = models.init(model, rng, image_shape=(110, 230, 3))
  logits, out = models.forward(params, images, model=model)

`out['embedding']` is the vector the contrastive loss compares.

The parameter tree holds the tower's layers under the backbone's names
(VGG16's as Keras writes them: block1_conv1 ... block5_conv3, block<b>_conv<c>_bn
for their batch norms) and 'predictions' for the classifier. Runs saved with
Flax's automatic names (Conv_0 .. Conv_12, BatchNorm_i, Dense_0) are renamed
on restore (`rename_legacy`, called by checkpointing.Checkpointer.restore).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from smsdd_jax import backbones, onednn
from smsdd_jax.backbones import vgg16
# The conv layers' pieces, where code written before the registry finds them.
from smsdd_jax.backbones.layers import (CONV_IMPLS, CONV_INIT, FUSED_IMPLS,  # noqa: F401
                                        ONEDNN_IMPLS, ConvBiasReLU)

HEAD_NAME = 'predictions'  # Keras' name for VGG16's classifier layer.
# Flax's automatic names (runs saved before the layers were named) -> ours.
LEGACY_NAMES = {**backbones.legacy_names(), 'Dense_0': HEAD_NAME}
EMBEDDINGS = ('flatten', 'flatten_l2', 'gap', 'gap_l2')
# What the classifier reads from the last feature map: the paper's flattened
# map ('flatten': one weight per position, so a defect is scored by where it
# sits), or its global average / max ('gap' | 'gmp': the same weights at every
# position, as in ResNet-style heads; 'gmp' keeps the strongest local response).
HEADS = ('flatten', 'gap', 'gmp')
TAP_COLLECTIONS = ('intermediates', 'perturbations')  # Of SiameseNet.tap.
POOLED_COLLECTIONS = ('pooled', 'pooled_perturbations')  # Of SiameseNet.pooled_tap.

# VGG16's constants under their names before the registry (backbones.vgg16).
VGG16_LAYERS, NUM_POOLS, CONV_NAMES = vgg16.LAYERS, vgg16.NUM_POOLS, vgg16.CONV_NAMES
BN_SUFFIX, channels = vgg16.BN_SUFFIX, vgg16.channels
TAPS = tuple(vgg16.VGG16.taps)  # Block outputs (before each pool) apply() can return.

# A tiny classifier init starts the logits near zero (loss ~= ln 2): with
# 10752 input features a default LeCun init gives logits of O(1) and large
# first gradients, which with lr 0.01 and momentum 0.9 was what diverged.
DENSE_INIT = nn.initializers.normal(stddev=0.01)


def conv_shapes(image_shape: Sequence[int], width_mult: float,
                backbone: str = 'vgg16') -> list[tuple[int, int, int, int]]:
  """(H, W, C_in, C_out) of each 3x3 / stride 1 conv of the tower, in order."""
  return backbones.get(backbone).conv3x3_shapes(image_shape, width_mult)


def feature_shape(image_shape: Sequence[int], width_mult: float,
                  backbone: str = 'vgg16') -> tuple[int, int, int]:
  """Shape (h, w, c) of the tower's last feature map; ValueError where the
  image is too small for it."""
  return backbones.get(backbone).feature_shape(image_shape, width_mult)


class SiameseNet(nn.Module):
  """The backbone's conv tower + Dense(num_classes). Returns (logits, out).

  No field has a default: `create(config.model)` fills every one from the
  config, so configs/default.py is the one place a default lives."""
  backbone: str  # A key of backbones.REGISTRY.
  width_mult: float
  batch_norm: bool  # True wherever the tower has batch norm (backbones' always_batch_norm).
  num_classes: int
  embedding: str
  head: str  # A key of HEADS.
  dtype: Any
  conv_impl: str  # A key of CONV_IMPLS (resolved from the config's 'auto' by create).
  # Flax's automatic names (Conv_i, BatchNorm_i, Dense_0) instead of VGG16's:
  # `init` draws under them, because Flax derives each layer's init key from
  # its name. Under VGG16's names the same seeds drew other weights, which
  # learned worse: launch/fit_check.py's held-out accuracy at 60 steps fell
  # from 0.92-0.99 to 0.63-0.84 on seeds 0-5, while the old draws renamed
  # trained as before (0.97). Drawing under the old names keeps every seed's
  # weights those of the runs made before the rename. (A tower without
  # legacy names draws under its own.)
  legacy_names: bool = False
  # Conv layers whose kernels in `params` are oneDNN-packed (inference only;
  # `packed_for_inference` makes both).
  packed: tuple[str, ...] = ()

  def tap(self, name: str, x: jax.Array) -> jax.Array:
    """A tower's Grad-CAM tap (its backbone's `taps`), for maps.py:
    sown into 'intermediates' and given a zero 'perturbations' entry whose
    gradient is d(output)/d(activation). Both are no-ops unless apply() is
    asked for those collections, so training and scoring are unchanged."""
    self.sow('intermediates', name, x)
    return self.perturb(name, x)

  def pooled_tap(self, name: str, x: jax.Array) -> jax.Array:
    """The output of the 2x2 max-pool after tap `name` (its backbone's
    `pooled_taps`), as `tap` but in POOLED_COLLECTIONS: maps.py reads a
    tap's gradient x activation from the pool's side, where the gradient is
    a quarter the size. No-ops unless apply() is asked for them."""
    self.sow(POOLED_COLLECTIONS[0], name, x)
    return self.perturb(name, x, collection=POOLED_COLLECTIONS[1])

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False):
    x = backbones.get(self.backbone).tower(self, images.astype(self.dtype), train=train)
    features = _head_features(x, self.head)
    logits = nn.Dense(self.num_classes, kernel_init=DENSE_INIT,
                      dtype=self.dtype,
                      name='Dense_0' if self.legacy_names else HEAD_NAME)(features)
    out = {'embedding': _embedding(x, self.embedding).astype(jnp.float32)}
    return logits.astype(jnp.float32), out


SiameseVGG16 = SiameseNet  # Its name when VGG16 was the only tower.


def _head_features(feature_map: jax.Array, head: str) -> jax.Array:
  """The classifier's input vector from the last feature map (see HEADS)."""
  if head == 'gap':
    return feature_map.mean(axis=(1, 2))
  if head == 'gmp':
    return feature_map.max(axis=(1, 2))
  return feature_map.reshape((feature_map.shape[0], -1))


def _embedding(feature_map: jax.Array, kind: str) -> jax.Array:
  """The vector the contrastive loss compares, from the last feature map."""
  # 'flatten' is the paper's choice: the flattened tower output (3 x 7 x 512).
  emb = _head_features(feature_map, 'gap' if kind.startswith('gap') else 'flatten')
  if kind.endswith('_l2'):
    # L2-normalised so distances live in [0, 2] and a margin of O(1) bites;
    # eps keeps the gradient finite for an all-zero (dead ReLU) feature map.
    emb = emb * jax.lax.rsqrt(jnp.sum(emb.astype(jnp.float32) ** 2, -1,
                                      keepdims=True) + 1e-12).astype(emb.dtype)
  return emb


def resolve_conv_impl(conv_impl: str, platform: str | None = None,
                      onednn_built: bool | None = None) -> str:
  """'auto' -> the measured fastest per platform (docs/performance.md):
  on CPU oneDNN's primitives through the FFI, each conv + bias + ReLU as one
  (the fused path took the step's time outside the convolutions from ~280
  to ~60-100 ms at 8 pairs), where the library was built, else conv.py's
  hand-written backward; on GPU/TPU XLA's
  own convolutions (cuDNN), which either would replace with slower ones."""
  if conv_impl != 'auto':
    return conv_impl
  if (platform or jax.default_backend()) != 'cpu':
    return 'xla'
  built = onednn.available() if onednn_built is None else onednn_built
  return 'onednn_fused' if built else 'custom'


def create(model_config: ml_collections.ConfigDict) -> SiameseNet:
  """The Flax module described by `config.model`."""
  backbone = backbones.get(model_config.backbone)
  if model_config.embedding not in EMBEDDINGS:
    raise ValueError(f'config.model.embedding={model_config.embedding!r}: '
                     f'expected one of {EMBEDDINGS}')
  if model_config.head not in HEADS:
    raise ValueError(f'config.model.head={model_config.head!r}: expected one of {HEADS}')
  conv_impl = resolve_conv_impl(model_config.conv_impl)
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'config.model.conv_impl={model_config.conv_impl!r}: '
                     f"expected 'auto' or one of {tuple(CONV_IMPLS)}")
  if model_config.width_mult <= 0:
    raise ValueError(f'config.model.width_mult={model_config.width_mult}: must be > 0')
  return SiameseNet(backbone=backbone.name,
                    width_mult=model_config.width_mult,
                    batch_norm=model_config.batch_norm or backbone.always_batch_norm,
                    num_classes=model_config.num_classes,
                    embedding=model_config.embedding,
                    head=model_config.head,
                    dtype=jnp.dtype(model_config.dtype),
                    conv_impl=conv_impl)


def init(model: SiameseNet, rng: jax.Array, image_shape: Sequence[int]):
  """Returns (params, model_state); model_state holds BatchNorm statistics."""
  # Fail early on a too-small image.
  backbones.get(model.backbone).feature_shape(image_shape, model.width_mult)
  # Drawn under Flax's automatic names, then renamed (see legacy_names).
  variables = jax.jit(model.clone(legacy_names=True).init)(
      rng, jnp.zeros((1, *image_shape), jnp.float32))
  variables = rename_legacy(dict(variables))
  params = variables['params']
  # BatchNorm statistics only: init also fills tap's collections.
  model_state = {k: v for k, v in variables.items()
                 if k not in ('params',) + TAP_COLLECTIONS + POOLED_COLLECTIONS}
  return params, model_state


def folded_batch_norm(model: SiameseNet, params, model_state):
  """(model, params, model_state) for inference with each conv's batch norm
  folded into it: kernel * s and bias - mean * s, s = scale / sqrt(var + eps),
  the running statistics (what an eval-mode forward computes, to float32
  rounding), so a tower of conv + batch norm + ReLU runs as fused conv +
  bias + ReLU where the conv_impl has them (models.packed_for_inference
  then packs them; maps take their gradients). The same three where the
  model has no batch norm or its tower is not conv -> batch norm -> ReLU
  throughout (a ResNet's: `Backbone.always_batch_norm`). Not for training."""
  bb = backbones.get(model.backbone)
  if not model.batch_norm or bb.always_batch_norm or model.legacy_names or not model_state:
    return model, params, model_state
  stats, folded = model_state['batch_stats'], dict(params)
  eps = 1e-5  # flax.linen.BatchNorm's default (layers.batch_norm keeps it).
  for conv in bb.pretrained.conv_names:
    name = bb.pretrained.bn_name(conv)
    bn, bn_stats = folded.pop(name), stats[name]
    s = bn['scale'] / jnp.sqrt(bn_stats['var'] + eps)
    folded[conv] = {'kernel': params[conv]['kernel'] * s,
                    'bias': bn['bias'] - bn_stats['mean'] * s}
  state = {k: v for k, v in model_state.items() if k != 'batch_stats'}
  return model.clone(batch_norm=False), folded, state


PRECISIONS = ('float32', 'bfloat16')  # Of packed_for_inference's convolutions.


def packed_for_inference(model: SiameseNet, params, image_shape: Sequence[int],
                         precision: str = 'float32'):
  """(model, params) for scoring only, with each conv kernel that oneDNN can
  take packed in its layout (onednn.pack_kernel) so that no forward reorders
  them again (~12% of a batch-1 forward on one core). precision 'bfloat16'
  runs the tower in bfloat16 (float32 accumulation; AVX512-BF16 doubles the
  multiply rate; the scores move: docs/performance.md), a layer whose
  bfloat16 layout cannot be packed in float32. The same (model, params)
  where the model does not run oneDNN's fused convs (then precision is not
  applied). The result is not differentiable and not for saving: keep the
  originals for gradients (maps), checkpoints and exports."""
  if precision not in PRECISIONS:
    raise ValueError(f'precision={precision!r}: expected one of {PRECISIONS}')
  if (model.conv_impl != 'onednn_fused' or model.batch_norm or model.packed
      or model.dtype != jnp.float32 or not onednn.available()):
    return model, params
  packed, params = [], dict(params)
  for spec in backbones.get(model.backbone).convs(image_shape, model.width_mult):
    if (spec.kernel, spec.stride) != (3, 1):
      continue  # oneDNN's fused kernels take 3x3 / stride 1 only.
    name, h, w = spec.name, spec.h, spec.w
    kernel = onednn.pack_kernel(params[name]['kernel'], h, w, precision)
    if kernel is None and precision != 'float32':
      kernel = onednn.pack_kernel(params[name]['kernel'], h, w)
    if kernel is not None:
      params[name] = {**params[name], 'kernel': jnp.asarray(kernel)}
      packed.append(name)
  return model.clone(packed=tuple(packed), dtype=jnp.dtype(precision)), params


def forward(params, images: jax.Array, *, model: SiameseNet, model_state=None,
            train: bool = False):
  """Pure forward pass: (logits, out). In training with BatchNorm,
  `out['model_state']` carries the updated statistics."""
  variables = {'params': params, **(model_state or {})}
  if train and model.batch_norm:
    (logits, out), new_state = model.apply(variables, images, train=True,
                                           mutable=['batch_stats'])
    return logits, {**out, 'model_state': new_state}
  logits, out = model.apply(variables, images, train=train)
  return logits, {**out, 'model_state': model_state or {}}


def siamese_forward(params, images_a: jax.Array, images_b: jax.Array, *,
                    model: SiameseNet, model_state=None, train: bool = False):
  """Both images of every pair through the one tower as a single batch.

  Returns (logits, out): logits is (2N, classes) with the a-images first;
  out has 'emb_a', 'emb_b' (N, d) and 'model_state'.
  """
  n = images_a.shape[0]
  logits, out = forward(params, jnp.concatenate([images_a, images_b]),
                        model=model, model_state=model_state, train=train)
  emb = out['embedding']
  return logits, {'emb_a': emb[:n], 'emb_b': emb[n:],
                  'model_state': out['model_state']}


def uses_legacy_names(tree) -> bool:
  """Whether a (nested dict) tree holds Flax's automatic layer names anywhere."""
  if not isinstance(tree, dict):
    return False
  return any(k in LEGACY_NAMES or uses_legacy_names(v) for k, v in tree.items())


def rename_legacy(tree, *, inverse: bool = False):
  """The nested dict `tree` (params, model_state, an optimizer state's
  params-shaped parts: every level) with Flax's automatic layer names
  replaced by the backbones' (`LEGACY_NAMES`); `inverse` maps ours back."""
  names = {v: k for k, v in LEGACY_NAMES.items()} if inverse else LEGACY_NAMES
  if not isinstance(tree, dict):
    return tree
  return {names.get(k, k): rename_legacy(v, inverse=inverse) for k, v in tree.items()}


def count_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
