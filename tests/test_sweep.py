"""launch/sweep.py end to end on a tiny setting, its planning and resuming
rules, and the tables and figures of smsdd_jax.report."""
import csv
import importlib.util
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from smsdd_jax import inference
from smsdd_jax import metrics
from smsdd_jax import report

REPO = pathlib.Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _load_sweep_module():
  spec = importlib.util.spec_from_file_location('sweep', REPO / 'launch' / 'sweep.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


sweep = _load_sweep_module()


def _run(*args, timeout=300):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, check=False)


def _tiny_args(out, data_dir, *extra):
  return ['launch/sweep.py', f'--out={out}', '--configs=beta_a,beta_c', '--seeds=0',
          '--quick', '--workers=2', '--override=num_epochs=1', '--override=batch_size=32',
          '--override=eval.threshold_rule=best_f1', f'--data_dir={data_dir}', *extra]


@pytest.fixture(scope='module')
def tiny_sweep(tmp_path_factory, data_dir):
  """2 variants x 1 seed, 2 training steps each, run once for this module."""
  out = tmp_path_factory.mktemp('sweep') / 'out'
  proc = _run(*_tiny_args(out, data_dir))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return out, proc.stdout


def test_sweep_writes_one_row_per_variant_seed_and_split(tiny_sweep):
  out, stdout = tiny_sweep
  assert 'done beta_a_s0' in stdout and 'done beta_c_s0' in stdout
  with open(out / 'results.csv', newline='') as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == report.CSV_COLUMNS
    rows = list(reader)
  assert sorted((r['variant'], r['split']) for r in rows) == [
      ('beta_a', 'test'), ('beta_a', 'val'), ('beta_c', 'test'), ('beta_c', 'val')]
  for row in rows:
    assert float(row['beta']) == {'beta_a': 0.0, 'beta_c': 0.01}[row['variant']]
    assert row['seed'] == '0' and row['fold'] == ''
    assert row['threshold_rule'] == 'best_f1' and row['checkpoint'] == 'best'
    assert int(row['num_examples']) == 16 and int(row['num_defective']) == 4
    assert float(row['all_good_accuracy']) == pytest.approx(12 / 16)
    for key in ('accuracy', 'balanced_accuracy', 'f1', 'auroc', 'escape_rate',
                'overkill_rate'):
      assert 0.0 <= float(row[key]) <= 1.0, (key, row[key])
  for variant in ('beta_a', 'beta_c'):  # One threshold, chosen on val, used on test.
    val, test = (next(r for r in rows if r['variant'] == variant and r['split'] == s)
                 for s in ('val', 'test'))
    assert val['threshold'] == test['threshold']


def test_each_run_keeps_its_log_threshold_and_test_outputs(tiny_sweep):
  out, _ = tiny_sweep
  for run in ('beta_a_s0', 'beta_c_s0'):
    workdir = out / run
    assert 'smsdd_jax.main' in (workdir / 'log.txt').read_text()
    ev = json.loads((workdir / 'eval.json').read_text())
    threshold = json.loads((workdir / 'threshold.json').read_text())
    assert threshold['threshold'] == ev['threshold']
    assert threshold['threshold_rule'] == 'best_f1'
    # predict.py's Predictor decides with it.
    assert inference.resolve_run(str(workdir)).threshold == pytest.approx(ev['threshold'])
    with np.load(workdir / 'eval_test.npz') as z:
      prob, label, embedding = z['prob'], z['label'], z['embedding']
    assert prob.shape == label.shape == (16,) and embedding.shape[0] == 16
    assert embedding.ndim == 2 and np.all(np.isfinite(embedding))
    again = metrics.summary(label, prob, ev['threshold'])  # eval.json is these arrays.
    assert again['accuracy'] == pytest.approx(ev['test']['accuracy'])
    assert again['auroc'] == pytest.approx(ev['test']['auroc'])
    with np.load(workdir / 'eval_val.npz') as z:
      assert ev['threshold'] == pytest.approx(
          metrics.choose_threshold(z['label'], z['prob'], 'best_f1'))
    records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().split('\n')
               if line]
    keys = set().union(*records)
    for key in ('val/accuracy', 'val/f1', 'val/auroc', 'test/accuracy', 'test/f1',
                'test/auroc', 'test/escape_rate', 'test/overkill_rate', 'test/threshold'):
      assert key in keys, key


def test_results_md_sits_beside_the_paper(tiny_sweep):
  out, _ = tiny_sweep
  text = (out / 'results.md').read_text()
  assert 'paper val' in text and 'paper test' in text
  assert '| beta_a | 0.0 | 1 |' in text and '| 85 | 83 |' in text
  assert '| beta_c | 0.01 | 1 |' in text and '| 96 | 93 |' in text
  assert '| beta_c | test |' in text and 'escape' in text and 'AUROC' in text
  assert 'best_f1' in text


def test_a_second_invocation_reruns_nothing(tiny_sweep, data_dir):
  out, _ = tiny_sweep
  watched = [out / run / name for run in ('beta_a_s0', 'beta_c_s0')
             for name in ('eval.json', 'log.txt', 'metrics.jsonl')]
  before = {p: p.stat().st_mtime_ns for p in watched}
  proc = _run(*_tiny_args(out, data_dir))
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'skip beta_a_s0: finished' in proc.stdout
  assert 'skip beta_c_s0: finished' in proc.stdout
  assert '0 to run' in proc.stdout and 'done ' not in proc.stdout
  assert {p: p.stat().st_mtime_ns for p in watched} == before
  assert len(report.read_csv(str(out / 'results.csv'))) == 4


def test_other_arguments_on_the_same_out_are_refused(tiny_sweep, data_dir):
  out, _ = tiny_sweep
  proc = _run(*_tiny_args(out, data_dir, '--override=loss.margin=2'))
  assert proc.returncode == 2
  assert 'other arguments' in proc.stderr and 'beta_a_s0' in proc.stderr


def test_report_writes_the_figures(tiny_sweep, tmp_path):
  out, _ = tiny_sweep
  proc = _run('-m', 'smsdd_jax.report', f'--sweep={out}', f'--out={tmp_path / "fig"}',
              timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  for name in ('loss_curves.png', 'roc_curves.png', 'embeddings.png'):
    path = tmp_path / 'fig' / name
    assert str(path) in proc.stdout
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5000, name


# ------------------------------------------------------------------ no training


def _args(*argv):
  return sweep.parser().parse_args(['--out=unused', *argv])


def test_plan_seeds_times_folds():
  runs = sweep.plan(_args('--configs=beta_a,beta_b', '--kfold=3', '--quick',
                          '--override=num_epochs=2'))
  assert [r['run'] for r in runs] == [f'beta_{v}_s0_f{i}' for v in 'ab' for i in range(3)]
  assert runs[1]['args'] == ['--config=configs/beta_a.py:quick', '--config.seed=0',
                             '--config.data.kfold=3', '--config.data.fold=1',
                             '--config.num_epochs=2']
  runs = sweep.plan(_args())
  assert len(runs) == 15 and runs[-1]['run'] == 'beta_e_s2'  # 5 variants x seeds 0,1,2.


@pytest.mark.parametrize('argv,match', [
    (['--override=seed=3'], '--seeds'), (['--override=num_epochs'], 'KEY=VALUE'),
    (['--configs=beta_z'], 'no config file'), (['--workers=0'], 'workers')])
def test_plan_refuses_bad_arguments(argv, match):
  with pytest.raises(sweep.UsageError, match=match):
    sweep.plan(_args(*argv))


def test_run_states(tmp_path):
  run = sweep.plan(_args('--configs=beta_a', '--seeds=0'))[0]
  workdir = tmp_path / run['run']
  assert sweep.state_of(str(tmp_path), run) == 'new'
  workdir.mkdir()
  (workdir / 'log.txt').write_text('x')
  with pytest.raises(sweep.UsageError, match='not made by this launcher'):
    sweep.state_of(str(tmp_path), run)
  (workdir / 'sweep.json').write_text(json.dumps({'args': run['args']}))
  assert sweep.state_of(str(tmp_path), run) == 'partial'  # Rerun: main.py resumes.
  (workdir / 'eval.json').write_text('{}')
  assert sweep.state_of(str(tmp_path), run) == 'finished'
  (workdir / 'sweep.json').write_text(json.dumps({'args': run['args'][:1]}))
  with pytest.raises(sweep.UsageError, match='other arguments'):
    sweep.state_of(str(tmp_path), run)


def _row(variant, split, seed, **m):
  base = {k: 0.5 for k in report.METRICS}
  base.update(m)
  return {'variant': variant, 'beta': 0.1, 'seed': seed, 'split': split,
          'threshold_rule': 'argmax', 'checkpoint': 'best',
          'all_good_accuracy': 0.86, **base}


def test_markdown_mean_and_std_and_nan():
  table = [_row('beta_b', s, seed, accuracy=acc, auroc=auc)
           for seed, acc, auc in ((0, 0.7, 0.8), (1, 0.8, math.nan)) for s in ('val', 'test')]
  text = report.markdown(table, {'configs': 'beta_b'}, missing=['beta_b_s2'])
  # Accuracy: mean 75, sample std 7.07; AUROC: one finite value of two.
  assert '| beta_b | 0.1 | 2 | 75.0 ± 7.1 | 75.0 ± 7.1 | 79 | 74 | 86.0 ± 0.0 |' in text
  assert '0.800 (n=1/2)' in text
  assert 'Not finished (left out above): beta_b_s2' in text


def test_mean_std_formats():
  assert report.mean_std([0.85]) == '85.0'
  assert report.mean_std([]) == '–'
  assert report.mean_std([0.5, 0.7], scale=1.0, digits=2) == '0.60 ± 0.14'


def test_pca_2d_finds_the_main_direction():
  rng = np.random.default_rng(0)
  x = np.c_[rng.normal(0, 10, 50), rng.normal(0, 1, 50), np.zeros(50)]
  proj, share = report.pca_2d(x)
  assert proj.shape == (50, 2) and share[0] > 0.9
  np.testing.assert_allclose(np.abs(proj[:, 0]), np.abs(x[:, 0] - x[:, 0].mean()), atol=0.5)
