"""Feature-distance maps and scores from a run's own tower: a memory bank of
the cells of good training images (the idea behind PatchCore, Roth et al.,
2022, with the run's own trained tower instead of pretrained weights).

  images, source = memory_bank.good_training_images(export, predictor)
  bank = memory_bank.build(predictor, images, source=source)   # tap, max_cells, seed, ...
  bank.maps(rois_uint8)      # (N, H, W) float32 distances on the input grid (absolute)
  bank.scores(rois_uint8)    # (N,) float32: the image's anomaly score
  bank.save('runs/x/memory_bank.npz'); memory_bank.load(path, predictor)

  python -m smsdd_jax.memory_bank --workdir=RUN --export=FILE [--out=RUN/memory_bank.npz]

A cell is one position of a tap of the run's backbone (backbones/: VGG16's
blocks, block4 is 8 input pixels a cell). Its feature is the tap's
activations there, averaged over its `aggregate` x `aggregate` neighbourhood
(PatchCore's local aggregation: a cell sees a little context); several taps
('block4+block5') are each aggregated, the coarser upsampled to the finest
one's grid and concatenated. The bank holds such cells of GOOD images of the
run's own training split (never its validation or test folds:
`good_training_images`), subsampled to `max_cells` by the greedy k-center
coreset (PatchCore's: each pick the cell farthest from those picked, so rare
good patterns stay covered; from a random pool of POOL x max_cells cells,
which bounds its cost) or at random. A cell's distance is the Euclidean
distance of its feature to the nearest bank cell (`distances`). With
position='z' (the default) it is read standardised by its position: minus the
mean, over the std, of the good training images' own distances at that cell
(`fit_positions`; the tiles' edges and corners vary more among good crops
than their middle, and raw distances peaked there). An image's map is that,
its negative part cut, upsampled to the input grid as Grad-CAM's are (the
same cell-to-pixel rule as maps.to_input_grid) and smoothed by a Gaussian of
`sigma` pixels; its score is the mean of its `topk` largest cells (1: the
maximum).

Maps and scores are absolute (not normalised per image; the position's
standardisation is one fixed transform for every image): a good image's map
stays low, and one scale holds across images of a run. The nearest neighbour is
found by chunked matrix products in one jitted function per bank (memory per
chunk: chunk x bank cells x 4 bytes, CHUNK_BYTES); a squared distance within
float32's rounding of the expansion (ROUNDING) is 0, so a bank cell's own
distance is exactly 0.

Provenance: a saved bank records the run (workdir, checkpoint step, a sha256
of its parameters, normalisation and model state), the export (sha256,
dataset, the split and fold, the indices of the images used) and its own
settings; `load` refuses (ValueError, one line) a bank made for another run,
checkpoint or data.

Imports the backbone registry, maps (its cell-to-pixel matrices) and rundir,
none of which imports it: inference.py may import this module without a
circle (tests/test_imports.py); the Predictor comes in as an argument.
The command (which makes a Predictor) is the package's __main__.py.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Optional, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from smsdd_jax import backbones, maps, rundir

FORMAT = 'smsdd_jax.memory_bank/1'
DEFAULT_NAME = 'memory_bank.npz'  # In the run's workdir, by default.
DEFAULT_TAP = 'block3'  # Chosen on validation: docs/results.md, "Feature distance".
# 1024 cells: on the validation folds as good as 4096 and 16384 (block3,
# position z), and the one size whose map costs about 2x the score per ROI.
DEFAULT_MAX_CELLS = 1024
DEFAULT_AGGREGATE = 3
DEFAULT_SIGMA = 4.0
DEFAULT_TOPK = 1
SAMPLINGS = ('greedy', 'random')
# How a cell's distance is read: as it is, or standardised by what good
# training images show at the cell's position (`MemoryBank.fit_positions`).
POSITIONS = ('z', 'none')
DEFAULT_POSITION = 'z'  # Chosen on validation: docs/results.md, "Feature distance".
POOL = 8  # Greedy picks from a random pool of POOL x max_cells cells.
# Of one chunk's query x bank matrix: within a core's cache (64 MB chunks ran
# the search 4-7x slower than 4 MB ones here).
CHUNK_BYTES = 4 << 20
ROUNDING = 1e-5  # Relative: a squared distance below it is rounding (nearest_distance).


# ------------------------------------------------------------------ features


def parse_taps(tap: str, backbone: str) -> tuple[str, ...]:
  """'block4+block5' -> ('block4', 'block5'), each a tap of the backbone."""
  taps = backbones.get(backbone).taps
  names = tuple(t.strip() for t in str(tap).split('+') if t.strip())
  bad = [t for t in names if t not in taps]
  if not names or bad:
    raise ValueError(f'tap={tap!r}: expected taps of {backbone} joined by "+", '
                     f'from {tuple(taps)}')
  return tuple(sorted(set(names), key=list(taps).index))


def upsample(x: jax.Array, size: tuple[int, int], stride: int) -> jax.Array:
  """(N, h, w, C) cells `stride` pixels apart -> (N, *size, C) on a `stride`
  times finer grid: bilinear, the rows and columns past the cells' cover
  taking the nearest cell's value (maps.to_input_grid's rule, by its
  per-axis stencil, maps.bilinear_axis)."""
  return maps.bilinear_axis(maps.bilinear_axis(x, 1, stride, size[0]), 2, stride, size[1])


def local_mean(x: jax.Array, k: int) -> jax.Array:
  """Mean over each cell's k x k neighbourhood (stride 1, the border's mean
  over the cells that exist)."""
  if k <= 1:
    return x
  window, strides = (1, k, k, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, 'SAME')
  count = jax.lax.reduce_window(jnp.ones_like(x[:1, ..., :1]), 0.0, jax.lax.add, window,
                                strides, 'SAME')
  return total / count


def cell_features(params, model_state, images_uint8: jax.Array, *, model, mean, std,
                  taps: Sequence[str], aggregate: int) -> jax.Array:
  """Pure: uint8 RGB ROIs (N, H, W, 3) -> (N, h, w, d) float32 cell features
  on the finest tap's grid (see the module docstring). The model's input is
  normalised as the scores' is (inference.normalize's arithmetic)."""
  x = (images_uint8.astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / \
      jnp.asarray(std, jnp.float32)
  _, state = model.apply({'params': params, **(model_state or {})}, x, train=False,
                         mutable=['intermediates'])
  strides = backbones.get(model.backbone).taps
  finest = min(taps, key=strides.get)
  grid = state['intermediates'][finest][0].shape[1:3]
  parts = [upsample(local_mean(state['intermediates'][t][0].astype(jnp.float32), aggregate),
                    grid, strides[t] // strides[finest]) for t in taps]
  return jnp.concatenate(parts, axis=-1)


# ------------------------------------------------------------------ nearest cells


def chunk_size(bank_cells: int) -> int:
  """Queries per chunk: the chunk's distance matrix within CHUNK_BYTES."""
  return int(max(16, min(1024, CHUNK_BYTES // (4 * max(bank_cells, 1)))))


def nearest_distance(queries: jax.Array, bank: jax.Array, *, chunk: int) -> jax.Array:
  """Pure: (Q, d) queries, (M, d) bank -> (Q,) Euclidean distance of each
  query to its nearest bank row. Chunks of `chunk` queries (lax.map: one
  chunk's (chunk, M) matrix in memory at a time), each the minimum over the
  bank of |b|^2 - 2 q.b, plus |q|^2. A squared distance below ROUNDING x
  |q|^2 is float32's rounding of the three terms, not a distance: it is 0,
  so a query equal to a bank row is at exactly 0. (The minimum, not the
  argmin and a recomputed difference: XLA's argmin on a CPU cost 25x the
  whole search here.)"""
  q = queries.shape[0]
  pad = -q % chunk
  padded = jnp.pad(queries, ((0, pad), (0, 0))).reshape(-1, chunk, queries.shape[1])
  bank_sq = jnp.sum(bank * bank, axis=-1)

  def one(block):
    block_sq = jnp.sum(block * block, axis=-1)
    d2 = jnp.min(bank_sq[None] - 2.0 * jnp.matmul(block, bank.T,
                                                 precision=jax.lax.Precision.HIGHEST),
                 axis=-1) + block_sq
    return jnp.sqrt(jnp.where(d2 > ROUNDING * block_sq, d2, 0.0))

  return jax.lax.map(one, padded).reshape(-1)[:q]


def greedy_coreset(points: jax.Array, k: int, start: int = 0) -> jax.Array:
  """Pure: indices of k rows of `points` (N, d) by greedy k-center (each
  pick the row farthest from the rows picked so far), from row `start`."""
  def body(i, carry):
    picked, dist = carry
    j = jnp.argmax(dist)
    d = jnp.sum((points - points[j]) ** 2, axis=-1)
    return picked.at[i].set(j), jnp.minimum(dist, d)

  first = jnp.sum((points - points[start]) ** 2, axis=-1)
  picked = jnp.zeros((k,), jnp.int32).at[0].set(start)
  picked, _ = jax.lax.fori_loop(1, k, body, (picked, first))
  return picked


def subsample(cells: np.ndarray, max_cells: int, sampling: str, seed: int) -> np.ndarray:
  """Indices of at most max_cells rows of cells (N, d), sorted."""
  if sampling not in SAMPLINGS:
    raise ValueError(f'sampling={sampling!r}: expected one of {SAMPLINGS}')
  if max_cells < 1:
    raise ValueError(f'max_cells={max_cells}: must be >= 1')
  n = len(cells)
  if n <= max_cells:
    return np.arange(n)
  rng = np.random.default_rng(seed)
  if sampling == 'random':
    return np.sort(rng.choice(n, max_cells, replace=False))
  # The greedy pass costs max_cells sweeps over its pool: a random pool of
  # POOL x max_cells cells first bounds it (block3 at 1/16 width: 877k cells).
  pool = np.sort(rng.choice(n, min(n, POOL * max_cells), replace=False))
  start = int(rng.integers(len(pool)))
  picked = jax.jit(greedy_coreset, static_argnums=1)(jnp.asarray(cells[pool]), max_cells,
                                                     start)
  return np.sort(pool[np.asarray(picked)])


# ------------------------------------------------------------------ provenance


def model_digest(predictor) -> str:
  """sha256 of what decides a cell's feature: the parameters, the model
  state (batch norm statistics) and the input normalisation."""
  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(
      {'params': predictor.params, 'state': predictor.model_state or {}})[0]
  for path, leaf in leaves:
    value = np.ascontiguousarray(np.asarray(leaf))
    h.update(jax.tree_util.keystr(path).encode() + str(value.dtype).encode() + b'\0')
    h.update(value.tobytes())
  for v in (predictor.mean, predictor.std):
    h.update(np.asarray(v, np.float32).tobytes())
  return h.hexdigest()


def run_record(predictor) -> dict:
  """What a bank is bound to on the run's side (checked by `load`)."""
  return {'workdir': predictor.run.workdir, 'step': int(predictor.run.step),
          'checkpoint': predictor.run.source, 'model_sha256': model_digest(predictor),
          'data': dict(predictor.data), 'image_size': list(predictor.image_size),
          'backbone': predictor.model.backbone, 'width_mult': predictor.model.width_mult}


def training_split(data_config) -> tuple[str, list[str]]:
  """The run's training split and the splits it must never take from
  (its validation and test splits), as TFDS split strings."""
  from smsdd_jax import data_splits  # pylint: disable=import-outside-toplevel
  names = data_splits.split_names(data_config)
  return names['train'], [names['val'], names['test']]


def good_indices(export, data_config) -> tuple[np.ndarray, dict]:
  """Indices into `export` of the good images of the run's training split
  (config.data: its kfold and fold), and the record of where they came from.
  ValueError when an index is also in the validation or test split."""
  from smsdd_jax import data_splits  # pylint: disable=import-outside-toplevel
  train, held_out = training_split(data_config)
  index = np.asarray(export.indices(train))
  kept = index[export.labels[index] == data_splits.GOOD]
  for split in held_out:
    shared = np.intersect1d(kept, export.indices(split))
    if shared.size:
      raise ValueError(f'{export.path}: {shared.size} good images of the training split '
                       f'{train!r} are also in {split!r}: a bank must not see them')
  kept = np.sort(kept)
  return kept, {'export_sha256': export.fingerprint['sha256'],
                'export': os.path.basename(export.path), 'dataset': export.fingerprint['dataset'],
                'split': train, 'held_out': held_out,
                'kfold': int(data_config.kfold or 0), 'fold': int(data_config.fold or 0),
                'indices': kept}


def good_training_images(export, predictor) -> tuple[np.ndarray, dict]:
  """The good images of the predictor's run's own training split, (n, H, W, 3)
  uint8, and their source record for `build`. Refuses (ExportError) an export
  of other data than the run's (dataset_export.check_run)."""
  from smsdd_jax import dataset_export  # pylint: disable=import-outside-toplevel
  dataset_export.check_run(export, predictor.run.workdir)
  index, source = good_indices(export, predictor.config.data)
  return export.rgb(index), source


# ------------------------------------------------------------------ the bank


@dataclasses.dataclass
class MemoryBank:
  """Good training cells of one run (`build`, `load`) and the functions that
  measure images against them. features: (M, d) float32; record: provenance
  and settings (tap, aggregate, topk, sigma, sampling, ...); predictor: the
  run's Predictor whose tower makes the features."""
  features: np.ndarray
  record: dict
  predictor: object
  indices: Optional[np.ndarray] = None  # Into the export: the images it was built from.
  # Per cell position (h, w): the mean and spread of the distances of the
  # good training images (record 'position' == 'z'), or None.
  position_mean: Optional[np.ndarray] = None
  position_std: Optional[np.ndarray] = None

  def __post_init__(self):
    p = self.predictor
    self.taps = parse_taps(self.record['tap'], p.model.backbone)
    strides = backbones.get(p.model.backbone).taps
    self.stride = min(strides[t] for t in self.taps)
    # An argument, not a constant of the compiled function: a large bank
    # would be folded into it.
    self._bank = jnp.asarray(self.features, jnp.float32)
    chunk = chunk_size(len(self.features))
    features = functools.partial(cell_features, model=p.model, mean=p.mean, std=p.std,
                                 taps=self.taps, aggregate=int(self.record['aggregate']))

    def grid(params, state, images, bank):
      f = features(params, state, images)
      n, h, w, d = f.shape
      return nearest_distance(f.reshape(-1, d), bank, chunk=chunk).reshape(n, h, w)

    self._features = jax.jit(features)
    self._grid = jax.jit(grid)

  @property
  def tap(self) -> str:
    return self.record['tap']

  def _batched(self, fn, images: np.ndarray, *extra) -> np.ndarray:
    """fn(params, model_state, batch, *extra) over fixed-size batches (the
    last one zero-padded), concatenated; None for no images."""
    p = self.predictor
    images = np.asarray(images)
    want = (*p.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != want or images.dtype != np.uint8:
      raise ValueError(f'expected uint8 images of shape (N, {want[0]}, {want[1]}, 3), '
                       f'got {images.dtype} {images.shape}')
    out, b = [], p.batch_size
    for i in range(0, len(images), b):
      chunk = images[i:i + b]
      n = len(chunk)
      if n < b:  # One shape, one compile.
        chunk = np.concatenate([chunk, np.zeros((b - n, *want), np.uint8)])
      out.append(np.asarray(fn(p.params, p.model_state, chunk, *extra))[:n])
    return np.concatenate(out) if out else None

  def cell_features(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, h, w, d) float32 cell features."""
    out = self._batched(self._features, images)
    return out if out is not None else np.zeros((0, 0, 0, self.features.shape[1]), np.float32)

  def distances(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, h, w) float32: each cell's distance to the
    nearest bank cell, on the finest tap's grid."""
    out = self._batched(self._grid, images, self._bank)
    return out if out is not None else np.zeros((0, 0, 0), np.float32)

  def fit_positions(self, images: np.ndarray) -> 'MemoryBank':
    """Records, per cell position, the mean and standard deviation of the
    distances of `images` (the good training images the bank came from), and
    sets the record's 'position' to 'z': `standardised` then measures a cell
    against what good images show at its place. A position whose spread is
    below a tenth of the median spread takes that floor (a bank holding
    every cell of its images has no spread at all: its own cells stay 0)."""
    grid = self.distances(images).astype(np.float64)
    mean, std = grid.mean(0), grid.std(0)
    floor = max(0.1 * float(np.median(std)), 1e-6)
    self.position_mean = mean.astype(np.float32)
    self.position_std = np.maximum(std, floor).astype(np.float32)
    self.record['position'] = 'z'
    return self

  def standardised(self, grid: np.ndarray) -> np.ndarray:
    """Cell distances (N, h, w) as the maps and scores read them: per
    position (distance - mean) / std of the good training images where the
    bank has them (record 'position' == 'z'), else unchanged."""
    grid = np.asarray(grid, np.float32)
    if self.record.get('position') != 'z':
      return grid
    if self.position_mean is None or self.position_mean.shape != grid.shape[1:]:
      raise ValueError(f'memory bank: position statistics of shape '
                       f'{None if self.position_mean is None else self.position_mean.shape} '
                       f'for cell grids {grid.shape[1:]}')
    return (grid - self.position_mean) / self.position_std

  def to_maps(self, grid: np.ndarray) -> np.ndarray:
    """Cell distances (N, h, w) -> (N, H, W) float32 >= 0 on the input grid
    (`standardised`, its negative part cut: below what good images show is
    nothing), smoothed by the bank's sigma."""
    size = tuple(self.predictor.image_size)
    if not len(grid):
      return np.zeros((0, *size), np.float32)
    grid = np.maximum(self.standardised(grid), 0.0)
    up = np.asarray(upsample(jnp.asarray(grid)[..., None], size, self.stride))[..., 0]
    sigma = float(self.record.get('sigma') or 0)
    if sigma > 0:
      up = np.stack([cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
                     for m in up])
    return up.astype(np.float32)

  def to_scores(self, grid: np.ndarray) -> np.ndarray:
    """Cell distances (N, h, w) -> (N,) float32: the mean of each image's
    topk largest cells (`standardised`)."""
    flat = self.standardised(grid).reshape(len(grid), -1)
    k = max(1, min(int(self.record.get('topk') or 1), flat.shape[1] if flat.size else 1))
    if not len(flat):
      return np.zeros((0,), np.float32)
    return np.sort(flat, axis=1)[:, -k:].mean(axis=1).astype(np.float32)

  def maps(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 ROIs -> (N, H, W) float32 distances (absolute)."""
    return self.to_maps(self.distances(images))

  def scores(self, images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 ROIs -> (N,) float32 anomaly scores."""
    return self.to_scores(self.distances(images))

  def cost(self) -> dict:
    """What one ROI costs against this bank: its cells, the multiply-adds of
    the nearest-cell search, the bank's bytes."""
    h, w = self.predictor.image_size
    cells = (h // self.stride) * (w // self.stride)
    m, d = self.features.shape
    return {'cells_per_roi': cells, 'bank_cells': m, 'dims': d,
            'search_gflop_per_roi': 2.0 * cells * m * d / 1e9,
            'bank_mbytes': self.features.nbytes / 2**20}

  def save(self, path: str) -> None:
    """The bank as .npz (features, indices, record as JSON), atomically."""
    arrays = {'features': np.asarray(self.features, np.float32),
              'record': np.asarray(json.dumps(self.record, default=str))}
    if self.indices is not None:
      arrays['indices'] = np.asarray(self.indices, np.int64)
    if self.position_mean is not None:
      arrays['position_mean'], arrays['position_std'] = self.position_mean, self.position_std
    rundir.write_npz(path, **arrays)


def build(predictor, good_train_images_uint8: np.ndarray, *, tap: Optional[str] = None,
          max_cells: int = DEFAULT_MAX_CELLS, seed: int = 0, sampling: str = 'greedy',
          aggregate: int = DEFAULT_AGGREGATE, topk: int = DEFAULT_TOPK,
          sigma: float = DEFAULT_SIGMA, position: str = DEFAULT_POSITION,
          source: Optional[dict] = None) -> MemoryBank:
  """A bank of the cells of `good_train_images_uint8` (N, H, W, 3) under the
  predictor's run; with position='z' its maps and scores are standardised
  per cell position by those images' own distances (`fit_positions`: one
  more pass over them). `source` (from good_training_images) records where
  the images came from; without it the bank says so ('source': None)."""
  images = np.asarray(good_train_images_uint8)
  if not len(images):
    raise ValueError('a memory bank needs at least one good training image')
  if aggregate < 1 or topk < 1 or sigma < 0:
    raise ValueError(f'aggregate={aggregate}, topk={topk}, sigma={sigma}: aggregate and '
                     'topk must be >= 1, sigma >= 0')
  if sampling not in SAMPLINGS:
    raise ValueError(f'sampling={sampling!r}: expected one of {SAMPLINGS}')
  if position not in POSITIONS:
    raise ValueError(f'position={position!r}: expected one of {POSITIONS}')
  tap = '+'.join(parse_taps(tap or DEFAULT_TAP, predictor.model.backbone))
  source = dict(source) if source else None
  indices = None if source is None else np.asarray(source.pop('indices'))
  settings = {'tap': tap, 'aggregate': int(aggregate), 'topk': int(topk),
              'sigma': float(sigma), 'sampling': sampling, 'max_cells': int(max_cells),
              'seed': int(seed), 'position': 'none'}
  probe = MemoryBank(np.zeros((1, 1), np.float32), settings, predictor)
  cells = probe.cell_features(images)
  cells = cells.reshape(-1, cells.shape[-1])
  keep = subsample(cells, max_cells, sampling, seed)
  record = {'format': FORMAT, 'run': run_record(predictor), 'source': source, **settings,
            'images': int(len(images)), 'cells_total': int(len(cells)),
            'cells_kept': int(len(keep))}
  bank = MemoryBank(np.ascontiguousarray(cells[keep]), record, predictor, indices)
  return bank.fit_positions(images) if position == 'z' else bank


def load(path: str, predictor, export=None) -> MemoryBank:
  """A saved bank bound to `predictor`; ValueError in one line when it was
  made for another run or checkpoint (its model's sha256, step), another
  input size or backbone, or (with `export`) from other data."""
  try:
    with np.load(path, allow_pickle=False) as data:
      features, record = data['features'], json.loads(str(data['record']))
      indices = data['indices'] if 'indices' in data.files else None
      position = ((data['position_mean'], data['position_std'])
                  if 'position_mean' in data.files else (None, None))
  except (OSError, ValueError, KeyError, EOFError) as e:
    raise ValueError(f'{path}: not a memory bank or a damaged one ({e})') from None
  if record.get('format') != FORMAT:
    raise ValueError(f'{path}: format {record.get("format")!r}, this code reads {FORMAT!r}')
  made, now = record['run'], run_record(predictor)
  for key, what in (('model_sha256', 'model'), ('step', 'checkpoint step'),
                    ('image_size', 'image size'), ('backbone', 'backbone')):
    if made.get(key) != now[key]:
      raise ValueError(f'{path} was built for another run or checkpoint ({what} '
                       f'{str(made.get(key))[:16]} vs {str(now[key])[:16]} of '
                       f'{predictor.run.workdir}, step {now["step"]}; built from '
                       f'{made.get("workdir")}, step {made.get("step")}): build it again '
                       'with python -m smsdd_jax.memory_bank')
  if made.get('data', {}).get('fingerprint') != now['data'].get('fingerprint'):
    raise ValueError(f'{path} was built for a run of other data ({made.get("data")} vs '
                     f'{now["data"]})')
  source = record.get('source') or {}
  if export is not None and source.get('export_sha256') != export.fingerprint['sha256']:
    raise ValueError(f'{path} was built from export {source.get("export")} (sha256 '
                     f'{str(source.get("export_sha256"))[:16]}), not {export.path} '
                     f'({export.fingerprint["sha256"][:16]})')
  if record.get('position') == 'z' and position[0] is None:
    raise ValueError(f'{path}: records position statistics but holds none (a damaged bank)')
  return MemoryBank(np.asarray(features, np.float32), record, predictor, indices, *position)
