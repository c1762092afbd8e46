"""smsdd_jax.stats against answers computed by hand or by enumeration."""
import itertools

import numpy as np
import pytest

from smsdd_jax import stats


def _units(values):
  return {(0, fold): v for fold, v in enumerate(values)}


def _enumerated_p(diffs):
  """Two-sided signed-rank p by listing all 2^n sign patterns of the ranks."""
  d = np.asarray([x for x in diffs if x != 0], float)
  a = np.abs(d)
  ranks = np.array([np.mean([1 + j for j, y in enumerate(sorted(a)) if y == x]) for x in a])
  w = ranks[d > 0].sum()
  sums = [sum(r for r, s in zip(ranks, signs) if s)
          for signs in itertools.product((0, 1), repeat=len(d))]
  low = np.mean([s <= w + 1e-9 for s in sums])
  high = np.mean([s >= w - 1e-9 for s in sums])
  return min(1.0, 2 * min(low, high))


def test_identical_inputs_differ_by_zero_and_are_not_distinguishable():
  a = _units([0.81, 0.92, 0.47, 0.84, 0.78])
  r = stats.compare(a, dict(a))
  assert r['n'] == 5 and r['mean'] == 0.0
  assert (r['ci_low'], r['ci_high']) == (0.0, 0.0)
  assert r['p'] == 1.0 and r['verdict'] == 'not distinguishable'


@pytest.mark.parametrize('shift,word', [(0.05, 'better'), (-0.25, 'worse')])
def test_a_constant_shift_has_the_shift_as_its_interval(shift, word):
  base = _units([0.6, 0.7, 0.8, 0.9, 0.65, 0.75])
  r = stats.compare({u: v + shift for u, v in base.items()}, base)
  assert r['mean'] == pytest.approx(shift)
  assert r['ci_low'] == pytest.approx(shift) and r['ci_high'] == pytest.approx(shift)
  assert r['verdict'] == word
  # Six differences of one sign, all ranks on one side: p = 2 / 2^6.
  assert r['p'] == pytest.approx(2 / 64)
  # Five of them: the interval still excludes 0, but p = 2 / 2^5 > 0.05.
  five = dict(list(base.items())[:5])
  r5 = stats.compare({u: v + shift for u, v in five.items()}, five)
  assert r5['p'] == pytest.approx(2 / 32) and r5['verdict'] == 'not distinguishable'


def test_too_few_pairs_are_never_distinguishable():
  base = _units([0.6, 0.7])
  r = stats.compare({u: v + 0.2 for u, v in base.items()}, base)
  assert r['ci_low'] == pytest.approx(0.2) and r['verdict'] == 'not distinguishable'
  assert stats.compare({u: v + 0.2 for u, v in base.items()}, base,
                       min_pairs=2, alpha=1.0)['verdict'] == 'better'


def test_lower_is_better_flips_the_verdict():
  assert stats.verdict(0.1, 0.2, higher_is_better=False) == 'worse'
  assert stats.verdict(-0.2, -0.1, higher_is_better=False) == 'better'
  assert stats.verdict(-0.1, 0.2) == 'not distinguishable'
  assert stats.verdict(float('nan'), float('nan')) == 'not distinguishable'


def test_signed_rank_exact_p_by_hand():
  # d = 1, 2, 3, -4, 5: W+ = 1 + 2 + 3 + 5 = 11 of 15; P(W+ >= 11) = 7/32 (the
  # sign patterns whose negative ranks sum to <= 4: {}, {1}, {2}, {3}, {4},
  # {1,2}, {1,3}).
  assert stats.signed_rank_p([1, 2, 3, -4, 5]) == pytest.approx(2 * 7 / 32)
  assert stats.signed_rank_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
  assert stats.signed_rank_p([0.0, 0.0]) == 1.0


@pytest.mark.parametrize('diffs', [
    [0.3, -0.1, 0.2, 0.25, 0.05, -0.02, 0.4],
    [0.1, 0.1, -0.1, 0.2, 0.0, 0.3],          # Ties and a zero.
    [0.8 - 0.7, 0.9 - 0.8, -0.05, 0.2],        # Ties only after rounding.
    [-0.5, -0.4, -0.3, 0.1, -0.2, -0.6, 0.05, -0.7, -0.8]])
def test_signed_rank_matches_enumeration(diffs):
  rounded = np.round(diffs, 12)
  assert stats.signed_rank_p(diffs) == pytest.approx(_enumerated_p(rounded))


def test_signed_rank_matches_scipy_where_it_is_installed():
  scipy_stats = pytest.importorskip('scipy.stats')
  d = np.random.default_rng(0).normal(0.1, 0.3, 12)
  expected = scipy_stats.wilcoxon(d, method='exact').pvalue
  assert stats.signed_rank_p(d) == pytest.approx(expected)


def test_pairs_only_common_finite_units():
  a = {(0, 0): 0.9, (0, 1): 0.8, (0, 2): float('nan'), (1, 0): 0.7}
  b = {(0, 0): 0.5, (0, 1): 0.6, (0, 2): 0.5}
  units, d = stats.paired_differences(a, b)
  assert units == [(0, 0), (0, 1)]
  np.testing.assert_allclose(d, [0.4, 0.2])
  r = stats.compare({}, b)
  assert r['n'] == 0 and np.isnan(r['mean']) and r['verdict'] == 'not distinguishable'


def test_bootstrap_is_seeded_and_brackets_the_mean():
  d = np.array([0.1, -0.05, 0.2, 0.15, 0.0, 0.3])
  lo, hi = stats.bootstrap_ci(d)
  assert (lo, hi) == stats.bootstrap_ci(d)
  assert d.min() <= lo < d.mean() < hi <= d.max()


def test_compare_sweeps_pairs_two_sweeps_by_seed_and_fold(tmp_path, capsys):
  import csv  # pylint: disable=import-outside-toplevel
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parents[1] / 'launch' / 'compare_sweeps.py'
  spec = importlib.util.spec_from_file_location('compare_sweeps', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  for name, shift in (('base', 0.0), ('other', 0.1), ('third', -0.1)):
    (tmp_path / name).mkdir()
    with open(tmp_path / name / 'results.csv', 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=['variant', 'seed', 'fold', 'split', 'auroc',
                                        'balanced_accuracy'])
      w.writeheader()
      for fold in range(6):
        for split in ('val', 'test'):
          w.writerow({'variant': 'beta_a', 'seed': 0, 'fold': fold, 'split': split,
                      'auroc': 0.5 + 0.05 * fold + shift, 'balanced_accuracy': 0.6})
      w.writerow({'variant': 'floor:hog', 'seed': 0, 'fold': 0, 'split': 'test',
                  'auroc': 0.9, 'balanced_accuracy': 0.9})
  assert mod.main([f'--base={tmp_path / "base"}', f'--other={tmp_path / "other"}',
                   f'--other={tmp_path / "third"}']) == 0
  out = capsys.readouterr().out
  assert '| beta_a | auroc | 6 | +0.100 | [+0.100, +0.100] | 0.031 | better |' in out
  assert '| beta_a | auroc | 6 | -0.100 | [-0.100, -0.100] | 0.031 | worse |' in out
  assert '| beta_a | balanced_accuracy | 6 | +0.000 |' in out and 'floor' not in out
  assert f'| {tmp_path / "other"} | beta_a | 6 | 0.725 ± 0.094 | 0.600 ± 0.000 | 0 |' in out


def test_compare_sweeps_per_run_flags_a_run_at_or_below_its_folds_floor(tmp_path, capsys):
  import csv  # pylint: disable=import-outside-toplevel
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parents[1] / 'launch' / 'compare_sweeps.py'
  spec = importlib.util.spec_from_file_location('compare_sweeps', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  fields = ['variant', 'seed', 'fold', 'split', 'auroc', 'balanced_accuracy', 'health', 'step',
            'num_defective', 'num_good']
  for name, aurocs in (('base', (0.7, 0.8)), ('other', (0.9, 0.95))):
    (tmp_path / name).mkdir()
    with open(tmp_path / name / 'results.csv', 'w', newline='') as f:
      w = csv.DictWriter(f, fieldnames=fields)
      w.writeheader()
      for fold, auc in enumerate(aurocs):
        w.writerow({'variant': 'beta_a', 'seed': 0, 'fold': fold, 'split': 'test', 'auroc': auc,
                    'balanced_accuracy': 0.6, 'health': 'ok', 'step': 10 * (fold + 1),
                    'num_defective': 5, 'num_good': 3})
      for fold, auc in enumerate((0.92, 0.95)):  # Fold 0's HOG floor beats the run, fold 1's ties.
        w.writerow({'variant': 'floor:hog', 'seed': '', 'fold': fold, 'split': 'test',
                    'auroc': auc, 'balanced_accuracy': 0.5})
  assert mod.main([f'--base={tmp_path / "base"}', f'--other={tmp_path / "other"}',
                   '--per_run']) == 0
  out = capsys.readouterr().out
  assert ('| beta_a | 0 | 0 | 5 / 3 | 0.900 | 0.600 | ok | 10 | 0.700 / 0.600 | 0.920 | below hog |'
          in out)
  assert ('| beta_a | 0 | 1 | 5 / 3 | 0.950 | 0.600 | ok | 20 | 0.800 / 0.600 | 0.950 | ties hog |'
          in out)


def test_compare_sweeps_names_a_sweep_without_results(tmp_path, capsys):
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parents[1] / 'launch' / 'compare_sweeps.py'
  spec = importlib.util.spec_from_file_location('compare_sweeps', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  assert mod.main([f'--base={tmp_path / "a"}', f'--other={tmp_path / "b"}']) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'a/results.csv does not exist' in err
