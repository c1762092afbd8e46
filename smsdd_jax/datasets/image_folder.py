"""`image_folder`: any folder of class sub-folders as a TFDS builder, and the
machinery the real-data builders (`msd_screens`, `magnetic_tile`) share.

Layout of the manual dir (`download_config.manual_dir`, `config.data.manual_dir`):

  <manual_dir>/
    good/  ok/  normal/  pass/  free/ ...   -> label 'good' (defect_type 'none')
    scratch/  oil/  whatever_else/ ...      -> label 'defective', defect_type =
                                               the folder name, lower case
    classes.json                            -> optional override (below)

Each top-level sub-folder is a class folder; its images are found recursively
(.jpg .jpeg .png .bmp .tif .tiff .webp; any case). Sub-folders named like
annotations (`masks`, `mask`, `annotations`, `ground_truth`, `gt`, `labels`,
`SegmentationClass`, ...) and hidden files/folders are ignored, as are image
files lying directly in the manual dir (logged as skipped). Good folder names
(case-insensitive): see `GOOD_NAMES`; every other folder is defective.

`classes.json` maps folder names (case-insensitive) to "good", "defective",
"ignore", or {"label": "good" | "defective", "defect_type": "..."}; folders it
does not name follow the convention above. Example:

  {"OK": "good", "NG_scratch": {"label": "defective", "defect_type": "scratch"},
   "unsure": "ignore"}

Builder configs:
  * `roi`: raw camera frames: `smsdd_jax.roi` finds the phone (Hough, with its
    contour fallback) and warps it to 110 x 230; frames with no screen are
    skipped with the reason.
  * `none`: images already cropped: plain resize (no aspect kept) to 110 x 230.

Features: `image` (110, 230, 3) uint8 RGB; `label` good/defective;
`defect_type` (text); `file_name` (path relative to the manual dir);
`corners` (4, 2) float32 (x, y) tl, tr, br, bl of the quad that became the
image (the whole image for `none`); `roi_method` ('hough', 'contour' or
'none'); `group` (near-duplicate group id).

Splits (all builders here): `train`/`validation`/`test` (80/10/10) and
`fold_0` ... `fold_{k-1}` (k = 5), both stratified by label and grouped: all
near-duplicates of one group land in one split and one fold
(`smsdd_jax.datasets.splits`). For k-fold training read test = fold_i,
validation = fold_{(i+1) % k}, train = the rest joined with '+'
(`splits.kfold_splits(k, i)` returns those split strings).

Bad input never stops a build: unreadable, empty, truncated or non-image
files, exact duplicates (same sha256) and frames with no screen are skipped,
each logged with its reason and listed in `info.metadata['skipped']`
([file_name, reason] pairs; `num_skipped` the count). A class left with no
image fails the build with a one-line ValueError naming it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from smsdd_jax.datasets import splits

log = logging.getLogger(__name__)

_MODULE_DOC = __doc__

LABEL_NAMES = ('good', 'defective')
GOOD, DEFECTIVE = 0, 1
ROI_SIZE = (110, 230)  # (height, width), as the paper.
IMAGE_EXTS = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp'})
GOOD_NAMES = frozenset({'good', 'ok', 'normal', 'pass', 'passed', 'free', 'mt_free',
                        'defect_free', 'defect-free', 'no_defect', 'nodefect',
                        'non_defective', 'negative', 'clean'})
IGNORED_DIRS = frozenset({'mask', 'masks', 'annotation', 'annotations', 'ground_truth',
                          'groundtruth', 'gt', 'label', 'labels', 'segmentationclass',
                          'segmentationobject', 'imagesets', '__macosx'})
CLASSES_FILE = 'classes.json'


class BadInput(ValueError):
  """A source file that cannot become an example; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class Source:
  """One file to turn into an example."""
  path: pathlib.Path
  rel: str  # POSIX path relative to the root (the stored `file_name`).
  label: int
  defect_type: str


def is_hidden(rel_parts: Sequence[str]) -> bool:
  return any(p.startswith('.') for p in rel_parts)


def in_ignored_dir(rel_parts: Sequence[str]) -> bool:
  return any(p.lower() in IGNORED_DIRS for p in rel_parts[:-1])


def image_files(root: pathlib.Path) -> list[pathlib.Path]:
  """Image files under root (recursive, sorted), minus hidden/annotation dirs."""
  out = []
  for p in root.rglob('*'):
    rel = p.relative_to(root).parts
    if is_hidden(rel) or in_ignored_dir(rel) or p.suffix.lower() not in IMAGE_EXTS:
      continue
    if p.is_file():
      out.append(p)
  return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def read_bytes(path: pathlib.Path) -> bytes:
  try:
    data = path.read_bytes()
  except OSError as e:
    raise BadInput(f'unreadable file ({e.strerror or e})') from None
  if not data:
    raise BadInput('empty file (0 bytes)')
  return data


def decode(data: bytes, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
  """Decodes image bytes (BGR for IMREAD_COLOR); BadInput when it cannot.

  OpenCV decodes a truncated JPEG without complaint (the missing part comes
  out gray), so a JPEG must also end with its end-of-image marker.
  """
  if data[:2] == b'\xff\xd8' and b'\xff\xd9' not in data[-4096:]:
    raise BadInput('truncated JPEG (no end-of-image marker)')
  try:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
  except cv2.error as e:
    raise BadInput(f'not a decodable image ({str(e).strip().splitlines()[-1]})') from None
  if image is None or image.size == 0:
    raise BadInput('not a decodable image')
  return image


def resize_to(image: np.ndarray, size: Sequence[int] = ROI_SIZE) -> np.ndarray:
  """Plain resize to (height, width): area when shrinking, linear when growing."""
  h, w = image.shape[:2]
  out_h, out_w = int(size[0]), int(size[1])
  shrink = out_w * out_h <= w * h
  return cv2.resize(image, (out_w, out_h),
                    interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def png_bytes(image: np.ndarray, shape: Sequence[int]) -> bytes:
  """Lossless PNG of a uint8 (H, W, 3) RGB or (H, W, 1) gray image."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or tuple(image.shape) != tuple(shape):
    raise ValueError(f'expected uint8 {tuple(shape)}, got {image.dtype} {image.shape}')
  if image.shape[-1] == 3:
    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  ok, buf = cv2.imencode('.png', np.ascontiguousarray(image))
  if not ok:
    raise ValueError('PNG encoding failed')
  return buf.tobytes()


def whole_image_corners(image: np.ndarray) -> np.ndarray:
  h, w = image.shape[:2]
  return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)


def screen_roi(image_bgr: np.ndarray, size: Sequence[int] = ROI_SIZE):
  """(roi RGB, corners, method) through smsdd_jax.roi; BadInput if no screen."""
  from smsdd_jax import roi  # pylint: disable=import-outside-toplevel
  try:
    corners, info = roi.find_screen_with_info(image_bgr)
  except roi.ScreenNotFoundError as e:
    raise BadInput(f'no screen found: {e}') from None
  except (cv2.error, ValueError) as e:
    raise BadInput(f'screen search failed: {str(e).strip().splitlines()[-1]}') from None
  corners = np.asarray(corners, np.float32).reshape(4, 2)
  warped = roi.rectify(image_bgr, corners, size=tuple(size))
  return cv2.cvtColor(warped, cv2.COLOR_BGR2RGB), corners, str(info.method)


# --------------------------------------------------------------------------
# The shared builder.


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """How to split (and group) a folder-built data set."""
  seed: int = 0  # Split and fold assignment.
  num_folds: int = 5  # fold_0 ... fold_{k-1}.
  fractions: tuple[float, float, float] = splits.DEFAULT_FRACTIONS  # train/val/test.
  near_dup_threshold: int = splits.NEAR_DUP_THRESHOLD  # Hash bits; < 0: no grouping.


class FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Builds from a root of image files: read, skip bad input, group, split.

  Subclasses say where the files are (`_root`), what each one is
  (`_find_sources`), how one becomes an example (`_make_example`, raising
  BadInput to skip it) and their extra features (`_extra_features`).
  Everything is read once in `_split_generators`; the split generators then
  yield from memory (ROIs are small).
  """

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  DESCRIPTION = ''
  DEFECT_TYPES: Sequence[str] | None = None  # None: free text.
  LAYOUT_HINT = 'good/ and defective/ folders'

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.skipped: list[list[str]] = []  # [file_name, reason]; also in metadata.

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  # Hooks. -----------------------------------------------------------------

  def _extra_features(self) -> dict:
    return {}

  def _root(self, dl_manager) -> pathlib.Path:
    try:
      return pathlib.Path(dl_manager.manual_dir)
    except AssertionError as e:
      first = str(e).splitlines()[0]
      raise ValueError(f'{self.name}: needs its images in a manual dir holding '
                       f'{self.LAYOUT_HINT} (DownloadConfig(manual_dir=...), '
                       f'config.data.manual_dir): {first}') from None

  def _find_sources(self, root: pathlib.Path) -> list[Source]:
    raise NotImplementedError

  def _make_example(self, source: Source, data: bytes) -> dict:
    """Features other than label/defect_type/file_name/group; BadInput skips."""
    raise NotImplementedError

  def _extra_pairs(self, sources: Sequence[Source]) -> list[tuple[int, int]]:
    """Known near-duplicate links (indices into sources) besides the hash."""
    del sources
    return []

  # Machinery. -------------------------------------------------------------

  def _skip(self, rel: str, reason: str) -> None:
    log.warning('%s: skipped %s: %s', self.name, rel, reason)
    self.skipped.append([rel, reason])

  def _info(self) -> tfds.core.DatasetInfo:
    if self.DEFECT_TYPES is None:
      defect = tfds.features.Text()
    else:
      defect = tfds.features.ClassLabel(names=list(self.DEFECT_TYPES))
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(*ROI_SIZE, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            'defect_type': defect,
            'file_name': tfds.features.Text(),
            'group': tfds.features.Scalar(dtype=np.int32),
            **self._extra_features(),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = self._root(dl_manager)
    self.skipped = []
    sources = self._find_sources(root)
    found = np.bincount([s.label for s in sources], minlength=2)
    kept_sources, examples, seen = [], [], {}
    for src in sources:
      try:
        data = read_bytes(src.path)
        digest = splits.content_hash(data)
        if digest in seen:
          raise BadInput(f'exact duplicate of {seen[digest]}')
        ex = self._make_example(src, data)
        seen[digest] = src.rel
      except BadInput as e:
        self._skip(src.rel, str(e))
        continue
      kept_sources.append(src)
      examples.append({**ex, 'label': src.label, 'defect_type': src.defect_type,
                       'file_name': src.rel})
    labels = [ex['label'] for ex in examples]
    counts = np.bincount(labels, minlength=2) if labels else np.zeros(2, np.int64)
    for c, name in enumerate(LABEL_NAMES):
      if counts[c] == 0:
        raise ValueError(
            f"{self.name}: class '{name}' is empty: {found[c]} file(s) found for it "
            f'under {root}, {found[c] - counts[c]} of them skipped ({self.num_skipped} '
            f'skipped in all; expected {self.LAYOUT_HINT})')
    groups = splits.near_duplicate_groups(
        [ex['image'] for ex in examples], threshold=cfg.near_dup_threshold,
        extra_pairs=self._extra_pairs(kept_sources))
    for ex, g in zip(examples, groups):
      ex['group'] = np.int32(g)
    split_of = splits.stratified_split(labels, cfg.fractions, cfg.seed, groups)
    fold_of = splits.stratified_kfold(labels, cfg.num_folds, cfg.seed, groups)
    members = {name: [i for i, s in enumerate(split_of) if s == name]
               for name in splits.SPLIT_NAMES}
    for k, name in enumerate(splits.kfold_split_names(cfg.num_folds)):
      members[name] = [i for i, f in enumerate(fold_of) if f == k]
    for name, idx in members.items():
      if not idx:
        raise ValueError(
            f'{self.name}: split {name!r} would be empty ({len(examples)} examples '
            f'in {max(groups) + 1} near-duplicate groups are too few for fractions '
            f'{tuple(cfg.fractions)} and {cfg.num_folds} folds)')
    log.info('%s: %d examples (%d good, %d defective) in %d groups; %d files skipped',
             self.name, len(examples), counts[GOOD], counts[DEFECTIVE], max(groups) + 1,
             self.num_skipped)
    md = self.info.metadata
    md['skipped'] = self.skipped
    md['num_skipped'] = self.num_skipped
    md['num_examples'] = {n: int(c) for n, c in zip(LABEL_NAMES, counts)}
    md['num_groups'] = int(max(groups) + 1)
    md['near_dup_threshold'] = int(cfg.near_dup_threshold)
    md['seed'] = int(cfg.seed)
    md['num_folds'] = int(cfg.num_folds)
    md['fractions'] = [float(f) for f in cfg.fractions]
    md['split_counts'] = {
        name: {n: int(sum(labels[i] == c for i in idx)) for c, n in enumerate(LABEL_NAMES)}
        for name, idx in members.items()}
    return {name: self._generate_examples([examples[i] for i in idx])
            for name, idx in members.items()}

  def _generate_examples(self, examples):
    image_keys = [k for k, f in self.info.features.items()
                  if isinstance(f, tfds.features.Image)]
    for ex in examples:
      # PNG-encoded here with OpenCV: TFDS's own encoder (a TF op per image)
      # took ~4 ms an image, most of a build's time.
      yield ex['file_name'], {
          **ex, **{k: png_bytes(ex[k], self.info.features[k].shape) for k in image_keys}}


# --------------------------------------------------------------------------
# image_folder.


def _parse_spec(folder: str, spec) -> tuple[int, str] | None:
  """classes.json entry -> (label, defect_type) or None for 'ignore'."""
  if isinstance(spec, str):
    spec = {'label': spec}
  if not isinstance(spec, dict) or 'label' not in spec:
    raise ValueError(f'{CLASSES_FILE}: entry for {folder!r} must be "good", "defective", '
                     f'"ignore" or {{"label": ..., "defect_type": ...}}, got {spec!r}')
  label = str(spec['label']).lower()
  if label == 'ignore':
    return None
  if label not in LABEL_NAMES:
    raise ValueError(f'{CLASSES_FILE}: label for {folder!r} must be one of '
                     f'{LABEL_NAMES + ("ignore",)}, got {spec["label"]!r}')
  default_type = 'none' if label == 'good' else folder.lower()
  return LABEL_NAMES.index(label), str(spec.get('defect_type', default_type))


def folder_classes(root: pathlib.Path) -> dict[str, tuple[int, str] | None]:
  """Top-level folder name -> (label, defect_type), or None when ignored."""
  override = {}
  cfile = root / CLASSES_FILE
  if cfile.is_file():
    try:
      raw = json.loads(cfile.read_text())
    except (OSError, ValueError) as e:
      raise ValueError(f'{cfile}: not valid JSON ({e})') from None
    if not isinstance(raw, dict):
      raise ValueError(f'{cfile}: expected an object mapping folder names to classes')
    override = {str(k).lower(): v for k, v in raw.items()}
  out = {}
  for d in sorted(p for p in root.iterdir() if p.is_dir()):
    name = d.name
    if name.startswith('.'):
      continue
    if name.lower() in override:
      out[name] = _parse_spec(name, override[name.lower()])
    elif name.lower() in IGNORED_DIRS:
      out[name] = None
    elif name.lower() in GOOD_NAMES:
      out[name] = (GOOD, 'none')
    else:
      out[name] = (DEFECTIVE, name.lower())
  return out


@dataclasses.dataclass(eq=False)
class ImageFolderConfig(FolderConfig):
  roi: bool = True  # Search the screen (smsdd_jax.roi) or just resize.


class ImageFolder(FolderBuilder):
  """A user's folder of class sub-folders (see the module doc)."""

  DESCRIPTION = _MODULE_DOC
  DEFECT_TYPES = None
  LAYOUT_HINT = ('class sub-folders (good/ok/normal/pass/free -> good, others -> '
                 f'defective, or as {CLASSES_FILE} says)')
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put your images in sub-folders of the manual dir, one per class: good/ (or '
      'ok/, normal/, pass/, free/) for defect-free ones, any other name for '
      f'defective ones; {CLASSES_FILE} may map folder names explicitly.')
  BUILDER_CONFIGS = [
      ImageFolderConfig(name='roi', roi=True,
                        description='Raw camera frames: find the screen (Hough) and '
                                    'rectify it to 110 x 230.'),
      ImageFolderConfig(name='none', roi=False,
                        description='Already-cropped images: plain resize to 110 x 230.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'roi'

  def _extra_features(self) -> dict:
    return {'corners': tfds.features.Tensor(shape=(4, 2), dtype=np.float32),
            'roi_method': tfds.features.Text()}

  def _find_sources(self, root: pathlib.Path) -> list[Source]:
    classes = folder_classes(root)
    sources = []
    for p in image_files(root):
      rel = p.relative_to(root)
      if len(rel.parts) == 1:
        self._skip(rel.as_posix(), 'not inside a class folder')
        continue
      cls = classes.get(rel.parts[0])
      if cls is None:
        continue  # An ignored folder.
      sources.append(Source(p, rel.as_posix(), *cls))
    return sources

  def _make_example(self, source: Source, data: bytes) -> dict:
    image = decode(data, cv2.IMREAD_COLOR)
    if self.builder_config.roi:
      rgb, corners, method = screen_roi(image)
    else:
      rgb = cv2.cvtColor(resize_to(image), cv2.COLOR_BGR2RGB)
      corners, method = whole_image_corners(image), 'none'
    return {'image': rgb, 'corners': corners, 'roi_method': method}
