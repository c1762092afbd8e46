"""A ResNet-18-style tower (He et al., 2016): `config.model.backbone='resnet18'`.

A 7x7 / 2 stem conv and a 3x3 / 2 max-pool, then four stages of two basic
blocks (two 3x3 convs and a shortcut; a 1x1 / 2 conv where the first block
of a stage halves the size or changes the width), 64, 128, 256, 512 channels
scaled by config.model.width_mult. Every conv is followed by batch norm: the
blocks need it, so the tower has it whatever config.model.batch_norm says.
Padding is torchvision's (k // 2), so each stride-2 layer keeps ceil(size / 2):
a 110x230 ROI ends at 4x8.

Layer names follow torchvision's state dict with '_' for '.': conv1, bn1,
layer1_0_conv1, layer1_0_bn1, ..., layer2_0_downsample_conv / _bn.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax

from smsdd_jax.backbones import base, layers

STAGES = (64, 128, 256, 512)  # Channels of each stage at width_mult 1.
BLOCKS = 2  # Basic blocks per stage.
STEM = 64


def _pad(kernel: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((kernel // 2, kernel // 2),) * 2


def _half(n: int) -> int:
  return -(-n // 2)


class ResNet18(base.Backbone):
  name = 'resnet18'
  title = 'ResNet-18'
  # The stem's output before its pool, then each stage's.
  taps = {'stem': 2, 'layer1': 4, 'layer2': 8, 'layer3': 16, 'layer4': 32}
  default_tap = 'layer4'  # The last block before the head, as Grad-CAM's paper does.
  always_batch_norm = True

  def _block(self, net, x: jax.Array, prefix: str, cout: int, stride: int,
             train: bool) -> jax.Array:
    y = layers.conv_layer(net, cout, 3, strides=stride, padding=_pad(3), use_bias=False,
                          name=f'{prefix}_conv1')(x)
    y = jax.nn.relu(layers.batch_norm(net, name=f'{prefix}_bn1', train=train)(y))
    y = layers.conv_layer(net, cout, 3, padding=_pad(3), use_bias=False,
                          name=f'{prefix}_conv2')(y)
    y = layers.batch_norm(net, name=f'{prefix}_bn2', train=train)(y)
    if stride != 1 or x.shape[-1] != cout:
      x = layers.conv_layer(net, cout, 1, strides=stride, padding='VALID', use_bias=False,
                            name=f'{prefix}_downsample_conv')(x)
      x = layers.batch_norm(net, name=f'{prefix}_downsample_bn', train=train)(x)
    return jax.nn.relu(x + y)

  def tower(self, net, x: jax.Array, *, train: bool) -> jax.Array:
    x = layers.conv_layer(net, base.scaled(STEM, net.width_mult), 7, strides=2,
                          padding=_pad(7), use_bias=False, name='conv1')(x)
    x = jax.nn.relu(layers.batch_norm(net, name='bn1', train=train)(x))
    x = nn.max_pool(net.tap('stem', x), (3, 3), strides=(2, 2), padding=_pad(3))
    for s, c in enumerate(STAGES, 1):
      for b in range(BLOCKS):
        x = self._block(net, x, f'layer{s}_{b}', base.scaled(c, net.width_mult),
                        2 if s > 1 and b == 0 else 1, train)
      x = net.tap(f'layer{s}', x)
    return x

  def convs(self, image_shape: Sequence[int], width_mult: float) -> list[base.ConvSpec]:
    h, w = image_shape[0], image_shape[1]
    cin = base.scaled(STEM, width_mult)
    specs = [base.ConvSpec('conv1', h, w, 3, cin, 7, 2)]
    h, w = _half(_half(h)), _half(_half(w))  # The stem conv, then its pool.
    for s, c in enumerate(STAGES, 1):
      cout = base.scaled(c, width_mult)
      for b in range(BLOCKS):
        stride, prefix = (2 if s > 1 and b == 0 else 1), f'layer{s}_{b}'
        specs.append(base.ConvSpec(f'{prefix}_conv1', h, w, cin, cout, 3, stride))
        if stride != 1 or cin != cout:
          specs.append(base.ConvSpec(f'{prefix}_downsample_conv', h, w, cin, cout, 1, stride))
        if stride == 2:
          h, w = _half(h), _half(w)
        specs.append(base.ConvSpec(f'{prefix}_conv2', h, w, cout, cout, 3, 1))
        cin = cout
    return specs

  def feature_shape(self, image_shape: Sequence[int], width_mult: float) -> tuple[int, int, int]:
    h, w = image_shape[0], image_shape[1]
    need = max(self.taps.values())
    if h < need or w < need:
      raise ValueError(f'image size {image_shape[:2]} is too small for ResNet-18: needs '
                       f'at least {need}x{need} (its last stage has stride {need})')
    for _ in range(len(STAGES) + 1):  # The stem conv, its pool, stages 2-4.
      h, w = _half(h), _half(w)
    return h, w, base.scaled(STAGES[-1], width_mult)
