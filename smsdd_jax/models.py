"""The SMSDD network: a VGG16 conv tower shared by both images of a pair.

The paper's backbone is VGG16 without its fully connected layers (13 conv 3x3 +
ReLU, 5 max-pools) followed by one Dense layer with two outputs. A Siamese pair
is run as ONE concatenated batch through ONE tower, so the two branches share
their weights by construction rather than by bookkeeping.

Everything outside this file sees pure functions over pytrees:

  model = models.create(config.model)
  params, model_state = models.init(model, rng, image_shape=(110, 230, 3))
  logits, out = models.forward(params, images, model=model)

`out['embedding']` is the vector the contrastive loss compares.

The parameter tree uses VGG16's own layer names, as Keras writes them:
block1_conv1 ... block5_conv3 (each block's 3x3 convs), block<b>_conv<c>_bn
for their batch norms, and 'predictions' for the classifier, so the tree
sorts in network order. Runs saved with Flax's automatic names (Conv_0 ..
Conv_12, BatchNorm_i, Dense_0) are renamed on restore (`rename_legacy`,
called by checkpointing.Checkpointer.restore).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from smsdd_jax import conv, onednn, winograd  # onednn loads its library on first use.

# Channels per conv layer; 'M' is a 2x2 max-pool with stride 2 (VGG16, config D).
VGG16_LAYERS: tuple[Any, ...] = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
                                 512, 512, 512, 'M', 512, 512, 512, 'M')
NUM_POOLS = sum(1 for v in VGG16_LAYERS if v == 'M')


def _conv_names() -> tuple[str, ...]:
  names, block, conv = [], 1, 1
  for v in VGG16_LAYERS:
    if v == 'M':
      block, conv = block + 1, 1
    else:
      names.append(f'block{block}_conv{conv}')
      conv += 1
  return tuple(names)


CONV_NAMES = _conv_names()  # block1_conv1 ... block5_conv3, Keras' VGG16 names.
HEAD_NAME = 'predictions'  # Keras' name for VGG16's classifier layer.
BN_SUFFIX = '_bn'  # block1_conv1_bn: the batch norm after block1_conv1.
# Flax's automatic names (runs saved before the layers were named) -> ours.
LEGACY_NAMES = {**{f'Conv_{i}': n for i, n in enumerate(CONV_NAMES)},
                **{f'BatchNorm_{i}': n + BN_SUFFIX for i, n in enumerate(CONV_NAMES)},
                'Dense_0': HEAD_NAME}
EMBEDDINGS = ('flatten', 'flatten_l2', 'gap', 'gap_l2')
# What the classifier reads from the last feature map: the paper's flattened
# map ('flatten': one weight per position, so a defect is scored by where it
# sits), or its global average / max ('gap' | 'gmp': the same weights at every
# position, as in ResNet-style heads; 'gmp' keeps the strongest local response).
HEADS = ('flatten', 'gap', 'gmp')
# Block outputs (before each pool) that apply() can return and differentiate.
TAPS = tuple(f'block{b}' for b in range(1, 6))
TAP_COLLECTIONS = ('intermediates', 'perturbations')
# model.conv_impl -> the conv function nn.Conv calls. Every impl but 'xla'
# also takes conv.py's max-pool (its backward is ~10x XLA:CPU's). 'custom_fused'
# is 'custom' with each conv + bias + ReLU as one custom_vjp (conv.py) where
# there is no batch norm between them; 'onednn' calls oneDNN's convolution
# primitives through XLA's FFI (smsdd_jax/onednn/, built at install; falls
# back to 'custom' with one line where the library is missing); 'onednn_fused'
# is 'onednn' with conv + bias + ReLU as one primitive (post-ops); 'winograd' is
# 'custom' with Winograd F(4,3) / F(2,3) where winograd.pick_plan measured it faster.
CONV_IMPLS = {'xla': jax.lax.conv_general_dilated, 'custom': conv.conv_general_dilated,
              'custom_fused': conv.conv_general_dilated,
              'onednn': onednn.conv_general_dilated,
              'onednn_fused': onednn.conv_general_dilated,
              'winograd': winograd.conv_general_dilated}
# The fused impls' conv + bias + ReLU, one custom_vjp per layer (ConvBiasReLU).
FUSED_IMPLS = {'custom_fused': conv.conv3x3_bias_relu,
               'onednn_fused': onednn.conv3x3_bias_relu}

# The impls whose conv takes a float32 kernel with bfloat16 x (_keep_float32_kernel).
ONEDNN_IMPLS = ('onednn', 'onednn_fused')

# Kaiming-normal with fan_out, as torchvision initialises VGG. It keeps the
# ReLU activations' variance roughly constant through 13 layers, so the
# flattened features start at O(1) instead of vanishing (Glorot) or growing.
CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
# A tiny classifier init starts the logits near zero (loss ~= ln 2): with
# 10752 input features a default LeCun init gives logits of O(1) and large
# first gradients, which with lr 0.01 and momentum 0.9 was what diverged.
DENSE_INIT = nn.initializers.normal(stddev=0.01)


def channels(width_mult: float) -> list[Any]:
  """Layer plan with each conv's channel count scaled by `width_mult`."""
  return [v if v == 'M' else max(1, int(v * width_mult)) for v in VGG16_LAYERS]


def conv_shapes(image_shape: Sequence[int], width_mult: float) -> list[tuple[int, int, int, int]]:
  """(H, W, C_in, C_out) of each 3x3 conv of the tower, in order (floor
  division per pool, as the model's)."""
  (h, w), cin, shapes = tuple(image_shape[:2]), 3, []
  for v in channels(width_mult):
    if v == 'M':
      h, w = h // 2, w // 2
      continue
    shapes.append((h, w, cin, v))
    cin = v
  return shapes


def feature_shape(image_shape: Sequence[int], width_mult: float) -> tuple[int, int, int]:
  """Shape (h, w, c) of the tower's last feature map; floor division per pool."""
  h, w = image_shape[0], image_shape[1]
  for _ in range(NUM_POOLS):
    h, w = h // 2, w // 2
  if h < 1 or w < 1:
    raise ValueError(
        f'image size {image_shape[:2]} is too small for VGG16: needs at least '
        f'{2 ** NUM_POOLS}x{2 ** NUM_POOLS} for {NUM_POOLS} max-pools')
  return h, w, channels(width_mult)[-2]


class SiameseVGG16(nn.Module):
  """VGG16 conv tower + Dense(num_classes). Returns (logits, out).

  No field has a default: `create(config.model)` fills every one from the
  config, so configs/default.py is the one place a default lives."""
  width_mult: float
  batch_norm: bool
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
  # weights those of the runs made before the rename.
  legacy_names: bool = False
  # Conv layers whose kernels in `params` are oneDNN-packed (inference only;
  # `packed_for_inference` makes both).
  packed: tuple[str, ...] = ()

  def _names(self, i: int) -> tuple[str, str]:
    """(conv, batch norm) names of the i-th conv layer."""
    if self.legacy_names:
      return f'Conv_{i}', f'BatchNorm_{i}'
    return CONV_NAMES[i], CONV_NAMES[i] + BN_SUFFIX

  def _tap(self, name: str, x: jax.Array) -> jax.Array:
    """Each block's output before its pool (TAPS), for maps.py's Grad-CAM:
    sown into 'intermediates' and given a zero 'perturbations' entry whose
    gradient is d(output)/d(activation). Both are no-ops unless apply() is
    asked for those collections, so training and scoring are unchanged."""
    self.sow('intermediates', name, x)
    return self.perturb(name, x)

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False):
    x = images.astype(self.dtype)
    fused = self.conv_impl in FUSED_IMPLS and not self.batch_norm
    i = block = 0
    for v in channels(self.width_mult):
      if v == 'M':
        block += 1
        x = self._tap(f'block{block}', x)
        x = (nn.max_pool(x, (2, 2), strides=(2, 2)) if self.conv_impl == 'xla'
             else conv.max_pool2x2(x))
        continue
      name, bn_name = self._names(i)
      i += 1
      if fused:  # Named as nn.Conv is: checkpoints move between impls.
        x = ConvBiasReLU(v, dtype=self.dtype, impl=FUSED_IMPLS[self.conv_impl],
                         packed=name in self.packed, name=name)(x)
        continue
      x = nn.Conv(v, (3, 3), padding='SAME', use_bias=not self.batch_norm,
                  kernel_init=CONV_INIT, dtype=self.dtype,
                  conv_general_dilated=CONV_IMPLS[self.conv_impl],
                  promote_dtype=(_keep_float32_kernel if self.conv_impl in ONEDNN_IMPLS
                                 else nn.dtypes.promote_dtype), name=name)(x)
      if self.batch_norm:
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                         dtype=self.dtype, name=bn_name)(x)
      x = nn.relu(x)
    features = _head_features(x, self.head)
    logits = nn.Dense(self.num_classes, kernel_init=DENSE_INIT,
                      dtype=self.dtype,
                      name='Dense_0' if self.legacy_names else HEAD_NAME)(features)
    out = {'embedding': _embedding(x, self.embedding).astype(jnp.float32)}
    return logits.astype(jnp.float32), out


class ConvBiasReLU(nn.Module):
  """relu(conv3x3(x) + bias) as one custom_vjp (`impl`: a value of
  FUSED_IMPLS), with nn.Conv's parameters (same names, shapes, init), so
  either loads the other's."""
  features: int
  dtype: Any
  impl: Callable = conv.conv3x3_bias_relu
  packed: bool = False  # The kernel is oneDNN-packed (models.packed_for_inference).

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', CONV_INIT, (3, 3, x.shape[-1], self.features), jnp.float32)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    if self.packed:  # Computed in the packed kernel's own dtype.
      return onednn.packed_conv3x3_bias_relu(x, kernel, bias)
    if self.impl is onednn.conv3x3_bias_relu:
      # The float32 master weights go in as they are: its bfloat16 kernels cast
      # them in the reorder they run anyway and return float32 gradients.
      return self.impl(x, kernel, bias)
    return self.impl(x, kernel.astype(self.dtype), bias.astype(self.dtype))


def _keep_float32_kernel(inputs, kernel, bias, dtype=None, inexact=True):
  """nn.Conv's promote_dtype for the oneDNN impls: inputs and bias cast to
  dtype as flax does, the kernel left float32. In bfloat16 the oneDNN conv
  casts the master weights in the reorder it runs anyway and returns their
  gradient in float32; flax's cast would round that gradient to bfloat16."""
  inputs, _, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=dtype, inexact=inexact)
  return inputs, kernel, bias


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


def create(model_config: ml_collections.ConfigDict) -> SiameseVGG16:
  """The Flax module described by `config.model`."""
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
  return SiameseVGG16(width_mult=model_config.width_mult,
                      batch_norm=model_config.batch_norm,
                      num_classes=model_config.num_classes,
                      embedding=model_config.embedding,
                      head=model_config.head,
                      dtype=jnp.dtype(model_config.dtype),
                      conv_impl=conv_impl)


def init(model: SiameseVGG16, rng: jax.Array, image_shape: Sequence[int]):
  """Returns (params, model_state); model_state holds BatchNorm statistics."""
  feature_shape(image_shape, model.width_mult)  # Fail early on a too-small image.
  # Drawn under Flax's automatic names, then renamed (see legacy_names).
  variables = jax.jit(model.clone(legacy_names=True).init)(
      rng, jnp.zeros((1, *image_shape), jnp.float32))
  variables = rename_legacy(dict(variables))
  params = variables['params']
  # BatchNorm statistics only: init also fills _tap's collections.
  model_state = {k: v for k, v in variables.items() if k not in ('params',) + TAP_COLLECTIONS}
  return params, model_state


PRECISIONS = ('float32', 'bfloat16')  # Of packed_for_inference's convolutions.


def packed_for_inference(model: SiameseVGG16, params, image_shape: Sequence[int],
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
  for i, (h, w, _, _) in enumerate(conv_shapes(image_shape, model.width_mult)):
    name = model._names(i)[0]  # pylint: disable=protected-access
    kernel = onednn.pack_kernel(params[name]['kernel'], h, w, precision)
    if kernel is None and precision != 'float32':
      kernel = onednn.pack_kernel(params[name]['kernel'], h, w)
    if kernel is not None:
      params[name] = {**params[name], 'kernel': jnp.asarray(kernel)}
      packed.append(name)
  return model.clone(packed=tuple(packed), dtype=jnp.dtype(precision)), params


def forward(params, images: jax.Array, *, model: SiameseVGG16, model_state=None,
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
                    model: SiameseVGG16, model_state=None, train: bool = False):
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
  replaced by VGG16's (`LEGACY_NAMES`); `inverse` maps ours back."""
  names = {v: k for k, v in LEGACY_NAMES.items()} if inverse else LEGACY_NAMES
  if not isinstance(tree, dict):
    return tree
  return {names.get(k, k): rename_legacy(v, inverse=inverse) for k, v in tree.items()}


def count_params(params) -> int:
  return sum(x.size for x in jax.tree_util.tree_leaves(params))
