"""The public API: find the phone's outline in a frame, say how, rectify it.

`find_screen_with_info` tries the Hough detector (`hough.hough_quad`) and,
only where it fails, the contour fallback (`contour.contour_quad`); the
outline either returns is scaled back to full resolution and must pass
`geometry.check_quad`. `rectify` warps the outline to the model's input size.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from smsdd_jax.roi.contour import contour_quad
from smsdd_jax.roi.geometry import (BORDER_TOLERANCE, ScreenNotFoundError,
                                    check_quad)
from smsdd_jax.roi.hough import hough_quad
from smsdd_jax.roi.work import to_full, validate, working_image

# (height, width) that `rectify` warps a screen to by default: the paper's
# 110 x 230, the model's default input (smsdd_jax.preprocess re-exports it).
ROI_SIZE = (110, 230)


@dataclasses.dataclass(frozen=True)
class ScreenInfo:
  """How a frame was served, with simple diagnostics.

  method: 'hough' (the paper's Hough core) or 'contour' (the fallback).
  hough_failure: why Hough was not used ('' when it was).
  scale: working resolution / full resolution.
  area_fraction: outline area / frame area.
  aspect: mean long side / mean short side of the outline.
  max_corner_deviation: worst |corner angle - 90| of the outline, degrees.
  segments: Hough segments found (near-horizontal + near-vertical).
  canny_thresholds: (low, high) used.
  frame_edge_sides: sides placed on the frame's edge because the phone ends
    right there (its rounded corners in view), e.g. ('right',).
  side_support: per side (top, right, bottom, left), the length of its edge
    support over the side's length (0 for a frame-edge side or 'contour').
  """
  method: str
  hough_failure: str
  scale: float
  area_fraction: float
  aspect: float
  max_corner_deviation: float
  segments: int
  canny_thresholds: tuple[float, float]
  frame_edge_sides: tuple[str, ...]
  side_support: tuple[float, float, float, float]

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def _check_full(q: np.ndarray, image: np.ndarray) -> tuple[float, float, float]:
  """check_quad on a full-resolution outline of `image`."""
  h, w = image.shape[:2]
  return check_quad(q, w, h, border_tol=BORDER_TOLERANCE * max(w, h))


def find_screen_with_info(
    image_bgr: np.ndarray) -> tuple[np.ndarray, ScreenInfo]:
  """(4, 2) float32 corners tl, tr, br, bl and how they were found."""
  image = validate(image_bgr)
  work = working_image(image)
  # Hough's diagnostics are kept for the fallback's ScreenInfo where Hough
  # found an outline that failed the check.
  diag = {'segments': 0, 'canny_thresholds': (0.0, 0.0),
          'frame_edge_sides': (), 'side_support': (0.0, 0.0, 0.0, 0.0)}
  try:
    q_work, diag = hough_quad(work)
    q = to_full(q_work, work.scale)
    frac, aspect, dev = _check_full(q, image)
    return q, ScreenInfo('hough', '', work.scale, frac, aspect, dev, **diag)
  except ScreenNotFoundError as e:
    hough_error = e
  try:
    q = to_full(contour_quad(work), work.scale)
    frac, aspect, dev = _check_full(q, image)
  except ScreenNotFoundError as e:
    if 'cut off' in str(e) and 'cut off' not in str(hough_error):
      raise ScreenNotFoundError(f'{e} (hough: {hough_error})') from None
    raise ScreenNotFoundError(
        f'{hough_error} (contour fallback: {e})') from None
  diag['frame_edge_sides'] = ()
  diag['side_support'] = (0.0, 0.0, 0.0, 0.0)
  return q, ScreenInfo('contour', str(hough_error), work.scale, frac, aspect,
                       dev, **diag)


def find_screen_contour(image_bgr: np.ndarray) -> np.ndarray:
  """The fallback alone: the outline of the largest region that differs from
  the mat, no Hough lines. Used to cross-check the Hough outline with an
  independent method (it fails more often: black phones on the dark mat)."""
  image = validate(image_bgr)
  work = working_image(image)
  q = to_full(contour_quad(work), work.scale)
  _check_full(q, image)
  return q


def find_screen(image_bgr: np.ndarray) -> np.ndarray:
  """(4, 2) float32 (x, y) corners tl, tr, br, bl of the phone's front face.

  Raises ScreenNotFoundError (a ValueError) with a one-line reason.
  """
  return find_screen_with_info(image_bgr)[0]


def rectify(image_bgr: np.ndarray, corners: np.ndarray,
            size: tuple[int, int] = ROI_SIZE) -> np.ndarray:
  """Perspective-warps the quad `corners` (tl, tr, br, bl) to size (h, w).

  The quad's outline maps onto the output's outer pixel edges. Large
  reductions are warped to an intermediate up to 4x the output size and then
  area-averaged, so thin defects (scratches) are not aliased away.
  """
  out_h, out_w = int(size[0]), int(size[1])
  q = np.asarray(corners, np.float32)
  if q.shape != (4, 2) or not np.all(np.isfinite(q)):
    raise ValueError(f'corners must be a finite (4, 2) array, got {q.shape}')
  src_w = max(np.linalg.norm(q[1] - q[0]), np.linalg.norm(q[2] - q[3]))
  src_h = max(np.linalg.norm(q[3] - q[0]), np.linalg.norm(q[2] - q[1]))
  f = int(np.clip(np.floor(min(src_w / out_w, src_h / out_h)), 1, 4))
  mid_w, mid_h = out_w * f, out_h * f
  dst = np.array([[-0.5, -0.5], [mid_w - 0.5, -0.5], [mid_w - 0.5, mid_h - 0.5],
                  [-0.5, mid_h - 0.5]], np.float32)
  m = cv2.getPerspectiveTransform(q, dst)
  warped = cv2.warpPerspective(image_bgr, m, (mid_w, mid_h),
                               flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REPLICATE)
  if f > 1:
    warped = cv2.resize(warped, (out_w, out_h), interpolation=cv2.INTER_AREA)
  return warped
