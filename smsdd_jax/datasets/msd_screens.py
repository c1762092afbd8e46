"""`msd_screens`: real phone-screen camera frames (MSD), rectified at build time.

Reads raw camera frames (1920 x 1080 in the public MSD set of Jian Zhang et
al., github jianzhang96/MSD: oil, scratch and stain defects on phone screens)
from the manual dir (`download_config.manual_dir`, `config.data.manual_dir`);
nothing is downloaded. Every frame goes through the paper's preprocessing:
`smsdd_jax.roi.find_screen_with_info` finds the phone's front face (Hough,
with a contour fallback) and `smsdd_jax.roi.rectify` warps it to 110 x 230
(the paper's; `config.data.image_size` for another size, built apart); the
ROI is stored as RGB.

Accepted layouts (folder names case-insensitive; images found recursively;
hidden files and annotation folders such as `Annotations/`, `masks/`,
`ground_truth/` are ignored):

  * `good/` + `defective/`, defect types from the file names' prefixes
    (`Oil_0001.jpg`, `Scr_0003.jpg`, `Sta_0010.jpg`; other names: 'unknown');
  * one folder per type as in MSD's own release: `Oil/` (or `oil`, `oils`),
    `Scr/` (`scratch`, `scratches`), `Sta/` (`stain`, `stains`), `good/`;
  * a flat folder such as VOC's `JPEGImages/`: the class comes from the file
    name prefix (`Good_`, `Oil_`, `Scr_`/`Scratch_`, `Sta_`/`Stain_`).

A frame's class comes from the nearest enclosing folder that names one
(good/ok/normal/pass/free/... -> good; defective/defect/bad/ng/... ->
defective; oil/scr/sta/... -> defective with that type), else from the file
name prefix; a file with neither is skipped.

Features: `image` (height, width, 3) uint8 RGB; `label` good/defective;
`defect_type` none/oil/scratch/stain/unknown; `file_name` (relative path);
`corners` (4, 2) float32 (x, y) tl, tr, br, bl in the frame; `roi_method`
'hough' or 'contour'; `group` near-duplicate group id.

Splits: `train`/`validation`/`test` (80/10/10) and `fold_0`..`fold_4`, all
stratified by label and defect type and grouped by near-duplicates (perceptual hash of the
ROI, 22 of 127 bits: runs like `Scr_0003`..`Scr_0023` are one group), see
`smsdd_jax.datasets.splits` and `image_folder`. Skipped files (unreadable,
not an image, truncated, exact duplicates, no screen found) are logged and
listed in `info.metadata['skipped']`; an empty class fails the build.
"""
from __future__ import annotations

import pathlib
import re


from smsdd_jax.datasets import image_folder
from smsdd_jax.datasets import splits
from smsdd_jax.datasets.image_folder import DEFECTIVE, GOOD, Source

DEFECT_TYPES = ('none', 'oil', 'scratch', 'stain', 'unknown')

_TYPE_NAMES = {
    'oil': 'oil', 'oils': 'oil',
    'scr': 'scratch', 'scratch': 'scratch', 'scratches': 'scratch',
    'sta': 'stain', 'stain': 'stain', 'stains': 'stain',
}
_GENERIC_DEFECTIVE = frozenset({'defective', 'defect', 'defects', 'bad', 'ng', 'nok',
                                'fail', 'failed', 'positive', 'anomaly', 'abnormal'})
_PREFIX_TYPES = {**_TYPE_NAMES, 'good': None}


def folder_class(name: str) -> tuple[int, str | None] | None:
  """A folder name -> (label, defect_type or None for 'from the file name'), or
  None when it names no class. Case-insensitive; 'Oil_images' counts as oil."""
  low = name.lower()
  for key in (low, (re.match(r'[a-z]+', low) or [''])[0]):
    if key in image_folder.GOOD_NAMES:
      return GOOD, 'none'
    if key in _GENERIC_DEFECTIVE:
      return DEFECTIVE, None
    if key in _TYPE_NAMES:
      return DEFECTIVE, _TYPE_NAMES[key]
  return None


def prefix_class(file_name: str) -> tuple[int, str] | None:
  """`Oil_0001.jpg` -> (DEFECTIVE, 'oil'); `Good_0003.jpg` -> (GOOD, 'none')."""
  m = re.match(r'[a-z]+', pathlib.Path(file_name).stem.lower())
  if not m or m[0] not in _PREFIX_TYPES:
    return None
  kind = _PREFIX_TYPES[m[0]]
  return (GOOD, 'none') if kind is None else (DEFECTIVE, kind)


def classify(rel: pathlib.PurePath) -> tuple[int, str] | None:
  """(label, defect_type) of a file at `rel` (relative to the root), or None."""
  for folder in reversed(rel.parts[:-1]):  # Nearest folder first.
    cls = folder_class(folder)
    if cls is not None:
      label, kind = cls
      if kind is None:  # Generic 'defective': the file name may say which.
        by_name = prefix_class(rel.name)
        kind = by_name[1] if by_name and by_name[0] == DEFECTIVE else 'unknown'
      return label, kind
  return prefix_class(rel.name)


class MsdScreens(image_folder.FolderBuilder):
  """Real MSD phone-screen frames, screen-found and rectified (110 x 230 by default)."""

  DESCRIPTION = __doc__
  DEFECT_TYPES = DEFECT_TYPES
  LAYOUT_HINT = 'good/ and defective/ (or Oil/, Scr/, Sta/) folders of raw frames'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put the raw MSD camera frames in the manual dir: good/ and defective/ '
      '(defect type from the Oil_/Scr_/Sta_ file-name prefixes), or one folder per '
      'type (Oil/, Scr/, Sta/, good/). Source: github jianzhang96/MSD.')
  BUILDER_CONFIGS = [
      image_folder.FolderConfig(
          name='default', roi='hough',
          description='80/10/10 and 5 folds, seed 0, near-duplicate threshold '
                      f'{splits.NEAR_DUP_THRESHOLD} bits.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'

  def _find_sources(self, root: pathlib.Path) -> list[Source]:
    sources = []
    for p in image_folder.image_files(root):
      rel = p.relative_to(root)
      cls = classify(rel)
      if cls is None:
        self._skip(rel.as_posix(), 'class unknown: in no good/defective/oil/scr/sta '
                   'folder and no Good_/Oil_/Scr_/Sta_ file-name prefix')
        continue
      sources.append(Source(p, rel.as_posix(), *cls))
    return sources
