"""The working image both detectors share: input checks, the downscaled
blurred gray frame, the mat's level along each border, Canny thresholds.

The mat (the dark grey textured surface the phone lies on) is read on the
frame's outermost pixels, where (almost) only mat is seen; a phone reaching a
border is patched over by interpolation (`_repair_profiles`).
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from smsdd_jax.roi.geometry import ScreenNotFoundError

MIN_SIZE = (160, 90)           # (width, height) below which we refuse.
WORK_WIDTH = 960               # working width for detection (px).


def validate(image: np.ndarray) -> np.ndarray:
  """The image itself if it is a large enough uint8 BGR frame; raises
  ScreenNotFoundError otherwise."""
  if not isinstance(image, np.ndarray):
    raise ScreenNotFoundError(
        f'expected a numpy BGR image, got {type(image).__name__}')
  if image.ndim != 3 or image.shape[2] != 3:
    raise ScreenNotFoundError(
        f'expected a 3-channel BGR image, got shape {tuple(image.shape)}')
  h, w = image.shape[:2]
  if w < MIN_SIZE[0] or h < MIN_SIZE[1]:
    raise ScreenNotFoundError(
        f'image too small: {w}x{h} < {MIN_SIZE[0]}x{MIN_SIZE[1]} minimum')
  if image.dtype != np.uint8:
    raise ScreenNotFoundError(f'expected a uint8 image, got {image.dtype}')
  return image


@dataclasses.dataclass
class Work:
  """The downscaled frame and what both detectors share.

  The mat is read on the frame's border ring, where (almost) only mat is
  seen. Its lighting is uneven (on the real frames it reads ~100 at the top
  and ~45 in a dark corner), so the mat level is kept per position along each
  border: `profiles['top'][x]`, `['bottom'][x]`, `['left'][y]`,
  `['right'][y]`; a side is compared with the border beyond it.
  """
  blur: np.ndarray        # blurred gray, uint8, working size.
  scale: float            # working / full.
  profiles: dict          # border name -> float32 mat level along it.

  def mat_image(self) -> np.ndarray:
    """Mat level everywhere: Coons-patch blend of the four border profiles."""
    h, w = self.blur.shape
    t, b = self.profiles['top'][None, :], self.profiles['bottom'][None, :]
    l, r = self.profiles['left'][:, None], self.profiles['right'][:, None]
    u = np.linspace(0.0, 1.0, w, dtype=np.float32)[None, :]
    v = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None]
    corners = ((1 - u) * (1 - v) * t[0, 0] + u * (1 - v) * t[0, -1] +
               (1 - u) * v * b[0, 0] + u * v * b[0, -1])
    return (1 - v) * t + v * b + (1 - u) * l + u * r - corners


def _profile(strip: np.ndarray) -> np.ndarray:
  """Gray level along a border strip (rows = across, cols = along)."""
  prof = np.median(strip, axis=0).astype(np.uint8).reshape(1, -1)
  k = min(255, max(3, (prof.shape[1] // 24) | 1))  # texture, small specks.
  return cv2.medianBlur(np.ascontiguousarray(prof), k).ravel().astype(
      np.float32)


def _repair_profiles(profiles: dict) -> dict:
  """Replaces where a phone reaches a border by the mat interpolated on
  either side of it.

  A border's profile is trusted near the frame's corners (rounded phones
  leave them to the mat); in between, a stretch more than 25 gray levels
  off the straight line between its two end levels, or white (> mode + 60)
  or black-glass dark (< 0.45 * mode; the mat's darkest corners on the real
  frames read ~0.5x its mode, black glass ~0.25x), is phone, not mat.
  """
  allv = np.concatenate(list(profiles.values()))
  hist = np.convolve(np.bincount(allv.astype(np.int64), minlength=256),
                     np.ones(9), mode='same')
  mode = float(np.argmax(hist))
  out = {}
  for name, prof in profiles.items():
    n = len(prof)
    k = max(2, n // 30)
    a, b = float(np.median(prof[:k])), float(np.median(prof[-k:]))
    chord = np.linspace(a, b, n, dtype=np.float32)
    bad = ((np.abs(prof - chord) > 25.0) | (prof > mode + 60.0) |
           (prof < 0.45 * mode))
    if bad.all():
      out[name] = np.full_like(prof, mode)
    elif bad.any():
      idx = np.arange(n)
      out[name] = np.interp(idx, idx[~bad], prof[~bad]).astype(np.float32)
    else:
      out[name] = prof
  return out


def working_image(image: np.ndarray) -> Work:
  """Downscales to WORK_WIDTH, grayscale, 5x5 Gaussian blur; reads the mat."""
  h, w = image.shape[:2]
  scale = min(1.0, WORK_WIDTH / float(w))
  if scale < 1.0:
    small = cv2.resize(image, (round(w * scale), round(h * scale)),
                       interpolation=cv2.INTER_AREA)
  else:
    small = image
  gray = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
  blur = cv2.GaussianBlur(gray, (5, 5), 0)
  r = 4  # the outermost pixels: phones come within ~5 px of the border.
  profiles = _repair_profiles({
      'top': _profile(blur[:r]),
      'bottom': _profile(blur[-r:]),
      'left': _profile(blur[:, :r].T),
      'right': _profile(blur[:, -r:].T),
  })
  return Work(blur=blur, scale=scale, profiles=profiles)


def to_full(pts_work: np.ndarray, scale: float) -> np.ndarray:
  """Working-resolution (x, y) -> full-resolution, pixel centres at integers."""
  return ((np.asarray(pts_work, np.float64) + 0.5) / scale - 0.5).astype(
      np.float32)


def canny_thresholds(blur: np.ndarray) -> tuple[float, float]:
  """Canny thresholds from the mat texture's gradient level (border ring).

  Canny's default gradient is the L1 Sobel magnitude; the high threshold is
  a multiple of its median on the border ring, where (almost) only mat is
  seen (the median ignores a phone edge crossing the ring), so the texture
  stays below it and the phone's outline (contrast >= ~40 gray levels, a
  Sobel response of ~100 on the real frames) above it.
  """
  r = max(4, blur.shape[0] // 40)
  strips = [blur[:r + 2], blur[-r - 2:], blur[:, :r + 2], blur[:, -r - 2:]]
  mags = []
  for s in strips:
    gx = cv2.Sobel(s, cv2.CV_16S, 1, 0, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(s, cv2.CV_16S, 0, 1, borderType=cv2.BORDER_REPLICATE)
    mags.append((np.abs(gx[1:-1, 1:-1].astype(np.int32)) +
                 np.abs(gy[1:-1, 1:-1])).ravel())
  texture = float(np.median(np.concatenate(mags)))
  high = float(np.clip(5.0 * texture, 40.0, 150.0))
  return 0.5 * high, high
