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

Each crop (100-630 px wide, 220-400 px tall, width/height 0.36-2.7) becomes a
110 x 230 image, gray replicated to 3 channels:
  * config `stretch` (default): plain area resize to 230 x 110, aspect NOT
    kept (a tall crop is widened up to ~5.8x, a wide one squeezed ~0.8x);
    texture stripes keep their direction, no padding.
  * config `letterbox`: aspect kept, scaled to fit and centred on black.
    Caveat: crop shapes differ by class (MT_Fray is mostly wide), so the
    padding itself tells classes apart.
The mask goes through the same geometry: binarised at 128, area-resized,
and any pixel with some defect coverage set to 255 (thin cracks survive the
shrink); stored as `mask` (110, 230, 1) uint8 0/255 (all 0 for MT_Free).

Features: `image`, `mask`, `label` good/defective, `defect_type`
(none/blowhole/break/crack/fray/uneven), `file_name` (e.g.
`MT_Crack/Imgs/exp1_num_3191.jpg`), `group`.

Near-duplicates. Each tile was photographed under six lightings in a row:
file names `exp<1-6>_num_<frame counter>`, the counter rising by ~10-60
within a tile's run. Those crops show the same tile and defect, so they must
not straddle splits. Groups link (union-find) crops of the same class whose
counters are at most `capture_gap` (100) apart in sorted order, and crops
whose perceptual hashes are at most `near_dup_threshold` (4 of 127 bits)
apart: 235 groups on the real set (175 of 6 crops = one capture run). One
group mixes classes: `MT_Fray/Imgs/exp0_num_797` and `MT_Free/Imgs/
exp4_num_889` (4 bits apart) show the same tile, and so does
`MT_Blowhole/Imgs/exp3_num_853` (6-8 bits from them, not linked): one tile's
lightings are filed under three classes. The hash alone cannot find the
runs (lighting moves a tile's hash by ~20 bits, as far as unrelated tiles);
from ~8 bits on it links crops that look like different tiles, so 4.

Splits: `train`/`validation`/`test` (80/10/10) and `fold_0`..`fold_4`,
stratified by label, grouped (see `image_folder`, `splits`).
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

from smsdd_jax.datasets import image_folder
from smsdd_jax.datasets.image_folder import DEFECTIVE, GOOD, ROI_SIZE, BadInput, Source

log = logging.getLogger(__name__)

DEFECT_TYPES = ('none', 'blowhole', 'break', 'crack', 'fray', 'uneven')
REPO = 'abin24/Magnetic-tile-defect-datasets.'
# The repository's archive (default branch 'master'); HEAD as a fallback.
DOWNLOAD_URLS = (
    f'https://github.com/{REPO}/archive/refs/heads/master.zip',
    f'https://github.com/{REPO}/archive/HEAD.zip',
)
NEAR_DUP_THRESHOLD = 4  # Bits of 127; tuned on the real set (module doc).
CAPTURE_GAP = 100  # Frame-counter gap that still links two crops of a run.
_CLASS_DIR = re.compile(r'^mt_([a-z]+)$', re.IGNORECASE)
_CAPTURE = re.compile(r'exp(\d+)_num_(\d+)', re.IGNORECASE)


@dataclasses.dataclass(eq=False)
class MagneticTileConfig(image_folder.FolderConfig):
  resize: str = 'stretch'  # 'stretch' (plain resize) or 'letterbox'.
  near_dup_threshold: int = NEAR_DUP_THRESHOLD
  capture_gap: int = CAPTURE_GAP  # <= 0: no grouping by file name.


def fit(image: np.ndarray, mode: str, size: Sequence[int] = ROI_SIZE,
        interpolation: int = cv2.INTER_AREA) -> np.ndarray:
  """Resizes a 2-D array to `size` (h, w) by 'stretch' or 'letterbox'."""
  out_h, out_w = int(size[0]), int(size[1])
  h, w = image.shape[:2]
  if mode == 'stretch':
    return cv2.resize(image, (out_w, out_h), interpolation=interpolation)
  if mode != 'letterbox':
    raise ValueError(f"resize must be 'stretch' or 'letterbox', got {mode!r}")
  s = min(out_w / w, out_h / h)
  nw, nh = max(1, min(out_w, round(w * s))), max(1, min(out_h, round(h * s)))
  small = cv2.resize(image, (nw, nh), interpolation=interpolation)
  out = np.zeros((out_h, out_w), image.dtype)
  y0, x0 = (out_h - nh) // 2, (out_w - nw) // 2
  out[y0:y0 + nh, x0:x0 + nw] = small
  return out


def _class_dirs(root: pathlib.Path) -> list[pathlib.Path]:
  """MT_* folders at or below root (the repository may sit one level down)."""
  found = [p for p in root.rglob('*') if p.is_dir() and _CLASS_DIR.match(p.name)
           and not image_folder.is_hidden(p.relative_to(root).parts)]
  if _CLASS_DIR.match(root.name):
    found.append(root)
  return sorted(found, key=lambda p: p.relative_to(root.parent).as_posix())


class MagneticTile(image_folder.FolderBuilder):
  """Magnetic-tile defect crops (Huang et al. 2020), resized to 110 x 230."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  DESCRIPTION = __doc__
  DEFECT_TYPES = DEFECT_TYPES
  LAYOUT_HINT = 'MT_<Class>/Imgs/*.jpg (+ .png masks) folders, MT_Free = good'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Optional. Put a copy of github.com/{REPO} (its MT_<Class>/Imgs/ folders) in '
      'the manual dir; without one the repository archive is downloaded.')
  BUILDER_CONFIGS = [
      MagneticTileConfig(name='stretch', resize='stretch',
                         description='Plain resize to 110 x 230 (aspect not kept).'),
      MagneticTileConfig(name='letterbox', resize='letterbox',
                         description='Aspect kept: scaled to fit 110 x 230, black pad.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'stretch'

  def _extra_features(self) -> dict:
    return {'mask': tfds.features.Image(shape=(*ROI_SIZE, 1), encoding_format='png')}

  def _root(self, dl_manager) -> pathlib.Path:
    try:
      root = pathlib.Path(dl_manager.manual_dir)
    except AssertionError:  # No manual dir given (or it is empty): download.
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

  def _make_example(self, source: Source, data: bytes) -> dict:
    mode = self.builder_config.resize
    gray = image_folder.decode(data, cv2.IMREAD_GRAYSCALE)
    mask_path = source.path.with_suffix('.png')
    if mask_path.is_file():
      try:
        mask = image_folder.decode(image_folder.read_bytes(mask_path),
                                   cv2.IMREAD_GRAYSCALE)
      except BadInput as e:
        raise BadInput(f'mask {mask_path.name}: {e}') from None
      if mask.shape != gray.shape:
        raise BadInput(f'mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]}, '
                       f'image {gray.shape[1]}x{gray.shape[0]}')
      mask = np.where(mask >= 128, 255, 0).astype(np.uint8)
    else:
      log.warning('%s: %s has no mask; stored an empty one', self.name, source.rel)
      mask = np.zeros_like(gray)
    image = fit(gray, mode)
    small_mask = np.where(fit(mask, mode) > 0, 255, 0).astype(np.uint8)
    return {'image': np.repeat(image[..., None], 3, axis=-1),
            'mask': small_mask[..., None]}

  def _extra_pairs(self, sources: Sequence[Source]) -> list[tuple[int, int]]:
    """Crops of one capture run (same class folder, frame counters close)."""
    gap = self.builder_config.capture_gap
    if gap <= 0:
      return []
    runs: dict[str, list[tuple[int, int]]] = {}
    for i, s in enumerate(sources):
      m = _CAPTURE.search(pathlib.PurePosixPath(s.rel).name)
      if m:
        runs.setdefault(str(pathlib.PurePosixPath(s.rel).parent), []).append(
            (int(m[2]), i))
    pairs = []
    for items in runs.values():
      items.sort()
      pairs += [(a, b) for (na, a), (nb, b) in zip(items, items[1:]) if nb - na <= gap]
    return pairs
