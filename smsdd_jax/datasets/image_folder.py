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
does not name follow the convention above (the dataset card warns about those
taken as defective that way). A key that names no top-level folder fails the
build, naming the key and the folders there (a typo must not turn a folder of
good images defective). Example:

  {"OK": "good", "NG_scratch": {"label": "defective", "defect_type": "scratch"},
   "unsure": "ignore"}

Builder configs:
  * `roi`: raw camera frames: `smsdd_jax.roi` finds the phone (Hough, with its
    contour fallback) and warps it to the input size; frames with no screen
    are skipped with the reason (an empty class most of whose files failed
    the search says that crops need `none`).
  * `none`: images already cropped: the whole image to the input size by the
    aspect policy (`config.data.aspect`: stretch, letterbox or rotate).
The input size is `config.data.image_size` (height, width; default 110 x 230,
the paper's), part of the build's config name when it is not the default.
Every image goes through `smsdd_jax.preprocess` (the same code `predict`
uses); `config.data.channels` picks RGB or gray. The build is tied to its
source folder (`smsdd_jax.datasets.source`: another folder never reads this
build) and writes a dataset card (`smsdd_jax.datasets.card`).

Features: `image` (height, width, 3) uint8 RGB; `label` good/defective;
`defect_type` (text); `file_name` (path relative to the manual dir);
`corners` (4, 2) float32 (x, y) tl, tr, br, bl of the quad that became the
image (the whole image for `none`); `roi_method` ('hough', 'contour' or
'none'); `group` (near-duplicate group id).

Splits (all builders here): `train`/`validation`/`test` (80/10/10) and
`fold_0` ... `fold_{k-1}` (k = 5), both stratified by label and defect type
and grouped: all near-duplicates of one group land in one split and one fold,
groups placed in a seeded random order (`smsdd_jax.datasets.splits`). Grouped
5-fold is the protocol for the small public sets. For k-fold training read test = fold_i,
validation = fold_{(i+1) % k}, train = the rest joined with '+'
(`splits.kfold_splits(k, i)` returns those split strings).

Bad input never stops a build: unreadable, empty, truncated or non-image
files, exact duplicates (same sha256) and frames with no screen are skipped,
each logged with its reason and listed in `info.metadata['skipped']`
([file_name, reason] pairs; `num_skipped` the count). A class left with no
image fails the build with a one-line ValueError naming it. The dataset card
counts images enlarged more than `preprocess.ENLARGEMENT_LIMIT` (4) times
along a side and names the worst.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import pathlib
from typing import Sequence

import cv2
import numpy as np
import tensorflow_datasets as tfds

from smsdd_jax import preprocess
from smsdd_jax.datasets import card as card_lib
from smsdd_jax.datasets import source as source_lib
from smsdd_jax.datasets import splits

log = logging.getLogger(__name__)

_MODULE_DOC = __doc__

LABEL_NAMES = ('good', 'defective')
GOOD, DEFECTIVE = 0, 1
ROI_SIZE = preprocess.ROI_SIZE
IMAGE_EXTS = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp'})
GOOD_NAMES = frozenset({'good', 'ok', 'normal', 'pass', 'passed', 'free', 'mt_free',
                        'defect_free', 'defect-free', 'no_defect', 'nodefect',
                        'non_defective', 'negative', 'clean'})
IGNORED_DIRS = frozenset({'mask', 'masks', 'annotation', 'annotations', 'ground_truth',
                          'groundtruth', 'gt', 'label', 'labels', 'segmentationclass',
                          'segmentationobject', 'imagesets', '__macosx'})
CLASSES_FILE = 'classes.json'
BadInput = preprocess.BadImage  # A source file that cannot become an example.


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
  """Image files under root (recursive, sorted), minus hidden/annotation dirs.
  A broken link with an image name is kept: reading it gives the reason."""
  out = []
  for p in root.rglob('*'):
    rel = p.relative_to(root).parts
    if is_hidden(rel) or in_ignored_dir(rel) or p.suffix.lower() not in IMAGE_EXTS:
      continue
    if p.is_file() or (p.is_symlink() and not p.exists()):
      out.append(p)
  return sorted(out, key=lambda p: p.relative_to(root).as_posix())


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


# --------------------------------------------------------------------------
# The shared builder.


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
  """How to preprocess, split and group a folder-built data set.

  The named configs of a builder hold its defaults; `smsdd_jax.datasets.
  builder` derives the config a build really uses from one of them, the
  run's `config.data` and the source fingerprint."""
  seed: int = 0  # Split and fold assignment.
  num_folds: int = 5  # fold_0 ... fold_{k-1}.
  fractions: tuple[float, float, float] = splits.DEFAULT_FRACTIONS  # train/val/test.
  near_dup_threshold: int = splits.NEAR_DUP_THRESHOLD  # Hash bits; < 0: no grouping.
  roi: str = 'none'  # preprocess.Spec.roi: 'hough' (raw frames) | 'none' (crops).
  aspect: str = 'stretch'  # preprocess.Spec.aspect (whole images only).
  channels: str = 'rgb'  # preprocess.Spec.channels.
  source_root: str = ''  # The folder this build is made from ('' = not resolved).
  source_fingerprint: str = ''  # source.fingerprint(...).digest of that folder.
  size: tuple[int, int] = ROI_SIZE  # (height, width) of the stored images.

  @property
  def preprocessing(self) -> preprocess.Spec:
    return preprocess.Spec(roi=self.roi, aspect=self.aspect, channels=self.channels,
                           size=self.size)


class FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Builds from a root of image files: read, skip bad input, group, split.

  Subclasses say where the files are (`_root`), what each one is
  (`_find_sources`), and may add features (`_extra_features`, filled by
  `_extra_example`), known near-duplicate links (`_extra_pairs`) or files to
  leave out (`_exclusion`). Every image goes through `smsdd_jax.preprocess`.
  Everything is read once in `_split_generators`; the split generators then
  yield from memory (the images are small).
  """

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '2.0.0': 'One preprocessing path (smsdd_jax.preprocess), aspect and channel '
               'policies, groups placed in seeded random order and stratified by '
               'defect type, source fingerprint, dataset card.',
  }
  DESCRIPTION = ''
  DEFECT_TYPES: Sequence[str] | None = None  # None: free text.
  LAYOUT_HINT = 'good/ and defective/ folders'
  NEEDS_MANUAL_DIR = True  # False: a builder that can download its files.
  # What to set instead when a class's files mostly failed the screen search.
  CROPS_HINT = 'config.data.name=image_folder and config.data.builder_config=none'

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.skipped: list[list[str]] = []  # [file_name, reason]; also in metadata.
    self.notes: list[str] = []  # Warnings from finding the sources (card).

  @property
  def num_skipped(self) -> int:
    return len(self.skipped)

  # Hooks. -----------------------------------------------------------------

  def _extra_features(self) -> dict:
    return {'corners': tfds.features.Tensor(shape=(4, 2), dtype=np.float32),
            'roi_method': tfds.features.Text()}

  def _find_sources(self, root: pathlib.Path) -> list[Source]:
    raise NotImplementedError

  def _extra_example(self, source: Source, image: np.ndarray, corners: np.ndarray,
                     method: str) -> dict:
    """Features besides image/label/defect_type/file_name/group (BadInput skips)."""
    del source, image
    return {'corners': corners, 'roi_method': method}

  def _extra_pairs(self, sources: Sequence[Source]) -> list[tuple[int, int]]:
    """Known near-duplicate links (indices into sources) besides the hash."""
    del sources
    return []

  def _exclusion(self, source: Source) -> str:
    """Why a file is left out (a known bad label), or '' to keep it."""
    del source
    return ''

  # Machinery. -------------------------------------------------------------

  def _log_download_bytes(self) -> None:
    pass  # Nothing is downloaded from a folder: TFDS' "Downloading..." misleads.

  def _log_download_done(self) -> None:
    pass  # The caller prints the dataset card's line instead.

  def _skip(self, rel: str, reason: str) -> None:
    log.info('%s: skipped %s: %s', self.name, rel, reason)
    self.skipped.append([rel, reason])

  @property
  def size(self) -> tuple[int, int]:
    """(height, width) of the stored images: the config's."""
    return tuple(getattr(self.builder_config, 'size', ROI_SIZE))

  def _info(self) -> tfds.core.DatasetInfo:
    if self.DEFECT_TYPES is None:
      defect = tfds.features.Text()
    else:
      defect = tfds.features.ClassLabel(names=list(self.DEFECT_TYPES))
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(*self.size, 3), encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            'defect_type': defect,
            'file_name': tfds.features.Text(),
            'group': tfds.features.Scalar(dtype=np.int32),
            **self._extra_features(),
        }),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
    )

  def _root(self, dl_manager) -> pathlib.Path:
    cfg = self.builder_config
    if not cfg.source_root:
      # Plain TFDS use (tfds.builder + manual_dir): works, but TFDS will
      # reuse this build for any other folder; smsdd_jax.datasets.builder
      # ties each build to its source.
      try:
        return pathlib.Path(dl_manager.manual_dir)
      except AssertionError as e:
        raise ValueError(f'{self.name}: needs its images in a manual dir holding '
                         f'{self.LAYOUT_HINT} (config.data.manual_dir): '
                         f'{str(e).splitlines()[0]}') from None
    root = source_lib.check_root(cfg.source_root)
    # The folder may have changed since the build's name was chosen.
    if cfg.source_fingerprint and \
        source_lib.fingerprint(root).digest != cfg.source_fingerprint:
      raise ValueError(f'{self.name}: {root} changed while its build was being set up; '
                       'run again')
    return root

  def _read_all(self, sources: Sequence[Source]):
    """(kept sources, examples, source sizes, number of gray files, how many
    times each kept image's most enlarged side grew)."""
    spec = self.builder_config.preprocessing
    kept, examples, sizes, num_gray, seen, enlarged = [], [], [], 0, {}, []
    for src in sources:
      try:
        excluded = self._exclusion(src)
        if excluded:
          raise BadInput(excluded)
        data = preprocess.read_bytes(src.path)
        digest = splits.content_hash(data)
        if digest in seen:
          raise BadInput(f'exact duplicate of {seen[digest]}')
        image = preprocess.decode(data)
        rgb, corners, method = preprocess.to_model_input(image, spec)
        extra = self._extra_example(src, image, corners, method)
        seen[digest] = src.rel
      except BadInput as e:
        self._skip(src.rel, str(e))
        continue
      kept.append(src)
      sizes.append(image.shape[:2])
      enlarged.append(preprocess.enlargement(image.shape, corners, spec))
      num_gray += image.ndim == 2
      examples.append({'image': rgb, **extra, 'label': src.label,
                       'defect_type': src.defect_type, 'file_name': src.rel})
    return kept, examples, sizes, num_gray, enlarged

  def _check_classes(self, sources, examples, root) -> np.ndarray:
    found = np.bincount([s.label for s in sources], minlength=2)
    counts = np.bincount([ex['label'] for ex in examples], minlength=2)
    label_of = {s.rel: s.label for s in sources}
    for c, name in enumerate(LABEL_NAMES):
      if counts[c] == 0:
        reasons = [why for rel, why in self.skipped if label_of.get(rel) == c]
        raise ValueError(
            f"{self.name}: class '{name}' is empty: {found[c]} file(s) found for it "
            f'under {root}, {found[c] - counts[c]} of them skipped ({self.num_skipped} '
            f'skipped in all; expected {self.LAYOUT_HINT})'
            + self._screen_hint(found[c], reasons))
    return counts

  def _screen_hint(self, num_found: int, reasons: Sequence[str]) -> str:
    """Ready crops built as raw frames fail the screen search one by one,
    which reads like a folder of broken files: say what to set instead."""
    screen = sum(r.startswith((preprocess.NO_SCREEN, preprocess.SCREEN_SEARCH_FAILED))
                 for r in reasons)
    if self.builder_config.roi != 'hough' or not screen or 2 * screen <= num_found:
      return ''
    return (f': {screen} of them failed the screen search, which looks for a phone in '
            f'a raw camera frame; if these images are already crops, build them with '
            f'{self.CROPS_HINT}')

  def _assign(self, examples, groups) -> tuple[dict[str, list[int]], list[str]]:
    """Split and fold members (indices), stratified by label and defect type,
    and a line for each split or fold that misses its class targets."""
    cfg = self.builder_config
    labels = [ex['label'] for ex in examples]
    types = [ex['defect_type'] for ex in examples]
    split_of = splits.stratified_split(labels, cfg.fractions, cfg.seed, groups, types)
    fold_of = splits.stratified_kfold(labels, cfg.num_folds, cfg.seed, groups, types)
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
    names = [LABEL_NAMES[l] for l in labels]
    warnings = splits.imbalance(names, fold_of, [1 / cfg.num_folds] * cfg.num_folds,
                                splits.kfold_split_names(cfg.num_folds))
    warnings += splits.imbalance(names, [splits.SPLIT_NAMES.index(s) for s in split_of],
                                 cfg.fractions, splits.SPLIT_NAMES)
    return members, warnings

  def _source_line(self, sizes, num_gray: int) -> str:
    hw = np.asarray(sizes)
    lo, hi = hw.min(0), hw.max(0)
    size = (f'{hi[1]}x{hi[0]}' if (lo == hi).all()
            else f'{lo[1]}-{hi[1]} x {lo[0]}-{hi[0]}')
    kind = 'gray' if num_gray == len(sizes) else 'RGB' if not num_gray else 'mixed'
    return f'{len(sizes)} files, {size} {kind}'

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    root = self._root(dl_manager)
    self.skipped, self.notes = [], []
    sources = self._find_sources(root)
    kept, examples, sizes, num_gray, enlarged = self._read_all(sources)
    counts = self._check_classes(sources, examples, root)
    groups = splits.near_duplicate_groups(
        [ex['image'] for ex in examples], threshold=cfg.near_dup_threshold,
        extra_pairs=self._extra_pairs(kept))
    for ex, g in zip(examples, groups):
      ex['group'] = np.int32(g)
    members, warnings = self._assign(examples, groups)
    line = cfg.preprocessing.describe(self._source_line(sizes, num_gray), num_gray,
                                      len(sizes))
    card = card_lib.make(
        name=f'{self.name}/{cfg.name}', preprocessing=line, members=members,
        source={'root': str(root), 'fingerprint': cfg.source_fingerprint,
                'num_files': len(sources)},
        labels=[LABEL_NAMES[ex['label']] for ex in examples],
        defect_types=[ex['defect_type'] for ex in examples],
        files=[ex['file_name'] for ex in examples], groups=groups,
        skipped=self.skipped, warnings=self.notes + warnings, enlargement=enlarged)
    md = self.info.metadata
    md.update(card=card, skipped=self.skipped, num_skipped=self.num_skipped,
              num_examples={n: int(c) for n, c in zip(LABEL_NAMES, counts)},
              num_groups=int(max(groups) + 1), preprocessing=cfg.preprocessing.to_dict(),
              near_dup_threshold=int(cfg.near_dup_threshold), seed=int(cfg.seed),
              num_folds=int(cfg.num_folds), fractions=[float(f) for f in cfg.fractions])
    md['split_counts'] = card['classes']
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


def class_folders(root: pathlib.Path) -> list[str]:
  """Names of the top-level folders that can hold a class (not hidden)."""
  return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith('.'))


def read_overrides(root: pathlib.Path) -> dict:
  """classes.json as {lower-case folder name: entry}; {} when there is none.

  Every key must name a top-level folder (case-insensitive): a key that
  matches none is a typo whose folder would silently take the default label."""
  cfile = root / CLASSES_FILE
  if not cfile.is_file():
    return {}
  try:
    raw = json.loads(cfile.read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f'{cfile}: not valid JSON ({e})') from None
  if not isinstance(raw, dict):
    raise ValueError(f'{cfile}: expected an object mapping folder names to classes')
  folders = {name.lower(): name for name in class_folders(root)}
  override = {}
  for key, entry in raw.items():
    low = str(key).lower()
    if low in override:
      raise ValueError(f'{cfile}: keys {key!r} and another differ only in case; '
                       'keep one')
    if low not in folders:
      close = difflib.get_close_matches(low, list(folders), n=1, cutoff=0.6)
      hint = f' (did you mean {folders[close[0]]!r}?)' if close else ''
      raise ValueError(
          f'{cfile}: key {key!r} names no folder in {root}{hint}; folders there: '
          f'{", ".join(folders.values()) or "none"}; fix the key or rename the folder')
    override[low] = entry
  return override


def folder_classes(root: pathlib.Path, override: dict | None = None
                   ) -> dict[str, tuple[int, str] | None]:
  """Top-level folder name -> (label, defect_type), or None when ignored.
  override: `read_overrides(root)`, read here when not given."""
  override = read_overrides(root) if override is None else override
  out = {}
  for name in class_folders(root):
    if name.lower() in override:
      out[name] = _parse_spec(name, override[name.lower()])
    elif name.lower() in IGNORED_DIRS:
      out[name] = None
    elif name.lower() in GOOD_NAMES:
      out[name] = (GOOD, 'none')
    else:
      out[name] = (DEFECTIVE, name.lower())
  return out


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
      FolderConfig(name='roi', roi='hough',
                   description='Raw camera frames: find the screen (Hough) and '
                               'rectify it to config.data.image_size.'),
      # Near-duplicate threshold 22 was tuned on screen ROIs; on other crops it
      # chained hundreds of images into one group, so crops use 6.
      FolderConfig(name='none', roi='none', near_dup_threshold=6,
                   description='Already-cropped images: the whole image to '
                               'config.data.image_size by the aspect policy.'),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'roi'

  CROPS_HINT = 'config.data.builder_config=none'

  def _find_sources(self, root: pathlib.Path) -> list[Source]:
    override = read_overrides(root)
    classes = folder_classes(root, override)
    defaulted = [n for n, c in classes.items()
                 if n.lower() not in override and c and c[0] == DEFECTIVE]
    if override and defaulted:
      self.notes.append(
          f'{CLASSES_FILE} does not name folder(s) {", ".join(defaulted)}: labelled '
          'defective by the default rule; name them in it if that is wrong')
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
