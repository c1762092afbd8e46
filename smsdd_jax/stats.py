"""Paired comparison of two variants over the same units (seeds, folds).

Two variants run on the same folds with the same seeds are paired: their
difference on one unit removes what the unit itself contributes (an easy fold,
a lucky seed), which the spread of either variant alone does not. For each
variant against a baseline (beta = 0):

  paired_differences(values, baseline)  the per-unit differences, common units only
  bootstrap_ci(diffs)                   percentile bootstrap interval of their mean
  signed_rank_p(diffs)                  Wilcoxon signed-rank two-sided p, exact
  compare(values, baseline)             all of it and a verdict word

The verdict needs both: 'better' or 'worse' when the interval excludes 0 AND
the signed-rank p is at most ALPHA; 'not distinguishable' otherwise (and
always below MIN_PAIRS units). A percentile bootstrap of five differences is
too narrow to trust alone (it called a p = 0.125 gap 'better'); note that
with 5 pairs the smallest exact two-sided p is 0.0625, so one seed over 5
folds can never give a verdict: that takes 6 pairs or more.
Pure numpy, no project imports.
"""
from __future__ import annotations

import math
from typing import Hashable, Mapping

import numpy as np

BETTER, WORSE, SAME = 'better', 'worse', 'not distinguishable'
MIN_PAIRS = 3  # Fewer paired units give no verdict but SAME.
ALPHA = 0.05  # The signed-rank p a verdict needs besides the interval.


def paired_differences(values: Mapping[Hashable, float], baseline: Mapping[Hashable, float]
                       ) -> tuple[list, np.ndarray]:
  """(units, values[u] - baseline[u]) over the units both have with finite values,
  in sorted order of the unit keys."""
  units = sorted((u for u in values if u in baseline
                  and math.isfinite(values[u]) and math.isfinite(baseline[u])), key=repr)
  return units, np.asarray([values[u] - baseline[u] for u in units], np.float64)


def bootstrap_ci(diffs, *, resamples: int = 10000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
  """Percentile bootstrap interval of the mean of `diffs` (units resampled
  with replacement, seeded: the same input gives the same interval). NaN for
  no units."""
  d = np.asarray(diffs, np.float64).reshape(-1)
  if not d.size:
    return float('nan'), float('nan')
  if d.min() == d.max():  # Every resample's mean is that value (kept exact).
    return float(d[0]), float(d[0])
  rng = np.random.default_rng(seed)
  means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
  alpha = (1.0 - level) / 2.0
  lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
  return float(lo), float(hi)


def _signed_ranks(diffs: np.ndarray) -> np.ndarray:
  """Ranks of |d| (ties averaged) over the non-zero differences, carrying the
  sign. |d| is rounded to 12 decimals first, so that 0.8 - 0.7 and 0.9 - 0.8
  tie as they should."""
  a = np.round(np.abs(diffs), 12)
  order = np.argsort(a, kind='stable')
  ranks = np.empty(len(a))
  ranks[order] = np.arange(1, len(a) + 1)
  for value in np.unique(a):  # Average ranks within ties.
    tied = a == value
    ranks[tied] = ranks[tied].mean()
  return np.sign(diffs) * ranks


def signed_rank_p(diffs, *, atol: float = 1e-12) -> float:
  """Two-sided p of the Wilcoxon signed-rank test that the differences are
  symmetric about 0. Zero differences (|d| <= atol) are dropped (Wilcoxon's
  rule). Exact for any n: the null distribution of W+ (the sum of the
  positive ranks) under independent random signs, computed by convolution
  over the actual (possibly tied, half-integer) ranks. 1.0 with no non-zero
  difference."""
  d = np.asarray(diffs, np.float64).reshape(-1)
  d = d[np.abs(d) > atol]
  if not d.size:
    return 1.0
  signed = _signed_ranks(d)
  twice = np.rint(2 * np.abs(signed)).astype(np.int64)  # Averaged ranks are k/2.
  dist = np.zeros(int(twice.sum()) + 1)
  dist[0] = 1.0
  for r in twice:  # Each rank joins W+ with probability 1/2.
    shifted = np.zeros_like(dist)
    shifted[r:] = dist[:len(dist) - r]
    dist = 0.5 * (dist + shifted)
  w = int(np.rint(2 * signed[signed > 0].sum()))
  cdf_low, cdf_high = dist[:w + 1].sum(), dist[w:].sum()
  return float(min(1.0, 2.0 * min(cdf_low, cdf_high)))


def verdict(low: float, high: float, higher_is_better: bool = True) -> str:
  """'better' / 'worse' when [low, high] excludes 0, else 'not distinguishable'."""
  if not (math.isfinite(low) and math.isfinite(high)) or low <= 0.0 <= high:
    return SAME
  return BETTER if (low > 0.0) == higher_is_better else WORSE


def compare(values: Mapping[Hashable, float], baseline: Mapping[Hashable, float], *,
            higher_is_better: bool = True, resamples: int = 10000, level: float = 0.95,
            seed: int = 0, min_pairs: int = MIN_PAIRS, alpha: float = ALPHA) -> dict:
  """values vs baseline over their common units: {'n', 'units', 'mean' (of the
  differences), 'ci_low', 'ci_high', 'p', 'verdict'}. Fewer than `min_pairs`
  units are never distinguishable: the bootstrap of one or two differences
  is an interval of no width, not evidence."""
  units, d = paired_differences(values, baseline)
  low, high = bootstrap_ci(d, resamples=resamples, level=level, seed=seed)
  p = signed_rank_p(d) if d.size else float('nan')
  decided = len(units) >= min_pairs and p <= alpha
  return {'n': len(units), 'units': units,
          'mean': float(d.mean()) if d.size else float('nan'),
          'ci_low': low, 'ci_high': high, 'p': p,
          'verdict': verdict(low, high, higher_is_better) if decided else SAME}
