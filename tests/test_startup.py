"""The start-up's phase line, and the compilation cache: seconds less, the same bytes."""
import logging
import os
import pathlib
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from smsdd_jax import startup
from smsdd_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]
# What a run writes that depends on the numbers it computed.
OUTPUTS = ('metrics.jsonl', 'eval.json', 'threshold.json', 'eval_val.npz', 'eval_test.npz',
           'data_stats.json', 'best.json')


def test_clock_times_each_phase_and_what_of_it_was_compiling():
  clock = startup.Clock(imports=1.25)
  with clock.phase('compile'):
    # A new function: compiled here (or loaded from the session's cache, which counts too).
    jax.jit(lambda v: jnp.sin(v) * 3.0 + 0.5)(jnp.arange(7.0)).block_until_ready()
  with clock.phase('data'):
    time.sleep(0.02)
  with clock.phase('data'):  # Timed twice: one entry, summed.
    time.sleep(0.02)
  phases = clock.seconds()
  assert list(phases) == ['imports', 'compile', 'data', 'other']
  assert phases['imports'] == (1.25, 0.0)
  assert phases['compile'][1] > 0 and phases['compile'][1] <= phases['compile'][0]
  assert phases['data'][0] >= 0.04 and phases['data'][1] == 0.0
  line = clock.line()
  # (The session's compilation cache may hold that program: then the line says so.)
  assert re.fullmatch(r'start-up: imports 1\.2 s, compile \d+\.\d s( \(compiling \d+\.\d s\))?, '
                      r'data 0\.\d s, other \d+\.\d s; \d+\.\d s'
                      r'(; \d+ program\(s\) from the compilation cache)?', line), line


def test_the_run_logs_its_start_up_before_step_1_and_compiles_nothing_after(
    quick_config, tmp_path, caplog):
  config = quick_config
  config.batch_size, config.num_epochs, config.log_every_steps = 32, 1, 1  # 2 steps.
  compiles = []

  def listen(event, seconds, **kw):
    if event == startup.COMPILE_EVENT:
      compiles.append((kw.get('fun_name'), time.time()))

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    with caplog.at_level(logging.INFO, logger='smsdd_jax'):
      train.train_and_evaluate(config, str(tmp_path / 'run'))
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  lines = [r.getMessage() for r in caplog.records if r.name == 'smsdd_jax']
  line = next(m for m in lines if m.startswith('start-up:'))
  logged = next(r.created for r in caplog.records if r.getMessage() == line)
  names = re.findall(r'(?:: |, )([a-z]+) \d+\.\d s', line)
  assert names == ['tensorflow', 'data', 'splits', 'records', 'stats', 'model', 'init',
                   'restore', 'pairs', 'compile', 'other'], line
  assert lines.index(line) < next(i for i, m in enumerate(lines) if m.startswith('step 1/'))
  # Both steps were compiled in the start-up, once: the loop and the first
  # evaluation (after the last step) compiled neither again.
  steps = [(name, when) for name, when in compiles if name in ('jit(step)', 'jit(eval_step)')]
  assert sorted(name for name, _ in steps) == ['jit(eval_step)', 'jit(step)'], compiles
  assert all(when <= logged for _, when in steps), (steps, logged)


def _run(workdir, data_dir, *flags):
  """`python -m smsdd_jax.main`, 2 steps, with no compilation cache but the flags'."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE', 'SMSDD_COMPILE'))}
  proc = subprocess.run(
      [sys.executable, '-m', 'smsdd_jax.main', '--config=configs/beta_c.py:quick',
       '--config.batch_size=32', '--config.num_epochs=1', f'--config.data.data_dir={data_dir}',
       f'--workdir={workdir}', *flags], cwd=REPO, capture_output=True, text=True,
      timeout=300, env={**env, 'TF_CPP_MIN_LOG_LEVEL': '2'})
  assert proc.returncode == 0, proc.stdout + proc.stderr
  return proc.stdout


def test_a_run_from_the_compilation_cache_writes_the_same_bytes(tmp_path, data_dir):
  cache = tmp_path / 'cache'
  # The first run finds the cache empty: it compiles everything, as without one.
  cold = _run(tmp_path / 'cold', data_dir, f'--compile_cache={cache}')
  warm = _run(tmp_path / 'warm', data_dir, f'--compile_cache={cache}')
  assert f'compilation cache: {cache / startup.machine_key()}' in cold
  assert 'from the compilation cache' not in cold
  hits = re.search(r'start-up: .*; (\d+) program\(s\) from the compilation cache', warm)
  assert hits and int(hits.group(1)) >= 3, warm  # init, the train step, the eval step.
  for name in OUTPUTS:
    assert (tmp_path / 'cold' / name).read_bytes() == (tmp_path / 'warm' / name).read_bytes(), name


def test_a_cache_others_may_write_to_is_not_used(tmp_path, caplog):
  shared = tmp_path / 'shared'
  shared.mkdir()
  shared.chmod(0o777)  # Whoever writes a cache entry runs code in the reader.
  before = jax.config.jax_compilation_cache_dir
  with caplog.at_level(logging.WARNING, logger='smsdd_jax'):
    assert startup.enable_compile_cache(str(shared)) is None
  assert 'compilation cache off' in caplog.text and 'others may write to it' in caplog.text
  assert jax.config.jax_compilation_cache_dir == before


def test_the_cache_folder_names_this_jax_and_this_processor(monkeypatch, tmp_path):
  key = startup.machine_key()
  assert key.startswith(f'jax{jax.__version__}-') and key == startup.machine_key()
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert startup.default_cache_dir() == str(tmp_path / 'smsdd_jax' / 'jax_compile')
