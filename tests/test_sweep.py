"""launch/sweep.py end to end on a tiny setting, its planning and resuming
rules, and the tables and figures of smsdd_jax.report."""
import csv
import importlib.util
import json
import os
import math
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from smsdd_jax import figures
from smsdd_jax import inference
from smsdd_jax import metrics
from smsdd_jax import report
from smsdd_jax import rundir
from smsdd_jax import sweep_runs

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
    wall = [json.loads(line) for line in (workdir / sweep.WALL).read_text().splitlines()]
    assert wall[-1]['exit'] == 0 and wall[-1]['seconds'] > 0 and wall[-1]['cpu']
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


def _alive(pid):
  """Whether process `pid` still runs (a zombie, ended but not yet reaped
  by its new parent, does not)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:
    with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return True


def test_one_launcher_per_out_and_its_runs_end_with_it(tmp_path, data_dir):
  """Two launchers on one --out, started 3 s apart, trained the same run at
  once; a kill -9 of the launcher left its run training on its own."""
  out = tmp_path / 'out'
  args = ['launch/sweep.py', f'--out={out}', '--configs=beta_a', '--seeds=0', '--quick',
          '--override=num_epochs=100', f'--data_dir={data_dir}']
  workdir = out / 'beta_a_s0'
  first = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 300
    while not rundir.owner(str(workdir)):  # The run has started and written its pid.
      assert first.poll() is None and time.time() < deadline, 'the run never started'
      time.sleep(0.2)
    child = int(rundir.owner(str(workdir)))
    second = _run(*args, timeout=60)
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stdout == '' and second.stderr == (
        f'error: sweep directory {out} is in use by process {first.pid} ({out}/.lock): '
        'wait for it to end, or pass another --out\n')
    run = sweep.plan(sweep.parser().parse_args(args[1:]))[0]
    assert sweep.state_of(str(out), run) == 'running'
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  deadline = time.time() + 30
  while _alive(child) or rundir.owner(str(workdir)) is not None:
    assert time.time() < deadline, f'run process {child} outlived its launcher by 30 s'
    time.sleep(0.2)
  assert f'the launcher (process {first.pid}) ended' in (workdir / 'log.txt').read_text()
  assert rundir.owner(str(out)) is None  # The next launcher may go on.


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
  # Variants innermost: a sweep stopped early holds complete paired sets.
  assert [r['run'] for r in runs] == [f'beta_{v}_s0_f{i}' for i in range(3) for v in 'ab']
  assert runs[2]['args'] == ['--config=configs/beta_a.py:quick', '--config.seed=0',
                             '--config.data.kfold=3', '--config.data.fold=1',
                             '--config.num_epochs=2']
  runs = sweep.plan(_args())
  assert len(runs) == 15 and runs[-1]['run'] == 'beta_e_s2'  # 5 variants x seeds 0,1,2.
  assert [r['run'] for r in runs[:2]] == ['beta_a_s0', 'beta_b_s0']


def test_plan_some_folds():
  runs = sweep.plan(_args('--configs=beta_a', '--kfold=5', '--folds=1,0,1'))
  assert [r['run'] for r in runs] == ['beta_a_s0_f0', 'beta_a_s0_f1']
  assert runs[1]['args'][2:4] == ['--config.data.kfold=5', '--config.data.fold=1']


@pytest.mark.parametrize('argv,match', [
    (['--folds=0'], '--folds'), (['--kfold=5', '--folds=5'], '--folds'),
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
  with rundir.Claim(str(workdir)):  # As the process training it holds it.
    assert sweep.state_of(str(tmp_path), run) == 'running'
  (workdir / 'eval.json').write_text('{}')
  assert sweep.state_of(str(tmp_path), run) == 'finished'
  (workdir / 'sweep.json').write_text(json.dumps({'args': run['args'][:1]}))
  with pytest.raises(sweep.UsageError, match='other arguments'):
    sweep.state_of(str(tmp_path), run)


def test_the_runs_share_a_compilation_cache_unless_it_is_turned_off(monkeypatch, tmp_path):
  monkeypatch.delenv(sweep.COMPILE_CACHE_ENV, raising=False)
  assert sweep.parser().parse_args(['--out=x']).compile_cache == 'default'
  assert sweep.child_env(1, 'default')[sweep.COMPILE_CACHE_ENV] == 'default'
  monkeypatch.chdir(tmp_path)  # A relative folder is the launcher's, not the runs' (cwd REPO).
  assert sweep.child_env(1, 'cache')[sweep.COMPILE_CACHE_ENV] == str(tmp_path / 'cache')
  monkeypatch.setenv(sweep.COMPILE_CACHE_ENV, str(tmp_path / 'mine'))
  assert sweep.parser().parse_args(['--out=x']).compile_cache == str(tmp_path / 'mine')
  assert sweep.COMPILE_CACHE_ENV not in sweep.child_env(1, '')  # --compile_cache= : off.
  # Not an argument of the runs: sweep.json's arguments, which a rerun must
  # match, stay what they were.
  assert not any('compile_cache' in a for r in sweep.plan(_args('--configs=beta_a'))
                 for a in r['args'])


def test_the_runs_log_their_start_up(tiny_sweep):
  out, _ = tiny_sweep
  for run in ('beta_a_s0', 'beta_c_s0'):
    log = (out / run / 'log.txt').read_text()
    assert 'start-up: imports ' in log and ' compile ' in log, log


def test_recipe_label_names_the_overrides_not_the_placement():
  """An ablation run (the paper's config, another optimiser) is not reported
  as made by 'paper'; the data, seed and fold a sweep places it on are no
  part of its recipe."""
  plain = sweep.plan(_args('--configs=beta_a', '--seeds=0', '--kfold=5', '--data=msd_screens',
                           '--manual_dir=../shared/data/msd_screens'))[0]
  assert sweep_runs.recipe_label('learn', plain['args']) == 'learn'
  ablation = sweep.plan(_args('--configs=beta_a', '--seeds=0', '--kfold=5',
                              '--override=optimizer.name=adamw',
                              '--override=model.batch_norm=True'))[0]
  assert (sweep_runs.recipe_label('paper', ablation['args'])
          == 'paper + optimizer.name=adamw + model.batch_norm=True')


def test_rows_carry_the_recipe_label(tmp_path):
  _fake_run(tmp_path, 'beta_a', 0.0, 0, 0.7, 0.6)
  meta = tmp_path / 'beta_a_s0_f0' / 'sweep.json'
  meta.write_text(json.dumps({'variant': 'beta_a', 'seed': 0, 'fold': 0,
                              'args': ['--config=configs/beta_a.py', '--config.data.fold=0',
                                       '--config.optimizer.learning_rate=0.001']}))
  recipes = {r['recipe'] for r in report.rows(report.load_runs(str(tmp_path)))}
  assert recipes == {'paper + optimizer.learning_rate=0.001'}


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
  proj, share = figures.pca_2d(x)
  assert proj.shape == (50, 2) and share[0] > 0.9
  np.testing.assert_allclose(np.abs(proj[:, 0]), np.abs(x[:, 0] - x[:, 0].mean()), atol=0.5)


# ------------------------------------------------------------------ hand-made sweeps


def _metrics(auroc, balanced_accuracy):
  m = {k: 0.5 for k in report.METRICS}
  m.update(auroc=auroc, balanced_accuracy=balanced_accuracy, accuracy=balanced_accuracy)
  return {**m, 'tp': 2, 'fp': 1, 'tn': 3, 'fn': 2, 'num_examples': 8,
          'num_defective': 4, 'num_good': 4}


def _fake_run(out, variant, beta, fold, auroc, bacc, health=None, seed=0):
  """A finished run directory as launch/sweep.py and train.py leave it."""
  workdir = out / f'{variant}_s{seed}_f{fold}'
  workdir.mkdir(parents=True)
  (workdir / 'sweep.json').write_text(json.dumps(
      {'variant': variant, 'seed': seed, 'fold': fold, 'args': []}))
  (workdir / 'config.json').write_text(json.dumps({'config': {'loss': {'beta': beta}}}))
  ev = {'step': 10, 'checkpoint': 'best', 'threshold_rule': 'best_f1', 'threshold': 0.4,
        'val': _metrics(auroc, bacc), 'test': _metrics(auroc, bacc)}
  if health:
    ev['health'] = health
  (workdir / 'eval.json').write_text(json.dumps(ev))


BASE_AUROC = (0.60, 0.70, 0.80, 0.90, 0.75)
BASE_BACC = (0.55, 0.65, 0.50, 0.80, 0.70)
COLLAPSED = {'status': 'collapsed', 'reasons': ['constant predictions on val']}


@pytest.fixture
def hand_sweep(tmp_path):
  """beta_a and beta_c on 5 folds: beta_c's test AUROC is beta_a's + 0.1 on
  every fold, its balanced accuracy the same; beta_c fold 2 collapsed."""
  out = tmp_path / 'sweep'
  for fold, (auc, bacc) in enumerate(zip(BASE_AUROC, BASE_BACC)):
    _fake_run(out, 'beta_a', 0.0, fold, auc, bacc, {'status': 'ok', 'reasons': []})
    _fake_run(out, 'beta_c', 0.01, fold, auc + 0.1, bacc,
              COLLAPSED if fold == 2 else None)
  return out


def _floors_json(path, test_auroc=(0.5, 0.6, 0.7, 0.4, 0.55)):
  rows = []
  for model in ('pixel', 'hog'):
    for fold, auc in enumerate(test_auroc):
      rows.append({'model': model, 'fold': fold, 'threshold_rule': 'best_f1',
                   'threshold': 0.5, 'lambda': 10.0, 'num_features': 4,
                   'train': {'auroc': 1.0}, 'val': _metrics(0.6, 0.6),
                   'test': _metrics(auc, 0.5)})
  path.write_text(json.dumps({'data': {'name': 'msd_screens', 'builder_config': 'default',
                                       'kfold': 5},
                              'options': {'threshold_rule': 'best_f1'}, 'rows': rows}))


def test_rows_carry_health_unknown_without_it(hand_sweep):
  table = report.rows(report.load_runs(str(hand_sweep)))
  health = {(r['variant'], r['fold']): (r['health'], r['health_reasons'])
            for r in table if r['split'] == 'test'}
  assert health[('beta_a', 0)] == ('ok', '')
  assert health[('beta_c', 2)] == ('collapsed', 'constant predictions on val')
  assert health[('beta_c', 0)] == ('unknown', '')


def test_paired_verdicts_of_a_constant_shift_and_of_no_change(hand_sweep):
  table = report.rows(report.load_runs(str(hand_sweep)))
  assert report.baseline_variant(table) == 'beta_a'
  auc, bacc = report.paired(table)
  assert (auc['variant'], auc['metric'], auc['n']) == ('beta_c', 'auroc', 5)
  assert auc['mean'] == pytest.approx(0.1)
  assert auc['ci_low'] == pytest.approx(0.1) and auc['ci_high'] == pytest.approx(0.1)
  # The interval excludes 0, but 5 pairs cannot reach p <= 0.05 (2 / 2^5).
  assert auc['p'] == pytest.approx(2 / 32) and auc['verdict'] == 'not distinguishable'
  assert bacc['mean'] == 0.0 and bacc['p'] == 1.0
  assert bacc['verdict'] == 'not distinguishable'
  text = report.markdown(table)
  assert ('| beta_c | test AUROC | 5 | +0.100 | [+0.100, +0.100] | 0.062 | '
          'not distinguishable |' in text)
  assert ('| beta_c | test balanced acc. (points) | 5 | +0.0 | [+0.0, +0.0] | 1.000 '
          '| not distinguishable |' in text)


def test_markdown_counts_collapsed_runs_per_variant(hand_sweep):
  text = report.markdown(report.rows(report.load_runs(str(hand_sweep))))
  lines = text.splitlines()
  row_a = next(line for line in lines if line.startswith('| beta_a | 0.0 | 5 |'))
  row_c = next(line for line in lines if line.startswith('| beta_c | 0.01 | 5 |'))
  assert row_a.endswith('| 0/5 |')
  assert row_c.endswith('| 1/5, 4 unknown |')
  assert 'Collapsed runs: beta_c_s0_f2 (constant predictions on val).' in text


def test_no_baseline_says_so():
  table = [_row('beta_b', 'test', 0)]
  assert report.paired(table) == []
  assert 'no baseline variant' in report.markdown(table)
  only_a = [_row('beta_a', 'test', 0)]
  assert 'one variant only' in report.markdown(only_a)


def test_aggregate_puts_the_floors_beside_the_variants(hand_sweep):
  _floors_json(hand_sweep / 'floors.json')
  assert sweep.main([f'--out={hand_sweep}', '--aggregate_only']) == 0
  rows = report.read_csv(hand_sweep / 'results.csv')
  floors = [r for r in rows if r['variant'].startswith('floor:')]
  assert len(floors) == 2 * 5 * 2  # 2 models x 5 folds x (val, test).
  assert {r['run'] for r in floors if r['variant'] == 'floor:hog'} == {
      f'floor:hog_f{i}' for i in range(5)}
  text = (hand_sweep / 'results.md').read_text()
  # Test AUROC 0.5, 0.6, 0.7, 0.4, 0.55: mean 0.55, sample std 0.112; AP as is.
  assert ('| floor:pixel | test | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 '
          '| 50.0 ± 0.0 | 50.0 ± 0.0 | 0.550 ± 0.112 | 0.500 ± 0.000 |') in text
  # No beta, paper value or health for a floor.
  assert '| floor:hog | – | 5 | 60.0 ± 0.0 | 50.0 ± 0.0 | – | – | 50.0 ± 0.0 | – |' in text
  assert 'data `msd_screens`' in text
  # Floors are not paired against beta = 0: only beta_c is.
  assert 'floor:pixel | test AUROC' not in text


def test_aggregate_only_keeps_the_recorded_sweep_line(hand_sweep):
  (hand_sweep / 'sweep.json').write_text(json.dumps(
      {'argv': ['--out=x', '--kfold=5'], 'configs': 'beta_a,beta_c', 'kfold': 5,
       'overrides': 'num_epochs=3'}))
  assert sweep.main([f'--out={hand_sweep}', '--aggregate_only']) == 0
  text = (hand_sweep / 'results.md').read_text()
  assert 'Sweep: configs `beta_a,beta_c`, kfold `5`, overrides `num_epochs=3`.' in text
  assert 'argv' not in text


def test_aggregate_refuses_a_missing_floors_file(hand_sweep, capsys):
  assert sweep.main([f'--out={hand_sweep}', '--aggregate_only',
                     f'--floors={hand_sweep}/nope.json']) == 2
  assert 'nope.json' in capsys.readouterr().err


def test_floors_command_follows_the_sweep(tmp_path):
  args = _args('--kfold=5', '--data=msd_screens', '--builder_config=default',
               '--manual_dir=data/msd', '--override=data.image_size=(64,128)',
               '--override=num_epochs=2', '--run_floors')
  cmd = sweep.floors_command(args, str(tmp_path))
  assert cmd[1].endswith('launch/floors.py')
  assert cmd[2:7] == ['--model=all', '--kfold=5', f'--out={tmp_path}/floors.json',
                      '--data=msd_screens', '--builder_config=default']
  # Relative to the repo (the runs' cwd): no path of this machine is kept.
  assert cmd[7] == '--manual_dir=' + os.path.relpath(os.path.abspath('data/msd'), sweep.REPO)
  assert cmd[8:] == ['--set=image_size=(64,128)']  # data.* overrides only.


def test_dry_run_prints_the_floors_command(tmp_path, capsys):
  assert sweep.main([f'--out={tmp_path / "new"}', '--configs=beta_a', '--kfold=3',
                     '--dry_run', '--run_floors']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 4 and 'launch/floors.py --model=all --kfold=3' in lines[-1]


# ------------------------------------------------------------------ unreadable runs, defect types


def _break_two_runs(hand_sweep):
  """beta_c fold 1: eval.json cut short; fold 3: valid JSON without its test split."""
  (hand_sweep / 'beta_c_s0_f1' / 'eval.json').write_text('{"step": 10, "val": {')
  path = hand_sweep / 'beta_c_s0_f3' / 'eval.json'
  ev = json.loads(path.read_text())
  del ev['test']
  path.write_text(json.dumps(ev))


def test_aggregate_names_each_unreadable_run_and_tables_the_rest(hand_sweep, capsys):
  _break_two_runs(hand_sweep)
  assert sweep.main([f'--out={hand_sweep}', '--aggregate_only']) == 1  # As report's: exit 1.
  said = [line for line in capsys.readouterr().out.splitlines() if 'left out' in line]
  assert len(said) == 2, said
  assert 'left out beta_c_s0_f1: cannot read eval record' in said[0]
  assert str(hand_sweep / 'beta_c_s0_f1' / 'eval.json') in said[0]
  assert f'left out beta_c_s0_f3: {hand_sweep / "beta_c_s0_f3" / "eval.json"}: no ' \
         '"test" entry' in said[1]
  rows = report.read_csv(hand_sweep / 'results.csv')
  assert sorted({r['run'] for r in rows}) == sorted(
      [f'beta_a_s0_f{i}' for i in range(5)] + [f'beta_c_s0_f{i}' for i in (0, 2, 4)])
  text = (hand_sweep / 'results.md').read_text()
  assert '| beta_c | 0.01 | 3 |' in text
  # How many, which and why, with the file relative to the sweep.
  assert ('Unreadable (left out above, 2 runs): beta_c_s0_f1: cannot read eval record '
          'beta_c_s0_f1/eval.json: ') in text
  assert 'beta_c_s0_f3: beta_c_s0_f3/eval.json: no "test" entry (remove it and rerun' in text
  assert str(hand_sweep) not in text


def test_report_command_names_an_unreadable_run_and_draws_the_rest(hand_sweep, capsys):
  _break_two_runs(hand_sweep)
  assert report.main([f'--sweep={hand_sweep}', f'--out={hand_sweep / "fig"}']) == 1
  out, err = capsys.readouterr()
  assert len(out.strip().splitlines()) == 3  # The three PNGs, from the readable runs.
  lines = err.strip().splitlines()
  assert len(lines) == 2 and str(hand_sweep / 'beta_c_s0_f1' / 'eval.json') in lines[0]


def _record_types(run_dir, by_type):
  path = run_dir / 'eval.json'
  path.write_text(json.dumps({**json.loads(path.read_text()),
                              'recall_by_type': {'val': by_type, 'test': by_type}}))


def test_recall_per_defect_type_in_the_tables_n_a_for_runs_made_before(hand_sweep):
  crack = lambda found: {'defective': 4, 'detected': found, 'recall': found / 4}
  _record_types(hand_sweep / 'beta_a_s0_f0', {'crack': crack(1), 'fray': crack(4)})
  _record_types(hand_sweep / 'beta_a_s0_f1', {'crack': crack(3)})  # No fray in this fold.
  text = report.markdown(report.rows(report.load_runs(str(hand_sweep))))
  assert '## Where it fails: recall per defect type (test, %)' in text
  # crack: 25% and 75%; fray: one run of the two that recorded types has some.
  assert '| beta_a | 2/5 | 50.0 ± 35.4; 4/8 | 100.0 (n=1/2); 4/4 |' in text
  assert '| beta_c | 0/5 | n/a | n/a |' in text  # Made before eval.json recorded types.
  path = hand_sweep / 'results.csv'
  report.write_csv(path, report.rows(report.load_runs(str(hand_sweep))))
  cells = {(r['run'], r['split']): r['recall_by_type'] for r in report.read_csv(path)}
  assert cells[('beta_a_s0_f0', 'test')] == 'crack 1/4; fray 4/4'
  assert cells[('beta_a_s0_f1', 'test')] == 'crack 3/4'
  assert cells[('beta_c_s0_f0', 'test')] == 'n/a'
  # A sweep of runs all made before: said, no crash.
  for run in ('beta_a_s0_f0', 'beta_a_s0_f1'):
    _record_types(hand_sweep / run, None)
  text = report.markdown(report.rows(report.load_runs(str(hand_sweep))))
  assert 'n/a: no run here recorded it.' in text


def test_compare_sweeps_names_a_broken_results_csv(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location('compare_sweeps',
                                                REPO / 'launch' / 'compare_sweeps.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  for name, auroc in (('a', '0.7'), ('b', 'oops')):
    (tmp_path / name).mkdir()
    (tmp_path / name / 'results.csv').write_text(
        'variant,seed,fold,split,auroc,balanced_accuracy\n'
        f'beta_a,0,0,test,{auroc},0.6\n')
  assert module.main([f'--base={tmp_path / "a"}', f'--other={tmp_path / "b"}']) == 2
  err = capsys.readouterr().err
  assert f'{tmp_path / "b" / "results.csv"} line 2: could not convert' in err
