"""Inference from a training run's workdir: load it, score ROIs, score frames.

  predictor = inference.Predictor('runs/beta_c')        # best checkpoint
  probs = predictor.predict_proba(rois_rgb_uint8)       # (N, 110, 230, 3) -> (N,)
  for result in inference.score_frames(predictor, paths):  # raw camera frames
    print(result.path, result.prob, result.error)

What a workdir must hold (written by `train.train_and_evaluate`):
config.json, data_stats.json (optional when config.data.normalize is 'fixed'),
checkpoints_best/<step>/ + best.json and/or checkpoints/<step>/, and
optionally threshold.json ({"threshold": t}; the decision threshold on the
defect probability, 0.5 when absent).

Which checkpoint: the best one (checkpoints_best/, the step best.json names)
unless a step is asked for; without a best checkpoint, the latest periodic
one (`Predictor.run.note` says which was used and why).

The defect probability is softmax(logits)[:, 1] of the model on the
normalised RGB ROI, `(pixel - mean) / std` with the run's data_stats.json:
the same arithmetic as `input_pipeline.normalize_np`, done inside the jitted
function so only uint8 pixels travel to the device. The scoring function has a
fixed batch size (the last batch is zero-padded), so it compiles once.

Frame reading never lets one bad file stop a batch: every problem (unreadable,
truncated or non-image file, a frame too large, no screen found) becomes a
`FrameResult` with `error` set. Huge images are refused from their header
before any pixel is decoded (`image_header`: JPEG SOF, PNG IHDR and BMP
headers are parsed here directly; other formats that OpenCV decodes are
checked after decoding).

Heavy modules (TensorFlow through `train`, Orbax, Flax) are imported only when
a Predictor is built, so `resolve_run` can refuse a bad workdir in well under
a second (predict.py's usage errors).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import pathlib
import struct
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_THRESHOLD = 0.5
DEFAULT_MAX_PIXELS = 40_000_000
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
ROI_METHODS = ('hough', 'none')
# input_pipeline.FIXED_STATS, repeated so this module need not import
# TensorFlow; tests check the two agree.
FIXED_STATS = {'mean': [127.5, 127.5, 127.5], 'std': [127.5, 127.5, 127.5]}


# ------------------------------------------------------------------ the run


@dataclasses.dataclass(frozen=True)
class RunFiles:
  """What inference reads from a workdir (resolved without loading arrays).

  source: 'best', 'periodic' (asked for by step) or 'latest periodic' (no
  best checkpoint); note: one line saying which checkpoint and why.
  """
  workdir: str
  config: dict
  stats: dict
  stats_source: str
  checkpoint_dir: str
  step: int
  source: str
  note: str
  threshold: float
  threshold_source: str


def run_config(saved: dict):
  """A run's saved config on top of today's defaults: a run saved before a
  field existed gets the field's default (which reproduces the old behaviour:
  new fields default to what the code did before they existed)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  try:
    from configs import default  # pylint: disable=import-outside-toplevel
  except ImportError:  # Outside the repository: the saved config alone.
    return ml_collections.ConfigDict(saved)
  config = default.get_config()
  flat = ml_collections.ConfigDict(saved).to_dict()

  def merge(base, values, prefix):
    for key, value in values.items():
      if key not in base:
        raise ValueError(f'saved config field {prefix}{key} is unknown to this '
                         'version of smsdd_jax')
      if isinstance(value, dict) and isinstance(base[key], ml_collections.ConfigDict) \
          and key != 'extra':
        merge(base[key], value, f'{prefix}{key}.')
      else:
        base[key] = value

  merge(config, flat, 'config.')
  return config


def _steps(directory: str) -> list[int]:
  """Finished Orbax steps in `directory` (unfinished saves have other names)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory)
                if n.isdigit() and os.path.isdir(os.path.join(directory, n)))


def _read_json(path: str, what: str) -> Any:
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f'cannot read {what} {path}: {e}') from None


def resolve_run(workdir: str, step: Optional[int] = None) -> RunFiles:
  """Finds config, stats, threshold and the checkpoint to use in `workdir`.

  Raises FileNotFoundError (missing/empty workdir, no checkpoints) or
  ValueError (unreadable files, no such step), each with a one-line message
  naming the path.
  """
  workdir = os.path.abspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'workdir {workdir} does not exist')
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(config_path):
    what = 'is empty' if not os.listdir(workdir) else 'has no config.json'
    raise FileNotFoundError(f'workdir {workdir} {what}: not a training run')
  info = _read_json(config_path, 'run config')
  if not isinstance(info, dict) or not isinstance(info.get('config'), dict):
    raise ValueError(f'run config {config_path} has no "config" entry')
  config = info['config']

  stats_path = os.path.join(workdir, 'data_stats.json')
  if os.path.isfile(stats_path):
    stats = _read_json(stats_path, 'normalisation stats')
    stats_source = f'{stats.get("normalize", "?")} ({stats_path})'
  elif config.get('data', {}).get('normalize', 'fixed') == 'fixed':
    stats, stats_source = FIXED_STATS, 'fixed (no data_stats.json; config says fixed)'
  else:
    raise FileNotFoundError(
        f'{stats_path} is missing and the run normalised with '
        f'{config["data"]["normalize"]!r} stats: cannot reproduce its input')
  for key in ('mean', 'std'):
    if len(np.asarray(stats.get(key, []), np.float64).reshape(-1)) != 3:
      raise ValueError(f'{stats_path}: "{key}" must be 3 numbers, got {stats.get(key)!r}')

  threshold_path = os.path.join(workdir, 'threshold.json')
  if os.path.isfile(threshold_path):
    entry = _read_json(threshold_path, 'threshold file')
    try:
      threshold = float(entry['threshold'])
    except (KeyError, TypeError, ValueError):
      raise ValueError(f'{threshold_path}: expected {{"threshold": <number>}}, '
                       f'got {entry!r}') from None
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f'{threshold_path}: threshold {threshold} is not in [0, 1]')
    threshold_source = threshold_path
  else:
    threshold, threshold_source = DEFAULT_THRESHOLD, 'default (no threshold.json)'

  periodic_dir = os.path.join(workdir, 'checkpoints')
  best_dir = os.path.join(workdir, 'checkpoints_best')
  periodic, best_steps = _steps(periodic_dir), _steps(best_dir)
  best = None  # (step, description)
  if best_steps:
    best_step, desc = best_steps[-1], 'best checkpoint'
    best_json = os.path.join(workdir, 'best.json')
    if os.path.isfile(best_json):
      entry = _read_json(best_json, 'best checkpoint record')
      if entry.get('step') in best_steps:
        best_step = int(entry['step'])
        desc = f'best checkpoint ({entry.get("metric")}={entry.get("value")})'
    best = (best_step, desc)

  def files(directory, chosen, source, note):
    return RunFiles(workdir, config, stats, stats_source, directory, chosen, source,
                    note, threshold, threshold_source)

  if step is not None:
    if step in periodic:
      return files(periodic_dir, step, 'periodic',
                   f'periodic checkpoint step {step} (asked for)')
    if best is not None and step == best[0]:
      return files(best_dir, step, 'best', f'{best[1]} step {step} (asked for)')
    raise ValueError(
        f'no checkpoint for step {step} in {workdir}: periodic steps '
        f'{periodic or "none"}, best step {best[0] if best else "none"}')
  if best is not None:
    return files(best_dir, best[0], 'best', f'{best[1]} step {best[0]}')
  if periodic:
    return files(periodic_dir, periodic[-1], 'latest periodic',
                 f'latest periodic checkpoint step {periodic[-1]} (no best '
                 f'checkpoint in {best_dir})')
  raise FileNotFoundError(f'no checkpoints in {workdir} (looked in checkpoints_best/ '
                          'and checkpoints/)')


# ------------------------------------------------------------------ the model


def probabilities(params, model_state, images_uint8: jax.Array, *, model,
                  mean, std) -> jax.Array:
  """Pure: uint8 RGB ROIs (N, H, W, 3) -> defect probabilities (N,) float32.
  Normalisation included (the arithmetic of input_pipeline.normalize_np)."""
  from smsdd_jax import models  # pylint: disable=import-outside-toplevel
  x = (images_uint8.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / \
      jnp.asarray(std, jnp.float32)
  logits, _ = models.forward(params, x, model=model, model_state=model_state,
                             train=False)
  return jax.nn.softmax(logits)[:, 1]


class Predictor:
  """A restored run: `predict_proba` on uint8 RGB ROIs, at a fixed batch size.

  Attributes: run (RunFiles: step, note, threshold, ...), config
  (ConfigDict), model, params, model_state, image_size (h, w), batch_size,
  threshold, traces (times the scoring function was traced: 1 after use).
  """

  def __init__(self, workdir: str, *, step: Optional[int] = None,
               batch_size: int = 16):
    if batch_size < 1:
      raise ValueError(f'batch_size={batch_size}: must be >= 1')
    self.run = resolve_run(workdir, step)
    # pylint: disable=import-outside-toplevel
    import ml_collections
    from smsdd_jax import checkpointing, models, train
    self.config = run_config(self.run.config)
    self.model = models.create(self.config.model)
    self.image_size = tuple(int(v) for v in self.config.data.image_size)
    # The restore target: create_train_state's structure, shapes and dtypes
    # via eval_shape (initialising the real arrays compiles the model's init:
    # 16 s on CPU at 1/16 width, for values that are overwritten anyway),
    # each leaf placed on this process's first device whatever sharding the
    # training run saved with.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
        jax.eval_shape(lambda: train.create_train_state(
            self.config, self.model, train.make_optimizer(self.config.optimizer))))
    ckpt = checkpointing.Checkpointer(self.run.checkpoint_dir, max_to_keep=1)
    try:
      state = ckpt.restore(target, self.run.step)
    finally:
      ckpt.close()
    self.params, self.model_state = state.params, state.model_state
    self.mean = np.asarray(self.run.stats['mean'], np.float32)
    self.std = np.asarray(self.run.stats['std'], np.float32)
    self.threshold = self.run.threshold
    self.batch_size = int(batch_size)
    self.traces = 0

    def score(params, model_state, images):
      self.traces += 1  # Runs while tracing only.
      return probabilities(params, model_state, images, model=self.model,
                           mean=self.mean, std=self.std)

    self._score = jax.jit(score)

  def describe(self) -> str:
    return (f'{self.run.workdir}: {self.run.note}; threshold {self.threshold:g} '
            f'[{self.run.threshold_source}]; normalisation {self.run.stats_source}')

  def inference_fn(self) -> Callable[[jax.Array], jax.Array]:
    """images_uint8 -> probabilities, with this run's parameters closed over
    (what export.py serialises)."""
    params, model_state = self.params, self.model_state
    return lambda images: probabilities(params, model_state, images, model=self.model,
                                        mean=self.mean, std=self.std)

  def predict_proba(self, images_rgb_uint8: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB ROIs at the run's image size -> (N,) float32."""
    images = np.asarray(images_rgb_uint8)
    want = (*self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != want or images.dtype != np.uint8:
      raise ValueError(f'expected uint8 images of shape (N, {want[0]}, {want[1]}, 3), '
                       f'got {images.dtype} {images.shape}')
    out = []
    for i in range(0, len(images), self.batch_size):
      chunk = images[i:i + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:  # Pad: one shape, one compile.
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - n, *want), np.uint8)])
      out.append(np.asarray(self._score(self.params, self.model_state, chunk))[:n])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)

  def decide(self, prob: float) -> str:
    return 'defective' if prob >= self.threshold else 'good'


# ------------------------------------------------------------------ reading files


class FrameError(ValueError):
  """One input file cannot be scored; the message says why, in one line."""


# JPEG start-of-frame markers (all coding processes); C4, C8, CC are not SOFs.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
             0xCE, 0xCF}
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _read_exact(f, n: int, what: str) -> bytes:
  data = f.read(n)
  if len(data) < n:
    raise FrameError(f'truncated {what}: file ends inside its header')
  return data


def _jpeg_header(f) -> tuple[int, int]:
  """(width, height) from the first SOF segment, reading only the header
  segments (APPn/EXIF etc. are skipped by their lengths)."""
  f.seek(2)
  stray = 0
  while True:
    byte = f.read(1)
    if not byte:
      raise FrameError('truncated JPEG: file ends before the frame header')
    if byte != b'\xff':
      stray += 1  # Stray bytes between segments; libjpeg skips a few too.
      if stray > 4096:
        raise FrameError(f'corrupt JPEG: no segment marker near offset {f.tell()}')
      continue
    marker = _read_exact(f, 1, 'JPEG')[0]
    while marker == 0xFF:  # Fill bytes.
      marker = _read_exact(f, 1, 'JPEG')[0]
    if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
      continue  # Markers without a length.
    if marker == 0xD9:
      raise FrameError('corrupt JPEG: end-of-image before any frame header')
    length = struct.unpack('>H', _read_exact(f, 2, 'JPEG'))[0]
    if length < 2:
      raise FrameError(f'corrupt JPEG: segment 0xFF{marker:02X} has length {length}')
    if marker in _JPEG_SOF:
      _, height, width = struct.unpack('>BHH', _read_exact(f, 5, 'JPEG'))
      if height == 0 or width == 0:
        raise FrameError(f'unsupported JPEG: frame header gives size {width}x{height}')
      return width, height
    if marker == 0xDA:
      raise FrameError('corrupt JPEG: image data before any frame header')
    f.seek(length - 2, os.SEEK_CUR)


def image_header(path: str) -> tuple[Optional[str], Optional[int], Optional[int]]:
  """(format, width, height) read from the file's header alone, without
  decoding: 'jpeg' (SOF segment), 'png' (IHDR), 'bmp' (BITMAPINFOHEADER).
  (None, None, None) for any other content. Raises FrameError for a header
  that is recognisably one of these formats but cut short or invalid, and
  OSError when the file cannot be opened."""
  with open(path, 'rb') as f:
    head = f.read(26)
    if head[:3] == b'\xff\xd8\xff':
      return ('jpeg', *_jpeg_header(f))
    if head[:8] == _PNG_SIGNATURE:
      if len(head) < 24 or head[12:16] != b'IHDR':
        raise FrameError('corrupt PNG: no IHDR header')
      width, height = struct.unpack('>II', head[16:24])
      return 'png', width, height
    if head[:2] == b'BM' and len(head) >= 26:
      width, height = struct.unpack('<ii', head[18:26])
      return 'bmp', abs(width), abs(height)
  return None, None, None


def _jpeg_complete(data: bytes) -> bool:
  """Whether the JPEG's marker structure reaches its end-of-image marker.

  OpenCV (libjpeg) decodes a truncated JPEG without an error, filling the
  missing rows with grey and printing a warning; this walk catches it. In
  the entropy-coded data a 0xFF byte is always followed by 0x00 (stuffing)
  or a restart marker, so the first other marker ends the scan."""
  n, i = len(data), 2
  while i < n:
    if data[i] != 0xFF:
      i = data.find(b'\xff', i)  # Stray bytes between segments.
      if i < 0:
        return False
    while i < n and data[i] == 0xFF:
      i += 1
    if i >= n:
      return False
    marker = data[i]
    i += 1
    if marker == 0xD9:
      return True
    if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
      continue
    if i + 2 > n:
      return False
    i += struct.unpack('>H', data[i:i + 2])[0]
    if marker != 0xDA:
      continue
    while True:  # Entropy-coded data after a start-of-scan.
      j = data.find(b'\xff', i)
      if j < 0 or j + 1 >= n:
        return False
      nxt = data[j + 1]
      if nxt == 0x00 or 0xD0 <= nxt <= 0xD7:
        i = j + 2
        continue
      i = j
      break
  return False


def _png_complete(data: bytes) -> bool:
  """Whether the PNG's chunk chain is whole up to IEND."""
  i, n = 8, len(data)
  while i + 8 <= n:
    length = struct.unpack('>I', data[i:i + 4])[0]
    kind = data[i + 4:i + 8]
    i += 12 + length  # length, type, data, crc
    if i > n:
      return False
    if kind == b'IEND':
      return True
  return False


def read_image(path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """The file as an (H, W, 3) uint8 BGR image, or FrameError saying why not.

  The size limit is applied to JPEG/PNG/BMP headers before anything is
  decoded; other formats OpenCV can read are decoded, then checked."""
  try:
    if os.path.getsize(path) == 0:
      raise FrameError('empty file')
    fmt, width, height = image_header(path)
    if fmt is not None and width * height > max_pixels:
      raise FrameError(f'image too large: {width}x{height} = {width * height / 1e6:.1f} '
                       f'MP > max_pixels {max_pixels / 1e6:g} MP (from the {fmt.upper()} '
                       'header; not decoded)')
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise FrameError(f'cannot read file: {e.strerror or e}') from None
  if fmt == 'jpeg' and not _jpeg_complete(data):
    raise FrameError(f'truncated JPEG: no end-of-image marker in its {len(data)} '
                     'bytes (file cut short?)')
  if fmt == 'png' and not _png_complete(data):
    raise FrameError(f'truncated PNG: chunks end before IEND in its {len(data)} bytes')
  try:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  except cv2.error as e:
    raise FrameError(f'cannot decode image: {str(e).strip().splitlines()[-1]}') from None
  if image is None:
    if fmt is None:
      raise FrameError(f'not an image: unrecognised content (starts with {data[:8]!r})')
    raise FrameError(f'corrupt {fmt.upper()}: OpenCV could not decode it')
  if image.shape[0] * image.shape[1] > max_pixels:
    raise FrameError(f'image too large: {image.shape[1]}x{image.shape[0]} > max_pixels '
                     f'{max_pixels / 1e6:g} MP (checked after decoding: format without '
                     'a parsed header)')
  return image


# ------------------------------------------------------------------ frames


@dataclasses.dataclass
class FrameResult:
  """One input file's outcome. prob/decision are None when error is set.

  roi_method: 'hough' or 'contour' (which detector found the screen; see
  roi.ScreenInfo.method), 'none' (the file is already an ROI), '' (failed
  before). corners: (4, 2) float32 tl, tr, br, bl in frame pixels, or None.
  roi: the (H, W, 3) uint8 RGB ROI that was scored, or None.
  """
  path: str
  prob: Optional[float] = None
  decision: Optional[str] = None
  roi_method: str = ''
  corners: Optional[np.ndarray] = None
  roi: Optional[np.ndarray] = None
  error: str = ''
  source_size: Optional[tuple[int, int]] = None  # (width, height) of the file.

  @property
  def ok(self) -> bool:
    return not self.error


def extract_roi(image_bgr: np.ndarray, roi_method: str,
                size: Sequence[int]) -> tuple[np.ndarray, Optional[np.ndarray], str]:
  """(roi_rgb (h, w, 3) uint8, corners or None, method) from a BGR image.

  'hough': roi.find_screen_with_info + roi.rectify (raises
  roi.ScreenNotFoundError); 'none': the image is already an ROI, resized
  to `size` (area interpolation) if it differs."""
  from smsdd_jax import roi  # pylint: disable=import-outside-toplevel
  h, w = int(size[0]), int(size[1])
  if roi_method == 'hough':
    corners, info = roi.find_screen_with_info(image_bgr)
    bgr = roi.rectify(image_bgr, corners, size=(h, w))
    method = info.method
  elif roi_method == 'none':
    corners, method = None, 'none'
    bgr = image_bgr
    if bgr.shape[:2] != (h, w):
      shrink = bgr.shape[0] >= h and bgr.shape[1] >= w
      bgr = cv2.resize(bgr, (w, h),
                       interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
  else:
    raise ValueError(f'roi_method={roi_method!r}: expected one of {ROI_METHODS}')
  return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)), corners, method


def prepare_frame(path: str, *, roi_method: str = 'hough', size: Sequence[int] = (110, 230),
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> FrameResult:
  """Reads a file and extracts its ROI. Never raises for bad input: the
  reason goes into `error`."""
  result = FrameResult(path=str(path))
  try:
    image = read_image(str(path), max_pixels=max_pixels)
    result.source_size = (image.shape[1], image.shape[0])
    result.roi, result.corners, result.roi_method = extract_roi(image, roi_method, size)
  except FrameError as e:
    result.error = str(e)
  except ValueError as e:  # roi.ScreenNotFoundError and friends.
    name = type(e).__name__
    prefix = 'no screen found' if name == 'ScreenNotFoundError' else name
    result.error = f'{prefix}: {_one_line(e)}'
  except (MemoryError, cv2.error, OSError) as e:
    result.error = f'{type(e).__name__}: {_one_line(e)}'
  except Exception as e:  # pylint: disable=broad-except
    # A bug in ROI search on one odd frame must not lose the other rows.
    result.error = f'internal error {type(e).__name__}: {_one_line(e)}'
  return result


def _one_line(e: BaseException) -> str:
  lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
  return ' | '.join(lines) if len(lines) <= 2 else lines[-1]


def score_frames(predictor: Predictor, paths: Iterable[str], *, roi_method: str = 'hough',
                 max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 1
                 ) -> Iterator[list[FrameResult]]:
  """Yields, per chunk of `predictor.batch_size` input files in order, their
  FrameResults with prob and decision filled in for those that succeeded.

  Reading and ROI search run on `workers` threads (OpenCV releases the GIL);
  each chunk's ROIs are scored with one padded call."""
  paths = list(paths)
  prepare = lambda p: prepare_frame(p, roi_method=roi_method, size=predictor.image_size,
                                    max_pixels=max_pixels)
  pool = (concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None)
  try:
    for i in range(0, len(paths), predictor.batch_size):
      chunk = paths[i:i + predictor.batch_size]
      results = list(pool.map(prepare, chunk) if pool else map(prepare, chunk))
      good = [r for r in results if r.ok]
      if good:
        probs = predictor.predict_proba(np.stack([r.roi for r in good]))
        for r, p in zip(good, probs):
          r.prob = float(p)
          r.decision = predictor.decide(r.prob)
      yield results
  finally:
    if pool:
      pool.shutdown()


def list_inputs(spec: str, *, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """Files named by `spec`: a file (taken whatever its name), a folder
  (recursive, image extensions only) or a glob pattern (recursive `**`
  allowed; every matching file). Sorted; [] when nothing matches."""
  import glob  # pylint: disable=import-outside-toplevel
  if os.path.isfile(spec):
    return [spec]
  if os.path.isdir(spec):
    root = pathlib.Path(spec)
    return sorted(str(p) for p in root.rglob('*')
                  if p.is_file() and p.suffix.lower() in extensions)
  if glob.has_magic(spec):
    return sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
  return []
