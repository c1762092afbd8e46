"""What a backbone states about itself, for everything outside its tower.

A backbone is the conv tower the Siamese network runs both images through
(models.SiameseNet adds the head). Its tower is built inline in the network's
own compact __call__ (`tower(net, x, train=...)`), so its layers sit at the
top of the params tree under the names the backbone gives them; everything
else (Grad-CAM taps, the size check, FLOP counts, oneDNN packing, pretrained
weights, checkpoint renames) reads the attributes below instead of knowing
one network.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax


class ConvSpec(NamedTuple):
  """One convolution of a tower at a given input size."""
  name: str  # Its layer in the params tree.
  h: int  # Input height and width.
  w: int
  cin: int
  cout: int
  kernel: int  # Square kernel side.
  stride: int

  def macs(self) -> int:
    """Multiply-accumulates for one image: every conv here pads to keep
    ceil(size / stride) outputs (SAME, or torchvision's k // 2)."""
    return -(-self.h // self.stride) * -(-self.w // self.stride) * \
        self.kernel ** 2 * self.cin * self.cout


@dataclasses.dataclass(frozen=True)
class PretrainedLayout:
  """Where an ImageNet weights file's conv layers go (smsdd_jax/pretrained.py)."""
  title: str  # The network the files hold, for messages: 'VGG16'.
  conv_names: tuple[str, ...]  # The tower's conv layers, in the files' order.
  conv_io: tuple[tuple[int, int], ...]  # (in, out) channels of each, at width_mult 1.
  # torchvision's `features.N` index of each conv, without / with batch norm.
  torch_positions: Callable[[bool], tuple[int, ...]]
  bn_name: Callable[[str], str]  # A conv layer's batch norm.


class Backbone:
  """The interface; subclasses fill every attribute and method."""
  name: str = ''  # config.model.backbone.
  title: str = ''  # For messages: 'VGG16'.
  # Grad-CAM taps (maps.py): name -> its stride in input pixels, in network
  # order. `net.tap(name, x)` sows each during the forward.
  taps: dict[str, int] = {}
  default_tap: str = ''  # maps' default layer.
  # The taps a 2x2 / stride 2 max-pool (conv.max_pool2x2) follows, whose
  # output `net.pooled_tap(tap, y)` sows (maps.py reads gradient x
  # activation there from the pool's side).
  pooled_taps: tuple[str, ...] = ()
  # True where the tower is built with batch norm whatever
  # config.model.batch_norm says (it switches it for the others).
  always_batch_norm: bool = False
  # Flax's automatic layer names in runs saved before the layers were named
  # -> this tower's names (checkpointing renames them on restore).
  legacy_names: dict[str, str] = {}
  pretrained: PretrainedLayout | None = None  # None: no weights file fits.

  def tower(self, net: Any, x: jax.Array, *, train: bool) -> jax.Array:
    """The last feature map (N, h, w, c) of images x, built inside `net`'s
    compact __call__ from its fields (width_mult, batch_norm, dtype,
    conv_impl, legacy_names, packed)."""
    raise NotImplementedError

  def convs(self, image_shape: Sequence[int], width_mult: float) -> list[ConvSpec]:
    """Every convolution of the tower, in order."""
    raise NotImplementedError

  def feature_shape(self, image_shape: Sequence[int], width_mult: float) -> tuple[int, int, int]:
    """(h, w, c) of the last feature map; ValueError naming the size where
    the image is too small for the tower."""
    raise NotImplementedError

  def conv_macs(self, image_shape: Sequence[int], width_mult: float) -> int:
    """Multiply-accumulates of the tower's convolutions for one image."""
    return sum(spec.macs() for spec in self.convs(image_shape, width_mult))

  def conv3x3_shapes(self, image_shape: Sequence[int],
                     width_mult: float) -> list[tuple[int, int, int, int]]:
    """(H, W, C_in, C_out) of each 3x3 / stride 1 conv, in order: the ones
    conv.py, winograd.py and oneDNN replace (speed_ab, packing)."""
    return [(s.h, s.w, s.cin, s.cout) for s in self.convs(image_shape, width_mult)
            if s.kernel == 3 and s.stride == 1]


def scaled(channels: int, width_mult: float) -> int:
  """A layer's channel count at `width_mult` (at least one)."""
  return max(1, int(channels * width_mult))
