"""Where the network looks: a map per image of what raised its defect score.

  maps = predictor.maps(rois_rgb_uint8)                  # (N, H, W) in [0, 1]
  rgb = maps_lib.overlay(roi, maps[0])                    # what predict --maps writes
  maps_lib.pixel_auroc(maps[0], mask), maps_lib.pointing_hit(maps[0], mask)

The score explained is the defect log-odds, logit[1] - logit[0], not the
probability: a confident softmax saturates, and its gradient with it, so the
map of a crop scored 0.999 would be noise.

Methods (`METHODS`):

  gradcam    Grad-CAM (Selvaraju et al., 2017) at one of the backbone's taps
             (smsdd_jax/backbones/; VGG16's: each block's output before its
             pool, default the last, 'block5': 1/16 of the ROI's size; a
             ResNet-18's: each stage's, default 'layer4', 1/32):
             relu(sum_c w_c A_c) with w_c the spatial mean of
             d(score)/dA_c, bilinearly upsampled to the ROI. One forward and
             one backward per image, jitted per batch like the scores.
  occlusion  The drop of the score when a patch of the normalised input is set
             to the training mean (zero), averaged over the patches covering
             each pixel. Model-agnostic and needs no gradient, but costs one
             forward per patch position (hundreds per ROI).

Grad-CAM at block5 is the default by evidence (docs/results.md, "Where is
the defect", magnetic_tile): on the same crops its pixel AUROC beat
occlusion's (0.658 against 0.611, paired over 10 runs), the pointing game did
not separate them, and blocks 3 and 4 localised worse; it also costs one
backward where occlusion costs hundreds of forwards.

Floors without the network, for the localisation tables: `residual_map`
(the absolute residual of the grey image against its median blur: the
background the anomaly floor of launch/floors.py subtracts) and
`random_map` (uniform noise: pixel AUROC 0.5 in expectation, pointing game
= the mask's share of the image).

Every map is normalised per image to [0, 1] by its maximum (an all-zero map
stays zero: nothing raised the score).
"""
from __future__ import annotations

from typing import Callable

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from smsdd_jax import backbones, metrics

METHODS = ('gradcam', 'occlusion')


def defect_score(logits: jax.Array) -> jax.Array:
  """(N, 2) logits -> (N,) defect log-odds (see the module doc for why)."""
  return logits[:, 1] - logits[:, 0]


def normalise(maps: jax.Array) -> jax.Array:
  """Per-image division by the maximum; all-zero maps stay zero."""
  peak = maps.max(axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def gradcam(params, model_state, x: jax.Array, *, model,
            layer: str | None = None) -> jax.Array:
  """Pure: normalised ROIs x (N, H, W, 3), the model's input
  (`inference.normalize`), -> Grad-CAM maps (N, H, W) float32 in [0, 1] at `layer`, a tap of the model's backbone (None: its default). Eval mode (BatchNorm's running statistics), so every image's map
  depends on that image alone and one backward of the batch's summed score
  gives each image's gradient."""
  taps = backbones.get(model.backbone).taps
  layer = layer or backbones.get(model.backbone).default_tap
  if layer not in taps:
    raise ValueError(f'layer={layer!r}: expected one of {tuple(taps)}')
  variables = {'params': params, **(model_state or {})}

  def run(perturbations):
    (logits, _), taps = model.apply({**variables, 'perturbations': perturbations}, x,
                                    train=False, mutable=['intermediates'])
    return defect_score(logits).sum(), taps['intermediates'][layer][0]

  # The perturbations' shapes are the taps' own: read them without computing.
  _, shapes = jax.eval_shape(lambda: model.apply(variables, x, train=False,
                                                 mutable=['intermediates']))
  zeros = {name: jnp.zeros(v[0].shape, v[0].dtype)
           for name, v in shapes['intermediates'].items()}
  grads, activation = jax.grad(run, has_aux=True)(zeros)
  weights = grads[layer].astype(jnp.float32).mean(axis=(1, 2), keepdims=True)
  cam = jax.nn.relu((weights * activation.astype(jnp.float32)).sum(-1))
  return normalise(jax.nn.relu(to_input_grid(cam, x.shape[1:3], taps[layer])))


def to_input_grid(cam: jax.Array, size: tuple[int, int], stride: int) -> jax.Array:
  """(N, h, w) block output -> (N, H, W) on the input's pixels. Cell (i, j)
  of a block `stride` = 2^pools input pixels apart covers input rows
  [i stride, (i + 1) stride); the pools' floor division leaves the last rows
  and columns (fewer than `stride`) uncovered: they take the nearest cell's
  value, where a plain resize to (H, W) would stretch the map over them and
  shift every cell (up to 14 px at the bottom of a 110-row ROI at block5).
  A tower that pads to ceil(size / 2) per stride (ResNet's) has cells past
  the border: they are cut off."""
  n, h, w = cam.shape
  up = jax.image.resize(cam, (n, h * stride, w * stride), method='bilinear')
  up = up[:, :size[0], :size[1]]
  return jnp.pad(up, ((0, 0), (0, size[0] - up.shape[1]), (0, size[1] - up.shape[2])),
                 mode='edge')


def occlusion_windows(size: tuple[int, int], patch: int, stride: int) -> np.ndarray:
  """(P, H, W) bool: each patch position's window, a stride apart, the last
  row and column flush with the border so every pixel is covered."""
  h, w = size
  if patch < 1 or stride < 1:
    raise ValueError(f'patch={patch}, stride={stride}: both must be >= 1')
  if patch > min(h, w):
    raise ValueError(f'patch={patch} is larger than the image ({h}x{w})')
  ys = sorted(set(range(0, h - patch + 1, stride)) | {h - patch})
  xs = sorted(set(range(0, w - patch + 1, stride)) | {w - patch})
  windows = np.zeros((len(ys) * len(xs), h, w), bool)
  for i, (y, x) in enumerate((y, x) for y in ys for x in xs):
    windows[i, y:y + patch, x:x + patch] = True
  return windows


def occlusion(score_fn: Callable[[jax.Array], jax.Array], image: jax.Array,
              windows: np.ndarray, *, chunk: int = 64) -> np.ndarray:
  """One normalised image (H, W, C) -> its occlusion map (H, W) in [0, 1].

  score_fn: a jitted (B, H, W, C) float32 -> (B,) defect log-odds for a fixed
  B = chunk (the last chunk is padded, so it compiles once)."""
  image = jnp.asarray(image)
  base = float(score_fn(jnp.broadcast_to(image, (chunk, *image.shape)))[0])
  drops = []
  for i in range(0, len(windows), chunk):
    win = windows[i:i + chunk]
    n = len(win)
    if n < chunk:
      win = np.concatenate([win, np.zeros((chunk - n, *win.shape[1:]), bool)])
    occluded = jnp.where(jnp.asarray(win)[..., None], 0.0, image[None])
    drops.append(np.asarray(base - score_fn(occluded))[:n])
  drop = np.concatenate(drops)
  total = np.tensordot(np.maximum(drop, 0.0), windows.astype(np.float32), axes=1)
  heat = total / np.maximum(windows.sum(0), 1)
  return np.asarray(normalise(jnp.asarray(heat)[None])[0])


# ------------------------------------------------------------------ floors


def residual_map(image: np.ndarray) -> np.ndarray:
  """(H, W[, C]) uint8 -> (H, W) float32 in [0, 1]: |grey - median blur| over
  a tenth of the short side (launch/floors.py's anomaly background)."""
  grey = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]),
                                                    cv2.COLOR_RGB2GRAY)
  k = max(3, int(0.1 * min(grey.shape)) | 1)
  residual = np.abs(grey.astype(np.float32) - cv2.medianBlur(grey, k).astype(np.float32))
  peak = residual.max()
  return residual / peak if peak > 0 else residual


def random_map(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
  return rng.random(size, dtype=np.float32)


# ------------------------------------------------------------------ metrics


def _mask2d(mask: np.ndarray) -> np.ndarray:
  mask = np.asarray(mask)
  return (mask[..., 0] if mask.ndim == 3 else mask) > 0


def pixel_auroc(heat: np.ndarray, mask: np.ndarray) -> float:
  """AUROC of the map's values as a score for "this pixel is defect" against
  the mask; NaN where the mask is empty or covers everything."""
  m = _mask2d(mask)
  if heat.shape != m.shape:
    raise ValueError(f'map {heat.shape} and mask {m.shape} differ in size')
  if m.all() or not m.any():
    return float('nan')
  return metrics.auroc(m.ravel().astype(np.int64), np.asarray(heat, np.float64).ravel())


def pointing_hit(heat: np.ndarray, mask: np.ndarray) -> float:
  """1.0 when the map's peak lies inside the mask (the pointing game,
  Zhang et al., 2016, without tolerance), 0.0 when not; NaN for an empty
  mask. Ties at the peak count the share of peak pixels inside."""
  m = _mask2d(mask)
  if heat.shape != m.shape:
    raise ValueError(f'map {heat.shape} and mask {m.shape} differ in size')
  if not m.any():
    return float('nan')
  peak = heat >= heat.max()
  return float(m[peak].mean())


# ------------------------------------------------------------------ pictures


def overlay(roi_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """The ROI (H, W, 3) uint8 RGB with the map (H, W) in [0, 1] blended over it
  in a jet colour scale (blue: nothing, red: what raised the score most)."""
  if roi_rgb.shape[:2] != heat.shape:
    raise ValueError(f'ROI {roi_rgb.shape[:2]} and map {heat.shape} differ in size')
  colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)
  colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
  return cv2.addWeighted(np.ascontiguousarray(roi_rgb, np.uint8), 1 - alpha, colour, alpha, 0)


def decision_sheet(predictor, images: np.ndarray, labels: np.ndarray, *, masks=None,
                   names=None, per_kind: int = 2):
  """An RGB picture of true and false decisions with their maps, or None
  when there are none: per kind (true defective, missed defect, false alarm,
  true good) the `per_kind` most confident (highest probability where it said
  defective, lowest where it said good), each ROI beside its Grad-CAM
  overlay, the mask (where given) outlined in white, a caption with the
  probability and `names` (e.g. the defect type)."""
  labels = np.asarray(labels).astype(bool)
  prob = predictor.predict_proba(images)
  decided = prob >= predictor.threshold
  rows = []
  for kind, sel, said_defective in (('true defective', labels & decided, True),
                                    ('missed defect', labels & ~decided, False),
                                    ('false alarm', ~labels & decided, True),
                                    ('true good', ~labels & ~decided, False)):
    order = np.flatnonzero(sel)
    order = order[np.argsort(-prob[order] if said_defective else prob[order])][:per_kind]
    if not len(order):
      continue
    for i, heat in zip(order, predictor.maps(images[order])):
      right = overlay(images[i], heat)
      if masks is not None:
        contours, _ = cv2.findContours((np.asarray(masks[i]) > 0).astype(np.uint8),
                                       cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(right, contours, -1, (255, 255, 255), 1)
      caption = np.zeros((18, images.shape[2] * 2, 3), np.uint8)
      text = f'{kind}: p={prob[i]:.2f}' + (f' {names[i]}' if names is not None else '')
      cv2.putText(caption, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                  cv2.LINE_AA)
      rows.append(np.concatenate([caption, np.concatenate([images[i], right], 1)], 0))
  return np.concatenate(rows, 0) if rows else None
