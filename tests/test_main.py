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


@pytest.mark.parametrize('mode, args, rate', [
    # A width set on the command line takes :learn's rate for it...
    ('quick,learn', ['--config.model.width_mult=1.0'], 1e-4),
    ('learn', ['--config.model.width_mult=0.25'], 1e-3),
    # ...unless the rate is given too, or the recipe is not :learn's.
    ('quick,learn', ['--config.model.width_mult=1.0', '--config.optimizer.learning_rate=0.002'],
     None),
    ('quick', ['--config.model.width_mult=1.0'], None),
    ('quick,learn', [], None),
])
def test_learn_rate_follows_a_width_set_on_the_command_line(mode, args, rate):
  from configs import default
  from smsdd_jax import main
  config = default.get_config(mode)
  for arg in args:  # What absl's parser does with them before the rule runs.
    key, value = arg.removeprefix('--config.').split('=')
    group, field = key.split('.')
    config[group][field] = type(config[group][field])(value)
  before = config.optimizer.learning_rate
  note = main.learn_rate_follows_width(config, args)
  if rate is None:
    assert note is None and config.optimizer.learning_rate == before
  else:
    assert config.optimizer.learning_rate == rate
    assert f'optimizer.learning_rate {rate:g} (was {before:g})' in note


def test_the_run_log_says_the_rate_followed_the_width(tmp_path):
  not_a_dir = tmp_path / 'file'
  not_a_dir.write_text('')  # Refused as a workdir right after the start-up lines.
  r = _cli('smsdd_jax.main', '--config=configs/beta_a.py:quick,learn',
           '--config.model.width_mult=1.0', f'--workdir={not_a_dir}')
  assert r.returncode == 2, r.stderr
  assert ("optimizer.learning_rate 0.0001 (was 0.001): :learn's rate for width 1, set on the "
          'command line') in r.stdout
