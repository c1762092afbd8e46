"""Find the phone's front face in a camera frame and rectify it (paper, 3.1).

The paper finds the phone screen in the raw camera frame with the Hough
transform and warps it to 110 x 230. This module keeps that Hough core and
makes it robust on the real frames: black phones (dark glass) on a dark grey
textured mat with uneven light, white phones (white bezel, sometimes a chrome
rim), shadows and colour fringes along the outline, reflections, oil drops.

  1. Downscale to `WORK_WIDTH` (960 px), grayscale, 5x5 Gaussian blur.
  2. The mat: its gray level is read along the frame's outermost pixels, per
     border (the light is uneven), where a phone touching a border is
     patched over by interpolation. Canny thresholds come from the mat
     texture's gradient level on the border ring.
  3. Canny, `cv2.HoughLinesP`; segments split into near-horizontal and
     near-vertical families (the phone lies landscape, rotated a few degrees)
     and grouped by polarity into lines (pieces of a slightly bowed edge
     joined). A line's length is its edge support (Canny pixels on it with
     the right gradient direction), not the Hough segments', which come
     fragmented.
  4. A line is a candidate side when, sampled in bands along it, the inside
     differs from the mat (dark glass or white bezel) and the outside is
     mat-like (at some distance: a shadow may hug the outline) and not white
     (so a screen's edge inside a white bezel, or a slot's edge, never
     qualifies). The band test also tells a top side from a bottom one.
  5. Per side the long candidates are ranked outermost first (the outline is
     the outer boundary: the white bezel is included); a dark fringe hugging
     a white bezel yields to the bezel's own edge. The first combination of
     four (by rank) that makes a phone-shaped quad (convex, near-right
     angles, aspect, area) wins. Where a phone ends right at the frame's
     edge (rounded corners in view), that edge can serve as a side; a phone
     whose straight sides run off the frame is refused as cut off.
  6. Each side is refit to the phone's outer boundary along its straight
     middle part, scanline by scanline (the outermost strong gradient peak
     near the line, sub-pixel, then a robust line fit); rounded corners: the
     outline's corner is where the fitted straight sides meet, not on the
     rounding. The lines are intersected and scaled back to full resolution.

Only where Hough fails, a fallback ('contour') takes the largest "not mat"
region, fits its four sides and checks they follow image edges.
`find_screen_with_info` says which method served a frame.

Corners are float32 (x, y) in full-resolution pixel coordinates (pixel
centres at integers), ordered tl, tr, br, bl.

CLI (a contact sheet for eyeballing, per-frame method and timing):
  python -m smsdd_jax.roi --input=DIR --sheet=out.png
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import pathlib
import sys
import time
from typing import Sequence

import cv2
import numpy as np

ROI_SIZE = (110, 230)          # (height, width), the paper's input size.
MIN_SIZE = (160, 90)           # (width, height) below which we refuse.
WORK_WIDTH = 960               # working width for detection (px).
MIN_AREA_FRACTION = 0.05       # the phone covers at least this much frame.
MAX_AREA_FRACTION = 0.995
ASPECT_RANGE = (1.25, 3.2)     # long / short side of the outline.
MAX_CORNER_DEVIATION = 20.0    # degrees from 90 at each corner.
BORDER_TOLERANCE = 0.01        # corners may lie this far (x dim) outside.
MAT_TOL = 20.0                 # |gray - mat| within this: mat (fallback).
PHONE_MIN_DEV = 20.0           # the phone differs from the mat by this much.
BAND_DISTANCES = (3.0, 4.5, 6.0, 7.5, 9.0, 10.5, 12.0)  # px, working res.
MAX_BORDER_COVERAGE = 0.9      # more of a frame edge covered: cut off.
MAX_CANDIDATES = 4             # per side, tried in combinations.


class ScreenNotFoundError(ValueError):
  """No phone outline in the frame; the message says why, in one line."""


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


# --------------------------------------------------------------------------
# Small geometry helpers.


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


def _intersect(l1: np.ndarray, l2: np.ndarray) -> np.ndarray:
  """Intersection of two lines given as (nx, ny, c) with nx x + ny y = c."""
  a = np.array([[l1[0], l1[1]], [l2[0], l2[1]]], np.float64)
  det = np.linalg.det(a)
  if abs(det) < 1e-9:
    raise ScreenNotFoundError('two opposite-family sides are parallel')
  return np.linalg.solve(a, np.array([l1[2], l2[2]], np.float64))


def _line_from_points(pts: np.ndarray) -> np.ndarray:
  """Robust line fit (Huber) to (N, 2) points -> (nx, ny, c)."""
  vx, vy, x0, y0 = cv2.fitLine(pts.astype(np.float32).reshape(-1, 1, 2),
                               cv2.DIST_HUBER, 0, 0.01, 0.01).ravel()
  n = np.array([-vy, vx], np.float64)
  return np.array([n[0], n[1], n[0] * x0 + n[1] * y0], np.float64)


def _quad_stats(q: np.ndarray) -> tuple[float, float]:
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


def _check_quad(q: np.ndarray, w: int, h: int) -> tuple[float, float, float]:
  """Raises ScreenNotFoundError unless q (full-res, ordered) is phone-like."""
  if not np.all(np.isfinite(q)):
    raise ScreenNotFoundError('side lines do not intersect inside the frame')
  if not cv2.isContourConvex(q.reshape(-1, 1, 2).astype(np.float32)):
    raise ScreenNotFoundError('outline is not convex')
  tol = BORDER_TOLERANCE * max(w, h)
  if (q[:, 0].min() < -tol or q[:, 1].min() < -tol or
      q[:, 0].max() > w - 1 + tol or q[:, 1].max() > h - 1 + tol):
    raise ScreenNotFoundError(
        'outline touches the image border: phone is cut off')
  area = float(cv2.contourArea(q.reshape(-1, 1, 2).astype(np.float32)))
  frac = area / float(w * h)
  if frac < MIN_AREA_FRACTION:
    raise ScreenNotFoundError(
        f'outline too small: {frac:.1%} of the frame < '
        f'{MIN_AREA_FRACTION:.0%}')
  if frac > MAX_AREA_FRACTION:
    raise ScreenNotFoundError('outline fills the whole frame')
  aspect, dev = _quad_stats(q)
  if not ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1]:
    raise ScreenNotFoundError(
        f'outline aspect {aspect:.2f} outside {ASPECT_RANGE[0]}-'
        f'{ASPECT_RANGE[1]}')
  if dev > MAX_CORNER_DEVIATION:
    raise ScreenNotFoundError(
        f'outline corner angle off by {dev:.0f} deg from 90')
  return frac, aspect, dev


# --------------------------------------------------------------------------
# Input checks and the working image.


def _validate(image: np.ndarray) -> np.ndarray:
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
class _Work:
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


def _working_image(image: np.ndarray) -> _Work:
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
  return _Work(blur=blur, scale=scale, profiles=profiles)


def _to_full(pts_work: np.ndarray, scale: float) -> np.ndarray:
  """Working-resolution (x, y) -> full-resolution, pixel centres at integers."""
  return ((np.asarray(pts_work, np.float64) + 0.5) / scale - 0.5).astype(
      np.float32)


# --------------------------------------------------------------------------
# The Hough detector.


def _canny_thresholds(blur: np.ndarray) -> tuple[float, float]:
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


@dataclasses.dataclass
class _Cluster:
  family: str             # 'h' or 'v'
  polarity: int           # +1: brighter below (h) / right (v) of the line.
  offset: float           # the line's y (h) / x (v) at the frame's centre
  segs: np.ndarray        # (k, 4) x1 y1 x2 y2
  line: np.ndarray        # (nx, ny, c) fitted to the segments' points
  lo: float               # the segments' extent along the axis (x for h,
  hi: float               # y for v)
  coverage: float = 0.0   # edge support along the line (px), see _support.
  hits: np.ndarray | None = None  # per position along the frame, ditto.


def _segments(edges: np.ndarray, work_w: int) -> np.ndarray:
  """HoughLinesP segments (x1, y1, x2, y2), from two vote thresholds.

  The probabilistic Hough transform removes an edge's pixels once a line
  through them is claimed, so a slightly tilted, jagged edge can come out as
  nothing at one threshold and whole at another (seen at 40 votes on some
  synthetic frames, at 30 on a real one): the union of both runs is kept.
  """
  out = []
  for votes in (40, 30):
    lines = cv2.HoughLinesP(edges, rho=1, theta=np.pi / 180, threshold=votes,
                            minLineLength=max(20, int(0.05 * work_w)),
                            maxLineGap=max(4, int(0.01 * work_w)))
    if lines is not None:
      out.append(lines.reshape(-1, 4))  # OpenCV 4: (N, 1, 4); 5: (N, 4)
  if not out:
    return np.zeros((0, 4), np.float64)
  return np.concatenate(out).astype(np.float64)


def _polarity(blur: np.ndarray, segs: np.ndarray, family: str) -> np.ndarray:
  """+1 where the image is brighter below (h) / right of (v) a segment."""
  h, w = blur.shape
  x1, y1, x2, y2 = segs.T
  length = np.maximum(np.hypot(x2 - x1, y2 - y1), 1e-9)
  nx, ny = -(y2 - y1) / length, (x2 - x1) / length
  flip = (ny < 0) if family == 'h' else (nx < 0)
  nx, ny = np.where(flip, -nx, nx), np.where(flip, -ny, ny)
  diff = np.zeros(len(segs))
  for f in (0.25, 0.5, 0.75):
    px, py = x1 + f * (x2 - x1), y1 + f * (y2 - y1)
    a = blur[np.clip(np.round(py + 3 * ny).astype(int), 0, h - 1),
             np.clip(np.round(px + 3 * nx).astype(int), 0, w - 1)]
    b = blur[np.clip(np.round(py - 3 * ny).astype(int), 0, h - 1),
             np.clip(np.round(px - 3 * nx).astype(int), 0, w - 1)]
    diff += a.astype(np.float64) - b
  return np.where(diff >= 0, 1, -1)


def _edge_codes(edges: np.ndarray, grad: tuple) -> dict:
  """Per family, an int8 image: the polarity (+1 / -1) of each Canny pixel
  whose gradient runs across that family's lines, 0 elsewhere."""
  gx, gy = grad
  ax, ay = np.abs(gx), np.abs(gy)
  on = edges > 0
  return {'h': (np.sign(gy) * (on & (ay > ax))).astype(np.int8),
          'v': (np.sign(gx) * (on & (ax > ay))).astype(np.int8)}


def _support(cl: _Cluster, codes: dict) -> float:
  """Edge support of a cluster's line: positions along it (within the
  segments' extent widened by 15% of the frame) with a Canny pixel within
  1 px whose gradient runs across the line with the cluster's polarity.
  Also sets `cl.hits`, that test at every position along the frame.

  HoughLinesP cuts a slightly jagged edge into pieces and may not report
  them all; counting the edge pixels measures a side's length reliably.
  """
  code = codes[cl.family]
  h, w = code.shape
  dim, across_dim = (w, h) if cl.family == 'h' else (h, w)
  t = np.arange(dim)
  base = np.round(_across_at(cl.line, cl.family, t)).astype(int)
  hit = np.zeros(dim, bool)
  for d in (-1, 0, 1):
    a = base + d
    ok = (a >= 0) & (a < across_dim)
    a = np.clip(a, 0, across_dim - 1)
    hit |= ok & ((code[a, t] if cl.family == 'h' else code[t, a]) ==
                 cl.polarity)
  cl.hits = hit
  lo = int(max(0, cl.lo - 0.15 * dim))
  hi = int(min(dim - 1, cl.hi + 0.15 * dim))
  return float(hit[lo:hi + 1].sum())


def _across_at(line: np.ndarray, family: str, t) -> np.ndarray:
  """Position across the axis (y for 'h', x for 'v') of a line at position
  `t` along it (x for 'h', y for 'v')."""
  nx, ny, c = line
  t = np.asarray(t, np.float64)
  return (c - nx * t) / ny if family == 'h' else (c - ny * t) / nx


def _cluster_family(segs: np.ndarray, family: str, tol: float,
                    blur: np.ndarray) -> list[_Cluster]:
  """Groups one family's segments into lines, greedily, longest first.

  A segment joins the line of a cluster of its polarity when both its ends
  lie within `tol` px of that line (the top and bottom sides of a phone seen
  in perspective have different slopes, so there is no common direction to
  project on); otherwise it starts a cluster. Edges of opposite polarity
  (the two edges of a thin white bezel) never merge. A cluster's offset is
  its line's position at the frame's centre. Then pieces of a bowed edge
  are joined (below).
  """
  if len(segs) == 0:
    return []
  h, w = blur.shape
  pol = _polarity(blur, segs, family)
  x1, y1, x2, y2 = segs.T
  if family == 'v':  # work in (along, across) = (y, x) for verticals.
    x1, y1, x2, y2 = y1, x1, y2, x2
  flip = x2 < x1
  x1, x2 = np.where(flip, x2, x1), np.where(flip, x1, x2)
  y1, y2 = np.where(flip, y2, y1), np.where(flip, y1, y2)
  length = np.hypot(x2 - x1, y2 - y1)
  groups = []  # [polarity, member indices, (slope, intercept)]
  for i in np.argsort(-length):
    best, best_d = None, tol
    for g in groups:
      if g[0] != pol[i]:
        continue
      k, b0 = g[2]
      d = max(abs(y1[i] - (k * x1[i] + b0)), abs(y2[i] - (k * x2[i] + b0)))
      if d <= best_d:
        best, best_d = g, d
    if best is None:
      k = (y2[i] - y1[i]) / max(x2[i] - x1[i], 1e-9)
      groups.append([pol[i], [i], (k, y1[i] - k * x1[i])])
    else:
      best[1].append(i)
      m = best[1]
      xs = np.concatenate([x1[m], x2[m]])
      ys = np.concatenate([y1[m], y2[m]])
      wts = np.concatenate([length[m], length[m]])
      k, b0 = np.polyfit(xs, ys, 1, w=np.sqrt(wts))
      best[2] = (k, b0)
  # Pieces of one long edge that is slightly bowed (curved glass, lens
  # distortion) fit no single line within `tol`: clusters that follow each
  # other along the axis (overlapping by <= 20%), meet within 2 * tol,
  # differ by <= 1.5 degrees and together fit a line within 1.5 * tol are
  # one edge.
  merged = True
  while merged:
    merged = False
    for ga, gb in itertools.combinations(groups, 2):
      if ga[0] != gb[0]:
        continue
      lo_a, hi_a = x1[ga[1]].min(), x2[ga[1]].max()
      lo_b, hi_b = x1[gb[1]].min(), x2[gb[1]].max()
      overlap = min(hi_a, hi_b) - max(lo_a, lo_b)
      if overlap > 0.2 * min(hi_a - lo_a, hi_b - lo_b):
        continue
      t = 0.5 * (max(lo_a, lo_b) + min(hi_a, hi_b))
      (ka, ba), (kb, bb) = ga[2], gb[2]
      if (abs((ka * t + ba) - (kb * t + bb)) > 2 * tol or
          abs(np.degrees(np.arctan(ka) - np.arctan(kb))) > 1.5):
        continue
      m = ga[1] + gb[1]
      xs = np.concatenate([x1[m], x2[m]])
      ys = np.concatenate([y1[m], y2[m]])
      k, b0 = np.polyfit(xs, ys, 1, w=np.sqrt(np.concatenate([length[m],
                                                              length[m]])))
      if np.abs(ys - (k * xs + b0)).max() > 1.5 * tol:
        continue  # an arc (a bowed short side), not one straight edge.
      ga[1], ga[2] = m, (k, b0)
      groups.remove(gb)
      merged = True
      break
  centre = 0.5 * (w if family == 'h' else h)
  out = []
  for p, g, (k, b0) in groups:
    # across = k * along + b0  ->  (nx, ny, c) in image (x, y).
    norm = np.hypot(k, 1.0)
    line = (np.array([-k, 1.0, b0]) if family == 'h' else
            np.array([1.0, -k, b0])) / norm
    out.append(_Cluster(
        family, int(p), float(_across_at(line, family, centre)), segs[g],
        line, float(x1[g].min()), float(x2[g].max())))
  return out


def _row_nanmedian(a: np.ndarray) -> np.ndarray:
  """Median of each row ignoring NaNs (NaN for an all-NaN row); much faster
  than np.nanmedian(axis=1) on small arrays."""
  srt = np.sort(a, axis=1)  # NaNs sort last.
  k = np.sum(~np.isnan(a), axis=1)
  lo = np.clip((k - 1) // 2, 0, a.shape[1] - 1)
  hi = np.clip(k // 2, 0, a.shape[1] - 1)
  rows = np.arange(a.shape[0])
  return np.where(k > 0, 0.5 * (srt[rows, lo] + srt[rows, hi]), np.nan)


def _band_devs(work: _Work, cl: _Cluster) -> dict:
  """Per-distance median (gray - mat) on both sides of a cluster's line.

  Returns {border: (low, high)} for the two borders of the family ('top',
  'bottom' for 'h'; 'left', 'right' for 'v'): the mat level is read from that
  border's profile at the samples' positions. For an 'h' line the low side
  is above (smaller y); for 'v', left. Each entry is one distance of
  BAND_DISTANCES, NaN where the band is mostly off-frame.
  """
  h, w = work.blur.shape
  nx, ny, c = cl.line
  span = cl.hi - cl.lo
  t = np.linspace(cl.lo + 0.1 * span, cl.hi - 0.1 * span, 32)
  if cl.family == 'h':
    base = np.stack([t, (c - nx * t) / ny], 1)
  else:
    base = np.stack([(c - ny * t) / nx, t], 1)
  normal = np.array([nx, ny]) / np.hypot(nx, ny)
  if (cl.family == 'h' and normal[1] < 0) or (cl.family == 'v' and
                                               normal[0] < 0):
    normal = -normal  # point to the high side.
  d = np.concatenate([-np.asarray(BAND_DISTANCES), BAND_DISTANCES])
  pts = base[None, :, :] + d[:, None, None] * normal  # (2D, T, 2)
  xi = np.round(pts[..., 0]).astype(int)
  yi = np.round(pts[..., 1]).astype(int)
  ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
  xc, yc = np.clip(xi, 0, w - 1), np.clip(yi, 0, h - 1)
  gray = work.blur[yc, xc].astype(np.float32)
  rows_ok = ok.mean(axis=1) >= 0.5
  n = len(BAND_DISTANCES)
  out = {}
  for border in (('top', 'bottom') if cl.family == 'h' else ('left', 'right')):
    prof = work.profiles[border]
    dev = gray - (prof[xc] if cl.family == 'h' else prof[yc])
    dev = np.where(ok, dev, np.nan)
    med = np.where(rows_ok, _row_nanmedian(dev), np.nan)
    out[border] = (med[:n], med[n:])
  return out


def _side_strength(outside: np.ndarray, inside: np.ndarray) -> float:
  """How phone-side-like a line is: > 0 if the inside (at some distance)
  differs from the mat and the outside (at its most mat-like distance) is
  clearly closer to the mat; 0 otherwise.

  A shadow just outside a side keeps the outside's far distances mat-like; a
  white bezel outside a screen's edge does not, so that edge is refused, as
  is any edge with white (a bezel) anywhere in its outside band (the edge of
  a dark slot or button within a white bezel).
  """
  if np.all(np.isnan(inside)):
    return 0.0
  dev_in = float(np.nanmax(np.abs(inside)))
  if dev_in < PHONE_MIN_DEV:
    return 0.0
  if np.all(np.isnan(outside)):
    return dev_in  # the side runs along the frame's edge.
  dev_out = float(np.nanmin(np.abs(outside)))
  white_out = outside[2:5]  # 6-9 px: past the edge's own blur.
  if (dev_out > 0.6 * dev_in or dev_out > 35.0 or
      (not np.all(np.isnan(white_out)) and np.nanmax(white_out) > 60.0)):
    return 0.0
  return dev_in - dev_out


def _side_role(cl: _Cluster, work: _Work) -> tuple[str | None, np.ndarray]:
  """('low', inside) if the phone lies on the high side (a top / left side),
  ('high', inside) if on the low side (bottom / right), (None, ...) if this
  is not a phone side. `inside` is the per-distance deviation inside."""
  borders = ('top', 'bottom') if cl.family == 'h' else ('left', 'right')
  devs = _band_devs(work, cl)
  low1, high1 = devs[borders[0]]
  low2, high2 = devs[borders[1]]
  s_low = _side_strength(low1, high1)
  s_high = _side_strength(high2, low2)
  if s_low > 0 and s_low >= s_high:
    return 'low', high1
  if s_high > 0:
    return 'high', low2
  return None, high1


def _refine(cl: _Cluster, abs_grad: tuple, lo: float, hi: float,
            outward: int, min_grad: float) -> np.ndarray:
  """Refits a side to the phone's outer boundary, scanline by scanline.

  Across each position of the side's middle part, within a window around
  the current line, the boundary is the OUTERMOST gradient peak at least
  half as strong as the strongest one there (`outward`: -1 if outside is
  towards smaller y / x). So the outer edge of a bright rim or of a thin
  white bezel is taken, not its inner edge, while a soft shadow's rim is
  too weak to count. Peaks are located to sub-pixel precision and a robust
  line is fit to them. Twice: a wide window on the middle half (the line
  may come from a short, tilted piece of the edge), then a narrow one on
  the middle 76%. On a bowed side (curved glass, lens distortion) this
  gives the straight line that best follows the whole edge.
  """
  g_across = abs_grad[1] if cl.family == 'h' else abs_grad[0]  # |gy|, |gx|
  h, w = g_across.shape
  along_dim, across_dim = (w, h) if cl.family == 'h' else (h, w)
  line = cl.line
  for frac, win in ((0.25, 12), (0.12, 5)):
    a, b = lo + frac * (hi - lo), hi - frac * (hi - lo)
    t = np.arange(int(max(0, np.ceil(a))), int(min(along_dim - 1, b)) + 1)
    if len(t) < 10:
      break
    d = outward * np.arange(win, -win - 1, -1)    # outermost first
    base = np.round(_across_at(line, cl.family, t)).astype(int)
    pos = base[None, :] + d[:, None]              # (D, T)
    ok = (pos >= 0) & (pos < across_dim)
    pc = np.clip(pos, 0, across_dim - 1)
    tt = np.broadcast_to(t[None, :], pos.shape)
    g = np.where(ok, g_across[pc, tt] if cl.family == 'h' else
                 g_across[tt, pc], 0.0)
    strong = np.maximum(0.5 * g.max(axis=0), min_grad)
    peak = np.zeros_like(g, bool)
    peak[1:-1] = (g[1:-1] >= g[:-2]) & (g[1:-1] >= g[2:]) & (
        g[1:-1] >= strong[None, :])
    has = peak.any(axis=0)
    if has.sum() < 10:
      break
    k = np.argmax(peak, axis=0)[has]              # first = outermost peak
    cols = np.arange(len(t))[has]
    g0, g1, g2 = g[k - 1, cols], g[k, cols], g[k + 1, cols]
    den = g0 - 2 * g1 + g2
    delta = np.where(den < 0, 0.5 * (g0 - g2) / np.where(den < 0, den, -1.0),
                     0.0)
    # pos runs outermost -> innermost along k; one step of k moves by
    # -outward across the axis.
    across = pos[k, cols] - outward * np.clip(delta, -0.5, 0.5)
    along = t[cols].astype(np.float64)
    pts = (np.stack([along, across], 1) if cl.family == 'h' else
           np.stack([across, along], 1))
    line = _line_from_points(pts)
  return line


_SIDE_NAMES = {('h', 'low'): 'top', ('h', 'high'): 'bottom',
               ('v', 'low'): 'left', ('v', 'high'): 'right'}


def _inside_darker(cl: _Cluster, name: str) -> bool:
  """Whether the image gets darker across this edge going into the phone."""
  return cl.polarity == (-1 if name in ('top', 'left') else 1)


_SIDES = ('top', 'right', 'bottom', 'left')


def _frame_edge_line(name: str, work: _Work) -> np.ndarray | None:
  """The frame's edge as a candidate side, where the frame's edge strip is
  phone (not mat) along its middle; None otherwise."""
  hh, ww = work.blur.shape
  if name in ('left', 'right'):
    x = 0 if name == 'left' else ww - 1
    strip = work.blur[int(0.3 * hh):int(0.7 * hh), x].astype(np.float32)
    mat = 0.5 * (work.profiles['top'][x] + work.profiles['bottom'][x])
    line = np.array([1.0, 0.0, -0.5 if name == 'left' else ww - 0.5])
  else:
    y = 0 if name == 'top' else hh - 1
    strip = work.blur[y, int(0.3 * ww):int(0.7 * ww)].astype(np.float32)
    mat = 0.5 * (work.profiles['left'][y] + work.profiles['right'][y])
    line = np.array([0.0, 1.0, -0.5 if name == 'top' else hh - 0.5])
  if abs(float(np.median(strip)) - mat) < PHONE_MIN_DEV:
    return None
  return line


def _border_coverage(name: str, sides: dict, work: _Work) -> float:
  """Fraction of the frame's edge `name`, between the two adjacent sides,
  where the phone (not the mat) touches it.

  The mat level there is interpolated between the frame's two corners on
  that edge (read on the perpendicular borders): that edge's own profile is
  no help where a phone covers most of it.
  """
  hh, ww = work.blur.shape
  adj = (('top', 'bottom') if name in ('left', 'right') else ('left', 'right'))
  if any(sides[a] is None for a in adj):
    return 1.0
  if name in ('left', 'right'):
    x = 0 if name == 'left' else ww - 1
    ends = [(l[2] - l[0] * x) / l[1] for l in (sides[a].line for a in adj)]
    lo, hi = int(np.ceil(min(ends))), int(np.floor(max(ends)))
    lo, hi = max(lo, 0), min(hi, hh - 1)
    edge = work.blur[lo:hi + 1, x].astype(np.float32)
    m0, m1 = work.profiles['top'][x], work.profiles['bottom'][x]
    n = hh
  else:
    y = 0 if name == 'top' else hh - 1
    ends = [(l[2] - l[1] * y) / l[0] for l in (sides[a].line for a in adj)]
    lo, hi = int(np.ceil(min(ends))), int(np.floor(max(ends)))
    lo, hi = max(lo, 0), min(hi, ww - 1)
    edge = work.blur[y, lo:hi + 1].astype(np.float32)
    m0, m1 = work.profiles['left'][y], work.profiles['right'][y]
    n = ww
  if hi - lo < 10:
    return 1.0
  mat = m0 + (m1 - m0) * np.arange(lo, hi + 1, dtype=np.float32) / (n - 1)
  return float(np.mean(np.abs(edge - mat) >= PHONE_MIN_DEV))


def _runs_off(cl: _Cluster, toward: str) -> bool:
  """Whether a side's straight edge runs on to the frame's edge `toward`
  ('low' or 'high' end of its axis): edge support on most of the last 2%."""
  n = len(cl.hits)
  b = max(4, int(0.02 * n))
  end = cl.hits[:b] if toward == 'low' else cl.hits[-b:]
  return float(end.mean()) >= 0.5


def _phone_ends_at_frame_edge(name: str, sides: dict, work: _Work) -> bool:
  """A side placed on the frame's edge is accepted only where the phone's
  rounded corners are in view there: neither adjacent side's straight edge
  runs on to that frame edge, and the phone covers at most
  MAX_BORDER_COVERAGE of the frame edge between them. So at most the
  rounding is cut; a phone whose straight sides run off the frame is cut
  off."""
  adj = (('top', 'bottom') if name in ('left', 'right') else ('left', 'right'))
  if any(sides[a] is None for a in adj):
    return False
  toward = 'low' if name in ('left', 'top') else 'high'
  if any(_runs_off(sides[a], toward) for a in adj):
    return False
  return _border_coverage(name, sides, work) <= MAX_BORDER_COVERAGE


def _corners(lines: Sequence[np.ndarray]) -> np.ndarray:
  t, r, b, l = lines
  return np.array([_intersect(t, l), _intersect(t, r), _intersect(b, r),
                   _intersect(b, l)])


def _feasible(q: np.ndarray, shape) -> bool:
  """Cheap geometric plausibility of a working-resolution quad."""
  hh, ww = shape
  if not np.all(np.isfinite(q)):
    return False
  tol = 0.02 * ww
  if (q[:, 0].min() < -tol or q[:, 1].min() < -tol or
      q[:, 0].max() > ww - 1 + tol or q[:, 1].max() > hh - 1 + tol):
    return False
  if not cv2.isContourConvex(q.reshape(-1, 1, 2).astype(np.float32)):
    return False
  area = cv2.contourArea(q.reshape(-1, 1, 2).astype(np.float32))
  if area < MIN_AREA_FRACTION * hh * ww:
    return False
  # Clockwise on screen from the top-left: positive signed area (y down).
  x, y = q[:, 0], q[:, 1]
  if 0.5 * np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) <= 0:
    return False
  aspect, dev = _quad_stats(q)
  return (ASPECT_RANGE[0] <= aspect <= ASPECT_RANGE[1] and
          dev <= MAX_CORNER_DEVIATION)


def _gap(a: _Cluster, b: _Cluster) -> float:
  """Distance between two lines of one family, over `a`'s extent."""
  t = np.array([a.lo, 0.5 * (a.lo + a.hi), a.hi])
  return float(np.abs(_across_at(a.line, a.family, t) -
                      _across_at(b.line, b.family, t)).max())


def _rank_candidates(name: str, cands: list) -> list[_Cluster]:
  """Orders one side's candidates (cluster, inside band) for trying.

  The long ones (>= 40% of the best support) come first, outermost first
  (a white bezel's outer edge before the screen's edge, the glass edge
  before a soft shadow's rim), then the short ones; at most MAX_CANDIDATES.
  Where a clearly better supported line lies within 5 px of the outermost,
  it goes first.
  A dark fringe (shadow, the phone's side) hugging a white bezel is dropped
  when the bezel's own edge (brighter going in, into a white body) follows
  within 10 px.
  """
  sign = 1.0 if name in ('top', 'left') else -1.0
  lst = sorted(cands, key=lambda k: sign * k[0].offset)
  keep = []
  for i, (cl, _) in enumerate(lst):
    if _inside_darker(cl, name) and any(
        0 < _gap(cl, o) <= 10.0 and
        not _inside_darker(o, name) and np.nanmax(o_in) >= 60.0
        for o, o_in in lst[i + 1:]):
      continue
    keep.append(cl)
  best = max((k.coverage for k in keep), default=0.0)
  long_ones = [k for k in keep if k.coverage >= 0.4 * best]
  short_ones = [k for k in keep if k.coverage < 0.4 * best]
  if long_ones:
    # Two edges of one boundary a few px apart (a rim highlight's two
    # edges, a glint along the outline): the clearly better supported one
    # gives the better line; a short one's slope extrapolates badly.
    first = long_ones[0]
    twins = [k for k in long_ones[1:]
             if _gap(first, k) <= 5.0 and k.coverage >= 1.5 * first.coverage]
    if twins:
      pick = max(twins, key=lambda k: k.coverage)
      long_ones = [pick] + [k for k in long_ones if k is not pick]
  return (long_ones + short_ones)[:MAX_CANDIDATES]


def _hough_quad(work: _Work) -> tuple[np.ndarray, dict]:
  """Ordered corners at working resolution (and diagnostics), or raises."""
  blur = work.blur
  hh, ww = blur.shape
  low, high = _canny_thresholds(blur)
  edges = cv2.Canny(blur, low, high, L2gradient=False)
  segs = _segments(edges, ww)
  ang = np.mod(np.degrees(np.arctan2(segs[:, 3] - segs[:, 1],
                                     segs[:, 2] - segs[:, 0])), 180.0)
  is_h = (ang < 20.0) | (ang > 160.0)
  is_v = np.abs(ang - 90.0) < 20.0
  diag = {'segments': int(is_h.sum() + is_v.sum()),
          'canny_thresholds': (low, high), 'frame_edge_sides': (),
          'side_support': (0.0, 0.0, 0.0, 0.0)}
  if diag['segments'] == 0:
    raise ScreenNotFoundError('no long straight edges found')
  tol = max(2.0, 0.004 * ww)
  grad = (cv2.Sobel(blur, cv2.CV_16S, 1, 0), cv2.Sobel(blur, cv2.CV_16S, 0, 1))
  codes = _edge_codes(edges, grad)
  cands = {k: [] for k in _SIDES}
  for fam, sel, dim in (('h', is_h, ww), ('v', is_v, hh)):
    for cl in _cluster_family(segs[sel], fam, tol, blur):
      cl.coverage = _support(cl, codes)
      if cl.coverage < 0.08 * dim:
        continue
      role, inside = _side_role(cl, work)
      if role is not None:
        cands[_SIDE_NAMES[(fam, role)]].append((cl, inside))
  if not any(cands.values()):
    raise ScreenNotFoundError(
        f'no phone-outline edges found ({diag["segments"]} straight '
        'segments, none between mat and phone)')
  edge_lines = {k: _frame_edge_line(k, work) for k in _SIDES}
  ranked = {k: _rank_candidates(k, cands[k]) + (
      [None] if edge_lines[k] is not None else []) for k in _SIDES}
  missing = [k for k in _SIDES if not ranked[k]]
  if missing:
    raise ScreenNotFoundError(
        f'only {4 - len(missing)} of the 4 sides found (missing: '
        f'{", ".join(missing)})')
  # The first phone-shaped combination by rank sum.
  combos = sorted(itertools.product(*(range(len(ranked[k])) for k in _SIDES)),
                  key=sum)
  chosen, why = None, 'the sides found form no phone-shaped outline'
  for it in combos:
    sides = {k: ranked[k][i] for k, i in zip(_SIDES, it)}
    lines = [sides[k].line if sides[k] is not None else edge_lines[k]
             for k in _SIDES]
    try:
      q = _corners(lines)
    except ScreenNotFoundError:
      continue
    if not _feasible(q, (hh, ww)):
      continue
    at_edge = [k for k in _SIDES if sides[k] is None]
    # (The adjacent sides' best candidates are tested too: a lower-ranked
    # piece that stops short must not make a cut-off phone look whole.)
    if not all(_phone_ends_at_frame_edge(k, sides, work) and
               _phone_ends_at_frame_edge(
                   k, {a: ranked[a][0] for a in _SIDES}, work)
               for k in at_edge):
      why = 'outline touches the image border: phone is cut off'
      continue
    # A side found right at the frame's edge may be an inner edge of a phone
    # running off the frame (a white bezel's cut remains outside it).
    near = max(3.0, 0.01 * ww)
    hugging = [k for k, hug in (
        ('top', max(q[0, 1], q[1, 1]) <= near),
        ('right', min(q[1, 0], q[2, 0]) >= ww - 1 - near),
        ('bottom', min(q[2, 1], q[3, 1]) >= hh - 1 - near),
        ('left', max(q[0, 0], q[3, 0]) <= near)) if hug and k not in at_edge]
    if any(_border_coverage(k, sides, work) > MAX_BORDER_COVERAGE
           for k in hugging):
      why = 'outline touches the image border: phone is cut off'
      continue
    chosen = (sides, lines, at_edge)
    break
  if chosen is None:
    raise ScreenNotFoundError(why)
  sides, lines, at_edge = chosen
  diag['frame_edge_sides'] = tuple(at_edge)
  q = _corners(lines)
  side_len = np.linalg.norm(q - np.roll(q, -1, axis=0), axis=1)
  diag['side_support'] = tuple(
      round(float(sides[k].coverage / side_len[i]), 3)
      if sides[k] is not None else 0.0 for i, k in enumerate(_SIDES))
  lines = dict(zip(_SIDES, lines))
  q = _corners([lines[k] for k in _SIDES])
  # Refit each Hough side to its edge along its straight middle part.
  spans = {'top': (q[0, 0], q[1, 0]), 'right': (q[1, 1], q[2, 1]),
           'bottom': (q[3, 0], q[2, 0]), 'left': (q[0, 1], q[3, 1])}
  abs_grad = (np.abs(grad[0]), np.abs(grad[1]))
  for name in _SIDES:
    if sides[name] is not None:
      lines[name] = _refine(sides[name], abs_grad, min(spans[name]),
                            max(spans[name]),
                            -1 if name in ('top', 'left') else 1, low)
  q = _corners([lines[k] for k in _SIDES])
  return q, diag


# --------------------------------------------------------------------------
# The fallback: largest "not mat" region, four sides fitted to its contour.


def _contour_quad(work: _Work) -> np.ndarray:
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
  pts = cnt.reshape(-1, 2).astype(np.float64)
  on_border = ((pts[:, 0] <= 1) | (pts[:, 0] >= ww - 2) | (pts[:, 1] <= 1) |
               (pts[:, 1] >= hh - 2))
  if on_border.sum() > 0.04 * len(pts):
    raise ScreenNotFoundError(
        'outline touches the image border: phone is cut off')
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
      lines.append(_line_from_points(pts[sel]))
  q = _corners(lines)
  # Each side must follow an image edge: a region boundary drawn by a wrong
  # mat level (a phone at the border fooling the border profile) does not.
  edges = cv2.Canny(blur, *_canny_thresholds(blur))
  edges = cv2.dilate(edges, np.ones((5, 5), np.uint8))
  for i in range(4):
    a, b = q[i], q[(i + 1) % 4]
    f = np.linspace(0.12, 0.88, 64)[:, None]
    p = np.round(a + f * (b - a)).astype(int)
    ok = (p[:, 0] >= 0) & (p[:, 0] < ww) & (p[:, 1] >= 0) & (p[:, 1] < hh)
    p = p[ok]
    if len(p) < 16 or edges[p[:, 1], p[:, 0]].mean() < 0.5 * 255:
      raise ScreenNotFoundError(
          f'the region\'s {_SIDES[i]} side follows no image edge')
  return q


# --------------------------------------------------------------------------
# Public API.


def find_screen_with_info(
    image_bgr: np.ndarray) -> tuple[np.ndarray, ScreenInfo]:
  """(4, 2) float32 corners tl, tr, br, bl and how they were found."""
  image = _validate(image_bgr)
  h, w = image.shape[:2]
  work = _working_image(image)
  diag = {'segments': 0, 'canny_thresholds': (0.0, 0.0),
          'frame_edge_sides': (), 'side_support': (0.0, 0.0, 0.0, 0.0)}
  try:
    q_work, diag = _hough_quad(work)
    q = _to_full(q_work, work.scale)
    frac, aspect, dev = _check_quad(q, w, h)
    return q, ScreenInfo('hough', '', work.scale, frac, aspect, dev, **diag)
  except ScreenNotFoundError as e:
    hough_error = e
  try:
    q = _to_full(_contour_quad(work), work.scale)
    frac, aspect, dev = _check_quad(q, w, h)
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
  image = _validate(image_bgr)
  work = _working_image(image)
  q = _to_full(_contour_quad(work), work.scale)
  _check_quad(q, image.shape[1], image.shape[0])
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


# --------------------------------------------------------------------------
# CLI: a contact sheet for eyeballing.


def _list_images(root: pathlib.Path) -> list[pathlib.Path]:
  exts = {'.jpg', '.jpeg', '.png'}
  return sorted(p for p in root.rglob('*')
                if p.is_file() and p.suffix.lower() in exts)


def _tile(image: np.ndarray | None, corners: np.ndarray | None,
          roi: np.ndarray | None, label: str, ok: bool,
          thumb_w: int) -> np.ndarray:
  """A downscaled frame with the outline (corner marks: tl red, tr yellow,
  br magenta, bl blue) and the rectified ROI beside it, under a label."""
  if image is None:
    thumb = np.zeros((round(thumb_w * 9 / 16), thumb_w, 3), np.uint8)
  else:
    h, w = image.shape[:2]
    s = thumb_w / float(w)
    thumb = cv2.resize(image, (thumb_w, max(1, round(h * s))),
                       interpolation=cv2.INTER_AREA)
    if corners is not None:
      p = np.round(((corners + 0.5) * s - 0.5) * 4).astype(np.int32)
      cv2.polylines(thumb, [p.reshape(-1, 1, 2)], True, (0, 255, 0), 1,
                    cv2.LINE_AA, shift=2)
      for (x, y), col in zip(p, [(0, 0, 255), (0, 255, 255), (255, 0, 255),
                                  (255, 128, 0)]):
        cv2.circle(thumb, (int(x), int(y)), 3 * 4, col, 1, cv2.LINE_AA,
                   shift=2)
  if roi is None:
    roi = np.zeros((ROI_SIZE[0], ROI_SIZE[1], 3), np.uint8)
  th = max(thumb.shape[0], roi.shape[0])
  tile = np.full((th + 18, thumb.shape[1] + roi.shape[1] + 6, 3), 32,
                 np.uint8)
  tile[18:18 + thumb.shape[0], :thumb.shape[1]] = thumb
  tile[18:18 + roi.shape[0], thumb.shape[1] + 6:] = roi
  cv2.putText(tile, label[:90], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
              (255, 255, 255) if ok else (0, 0, 255), 1, cv2.LINE_AA)
  return tile


def _contact_sheet(tiles: list[np.ndarray], columns: int) -> np.ndarray:
  if not tiles:
    return np.zeros((32, 32, 3), np.uint8)
  th = max(t.shape[0] for t in tiles)
  tw = max(t.shape[1] for t in tiles)
  rows = (len(tiles) + columns - 1) // columns
  sheet = np.zeros((rows * (th + 4), columns * (tw + 4), 3), np.uint8)
  for i, t in enumerate(tiles):
    r, c = divmod(i, columns)
    sheet[r * (th + 4):r * (th + 4) + t.shape[0],
          c * (tw + 4):c * (tw + 4) + t.shape[1]] = t
  return sheet


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m smsdd_jax.roi',
      description='Find the phone screen in every jpg/png under --input '
      '(recursively) and write a PNG contact sheet: each frame downscaled '
      'with the found outline drawn, and its rectified ROI beside it.')
  parser.add_argument('--input', required=True, help='folder, read recursively')
  parser.add_argument('--sheet', required=True, help='output PNG path')
  parser.add_argument('--columns', type=int, default=4)
  parser.add_argument('--thumb_width', type=int, default=320)
  parser.add_argument('--threads', type=int, default=1,
                      help='OpenCV threads (1: the timings are per core)')
  args = parser.parse_args(argv)
  cv2.setNumThreads(args.threads)

  root = pathlib.Path(args.input)
  paths = _list_images(root)
  if not paths:
    print(f'no jpg/png files under {root}', file=sys.stderr)
  tiles, counts, failures, times = [], {}, [], []
  for p in paths:
    rel = p.relative_to(root)
    image = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if image is None:
      failures.append((str(rel), 'unreadable image file'))
      print(f'{rel}: FAILED unreadable image file', flush=True)
      tiles.append(_tile(None, None, None, f'{rel}: unreadable', False,
                         args.thumb_width))
      continue
    t0 = time.perf_counter()
    try:
      corners, info = find_screen_with_info(image)
      roi = rectify(image, corners)
    except ScreenNotFoundError as e:
      failures.append((str(rel), str(e)))
      print(f'{rel}: FAILED {e}', flush=True)
      tiles.append(_tile(image, None, None, f'{rel}: {e}', False,
                         args.thumb_width))
      continue
    times.append(time.perf_counter() - t0)
    counts[info.method] = counts.get(info.method, 0) + 1
    extra = ''
    if info.hough_failure:
      extra += f' (hough: {info.hough_failure})'
    if info.frame_edge_sides:
      extra += f' (at frame edge: {",".join(info.frame_edge_sides)})'
    print(f'{rel}: {info.method} area={info.area_fraction:.3f} '
          f'aspect={info.aspect:.2f} '
          f'corner_dev={info.max_corner_deviation:.1f}deg '
          f'{1e3 * times[-1]:.1f}ms{extra}', flush=True)
    tiles.append(_tile(image, corners, roi, f'{rel} [{info.method}]', True,
                       args.thumb_width))
  sheet = _contact_sheet(tiles, max(1, args.columns))
  pathlib.Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(args.sheet, sheet):
    print(f'could not write {args.sheet}', file=sys.stderr)
    return 1
  found = sum(counts.values())
  summary = ', '.join(f'{k} {v}' for k, v in sorted(counts.items()))
  median = f'{1e3 * np.median(times):.1f} ms' if times else 'n/a'
  print(f'summary: {found}/{len(paths)} found ({summary or "none"}), '
        f'{len(failures)} failed; median find_screen + rectify {median} '
        f'({args.threads} OpenCV thread(s)); sheet {args.sheet}')
  for name, why in failures:
    print(f'  failed: {name}: {why}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
