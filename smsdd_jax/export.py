"""Export a trained run's inference function: jax.export and TF SavedModel.

  python -m smsdd_jax.export --workdir=runs/beta_c [--out=DIR] [--step=N]
      [--platforms=cpu,cuda] [--saved_model=true|false] [--batch_size=16]

The exported function is the whole of inference after the ROI search:

  images: (N, H, W, 3) uint8, RGB, model inputs (rectified screen ROIs or
          crops) at the run's config.data.image_size (H, W), 110 x 230 by
          default; export.json records it under "input"
    -> prob_defective: (N,) float32, softmax(logits)[:, 1]

with the run's normalisation ((pixel - mean) / std, data_stats.json) and its
parameters (best checkpoint, or --step) baked in. N is symbolic: one export
serves every batch size. (Should jax.export ever reject the symbolic batch
for a model, the export falls back to a fixed N = --batch_size and says so.)
The decision threshold is NOT inside: apply `prob >= threshold` yourself,
with the threshold recorded in export.json.

Written under --out (default <workdir>/export/):

  smsdd.jax_export   jax.export serialized StableHLO, lowered for --platforms
                     (default cpu and cuda; the caller's platform is picked at
                     call time).
  saved_model/       TensorFlow SavedModel via jax.experimental.jax2tf (native
                     serialization: the same StableHLO inside an XlaCallModule
                     op; parameters as tf.Variables), unless
                     --saved_model=false.
  export.json        input/output spec, threshold, checkpoint, stats, versions,
                     and each artifact's max |difference| from the JAX model
                     on a random batch (checked at export time).

Loading, outside this package:

  # jax.export: needs only jax (a version that can read this serialization;
  # export.json names the one that wrote it).
  from jax import export
  with open('export/smsdd.jax_export', 'rb') as f:
    exported = export.deserialize(bytearray(f.read()))
  probs = exported.call(images_uint8_rgb)          # (N,) float32

  # SavedModel: needs only TensorFlow (the XlaCallModule op is in core TF).
  import tensorflow as tf
  model = tf.saved_model.load('export/saved_model')
  probs = model.serve(tf.constant(images_uint8_rgb))['prob_defective']
  # or model.signatures['serving_default'](images=...)['prob_defective']

Exit status: 0 when every requested artifact was written and verified, 1
when one failed (the message says why; the others are still written), 2 for
usage errors (missing workdir or checkpoints).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from importlib import metadata
from typing import Optional, Sequence

import numpy as np

JAX_EXPORT_NAME = 'smsdd.jax_export'
SAVED_MODEL_NAME = 'saved_model'
INFO_NAME = 'export.json'
TOLERANCE = 1e-5  # Max |prob difference| from the JAX model accepted at export.


def _probe_batch(image_size, n: int = 3, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, *image_size, 3), dtype=np.uint8)


def portable(predictor):
  """The predictor with XLA's own convolutions, whatever the run used: an
  artifact must not carry the 'onednn' path's FFI custom calls (jax.export
  refuses them: they have no compatibility guarantee, and they need this
  machine's compiled library). Same parameters, same values within float32
  rounding (tests/test_onednn.py)."""
  if getattr(predictor.model, 'conv_impl', 'xla') == 'xla':
    return predictor
  out = copy.copy(predictor)
  out.model = predictor.model.clone(conv_impl='xla')
  return out


def export_jax(predictor, path: str, *, platforms: Sequence[str] = ('cpu', 'cuda'),
               fixed_batch: Optional[int] = None):
  """Serializes predictor's inference function with jax.export to `path`.

  The batch dimension is symbolic unless `fixed_batch` is given; a symbolic
  export that fails falls back to fixed_batch=predictor.batch_size. Returns
  (exported, batch_note)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax import export  # pylint: disable=import-outside-toplevel
  predictor = portable(predictor)
  fn = jax.jit(predictor.inference_fn())
  h, w = predictor.image_size
  note = 'symbolic'
  exported = None
  if fixed_batch is None:
    try:
      b, = export.symbolic_shape('b')
      exported = export.export(fn, platforms=tuple(platforms))(
          jax.ShapeDtypeStruct((b, h, w, 3), jnp.uint8))
    except Exception as e:  # pylint: disable=broad-except
      fixed_batch = predictor.batch_size
      note = (f'fixed {fixed_batch} (symbolic batch failed: '
              f'{type(e).__name__}: {str(e).splitlines()[0]})')
  if exported is None:
    exported = export.export(fn, platforms=tuple(platforms))(
        jax.ShapeDtypeStruct((fixed_batch, h, w, 3), jnp.uint8))
    note = note if note != 'symbolic' else f'fixed {fixed_batch}'
  with open(path, 'wb') as f:
    f.write(exported.serialize())
  return exported, note


def export_saved_model(predictor, directory: str, *,
                       platforms: Sequence[str] = ('cpu', 'cuda'),
                       fixed_batch: Optional[int] = None) -> None:
  """Writes a TF SavedModel of the inference function via jax2tf.

  jax2tf in jax 0.10 always uses native serialization (its
  `native_serialization` argument is deprecated and not passed). Parameters
  become tf.Variables, so the graph does not embed them as constants."""
  # pylint: disable=import-outside-toplevel
  import jax
  import tensorflow as tf
  from jax.experimental import jax2tf
  from smsdd_jax import inference
  h, w = predictor.image_size
  predictor = portable(predictor)
  weights = {'params': predictor.params, 'model_state': predictor.model_state}
  variables = tf.nest.map_structure(
      tf.Variable, jax.tree_util.tree_map(np.asarray, weights))

  def probs(weights, images):
    return inference.probabilities(weights['params'], weights['model_state'], images,
                                   model=predictor.model, mean=predictor.mean,
                                   std=predictor.std)

  batch = 'b' if fixed_batch is None else str(fixed_batch)
  converted = jax2tf.convert(probs, polymorphic_shapes=[None, f'({batch}, {h}, {w}, 3)'],
                             with_gradient=False,
                             native_serialization_platforms=tuple(platforms))

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([fixed_batch, h, w, 3], tf.uint8, name='images')])
  def serve(images):
    return {'prob_defective': converted(variables, images)}

  module = tf.Module()
  module._variables = tf.nest.flatten(variables)  # pylint: disable=protected-access
  module.serve = serve
  tf.saved_model.save(module, directory, signatures={'serving_default': serve})


def _max_diff(call, probe: np.ndarray, want: np.ndarray, fixed: Optional[int]) -> float:
  """Max |call(probe) - want|; a fixed batch gets the probe cut or padded."""
  if fixed is None:
    return float(np.max(np.abs(call(probe) - want)))
  k = min(fixed, len(probe))
  x = np.zeros((fixed, *probe.shape[1:]), np.uint8)
  x[:k] = probe[:k]
  return float(np.max(np.abs(call(x)[:k] - want[:k])))


def _versions() -> dict:
  out = {}
  for p in ('jax', 'jaxlib', 'flax', 'tensorflow-cpu', 'tensorflow'):
    try:
      out[p] = metadata.version(p)
    except metadata.PackageNotFoundError:
      pass
  return out


class _UsageError(Exception):
  """A usage error: one line on stderr, exit status 2."""


def _usage(message: str) -> int:
  print(f'error: {message}', file=sys.stderr)
  return 2


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0] if text else ''


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog='python -m smsdd_jax.export',
      description='Export a run (ROI uint8 RGB -> defect probability) with '
      'jax.export and as a TF SavedModel.')
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', default=None, help='default: <workdir>/export')
  parser.add_argument('--step', type=int, default=None,
                      help='checkpoint step (default: the best checkpoint)')
  parser.add_argument('--platforms', default='cpu,cuda',
                      help='comma-separated jax.export platforms')
  parser.add_argument('--saved_model', default='true', choices=('true', 'false'))
  parser.add_argument('--batch_size', type=int, default=16,
                      help='the fixed batch, only if a symbolic one fails')
  return parser.parse_args(argv)


def _platforms(arg: str) -> tuple[str, ...]:
  platforms = tuple(p.strip() for p in arg.split(',') if p.strip())
  if not platforms:
    raise _UsageError('--platforms is empty')
  return platforms


def _load_predictor(args: argparse.Namespace):
  """The run's Predictor (best checkpoint, or --step); _UsageError when the
  workdir holds no such run."""
  from smsdd_jax import inference  # pylint: disable=import-outside-toplevel
  try:
    inference.resolve_run(args.workdir, args.step)  # Fast, before TF loads.
    return inference.Predictor(args.workdir, step=args.step,
                               batch_size=max(1, args.batch_size))
  except (FileNotFoundError, ValueError) as e:
    raise _UsageError(str(e).splitlines()[0]) from e


def _output_dir(out: Optional[str], predictor) -> str:
  out = os.path.abspath(out or os.path.join(predictor.run.workdir, 'export'))
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise _UsageError(f'cannot create --out {out}: {e.strerror or e}') from e
  return out


def _export_info(predictor) -> dict:
  """export.json without its artifacts (each export step adds its own)."""
  return {
      'input': {'name': 'images', 'shape': [None, *predictor.image_size, 3],
                'dtype': 'uint8', 'channels': 'RGB',
                'what': 'model inputs made by smsdd_jax.preprocess.to_model_input with '
                        'the spec under "preprocessing" (what the run\'s build did)'},
      'preprocessing': predictor.preprocessing.to_dict(),
      'output': {'name': 'prob_defective', 'shape': [None], 'dtype': 'float32',
                 'what': 'softmax(logits)[:, 1]; defective when >= threshold'},
      'threshold': predictor.threshold,
      'threshold_source': predictor.run.threshold_source,
      'checkpoint': {'step': predictor.run.step, 'source': predictor.run.source,
                     'note': predictor.run.note, 'workdir': predictor.run.workdir},
      'normalisation': {'mean': predictor.mean.tolist(), 'std': predictor.std.tolist()},
      'versions': _versions(),
      'artifacts': {},
  }


def _verified(what: str, diff: float) -> bool:
  """Whether an artifact's max |difference| from the model is within
  TOLERANCE; says so on stderr when it is not."""
  if diff <= TOLERANCE:
    return True
  print(f'error: {what} differs from the model by {diff:.2e} > {TOLERANCE}',
        file=sys.stderr)
  return False


def _write_jax_export(predictor, out: str, platforms, probe, want, info: dict
                      ) -> tuple[bool, Optional[int]]:
  """Writes, reloads and verifies the jax.export artifact; records it in
  info. Returns (ok, the fixed batch or None for a symbolic one)."""
  path = os.path.join(out, JAX_EXPORT_NAME)
  fixed = None
  try:
    t0 = time.perf_counter()
    exported, batch_note = export_jax(predictor, path, platforms=platforms)
    from jax import export  # pylint: disable=import-outside-toplevel
    with open(path, 'rb') as f:
      reloaded = export.deserialize(bytearray(f.read()))
    if not batch_note.startswith('symbolic'):
      fixed = int(batch_note.split()[1])
    diff = _max_diff(lambda x: np.asarray(reloaded.call(x)), probe, want, fixed)
    ok = diff <= TOLERANCE
    info['input']['shape'][0] = fixed
    info['artifacts']['jax_export'] = {
        'path': path, 'bytes': os.path.getsize(path), 'platforms': list(exported.platforms),
        'batch': batch_note, 'max_abs_diff': diff, 'verified': ok,
        'calling_convention_version': exported.calling_convention_version}
    print(f'jax.export: {path} ({os.path.getsize(path) / 1e6:.2f} MB, platforms '
          f'{",".join(exported.platforms)}, batch {batch_note}); max |diff| {diff:.2e}'
          f' on a probe batch ({time.perf_counter() - t0:.1f} s)')
    return _verified('jax.export artifact', diff), fixed
  except Exception as e:  # pylint: disable=broad-except
    info['artifacts']['jax_export'] = {'error': f'{type(e).__name__}: {e}'}
    print(f'error: jax.export failed: {type(e).__name__}: {_first_line(e)}',
          file=sys.stderr)
    return False, fixed


def _write_saved_model(predictor, out: str, platforms, probe, want, info: dict,
                       fixed: Optional[int]) -> bool:
  """Writes, reloads and verifies the SavedModel (batch `fixed`, None =
  any); records it in info. Returns whether it was written and verified."""
  sm_dir = os.path.join(out, SAVED_MODEL_NAME)
  try:
    t0 = time.perf_counter()
    export_saved_model(predictor, sm_dir, platforms=platforms, fixed_batch=fixed)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    loaded = tf.saved_model.load(sm_dir)
    diff = _max_diff(
        lambda x: loaded.serve(tf.constant(x))['prob_defective'].numpy(),
        probe, want, fixed)
    info['artifacts']['saved_model'] = {
        'path': sm_dir, 'signature': 'serving_default', 'function': 'serve',
        'converter': 'jax2tf (native serialization)', 'platforms': list(platforms),
        'max_abs_diff': diff, 'verified': diff <= TOLERANCE}
    print(f'SavedModel: {sm_dir} (jax2tf, native serialization; signature '
          f'serving_default(images) -> prob_defective); max |diff| {diff:.2e} '
          f'({time.perf_counter() - t0:.1f} s)')
    return _verified('SavedModel', diff)
  except Exception as e:  # pylint: disable=broad-except
    reason = f'{type(e).__name__}: {_first_line(e)}'
    info['artifacts']['saved_model'] = {'error': reason}
    print(f'error: SavedModel not written: {reason}', file=sys.stderr)
    return False


def _write_info(info: dict, out: str) -> None:
  path = os.path.join(out, INFO_NAME)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(info, f, indent=2)
  print(f'wrote {path}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parse_args(argv)
  try:
    platforms = _platforms(args.platforms)
    predictor = _load_predictor(args)
    out = _output_dir(args.out, predictor)
  except _UsageError as e:
    return _usage(str(e))
  print(f'model: {predictor.describe()}')
  probe = _probe_batch(predictor.image_size)
  want = predictor.predict_proba(probe)
  info = _export_info(predictor)
  ok, fixed = _write_jax_export(predictor, out, platforms, probe, want, info)
  if args.saved_model == 'true':
    ok = _write_saved_model(predictor, out, platforms, probe, want, info, fixed) and ok
  else:
    info['artifacts']['saved_model'] = {'skipped': '--saved_model=false'}
  _write_info(info, out)
  return 0 if ok else 1


def run() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())


if __name__ == '__main__':
  run()
