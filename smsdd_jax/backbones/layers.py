"""The conv layers every tower builds from: the conv implementations
(config.model.conv_impl), the init, and the fused conv + bias + ReLU."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from smsdd_jax import conv, onednn, winograd  # onednn loads its library on first use.

# model.conv_impl -> the conv function nn.Conv calls. Every impl but 'xla'
# also takes conv.py's max-pool (its backward is ~10x XLA:CPU's). 'custom_fused'
# is 'custom' with each conv + bias + ReLU as one custom_vjp (conv.py) where
# there is no batch norm between them; 'onednn' calls oneDNN's convolution
# primitives through XLA's FFI (smsdd_jax/onednn/, built at install; falls
# back to 'custom' with one line where the library is missing); 'onednn_fused'
# is 'onednn' with conv + bias + ReLU as one primitive (post-ops); 'winograd' is
# 'custom' with Winograd F(4,3) / F(2,3) where winograd.pick_plan measured it faster.
# Each takes the 3x3 / stride 1 / SAME convs and hands any other to lax.
CONV_IMPLS = {'xla': jax.lax.conv_general_dilated, 'custom': conv.conv_general_dilated,
              'custom_fused': conv.conv_general_dilated,
              'onednn': onednn.conv_general_dilated,
              'onednn_fused': onednn.conv_general_dilated,
              'winograd': winograd.conv_general_dilated}
# The fused impls' conv + bias + ReLU, one custom_vjp per layer (ConvBiasReLU).
FUSED_IMPLS = {'custom_fused': conv.conv3x3_bias_relu,
               'onednn_fused': onednn.conv3x3_bias_relu}

# The impls whose conv takes a float32 kernel with bfloat16 x (keep_float32_kernel).
ONEDNN_IMPLS = ('onednn', 'onednn_fused')

# Kaiming-normal with fan_out, as torchvision initialises VGG and ResNet. It
# keeps the ReLU activations' variance roughly constant through 13 layers, so
# the flattened features start at O(1) instead of vanishing (Glorot) or growing.
CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def conv_layer(net: Any, features: int, kernel: int, *, name: str, use_bias: bool,
               strides: int = 1, padding: Any = 'SAME') -> nn.Conv:
  """An nn.Conv in `net` (the network whose __call__ is running) with its
  conv_impl's function and dtype handling."""
  return nn.Conv(features, (kernel, kernel), strides=strides, padding=padding,
                 use_bias=use_bias, kernel_init=CONV_INIT, dtype=net.dtype,
                 conv_general_dilated=CONV_IMPLS[net.conv_impl],
                 promote_dtype=(keep_float32_kernel if net.conv_impl in ONEDNN_IMPLS
                                else nn.dtypes.promote_dtype), name=name)


def batch_norm(net: Any, *, name: str, train: bool) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=net.dtype,
                      name=name)


def max_pool2x2(net: Any, x: jax.Array) -> jax.Array:
  """2x2 / stride 2 VALID pool: conv.py's (a faster backward) but under 'xla'."""
  return (nn.max_pool(x, (2, 2), strides=(2, 2)) if net.conv_impl == 'xla'
          else conv.max_pool2x2(x))


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


def keep_float32_kernel(inputs, kernel, bias, dtype=None, inexact=True):
  """nn.Conv's promote_dtype for the oneDNN impls: inputs and bias cast to
  dtype as flax does, the kernel left float32. In bfloat16 the oneDNN conv
  casts the master weights in the reorder it runs anyway and returns their
  gradient in float32; flax's cast would round that gradient to bfloat16."""
  inputs, _, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=dtype, inexact=inexact)
  return inputs, kernel, bias
