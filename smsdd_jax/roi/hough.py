"""Hough step 2: which lines are the phone's sides, and the outline they make.

  1. A line (`lines.Cluster`) is a candidate side when, sampled in bands
     along it, the inside differs from the mat (dark glass or white bezel)
     and the outside is mat-like (at some distance: a shadow may hug the
     outline) and not white (so a screen's edge inside a white bezel, or a
     slot's edge, never qualifies). The band test also tells a top side from
     a bottom one (`_side_role`).
  2. Per side the long candidates are ranked outermost first (the outline is
     the outer boundary: the white bezel is included); a dark fringe hugging
     a white bezel yields to the bezel's own edge (`_rank_candidates`).
  3. The first combination of four (by rank) that makes a phone-shaped quad
     (`geometry.check_quad`) wins (`_choose_sides`). Where a phone ends right
     at the frame's edge (rounded corners in view), that edge can serve as a
     side; a phone whose straight sides run off the frame is refused as cut
     off.
  4. Each side is refit to the phone's outer boundary along its straight
     middle part, scanline by scanline (`_refine`); rounded corners: the
     outline's corner is where the fitted straight sides meet, not on the
     rounding.

`hough_quad` runs the whole detector at working resolution.
"""
from __future__ import annotations

import itertools

import cv2
import numpy as np

from smsdd_jax.roi.geometry import (SIDES, ScreenNotFoundError, across_at,
                                    check_quad, corners, line_from_points)
from smsdd_jax.roi.lines import (Cluster, cluster_family, edge_codes,
                                 segments, support)
from smsdd_jax.roi.work import Work, canny_thresholds

PHONE_MIN_DEV = 20.0           # the phone differs from the mat by this much.
BAND_DISTANCES = (3.0, 4.5, 6.0, 7.5, 9.0, 10.5, 12.0)  # px, working res.
MAX_BORDER_COVERAGE = 0.9      # more of a frame edge covered: cut off.
MAX_CANDIDATES = 4             # per side, tried in combinations.
# A combination's quad, before its sides are refit, may lie this far (x dim)
# outside the frame: the refit outline is held to BORDER_TOLERANCE later.
COMBO_BORDER_TOLERANCE = 0.02

_SIDE_NAMES = {('h', 'low'): 'top', ('h', 'high'): 'bottom',
               ('v', 'low'): 'left', ('v', 'high'): 'right'}


# --------------------------------------------------------------------------
# Is a line a phone side, and which?


def _row_nanmedian(a: np.ndarray) -> np.ndarray:
  """Median of each row ignoring NaNs (NaN for an all-NaN row); much faster
  than np.nanmedian(axis=1) on small arrays."""
  srt = np.sort(a, axis=1)  # NaNs sort last.
  k = np.sum(~np.isnan(a), axis=1)
  lo = np.clip((k - 1) // 2, 0, a.shape[1] - 1)
  hi = np.clip(k // 2, 0, a.shape[1] - 1)
  rows = np.arange(a.shape[0])
  return np.where(k > 0, 0.5 * (srt[rows, lo] + srt[rows, hi]), np.nan)


def _band_devs(work: Work, cl: Cluster) -> dict:
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


def _side_role(cl: Cluster, work: Work) -> tuple[str | None, np.ndarray]:
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


def _side_candidates(work: Work, edges: np.ndarray,
                     grad: tuple) -> tuple[dict, int]:
  """({side name: [(cluster, inside band)]}, number of Hough segments) from
  the Canny edges; raises when there is nothing to choose from."""
  hh, ww = work.blur.shape
  segs = segments(edges, ww)
  ang = np.mod(np.degrees(np.arctan2(segs[:, 3] - segs[:, 1],
                                     segs[:, 2] - segs[:, 0])), 180.0)
  is_h = (ang < 20.0) | (ang > 160.0)
  is_v = np.abs(ang - 90.0) < 20.0
  n_segments = int(is_h.sum() + is_v.sum())
  if n_segments == 0:
    raise ScreenNotFoundError('no long straight edges found')
  tol = max(2.0, 0.004 * ww)
  codes = edge_codes(edges, grad)
  cands = {k: [] for k in SIDES}
  for fam, sel, dim in (('h', is_h, ww), ('v', is_v, hh)):
    for cl in cluster_family(segs[sel], fam, tol, work.blur):
      cl.coverage = support(cl, codes)
      if cl.coverage < 0.08 * dim:
        continue
      role, inside = _side_role(cl, work)
      if role is not None:
        cands[_SIDE_NAMES[(fam, role)]].append((cl, inside))
  if not any(cands.values()):
    raise ScreenNotFoundError(
        f'no phone-outline edges found ({n_segments} straight '
        'segments, none between mat and phone)')
  return cands, n_segments


# --------------------------------------------------------------------------
# Ranking each side's candidates.


def _inside_darker(cl: Cluster, name: str) -> bool:
  """Whether the image gets darker across this edge going into the phone."""
  return cl.polarity == (-1 if name in ('top', 'left') else 1)


def _gap(a: Cluster, b: Cluster) -> float:
  """Distance between two lines of one family, over `a`'s extent."""
  t = np.array([a.lo, 0.5 * (a.lo + a.hi), a.hi])
  return float(np.abs(across_at(a.line, a.family, t) -
                      across_at(b.line, b.family, t)).max())


def _rank_candidates(name: str, cands: list) -> list[Cluster]:
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


def _frame_edge_line(name: str, work: Work) -> np.ndarray | None:
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


def _ranked_sides(work: Work, cands: dict) -> tuple[dict, dict]:
  """Per side, the candidates to try in order (None: the frame's edge, last)
  and the frame-edge lines; raises when a side has none."""
  edge_lines = {k: _frame_edge_line(k, work) for k in SIDES}
  ranked = {k: _rank_candidates(k, cands[k]) + (
      [None] if edge_lines[k] is not None else []) for k in SIDES}
  missing = [k for k in SIDES if not ranked[k]]
  if missing:
    raise ScreenNotFoundError(
        f'only {4 - len(missing)} of the 4 sides found (missing: '
        f'{", ".join(missing)})')
  return ranked, edge_lines


# --------------------------------------------------------------------------
# Choosing four sides: a phone-shaped quad that is not cut off.


def _border_coverage(name: str, sides: dict, work: Work) -> float:
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


def _runs_off(cl: Cluster, toward: str) -> bool:
  """Whether a side's straight edge runs on to the frame's edge `toward`
  ('low' or 'high' end of its axis): edge support on most of the last 2%."""
  n = len(cl.hits)
  b = max(4, int(0.02 * n))
  end = cl.hits[:b] if toward == 'low' else cl.hits[-b:]
  return float(end.mean()) >= 0.5


def _phone_ends_at_frame_edge(name: str, sides: dict, work: Work) -> bool:
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


def _cut_off(q: np.ndarray, sides: dict, at_edge: list, ranked: dict,
             work: Work) -> bool:
  """Whether the phone that quad q (of these sides) outlines runs off the
  frame."""
  hh, ww = work.blur.shape
  # (The adjacent sides' best candidates are tested too: a lower-ranked
  # piece that stops short must not make a cut-off phone look whole.)
  if not all(_phone_ends_at_frame_edge(k, sides, work) and
             _phone_ends_at_frame_edge(
                 k, {a: ranked[a][0] for a in SIDES}, work)
             for k in at_edge):
    return True
  # A side found right at the frame's edge may be an inner edge of a phone
  # running off the frame (a white bezel's cut remains outside it).
  near = max(3.0, 0.01 * ww)
  hugging = [k for k, hug in (
      ('top', max(q[0, 1], q[1, 1]) <= near),
      ('right', min(q[1, 0], q[2, 0]) >= ww - 1 - near),
      ('bottom', min(q[2, 1], q[3, 1]) >= hh - 1 - near),
      ('left', max(q[0, 0], q[3, 0]) <= near)) if hug and k not in at_edge]
  return any(_border_coverage(k, sides, work) > MAX_BORDER_COVERAGE
             for k in hugging)


def _choose_sides(work: Work, ranked: dict,
                  edge_lines: dict) -> tuple[dict, list, list]:
  """The first phone-shaped, whole combination by rank sum: (sides by name,
  None for a frame edge; their lines in SIDES order; the frame-edge sides)."""
  hh, ww = work.blur.shape
  combos = sorted(itertools.product(*(range(len(ranked[k])) for k in SIDES)),
                  key=sum)
  why = 'the sides found form no phone-shaped outline'
  for it in combos:
    sides = {k: ranked[k][i] for k, i in zip(SIDES, it)}
    lines = [sides[k].line if sides[k] is not None else edge_lines[k]
             for k in SIDES]
    try:
      q = corners(lines)
      # No upper bound on the area here: it is for the refit outline.
      check_quad(q, ww, hh, border_tol=COMBO_BORDER_TOLERANCE * ww,
                 max_area_fraction=np.inf)
    except ScreenNotFoundError:
      continue
    at_edge = [k for k in SIDES if sides[k] is None]
    if _cut_off(q, sides, at_edge, ranked, work):
      why = 'outline touches the image border: phone is cut off'
      continue
    return sides, lines, at_edge
  raise ScreenNotFoundError(why)


# --------------------------------------------------------------------------
# Refitting the chosen sides, and the detector.


def _refine(cl: Cluster, abs_grad: tuple, lo: float, hi: float,
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
    base = np.round(across_at(line, cl.family, t)).astype(int)
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
    line = line_from_points(pts)
  return line


def _side_support(sides: dict, lines: list) -> tuple[float, ...]:
  """Per side, its edge support over its length (0 for a frame edge)."""
  q = corners(lines)
  side_len = np.linalg.norm(q - np.roll(q, -1, axis=0), axis=1)
  return tuple(
      round(float(sides[k].coverage / side_len[i]), 3)
      if sides[k] is not None else 0.0 for i, k in enumerate(SIDES))


def _refine_sides(sides: dict, lines: list, grad: tuple,
                  min_grad: float) -> np.ndarray:
  """The outline after refitting each Hough side to its edge along its
  straight middle part (between the chosen quad's corners)."""
  lines = dict(zip(SIDES, lines))
  q = corners([lines[k] for k in SIDES])
  spans = {'top': (q[0, 0], q[1, 0]), 'right': (q[1, 1], q[2, 1]),
           'bottom': (q[3, 0], q[2, 0]), 'left': (q[0, 1], q[3, 1])}
  abs_grad = (np.abs(grad[0]), np.abs(grad[1]))
  for name in SIDES:
    if sides[name] is not None:
      lines[name] = _refine(sides[name], abs_grad, min(spans[name]),
                            max(spans[name]),
                            -1 if name in ('top', 'left') else 1, min_grad)
  return corners([lines[k] for k in SIDES])


def hough_quad(work: Work) -> tuple[np.ndarray, dict]:
  """Ordered corners at working resolution and diagnostics (ScreenInfo's
  segments, canny_thresholds, frame_edge_sides, side_support), or raises
  ScreenNotFoundError."""
  blur = work.blur
  low, high = canny_thresholds(blur)
  edges = cv2.Canny(blur, low, high, L2gradient=False)
  grad = (cv2.Sobel(blur, cv2.CV_16S, 1, 0), cv2.Sobel(blur, cv2.CV_16S, 0, 1))
  cands, n_segments = _side_candidates(work, edges, grad)
  ranked, edge_lines = _ranked_sides(work, cands)
  sides, lines, at_edge = _choose_sides(work, ranked, edge_lines)
  diag = {'segments': n_segments, 'canny_thresholds': (low, high),
          'frame_edge_sides': tuple(at_edge),
          'side_support': _side_support(sides, lines)}
  return _refine_sides(sides, lines, grad, low), diag
