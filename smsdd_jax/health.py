"""Is the model alive? Dead or collapsed models, found in the numbers a run logs.

  eval_stats(prob, embedding, threshold)  the per-split numbers the checks read
  diagnose(records, final)                {'status': 'ok' | 'suspect' | 'collapsed',
                                           'reasons': [...]} of a run
  history_gap(records, end_step)          why records are not a whole history
  Monitor                                 the training loop's watcher: warns
                                          once when a condition sets in

`records` are metrics.jsonl rows ({'step': N, 'train/l2_grads': ..., ...}).
Conditions read over training are those holding at its END, each with the
step since which it has held without a break; `final` adds the evaluated
checkpoint's val and test outputs. 'collapsed' means the numbers of this run
say nothing about the method (a constant or dead model); 'suspect' means look
before trusting them.

Pure numpy, no project imports.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

OK, SUSPECT, COLLAPSED = 'ok', 'suspect', 'collapsed'

# Predictions: a float32 softmax resolves ~6e-8 near 0.5, and even an
# untrained tower spreads its defect probabilities over a split by far more
# than 1e-6. Below it the input no longer moves the output: a constant model.
PROB_SPREAD_FLOOR = 1e-6
# AUROC within this of 0.5 is "flat": on this project's small val splits
# (a few dozen images) it is finer than one ranked pair, so in practice it
# means exactly 0.5, the AUROC of all-tied scores.
AUROC_FLAT_TOL = 0.01
# One flat evaluation happens by chance; two in a row is suspect; three or
# more in a row, with training running in between, is a model that stopped.
FLAT_EVALS_SUSPECT = 2
FLAT_EVALS_COLLAPSED = 3
# Chance: scores that carry no information about the class give an AUROC
# of mean 0.5 and standard error sqrt((n0 + n1 + 1) / (12 n0 n1)) over n1
# defective and n0 good images (the Mann-Whitney U statistic's null
# variance). Within CHANCE_Z of them the split cannot tell the model from a
# coin. The flat rule above misses a model whose scores vary but rank at
# random (magnetic_tile at 1/4 width, fold 4: val AUROC 0.45-0.55 over all
# 10 evaluations of 269 images, SE 0.039, every test image called
# defective; health said ok). Every evaluation of a run at chance (and at
# least FLAT_EVALS_COLLAPSED) is a model that never learned; the last
# CHANCE_EVALS_SUSPECT in a row, one that stopped. Where the split is tiny
# (msd_screens' 4 good images: band 0.31) the band is wide: such a split
# cannot show that the model learned, nor that it did not (runs at val AUROC
# 0.75 there reach test AUROC 1.0), so there it is only 'suspect'; 'collapsed'
# needs a band of at most CHANCE_BAND_DECISIVE (magnetic_tile's val: 0.077).
CHANCE_Z = 2.0
CHANCE_EVALS_SUSPECT = 3
CHANCE_BAND_DECISIVE = 0.1
# Every val image decided the same way at 0.5 in one early epoch is common;
# in this many consecutive evaluations it is the "always good" model.
ONE_CLASS_EVALS_SUSPECT = 2
# Features: ReLU outputs exactly 0, so an image whose last feature map is all
# zero has no active unit left. All images so = a dead tower ('collapsed');
# half of them = most of it dead ('suspect'). A healthy tower fires some unit
# for every image.
ZERO_EMBEDDING_SUSPECT = 0.5
# Gradients: train/l2_grads below GRAD_REL_FLOOR x its early value (the max
# of the first GRAD_REF_POINTS logged steps), or below GRAD_ABS_FLOOR, for the
# last GRAD_WINDOW logged steps. Healthy SGD at a constant learning rate moves
# the norm by 10-100x (0.3-3.2 over the first 30 steps of the full VGG16), not
# 10^4x; 1e-10 is below float32 noise on weights of the init's scale.
GRAD_REL_FLOOR = 1e-4
GRAD_ABS_FLOOR = 1e-10
GRAD_REF_POINTS = 3
GRAD_WINDOW = 3
# ...unless the training loss is below this: a fitted batch's gradients
# vanish legitimately.
CONVERGED_LOSS = 1e-2


@dataclasses.dataclass(frozen=True)
class Finding:
  kind: str  # What, e.g. 'constant_predictions'; one finding per kind.
  severity: str  # SUSPECT or COLLAPSED.
  since: Optional[int]  # First step of the unbroken run; None for `final`.
  message: str

  def reason(self) -> str:
    return self.message if self.since is None else f'{self.message} since step {self.since}'


def eval_stats(prob, embedding, threshold: float = 0.5) -> dict:
  """Numbers of one split's outputs that the checks read (logged with it):

  prob_spread: max - min defect probability; predicted_defective_fraction at
  `threshold`; zero_embedding_fraction: share of images whose embedding is
  all zero (no active ReLU unit left)."""
  prob = np.asarray(prob, np.float64).reshape(-1)
  emb = np.asarray(embedding).reshape(len(prob), -1)
  if not prob.size:
    return {}
  return {'prob_spread': float(prob.max() - prob.min()),
          'predicted_defective_fraction': float(np.mean(prob >= threshold)),
          'zero_embedding_fraction': float(np.mean(~np.any(emb != 0, axis=1)))}


def _num(x) -> float:
  return float('nan') if x is None else float(x)


def _trailing(points: Sequence[Mapping], holds) -> list:
  """The last points (in order) for which `holds` is true without a break."""
  run = []
  for p in reversed(points):
    if not holds(p):
      break
    run.append(p)
  return run[::-1]


def chance_band(num_defective, num_good) -> float:
  """CHANCE_Z standard errors of the AUROC of uninformative scores on a
  split of these counts; NaN when a class is missing or the counts unknown."""
  n1, n0 = _num(num_defective), _num(num_good)
  if not (n1 > 0 and n0 > 0):
    return float('nan')
  return CHANCE_Z * float(np.sqrt((n0 + n1 + 1) / (12 * n0 * n1)))


def _chance_findings(series: Sequence[Mapping], prefix: str) -> list[Finding]:
  auroc = f'{prefix}/auroc'
  band_of = lambda r: chance_band(r.get(f'{prefix}/num_defective'), r.get(f'{prefix}/num_good'))
  run = _trailing(series, lambda r: abs(_num(r.get(auroc)) - 0.5) <= band_of(r))
  if not run:
    return []
  band = max(band_of(r) for r in run)
  evaluated = [r for r in series if r.get(auroc) is not None]
  if len(run) >= FLAT_EVALS_COLLAPSED and len(run) == len(evaluated):
    decisive = band <= CHANCE_BAND_DECISIVE
    # No 'since': it is the whole run.
    return [Finding('never_learned', COLLAPSED if decisive else SUSPECT, None,
                    ('the model never learned: ' if decisive else
                     'this split cannot show that the model learned: ')
                    + f'{prefix} AUROC at chance (within {CHANCE_Z:g} standard errors, '
                    f'+-{band:.2f}, of 0.5) in all {len(run)} evaluations')]
  if len(run) >= CHANCE_EVALS_SUSPECT:
    return [Finding('chance_auroc', SUSPECT, run[0]['step'],
                    f'{prefix} AUROC back at chance (within {CHANCE_Z:g} standard errors, '
                    f'+-{band:.2f}, of 0.5) in the last {len(run)} evaluations')]
  return []


def _split_findings(series: Sequence[Mapping], prefix: str) -> list[Finding]:
  """Eval-time conditions holding at the last of `series` (rows of one split)."""
  out = []
  spread, zero = f'{prefix}/prob_spread', f'{prefix}/zero_embedding_fraction'
  frac, auroc = f'{prefix}/predicted_defective_fraction', f'{prefix}/auroc'
  run = _trailing(series, lambda r: _num(r.get(spread)) < PROB_SPREAD_FLOOR)
  if run:
    out.append(Finding('constant_predictions', COLLAPSED, run[0]['step'],
                       f'constant predictions on {prefix} (probability spread '
                       f'{_num(run[-1][spread]):.1e} < {PROB_SPREAD_FLOOR:g})'))
  run = _trailing(series, lambda r: _num(r.get(zero)) >= ZERO_EMBEDDING_SUSPECT)
  if run:
    share = _num(run[-1][zero])
    out.append(Finding(
        'zero_features', COLLAPSED if share >= 1.0 else SUSPECT, run[0]['step'],
        f'{share:.0%} of {prefix} embeddings all zero (dead ReLUs: no unit of the '
        'last feature map fires)'))
  run = _trailing(series, lambda r: _num(r.get(frac)) in (0.0, 1.0))
  if len(run) >= ONE_CLASS_EVALS_SUSPECT and not any(f.kind == 'constant_predictions'
                                                     for f in out):
    which = 'defective' if _num(run[-1][frac]) == 1.0 else 'good'
    out.append(Finding('one_class', SUSPECT, run[0]['step'],
                       f'every {prefix} image predicted {which} in {len(run)} '
                       'evaluations in a row'))
  run = _trailing(series, lambda r: abs(_num(r.get(auroc)) - 0.5) <= AUROC_FLAT_TOL)
  if len(run) >= FLAT_EVALS_SUSPECT:
    out.append(Finding(
        'flat_auroc', COLLAPSED if len(run) >= FLAT_EVALS_COLLAPSED else SUSPECT,
        run[0]['step'], f'{prefix} AUROC flat at 0.5 (within {AUROC_FLAT_TOL:g}) '
        f'in {len(run)} evaluations in a row'))
  if not any(f.kind == 'flat_auroc' for f in out):  # Flat is the stronger statement.
    out += _chance_findings(series, prefix)
  return out


def _gradient_findings(train: Sequence[Mapping]) -> list[Finding]:
  if not train:
    return []
  ref = max(_num(r['train/l2_grads']) for r in train[:GRAD_REF_POINTS])
  floor = max(GRAD_ABS_FLOOR, GRAD_REL_FLOOR * ref)
  run = _trailing(train, lambda r: (_num(r['train/l2_grads']) < floor and
                                    not _num(r.get('train/loss')) < CONVERGED_LOSS))
  if len(run) < GRAD_WINDOW:
    return []
  return [Finding('vanishing_gradients', SUSPECT, run[0]['step'],
                  f'vanishing gradients (train/l2_grads {_num(run[-1]["train/l2_grads"]):.1e}'
                  f' < {floor:.1e}: {GRAD_REL_FLOOR:g} x early {ref:.1e} or '
                  f'{GRAD_ABS_FLOOR:g}) while train/loss stays above {CONVERGED_LOSS:g}')]


def findings(records: Iterable[Mapping]) -> list[Finding]:
  """Every condition holding at the end of `records` (metrics.jsonl rows)."""
  records = sorted(records, key=lambda r: r['step'])
  val = [r for r in records if 'val/prob_spread' in r or 'val/auroc' in r]
  train = [r for r in records if 'train/l2_grads' in r]
  return _split_findings(val, 'val') + _gradient_findings(train)


def _auroc_and_band(stats: Mapping) -> tuple[float, float]:
  return _num(stats.get('auroc')), chance_band(stats.get('num_defective'),
                                               stats.get('num_good'))


def _test_ranking_findings(final: Mapping[str, Mapping], step: int) -> list[Finding]:
  """Test AUROC within the chance band of 0.5, or below it, at the evaluated
  checkpoint. The other checks read validation, where checkpoint and
  threshold were chosen: a magnetic_tile :learn,quick run at test AUROC 0.396
  and test escape 1.000 was "ok". The val AUROC is given beside: above its
  band, the model ranked val but not test."""
  auc, band = _auroc_and_band(final.get('test') or {})
  if not auc <= 0.5 + band:  # Above chance, or unknown (NaN): nothing to say.
    return []
  where = f'at the evaluated checkpoint (step {step})'
  vauc, vband = _auroc_and_band(final.get('val') or {})
  val = ('' if math.isnan(vauc) else
         f'; val AUROC {vauc:.3f} ({"above" if vauc > 0.5 + vband else "within"} '
         f'its band +-{vband:.2f})')
  if auc < 0.5 - band:
    return [Finding('test_inverted_auroc', SUSPECT, None,
                    f'test ranks inverted: test AUROC {auc:.3f} below 0.5 by more than '
                    f'{CHANCE_Z:g} standard errors (+-{band:.2f}){val} {where}')]
  # A wide band (msd_screens' 4 good test images: +-0.32) is the split's
  # limit, not proof of a model at chance: said so, as for val.
  what = ('test ranks at chance' if band <= CHANCE_BAND_DECISIVE else
          'this test split cannot show that the model ranks better than chance')
  return [Finding('test_chance_auroc', SUSPECT, None,
                  f'{what}: test AUROC {auc:.3f} within {CHANCE_Z:g} '
                  f'standard errors (+-{band:.2f}) of 0.5{val} {where}')]


def final_findings(final: Mapping[str, Mapping], step: int) -> list[Finding]:
  """Conditions of the evaluated checkpoint: `final` = {'val': {...}, 'test':
  {...}}, each the summary and eval_stats of that split at the chosen
  threshold."""
  out = []
  for split, stats in final.items():
    row = {'step': step, **{f'{split}/{k}': v for k, v in stats.items()}}
    for f in _split_findings([row], split):  # One point: constant or dead only.
      out.append(dataclasses.replace(
          f, kind=f'{split}_{f.kind}', since=None,
          message=f'{f.message} at the evaluated checkpoint (step {step})'))
    frac = _num(stats.get('predicted_defective_fraction'))
    if frac in (0.0, 1.0) and not any(f.kind == f'{split}_constant_predictions' for f in out):
      which = 'defective' if frac == 1.0 else 'good'
      out.append(Finding(f'{split}_one_class', SUSPECT, None,
                         f'every {split} image predicted {which} at the chosen '
                         f'threshold (evaluated checkpoint, step {step})'))
  if not any(f.kind == 'test_constant_predictions' for f in out):  # Constant says more.
    out += _test_ranking_findings(final, step)
  return out


def report(found: Sequence[Finding]) -> dict:
  """{'status': 'ok' | 'suspect' | 'collapsed', 'reasons': [...]}, worst first."""
  order = {COLLAPSED: 0, SUSPECT: 1}
  found = sorted(found, key=lambda f: order[f.severity])
  status = found[0].severity if found else OK
  return {'status': status, 'reasons': [f'{f.severity}: {f.reason()}' for f in found]}


def history_gap(records: Sequence[Mapping], end_step: int) -> Optional[str]:
  """Why `records` cannot be the whole history of a run that trained to
  `end_step` (an emptied or cut metrics.jsonl), else None. The checks read
  the conditions at the END of the history: on part of it they would find
  fewer, so a missing history is "cannot check", never "fewer reasons"."""
  steps = [r['step'] for r in records
           if isinstance(r, Mapping) and isinstance(r.get('step'), (int, float))]
  if not steps:
    return 'it holds no records'
  if max(steps) < end_step:
    return (f'its last record is at step {max(steps):g}, before step {end_step} that the '
            'run reached: it was cut short')
  return None


def diagnose(records: Iterable[Mapping], final: Optional[Mapping] = None,
             step: Optional[int] = None) -> dict:
  """report() of the training history plus, if given, the evaluated
  checkpoint's outputs (`final`, at `step`)."""
  found = findings(records)
  if final:
    found += final_findings(final, step)
  return report(found)


class Monitor:
  """Watches the rows the loop writes; `observe` returns the findings that
  are new (a condition that sets in, or sets in again after recovering), for
  the loop to log as warnings."""

  def __init__(self, records: Iterable[Mapping] = ()):
    self.records = [dict(r) for r in records]
    self._current: dict[str, tuple] = {}

  def observe(self, step: int, scalars: Mapping) -> list[Finding]:
    self.records.append({'step': int(step), **scalars})
    now = findings(self.records)
    new = [f for f in now if self._current.get(f.kind) != (f.since, f.severity)]
    self._current = {f.kind: (f.since, f.severity) for f in now}
    return new

  def diagnose(self, final: Optional[Mapping] = None, step: Optional[int] = None) -> dict:
    return diagnose(self.records, final, step)

