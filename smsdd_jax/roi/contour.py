"""The fallback detector: the largest "not mat" region, four sides fitted.

Used only where Hough fails (and alone by `find_screen_contour`, as an
independent cross-check of the Hough outline). It fails more often than
Hough (a black phone on the dark mat hardly differs from it), so every side
it fits must also follow an image edge.
"""
from __future__ import annotations

import cv2
import numpy as np

from smsdd_jax.roi.geometry import (MIN_AREA_FRACTION, SIDES,
                                    ScreenNotFoundError, corners,
                                    line_from_points, order_corners)
from smsdd_jax.roi.work import Work, canny_thresholds

MAT_TOL = 20.0                 # |gray - mat| within this: mat.


def _largest_region(work: Work) -> np.ndarray:
  """The outer contour (OpenCV (N, 1, 2)) of the largest region that
  differs from the mat; raises if it is too small or touches the border."""
  blur = work.blur
  hh, ww = blur.shape
  mask = (np.abs(blur.astype(np.float32) - work.mat_image())
          > MAT_TOL).astype(np.uint8)
  k = max(3, (ww // 160) | 1)
  kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
  mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
  mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, iterations=2)
  contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL,
                                 cv2.CHAIN_APPROX_NONE)
  if not contours:
    raise ScreenNotFoundError('no region differs from the background')
  cnt = max(contours, key=cv2.contourArea)
  area = cv2.contourArea(cnt)
  if area < MIN_AREA_FRACTION * hh * ww:
    raise ScreenNotFoundError(
        f'largest non-background region is {area / (hh * ww):.1%} of the '
        'frame: no phone')
  pts = cnt.reshape(-1, 2)
  on_border = ((pts[:, 0] <= 1) | (pts[:, 0] >= ww - 2) | (pts[:, 1] <= 1) |
               (pts[:, 1] >= hh - 2))
  if on_border.sum() > 0.04 * len(pts):
    raise ScreenNotFoundError(
        'outline touches the image border: phone is cut off')
  return cnt


def _fit_sides(cnt: np.ndarray) -> list[np.ndarray]:
  """Lines top, right, bottom, left: each fitted to the contour points near
  the matching side of its minimum-area box, on the middle 76% (the phone's
  rounded corners left out); the box side itself where too few are."""
  pts = cnt.reshape(-1, 2).astype(np.float64)
  box = order_corners(cv2.boxPoints(cv2.minAreaRect(cnt)))
  lines = []
  for i in range(4):
    a, b = box[i].astype(np.float64), box[(i + 1) % 4].astype(np.float64)
    d = b - a
    length = np.hypot(*d)
    u = d / length
    n = np.array([-u[1], u[0]])
    rel = pts - a
    t = rel @ u
    dist = np.abs(rel @ n)
    sel = (dist < max(3.0, 0.02 * length)) & (t > 0.12 * length) & (
        t < 0.88 * length)
    if sel.sum() < 10:
      lines.append(np.array([n[0], n[1], n @ a]))
    else:
      lines.append(line_from_points(pts[sel]))
  return lines


def _check_sides_follow_edges(q: np.ndarray, blur: np.ndarray) -> None:
  """Raises unless each side of q runs along Canny edges (dilated 2 px) on
  at least half of its middle 76%.

  A region boundary drawn by a wrong mat level (a phone at the border
  fooling the border profile) follows no edge.
  """
  hh, ww = blur.shape
  edges = cv2.Canny(blur, *canny_thresholds(blur))
  edges = cv2.dilate(edges, np.ones((5, 5), np.uint8))
  for i in range(4):
    a, b = q[i], q[(i + 1) % 4]
    f = np.linspace(0.12, 0.88, 64)[:, None]
    p = np.round(a + f * (b - a)).astype(int)
    ok = (p[:, 0] >= 0) & (p[:, 0] < ww) & (p[:, 1] >= 0) & (p[:, 1] < hh)
    p = p[ok]
    if len(p) < 16 or edges[p[:, 1], p[:, 0]].mean() < 0.5 * 255:
      raise ScreenNotFoundError(
          f'the region\'s {SIDES[i]} side follows no image edge')


def contour_quad(work: Work) -> np.ndarray:
  """Ordered corners at working resolution, or raises ScreenNotFoundError."""
  q = corners(_fit_sides(_largest_region(work)))
  _check_sides_follow_edges(q, work.blur)
  return q
