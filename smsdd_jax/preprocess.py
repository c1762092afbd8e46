"""The one preprocessing path: image file -> model input.

Every builder, `predict`, `export` and `benchmark` turn a file into what the
model sees through this module, so training and prediction cannot drift:

  bytes --decode--> pixels --channels--> --roi or whole image--> --aspect-->
  --resize--> (height, width, 3) uint8 RGB

The size is the run's `config.data.image_size` (`Spec.size`; default
`ROI_SIZE`, the paper's 110 x 230), recorded with each build and each run.

* decode (`decode`, `read_image`): OpenCV, refusing what it would silently
  accept (a JPEG or PNG cut short decodes to grey rows without an error) and
  images too large to hold (from the header, before decoding). Bad input
  raises `BadImage` with a one-line reason.
* channels (`Spec.channels`): 'rgb' keeps colour and replicates a grayscale
  file to 3 channels (what the VGG16 expects); 'gray' turns colour into luma
  first, so colour cannot carry information the product does not have.
* roi (`Spec.roi`): 'hough' finds the phone's screen in a raw camera frame
  (`smsdd_jax.roi`) and warps it straight to the output size (the screen's
  quad becomes the whole output: no aspect policy applies); 'none' takes the
  whole image (ready crops).
* aspect (`Spec.aspect`, whole images only): 'stretch' resizes to the output
  size, changing the aspect ratio; 'letterbox' keeps it, scaled to fit and
  centred on black; 'rotate' turns a portrait image (taller than wide) a
  quarter turn clockwise first, then stretches (a 500 x 1250 crop becomes
  1250 x 500, near the output's 230:110, instead of being widened 5x).
* resize (`resize`): one rule everywhere: area averaging along an axis that
  shrinks (no aliasing of thin scratches), bilinear along one that grows.

`Spec.describe()` gives the one line a build prints ("300x300 gray ->
110x230 letterbox, gray replicated to 3 channels").

No TensorFlow or JAX here: serving imports this without them.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from smsdd_jax import roi
from smsdd_jax.roi import ROI_SIZE  # Re-exported: the builders and configs read it here.

# A side enlarged more than this many times carries little information of its
# own: the dataset card counts such images and names the worst (`enlargement`).
ENLARGEMENT_LIMIT = 4.0
# (pixel - mean) / std per RGB channel on [0, 255]: 'fixed' maps to [-1, 1].
FIXED_STATS = {'mean': [127.5, 127.5, 127.5], 'std': [127.5, 127.5, 127.5]}
ROI_MODES = ('hough', 'none')
ASPECTS = ('stretch', 'letterbox', 'rotate')
CHANNELS = ('rgb', 'gray')
DEFAULT_MAX_PIXELS = 40_000_000  # Bigger files are refused from their header.


class BadImage(ValueError):
  """A file that cannot become a model input; the message is the reason."""


# ----------------------------------------------------------------- the spec


@dataclasses.dataclass(frozen=True)
class Spec:
  """What is done to every image, recorded with each build and each run."""
  roi: str = 'none'  # 'hough' (raw frames) | 'none' (ready crops).
  aspect: str = 'stretch'  # Whole images only: 'stretch' | 'letterbox' | 'rotate'.
  channels: str = 'rgb'  # 'rgb' | 'gray'.
  size: tuple[int, int] = ROI_SIZE  # (height, width).

  def __post_init__(self):
    for field, allowed in (('roi', ROI_MODES), ('aspect', ASPECTS),
                           ('channels', CHANNELS)):
      if getattr(self, field) not in allowed:
        raise ValueError(f'preprocessing {field}={getattr(self, field)!r}: expected one '
                         f'of {allowed}')
    size = tuple(int(v) for v in self.size)
    if len(size) != 2 or min(size) < 1:
      raise ValueError(f'preprocessing size={self.size!r}: expected (height, width)')
    object.__setattr__(self, 'size', size)

  def to_dict(self) -> dict:
    return {'roi': self.roi, 'aspect': self.aspect, 'channels': self.channels,
            'size': list(self.size)}

  @classmethod
  def from_dict(cls, d: dict) -> 'Spec':
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: (tuple(v) if k == 'size' else v) for k, v in d.items() if k in known})

  def describe(self, source: str = '', num_gray: int = 0, num_files: int = 0) -> str:
    """One line: what came in and what the model gets."""
    h, w = self.size
    if self.roi == 'hough':
      how = f'screen found (Hough) and warped to {h}x{w}'
    else:
      how = f'{h}x{w} {self.aspect}'
    parts = [f'{source} -> {how}' if source else how]
    if self.channels == 'gray':
      parts.append('colour turned to gray, replicated to 3 channels')
    elif num_gray and num_gray == num_files:
      parts.append('gray replicated to 3 channels')
    elif num_gray:
      parts.append(f'{num_gray} gray file(s) replicated to 3 channels, the rest RGB')
    else:
      parts.append('RGB')
    return ', '.join(parts)


# ------------------------------------------------------------------ decoding

_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD,
             0xCE, 0xCF}  # Start-of-frame markers; C4, C8, CC are not SOFs.
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _take(data: bytes, i: int, n: int, what: str) -> bytes:
  if i + n > len(data):
    raise BadImage(f'truncated {what}: file ends inside its header')
  return data[i:i + n]


def _jpeg_size(data: bytes) -> tuple[int, int]:
  """(width, height) from the first SOF segment; APPn/EXIF skipped by length."""
  i, stray = 2, 0
  while True:
    if i >= len(data):
      raise BadImage('truncated JPEG: file ends before the frame header')
    if data[i] != 0xFF:
      stray, i = stray + 1, i + 1  # Stray bytes between segments; libjpeg skips some.
      if stray > 4096:
        raise BadImage(f'corrupt JPEG: no segment marker near offset {i}')
      continue
    while i < len(data) and data[i] == 0xFF:  # Fill bytes.
      i += 1
    marker = _take(data, i, 1, 'JPEG')[0]
    i += 1
    if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
      continue  # Markers without a length.
    if marker == 0xD9:
      raise BadImage('corrupt JPEG: end-of-image before any frame header')
    length = struct.unpack('>H', _take(data, i, 2, 'JPEG'))[0]
    if length < 2:
      raise BadImage(f'corrupt JPEG: segment 0xFF{marker:02X} has length {length}')
    if marker in _JPEG_SOF:
      _, height, width = struct.unpack('>BHH', _take(data, i + 2, 5, 'JPEG'))
      if not height or not width:
        raise BadImage(f'unsupported JPEG: frame header gives size {width}x{height}')
      return width, height
    if marker == 0xDA:
      raise BadImage('corrupt JPEG: image data before any frame header')
    i += length


def image_header(data: bytes) -> tuple[Optional[str], Optional[int], Optional[int]]:
  """(format, width, height) from the first bytes alone, without decoding:
  'jpeg', 'png' or 'bmp'; (None, None, None) for anything else. BadImage for
  a header that is one of these formats but cut short or invalid."""
  if data[:3] == b'\xff\xd8\xff':
    return ('jpeg', *_jpeg_size(data))
  if data[:8] == _PNG_SIGNATURE:
    if len(data) < 24 or data[12:16] != b'IHDR':
      raise BadImage('corrupt PNG: no IHDR header')
    return ('png', *struct.unpack('>II', data[16:24]))
  if data[:2] == b'BM' and len(data) >= 26:
    width, height = struct.unpack('<ii', data[18:26])
    return 'bmp', abs(width), abs(height)
  return None, None, None


def _jpeg_complete(data: bytes) -> bool:
  """Whether the JPEG's marker structure reaches its end-of-image marker.

  In entropy-coded data a 0xFF byte is followed by 0x00 (stuffing) or a
  restart marker, so the first other marker ends a scan."""
  n, i = len(data), 2
  while i < n:
    if data[i] != 0xFF:
      i = data.find(b'\xff', i)
      if i < 0:
        return False
    while i < n and data[i] == 0xFF:
      i += 1
    if i >= n:
      return False
    marker, i = data[i], i + 1
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
      if data[j + 1] == 0x00 or 0xD0 <= data[j + 1] <= 0xD7:
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


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
  """Image bytes -> (H, W) gray or (H, W, 3) BGR uint8; BadImage if it cannot.

  A grayscale file stays 2-D (the channel policy decides what becomes of
  it); 16-bit files are scaled to 8 bits; an alpha channel is dropped."""
  if not data:
    raise BadImage('empty file (0 bytes)')
  fmt, width, height = image_header(data)
  if fmt is not None and width * height > max_pixels:
    raise BadImage(f'image too large: {width}x{height} = {width * height / 1e6:.1f} MP > '
                   f'max_pixels {max_pixels / 1e6:g} MP (from the {fmt.upper()} header; '
                   'not decoded)')
  if fmt == 'jpeg' and not _jpeg_complete(data):
    raise BadImage(f'truncated JPEG: no end-of-image marker in its {len(data)} bytes '
                   '(file cut short?)')
  if fmt == 'png' and not _png_complete(data):
    raise BadImage(f'truncated PNG: chunks end before IEND in its {len(data)} bytes')
  try:
    image = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
  except cv2.error as e:
    raise BadImage(f'cannot decode image: {str(e).strip().splitlines()[-1]}') from None
  if image is None or image.size == 0:
    if fmt is None:
      raise BadImage(f'not an image: unrecognised content (starts with {data[:8]!r})')
    raise BadImage(f'corrupt {fmt.upper()}: OpenCV could not decode it')
  if image.shape[0] * image.shape[1] > max_pixels:
    raise BadImage(f'image too large: {image.shape[1]}x{image.shape[0]} > max_pixels '
                   f'{max_pixels / 1e6:g} MP')
  if image.dtype == np.uint16:
    image = (image >> 8).astype(np.uint8)
  elif image.dtype != np.uint8:
    raise BadImage(f'unsupported pixel type {image.dtype}')
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  elif image.ndim == 3 and image.shape[2] == 4:
    image = np.ascontiguousarray(image[..., :3])
  return image


def read_bytes(path: str | os.PathLike) -> bytes:
  """A file's bytes; BadImage naming why it cannot be read."""
  if os.path.islink(path) and not os.path.exists(path):
    raise BadImage(f'broken symbolic link (-> {os.readlink(path)})')
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except IsADirectoryError:
    raise BadImage('not a file (a directory)') from None
  except OSError as e:
    raise BadImage(f'unreadable file ({e.strerror or e})') from None
  if not data:
    raise BadImage('empty file (0 bytes)')
  return data


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS
               ) -> np.ndarray:
  """decode(read_bytes(path)): gray (H, W) or BGR (H, W, 3) uint8."""
  return decode(read_bytes(path), max_pixels=max_pixels)


# ------------------------------------------------------------------ geometry


def _resize_axis(image: np.ndarray, out: int, axis: int) -> np.ndarray:
  n = image.shape[axis]
  if n == out:
    return image
  h, w = image.shape[:2]
  size = (w, out) if axis == 0 else (out, h)
  return cv2.resize(image, size, interpolation=cv2.INTER_AREA if out < n else cv2.INTER_LINEAR)


def resize(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
  """Resizes to (height, width): area along an axis that shrinks, bilinear
  along one that grows (one axis at a time when they differ)."""
  out_h, out_w = int(size[0]), int(size[1])
  h, w = image.shape[:2]
  if (out_h <= h) == (out_w <= w):  # Both shrink or both grow: one call.
    if (h, w) == (out_h, out_w):
      return image
    shrink = out_h <= h
    return cv2.resize(image, (out_w, out_h),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
  # Shrink first, so the grown axis interpolates already averaged rows.
  first = 0 if out_h < h else 1
  image = _resize_axis(image, (out_h, out_w)[first], first)
  return _resize_axis(image, (out_h, out_w)[1 - first], 1 - first)


def fit(image: np.ndarray, size: Sequence[int], aspect: str) -> np.ndarray:
  """A whole image (2-D or H x W x C) to `size` by the aspect policy."""
  out_h, out_w = int(size[0]), int(size[1])
  if aspect == 'rotate':
    if image.shape[0] > image.shape[1]:  # Portrait: a quarter turn clockwise.
      image = cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    aspect = 'stretch'
  if aspect == 'stretch':
    return resize(image, (out_h, out_w))
  if aspect != 'letterbox':
    raise ValueError(f'aspect={aspect!r}: expected one of {ASPECTS}')
  h, w = image.shape[:2]
  s = min(out_w / w, out_h / h)
  nw, nh = max(1, min(out_w, round(w * s))), max(1, min(out_h, round(h * s)))
  small = resize(image, (nh, nw))
  out = np.zeros((out_h, out_w, *image.shape[2:]), image.dtype)
  y0, x0 = (out_h - nh) // 2, (out_w - nw) // 2
  out[y0:y0 + nh, x0:x0 + nw] = small
  return out


def enlargement(image_shape: Sequence[int], corners: np.ndarray, spec: Spec) -> float:
  """How many times the most enlarged side of what becomes the input grows
  (<= 1: nothing is enlarged). Per side, not per area: a 10 x 1000 strip
  stretched to 110 x 230 is enlarged 11x along its short side, which an area
  ratio (2.5x) would hide. For a screen the found quad's longer opposite
  sides count, as `roi.rectify` measures them."""
  out_h, out_w = spec.size
  if spec.roi == 'hough':
    q = np.asarray(corners, np.float64).reshape(4, 2)
    w = max(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[3]))
    h = max(np.linalg.norm(q[3] - q[0]), np.linalg.norm(q[2] - q[1]))
  else:
    h, w = image_shape[:2]
    if spec.aspect == 'rotate' and h > w:
      h, w = w, h
  h, w = max(float(h), 1e-6), max(float(w), 1e-6)
  if spec.roi != 'hough' and spec.aspect == 'letterbox':
    return min(out_h / h, out_w / w)  # One scale for both sides.
  return max(out_h / h, out_w / w)


def whole_image_corners(image: np.ndarray) -> np.ndarray:
  """(4, 2) float32 tl, tr, br, bl of the whole image, in pixels."""
  h, w = image.shape[:2]
  return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)


# How a BadImage from the screen search begins (builders tell these apart).
NO_SCREEN, SCREEN_SEARCH_FAILED = 'no screen found', 'screen search failed'


def _find_screen(image_bgr: np.ndarray) -> tuple[np.ndarray, str]:
  try:
    corners, info = roi.find_screen_with_info(image_bgr)
  except roi.ScreenNotFoundError as e:
    raise BadImage(f'{NO_SCREEN}: {e}') from None
  except (cv2.error, ValueError) as e:
    raise BadImage(f'{SCREEN_SEARCH_FAILED}: {str(e).strip().splitlines()[-1]}') from None
  return np.asarray(corners, np.float32).reshape(4, 2), str(info.method)


def to_model_input(image: np.ndarray, spec: Spec
                   ) -> tuple[np.ndarray, np.ndarray, str]:
  """Decoded pixels (gray or BGR) -> (rgb (h, w, 3) uint8, corners, method).

  corners: (4, 2) float32 tl, tr, br, bl of what became the input, in the
  source's pixels (the whole image for roi 'none'); method: 'hough' or
  'contour' (the detector that found the screen) or 'none'."""
  if image.ndim == 3 and spec.channels == 'gray':
    image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
  if spec.roi == 'hough':
    bgr = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    corners, method = _find_screen(bgr)
    out = roi.rectify(image, corners, size=spec.size)
  else:
    corners, method = whole_image_corners(image), 'none'
    out = fit(image, spec.size, spec.aspect)
  if out.ndim == 2:
    rgb = np.repeat(out[..., None], 3, axis=-1)
  else:
    rgb = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)
  return np.ascontiguousarray(rgb), corners, method


def load(path_or_bytes: Any, spec: Spec, *, max_pixels: int = DEFAULT_MAX_PIXELS
         ) -> tuple[np.ndarray, np.ndarray, str]:
  """A file (path or bytes) -> to_model_input(...); BadImage for bad input."""
  data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else \
      read_bytes(path_or_bytes)
  return to_model_input(decode(bytes(data), max_pixels=max_pixels), spec)


def normalize(images_uint8: np.ndarray, stats: dict) -> np.ndarray:
  """(pixel - mean) / std per channel, float32: what the model is fed."""
  mean = np.asarray(stats['mean'], np.float32)
  std = np.asarray(stats['std'], np.float32)
  return (np.asarray(images_uint8).astype(np.float32) - mean) / std
