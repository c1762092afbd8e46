"""Evaluation of a trained state, and the summary a run ends with.

  outputs = predict_split(eval_fn, state, batches, sharding)  # per-example arrays
  metrics = summarize(outputs, threshold)   # metrics.summary + health.eval_stats
  test, report = final_evaluation(run, state, monitor)

final_evaluation chooses the decision threshold on validation by
config.eval.threshold_rule, with the checkpoint config.eval.checkpoint names
(the best one, kept by checkpointing.BestCheckpoint, or the final state), and
evaluates test at it, unchanged. It writes threshold.json, eval.json (val and
test metrics, the recall per defect type, the health report) and
eval_val.npz / eval_test.npz. Metrics a split leaves undefined (precision
with nothing flagged, AUROC with one class) are null in the files, with the
reason under "undefined".

`run` here is a train.Run: its config, workdir, builder and splits, its
predict() and its best checkpoints. The log lines a person reads at the
end (log_health, log_summary) and on each evaluation (format_metrics) are
here too.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Iterator

import jax
import numpy as np

from smsdd_jax import health
from smsdd_jax import input_pipeline
from smsdd_jax import metrics as metrics_lib
from smsdd_jax import rundir
from smsdd_jax.data_parallel import process_rows, to_global, to_host
from smsdd_jax.rundir import write_json
from smsdd_jax.step import TrainState


logging = logging.getLogger('smsdd_jax')


def predict_split(eval_fn, state: TrainState, batches: Iterator[dict],
                  sharding) -> dict:
  """Runs eval_fn over every batch; padding is dropped with the mask. Every
  process reads every batch and feeds its share of the rows to the mesh.
  Returns per-example numpy arrays: label, prob, cross_entropy, embedding."""
  parts = {'label': [], 'prob': [], 'cross_entropy': [], 'embedding': []}
  for batch in batches:
    keep = batch.pop('mask') > 0
    out = to_host(eval_fn(state.params, state.model_state,
                          to_global(process_rows(batch), sharding)))
    parts['label'].append(batch['label'][keep])
    parts['prob'].append(out['prob_defective'][keep])
    parts['cross_entropy'].append(out['cross_entropy'][keep])
    parts['embedding'].append(out['embedding'][keep])
  return {k: np.concatenate(v) for k, v in parts.items()}


def summarize(outputs: dict, threshold: float = 0.5) -> dict:
  """predict_split's arrays -> metrics.summary (accuracy and the numbers it
  hides on an imbalanced set) + mean cross-entropy +
  the numbers the health checks read (health.eval_stats: probability spread,
  share predicted defective, share of all-zero embeddings)."""
  return {**metrics_lib.summary(outputs['label'], outputs['prob'], threshold),
          'cross_entropy': float(np.mean(outputs['cross_entropy'])),
          **health.eval_stats(outputs['prob'], outputs['embedding'], threshold)}


def check_eval_splits(builder, splits: dict, eval_config) -> None:
  """A threshold chosen from data on a validation split that lacks a class is
  arbitrary: refused before training. With 'argmax' (no data needed) a
  missing class only leaves some metrics NaN: a warning."""
  for prefix in ('val', 'test'):
    info = input_pipeline.split_info(builder, splits[prefix])
    missing = metrics_lib.missing_classes([0] * info.num_good + [1] * info.num_defective)
    if not missing:
      continue
    what = (f'{prefix} split {splits[prefix]!r} has no {" and no ".join(missing)} '
            f'examples ({info})')
    if prefix == 'val' and eval_config.threshold_rule != 'argmax':
      raise ValueError(f'{what}: config.eval.threshold_rule='
                       f'{eval_config.threshold_rule!r} cannot choose a threshold on it; '
                       "use 'argmax' or a split with both classes")
    logging.warning('%s: recall, escape rate, AUROC etc. will be undefined (null)', what)


def final_evaluation(run, state: TrainState,
                     monitor: health.Monitor | None = None) -> tuple[dict, dict]:
  """Chooses the threshold on validation (config.eval.threshold_rule) with the
  state config.eval.checkpoint names and evaluates test at it, unchanged.

  Writes (process 0) threshold.json (read by inference.Predictor), eval.json
  ({'step', 'checkpoint', 'threshold', 'threshold_rule', 'val': {...},
  'test': {...}, 'undefined': {'test/precision': why, ...}, 'health':
  {'status', 'reasons'}, 'recall_by_type': {'val': {type: {'defective',
  'detected', 'recall'}}, 'test': ...}}; undefined metrics are null; no
  recall_by_type for a dataset without defect types) and eval_val.npz /
  eval_test.npz (prob, label, embedding, defect_type). Returns the test metrics
  ({'test/accuracy': ..., 'test/threshold': ...}) and the health report of the
  training history (`monitor`) plus the evaluated outputs."""
  cfg = run.config.eval
  step, which = int(state.step), 'final'
  if cfg.checkpoint == 'best':
    best_step = run.best.checkpoints.latest_step()
    if best_step is None:
      logging.warning('no best checkpoint: evaluating the final state')
    else:
      which = 'best'
      if best_step != step:
        state = jax.device_put(run.best.checkpoints.restore(state, best_step),
                               run.replicated)
        step = best_step
  val, test = run.predict(state, 'val'), run.predict(state, 'test')
  threshold = metrics_lib.choose_threshold(val['label'], val['prob'], cfg.threshold_rule,
                                           max_escape_rate=cfg.max_escape_rate)
  val_m, test_m = summarize(val, threshold), summarize(test, threshold)
  logging.info('threshold %.6g (%s) chosen on val with the %s checkpoint, step %d: '
               'val escape %.4f overkill %.4f', threshold, cfg.threshold_rule, which, step,
               val_m['escape_rate'], val_m['overkill_rate'])
  report = (monitor or health.Monitor()).diagnose({'val': val_m, 'test': test_m}, step)
  types = {name: _defect_types(run, name, arrays['label'])
           for name, arrays in (('val', val), ('test', test))}
  by_type = {name: metrics_lib.recall_by_type(arrays['label'], arrays['prob'], types[name],
                                              threshold)
             for name, arrays in (('val', val), ('test', test)) if types[name] is not None}
  if by_type.get('test'):
    logging.info('test recall by defect type at threshold %.4g: %s', threshold, ', '.join(
        f'{t} {r["recall"]:.3f} ({r["detected"]}/{r["defective"]})'
        for t, r in by_type['test'].items()))
  if jax.process_index() == 0:
    base = {'threshold': threshold, 'threshold_rule': cfg.threshold_rule,
            'max_escape_rate': cfg.max_escape_rate, 'checkpoint': which, 'step': step}
    write_json(os.path.join(run.workdir, rundir.THRESHOLD),
               {**base, 'val': metrics_lib.nan_to_none(
                   metrics_lib.threshold_report(val['label'], val['prob'], threshold))})
    for name, arrays in (('val', val), ('test', test)):
      extra = {} if types[name] is None else {'defect_type': types[name]}
      rundir.write_npz(os.path.join(run.workdir, rundir.eval_npz(name)), step=step,
                       threshold=threshold, prob=arrays['prob'], label=arrays['label'],
                       embedding=arrays['embedding'], **extra)
    undefined = {f'{name}/{k}': why for name, m in (('val', val_m), ('test', test_m))
                 for k, why in metrics_lib.undefined_reasons(m).items()}
    # Last: a finished eval.json marks a finished run (launch/sweep.py).
    write_json(os.path.join(run.workdir, rundir.EVAL),
               {**base, 'val': metrics_lib.nan_to_none(val_m),
                'test': metrics_lib.nan_to_none(test_m), 'undefined': undefined,
                'health': report, **({'recall_by_type': by_type} if by_type else {})})
  return {**{f'test/{k}': v for k, v in test_m.items()},
          'test/checkpoint_step': step}, report


def _defect_types(run, prefix: str, labels: np.ndarray) -> np.ndarray | None:
  """The defect type of each example predict_split gave for split 'val' or
  'test', or None (the builder has none, or its order did not match the
  labels: a per-type recall would then be wrong, not just missing)."""
  found = input_pipeline.defect_types(run.builder, run.splits[prefix])
  if found is None:
    return None
  if not np.array_equal(found[0], labels):
    logging.warning('%s: defect types read in another order than the predictions; '
                    'no recall per defect type', prefix)
    return None
  return found[1]


def log_summary(run, test: dict, report: dict) -> None:
  """The few numbers a person reads at the end, and where the rest is."""
  def num(key, fmt='.3f'):
    v = test.get(f'test/{key}')
    return 'n/a' if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)
  logging.info('result: test AUROC %s, balanced accuracy %s, escape %s, overkill %s at '
               'threshold %s (checkpoint step %s); health %s', num('auroc'),
               num('balanced_accuracy'), num('escape_rate'), num('overkill_rate'),
               num('threshold', '.4g'), test.get('test/checkpoint_step'), report['status'])
  logging.info('written: %s (all metrics), %s (best checkpoint, used by predict)',
               os.path.join(run.workdir, rundir.EVAL), run.best.checkpoints.directory)


def log_health(report: dict) -> None:
  if report['status'] == health.OK:
    logging.info('health: ok')
  else:
    logging.warning('WARNING health: the run is %s (eval.json "health"): %s',
                    report['status'].upper(), '; '.join(report['reasons']))


# What a person reads on a validation or test line; every metric is in
# metrics.jsonl and eval.json.
LOG_KEYS = ('balanced_accuracy', 'auroc', 'escape_rate', 'overkill_rate', 'cross_entropy')


def format_metrics(metrics: dict, undefined: dict | None = None) -> str:
  """'k=v ...' of the LOG_KEYS for a log line, and any undefined metric as
  'k=null (why)'."""
  undefined = undefined or {}
  metrics = {k: v for k, v in metrics.items()
             if k.split('/')[-1] in LOG_KEYS or k in undefined}

  def one(k, v):
    if k in undefined or (isinstance(v, float) and not math.isfinite(v)):
      return f'{k}=null ({undefined.get(k, v)})'
    return f'{k}={v:.4f}' if isinstance(v, float) else f'{k}={v}'

  return ' '.join(one(k, v) for k, v in metrics.items())
