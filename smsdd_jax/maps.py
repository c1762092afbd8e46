"""Where the network looks: a map per image of what raised its defect score.

  heat = predictor.maps(rois_rgb_uint8)                   # (N, H, W) >= 0, absolute ('fine')
  heat = predictor.maps(rois, 'gradcam', layer='block5')  # another method, one flag away
  shown, scale = predictor.readable_maps(rois)           # [0, 1] on the run's calibrated scale
  rgb = maps_lib.overlay(roi, shown[0], caption=[...])   # what predict --maps writes
  maps_lib.pixel_auroc(heat[0], mask), maps_lib.pointing_hit(heat[0], mask)

The score explained is the defect log-odds, logit[1] - logit[0], not the
probability: a confident softmax saturates, and its gradient with it, so the
map of a crop scored 0.999 would be noise.

Methods (`METHODS`; one forward and one backward per image, jitted per batch
like the scores, in chunks of MAP_CHUNK ROIs, unless said otherwise):

  fine        The default by evidence (docs/results.md, "Where is the
              defect": the best pixel AUROC and pointing game on the
              validation folds' masks of magnetic_tile, confirmed on the test
              folds). Where: the mean of two maps each divided by its own
              maximum, Grad-CAM++ at the tap 4 input pixels a cell (VGG16's
              block3) and gradient x input smoothed by a Gaussian of `sigma`
              px. How much: the peak of Grad-CAM at the backbone's default
              tap (block5), the cells the classifier reads, which follows the
              score (a good crop's is low), so the map is cool where the
              network saw nothing.
  fine_fast   fine with its detail read at the tap 2 input pixels a cell
              (VGG16's block2: gradient x activation there) instead of the
              input, so no backward runs through the full-resolution layers
              (and, block2 ending in a max-pool, it is read from the pool's
              side: `pooled_gradient_x_activation_cells`): 1.8-1.9x the
              score's time a ROI at 1/16 width where fine takes 2.8-3x, at
              the same pixel AUROC and a lower pointing game
              (docs/results.md, "Where is the defect").
  gradcam     Grad-CAM (Selvaraju et al., 2017) at one of the backbone's taps
              (smsdd_jax/backbones/; VGG16's: each block's output before its
              pool, default the last, 'block5': 1/16 of the ROI's size; a
              ResNet-18's: each stage's, default 'layer4', 1/32):
              relu(sum_c w_c A_c) with w_c the spatial mean of
              d(score)/dA_c, bilinearly upsampled to the ROI.
  gradcampp   Grad-CAM++ (Chattopadhyay et al., 2018) at a tap (default the
              one 4 pixels a cell): the channel weights sum the positive
              gradients, each weighted by alpha = g^2 / (2 g^2 + sum(A) g^3),
              so a few strong cells are not averaged away as in Grad-CAM
              (whose block4 map falls below chance on magnetic_tile).
  gradxinput  Gradient x input on the ROI: per pixel, the positive part of
              sum_c x_c d(score)/dx_c of the normalised input (what the
              pixel's departure from the training mean added to the
              log-odds, to first order), smoothed by a Gaussian of `sigma` px.
              At a tap (gradxinput@block2) the same of that tap's activation,
              put on the ROI's pixels as Grad-CAM's cells are.
  occlusion   The drop of the score when a patch of the normalised input is set
              to the training mean (zero), averaged over the patches covering
              each pixel. Model-agnostic and needs no gradient, but costs one
              forward per patch position (hundreds per ROI).
  feature_distance
              The distance of each cell's tower features to the nearest cells
              of good training images (smsdd_jax/memory_bank.py: a bank built
              per run); absolute, needs the run's bank.

Every map is absolute (in its method's units: log-odds gradients, distances);
`normalise` divides each by its own maximum (the old [0, 1] maps), and a
run's calibration (smsdd_jax/map_scale.py: one value per run and method, from
its validation split) puts a run's maps on one scale a person reads without
a legend.

Floors without the network, for the localisation tables: `residual_map`
(the absolute residual of the grey image against its median blur: the
background the anomaly floor of launch/floors.py subtracts) and
`random_map` (uniform noise: pixel AUROC 0.5 in expectation, pointing game
= the mask's share of the image).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from smsdd_jax import backbones, conv, metrics

METHODS = ('fine', 'fine_fast', 'gradcam', 'gradcampp', 'gradxinput', 'occlusion',
           'feature_distance')
DEFAULT_METHOD = 'fine'
# network_maps makes these.
GRADIENT_METHODS = ('fine', 'fine_fast', 'gradcam', 'gradcampp', 'gradxinput')
DEFAULT_SIGMA = 2.0  # px, of gradient x input's smoothing (chosen on validation).
FINE_STRIDE = 4  # Input pixels a cell of the tap fine and gradcampp read by default.
DETAIL_STRIDE = 2  # Input pixels a cell of the tap fine_fast's gradient x activation reads.
# ROIs per forward and backward inside one jitted call of network_maps. A
# larger batch's stored activations outgrow what malloc keeps for reuse
# (glibc hands blocks over 32 MB back to the system), so every call faulted
# its ~80 MB of pages in anew: 19.5k page faults and 1.9 ms a ROI for `fine`
# at batch 32 and 1/16 width, 1.2 ms in chunks of 8 (docs/performance.md,
# "Maps beside the score").
MAP_CHUNK = 8


def defect_score(logits: jax.Array) -> jax.Array:
  """(N, 2) logits -> (N,) defect log-odds (see the module doc for why)."""
  return logits[:, 1] - logits[:, 0]


def normalise(maps: jax.Array) -> jax.Array:
  """Per-image division by the maximum; all-zero maps stay zero."""
  peak = maps.max(axis=(1, 2), keepdims=True)
  return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def check_method(method: str) -> str:
  if method not in METHODS:
    raise ValueError(f'method={method!r}: expected one of {METHODS}')
  return method


def tap_near(backbone: str, stride: int) -> str:
  """The backbone's tap nearest `stride` input pixels a cell (the finer of
  two as near)."""
  taps = backbones.get(backbone).taps
  return min(taps, key=lambda t: (abs(np.log2(taps[t] / stride)), taps[t]))


def fine_tap(backbone: str) -> str:
  """The tap of fine's and gradcampp's Grad-CAM++ (FINE_STRIDE): VGG16's
  block3, ResNet-18's layer1."""
  return tap_near(backbone, FINE_STRIDE)


def detail_tap(backbone: str) -> str:
  """The tap of fine_fast's gradient x activation (DETAIL_STRIDE): VGG16's
  block2, ResNet-18's stem."""
  return tap_near(backbone, DETAIL_STRIDE)


def default_layer(method: str, backbone: str) -> Optional[str]:
  """The tap a method reads by default (None for methods without one)."""
  if method == 'gradcam':
    return backbones.get(backbone).default_tap
  if method in ('gradcampp', 'fine', 'fine_fast'):
    return fine_tap(backbone)
  return None  # gradxinput: the input, or a tap when asked for one.


def resolve_layer(method: str, backbone: str, layer: Optional[str]) -> Optional[str]:
  """`layer` or the method's default, checked against the backbone's taps."""
  default = default_layer(method, backbone)
  if default is None and not (method == 'gradxinput' and layer):
    if layer:
      raise ValueError(f'layer={layer!r}: method {method!r} reads no tap')
    return None
  layer = layer or default
  taps = backbones.get(backbone).taps
  if layer not in taps:
    raise ValueError(f'layer={layer!r}: expected one of {tuple(taps)}')
  return layer


# ------------------------------------------------------------------ gradient maps


def _gradients(params, model_state, x: jax.Array, *, model, layers: Sequence[str],
               input_grad: bool, pooled: Sequence[str] = ()):
  """One forward and one backward of the batch's summed defect log-odds:
  ({layer: activation}, {layer: d score / d activation}, d score / dx or
  None, {tap: (the output of the max-pool after it, d score / d that)} for
  the taps in `pooled`, of the backbone's pooled_taps). Eval mode
  (BatchNorm's running statistics), so every image's gradient depends on
  that image alone. Under jit, what is not returned or not used (the taps'
  gradients below the deepest one asked for, the input's) is never
  computed."""
  variables = {'params': params, **(model_state or {})}
  collections = ['intermediates'] + (['pooled'] if pooled else [])

  def run(perturbations, pooled_perturbations, images):
    extra = {'pooled_perturbations': pooled_perturbations} if pooled else {}
    (logits, _), taps = model.apply(
        {**variables, 'perturbations': perturbations, **extra}, images, train=False,
        mutable=collections)
    return defect_score(logits).sum(), (
        {k: taps['intermediates'][k][0] for k in layers},
        {k: taps['pooled'][k][0] for k in pooled})

  # The perturbations' shapes are the taps' own: read them without computing.
  _, shapes = jax.eval_shape(lambda: model.apply(variables, x, train=False,
                                                 mutable=collections))
  zeros = lambda c: {name: jnp.zeros(v[0].shape, v[0].dtype)
                     for name, v in shapes.get(c, {}).items()}
  (grads, pooled_grads, dx), (acts, pooled_acts) = jax.grad(
      run, argnums=(0, 1, 2), has_aux=True)(zeros('intermediates'), zeros('pooled'), x)
  f32 = lambda d, keys: {k: d[k].astype(jnp.float32) for k in keys}
  return (f32(acts, layers), f32(grads, layers),
          (dx.astype(jnp.float32) if input_grad else None),
          {k: (pooled_acts[k].astype(jnp.float32), pooled_grads[k].astype(jnp.float32))
           for k in pooled})


def gradcam_cells(a: jax.Array, g: jax.Array) -> jax.Array:
  """Grad-CAM on a tap's grid: activations, gradients (N, h, w, C) -> (N, h, w)."""
  weights = g.mean(axis=(1, 2), keepdims=True)
  return jax.nn.relu((weights * a).sum(-1))


def gradcampp_cells(a: jax.Array, g: jax.Array) -> jax.Array:
  """Grad-CAM++ on a tap's grid (its closed form for an exponential of the
  score: only first derivatives are needed). Its weights sum
  alpha relu(g), alpha = g^2 / (2 g^2 + S g^3), S the channel's spatial sum
  of activations: where g > 0 that is g / (2 + S g), so one pass computes
  them (half the time of the terms written out; equal to float32
  rounding). S >= 0 at a tap after a ReLU, so 2 + S g > 0 there; a term
  whose 2 + S g is 0 (a tap with negative activations) counts 0."""
  s = a.sum(axis=(1, 2), keepdims=True)
  denom = 2.0 + s * g
  keep = (g > 0) & (denom != 0)
  weights = jnp.where(keep, g / jnp.where(keep, denom, 1.0), 0.0).sum(axis=(1, 2), keepdims=True)
  return jax.nn.relu((weights * a).sum(-1))


def gaussian_kernel(sigma: float) -> np.ndarray:
  """OpenCV's Gaussian of `sigma` px, radius ceil(4 sigma) (its default for
  float32 images), normalised: (2 r + 1,) float64."""
  r = max(1, int(np.ceil(4 * sigma)))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  return k / k.sum()


def blur_axis(x: jax.Array, axis: int, sigma: float) -> jax.Array:
  """x smoothed along `axis` by `gaussian_kernel(sigma)`, the border reflected
  as OpenCV's default (reflect-101: -1 -> 1, n -> n - 2; repeated for a
  kernel wider than the axis): the taps as shifted slices of the padded
  array, which XLA fuses into one loop (17 multiply-adds a pixel at sigma 2,
  where the dense matrix it equals took n)."""
  k = gaussian_kernel(sigma)
  r, n = len(k) // 2, x.shape[axis]
  if n == 1:  # Every tap reflects onto the one pixel.
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (r, r)
  xp = jnp.pad(x.astype(jnp.float32), pad, mode='reflect')
  return sum(float(w) * jax.lax.slice_in_dim(xp, i, i + n, axis=axis) for i, w in enumerate(k))


def gaussian_blur(maps: jax.Array, sigma: float) -> jax.Array:
  """(N, H, W) smoothed by a Gaussian of `sigma` px (OpenCV's GaussianBlur
  with its default border, `blur_axis` along each); sigma 0 returns the maps."""
  if sigma <= 0:
    return maps
  return blur_axis(blur_axis(maps, 1, sigma), 2, sigma)


def gradient_x_activation_cells(a: jax.Array, g: jax.Array) -> jax.Array:
  """relu(sum_c a_c g_c): (N, h, w, C) activations (or the input) and their
  gradients -> (N, h, w)."""
  return jax.nn.relu((a.astype(jnp.float32) * g).sum(-1))


def pooled_gradient_x_activation_cells(a: jax.Array, y: jax.Array,
                                       dy: jax.Array) -> jax.Array:
  """`gradient_x_activation_cells(a, g)` for activations a (N, h, w, C)
  that a 2x2 / stride 2 max-pool follows, from the pool's side: y = pool(a)
  and dy its gradient (N, h // 2, w // 2, C). The pool's gradient g is dy at
  each window's first maximum (conv.first_max_hits) and 0 elsewhere, where
  a_c = y_c: so each of a window's 4 cells sums y dy over the channels whose
  first maximum it holds, and g, a full-size array, is never formed (4
  passes over it cost a fifth of fine_fast's map beside the score); the rows
  and columns no window covers get 0, as g does."""
  _, hits = conv.first_max_hits(a)
  m = y.astype(jnp.float32) * dy
  parts = [jnp.where(hit, m, 0.0).sum(-1) for hit in hits]  # Window positions, row-major.
  n, h2, w2 = parts[0].shape
  grid = jnp.stack(parts, -1).reshape(n, h2, w2, 2, 2).transpose(0, 1, 3, 2, 4)
  grid = grid.reshape(n, 2 * h2, 2 * w2)
  grid = jnp.pad(grid, ((0, 0), (0, a.shape[1] - 2 * h2), (0, a.shape[2] - 2 * w2)))
  return jax.nn.relu(grid)


def network_maps(params, model_state, x: jax.Array, *, model, method: str = DEFAULT_METHOD,
                 layer: Optional[str] = None, sigma: float = DEFAULT_SIGMA) -> jax.Array:
  """Pure: normalised ROIs x (N, H, W, 3), the model's input
  (`inference.normalize`), -> (N, H, W) float32 >= 0, the absolute map of
  a gradient method (GRADIENT_METHODS; the module doc says what each is) at
  `layer`, a tap of the model's backbone (None: the method's default;
  gradxinput's is the input). In chunks of MAP_CHUNK ROIs (one after
  another, the last padded), each ROI's map its own: the gradients give each
  map's cells (`_chunk_cells`), put on the input's pixels per chunk
  (`cells_to_pixels`; for the whole batch at once, out of cache, that was
  slower)."""
  if method not in GRADIENT_METHODS:
    raise ValueError(f'method={method!r}: network_maps makes {GRADIENT_METHODS}')
  layer = resolve_layer(method, model.backbone, layer)

  def one(chunk):
    cells = _chunk_cells(params, model_state, chunk, model=model, method=method, layer=layer)
    return cells_to_pixels(cells, chunk.shape[1:3], backbone=model.backbone, method=method,
                           layer=layer, sigma=sigma)

  n = x.shape[0]
  if n <= MAP_CHUNK:
    return one(x)
  chunks = -(-n // MAP_CHUNK)
  x = jnp.pad(x, ((0, chunks * MAP_CHUNK - n),) + ((0, 0),) * (x.ndim - 1))
  out = jax.lax.map(one, x.reshape(chunks, MAP_CHUNK, *x.shape[1:]))
  return out.reshape(chunks * MAP_CHUNK, *out.shape[2:])[:n]


def _detail_tap(method: str, backbone: str, layer: Optional[str]) -> Optional[str]:
  """The tap of a method's gradient x activation; None: the input's
  gradient x input (or a method without one)."""
  if method == 'gradxinput':
    return layer
  return detail_tap(backbone) if method == 'fine_fast' else None


def _chunk_cells(params, model_state, x: jax.Array, *, model, method: str,
                 layer: Optional[str]) -> dict:
  """The cells of one chunk's maps, `layer` resolved: {'cam': (N, h, w) at
  `layer` (Grad-CAM's, or Grad-CAM++'s for gradcampp and the fine maps),
  'detail': gradient x activation at the method's detail tap (the input's
  pixels where there is none), 'amount': (N,) the peak of Grad-CAM at the
  backbone's default tap}, each what the method uses."""
  bb = backbones.get(model.backbone)
  fine = method in ('fine', 'fine_fast')
  gxa_tap = _detail_tap(method, model.backbone, layer)
  layers = {layer, gxa_tap} | ({bb.default_tap} if fine else set())
  layers = sorted(t for t in layers if t is not None)
  needs_dx = (method == 'gradxinput' or fine) and gxa_tap is None
  pooled = [gxa_tap] if gxa_tap in bb.pooled_taps else []
  acts, grads, dx, pools = _gradients(params, model_state, x, model=model, layers=layers,
                                      input_grad=needs_dx, pooled=pooled)
  out = {}
  if method == 'gradcam':
    out['cam'] = gradcam_cells(acts[layer], grads[layer])
  elif method != 'gradxinput':
    out['cam'] = gradcampp_cells(acts[layer], grads[layer])
  if gxa_tap is None and needs_dx:
    out['detail'] = gradient_x_activation_cells(x, dx)
  elif pooled:  # From the pool's side: its full-size backward is never formed.
    out['detail'] = pooled_gradient_x_activation_cells(acts[gxa_tap], *pools[gxa_tap])
  elif gxa_tap is not None:
    out['detail'] = gradient_x_activation_cells(acts[gxa_tap], grads[gxa_tap])
  if fine:
    out['amount'] = gradcam_cells(acts[bb.default_tap], grads[bb.default_tap]).max(axis=(1, 2))
  return out


def cells_to_pixels(cells: dict, size: tuple[int, int], *, backbone: str, method: str,
                    layer: Optional[str], sigma: float) -> jax.Array:
  """`_chunk_cells`' cells of a batch -> its (N, H, W) maps on the input's
  pixels (the module doc says how each method combines them)."""
  taps = backbones.get(backbone).taps
  if 'detail' in cells:
    gxa_tap = _detail_tap(method, backbone, layer)
    detail = (gaussian_blur(cells['detail'], sigma) if gxa_tap is None else
              to_input_grid(cells['detail'], size, taps[gxa_tap], sigma))
    if method == 'gradxinput':
      return detail
  cam = jax.nn.relu(to_input_grid(cells['cam'], size, taps[layer]))
  if method in ('gradcam', 'gradcampp'):
    return cam
  return 0.5 * (normalise(cam) + normalise(detail)) * cells['amount'][:, None, None]


def gradcam(params, model_state, x: jax.Array, *, model,
            layer: str | None = None) -> jax.Array:
  """Pure: Grad-CAM maps (N, H, W) float32, each divided by its maximum
  (`network_maps` 'gradcam', normalised)."""
  return normalise(network_maps(params, model_state, x, model=model, method='gradcam',
                                layer=layer))


def bilinear_axis(cells: jax.Array, axis: int, stride: int, pixels: int) -> jax.Array:
  """Cells `stride` px apart along `axis` -> `pixels` values on the input's
  pixels (`to_input_grid`'s rule along one axis): pixel p reads the cells
  around its centre (p + 0.5) / stride - 0.5, bilinearly, the border cells'
  values held outward (an edge pad), pixels past the cells' cover taking the
  last pixel's. Pixel stride * i + r sits at i + (r + 0.5) / stride - 0.5, so
  each phase r is one weighted sum of two shifted slices, interleaved."""
  m = cells.shape[axis]
  pad = [(0, 0)] * cells.ndim
  pad[axis] = (1, 1)
  cp = jnp.pad(cells.astype(jnp.float32), pad, mode='edge')  # cp[j + 1] = cells[j].
  phases = []
  for r in range(stride):
    offset = (r + 0.5) / stride - 0.5  # In (-0.5, 0.5).
    lo = int(np.floor(offset))  # -1 or 0: the cell left of the centre.
    f = offset - lo
    left = jax.lax.slice_in_dim(cp, lo + 1, lo + 1 + m, axis=axis)
    right = jax.lax.slice_in_dim(cp, lo + 2, lo + 2 + m, axis=axis)
    phases.append((1.0 - f) * left + f * right)
  shape = list(cells.shape)
  shape[axis] = m * stride
  out = jnp.stack(phases, axis=axis + 1).reshape(shape)
  covered = min(pixels, m * stride)
  out = jax.lax.slice_in_dim(out, 0, covered, axis=axis)
  if pixels > covered:
    pad[axis] = (0, pixels - covered)
    out = jnp.pad(out, pad, mode='edge')
  return out


def to_input_grid(cam: jax.Array, size: tuple[int, int], stride: int,
                  sigma: float = 0.0) -> jax.Array:
  """(N, h, w) block output -> (N, H, W) on the input's pixels (then
  smoothed by a Gaussian of `sigma` px, 0: none). Cell (i, j) of a block
  `stride` = 2^pools input pixels apart covers input rows
  [i stride, (i + 1) stride), bilinear between the cells' centres; the
  pools' floor division leaves the last rows and columns (fewer than
  `stride`) uncovered: they take the nearest cell's value, where a plain
  resize to (H, W) would stretch the map over them and shift every cell (up
  to 14 px at the bottom of a 110-row ROI at block5). A tower that pads to
  ceil(size / 2) per stride (ResNet's) has cells past the border: they are
  cut off. Separable: `bilinear_axis` then `blur_axis` along each axis, a
  few multiply-adds a pixel (the dense matrices they equal, tested, cost a
  tenth of the score's time a ROI at 1/16 width)."""
  grid = bilinear_axis(bilinear_axis(cam, 1, stride, size[0]), 2, stride, size[1])
  return gaussian_blur(grid, sigma)


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
  """One normalised image (H, W, C) -> its occlusion map (H, W) float32 >= 0:
  per pixel, the mean drop of the log-odds over the patches covering it.

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
  return (total / np.maximum(windows.sum(0), 1)).astype(np.float32)


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


def overlay(roi_rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45,
            caption: Sequence[str] = ()) -> np.ndarray:
  """The ROI (H, W, 3) uint8 RGB with the map (H, W) in [0, 1] blended over it
  in a jet colour scale (blue: nothing, red: the top of the scale), and each
  line of `caption` below it on a dark band (14 px a line)."""
  if roi_rgb.shape[:2] != heat.shape:
    raise ValueError(f'ROI {roi_rgb.shape[:2]} and map {heat.shape} differ in size')
  colour = cv2.applyColorMap(np.uint8(np.clip(np.nan_to_num(heat), 0, 1) * 255),
                             cv2.COLORMAP_JET)
  colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
  out = cv2.addWeighted(np.ascontiguousarray(roi_rgb, np.uint8), 1 - alpha, colour, alpha, 0)
  if not caption:
    return out
  band = np.zeros((14 * len(caption) + 4, out.shape[1], 3), np.uint8)
  for k, line in enumerate(caption):
    cv2.putText(band, line, (3, 12 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                (255, 255, 255), 1, cv2.LINE_AA)
  return np.concatenate([out, band], 0)


def decision_line(prob: float, threshold: float) -> str:
  """'p=0.931 DEFECTIVE (threshold 0.5)': what an overlay says of its ROI."""
  decided = 'DEFECTIVE' if prob >= threshold else 'good'
  return f'p={prob:.3f} {decided} (threshold {threshold:g})'


def decision_sheet(predictor, images: np.ndarray, labels: np.ndarray, *, masks=None,
                   names=None, per_kind: int = 2, method: str = DEFAULT_METHOD):
  """An RGB picture of true and false decisions with their maps, or None
  when there are none: per kind (true defective, missed defect, false alarm,
  true good) the `per_kind` most confident (highest probability where it said
  defective, lowest where it said good), each ROI beside its overlay of
  `method` on the run's scale (`predictor.readable_maps`), the mask (where
  given) outlined in white, a caption with the probability, the method and
  its scale and `names` (e.g. the defect type)."""
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
    shown, scale = predictor.readable_maps(images[order], method)
    for i, heat in zip(order, shown):
      right = overlay(images[i], heat)
      if masks is not None:
        contours, _ = cv2.findContours((np.asarray(masks[i]) > 0).astype(np.uint8),
                                       cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(right, contours, -1, (255, 255, 255), 1)
      caption = np.zeros((18, images.shape[2] * 2, 3), np.uint8)
      text = f'{kind}: p={prob[i]:.2f}' + (f' {names[i]}' if names is not None else '')
      cv2.putText(caption, f'{text}; {method} map, {scale.short}', (4, 13),
                  cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
      rows.append(np.concatenate([caption, np.concatenate([images[i], right], 1)], 0))
  return np.concatenate(rows, 0) if rows else None
