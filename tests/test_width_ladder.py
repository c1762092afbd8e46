"""launch/width_ladder_table.py on the committed 1/16 rung of the ladder."""
import csv
import importlib.util
import os
import pathlib
import shutil
import statistics

import jax
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNG = REPO / 'docs' / 'sweeps' / 'mt_k5_ladder' / 'w16'


def _load():
  spec = importlib.util.spec_from_file_location('width_ladder_table',
                                                REPO / 'launch' / 'width_ladder_table.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


ladder = _load()


def test_table_reads_the_rung(tmp_path):
  if not RUNG.is_dir():
    pytest.skip('the ladder has no committed 1/16 rung')
  shutil.copytree(RUNG, tmp_path / 'w16')
  figure = tmp_path / 'ladder.png'
  assert ladder.main([f'--ladder={tmp_path}', f'--figure={figure}']) == 0
  with open(RUNG / 'results.csv', encoding='utf-8', newline='') as f:
    test = [float(r['auroc']) for r in csv.DictReader(f)
            if r['split'] == 'test' and not r['variant'].startswith('floor:')]
  text = (tmp_path / 'ladder.md').read_text()
  assert f'{statistics.mean(test):.3f} ± {statistics.stdev(test):.3f}' in text
  assert figure.stat().st_size > 5000


def test_param_count_is_the_models():
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import models  # pylint: disable=import-outside-toplevel
  config = default.get_config('quick,learn')
  config.model.head = 'gmp'
  params, _ = models.init(models.create(config.model), jax.random.PRNGKey(0), (110, 230, 3))
  assert ladder.param_count(config.to_dict()) == models.count_params(params)


def test_recall_by_type_pools_the_folds():
  runs = {0: {'recall_by_type': 'crack 1/2; fray 0/1'}, 1: {'recall_by_type': 'crack 3/4'}}
  assert ladder._recall_by_type(runs) == 'crack 67%, fray 0%'  # pylint: disable=protected-access


def test_refuses_a_ladder_without_its_base(tmp_path, capsys):
  os.makedirs(tmp_path / 'w8')
  (tmp_path / 'w8' / 'results.csv').write_text('variant,split\n')
  assert ladder.main([f'--ladder={tmp_path}', f'--figure={tmp_path / "x.png"}']) == 2
  assert 'w16' in capsys.readouterr().err


def test_run_curves_draws_committed_runs_and_refuses_a_folder_without_metrics(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location('run_curves', REPO / 'launch' / 'run_curves.py')
  curves = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(curves)
  run = RUNG / 'beta_a_s0_f0'
  if not run.is_dir():
    pytest.skip('the ladder has no committed 1/16 rung')
  out = tmp_path / 'curves.png'
  assert curves.main([f'--run=a=b={run}', f'--out={out}']) == 0  # The label may hold '='.
  assert out.stat().st_size > 5000
  assert curves.main([f'--run=x={tmp_path}', f'--out={out}']) == 2
  assert 'metrics.jsonl' in capsys.readouterr().err
