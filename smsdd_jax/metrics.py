"""Classification metrics for defect inspection, in plain numpy.

Labels are 0 = good, 1 = defective (the positive class of every metric here);
scores are the model's defect probability. A prediction is "defective" when
`prob >= threshold`.

  summary(labels, prob, threshold)      every number below in one dict
  choose_threshold(labels, prob, rule)  the decision threshold, picked on validation

Inspection terms: the escape rate is the share of defective items passed as
good (1 - recall), the overkill rate the share of good items rejected
(1 - specificity). On a set that is 86% good, answering "good" always scores
86% accuracy with a 100% escape rate: read accuracy beside these.

Undefined numbers are NaN, never a silent 0: recall, escape rate, AUROC and
average precision need a defective example; specificity, overkill rate and
AUROC need a good one; precision needs at least one "defective" decision.
`summary` warns (MissingClassWarning) when a class is absent. Files get None
(JSON null) instead, with `undefined_reasons` saying why. Choosing a
threshold from data on such a split is refused with a ValueError: the rule
would optimise nothing (anomalib #2433, #3357).
"""
from __future__ import annotations

import math
import warnings
import numpy as np

GOOD, DEFECTIVE = 0, 1

# How the decision threshold is chosen on the validation split.
THRESHOLD_RULES = {
    'argmax': 'the class with the larger softmax output (threshold 0.5); needs no data',
    'best_f1': 'the threshold with the highest F1 of the defective class',
    'max_escape': ('the lowest overkill rate among thresholds whose escape rate is at '
                   'most max_escape_rate'),
}


class MissingClassWarning(UserWarning):
  """A split lacks good or defective examples: some metrics are NaN."""


# ------------------------------------------------------------------ checks


def _as_arrays(labels, scores):
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f'{labels.size} labels but {scores.size} scores')
  if labels.size and not np.isin(labels, (GOOD, DEFECTIVE)).all():
    raise ValueError(f'labels must be 0 (good) or 1 (defective), got '
                     f'{sorted(set(np.unique(labels).tolist()) - {0, 1})[:5]}')
  if not np.isfinite(scores).all():
    raise ValueError(f'{int(np.sum(~np.isfinite(scores)))} scores are NaN or infinite')
  return labels.astype(np.int64), scores


def _div(a: float, b: float) -> float:
  return a / b if b else float('nan')


def missing_classes(labels) -> list[str]:
  """Names of the classes absent from `labels` ([] when both are there)."""
  labels = np.asarray(labels).reshape(-1)
  return [name for value, name in ((DEFECTIVE, 'defective'), (GOOD, 'good'))
          if not np.any(labels == value)]


# ------------------------------------------------------------------ threshold-free


def confusion_matrix(labels, pred) -> np.ndarray:
  """2x2 counts [[TN, FP], [FN, TP]]: rows the true class (good, defective),
  columns the decision (good, defective), as scikit-learn lays it out."""
  labels, pred = _as_arrays(labels, pred)
  pred = pred.astype(np.int64)
  out = np.zeros((2, 2), np.int64)
  np.add.at(out, (labels, pred), 1)
  return out


def _ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks, ties given their average rank."""
  order = np.argsort(x, kind='mergesort')
  sorted_x = x[order]
  # Start index of each run of equal values.
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  avg = (starts + ends + 1) / 2.0  # Mean of ranks starts+1 .. ends.
  ranks = np.empty(len(x))
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def auroc(labels, scores) -> float:
  """Area under the ROC curve: the probability that a random defective item
  scores above a random good one, ties counting one half (Mann-Whitney U).
  NaN when a class is absent."""
  labels, scores = _as_arrays(labels, scores)
  n_def, n_good = int(np.sum(labels == 1)), int(np.sum(labels == 0))
  if not (n_def and n_good):
    return float('nan')
  rank_sum = float(np.sum(_ranks(scores)[labels == 1]))
  return (rank_sum - n_def * (n_def + 1) / 2.0) / (n_def * n_good)


def _curve_counts(labels: np.ndarray, scores: np.ndarray):
  """Cumulative TP and FP counts for thresholds at each distinct score,
  highest first (a threshold flags every score >= it)."""
  order = np.argsort(-scores, kind='mergesort')
  s, y = scores[order], labels[order]
  last_of_run = np.r_[s[1:] != s[:-1], True]
  tps = np.cumsum(y)[last_of_run]
  fps = np.cumsum(1 - y)[last_of_run]
  return tps, fps, s[last_of_run]


def roc_curve(labels, scores):
  """(fpr, tpr, thresholds): one point per distinct score, highest first,
  starting at (0, 0) with threshold +inf. fpr is the overkill rate and tpr
  1 - escape rate at each threshold. NaN rates where a class is absent."""
  labels, scores = _as_arrays(labels, scores)
  tps, fps, thresholds = _curve_counts(labels, scores)
  tps, fps = np.r_[0, tps], np.r_[0, fps]
  n_def, n_good = tps[-1], fps[-1]
  fpr = fps / n_good if n_good else np.full(len(fps), np.nan)
  tpr = tps / n_def if n_def else np.full(len(tps), np.nan)
  return fpr, tpr, np.r_[np.inf, thresholds]


def precision_recall_curve(labels, scores):
  """(precision, recall, thresholds) at each distinct score, highest first."""
  labels, scores = _as_arrays(labels, scores)
  tps, fps, thresholds = _curve_counts(labels, scores)
  n_def = int(np.sum(labels == 1))
  precision = tps / (tps + fps)
  recall = tps / n_def if n_def else np.full(len(tps), np.nan)
  return precision, recall, thresholds


def average_precision(labels, scores) -> float:
  """Average precision, sum over thresholds of (R_k - R_{k-1}) * P_k (the
  step-wise area under the precision-recall curve, scikit-learn's
  definition: no interpolation). NaN without a defective example."""
  labels, scores = _as_arrays(labels, scores)
  if not np.any(labels == 1):
    return float('nan')
  precision, recall, _ = precision_recall_curve(labels, scores)
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# ------------------------------------------------------------------ at a threshold


def summary(labels, prob, threshold: float = 0.5, *, warn: bool = True) -> dict:
  """Every metric at `threshold` (predict defective when prob >= threshold).

  Keys: accuracy, balanced_accuracy (mean of the per-class recalls; with one
  class absent, the other's), precision, recall (of the defective class; also
  as recall_defective), specificity, f1, escape_rate, overkill_rate, auroc,
  average_precision, tp, fp, tn, fn, num_examples, num_defective, num_good,
  threshold. Warns (MissingClassWarning) if a class is absent.
  """
  labels, prob = _as_arrays(labels, prob)
  missing = missing_classes(labels)
  if warn and missing and labels.size:
    warnings.warn(f'no {" and no ".join(missing)} examples among {labels.size}: '
                  'metrics that need them are NaN', MissingClassWarning, stacklevel=2)
  pred = (prob >= threshold).astype(np.int64)
  (tn, fp), (fn, tp) = confusion_matrix(labels, pred).tolist()
  n_def, n_good = tp + fn, tn + fp
  recall, specificity = _div(tp, n_def), _div(tn, n_good)
  per_class = [r for r in (recall, specificity) if not math.isnan(r)]
  return {
      'accuracy': _div(tp + tn, labels.size),
      'balanced_accuracy': float(np.mean(per_class)) if per_class else float('nan'),
      'precision': _div(tp, tp + fp),
      'recall': recall,
      'recall_defective': recall,
      'specificity': specificity,
      'f1': _div(2 * tp, 2 * tp + fp + fn),
      'escape_rate': 1.0 - recall,  # Defective passed as good.
      'overkill_rate': 1.0 - specificity,  # Good rejected.
      'auroc': auroc(labels, prob),
      'average_precision': average_precision(labels, prob),
      'tp': tp, 'fp': fp, 'tn': tn, 'fn': fn,
      'num_examples': int(labels.size), 'num_defective': n_def, 'num_good': n_good,
      'threshold': float(threshold),
  }


# ------------------------------------------------------------------ choosing the threshold


def validate_rule(rule: str, max_escape_rate: float = 0.05) -> None:
  if rule not in THRESHOLD_RULES:
    raise ValueError(f'threshold rule {rule!r}: expected one of {sorted(THRESHOLD_RULES)}')
  if rule == 'max_escape' and not 0.0 <= max_escape_rate < 1.0:
    raise ValueError(f'max_escape_rate={max_escape_rate}: must be in [0, 1)')


def candidate_thresholds(prob) -> np.ndarray:
  """Thresholds that give every distinct decision on these scores, lowest
  first: 0 (everything flagged), then the midpoints between adjacent distinct
  scores. Midpoints, not the scores themselves, so that a test score a hair
  below a validation score is decided as its neighbours are. ("Nothing
  flagged" is left out: no rule here can prefer it.)"""
  u = np.unique(np.asarray(prob, np.float64))
  return np.r_[0.0, (u[:-1] + u[1:]) / 2.0]


def _counts_at(labels: np.ndarray, prob: np.ndarray, thresholds: np.ndarray):
  """TP and FP counts for each threshold (prob >= t flagged), vectorised."""
  def_scores = np.sort(prob[labels == 1])
  good_scores = np.sort(prob[labels == 0])
  tp = len(def_scores) - np.searchsorted(def_scores, thresholds, side='left')
  fp = len(good_scores) - np.searchsorted(good_scores, thresholds, side='left')
  return tp, fp


def choose_threshold(labels, prob, rule: str = 'argmax', *,
                     max_escape_rate: float = 0.05) -> float:
  """The decision threshold by `rule` (THRESHOLD_RULES) on a validation split.

  best_f1: the highest F1; among equal F1 the higher threshold (fewer rejects).
  max_escape: among thresholds with escape rate <= max_escape_rate, the lowest
  overkill rate, then the lowest escape rate. Always feasible: threshold 0
  escapes nothing.

  Raises ValueError for 'best_f1' / 'max_escape' when the split lacks good or
  defective examples: a threshold "adapted" on it would be arbitrary.
  """
  validate_rule(rule, max_escape_rate)
  if rule == 'argmax':
    return 0.5
  labels, prob = _as_arrays(labels, prob)
  missing = missing_classes(labels)
  if missing:
    raise ValueError(
        f'cannot choose a threshold by {rule!r}: the split has no '
        f'{" and no ".join(missing)} examples ({labels.size} in all); use '
        "threshold_rule='argmax' or a validation split holding both classes")
  t = candidate_thresholds(prob)
  tp, fp = _counts_at(labels, prob, t)
  n_def, n_good = int(np.sum(labels == 1)), int(np.sum(labels == 0))
  fn = n_def - tp
  if rule == 'best_f1':
    f1 = 2 * tp / (2 * tp + fp + fn)  # n_def > 0: never 0/0.
    # Last maximum of F1 over increasing thresholds = the highest threshold.
    best = len(t) - 1 - int(np.argmax(f1[::-1]))
    return float(t[best])
  escape, overkill = fn / n_def, fp / n_good
  ok = np.flatnonzero(escape <= max_escape_rate + 1e-12)
  best = ok[np.lexsort((escape[ok], overkill[ok]))[0]]
  return float(t[best])


def recall_by_type(labels, prob, defect_types, threshold: float) -> dict:
  """Where the model fails: {type: {'defective': n, 'detected': k, 'recall':
  k / n}} over the defective examples of each defect type (one per example,
  e.g. magnetic_tile's 'crack'), detected when prob >= threshold; sorted by
  type. A type only good examples carry ('none') has no recall: left out."""
  labels, prob = _as_arrays(labels, prob)
  types = np.asarray(defect_types, dtype=str).reshape(-1)
  if types.shape != labels.shape:
    raise ValueError(f'{labels.size} labels but {types.size} defect types')
  out = {}
  for name in sorted(set(types[labels == DEFECTIVE].tolist())):
    mine = (labels == DEFECTIVE) & (types == name)
    detected = int(np.sum(prob[mine] >= threshold))
    out[name] = {'defective': int(mine.sum()), 'detected': detected,
                 'recall': detected / int(mine.sum())}
  return out


def threshold_report(labels, prob, threshold: float) -> dict:
  """The few numbers worth storing with a chosen threshold."""
  s = summary(labels, prob, threshold, warn=False)
  return {k: s[k] for k in ('escape_rate', 'overkill_rate', 'f1', 'accuracy',
                            'balanced_accuracy', 'num_examples', 'num_defective')}


# ------------------------------------------------------------------ for JSON files


def json_value(v):
  """One metric as JSON holds it: integers (confusion counts, sizes) stay
  integers, other numbers are floats, NaN and infinities become None (JSON has
  no NaN); anything else unchanged."""
  if isinstance(v, (bool, np.bool_)):
    return bool(v)
  if isinstance(v, (int, np.integer)):
    return int(v)
  if isinstance(v, (float, np.floating)) or (isinstance(v, np.ndarray) and v.ndim == 0):
    v = float(v)
    return v if math.isfinite(v) else None
  return v


def nan_to_none(d: dict) -> dict:
  """For JSON: json_value of every entry (NaN -> None, counts stay int)."""
  return {k: json_value(v) for k, v in d.items()}


def undefined_reasons(metrics: dict, prefix: str = '') -> dict:
  """{key: why} for every NaN or infinite entry of a `summary` (keys may carry
  `prefix`, e.g. 'test/'), the why read off its confusion counts: e.g.
  {'test/precision': 'no image predicted defective'}. Written beside the
  None that replaces the value in JSON."""
  def count(name):
    return metrics.get(prefix + name)
  n_def, n_good = count('num_defective'), count('num_good')
  no_def, no_good = 'no defective image in the split', 'no good image in the split'
  missing = (no_def if n_def == 0 else no_good if n_good == 0 else None)
  empty = 'empty split' if not count('num_examples') else None
  why = {
      'precision': 'no image predicted defective',
      'recall': no_def, 'recall_defective': no_def, 'escape_rate': no_def,
      'average_precision': no_def,
      'specificity': no_good, 'overkill_rate': no_good,
      'f1': 'no defective image and none predicted defective',
      'auroc': missing and f'{missing} (AUROC needs both classes)',
      'accuracy': empty, 'balanced_accuracy': empty, 'cross_entropy': empty,
  }
  out = {}
  for key, value in metrics.items():
    if not key.startswith(prefix) or isinstance(value, (bool, np.bool_)):
      continue
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
      out[key] = why.get(key[len(prefix):]) or f'not a finite number ({float(value)})'
  return out

