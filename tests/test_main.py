"""The command lines: --help, and config errors as one line before any work."""
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(module, *args):
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize('override,want', [
    ('--config.batch_sise=3',
     "unknown config key 'config.batch_sise' (from '--config.batch_sise=3'); "
     "did you mean 'config.batch_size'?"),
    ('--config.loss.bta=0.05',
     "unknown config key 'config.loss.bta' (from '--config.loss.bta=0.05'); "
     "did you mean 'config.loss.beta'?"),
    ('--config.data.nmae=x',
     "unknown config key 'config.data.nmae' (from '--config.data.nmae=x'); "
     "did you mean 'config.data.name'?"),
    ('--config.bogus=1',
     "unknown config key 'config.bogus' (from '--config.bogus=1'); "
     'the keys are declared in configs/default.py'),
    ('--config.loss.beta.x=1',
     "unknown config key 'config.loss.beta.x': config.loss.beta is a float, "
     'not a group of keys (see configs/default.py)'),
    ('--config.loss.extra.focal=0.5',
     "unknown config key 'config.loss.extra.focal' (from '--config.loss.extra.focal=0.5'); "
     'config.loss.extra is a dict of extra terms, set whole: '
     '--config.loss.extra="{\'focal\': 0.5}"'),
])
def test_unknown_config_key_is_one_clean_line_before_any_work(override, want, tmp_path):
  workdir = tmp_path / 'run'
  proc = _cli('smsdd_jax.main', '--config=configs/beta_c.py:quick', override,
              f'--config.data.data_dir={tmp_path / "tfds"}', f'--workdir={workdir}')
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert proc.stderr == f'error: {want}\n'
  # Refused while parsing flags: nothing logged, built or written.
  assert proc.stdout == ''
  assert not workdir.exists() and not (tmp_path / 'tfds').exists()


def test_main_help_exits_0_and_points_at_the_config_keys():
  for flag in ('--help', '-h'):
    proc = _cli('smsdd_jax.main', flag)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'configs/default.py' in proc.stdout
    assert '--config.KEY=VALUE' in proc.stdout and '--config.loss.beta=0.05' in proc.stdout
  proc = _cli('smsdd_jax.main')  # A real usage error still fails.
  assert proc.returncode != 0 and 'config' in proc.stderr


@pytest.mark.parametrize('module', ['smsdd_jax.predict', 'smsdd_jax.export'])
def test_other_tools_help_exits_0(module):
  proc = _cli(module, '--help')
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert proc.stdout.startswith(f'usage: python -m {module}')
