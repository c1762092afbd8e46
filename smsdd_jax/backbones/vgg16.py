"""VGG16's conv tower (config D without its fully connected layers): the
paper's backbone and the default, `config.model.backbone='vgg16'`.

13 conv 3x3 + ReLU (each with batch norm where config.model.batch_norm),
5 max-pools. Layers carry Keras' VGG16 names: block1_conv1 ... block5_conv3,
block<b>_conv<c>_bn for their batch norms, so the tree sorts in network order.
"""
from __future__ import annotations

from typing import Any, Sequence

import jax

from smsdd_jax.backbones import base, layers

# Channels per conv layer; 'M' is a 2x2 max-pool with stride 2 (VGG16, config D).
LAYERS: tuple[Any, ...] = (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M',
                           512, 512, 512, 'M', 512, 512, 512, 'M')
NUM_POOLS = sum(1 for v in LAYERS if v == 'M')
BN_SUFFIX = '_bn'  # block1_conv1_bn: the batch norm after block1_conv1.


def _conv_names() -> tuple[str, ...]:
  names, block, conv = [], 1, 1
  for v in LAYERS:
    if v == 'M':
      block, conv = block + 1, 1
    else:
      names.append(f'block{block}_conv{conv}')
      conv += 1
  return tuple(names)


CONV_NAMES = _conv_names()  # block1_conv1 ... block5_conv3, Keras' VGG16 names.


def channels(width_mult: float) -> list[Any]:
  """Layer plan with each conv's channel count scaled by `width_mult`."""
  return [v if v == 'M' else base.scaled(v, width_mult) for v in LAYERS]


def _torch_positions(batch_norm: bool) -> tuple[int, ...]:
  """torchvision's `features` numbering: conv[, bn], relu per conv; one per pool."""
  positions, n = [], 0
  for v in LAYERS:
    if v != 'M':
      positions.append(n)
    n += 1 if v == 'M' else (3 if batch_norm else 2)
  return tuple(positions)


class VGG16(base.Backbone):
  name = 'vgg16'
  title = 'VGG16'
  # Each block's output before its pool: block b has been pooled b - 1 times.
  taps = {f'block{b}': 2 ** (b - 1) for b in range(1, NUM_POOLS + 1)}
  # Grad-CAM at block5 localised best on magnetic_tile (maps.py).
  default_tap = 'block5'
  pooled_taps = tuple(taps)  # Each block ends with its max-pool.
  legacy_names = {**{f'Conv_{i}': n for i, n in enumerate(CONV_NAMES)},
                  **{f'BatchNorm_{i}': n + BN_SUFFIX for i, n in enumerate(CONV_NAMES)}}
  pretrained = base.PretrainedLayout(
      title='VGG16', conv_names=CONV_NAMES,
      conv_io=tuple(zip([3] + [v for v in LAYERS if v != 'M'][:-1],
                        [v for v in LAYERS if v != 'M'])),
      torch_positions=_torch_positions, bn_name=lambda conv: conv + BN_SUFFIX)

  def tower(self, net, x: jax.Array, *, train: bool) -> jax.Array:
    fused = net.conv_impl in layers.FUSED_IMPLS and not net.batch_norm
    i = block = 0
    for v in channels(net.width_mult):
      if v == 'M':
        block += 1
        x = net.pooled_tap(f'block{block}',
                           layers.max_pool2x2(net, net.tap(f'block{block}', x)))
        continue
      # Flax's automatic names (see SiameseNet.legacy_names) or VGG16's.
      name, bn_name = ((f'Conv_{i}', f'BatchNorm_{i}') if net.legacy_names
                       else (CONV_NAMES[i], CONV_NAMES[i] + BN_SUFFIX))
      i += 1
      if fused:  # Named as nn.Conv is: checkpoints move between impls.
        x = layers.ConvBiasReLU(v, dtype=net.dtype, impl=layers.FUSED_IMPLS[net.conv_impl],
                                packed=name in net.packed, name=name)(x)
        continue
      x = layers.conv_layer(net, v, 3, use_bias=not net.batch_norm, name=name)(x)
      if net.batch_norm:
        x = layers.batch_norm(net, name=bn_name, train=train)(x)
      x = jax.nn.relu(x)
    return x

  def convs(self, image_shape: Sequence[int], width_mult: float) -> list[base.ConvSpec]:
    """3x3 / stride 1 / SAME each; floor division per pool, as the model's."""
    (h, w), cin, specs = tuple(image_shape[:2]), 3, []
    for v in channels(width_mult):
      if v == 'M':
        h, w = h // 2, w // 2
        continue
      specs.append(base.ConvSpec(CONV_NAMES[len(specs)], h, w, cin, v, 3, 1))
      cin = v
    return specs

  def feature_shape(self, image_shape: Sequence[int], width_mult: float) -> tuple[int, int, int]:
    h, w = image_shape[0], image_shape[1]
    for _ in range(NUM_POOLS):
      h, w = h // 2, w // 2
    if h < 1 or w < 1:
      raise ValueError(
          f'image size {image_shape[:2]} is too small for VGG16: needs at least '
          f'{2 ** NUM_POOLS}x{2 ** NUM_POOLS} for {NUM_POOLS} max-pools')
    return h, w, channels(width_mult)[-2]
