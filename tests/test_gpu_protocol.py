"""launch/gpu_protocol.py: its CPU path end to end with TensorFlow unimportable
(as on the GPU machine), and its plan, budget and archive rules."""
import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from smsdd_jax import dataset_export
from smsdd_jax import inference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
  spec = importlib.util.spec_from_file_location(
      'gpu_protocol', os.path.join(REPO, 'launch', 'gpu_protocol.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


gpu_protocol = _module()

# Run as the script with TensorFlow gone, as on the GPU machine: a None in
# sys.modules makes `import tensorflow` raise ModuleNotFoundError and
# importlib.util.find_spec('tensorflow') return None, as when not installed.
_WITHOUT_TF = '''
import runpy, sys
sys.modules['tensorflow'] = sys.modules['tensorflow_datasets'] = None
sys.argv = ['launch/gpu_protocol.py', *sys.argv[1:]]
runpy.run_path('launch/gpu_protocol.py', run_name='__main__')
'''


def test_cpu_path_runs_end_to_end_without_tensorflow(crops_data, tmp_path):
  _, export_path = crops_data
  out, archive = tmp_path / 'out', tmp_path / 'protocol.tar.gz'
  args = [f'--out={out}', f'--archive={archive}', f'--exports={export_path}', '--quick',
          '--configs=beta_c', '--folds=0', '--seeds=0', '--override=num_epochs=1',
          '--bench_pairs=2', '--bench_steps=1', '--bench_dtypes=float32', '--budget_s=500',
          '--keep_checkpoints']
  done = subprocess.run([sys.executable, '-c', _WITHOUT_TF, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=900, check=False)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  summary = json.loads((out / 'protocol.json').read_text())
  assert summary['tensorflow_imported'] is False
  if importlib.util.find_spec('torch') is None:  # As in CI's fresh venv.
    assert summary['twin']['skipped'] == 'torch is not installed here'
  else:  # A venv with the twin's torch (for the speed comparisons) runs it.
    assert summary['twin']['device'] == 'cpu' and 'bfloat16' in summary['twin']
  assert summary['bench']['float32']['pairs_per_s'] > 0, summary['bench']
  [record] = summary['protocol']['runs']
  assert record['status'] == 'finished' and record['health'] in ('ok', 'suspect'), record
  assert summary['protocol']['stop'] == 'every run done'
  assert summary['protocol']['floors'] == {'image_folder_k5_quick_learn': 'computed'}
  sweep = out / 'image_folder_k5_quick_learn'
  run = sweep / 'beta_c_s0_f0'
  results = (sweep / 'results.md').read_text()
  assert '| beta_c |' in results and 'floor:boosted' in results
  assert json.loads((run / 'sweep.json').read_text())['args'][:2] == [
      '--config=configs/beta_c.py:quick,learn', '--config.seed=0']
  config = json.loads((run / 'config.json').read_text())['config']
  assert config['data']['source'] == 'export' and config['recipe'] == 'learn'
  assert 'result: test AUROC' in (run / 'log.txt').read_text()
  with tarfile.open(archive) as tar:
    names = tar.getnames()
  assert 'out/image_folder_k5_quick_learn/beta_c_s0_f0/eval.json' in names
  assert 'out/protocol.json' in names
  assert not [n for n in names if 'checkpoints' in n or n.endswith('.npz')]
  # predict serves the run as evaluation scored it: the same probabilities.
  export = dataset_export.load(export_path)
  val = np.load(run / 'eval_val.npz')
  index = export.indices('fold_1')
  probs = inference.Predictor(str(run)).predict_proba(export.rgb(index))
  np.testing.assert_array_equal(val['label'], export.labels[index])
  np.testing.assert_allclose(probs, val['prob'], atol=1e-5)


def _args(tmp_path, *extra):
  return gpu_protocol.parser().parse_args([f'--out={tmp_path}', *extra])


def test_plan_orders_runs_by_seed_export_fold_variant(crops_data, tmp_path):
  _, path = crops_data
  args = _args(tmp_path, '--configs=beta_a,beta_c', '--folds=1,0', '--seeds=0,1',
               '--override=num_epochs=2')
  runs = gpu_protocol.plan(args, {path: gpu_protocol.export_info(path)})
  assert [r['run'] for r in runs] == [
      'beta_a_s0_f1', 'beta_c_s0_f1', 'beta_a_s0_f0', 'beta_c_s0_f0',
      'beta_a_s1_f1', 'beta_c_s1_f1', 'beta_a_s1_f0', 'beta_c_s1_f0']
  assert {r['sweep'] for r in runs} == {'image_folder_k5_full_learn'}
  flags = runs[0]['args']
  assert flags[0] == '--config=configs/beta_a.py:learn'
  assert '--config.data.source=export' in flags and f'--config.data.export_path={path}' in flags
  assert flags[-1] == '--config.num_epochs=2'
  config = gpu_protocol.load_config(flags)  # main.py's parser: the flags are valid.
  assert config.data.fold == 1 and config.data.kfold == 5 and config.num_epochs == 2
  for bad, message in ((['--configs=beta_z'], 'no configs/beta_z.py'),
                       (['--folds=5'], r'--folds: 5 is not in \[0, 5\)'),
                       (['--override=seed=3'], 'not seed or folds')):
    with pytest.raises(ValueError, match=message):
      gpu_protocol.plan(_args(tmp_path, *bad), {path: gpu_protocol.export_info(path)})


def test_bad_command_lines_fail_in_one_line(tmp_path, capsys):
  assert gpu_protocol.main([f'--out={tmp_path}', '--exports=nope.npz']) == 2
  assert 'no file nope.npz' in capsys.readouterr().err
  assert gpu_protocol.main([f'--out={tmp_path}', '--parts=twin,train']) == 2
  assert "unknown ['train']" in capsys.readouterr().err


def test_a_run_starts_only_when_its_export_says_it_fits():
  clock = gpu_protocol.Clock(100.0)
  run = {'sweep': 'a'}
  assert gpu_protocol.fits(run, [], clock)  # Nothing known yet: try.
  done = [{'sweep': 'a', 'status': 'finished', 'seconds': s} for s in (30, 50, 90)]
  assert gpu_protocol.fits(run, done, clock)  # Median 50 < 100 - 20.
  clock.start = time.monotonic() - 40  # 60 s left, 20 kept for the end.
  assert not gpu_protocol.fits(run, done, clock)
  assert gpu_protocol.fits({'sweep': 'b'}, done, clock)  # Another export: unknown.


@pytest.mark.parametrize('size', ['--quick', 'full'])
def test_dry_run_shows_the_recipe_and_its_first_step_runs_here(crops_data, tmp_path, capsys,
                                                               size):
  """The recipe a lent GPU's minutes would train, and its first step on this
  CPU (full width: the paper's VGG16, 8 pairs) before any GPU time is spent."""
  _, path = crops_data
  argv = [f'--out={tmp_path / "unused"}', f'--exports={path}', '--configs=beta_a',
          '--seeds=0', '--folds=0', '--override=model.head=gmp', '--dry_run', '--first_step']
  assert gpu_protocol.main(argv + ([size] if size == '--quick' else [])) == 0
  out = capsys.readouterr().out
  width = '0.0625' if size == '--quick' else '1.0'
  assert f'model.width_mult = {width}' in out and "model.head = 'gmp'" in out
  assert "recipe = 'learn'" in out and 'model.batch_norm = True' in out
  assert 'python -m smsdd_jax.main --config=configs/beta_a.py:' in out
  assert 'first step here: loss' in out
  assert not (tmp_path / 'unused').exists()  # A dry run claims no OUT.
