"""Figures driven by what a run logged and configured; report on one run, and
on a folder above sweeps."""
import json

import pytest

from smsdd_jax import figures
from smsdd_jax import report

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _run_dir(path, terms, beta=0.01, sweep_meta=None):
  """A training workdir as train.py leaves it before its final evaluation."""
  path.mkdir(parents=True)
  loss_terms = {t: {'weight': w, 'module': 'm', 'function': t, 'source': 's.py'}
                for t, w in terms.items()}
  (path / 'config.json').write_text(json.dumps(
      {'config': {'seed': 3, 'data': {'kfold': 0, 'fold': 0},
                  'loss': {'beta': beta, 'classification': 'cross_entropy',
                           'pair': 'contrastive'}},
       'loss_terms': loss_terms}))
  with open(path / 'metrics.jsonl', 'w') as f:
    for step in (5, 10):
      f.write(json.dumps({'step': step, 'train/loss': 1.0 / step,
                          **{f'train/{t}': 0.5 / step for t in terms}}) + '\n')
    f.write(json.dumps({'step': 10, 'val/balanced_accuracy': 0.6}) + '\n')
  if sweep_meta:
    (path / 'sweep.json').write_text(json.dumps(sweep_meta))
  return path


def test_titles_and_panels_come_from_the_runs_loss_config(tmp_path):
  terms = {'cross_entropy': 1.0, 'contrastive': 0.01, 'my_term': 0.5}
  run = report.load_runs(str(_run_dir(tmp_path / 'run', terms)))
  assert [r['variant'] for r in run] == ['run'] and run[0]['seed'] == 3
  assert run[0]['terms'] == terms and not run[0]['finished']
  assert figures.objective_title(run) == (
      'training loss = cross_entropy + 0.01·contrastive + 0.5·my_term')
  other = dict(run[0], variant='b', terms={'cross_entropy': 1.0, 'contrastive': 0.1})
  assert figures.objective_title([run[0], other]) == (
      'training loss = cross_entropy + w·contrastive + 0.5·my_term')
  assert figures.term_weights([run[0], other])['contrastive'] == [0.01, 0.1]


def test_older_config_json_without_loss_terms_gives_the_papers_terms(tmp_path):
  path = _run_dir(tmp_path / 'old', {})
  info = json.loads((path / 'config.json').read_text())
  del info['loss_terms']
  info['config']['loss']['extra'] = {'focal': 0.25}
  (path / 'config.json').write_text(json.dumps(info))
  assert report.load_runs(str(path))[0]['terms'] == {
      'cross_entropy': 1.0, 'contrastive': 0.01, 'focal': 0.25}


def test_report_on_one_unfinished_run_draws_its_curves(tmp_path, capsys):
  path = _run_dir(tmp_path / 'run', {'cross_entropy': 1.0, 'contrastive': 0.01, 'x': 2.0})
  assert report.main([f'--sweep={path}']) == 0
  out = capsys.readouterr().out.split()
  assert out == [str(path / 'figures' / 'loss_curves.png')]
  assert (path / 'figures' / 'loss_curves.png').read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize('with_root_record', [True, False])
def test_report_above_sweeps_names_them_in_one_line(tmp_path, capsys, with_root_record):
  sweep = tmp_path / 'sweeps' / 'sweep_quick'
  _run_dir(sweep / 'beta_a_s0', {'cross_entropy': 1.0},
           sweep_meta={'variant': 'beta_a', 'seed': 0, 'args': []})
  if with_root_record:  # launch/sweep.py's own record of its arguments.
    (sweep / 'sweep.json').write_text(json.dumps({'configs': 'beta_a', 'quick': True}))
  assert report.main([f'--sweep={tmp_path / "sweeps"}']) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f'error: {tmp_path / "sweeps"} holds no run itself but 1 sweep(s): '
                 f'{sweep}; pass one of them as --sweep']
  # The sweep itself, its own sweep.json at its root, is read as before.
  assert [r['run'] for r in report.load_runs(str(sweep))] == ['beta_a_s0']


def test_a_folder_of_runs_made_one_by_one_groups_them_by_variant(tmp_path):
  for name in ('beta_a_s0_f0', 'beta_a_s1_f0', 'mine'):
    _run_dir(tmp_path / 'runs' / name, {'cross_entropy': 1.0})
  runs = report.load_runs(str(tmp_path / 'runs'))
  assert [(r['run'], r['variant']) for r in runs] == [
      ('beta_a_s0_f0', 'beta_a'), ('beta_a_s1_f0', 'beta_a'), ('mine', 'mine')]
