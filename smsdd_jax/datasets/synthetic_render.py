"""Synthetic raw camera frames of phone screens (numpy + cv2 only, no TensorFlow).

`render_frame(i, seed=s)` draws a 'raw camera frame' like those of the SMSDD
paper: a phone lying landscape on a textured dark-grey mat, filling most of
the frame, slightly rotated and perspective-skewed, a black phone (dark glass)
or a white phone (white bezel around a black display), faint reflections on
the glass, a lighting gradient, sensor noise and a mild blur; defective frames
carry a scratch, spots, a stain or an oil drop on the glass. Frame i depends
only on (seed, i): the scene and the defect use separate random streams, so
the same index rendered with `defective=False` is the same frame without the
defect, pixel for pixel, and the same index rendered at another frame_size
shows the same phone in the same pose (scaled).

Also here: `frame_plan` (which frames of a set are defective, and how),
`write_sample_frames` (frames as JPEG files in good/ and defective/) and
`quad_iou`. The TFDS builder that serves these frames, screen-found and
rectified, is `synthetic_screens`.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Sequence

import cv2
import numpy as np

from smsdd_jax import preprocess
from smsdd_jax import roi

DEFECT_TYPES = ('none', 'scratch', 'spot', 'stain', 'oil')
DEFECT_KINDS = DEFECT_TYPES[1:]
LABEL_NAMES = ('good', 'defective')
PHONES = ('black', 'white')
ROI_SIZE = preprocess.ROI_SIZE

_NOISE_PAD = 32  # Noise banks are this much larger than a frame (random crops).
_LOWRES = 8  # Smooth fields (mat, shading, lighting) are drawn at 1/8 size.
_SHIFT = 4  # Sub-pixel bits for cv2 drawing.


@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
  """One rendered raw camera frame.

  Attributes:
    image: (H, W, 3) uint8 BGR.
    corners: (4, 2) float32, true outline of the phone's front face in pixel
      (x, y), order tl, tr, br, bl (the sharp corners of the outline, i.e. where
      the straight edges meet; white bezel included on white phones).
    label: 0 good, 1 defective.
    defect_type: one of DEFECT_TYPES ('none' for good frames).
    phone: 'black' or 'white'.
  """
  image: np.ndarray
  corners: np.ndarray
  label: int
  defect_type: str
  phone: str


def _rngs(seed: int, index: int):
  """Scene, defect and texture streams, each a function of (seed, index) only.

  The scene and defect streams draw a fixed number of values whatever the
  frame size, so a frame shows the same phone, pose and defect (scaled) at
  every frame_size; the texture stream draws size-dependent noise.
  """
  if seed < 0 or index < 0:
    raise ValueError(f'seed and index must be >= 0, got {seed}, {index}')
  return tuple(np.random.default_rng([int(seed), int(index), k]) for k in range(3))


@functools.lru_cache(maxsize=4)
def _noise_banks(height: int, width: int):
  """Fixed noise fields slightly larger than a frame; frames crop at random.

  Returns (sensor_pos, sensor_neg, grain_pos, grain_neg), uint8 (h, w, 3)
  arrays; adding *_pos and subtracting *_neg (saturating) adds signed noise.
  """
  rng = np.random.default_rng(0x5C12EE)
  h, w = height + _NOISE_PAD, width + _NOISE_PAD
  sensor = rng.standard_normal((h, w, 3), dtype=np.float32)
  sensor *= 2.0  # Per-channel sensor noise, std ~2 levels.
  grain = rng.standard_normal((h, w), dtype=np.float32)
  grain = cv2.GaussianBlur(grain, (0, 0), 0.9)
  grain *= 3.2 / max(float(grain.std()), 1e-6)  # Mat texture, std ~3 levels.
  grain = cv2.merge([grain, grain, grain])

  def split(x):
    x = np.rint(x)
    return (np.clip(x, 0, 255).astype(np.uint8),
            np.clip(-x, 0, 255).astype(np.uint8))

  return (*split(sensor), *split(grain))


def _add_signed(img, pos, neg, rng):
  h, w = img.shape[:2]
  oy, ox = (int(v) for v in rng.integers(0, _NOISE_PAD, size=2))
  cv2.add(img, pos[oy:oy + h, ox:ox + w], dst=img)
  cv2.subtract(img, neg[oy:oy + h, ox:ox + w], dst=img)


def _map(hom: np.ndarray, pts) -> np.ndarray:
  """Maps (N, 2) local phone coordinates to (N, 2) image coordinates."""
  pts = np.asarray(pts, np.float64).reshape(-1, 1, 2)
  return cv2.perspectiveTransform(pts, hom).reshape(-1, 2)


def _fixed(pts) -> np.ndarray:
  return np.rint(np.asarray(pts) * (1 << _SHIFT)).astype(np.int32)


def _fill(img, pts, color, aa=True):
  cv2.fillPoly(img, [_fixed(pts)], _color(color),
               lineType=cv2.LINE_AA if aa else cv2.LINE_8, shift=_SHIFT)


def _polyline(img, pts, color, thickness, closed=False):
  cv2.polylines(img, [_fixed(pts)], closed, _color(color),
                thickness=max(1, int(round(thickness))), lineType=cv2.LINE_AA,
                shift=_SHIFT)


def _color(c):
  if np.isscalar(c):
    c = (c, c, c)
  return tuple(int(np.clip(round(float(v)), 0, 255)) for v in c)


def _rounded_rect(x0, y0, x1, y1, r, n=10) -> np.ndarray:
  """Clockwise outline (image axes) of a rectangle with rounded corners."""
  r = max(0.0, min(r, (x1 - x0) / 2, (y1 - y0) / 2))
  pts = []
  for cx, cy, a0 in ((x1 - r, y0 + r, -90.0), (x1 - r, y1 - r, 0.0),
                     (x0 + r, y1 - r, 90.0), (x0 + r, y0 + r, 180.0)):
    t = np.deg2rad(np.linspace(a0, a0 + 90.0, n))
    pts.append(np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1))
  return np.concatenate(pts)


def _blob(rng, cx, cy, radius, wobble, n=48, aspect=1.0, angle=None) -> np.ndarray:
  """Closed irregular contour: a circle with random low harmonics."""
  t = np.linspace(0, 2 * np.pi, n, endpoint=False)
  r = np.ones_like(t)
  for k in (2, 3, 4, 5):
    r += wobble * rng.uniform(0.2, 1.0) / k * np.cos(k * t + rng.uniform(0, 2 * np.pi))
  r = radius * np.clip(r, 0.35, None)
  x, y = r * np.cos(t) * aspect, r * np.sin(t)
  a = rng.uniform(0, np.pi) if angle is None else angle
  ca, sa = np.cos(a), np.sin(a)
  return np.stack([cx + ca * x - sa * y, cy + sa * x + ca * y], 1)


def _lowres_field(rng, h, w, sigma):
  f = rng.standard_normal((h, w)).astype(np.float32)
  f = cv2.GaussianBlur(f, (0, 0), sigma)
  return f / max(float(f.std()), 1e-6)


def _upscale(small, width, height):
  return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


@dataclasses.dataclass
class _Phone:
  kind: str
  length: float  # Local x extent (px).
  width: float  # Local y extent (px).
  hom: np.ndarray  # Local -> image homography.
  display: tuple[float, float, float, float]  # Local x0, y0, x1, y1 of the display.
  corners: np.ndarray  # (4, 2) image corners tl, tr, br, bl.


def _place_phone(rng, height, width) -> _Phone:
  """Chooses the phone's kind, size and pose."""
  kind = 'white' if rng.random() < 0.35 else 'black'
  aspect = rng.uniform(1.95, 2.06) if kind == 'white' else rng.uniform(2.0, 2.16)
  length = rng.uniform(0.76, 0.92) * width
  length = min(length, 0.9 * height * aspect)
  pw = length / aspect
  local = np.array([[0, 0], [length, 0], [length, pw], [0, pw]], np.float64)
  angle = np.deg2rad(rng.uniform(-2.0, 2.0))
  c, s = np.cos(angle), np.sin(angle)
  centred = local - [length / 2, pw / 2]
  img = centred @ np.array([[c, s], [-s, c]])
  # Perspective skew: a keystone along one axis plus small per-corner jitter.
  key = rng.uniform(-0.008, 0.008) * length
  img += np.array([[key, 0], [-key, 0], [0, 0], [0, 0]]) if rng.random() < 0.5 else \
      np.array([[0, key], [0, 0], [0, 0], [0, -key]])
  img += rng.uniform(-0.003, 0.003, size=(4, 2)) * width
  # Position: anywhere the phone fits with a margin.
  margin = 0.02 * width
  lo, hi = img.min(0), img.max(0)
  span_x = max(0.0, width - 2 * margin - (hi[0] - lo[0]))
  span_y = max(0.0, height - 2 * margin - (hi[1] - lo[1]))
  off_x = margin - lo[0] + span_x * rng.uniform(0.25, 0.75)
  off_y = margin - lo[1] + span_y * rng.uniform(0.2, 0.8)
  img += [off_x, off_y]
  hom = cv2.getPerspectiveTransform(local.astype(np.float32), img.astype(np.float32))
  if kind == 'white':
    ex, ey = rng.uniform(0.10, 0.14) * length, rng.uniform(0.05, 0.075) * pw
  else:
    ex, ey = rng.uniform(0.02, 0.045) * length, rng.uniform(0.015, 0.03) * pw
  display = (ex, ey, length - ex, pw - ey)
  return _Phone(kind, length, pw, hom.astype(np.float64), display,
                img.astype(np.float32))


def _draw_phone(img, rng, ph: _Phone, scale: float) -> np.ndarray:
  """Draws the phone; returns the full-resolution glass mask (uint8 0/255)."""
  L, P = ph.length, ph.width
  outline = _rounded_rect(0, 0, L, P, P * (rng.uniform(0.05, 0.09) if ph.kind == 'black'
                                           else rng.uniform(0.07, 0.11)))
  glass_mask = np.zeros(img.shape[:2], np.uint8)
  end = 1 if rng.random() < 0.5 else -1  # Which end has camera and speaker.
  cam_x = 0.5 * ph.display[0] if end == 1 else L - 0.5 * ph.display[0]
  draw = _draw_black_phone if ph.kind == 'black' else _draw_white_phone
  draw(img, glass_mask, rng, ph, outline, cam_x, scale)
  return glass_mask


def _draw_black_phone(img, glass_mask, rng, ph: _Phone, outline, cam_x, scale):
  """Dark edge, black glass (marked in glass_mask), camera, button, rim light."""
  L, P = ph.length, ph.width
  x0, y0, x1, y1 = ph.display
  btn_x = L - cam_x
  edge = rng.uniform(26, 42)
  _fill(img, _map(ph.hom, outline), (edge + 2, edge + 1, edge))
  inset = max(2.0, 2.5 * scale)
  inner = _rounded_rect(inset, inset, L - inset, P - inset,
                        P * 0.06)
  g = rng.uniform(9, 17)
  _fill(img, _map(ph.hom, inner), (g + 2, g + 1, g))
  cv2.fillPoly(glass_mask, [_fixed(_map(ph.hom, inner))], 255, cv2.LINE_8, _SHIFT)
  d = rng.uniform(1, 4)
  _fill(img, _map(ph.hom, _rounded_rect(x0, y0, x1, y1, P * 0.04)),
        (g + 2 - d, g + 1 - d, g - d))
  # Front camera (and sometimes a second sensor) near one end, outside the display.
  rad = max(2.0, rng.uniform(0.012, 0.018) * P)
  for k, dy in enumerate((0.0, 3.2 * rad) if rng.random() < 0.5 else (0.0,)):
    c = _map(ph.hom, [[cam_x, 0.5 * P + dy * (-1) ** k]])[0]
    cv2.circle(img, tuple(_fixed(c)), int(rad * (1 << _SHIFT)), _color(g + 16),
               -1, cv2.LINE_AA, _SHIFT)
  if rng.random() < 0.4:  # Fingerprint button at the other end.
    bw, bh = 0.35 * x0 + 0.01 * L, 0.14 * P
    btn = _rounded_rect(btn_x - bw / 2, 0.5 * P - bh, btn_x + bw / 2, 0.5 * P + bh,
                        0.45 * bw)
    _polyline(img, _map(ph.hom, btn), g + 14, 1.5 * scale, closed=True)
  # Bright rim highlight along one long edge.
  if rng.random() < 0.85:
    yy = inset * 0.6 if rng.random() < 0.5 else P - inset * 0.6
    a, b = sorted(rng.uniform(0.02, 0.98, size=2))
    if b - a > 0.25:
      xs = np.linspace(a * L, b * L, 24)
      bright = rng.uniform(60, 170)
      _polyline(img, _map(ph.hom, np.stack([xs, np.full_like(xs, yy)], 1)),
                (bright + 20, bright + 5, bright), max(1.0, 1.6 * scale))


def _draw_white_phone(img, glass_mask, rng, ph: _Phone, outline, cam_x, scale):
  """White bezel, black display (marked in glass_mask), speaker, camera, keys."""
  L, P = ph.length, ph.width
  x0, y0, x1, y1 = ph.display
  btn_x = L - cam_x
  w = rng.uniform(212, 245)
  tint = rng.uniform(-4, 4)
  edge = w - rng.uniform(25, 45)
  _fill(img, _map(ph.hom, outline), (edge + 4, edge + 2, edge))
  inset = max(2.0, 3.0 * scale)
  inner = _rounded_rect(inset, inset, L - inset, P - inset, P * 0.07)
  _fill(img, _map(ph.hom, inner), (w - tint, w, w + tint))
  g = rng.uniform(8, 15)
  disp = _rounded_rect(x0, y0, x1, y1, 1.5 * scale)
  _fill(img, _map(ph.hom, disp), (g + 2, g + 1, g))
  cv2.fillPoly(glass_mask, [_fixed(_map(ph.hom, disp))], 255, cv2.LINE_8, _SHIFT)
  dv = rng.uniform(22, 45)
  dark = (dv + 10, dv, dv - 4)  # Speaker slot and camera: near-black, bluish.
  # Speaker slot with the camera beside it on the camera end.
  sw, sh = max(2.0, rng.uniform(0.005, 0.008) * L), 0.18 * P
  _fill(img, _map(ph.hom, _rounded_rect(cam_x - sw / 2, 0.5 * P - sh / 2,
                                        cam_x + sw / 2, 0.5 * P + sh / 2, sw / 2)),
        dark)
  for dy in (-0.22 * P, 0.2 * P) if rng.random() < 0.6 else (-0.22 * P,):
    c = _map(ph.hom, [[cam_x, 0.5 * P + dy]])[0]
    cv2.circle(img, tuple(_fixed(c)), int(max(2.0, 0.017 * P) * (1 << _SHIFT)),
               _color(dark), -1, cv2.LINE_AA, _SHIFT)
  style = rng.integers(3)
  if style == 0:  # Oval home button.
    bw, bh = 0.32 * x0, 0.13 * P
    btn = _rounded_rect(btn_x - bw / 2, 0.5 * P - bh, btn_x + bw / 2, 0.5 * P + bh,
                        0.49 * bw)
    _polyline(img, _map(ph.hom, btn), w - 45, 2 * scale, closed=True)
  elif style == 1:  # Three capacitive-key marks.
    for dy in (-0.3 * P, 0.0, 0.3 * P):
      c = _map(ph.hom, [[btn_x, 0.5 * P + dy]])[0]
      cv2.circle(img, tuple(_fixed(c)), int(max(2.0, 0.012 * P) * (1 << _SHIFT)),
                 _color(w - 50), max(1, int(scale)), cv2.LINE_AA, _SHIFT)


def _glass_shading(rng, h8, w8) -> np.ndarray:
  """Low-res additive glass shading: gradient, camera-rig reflection, sheen."""
  yy, xx = np.mgrid[0:h8, 0:w8].astype(np.float32)
  xx /= w8
  yy /= h8
  a = rng.uniform(0, 2 * np.pi)
  grad = np.cos(a) * xx + np.sin(a) * yy
  f = rng.uniform(1, 5) + rng.uniform(0, 5) * (grad - grad.min())
  # Reflection of the camera rig above the phone: a soft rectangle and a bar.
  cx, cy = rng.uniform(0.44, 0.56), rng.uniform(0.33, 0.5)
  rw, rh = rng.uniform(0.08, 0.12), rng.uniform(0.18, 0.26)
  lift = rng.uniform(2, 5)
  box = (np.abs(xx - cx) < rw / 2) & (np.abs(yy - cy) < rh / 2)
  bar = (np.abs(xx - cx) < rw / 8) & (yy < cy) & (yy > cy - rh * 1.2)
  f += lift * (box | bar)
  # Broad diagonal sheen.
  if rng.random() < 0.6:
    b = rng.uniform(0, 2 * np.pi)
    d = np.cos(b) * (xx - rng.uniform(0.2, 0.8)) + np.sin(b) * (yy - 0.5)
    f += rng.uniform(1, 5) * np.exp(-(d / rng.uniform(0.05, 0.15)) ** 2)
  f = cv2.GaussianBlur(f, (0, 0), 1.2)
  return cv2.merge([f * 1.12, f * 1.04, f]).clip(0, 255).astype(np.uint8)


# Defects. Sizes are in units of `k`, the number of frame pixels per ROI pixel
# (the phone's length / 230), so that every defect stays visible in the ROI.


def _defect_anchor(rng, ph: _Phone, extent: float):
  x0, y0, x1, y1 = ph.display
  m = extent + 0.03 * (x1 - x0)
  mx = min(m, 0.45 * (x1 - x0))
  my = min(m, 0.45 * (y1 - y0))
  return rng.uniform(x0 + mx, x1 - mx), rng.uniform(y0 + my, y1 - my)


def _draw_scratch(img, rng, ph: _Phone, k: float):
  x0, y0, x1, y1 = ph.display
  dw, dh = x1 - x0, y1 - y0
  for n in range(rng.choice([1, 1, 1, 2, 3])):
    length = rng.uniform(0.15, 0.45) * dw * (1.0 if n == 0 else 0.5)
    a = rng.uniform(-0.6, 0.6) if rng.random() < 0.6 else rng.uniform(0, np.pi)
    half = np.array([np.cos(a), np.sin(a)]) * length / 2
    # Keep the whole scratch on the display.
    hx, hy = abs(half[0]) + 0.02 * dw, abs(half[1]) + 0.02 * dw
    hx, hy = min(hx, 0.49 * dw), min(hy, 0.49 * dh)
    c = np.array([rng.uniform(x0 + hx, x1 - hx), rng.uniform(y0 + hy, y1 - hy)])
    p0, p2 = c - half, c + half
    bend = rng.normal(0, 0.12) * length * np.array([-np.sin(a), np.cos(a)])
    t = np.linspace(0, 1, 40)[:, None]
    pts = (1 - t) ** 2 * p0 + 2 * t * (1 - t) * (c + bend) + t ** 2 * p2
    lo = np.array([x0 + 2, y0 + 2])
    hi = np.array([x1 - 2, y1 - 2])
    pts = np.clip(pts, lo, hi)
    pts_img = _map(ph.hom, pts)
    bright = rng.uniform(150, 245) * (1.0 if n == 0 else 0.8)
    thick = max(1.0, rng.uniform(0.35, 0.6) * k)
    # A faint wide halo under a bright core, drawn in short pieces of varying
    # brightness (a real scratch catches the light unevenly).
    _polyline(img, pts_img, bright * 0.35, thick * 2.2)
    seg = 5
    for i in range(0, len(pts_img) - 1, seg):
      f = rng.uniform(0.7, 1.0)
      _polyline(img, pts_img[i:i + seg + 1], (bright * f, bright * f, bright * f * 0.95),
                thick)


def _draw_spot(img, rng, ph: _Phone, k: float):
  n = rng.choice([1, 1, 2, 3])
  for _ in range(n):
    r = rng.uniform(1.0, 1.7) * k
    cx, cy = _defect_anchor(rng, ph, 2 * r)
    c = _map(ph.hom, [[cx, cy]])[0]
    cfix = tuple(_fixed(c))
    rr = int(r * (1 << _SHIFT))
    if rng.random() < 0.6:  # Bright dust / pit.
      v = rng.uniform(170, 255)
      cv2.circle(img, cfix, int(rr * 1.8), _color(v * 0.3), -1, cv2.LINE_AA, _SHIFT)
      cv2.circle(img, cfix, rr, _color((v, v, v * 0.97)), -1, cv2.LINE_AA, _SHIFT)
    else:  # Dark particle: grey-brown crud with a lighter rim.
      v = rng.uniform(55, 90)
      cv2.circle(img, cfix, int(rr * 1.3), _color(v * 2.2), -1, cv2.LINE_AA, _SHIFT)
      cv2.circle(img, cfix, rr, _color((v * 0.8, v * 0.9, v)), -1, cv2.LINE_AA, _SHIFT)


def _blend_shape(img, pts_img, color, alpha, soften, texture_rng=None):
  """Alpha-blends a filled polygon (with softened edge) onto img, in place."""
  h, w = img.shape[:2]
  pad = int(3 * soften) + 2
  x_lo, y_lo = np.floor(pts_img.min(0)).astype(int) - pad
  x_hi, y_hi = np.ceil(pts_img.max(0)).astype(int) + pad
  x_lo, y_lo = max(x_lo, 0), max(y_lo, 0)
  x_hi, y_hi = min(x_hi, w), min(y_hi, h)
  if x_hi <= x_lo or y_hi <= y_lo:
    return
  mask = np.zeros((y_hi - y_lo, x_hi - x_lo), np.float32)
  cv2.fillPoly(mask, [_fixed(pts_img - [x_lo, y_lo])], 1.0, cv2.LINE_AA, _SHIFT)
  if soften > 0:
    mask = cv2.GaussianBlur(mask, (0, 0), soften)
  if texture_rng is not None:
    tex = cv2.resize(texture_rng.uniform(0.55, 1.0, size=(6, 6)).astype(np.float32),
                     mask.shape[::-1], interpolation=cv2.INTER_CUBIC)
    mask *= tex
  a = (alpha * mask)[..., None]
  crop = img[y_lo:y_hi, x_lo:x_hi].astype(np.float32)
  crop = crop * (1 - a) + np.asarray(color, np.float32) * a
  img[y_lo:y_hi, x_lo:x_hi] = np.clip(crop + 0.5, 0, 255).astype(np.uint8)


def _draw_stain(img, rng, ph: _Phone, k: float):
  for n in range(rng.choice([1, 1, 2])):
    r = rng.uniform(3.0, 8.0) * k * (1.0 if n == 0 else 0.6)
    cx, cy = _defect_anchor(rng, ph, 1.5 * r)
    pts = _map(ph.hom, _blob(rng, cx, cy, r, wobble=0.9, aspect=rng.uniform(1.0, 1.8)))
    v = rng.uniform(80, 140)
    color = (v * 0.85, v * 0.95, v) if rng.random() < 0.5 else (v, v, v)
    _blend_shape(img, pts, color, rng.uniform(0.45, 0.7), soften=0.25 * k,
                 texture_rng=rng)
    # Darker dried edge ring.
    _polyline(img, pts, (v * 0.7, v * 0.75, v * 0.8), max(1.0, 0.25 * k), closed=True)


def _draw_oil(img, rng, ph: _Phone, k: float):
  r = rng.uniform(4.0, 9.0) * k
  cx, cy = _defect_anchor(rng, ph, 1.6 * r)
  local = _blob(rng, cx, cy, r, wobble=rng.uniform(0.3, 1.0), aspect=rng.uniform(1.0, 1.7))
  pts = _map(ph.hom, local)
  # Translucent body, slightly lighter than the glass.
  _blend_shape(img, pts, (60, 58, 55), rng.uniform(0.15, 0.3), soften=0.3 * k)
  # Dim rim all around, bright specular rim on the lit side.
  _polyline(img, pts, rng.uniform(70, 110), max(1.0, 0.3 * k), closed=True)
  n = len(pts)
  start = rng.integers(n)
  span = rng.integers(n // 4, (3 * n) // 4)
  idx = (start + np.arange(span)) % n
  bright = rng.uniform(170, 250)
  _polyline(img, pts[idx], (bright, bright, bright * 0.95), max(1.0, rng.uniform(0.4, 0.6) * k))
  # Specular dot inside, near the bright rim.
  mid = pts[idx[len(idx) // 2]]
  centre = pts.mean(0)
  dot = centre + 0.55 * (mid - centre)
  cv2.circle(img, tuple(_fixed(dot)), int(max(1.0, 0.5 * k) * (1 << _SHIFT)),
             _color(bright), -1, cv2.LINE_AA, _SHIFT)


_DEFECT_DRAWERS = {
    'scratch': _draw_scratch,
    'spot': _draw_spot,
    'stain': _draw_stain,
    'oil': _draw_oil,
}


def _defect_type(drng, defective: bool, defect_type: str | None) -> str:
  """Checks the requested defect type, drawing one when a defective frame
  names none."""
  if defective:
    if defect_type is None:
      defect_type = DEFECT_KINDS[int(drng.integers(len(DEFECT_KINDS)))]
    if defect_type not in DEFECT_KINDS:
      raise ValueError(f'defect_type must be one of {DEFECT_KINDS}, got {defect_type!r}')
    return defect_type
  if defect_type not in (None, 'none'):
    raise ValueError(f'a good frame has no defect, got defect_type={defect_type!r}')
  return 'none'


def _draw_mat(scene, texture, height, width, grid) -> np.ndarray:
  """The empty mat: base colour, gradient and mottling drawn at low res
  (`grid` = the low-res (yy, xx) coordinates), plus fine grain."""
  yy, xx = grid
  h8, w8 = xx.shape
  level = scene.uniform(56, 80)
  grad = (scene.uniform(-6, 6) * (xx / w8 - 0.5) + scene.uniform(-6, 6) * (yy / h8 - 0.5))
  mott = 1.1 * _lowres_field(texture, h8, w8, sigma=scene.uniform(2, 5))
  base = level + grad + mott
  tint = (scene.uniform(-1.5, 1.0), scene.uniform(0.5, 2.0), scene.uniform(-3.5, -0.5))
  mat = cv2.merge([base + t for t in tint]).clip(0, 255).astype(np.uint8)
  img = _upscale(mat, width, height)
  _, _, grain_pos, grain_neg = _noise_banks(height, width)
  _add_signed(img, grain_pos, grain_neg, scene)
  return img


def _lighting(scene, grid, scale: float):
  """Low-res lighting gain (x128, uint8: gradient and vignette) and the blur
  sigma for the whole scene."""
  yy, xx = grid
  h8, w8 = xx.shape
  gx, gy = scene.uniform(-0.08, 0.08, size=2)
  vig = scene.uniform(0.0, 0.1)
  u, v = xx / w8 - 0.5, yy / h8 - 0.5
  gain = 1.0 + gx * u + gy * v - vig * (u * u + v * v) * 2
  gain = np.clip(gain * 128, 0, 255).astype(np.uint8)
  blur_sigma = max(0.5, scene.uniform(0.7, 1.0) * scale)
  return gain, blur_sigma


def render_frame(index: int, *, seed: int = 0, frame_size: Sequence[int] = (1080, 1920),
                 defective: bool, defect_type: str | None = None) -> Frame:
  """Renders raw camera frame `index` of the synthetic set `seed`.

  Args:
    index: frame number (>= 0).
    seed: data set seed (>= 0).
    frame_size: (height, width) of the frame in pixels.
    defective: whether the glass carries a defect.
    defect_type: one of DEFECT_KINDS for a defective frame (None: drawn from
      the frame's own random stream); None or 'none' for a good frame.

  Returns:
    A Frame. Deterministic in (index, seed, frame_size, defective, defect_type).
  """
  height, width = (int(v) for v in frame_size)
  if height < 64 or width < 64:
    raise ValueError(f'frame_size too small: {frame_size}')
  scene, drng, texture = _rngs(seed, index)
  defect_type = _defect_type(drng, defective, defect_type)
  scale = min(width / 1920.0, height / 1080.0)
  h8, w8 = height // _LOWRES + 2, width // _LOWRES + 2
  grid = np.mgrid[0:h8, 0:w8].astype(np.float32)  # (yy, xx) at low res.
  img = _draw_mat(scene, texture, height, width, grid)

  # Phone, glass shading.
  phone = _place_phone(scene, height, width)
  glass = _draw_phone(img, scene, phone, scale)
  shade = _upscale(_glass_shading(scene, h8, w8), width, height)
  cv2.add(img, shade, dst=img, mask=glass)
  # Lighting drawn now, so that the defect stream does not influence it.
  gain, blur_sigma = _lighting(scene, grid, scale)

  # Defect (its own random stream).
  if defective:
    k = phone.length / ROI_SIZE[1]
    _DEFECT_DRAWERS[defect_type](img, drng, phone, k)

  gain = _upscale(cv2.merge([gain, gain, gain]), width, height)
  cv2.multiply(img, gain, dst=img, scale=1.0 / 128)
  img = cv2.GaussianBlur(img, (5, 5), blur_sigma)
  sensor_pos, sensor_neg, _, _ = _noise_banks(height, width)
  _add_signed(img, sensor_pos, sensor_neg, scene)
  return Frame(image=img, corners=phone.corners.copy(), label=int(bool(defective)),
               defect_type=defect_type, phone=phone.kind)


def frame_plan(num_frames: int, num_defective: int, seed: int = 0
               ) -> list[tuple[int, bool, str]]:
  """Which frames are defective, and with which defect.

  Returns a list of (index, defective, defect_type), one per index 0 ..
  num_frames - 1 in order; exactly num_defective are defective, their defect
  types spread evenly over DEFECT_KINDS (counts differ by at most one); good
  frames have defect_type 'none'. Deterministic in the arguments.
  """
  if not 0 <= num_defective <= num_frames:
    raise ValueError(f'need 0 <= num_defective <= num_frames, got {num_defective}, '
                     f'{num_frames}')
  rng = np.random.default_rng([int(seed), 0xF7A])
  bad = rng.permutation(num_frames)[:num_defective]
  kinds = rng.permutation(num_defective) % len(DEFECT_KINDS)
  types = {int(i): DEFECT_KINDS[int(j)] for i, j in zip(bad, kinds)}
  return [(i, i in types, types.get(i, 'none')) for i in range(num_frames)]


def quad_iou(a, b) -> float:
  """IoU of two quadrilaterals given as (4, 2) (x, y) corners (exact polygon
  clipping in roi.py; cv2.intersectConvexConvex misreports near-identical
  quads, which is exactly the case here)."""
  return roi.quad_iou(a, b)


def write_sample_frames(out_dir: str, n: int, *, seed: int = 0,
                        frame_size: Sequence[int] = (1080, 1920),
                        defective_fraction: float = 0.5) -> list[str]:
  """Writes n raw frames as JPEG files into out_dir/good/ and out_dir/defective/.

  The files are frames 0 .. n-1 of set `seed` (the same pixels as
  render_frame gives, up to JPEG quality 92); which of them are defective, and
  with which defect, follows frame_plan(n, round(n * defective_fraction), seed),
  so the defect types rotate over the four kinds. Files are named
  `good_0003.jpg` / `<defect_type>_0007.jpg`. Returns the paths written, in
  frame order.
  """
  plan = frame_plan(n, int(round(n * defective_fraction)), seed)
  paths = []
  for sub in LABEL_NAMES:
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
  for index, defective, dtype in plan:
    fr = render_frame(index, seed=seed, frame_size=frame_size, defective=defective,
                      defect_type=dtype if defective else None)
    name = f'{"good" if not defective else dtype}_{index:04d}.jpg'
    path = os.path.join(out_dir, LABEL_NAMES[fr.label], name)
    if not cv2.imwrite(path, fr.image, [cv2.IMWRITE_JPEG_QUALITY, 92]):
      raise OSError(f'could not write {path}')
    paths.append(path)
  return paths
