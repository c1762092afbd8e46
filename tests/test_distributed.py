"""Data parallelism: 4 devices match 1; 2 processes train one model."""
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run_main(workdir, data_dir, env_extra=None, launcher=None):
  flags = ['--config=configs/beta_c.py:quick', f'--workdir={workdir}',
           f'--config.data.data_dir={data_dir}', '--config.num_epochs=1',
           '--config.batch_size=8', '--config.eval_batch_size=16',
           '--config.log_every_steps=1']
  cmd = launcher + flags if launcher else [sys.executable, '-m', 'smsdd_jax.main'] + flags
  env = {**os.environ, **(env_extra or {})}
  result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return result


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r['train/loss'] for r in map(json.loads, f) if 'train/loss' in r]


def test_four_devices_follow_the_single_device_trajectory(data_dir, tmp_path):
  one, four = tmp_path / 'one', tmp_path / 'four'
  _run_main(one, data_dir)
  out = _run_main(four, data_dir,
                  {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})
  assert 'CpuDevice(id=3)' in out.stdout  # Really four devices.
  a, b = _losses(one), _losses(four)
  assert len(a) == len(b) == 8
  np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-5)


def test_two_processes_train_one_model(data_dir, tmp_path):
  workdir, logs = tmp_path / 'mp', tmp_path / 'logs'
  _run_main(workdir, data_dir, {'LOG_DIR': str(logs), 'PYTHON': sys.executable},
            launcher=['bash', 'launch/local_multiprocess.sh', '2'])
  prints = []
  for i in range(2):
    text = (logs / f'process_{i}.log').read_text()
    assert f'process {i} of 2' in text, text[-2000:]
    prints += re.findall(r'process \d/2: final params fingerprint (\S+)', text)
  assert len(prints) == 2 and prints[0] == prints[1], prints
  assert len(_losses(workdir)) == 8  # Process 0 alone wrote the metrics.
  assert (workdir / 'checkpoints' / '8').is_dir()
