"""Plane geometry of the outline, and the one check of its shape.

Quads are (4, 2) arrays of (x, y) corners ordered tl, tr, br, bl (clockwise
on screen, y down); lines are (nx, ny, c) with nx x + ny y = c. Nothing here
knows about images: both detectors (`hough`, `contour`) and the public API
share these helpers, and every outline passes `check_quad` (the phone-shape
limits below) before it is used or returned.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

MIN_AREA_FRACTION = 0.05       # the phone covers at least this much frame.
MAX_AREA_FRACTION = 0.995
ASPECT_RANGE = (1.25, 3.2)     # long / short side of the outline.
MAX_CORNER_DEVIATION = 20.0    # degrees from 90 at each corner.
BORDER_TOLERANCE = 0.01        # corners may lie this far (x dim) outside.
SIDES = ('top', 'right', 'bottom', 'left')  # the order `corners` takes.


class ScreenNotFoundError(ValueError):
  """No phone outline in the frame; the message says why, in one line."""


def _polygon_area(p: np.ndarray) -> float:
  """Signed shoelace area of an (N, 2) polygon (> 0: clockwise on screen)."""
  if len(p) < 3:
    return 0.0
  x, y = p[:, 0], p[:, 1]
  return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
  """Sutherland-Hodgman: the part of polygon `subject` inside convex `clip`
  (both (N, 2), same orientation, positive area)."""
  out = subject
  for i in range(len(clip)):
    if len(out) == 0:
      break
    a, b = clip[i], clip[(i + 1) % len(clip)]
    edge = b - a
    # Inside = left of the edge in a positive-area (screen-clockwise) order.
    side = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])
    inside = side >= -1e-9 * max(1.0, float(np.abs(edge).max()))
    nxt = []
    for j in range(len(out)):
      p, q = out[j], out[(j + 1) % len(out)]
      sp, sq = side[j], side[(j + 1) % len(out)]
      ip, iq = inside[j], inside[(j + 1) % len(out)]
      if ip:
        nxt.append(p)
      if ip != iq:
        t = sp / (sp - sq)
        nxt.append(p + t * (q - p))
    out = np.array(nxt, np.float64).reshape(-1, 2)
  return out


def quad_iou(a: np.ndarray, b: np.ndarray) -> float:
  """Intersection over union of two convex polygons given as (N, 2) points.

  Exact (Sutherland-Hodgman clipping in float64). cv2.intersectConvexConvex
  is not used: it returns wrong areas for nearly coincident polygons (two
  outlines a pixel apart can score an IoU of 0.6 instead of 0.99).
  """
  polys = []
  for p in (a, b):
    p = np.asarray(p, np.float64).reshape(-1, 2)
    if not np.all(np.isfinite(p)):
      return 0.0
    idx = cv2.convexHull(p.astype(np.float32), returnPoints=False)
    hull = p if idx is None or len(idx) < 3 else p[idx.ravel()]
    if _polygon_area(hull) < 0:
      hull = hull[::-1]
    polys.append(hull)
  pa, pb = polys
  area_a, area_b = _polygon_area(pa), _polygon_area(pb)
  inter = max(0.0, _polygon_area(_clip_convex(pa, pb)))
  union = area_a + area_b - inter
  return inter / union if union > 0 else 0.0


def order_corners(points: np.ndarray) -> np.ndarray:
  """Orders 4 (x, y) points tl, tr, br, bl (clockwise on screen from tl)."""
  pts = np.asarray(points, np.float32).reshape(4, 2)
  c = pts.mean(axis=0)
  ang = np.arctan2(pts[:, 1] - c[1], pts[:, 0] - c[0])  # y down: clockwise.
  pts = pts[np.argsort(ang)]
  # Start at the point nearest the top-left direction.
  start = int(np.argmin(pts[:, 0] + pts[:, 1] - (c[0] + c[1])))
  return np.roll(pts, -start, axis=0)


def intersect(l1: np.ndarray, l2: np.ndarray) -> np.ndarray:
  """Intersection of two lines given as (nx, ny, c) with nx x + ny y = c."""
  a = np.array([[l1[0], l1[1]], [l2[0], l2[1]]], np.float64)
  det = np.linalg.det(a)
  if abs(det) < 1e-9:
    raise ScreenNotFoundError('two opposite-family sides are parallel')
  return np.linalg.solve(a, np.array([l1[2], l2[2]], np.float64))


def corners(lines: Sequence[np.ndarray]) -> np.ndarray:
  """The quad (tl, tr, br, bl) bounded by the side lines top, right, bottom,
  left."""
  t, r, b, l = lines
  return np.array([intersect(t, l), intersect(t, r), intersect(b, r),
                   intersect(b, l)])


def line_from_points(pts: np.ndarray) -> np.ndarray:
  """Robust line fit (Huber) to (N, 2) points -> (nx, ny, c)."""
  vx, vy, x0, y0 = cv2.fitLine(pts.astype(np.float32).reshape(-1, 1, 2),
                               cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
  n = np.array([-vy, vx], np.float64)
  return np.array([n[0], n[1], n[0] * x0 + n[1] * y0], np.float64)


def across_at(line: np.ndarray, family: str, t) -> np.ndarray:
  """Position across the axis (y for 'h', x for 'v') of a line at position
  `t` along it (x for 'h', y for 'v')."""
  nx, ny, c = line
  t = np.asarray(t, np.float64)
  return (c - nx * t) / ny if family == 'h' else (c - ny * t) / nx


def quad_stats(q: np.ndarray) -> tuple[float, float]:
  """(aspect, worst corner deviation from 90 degrees) of an ordered quad."""
  sides = np.linalg.norm(q - np.roll(q, -1, axis=0), axis=1)  # t, r, b, l
  horiz = 0.5 * (sides[0] + sides[2])
  vert = 0.5 * (sides[1] + sides[3])
  aspect = max(horiz, vert) / max(min(horiz, vert), 1e-6)
  dev = 0.0
  for i in range(4):
    u = q[i - 1] - q[i]
    v = q[(i + 1) % 4] - q[i]
    cosang = np.dot(u, v) / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-9)
    dev = max(dev, abs(np.degrees(np.arccos(np.clip(cosang, -1, 1))) - 90.0))
  return float(aspect), float(dev)


def check_quad(q: np.ndarray, width: int, height: int, *,
               border_tol: float,
               max_area_fraction: float = MAX_AREA_FRACTION
               ) -> tuple[float, float, float]:
  """Raises ScreenNotFoundError unless the ordered quad q is phone-shaped.

  Phone-shaped: finite, convex, ordered clockwise on screen (tl, tr, br,
  bl), inside the width x height frame give or take `border_tol` px, covering
  MIN_AREA_FRACTION to `max_area_fraction` of it, with an aspect in
  ASPECT_RANGE and every corner within MAX_CORNER_DEVIATION of 90 degrees.
  The detector checks its candidate quads with this (bool through the
  exception) and the public API the outline it returns (the message).

  Returns:
    (area fraction, aspect, worst corner deviation in degrees).
  """
  if not np.all(np.isfinite(q)):
    raise ScreenNotFoundError('side lines do not intersect inside the frame')
  contour = q.reshape(-1, 1, 2).astype(np.float32)
  if not cv2.isContourConvex(contour):
    raise ScreenNotFoundError('outline is not convex')
  if _polygon_area(q) <= 0:  # y down: clockwise on screen is positive.
    raise ScreenNotFoundError('outline is not ordered tl, tr, br, bl')
  if (q[:, 0].min() < -border_tol or q[:, 1].min() < -border_tol or
      q[:, 0].max() > width - 1 + border_tol or
      q[:, 1].max() > height - 1 + border_tol):
    raise ScreenNotFoundError(
        'outline touches the image border: phone is cut off')
  frac = float(cv2.contourArea(contour)) / float(width * height)
  if frac < MIN_AREA_FRACTION:
    raise ScreenNotFoundError(
        f'outline too small: {frac:.1%} of the frame < '
        f'{MIN_AREA_FRACTION:.0%}')
  if frac > max_area_fraction:
    raise ScreenNotFoundError('outline fills the whole frame')
  aspect, dev = quad_stats(q)
  if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
    raise ScreenNotFoundError(
        f'outline aspect {aspect:.2f} outside {ASPECT_RANGE[0]}-'
        f'{ASPECT_RANGE[1]}')
  if dev > MAX_CORNER_DEVIATION:
    raise ScreenNotFoundError(
        f'outline corner angle off by {dev:.0f} deg from 90')
  return frac, aspect, dev
