"""Synthetic raw camera frames of phone screens, served as a TFDS builder.

`SyntheticScreens`, a `tfds.core.GeneratorBasedBuilder` (TFDS name
`synthetic_screens`), renders frames with `synthetic_render` (a phone on a
mat, black or white, defective frames with a scratch, spots, a stain or an
oil drop; see that module) at build time and applies the paper's
preprocessing to each: `smsdd_jax.roi.find_screen` finds the screen's four
corners, `smsdd_jax.roi.rectify` warps it to a 110 x 230 ROI; the ROI is
stored (RGB) together with the true and found corners and their IoU. The
splits come from `splits.stratified_split`, stratified by label and balanced
over defect types. Nothing is downloaded.

The renderer's names (`render_frame`, `frame_plan`, `write_sample_frames`,
`quad_iou`, `Frame`, ...) are re-exported here for existing callers; code
that needs only frames can import `synthetic_render`, which has no
TensorFlow.

Usage:

  import smsdd_jax.datasets.synthetic_screens  # registers the builder
  builder = tfds.builder('synthetic_screens/small', data_dir=tmp)
  builder.download_and_prepare()
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds

from smsdd_jax import preprocess
from smsdd_jax.datasets import splits
# Re-exported: callers import the renderer's names from this module.
from smsdd_jax.datasets.synthetic_render import (  # noqa: F401  pylint: disable=unused-import
    DEFECT_KINDS, DEFECT_TYPES, LABEL_NAMES, PHONES, ROI_SIZE, Frame, frame_plan,
    quad_iou, render_frame, write_sample_frames)

log = logging.getLogger(__name__)

SPLIT_NAMES = splits.SPLIT_NAMES
FRACTIONS = splits.DEFAULT_FRACTIONS  # train / validation / test.


def frame_splits(plan: Sequence[tuple[int, bool, str]], seed: int = 0) -> list[str]:
  """Split name per entry of `frame_plan(...)`: 80/10/10, stratified by label,
  defect types spread evenly over the splits (`splits.stratified_split`)."""
  labels = [int(defective) for _, defective, _ in plan]
  types = [dtype for _, _, dtype in plan]
  return splits.stratified_split(labels, FRACTIONS, seed=seed, strata=types)


DESCRIPTION = """\
Synthetic raw camera frames of mobile-phone screens, in the spirit of the
SMSDD paper's data (a phone lying landscape on a dark-grey mat, black or white
phones, faint reflections on the glass; defects: scratches, spots, stains, oil
drops). Every frame is rendered deterministically from (seed, frame index) at
build time and put through the paper's preprocessing: `smsdd_jax.roi.
find_screen` locates the screen's four corners (Hough lines) and
`smsdd_jax.roi.rectify` warps it to a 110 x 230 ROI (or the run's
config.data.image_size: a config named `<name>_<h>x<w>`), stored as RGB.

Features: `image` the ROI; `label` good/defective; `defect_type`;
`corners_true` the true outline of the phone's front face in the frame (x, y;
tl, tr, br, bl); `corners_found` what find_screen returned; `roi_iou` the IoU of
the two quadrilaterals; `phone` 'black' or 'white'; `frame_id` the frame index.
Splits train/validation/test are 80/10/10, stratified by label, defect types
spread evenly. Frames where find_screen fails are skipped and counted in the
metadata (`skipped`). Nothing is downloaded.
"""


@dataclasses.dataclass(eq=False)
class SyntheticScreensConfig(tfds.core.BuilderConfig):
  """What to render: how many frames, how many defective, their size, the seed."""
  num_frames: int = 1200
  num_defective: int = 168
  frame_size: tuple[int, int] = (1080, 1920)  # (height, width)
  seed: int = 0
  # (height, width) of the stored ROIs; smsdd_jax.datasets.builder derives a
  # config '<name>_<h>x<w>' from config.data.image_size when it differs.
  size: tuple[int, int] = ROI_SIZE

  @property
  def preprocessing(self) -> preprocess.Spec:
    return preprocess.Spec(roi='hough', size=self.size)


class SyntheticScreens(tfds.core.GeneratorBasedBuilder):
  """Synthetic phone-screen frames, screen-found and rectified to 110 x 230."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': 'Splits from splits.stratified_split, defect types balanced over '
               'the splits: same counts per split and class, other frames in each. '
               'Pixels unchanged.',
  }
  BUILDER_CONFIGS = [
      SyntheticScreensConfig(
          name='default',
          description='1200 frames of 1920x1080, 168 defective (the paper\'s '
                      'balance), seed 0.',
          num_frames=1200, num_defective=168, frame_size=(1080, 1920), seed=0),
      SyntheticScreensConfig(
          name='small',
          description='160 frames of 960x540, 40 defective, seed 0: for quick '
                      'runs and tests.',
          num_frames=160, num_defective=40, frame_size=(540, 960), seed=0),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'
  QUICK_CONFIG_NAME = 'small'  # What configs/*.py:quick builds.

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    # Frames find_screen failed on, per split: [frame index, reason]. Filled
    # while generating; also saved as info.metadata['skipped'].
    self.skipped: dict[str, list] = {}

  @property
  def num_skipped(self) -> int:
    return sum(len(v) for v in self.skipped.values())

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(*self.builder_config.size, 3)),
            'label': tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            'defect_type': tfds.features.ClassLabel(names=list(DEFECT_TYPES)),
            'corners_true': tfds.features.Tensor(shape=(4, 2), dtype=np.float32),
            'corners_found': tfds.features.Tensor(shape=(4, 2), dtype=np.float32),
            'roi_iou': tfds.features.Scalar(dtype=np.float32),
            'phone': tfds.features.Text(),
            'frame_id': tfds.features.Scalar(dtype=np.int32),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded.
    cfg = self.builder_config
    plan = frame_plan(cfg.num_frames, cfg.num_defective, cfg.seed)
    split_of = frame_splits(plan, seed=cfg.seed)
    self.skipped = {}
    self.info.metadata['skipped'] = {}
    self.info.metadata['preprocessing'] = cfg.preprocessing.to_dict()
    return {name: self._generate_examples(
        [p for p, s in zip(plan, split_of) if s == name], name) for name in SPLIT_NAMES}

  def _generate_examples(self, items, split):
    cfg = self.builder_config
    spec = cfg.preprocessing
    skipped = self.skipped.setdefault(split, [])
    self.info.metadata['skipped'][split] = skipped
    for index, defective, dtype in items:
      frame = render_frame(index, seed=cfg.seed, frame_size=cfg.frame_size,
                           defective=defective, defect_type=dtype if defective else None)
      try:  # The same path as every builder and predict.
        rgb, found, _ = preprocess.to_model_input(frame.image, spec)
      except preprocess.BadImage as e:
        log.warning('synthetic_screens/%s: frame %d skipped (%s split): %s',
                    cfg.name, index, split, e)
        skipped.append([int(index), str(e)])
        continue
      yield int(index), {
          'image': rgb,
          'label': frame.label,
          'defect_type': frame.defect_type,
          'corners_true': frame.corners.astype(np.float32),
          'corners_found': found,
          'roi_iou': np.float32(quad_iou(found, frame.corners)),
          'phone': frame.phone,
          'frame_id': np.int32(index),
      }
