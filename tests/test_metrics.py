"""smsdd_jax.metrics on hand-made cases, each number worked out by hand."""
import json
import math
import warnings

import numpy as np
import pytest

from configs import default
from smsdd_jax import input_pipeline
from smsdd_jax import metrics
from smsdd_jax import evaluation

# Five items: scores sorted .1 g, .2 g, .4 d, .6 g, .9 d (g good, d defective).
LABELS = np.array([0, 0, 0, 1, 1])
PROB = np.array([0.1, 0.6, 0.2, 0.9, 0.4])


def test_confusion_matrix_layout_rows_true_columns_decided():
  labels = np.array([0, 0, 0, 1, 1, 1, 1])
  pred = np.array([0, 1, 1, 0, 1, 1, 1])
  np.testing.assert_array_equal(metrics.confusion_matrix(labels, pred),
                                [[1, 2], [1, 3]])  # [[TN, FP], [FN, TP]]


def test_summary_at_one_half():
  s = metrics.summary(LABELS, PROB, 0.5)  # Flags .6 (good) and .9 (defective).
  assert (s['tp'], s['fp'], s['tn'], s['fn']) == (1, 1, 2, 1)
  assert s['accuracy'] == pytest.approx(3 / 5)
  assert s['precision'] == pytest.approx(1 / 2)
  assert s['recall'] == s['recall_defective'] == pytest.approx(1 / 2)
  assert s['specificity'] == pytest.approx(2 / 3)
  assert s['f1'] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))
  assert s['balanced_accuracy'] == pytest.approx((1 / 2 + 2 / 3) / 2)
  assert s['escape_rate'] == pytest.approx(1 / 2)
  assert s['overkill_rate'] == pytest.approx(1 / 3)
  # .9 beats all 3 good, .4 beats 2 of 3: 5 of 6 pairs ranked right.
  assert s['auroc'] == pytest.approx(5 / 6)
  # Ranked .9 d, .6 g, .4 d, ...: precision 1 at recall 1/2, 2/3 at recall 1.
  assert s['average_precision'] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
  assert (s['num_examples'], s['num_defective'], s['num_good']) == (5, 2, 3)
  assert s['threshold'] == 0.5


def test_the_prediction_is_defective_at_the_threshold_itself():
  s = metrics.summary([0, 1], [0.5, 0.5], 0.5)
  assert (s['tp'], s['fp']) == (1, 1)


@pytest.mark.parametrize('labels,scores,expected', [
    ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),  # Perfect ranking.
    ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0),  # Inverted.
    ([0, 0, 1, 1], [0.5, 0.5, 0.5, 0.5], 0.5),  # All tied.
    ([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9], 3.5 / 4),  # One tied pair counts 1/2.
    ([1, 0, 0, 0], [0.3, 0.1, 0.3, 0.9], (1 + 0.5 + 0) / 3),
])
def test_auroc(labels, scores, expected):
  assert metrics.auroc(labels, scores) == pytest.approx(expected)


def test_auroc_is_the_area_under_roc_curve():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  scores = np.round(rng.random(200) + 0.3 * labels, 1)  # Many ties.
  fpr, tpr, thresholds = metrics.roc_curve(labels, scores)
  area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # Trapezoids.
  assert metrics.auroc(labels, scores) == pytest.approx(area)
  assert thresholds[0] == np.inf and (fpr[0], tpr[0]) == (0, 0)
  assert (fpr[-1], tpr[-1]) == (1, 1)


def test_roc_curve_points():
  fpr, tpr, thresholds = metrics.roc_curve(LABELS, PROB)
  np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.6, 0.4, 0.2, 0.1])
  np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
  np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1, 1])


@pytest.mark.parametrize('labels,scores,expected', [
    ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.5 * 1 + 0.5 * 2 / 3),  # scikit-learn's example.
    ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0),
    ([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9], 0.5 * 1 / 3 + 0.5 * 2 / 4),
    ([1, 0], [0.5, 0.5], 0.5),  # A tie is one threshold: precision 1/2 at recall 1.
])
def test_average_precision(labels, scores, expected):
  assert metrics.average_precision(labels, scores) == pytest.approx(expected)


def test_always_good_scores_the_share_of_good_and_nothing_else():
  labels = np.array([0] * 86 + [1] * 14)
  s = metrics.summary(labels, np.zeros(100), 0.5)
  assert s['accuracy'] == pytest.approx(0.86)
  assert s['balanced_accuracy'] == pytest.approx(0.5)
  assert s['escape_rate'] == 1.0 and s['overkill_rate'] == 0.0
  assert s['f1'] == 0.0  # 2TP / (2TP + FP + FN) = 0 / 14.
  assert math.isnan(s['precision'])  # Nothing flagged: undefined, not 0.
  assert s['auroc'] == pytest.approx(0.5)


# ------------------------------------------------------------------ threshold rules


def test_candidate_thresholds_are_zero_and_midpoints():
  np.testing.assert_allclose(metrics.candidate_thresholds([0.9, 0.1, 0.4, 0.4]),
                             [0.0, 0.25, 0.65])


def test_argmax_rule_is_one_half_whatever_the_data():
  assert metrics.choose_threshold(LABELS, PROB, 'argmax') == 0.5
  assert metrics.choose_threshold([0, 0], [0.7, 0.8], 'argmax') == 0.5


def test_best_f1_rule():
  # Candidates 0, .15, .3, .5, .75 flag 5, 4, 3, 2, 1 items;
  # F1 = 4/7, 4/6, 4/5, 2/4, 2/3: the best is .3 (flags .4, .6, .9).
  t = metrics.choose_threshold(LABELS, PROB, 'best_f1')
  assert t == pytest.approx(0.3)
  assert metrics.summary(LABELS, PROB, t)['f1'] == pytest.approx(0.8)


def test_best_f1_ties_go_to_the_higher_threshold():
  labels, prob = [1, 0, 0, 1], [0.9, 0.8, 0.7, 0.6]
  # F1 at t = .85: 2/3 (tp 1, fn 1); .75: 2/4; .65: 2/5; 0 (all): 4/6 = 2/3.
  # The two at 2/3 tie: the higher threshold (fewer rejects) wins.
  assert metrics.choose_threshold(labels, prob, 'best_f1') == pytest.approx(0.85)


@pytest.mark.parametrize('target,expected', [
    (0.0, 0.3),   # No escape allowed: .3 is the highest threshold catching both.
    (0.5, 0.75),  # One escape allowed: flag only .9, overkill 0.
    (0.49, 0.3),
])
def test_max_escape_rule(target, expected):
  t = metrics.choose_threshold(LABELS, PROB, 'max_escape', max_escape_rate=target)
  assert t == pytest.approx(expected)
  assert metrics.summary(LABELS, PROB, t)['escape_rate'] <= target


def test_max_escape_prefers_fewer_escapes_at_equal_overkill():
  labels, prob = [0, 1, 0, 1, 1, 1], [0.1, 0.6, 0.65, 0.7, 0.8, 0.9]
  # Thresholds .675, .75, .85 all reject no good item, escaping 1, 2, 3 of
  # the 4 defective; with up to 3 escapes allowed the rule takes .675.
  t = metrics.choose_threshold(labels, prob, 'max_escape', max_escape_rate=0.75)
  assert t == pytest.approx(0.675)


def test_threshold_chosen_on_val_is_applied_unchanged_to_test():
  t = metrics.choose_threshold(LABELS, PROB, 'best_f1')  # 0.3
  test_labels, test_prob = np.array([0, 1, 1, 0]), np.array([0.31, 0.29, 0.8, 0.1])
  s = metrics.summary(test_labels, test_prob, t)
  assert (s['tp'], s['fp'], s['fn'], s['tn']) == (1, 1, 1, 1)
  assert s['threshold'] == pytest.approx(0.3)


# ------------------------------------------------------------------ a class missing


def test_choosing_a_threshold_without_defective_examples_is_refused():
  for rule in ('best_f1', 'max_escape'):
    with pytest.raises(ValueError, match="no defective examples.*'argmax'"):
      metrics.choose_threshold([0, 0, 0], [0.1, 0.7, 0.3], rule)
  with pytest.raises(ValueError, match='no good examples'):
    metrics.choose_threshold([1, 1], [0.1, 0.7], 'best_f1')


def test_summary_without_defective_examples_warns_and_gives_nan():
  with pytest.warns(metrics.MissingClassWarning, match='no defective'):
    s = metrics.summary([0, 0, 0, 0], [0.1, 0.7, 0.3, 0.2], 0.5)
  for key in ('recall', 'escape_rate', 'auroc', 'average_precision'):
    assert math.isnan(s[key]), key
  assert s['overkill_rate'] == pytest.approx(0.25)
  assert s['accuracy'] == pytest.approx(0.75)
  assert s['balanced_accuracy'] == pytest.approx(0.75)  # The one class present.
  assert s['f1'] == 0.0  # An FP and no TP.
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    metrics.summary(LABELS, PROB)  # Both classes: no warning.


def test_training_refuses_a_data_driven_rule_on_a_val_split_lacking_a_class(monkeypatch):
  """Checked when the run is set up, before any step is compiled."""
  config = default.get_config('quick')
  only_good = input_pipeline.SplitInfo(num_examples=16, num_good=16, num_defective=0)
  monkeypatch.setattr(input_pipeline, 'split_info', lambda builder, split: only_good)
  splits = {'val': 'validation', 'test': 'test'}
  config.eval.threshold_rule = 'best_f1'
  with pytest.raises(ValueError, match="validation.*no defective.*threshold_rule='best_f1'"):
    evaluation.check_eval_splits(None, splits, config.eval)
  config.eval.threshold_rule = 'argmax'
  evaluation.check_eval_splits(None, splits, config.eval)  # A warning only.


@pytest.mark.parametrize('labels,scores,match', [
    ([0, 2], [0.1, 0.2], 'labels must be 0'),
    ([0, 1], [0.1, float('nan')], 'NaN'),
    ([0, 1, 1], [0.1, 0.2], '3 labels but 2 scores'),
])
def test_bad_input_is_refused(labels, scores, match):
  with pytest.raises(ValueError, match=match):
    metrics.summary(labels, scores)


@pytest.mark.parametrize('rule,target,match', [
    ('median', 0.05, 'threshold rule'), ('max_escape', 1.0, 'max_escape_rate')])
def test_bad_rule_is_refused(rule, target, match):
  with pytest.raises(ValueError, match=match):
    metrics.choose_threshold(LABELS, PROB, rule, max_escape_rate=target)


# ------------------------------------------------------------------ undefined, for files


def test_undefined_metrics_get_their_reason():
  always_good = metrics.summary([0] * 6 + [1] * 2, np.zeros(8), 0.5)
  assert metrics.undefined_reasons(always_good) == {
      'precision': 'no image predicted defective'}
  with pytest.warns(metrics.MissingClassWarning):
    only_good = metrics.summary([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
  assert metrics.undefined_reasons(only_good) == {
      'precision': 'no image predicted defective',
      'recall': 'no defective image in the split',
      'recall_defective': 'no defective image in the split',
      'escape_rate': 'no defective image in the split',
      'average_precision': 'no defective image in the split',
      'f1': 'no defective image and none predicted defective',
      'auroc': 'no defective image in the split (AUROC needs both classes)'}
  with pytest.warns(metrics.MissingClassWarning):
    only_defective = metrics.summary([1, 1], [0.7, 0.2], 0.5)
  prefixed = {f'test/{k}': v for k, v in only_defective.items()}
  assert metrics.undefined_reasons(prefixed, 'test/') == {
      'test/specificity': 'no good image in the split',
      'test/overkill_rate': 'no good image in the split',
      'test/auroc': 'no good image in the split (AUROC needs both classes)'}
  assert metrics.undefined_reasons(metrics.summary(LABELS, PROB)) == {}


def test_json_values_counts_stay_integers_nan_becomes_null():
  s = metrics.nan_to_none(metrics.summary([0] * 6 + [1] * 2, np.zeros(8), 0.5))
  assert s['precision'] is None
  for key in ('tp', 'fp', 'tn', 'fn', 'num_examples', 'num_defective', 'num_good'):
    assert type(s[key]) is int, key
  assert json.loads(json.dumps(s))['tn'] == 6
  assert metrics.json_value(np.int64(3)) == 3 and type(metrics.json_value(np.int64(3))) is int
  assert metrics.json_value(np.float32(0.5)) == 0.5
  assert metrics.json_value(float('inf')) is None and metrics.json_value(np.nan) is None


def test_recall_by_type_counts_each_defect_type_apart():
  # crack: .9 found, .3 missed; fray: .5 found (at the threshold itself);
  # 'none' belongs to good images only: no recall of it.
  labels = [0, 1, 1, 0, 1]
  prob = [0.8, 0.9, 0.3, 0.1, 0.5]
  types = ['none', 'crack', 'crack', 'none', 'fray']
  assert metrics.recall_by_type(labels, prob, types, 0.5) == {
      'crack': {'defective': 2, 'detected': 1, 'recall': 0.5},
      'fray': {'defective': 1, 'detected': 1, 'recall': 1.0}}
  assert metrics.recall_by_type(labels, prob, types, 0.95)['fray']['recall'] == 0.0
  with pytest.raises(ValueError, match='5 labels but 4 defect types'):
    metrics.recall_by_type(labels, prob, types[:4], 0.5)
