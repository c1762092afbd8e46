"""The registry of conv towers `config.model.backbone` picks from.

  bb = backbones.get(config.model.backbone)
  bb.feature_shape((110, 230), width_mult)    # (h, w, c); refuses a too-small image
  bb.taps, bb.default_tap                     # Grad-CAM layers and their strides
  bb.convs(image_shape, width_mult)           # every conv: FLOPs, oneDNN packing
  bb.pretrained, bb.legacy_names              # weights files, old checkpoints

  vgg16     the paper's VGG16 (13 conv 3x3, 5 max-pools), the default
  resnet18  a ResNet-18-style tower (basic blocks, batch norm)

A new backbone: subclass base.Backbone in a module here (vgg16.py and
resnet.py are the examples) and add an instance to REGISTRY.
"""
from __future__ import annotations

from smsdd_jax.backbones import base, resnet, vgg16

Backbone = base.Backbone
REGISTRY: dict[str, base.Backbone] = {b.name: b for b in (vgg16.VGG16(), resnet.ResNet18())}


def get(name: str) -> base.Backbone:
  """The backbone `config.model.backbone` names; ValueError naming the field."""
  if name not in REGISTRY:
    raise ValueError(f'config.model.backbone={name!r}: expected one of {tuple(REGISTRY)}')
  return REGISTRY[name]


def legacy_names() -> dict[str, str]:
  """Every backbone's old automatic layer names -> its own (checkpoint renames).
  One map for all: a checkpoint is read before its model is known."""
  names: dict[str, str] = {}
  for b in REGISTRY.values():
    clash = {k for k, v in b.legacy_names.items() if names.get(k, v) != v}
    if clash:
      raise ValueError(f'backbone {b.name}: legacy names {sorted(clash)} rename '
                       'differently in another backbone')
    names.update(b.legacy_names)
  return names
