"""What scoring in bfloat16 (`predict --precision=bfloat16`) changes, on your
frames: the same ROIs scored in float32 and in bfloat16.

  python launch/precision_check.py --frames=FRAMES_DIR [--workdir=RUN]

With --workdir, that run's model, normalisation and threshold (and how many
decisions flip); without, a randomly initialised full-width VGG16 (the
probabilities then sit near 0.5, so the logits' change is reported beside
their spread over the frames). Raw frames go through the run's (or the
default) ROI step first; frames without a screen are skipped and counted.
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))


def _rois(frames: str, spec) -> tuple[np.ndarray, int]:
  from smsdd_jax import inference  # pylint: disable=import-outside-toplevel
  files = inference.list_inputs(frames)
  if not files:
    raise SystemExit(f'--frames={frames}: no image files under it')
  results = [inference.prepare_frame(f, spec=spec) for f in files]
  rois = [r.roi for r in results if r.ok]
  return np.stack(rois), len(results) - len(rois)


def _logits_fn(model, params, state, mean, std):
  import jax  # pylint: disable=import-outside-toplevel
  from smsdd_jax import inference, models  # pylint: disable=import-outside-toplevel
  fwd = jax.jit(lambda x: models.forward(params, inference.normalize(x, mean, std),
                                         model=model, model_state=state)[0])
  return lambda rois: np.concatenate([np.asarray(fwd(rois[i:i + 16]))
                                      for i in range(0, len(rois), 16)])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--frames', required=True, help='folder of raw frames (or ROIs with --roi=none)')
  p.add_argument('--workdir', default='', help='a trained run (default: random weights)')
  p.add_argument('--roi', default='hough', help="without --workdir: 'hough' or 'none'")
  args = p.parse_args(argv)
  import jax  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import inference, models, preprocess  # pylint: disable=import-outside-toplevel
  if args.workdir:
    run = inference.Predictor(args.workdir)
    model, params, state = run.model, run.params, run.model_state
    mean, std, spec, threshold = run.mean, run.std, run.preprocessing, run.threshold
  else:
    model = models.create(default.get_config().model)
    params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
    mean, std = np.full(3, 127.0, np.float32), np.full(3, 60.0, np.float32)
    spec, threshold = preprocess.Spec(roi=args.roi), 0.5
  rois, skipped = _rois(args.frames, spec)
  logits = {}
  for precision in models.PRECISIONS:
    m, pp = models.packed_for_inference(model, params, spec.size, precision)
    logits[precision] = _logits_fn(m, pp, state, mean, std)(rois)
  prob = {k: np.asarray(jax.nn.softmax(v)[:, 1]) for k, v in logits.items()}
  margin32 = logits['float32'][:, 1] - logits['float32'][:, 0]
  margin16 = logits['bfloat16'][:, 1] - logits['bfloat16'][:, 0]
  dprob = np.abs(prob['bfloat16'] - prob['float32'])
  out = {'rois': len(rois), 'skipped_frames': skipped,
         'model': args.workdir or 'random init, full width',
         'max_abs_dprob': round(float(dprob.max()), 5),
         'median_abs_dprob': round(float(np.median(dprob)), 5),
         'margin_change_over_spread': round(float(np.abs(margin16 - margin32).max()
                                                  / max(np.std(margin32), 1e-12)), 4),
         'margin_correlation': round(float(np.corrcoef(margin32, margin16)[0, 1]), 6),
         'threshold': threshold,
         'decisions_flipped': int(np.sum((prob['float32'] >= threshold)
                                         != (prob['bfloat16'] >= threshold)))}
  print(json.dumps(out))


if __name__ == '__main__':
  main()
