"""Dead or collapsed models: the detector on hand-made numbers, then a real
tiny run driven to collapse by a huge learning rate."""
import json
import logging

import numpy as np
import pytest

from smsdd_jax import evaluation
from smsdd_jax import health
from smsdd_jax import metric_writers
from smsdd_jax import train


def val_row(step, spread=0.3, frac=0.4, zero=0.0, auroc=0.8):
  return {'step': step, 'val/prob_spread': spread, 'val/predicted_defective_fraction': frac,
          'val/zero_embedding_fraction': zero, 'val/auroc': auroc}


def train_row(step, grads, loss=0.69):
  return {'step': step, 'train/l2_grads': grads, 'train/loss': loss}


def kinds(records, final=None, step=None):
  return {f.kind: (f.severity, f.since) for f in health.findings(records)} | (
      {f.kind: (f.severity, f.since) for f in health.final_findings(final, step)}
      if final else {})


def test_eval_stats_of_crafted_outputs():
  emb = np.array([[0.0, 0.0], [0.0, 0.2], [0.0, 0.0], [1.0, 0.0]])
  s = health.eval_stats([0.2, 0.7, 0.5, 0.1], emb, threshold=0.5)
  assert s['prob_spread'] == pytest.approx(0.6)
  assert s['predicted_defective_fraction'] == 0.5  # .7 and .5 (>= threshold).
  assert s['zero_embedding_fraction'] == 0.5
  constant = health.eval_stats(np.full(8, 0.31), np.zeros((8, 4)))
  assert constant == {'prob_spread': 0.0, 'predicted_defective_fraction': 0.0,
                      'zero_embedding_fraction': 1.0}


def test_a_healthy_history_is_ok():
  records = [train_row(s, g) for s, g in ((1, 1.0), (5, 2.0), (10, 0.5), (15, 0.3))]
  records += [val_row(8, auroc=0.61), val_row(16, frac=0.0, auroc=0.7), val_row(24, auroc=0.9)]
  assert health.diagnose(records) == {'status': 'ok', 'reasons': []}


def test_constant_predictions_are_collapse_since_the_step_they_began():
  # Constant at 8, recovered at 16, constant again from 24 on: "since 24".
  records = [val_row(8, spread=0.0), val_row(16), val_row(24, spread=0.0, auroc=0.5),
             val_row(32, spread=2e-7, auroc=0.5)]
  report = health.diagnose(records)
  assert report['status'] == 'collapsed'
  assert any('constant predictions on val' in r and 'since step 24' in r
             for r in report['reasons']), report
  assert health.diagnose(records[:2])['status'] == 'ok'  # Recovered: nothing now.


@pytest.mark.parametrize('flat,status', [(1, 'ok'), (2, 'suspect'), (3, 'collapsed'),
                                         (5, 'collapsed')])
def test_flat_auroc_across_evaluations(flat, status):
  # A spread above the floor: only the flat AUROC can tell.
  records = [val_row(8, auroc=0.5), val_row(16, auroc=0.75)]
  records += [val_row(24 + 8 * i, auroc=0.5 + 0.004 * (-1) ** i) for i in range(flat)]
  report = health.diagnose(records)
  assert report['status'] == status
  if flat >= 2:
    assert kinds(records)['flat_auroc'] == (status, 24)


def test_all_zero_features_are_dead_relus():
  assert kinds([val_row(8), val_row(16, zero=1.0), val_row(24, zero=1.0)])[
      'zero_features'] == ('collapsed', 16)
  assert kinds([val_row(8, zero=0.6)])['zero_features'] == ('suspect', 8)
  assert 'zero_features' not in kinds([val_row(8, zero=0.4)])


def test_every_image_one_class_in_evaluations_in_a_row_is_suspect():
  records = [val_row(8), val_row(16, frac=1.0), val_row(24, frac=1.0)]
  assert kinds(records)['one_class'] == ('suspect', 16)
  assert 'one_class' not in kinds(records[:2])  # Once is an early epoch.


def test_vanishing_gradients_relative_to_early_ones():
  grads = [1.0, 3.0, 2.0, 0.5, 2e-4, 1e-5, 2e-5, 1e-6]  # Floor: 1e-4 x 3.0.
  records = [train_row(5 * (i + 1), g) for i, g in enumerate(grads)]
  assert kinds(records)['vanishing_gradients'] == ('suspect', 25)
  report = health.diagnose(records)
  assert report['status'] == 'suspect' and 'since step 25' in report['reasons'][0]
  # Two tiny points are not yet a trend.
  assert 'vanishing_gradients' not in kinds(records[:-2])
  # A fitted batch: the gradients vanish because the loss did.
  fitted = [train_row(r['step'], r['train/l2_grads'], loss=1e-3 if i >= 4 else 0.7)
            for i, r in enumerate(records)]
  assert 'vanishing_gradients' not in kinds(fitted)


def test_vanishing_gradients_below_the_absolute_floor_from_the_start():
  records = [train_row(s, 1e-12) for s in (1, 2, 3)]
  assert kinds(records)['vanishing_gradients'] == ('suspect', 1)


def test_the_evaluated_checkpoint_is_checked_too():
  const = health.eval_stats(np.full(16, 0.9), np.ones((16, 3)))
  fine = health.eval_stats(np.linspace(0, 1, 16), np.ones((16, 3)))
  one_class = health.eval_stats(np.linspace(0.1, 0.4, 16), np.ones((16, 3)), 0.5)
  report = health.diagnose([val_row(8)], {'val': fine, 'test': const}, step=8)
  assert report['status'] == 'collapsed'
  assert report['reasons'] == ['collapsed: constant predictions on test (probability '
                               'spread 0.0e+00 < 1e-06) at the evaluated checkpoint '
                               '(step 8)']
  report = health.diagnose([val_row(8)], {'val': fine, 'test': one_class}, step=8)
  assert report['status'] == 'suspect' and 'every test image predicted good' in \
      report['reasons'][0]
  assert health.diagnose([val_row(8)], {'val': fine, 'test': fine}, 8)['status'] == 'ok'


def test_the_monitor_warns_when_a_condition_sets_in_not_at_every_step():
  monitor = health.Monitor([val_row(8)])
  assert monitor.observe(16, val_row(16, spread=0.0)) != []
  assert monitor.observe(24, val_row(24, spread=0.0)) == []  # Still the same onset.
  assert monitor.observe(32, val_row(32)) == []  # Recovered.
  again = monitor.observe(40, val_row(40, spread=0.0))
  assert [(f.kind, f.since) for f in again] == [('constant_predictions', 40)]


# ------------------------------------------------------------------ a real collapse


def test_a_run_driven_to_collapse_says_so(quick_config, tmp_path, caplog):
  """lr 1000 (clipped to global norm 10, so the loss stays finite): one step
  saturates the softmax, a couple more kill every ReLU of the tower."""
  config = quick_config
  config.batch_size = 32  # 2 steps an epoch: 3 evaluations in 6 steps.
  config.num_epochs = 3
  config.log_every_steps = 1
  config.optimizer.learning_rate = 1000.0
  workdir = tmp_path / 'collapsed'
  with caplog.at_level(logging.INFO, logger='smsdd_jax'):
    result = train.train_and_evaluate(config, str(workdir))
  ev = json.loads((workdir / 'eval.json').read_text())
  assert ev['health']['status'] == 'collapsed', ev['health']
  assert set(ev['health']) == {'status', 'reasons'}
  reasons = ' | '.join(ev['health']['reasons'])
  # Which signs show first depends on where lr 1000 throws this data; a
  # constant model on val is the one every such run ends in.
  assert 'collapsed: constant predictions on val' in reasons, reasons
  assert result['health'] == ev['health']
  # Said in the log, naming the step, and in the final summary.
  log = [r.getMessage() for r in caplog.records]
  assert any(m.startswith('WARNING health: collapsed:') and 'step' in m for m in log), log
  assert any(m.startswith('WARNING health: the run is COLLAPSED') for m in log), log
  # Nothing flagged defective: precision is null with its reason, never NaN.
  assert ev['test']['precision'] is None
  assert ev['undefined']['test/precision'] == 'no image predicted defective'
  assert any('test/precision=null (no image predicted defective)' in m for m in log)
  assert not any('=nan' in m for m in log)
  text = (workdir / 'metrics.jsonl').read_text()
  assert 'NaN' not in text and 'Infinity' not in text
  test_row = [r for r in metric_writers.read_metrics(str(workdir)) if 'test/precision' in r]
  assert test_row[0]['test/precision'] is None
  assert test_row[0]['undefined']['test/precision'] == 'no image predicted defective'
  # Where it fails: recall per defect type, from types read in the predictions' order
  # (a good image is of type 'none', a defective one never).
  with np.load(workdir / 'eval_test.npz') as z:
    assert ((z['defect_type'] == 'none') == (z['label'] == 0)).all()
  by_type = ev['recall_by_type']['test']
  assert sum(r['defective'] for r in by_type.values()) == ev['test']['num_defective']
  assert set(by_type) <= {'scratch', 'spot', 'stain', 'oil'} and by_type
  assert all(r['recall'] == 0.0 for r in by_type.values())  # Nothing flagged defective.


def counted(row, defective, good):
  return {**row, 'val/num_defective': defective, 'val/num_good': good}


def test_chance_band_is_the_mann_whitney_null_spread():
  # n1 = 79, n0 = 190: 2 * sqrt(270 / (12 * 79 * 190)) = 0.0774.
  assert health.chance_band(79, 190) == pytest.approx(0.0774, abs=1e-4)
  assert np.isnan(health.chance_band(0, 10)) and np.isnan(health.chance_band(None, 10))


@pytest.mark.parametrize('defective,good,status', [(79, 190, 'collapsed'), (25, 4, 'suspect')])
def test_a_model_ranking_at_random_in_every_evaluation_never_learned(defective, good, status):
  # Scores vary (spread 0.3) and AUROC is never exactly 0.5, so the constant
  # and flat rules stay silent; every evaluation is within the chance band.
  aurocs = (0.53, 0.51, 0.55, 0.498, 0.489, 0.446, 0.466)
  records = [counted(val_row(100 * (i + 1), auroc=a), defective, good)
             for i, a in enumerate(aurocs)]
  found = kinds(records)
  assert 'flat_auroc' not in found and 'constant_predictions' not in found
  assert found['never_learned'] == (status, None)
  assert health.diagnose(records)['status'] == status


@pytest.mark.parametrize('tail,status', [(2, 'ok'), (3, 'suspect')])
def test_auroc_falling_back_to_chance_after_learning_is_suspect(tail, status):
  records = [counted(val_row(100 * (i + 1), auroc=a), 79, 190) for i, a in enumerate(
      (0.6, 0.75, 0.8, *(0.54, 0.47, 0.52)[:tail]))]
  assert health.diagnose(records)['status'] == status
  assert 'never_learned' not in kinds(records)
  if status == 'suspect':
    assert kinds(records)['chance_auroc'] == ('suspect', 400)


def test_a_learning_model_on_a_counted_split_is_ok():
  records = [counted(val_row(100 * (i + 1), auroc=a), 79, 190)
             for i, a in enumerate((0.55, 0.62, 0.7, 0.74, 0.8))]
  assert health.diagnose(records) == {'status': 'ok', 'reasons': []}


def test_recheck_health_rewrites_a_run_the_old_checks_passed(tmp_path, capsys):
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parents[1] / 'launch' / 'recheck_health.py'
  spec = importlib.util.spec_from_file_location('recheck_health', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  run = tmp_path / 'sweep' / 'beta_a_s0_f4'
  run.mkdir(parents=True)
  (run / 'sweep.json').write_text(json.dumps({'variant': 'beta_a', 'seed': 0, 'fold': 4}))
  rows = [counted(val_row(100 * (i + 1), auroc=a), 79, 190)
          for i, a in enumerate((0.53, 0.51, 0.55, 0.49))]
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  split = {'prob_spread': 0.4, 'predicted_defective_fraction': 0.99,
           'zero_embedding_fraction': 0.0}
  (run / 'eval.json').write_text(json.dumps({'step': 100, 'val': split, 'test': split,
                                             'health': {'status': 'ok', 'reasons': []}}))
  assert mod.main([str(tmp_path / 'sweep')]) == 0  # Read-only: prints, keeps the file.
  assert '| ok | collapsed |' in capsys.readouterr().out
  assert json.loads((run / 'eval.json').read_text())['health']['status'] == 'ok'
  assert mod.main([str(tmp_path / 'sweep'), '--write']) == 0
  ev = json.loads((run / 'eval.json').read_text())
  assert ev['health']['status'] == 'collapsed' and ev['health_as_trained']['status'] == 'ok'
  capsys.readouterr()
  assert mod.main([str(tmp_path / 'sweep')]) == 0  # Written: nothing differs now.
  assert '1 finished runs checked, 0 with a different health' in capsys.readouterr().out


def _recheck_module():
  import importlib.util  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(__file__).resolve().parents[1] / 'launch' / 'recheck_health.py'
  spec = importlib.util.spec_from_file_location('recheck_health', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_recheck_health_names_each_unreadable_run_and_checks_the_rest(tmp_path, capsys):
  sweep = tmp_path / 'sweep'
  split = {'prob_spread': 0.4, 'predicted_defective_fraction': 0.5,
           'zero_embedding_fraction': 0.0, 'tp': 1, 'fp': 1, 'tn': 1, 'fn': 1,
           'num_examples': 4, 'num_defective': 2, 'num_good': 2}
  good = {'step': 100, 'checkpoint': 'best', 'threshold_rule': 'best_f1', 'threshold': 0.5,
          'val': split, 'test': split, 'health': {'status': 'ok', 'reasons': []}}
  for name, eval_text, metrics in (('beta_a_s0_f0', '{"step": 10, "val"', True),
                                   ('beta_a_s0_f1', json.dumps(good), False),
                                   ('beta_a_s0_f2', json.dumps(good), True)):
    run = sweep / name
    run.mkdir(parents=True)
    (run / 'sweep.json').write_text(json.dumps({'variant': 'beta_a', 'seed': 0}))
    (run / 'eval.json').write_text(eval_text)
    if metrics:
      (run / 'metrics.jsonl').write_text(json.dumps(val_row(100)) + '\n')
  assert _recheck_module().main([str(sweep)]) == 1
  out, err = capsys.readouterr()
  lines = err.strip().splitlines()
  assert len(lines) == 2, err
  assert 'beta_a_s0_f0' in lines[0] and 'eval record' in lines[0]
  assert str(sweep / 'beta_a_s0_f0' / 'eval.json') in lines[0]
  assert str(sweep / 'beta_a_s0_f1' / 'metrics.jsonl') in lines[1]
  assert '1 finished runs checked' in out and '2 could not be read' in out


def test_test_auroc_at_chance_or_inverted_is_suspect_while_val_ranked_well(caplog):
  # magnetic_tile-sized splits: 79 defective, 190 good, chance band +-0.077.
  fine = health.eval_stats(np.linspace(0, 1, 16), np.ones((16, 3)))
  counts = {'num_defective': 79, 'num_good': 190}
  val = {**fine, **counts, 'auroc': 0.85}
  history = [counted(val_row(100), 79, 190)]
  for test_auroc, kind, words in ((0.396, 'test_inverted_auroc', 'test ranks inverted'),
                                  (0.55, 'test_chance_auroc', 'test ranks at chance')):
    test = {**fine, **counts, 'auroc': test_auroc}
    report = health.diagnose(history, {'val': val, 'test': test}, step=100)
    assert report['status'] == 'suspect', report
    assert kinds(history, {'val': val, 'test': test}, 100)[kind] == ('suspect', None)
    assert report['reasons'] == [
        f'suspect: {words}: test AUROC {test_auroc:.3f} '
        + ('below 0.5 by more than 2 standard errors' if test_auroc < 0.5 else
           'within 2 standard errors') + ' (+-0.08)' + ('' if test_auroc < 0.5 else ' of 0.5')
        + '; val AUROC 0.850 (above its band +-0.08) at the evaluated checkpoint (step 100)']
  # msd_screens-sized test split (25 defective, 4 good: band +-0.32): its limit, said so.
  small = {**fine, 'num_defective': 25, 'num_good': 4, 'auroc': 0.75}
  report = health.diagnose(history, {'val': val, 'test': small}, 100)
  assert report['status'] == 'suspect' and report['reasons'][0].startswith(
      'suspect: this test split cannot show that the model ranks better than chance: '
      'test AUROC 0.750 within 2 standard errors (+-0.32)'), report
  # Just above the band, or no AUROC (one class in test): nothing to say.
  for test_auroc in (0.58, None):
    test = {**fine, **counts, 'auroc': test_auroc}
    assert health.diagnose(history, {'val': val, 'test': test}, 100)['status'] == 'ok'
  # And the run's last lines say it.
  test = {**fine, **counts, 'auroc': 0.396}
  with caplog.at_level(logging.INFO, logger='smsdd_jax'):
    evaluation.log_health(health.diagnose(history, {'val': val, 'test': test}, 100))
  assert any(m.startswith('WARNING health: the run is SUSPECT') and 'test ranks inverted' in m
             for m in (r.getMessage() for r in caplog.records))


def test_recheck_health_of_runs_none_finished_is_no_pass(tmp_path, capsys):
  run = tmp_path / 'sweep' / 'beta_a_s0_f0'
  run.mkdir(parents=True)
  (run / 'sweep.json').write_text(json.dumps({'variant': 'beta_a', 'seed': 0, 'fold': 0}))
  assert _recheck_module().main([str(tmp_path / 'sweep')]) == 1
  out, err = capsys.readouterr()
  assert '0 finished runs checked' in out
  assert err.strip() == f'error: no finished run (eval.json) to check in {tmp_path / "sweep"}'
