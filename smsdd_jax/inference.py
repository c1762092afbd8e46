"""Inference from a training run's workdir: load it, score ROIs, score frames.

  predictor = inference.Predictor('runs/beta_c')        # best checkpoint
  probs = predictor.predict_proba(rois_rgb_uint8)       # (N, 110, 230, 3) -> (N,)
  emb = predictor.embed(rois_rgb_uint8)                 # (N, d): what the contrastive loss compares
  heat = predictor.maps(rois_rgb_uint8)                 # (N, 110, 230) >= 0: where (maps.py)
  shown, scale = predictor.readable_maps(rois_rgb_uint8)  # [0, 1] on the run's scale (map_scale.py)
  run = inference.load_run('runs/beta_c')               # config, model, params, model_state
  for result in inference.score_frames(predictor, paths):  # raw camera frames
    print(result.path, result.prob, result.error)
  inference.Predictor('runs/beta_c', tta='flips')      # mean over the image and its flips
  inference.ensemble_probabilities(['runs/a', 'runs/b'], rois)  # mean over runs

What a workdir must hold (written by `train.train_and_evaluate`):
config.json, data_stats.json (optional when config.data.normalize is 'fixed'),
checkpoints_best/<step>/ + best.json and/or checkpoints/<step>/, and
optionally threshold.json ({"threshold": t}; the decision threshold on the
defect probability, 0.5 when absent). rundir.py names and reads them
(`resolve_run`, `RunFiles` and `run_config` live there).

Which checkpoint: the best one (checkpoints_best/, the step best.json names)
unless a step is asked for; without a best checkpoint, the latest periodic
one (`Predictor.run.note` says which was used and why).

The defect probability is softmax(logits)[:, 1] of the model on the
normalised RGB ROI, `(pixel - mean) / std` with the run's data_stats.json:
the same arithmetic as `input_pipeline.normalize_np`, done inside the jitted
function so only uint8 pixels travel to the device. The scoring function has a
fixed batch size (the last batch is zero-padded), so it compiles once.

Test-time augmentation (`tta='flips'`) scores each image, its left-right
and its up-down flip as one batch of 3N in the same jitted call and averages
the three probabilities. An `Ensemble` of runs that preprocess alike (same
image size, channels, aspect, ROI step) and were trained on the same data
(preprocessing.json's dataset and source fingerprint) averages their
probabilities and decides at the mean of their thresholds; one run named
twice (by real path: a symbolic link too) is refused. A non-finite score
is an error, never a decision (`score_frames`).

Frame reading never lets one bad file stop a batch: every problem (unreadable,
truncated or non-image file, a frame too large, no screen found) becomes a
`FrameResult` with `error` set. Huge images are refused from their header
before any pixel is decoded (`image_header`: JPEG SOF, PNG IHDR and BMP
headers are parsed here directly; other formats that OpenCV decodes are
checked after decoding).

Heavy modules (Orbax, Flax) are imported only when a run is loaded
(`load_run`, a Predictor), so `resolve_run` can refuse a bad workdir in well under
a second (predict.py's usage errors).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os
import pathlib
from typing import Callable, Iterable, Iterator, Optional, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from smsdd_jax import map_scale
from smsdd_jax import maps as maps_lib
from smsdd_jax import preprocess
from smsdd_jax import rundir

DEFAULT_THRESHOLD = rundir.DEFAULT_THRESHOLD
DEFAULT_MAX_PIXELS = preprocess.DEFAULT_MAX_PIXELS
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
ROI_METHODS = ('auto',) + preprocess.ROI_MODES  # 'auto': as the run's build did.
MAP_SCALES = ('raw', 'image', 'run')  # Of Predictor.maps: see there.
_UNSET = object()
TTA_MODES = ('none', 'flips')  # Test-time augmentation: the image alone, or with its flips.
FIXED_STATS = preprocess.FIXED_STATS
FrameError = preprocess.BadImage  # One input file cannot be scored; one-line reason.


# ------------------------------------------------------------------ the run

# The workdir's files are read by rundir.py; these names stay here for callers.
RunFiles = rundir.RunFiles
resolve_run = rundir.resolve_run
run_config = rundir.run_config


# ------------------------------------------------------------------ the model


def tta_views(images: jax.Array, tta: str = 'none') -> jax.Array:
  """(V*N, H, W, C): the images, then (tta='flips') their left-right and
  their up-down flips, stacked into one batch."""
  if tta not in TTA_MODES:
    raise ValueError(f'tta={tta!r}: expected one of {TTA_MODES}')
  if tta == 'none':
    return images
  return jnp.concatenate([images, images[:, :, ::-1], images[:, ::-1]])


def normalize(images_uint8: jax.Array, mean, std) -> jax.Array:
  """uint8 RGB -> the model's float32 input: the arithmetic of
  input_pipeline.normalize_np, traceable (runs inside the jitted functions)."""
  return (jnp.asarray(images_uint8).astype(jnp.float32) - jnp.asarray(mean, jnp.float32)) / \
      jnp.asarray(std, jnp.float32)


def probabilities(params, model_state, images_uint8: jax.Array, *, model,
                  mean, std, tta: str = 'none') -> jax.Array:
  """Pure: uint8 RGB ROIs (N, H, W, 3) -> defect probabilities (N,) float32.
  Normalisation included (`normalize`); with tta='flips' the mean over the
  image and its flips (`tta_views`)."""
  from smsdd_jax import models  # pylint: disable=import-outside-toplevel
  n = images_uint8.shape[0]
  x = normalize(tta_views(images_uint8, tta), mean, std)
  logits, _ = models.forward(params, x, model=model, model_state=model_state,
                             train=False)
  return jax.nn.softmax(logits)[:, 1].reshape(-1, n).mean(axis=0)


def embeddings(params, model_state, images_uint8: jax.Array, *, model,
               mean, std) -> jax.Array:
  """Pure: uint8 RGB ROIs (N, H, W, 3) -> (N, d) float32, the vector the
  contrastive loss compares (`config.model.embedding`, models._embedding).
  Never test-time augmented: a flip moves the features, so a mean over
  flips would be a vector training never saw."""
  from smsdd_jax import models  # pylint: disable=import-outside-toplevel
  _, out = models.forward(params, normalize(images_uint8, mean, std), model=model,
                          model_state=model_state, train=False)
  return out['embedding']


@dataclasses.dataclass
class Run:
  """A training run restored from its workdir alone (`load_run`).

  files: RunFiles (workdir, step, note, threshold, ...); config: the run's
  ConfigDict; model: the Flax module (`models.create(config.model)`); params
  and model_state: the checkpoint's pytrees on this process's first device;
  mean, std: the input normalisation (data_stats.json, or the fixed one)."""
  files: RunFiles
  config: object
  model: object
  params: object
  model_state: object
  mean: np.ndarray
  std: np.ndarray

  @property
  def step(self) -> int:
    return self.files.step

  def normalize(self, images_uint8) -> jax.Array:
    """uint8 RGB (N, H, W, 3) -> the model's input, as training fed it."""
    return normalize(images_uint8, self.mean, self.std)


def load_run(workdir: str, step: Optional[int] = None) -> Run:
  """Restores a run from its directory alone: the best checkpoint, or `step`
  (see the module docstring for which one), with the loss terms it used
  registered (`losses.register_from_run`: a term of its own from the source
  the run recorded). Raises FileNotFoundError or ValueError (checkpointing's
  mismatch / unreadable errors, a term missing or differing) in one line."""
  files = resolve_run(workdir, step)
  # pylint: disable=import-outside-toplevel
  from smsdd_jax import checkpointing, losses, models, step as step_lib
  losses.register_from_run(files.workdir)  # A term of its own: combined_loss works.
  config = run_config(files.config)
  model = models.create(config.model)
  # The restore target: create_train_state's structure, shapes and dtypes
  # via eval_shape (initialising the real arrays compiles the model's init:
  # 16 s on CPU at 1/16 width, for values that are overwritten anyway),
  # each leaf placed on this process's first device whatever sharding the
  # training run saved with.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      jax.eval_shape(lambda: step_lib.create_train_state(
          config, model, step_lib.make_optimizer(config.optimizer))))
  ckpt = checkpointing.Checkpointer(files.checkpoint_dir, max_to_keep=1)
  try:
    state = ckpt.restore(target, files.step)
  except checkpointing.CheckpointUnreadableError as e:
    raise checkpointing.CheckpointUnreadableError(f'{e}; {_other_checkpoints(files)}'
                                                  ) from None
  finally:
    ckpt.close()
  return Run(files=files, config=config, model=model, params=state.params,
             model_state=state.model_state,
             mean=np.asarray(files.stats['mean'], np.float32),
             std=np.asarray(files.stats['std'], np.float32))


class Predictor:
  """A restored run (`load_run`): `predict_proba` and `embed` on uint8 RGB
  ROIs, each one jitted function at a fixed batch size.

  Attributes: run (RunFiles: step, note, threshold, ...), config
  (ConfigDict), model, params, model_state, image_size (h, w), batch_size,
  threshold, tta ('none' or 'flips', see `tta_views`), precision of the
  scores' convolutions ('float32', or 'bfloat16' where the run uses oneDNN:
  models.packed_for_inference), traces (times the scoring function was
  traced: 1 after use).
  """

  def __init__(self, workdir: str, *, step: Optional[int] = None,
               batch_size: int = 16, tta: str = 'none', precision: str = 'float32'):
    if batch_size < 1:
      raise ValueError(f'batch_size={batch_size}: must be >= 1')
    if tta not in TTA_MODES:
      raise ValueError(f'tta={tta!r}: expected one of {TTA_MODES}')
    loaded = load_run(workdir, step)
    self.run, self.config, self.model = loaded.files, loaded.config, loaded.model
    self.params, self.model_state = loaded.params, loaded.model_state
    self.mean, self.std = loaded.mean, loaded.std
    self.image_size = tuple(int(v) for v in self.config.data.image_size)
    self.preprocessing = dataclasses.replace(self.run.preprocessing, size=self.image_size)
    self.threshold = self.run.threshold
    self.batch_size = int(batch_size)
    self.tta = tta
    self.precision = precision
    self.traces = 0

    # Scores and maps run on a copy of the model with each batch norm folded
    # into its conv (fused conv + bias + ReLU: ~1.5x faster maps at 1/16
    # width), scores with oneDNN-packed kernels where the run uses oneDNN
    # (models.packed_for_inference); the embedding, the memory bank and
    # exports keep self.model and self.params.
    from smsdd_jax import models  # pylint: disable=import-outside-toplevel
    self._map_model, self._map_params, self._map_state = models.folded_batch_norm(
        self.model, self.params, self.model_state)
    self._score_model, self._score_params = models.packed_for_inference(
        self._map_model, self._map_params, self.image_size, precision)

    def score(params, model_state, images):
      self.traces += 1  # Runs while tracing only.
      return probabilities(params, model_state, images, model=self._score_model,
                           mean=self.mean, std=self.std, tta=self.tta)

    self._score = jax.jit(score)
    self._embed = jax.jit(functools.partial(embeddings, model=self.model, mean=self.mean,
                                            std=self.std))
    self._network_maps = {}  # (method, layer, sigma) -> jitted maps_lib.network_maps
    self._logodds = None  # jitted normalised batch -> defect log-odds (occlusion)
    self._banks = {}  # path -> memory_bank.MemoryBank (feature_distance)
    self._calibration = _UNSET  # map_scale.Calibration or None, read when first asked.
    self.health, self.health_reasons = read_health(self.run.workdir)
    self.data = read_data(self.run.workdir, self.run.config)

  @property
  def scored_precision(self) -> str:
    """The dtype the scores' convolutions ran in ('float32' or 'bfloat16'):
    `precision` where the run's conv_impl has it, else float32."""
    return jnp.dtype(self._score_model.dtype).name

  def describe(self) -> str:
    tta = '' if self.tta == 'none' else f'; tta {self.tta}'
    if self._score_model.dtype != jnp.float32:
      tta += f'; scored in {self.scored_precision}'
    elif self.precision != 'float32':  # Asked for, but only oneDNN's fused path has it.
      tta += (f'; precision {self.precision} not available here (conv_impl '
              f'{self.model.conv_impl}): scored in float32')
    return (f'{self.run.workdir}: {self.run.note}; threshold {self.threshold:g} '
            f'[{self.run.threshold_source}]; normalisation {self.run.stats_source}{tta}; '
            f'health {self.health}')

  def health_warning(self) -> Optional[str]:
    """One line when the run's health (eval.json) is not 'ok', else None."""
    if self.health == 'ok':
      return None
    why = '; '.join(self.health_reasons) or 'no reason given'
    return f'run {self.run.workdir} health is {self.health} ({why}): its scores may say ' \
        'nothing about the inputs'

  def inference_fn(self) -> Callable[[jax.Array], jax.Array]:
    """images_uint8 -> probabilities, with this run's parameters closed over
    (what export.py serialises)."""
    params, model_state = self.params, self.model_state
    return lambda images: probabilities(params, model_state, images, model=self.model,
                                        mean=self.mean, std=self.std, tta=self.tta)

  def predict_proba(self, images_rgb_uint8: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB ROIs at the run's image size -> (N,) float32."""
    return self._batched(self._score, images_rgb_uint8, self._score_params, self._map_state)

  def embed(self, images_rgb_uint8: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB ROIs at the run's image size -> (N, d) float32:
    the embedding the contrastive loss compares (`embeddings`; no TTA)."""
    return self._batched(self._embed, images_rgb_uint8)

  def maps(self, images_rgb_uint8: np.ndarray, method: str = maps_lib.DEFAULT_METHOD, *,
           layer: str | None = None, sigma: float = maps_lib.DEFAULT_SIGMA, patch: int = 16,
           stride: int = 8, bank=None, scale: str = 'raw') -> np.ndarray:
    """(N, H, W, 3) uint8 RGB ROIs -> (N, H, W) float32 >= 0: what raised each
    image's defect score (smsdd_jax/maps.py's METHODS: 'fine', the default by
    evidence; 'gradcam' or 'gradcampp' at `layer`, a tap of the run's
    backbone, None the method's default; 'gradxinput' smoothed by `sigma`
    px; 'occlusion' with `patch` x `patch` windows `stride` apart;
    'feature_distance' against `bank`, default the run's memory_bank.npz).
    scale: 'raw' (the method's own units, absolute), 'image' (each map
    divided by its maximum, in [0, 1]) or 'run' (divided by the run's
    calibration, map_scale.py; ValueError without one). Of the image itself,
    never test-time augmented."""
    maps_lib.check_method(method)
    if scale not in MAP_SCALES:
      raise ValueError(f'scale={scale!r}: expected one of {MAP_SCALES}')
    layer = maps_lib.resolve_layer(method, self.model.backbone, layer)  # None: reads no tap.
    if method == 'occlusion':
      heat = self._occlusion(images_rgb_uint8, patch, stride)
    elif method == 'feature_distance':
      self._checked(images_rgb_uint8)
      heat = (bank or self.memory_bank()).maps(images_rgb_uint8)
    else:
      key = (method, layer, float(sigma))
      if key not in self._network_maps:
        self._network_maps[key] = jax.jit(
            lambda params, state, images, key=key: maps_lib.network_maps(
                params, state, normalize(images, self.mean, self.std), model=self._map_model,
                method=key[0], layer=key[1], sigma=key[2]))
      heat = self._batched(self._network_maps[key], images_rgb_uint8, self._map_params,
                           self._map_state)
    if scale == 'raw':
      return heat
    if scale == 'image':
      return map_scale.per_image_max(heat)
    found = self.map_scale(method, layer=layer, sigma=sigma, patch=patch, stride=stride,
                           bank=bank)
    if found.kind != 'run':
      raise ValueError(f'scale=\'run\': {found.note}')
    return heat / np.float32(found.value)

  def map_params(self, method: str = maps_lib.DEFAULT_METHOD, *, layer: str | None = None,
                 sigma: float = maps_lib.DEFAULT_SIGMA, patch: int = 16, stride: int = 8,
                 bank=None) -> dict:
    """What decides a map's values besides the run: the method and the
    settings it reads (the record a calibration is keyed by)."""
    maps_lib.check_method(method)
    params = {'method': method}
    layer = maps_lib.resolve_layer(method, self.model.backbone, layer) \
        if method in maps_lib.GRADIENT_METHODS else None
    if layer:
      params['layer'] = layer
    if method in ('fine', 'fine_fast'):
      from smsdd_jax import backbones  # pylint: disable=import-outside-toplevel
      params['amount_layer'] = backbones.get(self.model.backbone).default_tap
    if method == 'fine_fast':
      params['detail_layer'] = maps_lib.detail_tap(self.model.backbone)
    if method in ('fine', 'fine_fast', 'gradxinput'):
      params['sigma'] = float(sigma)
    if method == 'occlusion':
      params.update(patch=int(patch), stride=int(stride))
    if method == 'feature_distance':
      params['bank_sha256'] = map_scale.bank_digest(bank or self.memory_bank())
    return params

  def memory_bank(self, path: Optional[str] = None):
    """The run's memory bank for 'feature_distance' (smsdd_jax/memory_bank.py),
    from `path` or <workdir>/memory_bank.npz, loaded once; ValueError (one
    line) when there is none or it is another run's."""
    from smsdd_jax import memory_bank  # pylint: disable=import-outside-toplevel
    path = path or os.path.join(self.run.workdir, memory_bank.DEFAULT_NAME)
    if path not in self._banks:
      if not os.path.isfile(path):
        raise ValueError(f'map method feature_distance needs a memory bank: no {path} '
                         f'(python -m smsdd_jax.memory_bank --workdir={self.run.workdir} '
                         '--export=FILE makes one)')
      self._banks[path] = memory_bank.load(path, self)
    return self._banks[path]

  @property
  def calibration(self):
    """The run's map calibration (map_scale.Calibration): the one given to
    `use_map_scale`, else <workdir>/map_scale.json; None when there is none.
    One of another run is refused (ValueError, one line)."""
    if self._calibration is _UNSET:
      self._calibration = map_scale.find(self)
    return self._calibration

  def use_map_scale(self, path: str, record: Optional[dict] = None) -> None:
    """Draws maps on the calibration saved at `path`, or on `record` (one
    `map_scale.calibrate` just made; `path` then says where it came from).
    Refused (ValueError, one line) when it is another run's."""
    self._calibration = map_scale.load(path, self) if record is None else \
        map_scale.bind(record, path, self)

  def map_scale(self, method: str = maps_lib.DEFAULT_METHOD, **settings) -> 'map_scale.Scale':
    """The Scale `readable_maps` draws `method` on: the run's calibration, or
    per image with the reason there is none."""
    if self.calibration is None:
      return map_scale.per_image(f'run {self.run.workdir} has no map calibration '
                                 f'({map_scale.DEFAULT_NAME}: python -m smsdd_jax.map_scale)')
    return self.calibration.scale(method, self.map_params(method, **settings))

  def readable_maps(self, images_rgb_uint8: np.ndarray, method: str = maps_lib.DEFAULT_METHOD,
                    **settings) -> tuple[np.ndarray, 'map_scale.Scale']:
    """(maps in [0, 1] to colour, their Scale): on the run's calibrated scale
    (1 = the strength of a typical validation defect), else each map to its
    own maximum, which the Scale says."""
    scale = self.map_scale(method, **settings)
    return scale.apply(self.maps(images_rgb_uint8, method, **settings)), scale

  def _occlusion(self, images_rgb_uint8: np.ndarray, patch: int, stride: int) -> np.ndarray:
    images = self._checked(images_rgb_uint8)
    if self._logodds is None:
      from smsdd_jax import models  # pylint: disable=import-outside-toplevel
      self._logodds = jax.jit(lambda x: maps_lib.defect_score(models.forward(
          self._map_params, x, model=self._map_model, model_state=self._map_state)[0]))
    windows = maps_lib.occlusion_windows(self.image_size, patch, stride)
    x = np.asarray(normalize(images, self.mean, self.std))
    return np.stack([maps_lib.occlusion(self._logodds, im, windows) for im in x]) \
        if len(x) else np.zeros((0, *self.image_size), np.float32)

  def _checked(self, images_rgb_uint8: np.ndarray) -> np.ndarray:
    images = np.asarray(images_rgb_uint8)
    want = (*self.image_size, 3)
    if images.ndim != 4 or images.shape[1:] != want or images.dtype != np.uint8:
      raise ValueError(f'expected uint8 images of shape (N, {want[0]}, {want[1]}, 3), '
                       f'got {images.dtype} {images.shape}')
    return images

  def _batched(self, fn, images_rgb_uint8: np.ndarray, params=None,
               model_state=None) -> np.ndarray:
    """fn(params, model_state, batch) over fixed-size batches (the last one
    zero-padded: one shape, one compile), concatenated; params and
    model_state default to self's."""
    params = self.params if params is None else params
    model_state = self.model_state if model_state is None else model_state
    images = self._checked(images_rgb_uint8)
    want = images.shape[1:]
    out = []
    for i in range(0, max(len(images), 1), self.batch_size):
      chunk = images[i:i + self.batch_size]
      n = len(chunk)
      if n < self.batch_size:
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - n, *want), np.uint8)])
      out.append(np.asarray(fn(params, model_state, chunk))[:n])
    return np.concatenate(out)

  def decide(self, prob: float) -> str:
    return 'defective' if prob >= self.threshold else 'good'


def read_health(workdir: str) -> tuple[str, list[str]]:
  """(status, reasons) of the run's eval.json "health" ('ok', 'suspect',
  'collapsed'); 'unknown' with the reason when there is none to read (an
  unfinished run, a run made before health was recorded)."""
  path = os.path.join(workdir, rundir.EVAL)
  if not os.path.isfile(path):
    return 'unknown', [f'no {rundir.EVAL}: the run did not finish']
  try:
    health = rundir.read_json(path, 'evaluation record').get('health')
  except (ValueError, AttributeError) as e:
    return 'unknown', [f'{rundir.EVAL} unreadable: {_one_line(e)}']
  if not isinstance(health, dict) or not health.get('status'):
    return 'unknown', [f'{rundir.EVAL} records no health (a run made before it did)']
  return str(health['status']), [str(r) for r in health.get('reasons') or ()]


def read_data(workdir: str, config: dict) -> dict:
  """What the run was trained on: {'dataset', 'fingerprint', 'manual_dir'}
  from preprocessing.json (its build), or the config of a run older than it."""
  data = config.get('data', {})
  found = {'dataset': f'{data.get("name")}/{data.get("builder_config")}',
           'fingerprint': '', 'manual_dir': data.get('manual_dir') or ''}
  path = os.path.join(workdir, rundir.PREPROCESSING)
  if os.path.isfile(path):
    try:
      record = rundir.read_json(path, 'preprocessing record')
    except ValueError:
      return found  # read_preprocessing refuses it with the reason.
    found = {'dataset': str(record.get('dataset') or found['dataset']),
             'fingerprint': str(record.get('source_fingerprint') or ''),
             'manual_dir': str(record.get('manual_dir') or found['manual_dir'])}
  return found


def _other_checkpoints(run: RunFiles) -> str:
  """The way out of an unreadable checkpoint: the run's other steps."""
  periodic = rundir.finished_steps(os.path.join(run.workdir, rundir.CHECKPOINTS))
  best = rundir.finished_steps(os.path.join(run.workdir, rundir.CHECKPOINTS_BEST))
  steps = set(periodic) | set(best)
  if run.source != 'best' or run.step not in periodic:  # --step=N reads periodic first.
    steps.discard(run.step)
  if not steps:
    return 'the run has no other checkpoint'
  return f'choose another with --step=N: steps {sorted(steps)}'


# ------------------------------------------------------------------ ensembles


class Ensemble:
  """Several runs scoring the same inputs: `predict_proba` is the mean of
  their defect probabilities, `threshold` the mean of their thresholds.

  The members must preprocess alike (image size, channels, aspect, ROI step:
  one input serves all); each keeps its own normalisation and checkpoint.
  Attributes: members (Predictors), threshold, preprocessing, image_size,
  batch_size, tta.
  """

  def __init__(self, members: Sequence[Predictor]):
    if not members:
      raise ValueError('an ensemble needs at least one run')
    first = members[0]
    for other in members[1:]:
      _check_same_input(first, other)
      _check_same_data(first, other)
    self.members = list(members)
    self.threshold = float(np.mean([m.threshold for m in members]))
    self.preprocessing, self.image_size = first.preprocessing, first.image_size
    self.batch_size, self.tta = first.batch_size, first.tta

  @property
  def scored_precision(self) -> str:
    return '/'.join(sorted({m.scored_precision for m in self.members}))

  def describe(self) -> str:
    return (f'ensemble of {len(self.members)} runs (mean probability): ' +
            ' | '.join(m.describe() for m in self.members))

  def health_warning(self) -> Optional[str]:
    """The members' health warnings, one line, or None when all are ok."""
    lines = [w for w in (m.health_warning() for m in self.members) if w]
    return ' | '.join(lines) if lines else None

  def predict_proba(self, images_rgb_uint8: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N,) float32, the members' mean."""
    return np.mean([m.predict_proba(images_rgb_uint8) for m in self.members],
                   axis=0).astype(np.float32)

  def maps(self, images_rgb_uint8: np.ndarray, method: str = maps_lib.DEFAULT_METHOD, *,
           scale: str = 'run', **settings) -> np.ndarray:
    """The members' mean map (`Predictor.maps`), each member's on its own
    calibrated scale (scale='run': ValueError where one has none) or divided
    by its maximum (scale='image', the mean renormalised to [0, 1]). 'raw'
    is refused: the runs' units differ."""
    if scale == 'raw':
      raise ValueError("scale='raw': an ensemble's members map in their own units; use "
                       "'run' or 'image'")
    heat = np.mean([m.maps(images_rgb_uint8, method, scale=scale, **settings)
                    for m in self.members], axis=0).astype(np.float32)
    return heat if scale == 'run' else map_scale.per_image_max(heat)

  def map_scale(self, method: str = maps_lib.DEFAULT_METHOD, **settings) -> 'map_scale.Scale':
    """Every member's run scale (the mean of maps in those units), else per
    image, naming the members without one."""
    scales = [m.map_scale(method, **settings) for m in self.members]
    missing = [s.note for s in scales if s.kind != 'run']
    if missing:
      return map_scale.per_image(' | '.join(missing))
    return map_scale.Scale('run', 1.0, f'{method}: the mean of {len(scales)} runs\' maps, '
                           'each on its own calibrated scale')

  def readable_maps(self, images_rgb_uint8: np.ndarray, method: str = maps_lib.DEFAULT_METHOD,
                    **settings) -> tuple[np.ndarray, 'map_scale.Scale']:
    """As Predictor.readable_maps, for the members' mean map."""
    scale = self.map_scale(method, **settings)
    heat = self.maps(images_rgb_uint8, method, scale=scale.kind, **settings)
    return scale.apply(heat), scale

  def decide(self, prob: float) -> str:
    return 'defective' if prob >= self.threshold else 'good'


def _check_same_input(a: Predictor, b: Predictor) -> None:
  """ValueError naming both runs and the first preprocessing field that differs."""
  pa, pb = a.preprocessing, b.preprocessing
  for field, what in (('size', 'image size'), ('channels', 'channels'),
                      ('aspect', 'aspect'), ('roi', 'ROI step')):
    va, vb = getattr(pa, field), getattr(pb, field)
    if va != vb:
      if field == 'size':
        va, vb = 'x'.join(map(str, va)), 'x'.join(map(str, vb))
      raise ValueError(f'runs {a.run.workdir} and {b.run.workdir} cannot form an '
                       f'ensemble: {what} {va} vs {vb} (their inputs differ)')


def _check_same_data(a: Predictor, b: Predictor) -> None:
  """ValueError naming both runs and their data when they were trained on
  different datasets (or different builds of one): their mean is no model
  of either."""
  da, db = a.data, b.data
  differ = da['dataset'] != db['dataset']
  if da['fingerprint'] and db['fingerprint']:
    differ = differ or da['fingerprint'] != db['fingerprint']
  elif da['manual_dir'] and db['manual_dir']:  # No fingerprints: the source folders.
    differ = differ or os.path.realpath(da['manual_dir']) != os.path.realpath(db['manual_dir'])
  if differ:
    what = lambda d: ' '.join(x for x in (d['dataset'], d['fingerprint'][:12] and
                                          f'source {d["fingerprint"][:12]}',
                                          d['manual_dir'] and f'from {d["manual_dir"]}') if x)
    raise ValueError(f'runs {a.run.workdir} ({what(da)}) and {b.run.workdir} ({what(db)}) '
                     'cannot form an ensemble: they were trained on different data')


def load(workdirs: Sequence[str], *, step: Optional[int] = None, batch_size: int = 16,
         tta: str = 'none', precision: str = 'float32'):
  """A Predictor for one workdir, an Ensemble (best checkpoints) for several."""
  workdirs = list(workdirs)
  if len(workdirs) == 1:
    return Predictor(workdirs[0], step=step, batch_size=batch_size, tta=tta,
                     precision=precision)
  if step is not None:
    raise ValueError('step applies to one run; an ensemble uses each run\'s best '
                     'checkpoint')
  seen = {}  # Real path -> the name first given: a symbolic link is the same run.
  for w in workdirs:
    real = os.path.realpath(w)
    if real in seen:
      same = '' if os.path.abspath(seen[real]) == os.path.abspath(w) else \
          f' ({seen[real]} and {w} are the same directory)'
      raise ValueError(f'run {real} is listed twice{same}: an ensemble would weigh it double')
    seen[real] = w
  return Ensemble([Predictor(w, batch_size=batch_size, tta=tta, precision=precision)
                   for w in workdirs])


def ensemble_probabilities(workdirs: Sequence[str], images_rgb_uint8: np.ndarray, *,
                           tta: str = 'none', batch_size: int = 16) -> np.ndarray:
  """Mean defect probability of the runs' best checkpoints on uint8 RGB model
  inputs (N, H, W, 3) at their common image size (for sweep evaluators)."""
  return load(workdirs, batch_size=batch_size, tta=tta).predict_proba(images_rgb_uint8)


# ------------------------------------------------------------------ reading files


# The file as decoded pixels (gray or BGR), or FrameError saying why not.
read_image = preprocess.read_image


# ------------------------------------------------------------------ frames


@dataclasses.dataclass
class FrameResult:
  """One input file's outcome. prob/decision are None when error is set.

  roi_method: 'hough' or 'contour' (which detector found the screen; see
  roi.ScreenInfo.method), 'none' (the file is already an ROI), '' (failed
  before). corners: (4, 2) float32 tl, tr, br, bl in frame pixels, or None.
  roi: the (H, W, 3) uint8 RGB ROI that was scored, or None.
  """
  path: str
  prob: Optional[float] = None
  decision: Optional[str] = None
  roi_method: str = ''
  corners: Optional[np.ndarray] = None
  roi: Optional[np.ndarray] = None
  error: str = ''
  source_size: Optional[tuple[int, int]] = None  # (width, height) of the file.
  # How many times the most enlarged side of what became the input grew
  # (preprocess.enlargement; <= 1: nothing enlarged), None before the ROI.
  enlargement: Optional[float] = None
  heat: Optional[np.ndarray] = None  # (H, W) in [0, 1] to colour, where maps were asked for (maps.py).

  @property
  def ok(self) -> bool:
    return not self.error


def extract_roi(image: np.ndarray, spec: preprocess.Spec
                ) -> tuple[np.ndarray, Optional[np.ndarray], str]:
  """(roi_rgb (h, w, 3) uint8, corners or None, method): `preprocess.
  to_model_input`, the step every builder runs at training time."""
  rgb, corners, method = preprocess.to_model_input(image, spec)
  return rgb, (corners if spec.roi != 'none' else None), method


def run_spec(predictor_spec: preprocess.Spec, roi_method: str) -> preprocess.Spec:
  """The predictor's preprocessing, its ROI mode overridden unless 'auto'."""
  if roi_method not in ROI_METHODS:
    raise ValueError(f'roi_method={roi_method!r}: expected one of {ROI_METHODS}')
  if roi_method == 'auto':
    return predictor_spec
  return dataclasses.replace(predictor_spec, roi=roi_method)


def prepare_frame(path: str, *, spec: preprocess.Spec,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> FrameResult:
  """Reads a file and extracts its model input. Never raises for bad input:
  the reason goes into `error`."""
  result = FrameResult(path=str(path))
  try:
    image = read_image(str(path), max_pixels=max_pixels)
    result.source_size = (image.shape[1], image.shape[0])
    rgb, corners, result.roi_method = preprocess.to_model_input(image, spec)
    result.enlargement = preprocess.enlargement(image.shape, corners, spec)
    result.roi, result.corners = rgb, (corners if spec.roi != 'none' else None)
  except ValueError as e:  # FrameError (BadImage) and friends.
    result.error = _one_line(e) if isinstance(e, FrameError) else \
        f'{type(e).__name__}: {_one_line(e)}'
  except (MemoryError, cv2.error, OSError) as e:
    result.error = f'{type(e).__name__}: {_one_line(e)}'
  except Exception as e:  # pylint: disable=broad-except
    # A bug in ROI search on one odd frame must not lose the other rows.
    result.error = f'internal error {type(e).__name__}: {_one_line(e)}'
  return result


def _one_line(e: BaseException) -> str:
  lines = [s.strip() for s in str(e).strip().splitlines() if s.strip()]
  return ' | '.join(lines) if len(lines) <= 2 else lines[-1]


def score_frames(predictor: Predictor, paths: Iterable[str], *, roi_method: str = 'auto',
                 max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 1,
                 ahead: int = 1) -> Iterator[list[FrameResult]]:
  """Yields, per chunk of `predictor.batch_size` input files in order, their
  FrameResults with prob and decision filled in for those that succeeded.

  Reading and ROI search run on `workers` threads (OpenCV and the JPEG
  decoder release the GIL), `ahead` chunks in advance: while one chunk's
  ROIs are scored (one padded call), the next ones are being read, so on a
  machine with cores to spare the decoding hides behind the forward."""
  paths = list(paths)
  spec = run_spec(predictor.preprocessing, roi_method)
  prepare = lambda p: prepare_frame(p, spec=spec, max_pixels=max_pixels)
  chunks = [paths[i:i + predictor.batch_size]
            for i in range(0, len(paths), predictor.batch_size)]
  pool = concurrent.futures.ThreadPoolExecutor(max(1, workers))
  submitted = []  # Per chunk, its files' futures, in order.
  try:
    for i in range(len(chunks)):
      while len(submitted) < min(len(chunks), i + 1 + max(0, ahead)):
        submitted.append([pool.submit(prepare, p) for p in chunks[len(submitted)]])
      results = [f.result() for f in submitted[i]]
      submitted[i] = None  # Done with: its results are the caller's now.
      good = [r for r in results if r.ok]
      if good:
        probs = predictor.predict_proba(np.stack([r.roi for r in good]))
        for r, p in zip(good, probs):
          if np.isfinite(p):
            r.prob = float(p)
            r.decision = predictor.decide(r.prob)
          else:  # NaN compares False with the threshold: it would read 'good'.
            r.error = (f'the model gave a non-finite score ({float(p)}): the '
                       'checkpoint holds non-finite weights or the input broke it')
      yield results
  finally:  # Also when the caller stops early: no reading goes on behind it.
    pool.shutdown(wait=True, cancel_futures=True)


def input_problem(path: str) -> Optional[str]:
  """Why `path` is not a regular file that can be opened (one line:
  'broken symbolic link -> target', 'not a regular file: a FIFO ...'), or None.

  Checked before reading: a FIFO would block the reader forever, and a dangling
  link would otherwise read as a bare 'No such file or directory'."""
  import errno  # pylint: disable=import-outside-toplevel
  import stat  # pylint: disable=import-outside-toplevel
  try:
    mode = os.stat(path).st_mode
  except OSError as e:
    if os.path.islink(path):
      try:
        target = os.readlink(path)
      except OSError:
        target = '?'
      if e.errno == errno.ELOOP:
        return f'symbolic link loop -> {target}'
      return f'broken symbolic link -> {target}'
    return f'cannot read file: {e.strerror or e}'
  if stat.S_ISREG(mode):
    return None
  kinds = ((stat.S_ISDIR, 'a directory'), (stat.S_ISFIFO, 'a FIFO (named pipe)'),
           (stat.S_ISSOCK, 'a socket'), (stat.S_ISCHR, 'a character device'),
           (stat.S_ISBLK, 'a block device'))
  kind = next((name for test, name in kinds if test(mode)), f'mode {mode:o}')
  return f'not a regular file: {kind}'


def list_inputs(spec: str, *, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[str]:
  """Paths named by `spec`: a path (taken whatever its name), a folder
  (recursive, image extensions only) or a glob pattern (recursive `**`
  allowed; every match). Sorted; [] when nothing matches.

  Every entry but a directory is listed, so a dangling symbolic link, a FIFO
  or a socket is not dropped silently: `input_problem` says why it cannot be
  read, and the caller reports it."""
  import glob  # pylint: disable=import-outside-toplevel
  if os.path.isdir(spec):
    root = pathlib.Path(spec)
    return sorted(str(p) for p in root.rglob('*')
                  if not p.is_dir() and p.suffix.lower() in extensions)
  if os.path.lexists(spec):  # A file, or a link / FIFO the caller reports.
    return [spec]
  if glob.has_magic(spec):
    return sorted(p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p))
  return []
