"""One scale per run and map method, so a person reads a map without a legend.

  python -m smsdd_jax.map_scale --workdir=RUN --export=FILE [--methods=fine,gradcam]
      [--bank=RUN/memory_bank.npz] [--out=RUN/map_scale.json]

  record = map_scale.calibrate(predictor, export)        # the run's validation split
  map_scale.save('RUN/map_scale.json', record)
  calibration = map_scale.load('RUN/map_scale.json', predictor)  # refuses another run's
  scale = calibration.scale('fine', predictor.map_params('fine'))  # run's, or per image and why

A map's raw values are in its method's own units (maps.py), which differ
between runs. A run's calibration holds, per method (and its settings: the
tap, the smoothing, the bank), one value: the median over the defective
crops of the run's VALIDATION split of each crop's map maximum. An overlay
divides by it and clips to [0, 1]: red means "as strong as a typical defect
of this run's validation split", and a crop the network saw nothing in stays
blue. Anchored on the defective crops, not on the good ones: a scale whose
top is the good crops' 99th percentile puts 1% of every good crop's pixels
at the top by construction, so no good crop could look cool. How cool the
good validation crops look on that scale is recorded beside it (their
peaks' median and 90th percentile, as fractions of the value) with the
AUROC of the map's peak between good and defective crops.

The record says what made it: the run (workdir, checkpoint step and source,
a sha256 of its parameters, model state and normalisation), the data (the
export's sha256 and dataset, the split, how many crops), the method and its
settings, the rule. `load` refuses, in one line (ValueError), a calibration
of another run or checkpoint (by that sha256, so a copied file is caught);
a method or setting it lacks is no error: `Calibration.scale` says why it
has none, and the caller falls back to per-image scaling and says so.

Imports memory_bank (the model digest), metrics and rundir only (the
Predictor comes in as an argument), so inference.py may import this library
without a circle; the command is __main__.py, which imports inference.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional, Sequence

import numpy as np

from smsdd_jax import memory_bank, metrics, rundir

FORMAT = 'smsdd_jax.map_scale/1'
DEFAULT_NAME = 'map_scale.json'  # In the run's workdir, by default.
RULE = 'median over the defective validation crops of each map\'s maximum'
DEFAULT_METHODS = ('fine', 'fine_fast', 'gradcam', 'gradcampp', 'gradxinput')  # Occlusion: asked.


@dataclasses.dataclass(frozen=True)
class Scale:
  """How an overlay's colours were scaled. kind: 'run' (divided by `value`,
  the run's calibration) or 'image' (each map by its own maximum: no
  calibration, `note` says why); short: a few words for an overlay."""
  kind: str
  value: Optional[float]
  note: str

  @property
  def short(self) -> str:
    return 'run scale' if self.kind == 'run' else 'PER-IMAGE scale (no calibration)'

  def apply(self, heat: np.ndarray) -> np.ndarray:
    """Raw maps (N, H, W) -> [0, 1] for colouring."""
    heat = np.asarray(heat, np.float32)
    if self.kind == 'run':
      return np.clip(heat / self.value, 0.0, 1.0)
    return per_image_max(heat)


def per_image_max(heat: np.ndarray) -> np.ndarray:
  """maps.normalise in numpy: each map divided by its maximum (zero stays zero)."""
  heat = np.asarray(heat, np.float32)
  peak = heat.max(axis=(1, 2), keepdims=True) if heat.size else heat
  return np.where(peak > 0, heat / np.where(peak > 0, peak, 1), 0).astype(np.float32)


def per_image(why: str) -> Scale:
  return Scale('image', None, f'{why}: each map is scaled to its own maximum')


# ------------------------------------------------------------------ what it is bound to


def run_record(predictor) -> dict:
  """What a calibration is bound to on the run's side: the model's sha256
  (parameters, model state, normalisation: memory_bank.model_digest, the
  same a bank is bound by), its step, input size and backbone; the workdir
  and checkpoint source for a reader."""
  return {'workdir': predictor.run.workdir, 'step': int(predictor.run.step),
          'checkpoint': predictor.run.source,
          'model_sha256': memory_bank.model_digest(predictor),
          'image_size': list(predictor.image_size), 'backbone': predictor.model.backbone}


def bank_digest(bank) -> str:
  """sha256 of a memory bank's cells and settings: a calibration of
  feature_distance holds for that bank only."""
  h = hashlib.sha256(np.ascontiguousarray(np.asarray(bank.features, np.float32)).tobytes())
  settings = {k: v for k, v in sorted(bank.record.items()) if k not in ('run', 'source')}
  h.update(repr(settings).encode())
  return h.hexdigest()


def _describe(run: dict) -> str:
  return f'run {run.get("workdir")} step {run.get("step")} (model {str(run.get("model_sha256"))[:12]})'


# ------------------------------------------------------------------ making one


def _peaks(heat: np.ndarray) -> np.ndarray:
  return np.asarray(heat, np.float64).reshape(len(heat), -1).max(axis=1)


def method_entry(raw_defective: np.ndarray, raw_good: np.ndarray, params: dict) -> dict:
  """One method's calibration from its raw maps of the defective and the
  good validation crops."""
  peaks_d, peaks_g = _peaks(raw_defective), _peaks(raw_good)
  value = float(np.median(peaks_d)) if len(peaks_d) else float('nan')
  if not (np.isfinite(value) and value > 0):
    raise ValueError(f'method {params["method"]}: the defective validation crops\' maps '
                     f'peak at {value}: no scale can be made from them')
  out = {'params': params, 'value': value, 'defective_crops': int(len(peaks_d)),
         'good_crops': int(len(peaks_g))}
  if len(peaks_g):
    labels = np.r_[np.zeros(len(peaks_g)), np.ones(len(peaks_d))].astype(np.int64)
    out.update(good_peak_median=float(np.median(peaks_g) / value),
               good_peak_p90=float(np.percentile(peaks_g, 90) / value),
               peak_auroc=float(metrics.auroc(labels, np.r_[peaks_g, peaks_d])))
  return out


def validation_crops(export, predictor) -> tuple[str, np.ndarray, np.ndarray]:
  """(split, defective indices, good indices) of the run's validation split
  in `export`; refuses (ExportError) an export of other data than the run's."""
  from smsdd_jax import data_splits, dataset_export  # pylint: disable=import-outside-toplevel
  dataset_export.check_run(export, predictor.run.workdir)
  split = data_splits.split_names(predictor.config.data)['val']
  index = np.asarray(export.indices(split))
  return split, index[export.labels[index] == 1], index[export.labels[index] == 0]


def calibrate(predictor, export, methods: Sequence[str] = DEFAULT_METHODS, *,
              bank=None, **settings) -> dict:
  """The calibration record of `methods` for the predictor's run, from its
  validation split in `export` (a dataset export of the run's build).
  settings: layer, sigma, patch, stride, as Predictor.maps takes them."""
  split, defective, good = validation_crops(export, predictor)
  if not len(defective):
    raise ValueError(f'{export.path}: the validation split {split!r} of run '
                     f'{predictor.run.workdir} holds no defective crop to calibrate on')
  entries = {}
  for method in methods:
    params = predictor.map_params(method, bank=bank, **settings)
    raw = [predictor.maps(export.rgb(i), method, bank=bank, **settings)
           for i in (defective, good)]
    entries[method] = method_entry(raw[0], raw[1], params)
  return {'format': FORMAT, 'made_by': 'smsdd_jax.map_scale.calibrate', 'rule': RULE,
          'run': run_record(predictor),
          'data': {'export': os.path.basename(export.path),
                   'export_sha256': export.fingerprint['sha256'],
                   'dataset': export.fingerprint.get('dataset'), 'split': split,
                   'defective_crops': int(len(defective)), 'good_crops': int(len(good))},
          'methods': entries}


def save(path: str, record: dict) -> None:
  rundir.write_json(path, record)


# ------------------------------------------------------------------ reading one


@dataclasses.dataclass
class Calibration:
  """A run's calibration (`load`): record as saved, path it came from."""
  record: dict
  path: str

  def scale(self, method: str, params: dict) -> Scale:
    """The run's Scale for `method` with `params` (Predictor.map_params),
    or a per-image Scale saying why there is none."""
    entry = self.record.get('methods', {}).get(method)
    if entry is None:
      return per_image(f'{self.path} has no calibration of {method}')
    if entry.get('params') != params:
      return per_image(f'{self.path} calibrated {method} with {entry.get("params")}, '
                       f'not {params}')
    return Scale('run', float(entry['value']),
                 f'{method} on the run\'s scale ({self.path}: 1 = {entry["value"]:.4g}, the '
                 f'{RULE})')


def load(path: str, predictor) -> Calibration:
  """A saved calibration bound to `predictor`'s run; ValueError in one line
  when it is unreadable or was made for another run or checkpoint."""
  return bind(rundir.read_json(path, 'map calibration'), path, predictor)


def bind(record: dict, path: str, predictor) -> Calibration:
  """`record` as the Calibration of `predictor`'s run (`path`: where it came
  from, for messages); ValueError in one line when it is another run's."""
  if not isinstance(record, dict) or record.get('format') != FORMAT:
    raise ValueError(f'{path}: not a map calibration (format {FORMAT} expected)')
  saved, here = record.get('run') or {}, run_record(predictor)
  differs = [k for k in ('model_sha256', 'step', 'image_size', 'backbone')
             if saved.get(k) != here[k]]
  if differs:
    raise ValueError(f'{path} is a map calibration of {_describe(saved)}, not of '
                     f'{_describe(here)} ({", ".join(differs)} differ): make one for this '
                     f'run with python -m smsdd_jax.map_scale --workdir={predictor.run.workdir} '
                     '--export=FILE')
  return Calibration(record, path)


def find(predictor) -> Optional[Calibration]:
  """The calibration in the run's workdir (DEFAULT_NAME), or None when there
  is none; one of another run there is refused as `load` does."""
  path = os.path.join(predictor.run.workdir, DEFAULT_NAME)
  return load(path, predictor) if os.path.isfile(path) else None
