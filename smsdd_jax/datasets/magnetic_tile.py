"""`magnetic_tile`: the public magnetic-tile surface-defect set as a TFDS builder.

Huang et al., "Surface defect saliency of magnetic tile", The Visual Computer
2020; github abin24/Magnetic-tile-defect-datasets. (the authors ask to be
cited). 1344 grayscale crops of magnetic tiles, each with a same-name `.png`
defect mask: `MT_Free` 952 defect-free, and 392 defective in five folders
`MT_Blowhole`, `MT_Break`, `MT_Crack`, `MT_Fray`, `MT_Uneven`. A similar scale
and imbalance to the SMSDD paper's private screen set (1032 good / 168
defective), so it stands in for it; the crops need no ROI search.

Source files: the manual dir (`download_config.manual_dir`) in the
repository's layout, `MT_<Class>/Imgs/*.jpg` + `*.png` (a copy of the
repository, or any folder above one); without a manual dir the repository's
archive is downloaded from GitHub (`DOWNLOAD_URLS`, default branch `master`).

Each crop (100-630 px wide, 220-400 px tall, width/height 0.36-2.7) goes
through `smsdd_jax.preprocess` as a whole image (no ROI search) by the aspect
policy `config.data.aspect` ('stretch' widens a tall crop up to ~5.8x: crop
shape becomes texture scale; 'letterbox' keeps it on black, and the padding
then shows the crop's shape, which differs by class; 'rotate' turns tall
crops landscape first), gray replicated to 3 channels. The mask goes through
the same geometry: binarised at 128, resized, and any pixel with some defect
coverage set to 255 (thin cracks survive the shrink); stored as `mask`
(height, width, 1) uint8 0/255 (all 0 for MT_Free). The size is
`config.data.image_size` (default 110 x 230; another size builds apart).

Features: `image`, `mask`, `label` good/defective, `defect_type`
(none/blowhole/break/crack/fray/uneven), `file_name` (e.g.
`MT_Crack/Imgs/exp1_num_3191.jpg`), `group`.

One tile, one group. Each tile was photographed under six lightings in a
row: file names `exp<1-6>_num_<frame counter>`. Within a class folder, in
counter order, a new tile starts whenever the exposure number stops rising
(`capture_runs`): 204 complete runs of 6 on the real set, plus fragments.
(Two tiles were often captured interleaved, so counter gaps do not separate
tiles: the old rule, a gap of 100, cut MT_Break 241889-241939 and
242089-242123, one tile, into two groups that landed in different splits.)
Some tiles have their lightings filed under two classes: an incomplete run
of one folder interleaves with an incomplete run of another, their exposure
numbers disjoint (e.g. MT_Blowhole 346311/346347/346381/346414 with MT_Free
346332/346361). `cross_folder_pairs` links such runs into one group, so no
tile straddles splits; the card lists them as groups mixing labels. The two
MT_Free crops of tile 346311 show its blowhole and are left out
(`CROSS_LABELLED`, with the reason). Perceptual hashes at most
`near_dup_threshold` (4 of 127 bits) apart are linked too.

Splits: `train`/`validation`/`test` (80/10/10) and `fold_0`..`fold_4`,
stratified by label and defect type, grouped (see `image_folder`, `splits`).
Grouped 5-fold is the protocol to report: an 80/10/10 test set holds ~11
defective tiles.
"""
from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from typing import Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from smsdd_jax import preprocess
from smsdd_jax.datasets import image_folder
from smsdd_jax.datasets.image_folder import DEFECTIVE, GOOD, BadInput, Source

log = logging.getLogger(__name__)

DEFECT_TYPES = ('none', 'blowhole', 'break', 'crack', 'fray', 'uneven')
REPO = 'abin24/Magnetic-tile-defect-datasets.'
# The repository's archive (default branch 'master'); HEAD as a fallback.
DOWNLOAD_URLS = (
    f'https://github.com/{REPO}/archive/refs/heads/master.zip',
    f'https://github.com/{REPO}/archive/HEAD.zip',
)
NEAR_DUP_THRESHOLD = 4  # Bits of 127; tuned on the real set (module doc).
# Crops whose label contradicts what they show: relative name -> reason.
CROSS_LABELLED = {
    f'MT_Free/Imgs/exp{e}_num_{n}.jpg':
        f'cross-labelled: lighting {e} of tile 346311-346414, whose other lightings '
        'are in MT_Blowhole; its blowhole is visible in this crop'
    for e, n in ((2, 346332), (4, 346361))}
_CLASS_DIR = re.compile(r'^mt_([a-z]+)$', re.IGNORECASE)
_CAPTURE = re.compile(r'exp(\d+)_num_(\d+)', re.IGNORECASE)


@dataclasses.dataclass(eq=False)
class MagneticTileConfig(image_folder.FolderConfig):
  group_by_capture: bool = True  # One group per tile (module doc); False: hash only.


def capture_runs(items: Sequence[tuple[int, int, int]]) -> list[list[int]]:
  """Tiles of one folder: items (counter, exposure, index) -> runs of indices.

  In counter order, a run continues while the exposure number rises."""
  runs: list[list[int]] = []
  last = None
  for _, exp, index in sorted(items):
    if last is None or exp <= last:
      runs.append([])
    runs[-1].append(index)
    last = exp
  return runs


def cross_folder_pairs(runs: Sequence[tuple[str, list[tuple[int, int, int]]]]
                       ) -> list[tuple[int, int]]:
  """Links incomplete runs of different folders that are one tile.

  runs: (folder, [(counter, exposure, index), ...]). Two incomplete runs
  (fewer than 6 lightings) are one tile when their counter ranges interleave
  and their exposure numbers are disjoint."""
  part = [(f, r) for f, r in runs if len(r) < 6]
  pairs = []
  for a, (fa, ra) in enumerate(part):
    for fb, rb in part[a + 1:]:
      if fa == fb:
        continue
      overlap = min(ra)[0] < max(rb)[0] and min(rb)[0] < max(ra)[0]
      if overlap and not {e for _, e, _ in ra} & {e for _, e, _ in rb}:
        pairs.append((ra[0][2], rb[0][2]))
  return pairs


def _class_dirs(root: pathlib.Path) -> list[pathlib.Path]:
  """MT_* folders at or below root (the repository may sit one level down)."""
  found = [p for p in root.rglob('*') if p.is_dir() and _CLASS_DIR.match(p.name)
           and not image_folder.is_hidden(p.relative_to(root).parts)]
  if _CLASS_DIR.match(root.name):
    found.append(root)
  return sorted(found, key=lambda p: p.relative_to(root.parent).as_posix())


class MagneticTile(image_folder.FolderBuilder):
  """Magnetic-tile defect crops (Huang et al. 2020), resized to the input size."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '2.0.0': 'One group per tile (exposure runs, cross-labelled tiles linked), two '
               'cross-labelled crops left out, groups in random order stratified by '
               'defect type; aspect from config.data.aspect (the stretch/letterbox '
               'configs became one).',
  }
  NEEDS_MANUAL_DIR = False
  DESCRIPTION = __doc__
  DEFECT_TYPES = DEFECT_TYPES
  LAYOUT_HINT = 'MT_<Class>/Imgs/*.jpg (+ .png masks) folders, MT_Free = good'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Optional. Put a copy of github.com/{REPO} (its MT_<Class>/Imgs/ folders) in '
      'the manual dir; without one the repository archive is downloaded.')
  BUILDER_CONFIGS = [
      MagneticTileConfig(name='default', roi='none', near_dup_threshold=NEAR_DUP_THRESHOLD,
                         description='Crops to config.data.image_size by '
                                     'config.data.aspect, one group per tile.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'

  def _extra_features(self) -> dict:
    return {'mask': tfds.features.Image(shape=(*self.size, 1), encoding_format='png')}

  def _root(self, dl_manager) -> pathlib.Path:
    if self.builder_config.source_root:
      root = super()._root(dl_manager)
    else:  # No folder given: download.
      root = self._download(dl_manager)
    if not _class_dirs(root):
      raise ValueError(f'{self.name}: no MT_<Class> folders under {root} (expected '
                       f'{self.LAYOUT_HINT})')
    return root

  def _download(self, dl_manager) -> pathlib.Path:
    errors = []
    for url in DOWNLOAD_URLS:
      try:
        log.info('%s: downloading %s', self.name, url)
        return pathlib.Path(dl_manager.download_and_extract(url))
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f'{url}: {str(e).splitlines()[0] if str(e) else type(e).__name__}')
    raise ValueError(f'{self.name}: no manual dir and the download failed ('
                     + '; '.join(errors) + ')')

  def _find_sources(self, root: pathlib.Path) -> list[Source]:
    sources = []
    for d in _class_dirs(root):
      kind = _CLASS_DIR.match(d.name)[1].lower()
      if kind != 'free' and kind not in DEFECT_TYPES:
        for p in sorted(d.rglob('*.jpg')):
          self._skip(p.relative_to(root).as_posix(), f'unknown class folder {d.name}')
        continue
      label, dtype = (GOOD, 'none') if kind == 'free' else (DEFECTIVE, kind)
      imgs = d / 'Imgs' if (d / 'Imgs').is_dir() else d
      for p in sorted(imgs.iterdir()):
        if p.is_file() and not p.name.startswith('.') and \
            p.suffix.lower() in ('.jpg', '.jpeg'):
          sources.append(Source(p, p.relative_to(root).as_posix(), label, dtype))
    return sources

  def _exclusion(self, source: Source) -> str:
    parts = pathlib.PurePosixPath(source.rel).parts  # The repo may sit one level down.
    return CROSS_LABELLED.get('/'.join(parts[-3:]), '')

  def _extra_example(self, source: Source, image: np.ndarray, corners: np.ndarray,
                     method: str) -> dict:
    del corners, method
    mask_path = source.path.with_suffix('.png')
    if mask_path.is_file():
      try:
        mask = preprocess.read_image(mask_path)
      except BadInput as e:
        raise BadInput(f'mask {mask_path.name}: {e}') from None
      mask = mask if mask.ndim == 2 else cv2.cvtColor(mask, cv2.COLOR_BGR2GRAY)
      if mask.shape != image.shape[:2]:
        raise BadInput(f'mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]}, '
                       f'image {image.shape[1]}x{image.shape[0]}')
      mask = np.where(mask >= 128, 255, 0).astype(np.uint8)
    else:
      log.warning('%s: %s has no mask; stored an empty one', self.name, source.rel)
      mask = np.zeros(image.shape[:2], np.uint8)
    small = preprocess.fit(mask, self.size, self.builder_config.aspect)
    return {'mask': np.where(small > 0, 255, 0).astype(np.uint8)[..., None]}

  def _extra_pairs(self, sources: Sequence[Source]) -> list[tuple[int, int]]:
    """Crops of one tile: capture runs per folder, and runs across folders."""
    if not self.builder_config.group_by_capture:
      return []
    per_folder: dict[str, list[tuple[int, int, int]]] = {}
    for i, s in enumerate(sources):
      m = _CAPTURE.search(pathlib.PurePosixPath(s.rel).name)
      if m:
        per_folder.setdefault(str(pathlib.PurePosixPath(s.rel).parent), []).append(
            (int(m[2]), int(m[1]), i))
    pairs, runs = [], []
    for folder, items in per_folder.items():
      by_index = {i: (n, e, i) for n, e, i in items}
      for run in capture_runs(items):
        pairs += list(zip(run, run[1:]))
        runs.append((folder, sorted(by_index[i] for i in run)))
    return pairs + cross_folder_pairs(runs)
