"""Hough step 1: Canny edges -> straight lines with their edge support.

`cv2.HoughLinesP` segments are split into near-horizontal ('h') and
near-vertical ('v') families (the phone lies landscape, rotated a few
degrees), grouped by polarity into lines (`cluster_family`: pieces of a
slightly bowed edge joined) and each line's length is measured as its edge
support (`support`: Canny pixels on it with the right gradient direction),
not by the Hough segments, which come fragmented. `hough` then decides which
lines are the phone's sides.
"""
from __future__ import annotations

import dataclasses
import itertools

import cv2
import numpy as np

from smsdd_jax.roi.geometry import across_at


@dataclasses.dataclass
class Cluster:
  family: str             # 'h' or 'v'
  polarity: int           # +1: brighter below (h) / right (v) of the line.
  offset: float           # the line's y (h) / x (v) at the frame's centre
  segs: np.ndarray        # (k, 4) x1 y1 x2 y2
  line: np.ndarray        # (nx, ny, c) fitted to the segments' points
  lo: float               # the segments' extent along the axis (x for h,
  hi: float               # y for v)
  coverage: float = 0.0   # edge support along the line (px), see support.
  hits: np.ndarray | None = None  # per position along the frame, ditto.


def segments(edges: np.ndarray, work_w: int) -> np.ndarray:
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


def edge_codes(edges: np.ndarray, grad: tuple) -> dict:
  """Per family, an int8 image: the polarity (+1 / -1) of each Canny pixel
  whose gradient runs across that family's lines, 0 elsewhere."""
  gx, gy = grad
  ax, ay = np.abs(gx), np.abs(gy)
  on = edges > 0
  return {'h': (np.sign(gy) * (on & (ay > ax))).astype(np.int8),
          'v': (np.sign(gx) * (on & (ax > ay))).astype(np.int8)}


def support(cl: Cluster, codes: dict) -> float:
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
  base = np.round(across_at(cl.line, cl.family, t)).astype(int)
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


# --------------------------------------------------------------------------
# Clustering one family's segments into lines.


@dataclasses.dataclass
class _Oriented:
  """One family's segments in (along, across) coordinates, (x, y) for 'h'
  and (y, x) for 'v', each running towards increasing `along`."""
  x1: np.ndarray
  y1: np.ndarray
  x2: np.ndarray
  y2: np.ndarray
  length: np.ndarray

  def fit(self, m: list) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Length-weighted fit across = k * along + b0 through the ends of the
    segments `m` -> (k, b0, along, across)."""
    xs = np.concatenate([self.x1[m], self.x2[m]])
    ys = np.concatenate([self.y1[m], self.y2[m]])
    wts = np.concatenate([self.length[m], self.length[m]])
    k, b0 = np.polyfit(xs, ys, 1, w=np.sqrt(wts))
    return k, b0, xs, ys


def _orient(segs: np.ndarray, family: str) -> _Oriented:
  x1, y1, x2, y2 = segs.T
  if family == 'v':  # work in (along, across) = (y, x) for verticals.
    x1, y1, x2, y2 = y1, x1, y2, x2
  flip = x2 < x1
  x1, x2 = np.where(flip, x2, x1), np.where(flip, x1, x2)
  y1, y2 = np.where(flip, y2, y1), np.where(flip, y1, y2)
  return _Oriented(x1, y1, x2, y2, np.hypot(x2 - x1, y2 - y1))


def _group(o: _Oriented, pol: np.ndarray, tol: float) -> list:
  """Greedy, longest first: a segment joins the nearest group of its
  polarity whose line both its ends lie within `tol` of, else starts one.
  Groups are [polarity, member indices, (slope, intercept)]."""
  groups = []
  for i in np.argsort(-o.length):
    best, best_d = None, tol
    for g in groups:
      if g[0] != pol[i]:
        continue
      k, b0 = g[2]
      d = max(abs(o.y1[i] - (k * o.x1[i] + b0)),
              abs(o.y2[i] - (k * o.x2[i] + b0)))
      if d <= best_d:
        best, best_d = g, d
    if best is None:
      k = (o.y2[i] - o.y1[i]) / max(o.x2[i] - o.x1[i], 1e-9)
      groups.append([pol[i], [i], (k, o.y1[i] - k * o.x1[i])])
    else:
      best[1].append(i)
      k, b0, _, _ = o.fit(best[1])
      best[2] = (k, b0)
  return groups


def _joined(o: _Oriented, ga: list, gb: list, tol: float) -> list | None:
  """The two groups as one [polarity, members, line] if they are pieces of
  one bowed edge (see `_merge_bowed`), else None."""
  if ga[0] != gb[0]:
    return None
  lo_a, hi_a = o.x1[ga[1]].min(), o.x2[ga[1]].max()
  lo_b, hi_b = o.x1[gb[1]].min(), o.x2[gb[1]].max()
  overlap = min(hi_a, hi_b) - max(lo_a, lo_b)
  if overlap > 0.2 * min(hi_a - lo_a, hi_b - lo_b):
    return None
  t = 0.5 * (max(lo_a, lo_b) + min(hi_a, hi_b))
  (ka, ba), (kb, bb) = ga[2], gb[2]
  if (abs((ka * t + ba) - (kb * t + bb)) > 2 * tol or
      abs(np.degrees(np.arctan(ka) - np.arctan(kb))) > 1.5):
    return None
  m = ga[1] + gb[1]
  k, b0, xs, ys = o.fit(m)
  if np.abs(ys - (k * xs + b0)).max() > 1.5 * tol:
    return None  # an arc (a bowed short side), not one straight edge.
  return [ga[0], m, (k, b0)]


def _merge_bowed(o: _Oriented, groups: list, tol: float) -> None:
  """Joins, in place, the groups that are pieces of one bowed edge.

  Pieces of one long edge that is slightly bowed (curved glass, lens
  distortion) fit no single line within `tol`: groups that follow each
  other along the axis (overlapping by <= 20%), meet within 2 * tol, differ
  by <= 1.5 degrees and together fit a line within 1.5 * tol are one edge.
  """
  merged = True
  while merged:
    merged = False
    for ga, gb in itertools.combinations(groups, 2):
      joined = _joined(o, ga, gb, tol)
      if joined is not None:
        ga[1], ga[2] = joined[1], joined[2]
        groups.remove(gb)
        merged = True
        break


def cluster_family(segs: np.ndarray, family: str, tol: float,
                   blur: np.ndarray) -> list[Cluster]:
  """Groups one family's segments into lines, greedily, longest first.

  A segment joins the line of a cluster of its polarity when both its ends
  lie within `tol` px of that line (the top and bottom sides of a phone seen
  in perspective have different slopes, so there is no common direction to
  project on); otherwise it starts a cluster. Edges of opposite polarity
  (the two edges of a thin white bezel) never merge. Then pieces of a bowed
  edge are joined. A cluster's offset is its line's position at the frame's
  centre.
  """
  if len(segs) == 0:
    return []
  h, w = blur.shape
  o = _orient(segs, family)
  groups = _group(o, _polarity(blur, segs, family), tol)
  _merge_bowed(o, groups, tol)
  centre = 0.5 * (w if family == 'h' else h)
  out = []
  for p, g, (k, b0) in groups:
    # across = k * along + b0  ->  (nx, ny, c) in image (x, y).
    norm = np.hypot(k, 1.0)
    line = (np.array([-k, 1.0, b0]) if family == 'h' else
            np.array([1.0, -k, b0])) / norm
    out.append(Cluster(
        family, int(p), float(across_at(line, family, centre)), segs[g],
        line, float(o.x1[g].min()), float(o.x2[g].max())))
  return out
