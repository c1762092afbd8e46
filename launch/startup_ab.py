#!/usr/bin/env python3
"""The start-up measurements of docs/performance.md: one tree against another.

  git worktree add /tmp/before <commit>   # + the oneDNN .so copied into its smsdd_jax/onednn/
  python launch/startup_ab.py --before=/tmp/before --export=EXPORT.npz --reps=4 \\
      --out=/tmp/startup_ab [--json=PATH]

Each repetition runs, back to back, in each tree (`before`, this one:
`after`): the quick run (beta_a, 1 epoch = 16 steps) on the TFDS build, the
same on a dataset export (no TensorFlow), and a sweep of three tiny runs
(beta_a..c, :quick, 2 epochs = 32 steps each; `after` with a compilation
cache of its own that starts empty, as a first sweep on a machine). `after`
also runs the two single runs again with a warm compilation cache
(`after+cache`: what a second run, or any later run of a sweep, pays).
Interleaved because the machine may be shared: a load that comes and goes
then touches every variant of a repetition alike, and in alternate order
(ABBA: `before` first in even repetitions, `after` first in odd ones); the
medians over the repetitions are reported.

  python launch/startup_ab.py --init_probe

compiles the model's initialisation as a run does (jit of the quick model's
init), at XLA's default and at optimisation level 0, and says how many
initial weights level 0 changes; and compiles random-normal draws of the
first 1, 4 and all of its kernels' shapes (init draws one per kernel) to show
that the cost grows with them.

Per command: the wall seconds, and the seconds from its start to its
`step 1/` line (the start-up as a user waits for it: both trees log that
line after the first step); per sweep the seconds of each run. `after`'s
start-up line (smsdd_jax/startup.py) is kept with its phases.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = ['--config=configs/beta_a.py:quick', '--config.num_epochs=1']
SWEEP = ['--configs=beta_a,beta_b,beta_c', '--seeds=0', '--quick', '--override=num_epochs=2']


def timed(cmd: list[str], cwd: str, env: dict) -> dict:
  """Runs `cmd`, stamping each output line: wall seconds, seconds to the
  `step 1/` line, the start-up line and the sweep's per-run seconds."""
  start = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  first_step, startup_line, runs, tail = None, None, [], []
  for line in proc.stdout:
    now = time.perf_counter() - start
    tail = (tail + [line.rstrip()])[-5:]
    if first_step is None and re.search(r' step 1/\d+', line):
      first_step = now
    if ' start-up: ' in line:
      startup_line = line.split(' start-up: ', 1)[1].strip()
    done = re.search(r'done (\S+) in (\d+) s', line)
    if done:
      runs.append(int(done.group(2)))
  if proc.wait():
    raise RuntimeError(f'{" ".join(cmd)} (in {cwd}) exited {proc.returncode}:\n' +
                       '\n'.join(tail))
  return {'wall_s': round(time.perf_counter() - start, 1),
          'to_step_1_s': None if first_step is None else round(first_step, 1),
          'startup': startup_line, 'runs_s': runs}


def commands(tree: str, work: str, export: str, cache: str | None) -> dict:
  """name -> the command line of each measurement in `tree`."""
  main = [sys.executable, '-m', 'smsdd_jax.main', *QUICK]
  flag = [f'--compile_cache={cache}'] if cache else []
  return {
      'quick': main + [f'--workdir={work}/quick'] + flag,
      'export': main + ['--config.data.source=export', f'--config.data.export_path={export}',
                        f'--workdir={work}/export'] + flag,
      'sweep': [sys.executable, 'launch/sweep.py', f'--out={work}/sweep', *SWEEP] + (
          [f'--compile_cache={cache}'] if cache else []),
  }


def one_repetition(trees: dict, out: str, export: str, rep: int) -> dict:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE', 'SMSDD_COMPILE'))}
  results = {}
  # ABBA: `before` first in even repetitions, `after` first in odd ones, so
  # that a drift of the load within a repetition favours neither.
  order = list(trees) if rep % 2 == 0 else ['after', 'after+cache', 'before']
  for what in ('quick', 'export', 'sweep'):
    for variant in order:
      tree = trees[variant]
      work = os.path.join(out, f'r{rep}_{variant}')
      shutil.rmtree(work, ignore_errors=True)
      os.makedirs(work)
      if variant == 'after+cache' and what == 'sweep':
        continue
      # before: no cache (it has none); after: an empty one, so the quick and
      # export runs pay their compiles; after+cache: the one `after` filled.
      cache = {'before': None, 'after': os.path.join(work, 'cache'),
               'after+cache': os.path.join(out, f'r{rep}_after', 'cache')}[variant]
      cmd = commands(tree, work, export, cache)[what]
      results[f'{what}/{variant}'] = timed(cmd, tree, env)
      print(f'r{rep} {what:6s} {variant:11s} {json.dumps(results[f"{what}/{variant}"])}',
            flush=True)
  return results


def summary(reps: list[dict]) -> dict:
  """The median over repetitions of each number of each measurement."""
  out = {}
  for key in reps[0]:
    entry = {}
    for field in ('wall_s', 'to_step_1_s'):
      values = [r[key][field] for r in reps if r[key][field] is not None]
      if values:
        entry[field] = statistics.median(values)
        entry[f'{field}_all'] = values
    runs = [r[key]['runs_s'] for r in reps if r[key]['runs_s']]
    if runs:
      entry['runs_s_all'] = runs
      entry['run_s_median'] = statistics.median([s for row in runs for s in row])
    entry['startup_lines'] = [r[key]['startup'] for r in reps if r[key]['startup']]
    out[key] = entry
  return out


def _compile_seconds(lowered, options=None) -> tuple[float, object]:
  start = time.perf_counter()
  compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
  return round(time.perf_counter() - start, 2), compiled


def init_probe() -> dict:
  """--init_probe (module doc)."""
  if REPO not in sys.path:
    sys.path.insert(0, REPO)
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import models  # pylint: disable=import-outside-toplevel
  config = default.get_config('quick')
  model = models.create(config.model).clone(legacy_names=True)  # As models.init jits it.
  args = (jax.random.PRNGKey(0), jnp.zeros((1, *config.data.image_size, 3), jnp.float32))
  lowered = jax.jit(model.init).lower(*args)
  out, weights = {}, {}
  for name, options in (('default', None), ('O0', {'xla_backend_optimization_level': 0})):
    out[f'init_compile_s_{name}'], compiled = _compile_seconds(lowered, options)
    weights[name] = [np.asarray(w) for w in jax.tree.leaves(compiled(*args)['params'])]
  changed = sum(int((a != b).sum()) for a, b in zip(weights['default'], weights['O0']))
  out['weight_tensors'] = len(weights['default'])
  out['O0_changed_weights'] = f'{changed} of {sum(w.size for w in weights["default"])}'
  shapes = [w.shape for w in weights['default'] if w.ndim > 1]  # The drawn ones (kernels).
  out['drawn_tensors'] = len(shapes)
  for n in (1, 4, len(shapes)):
    draws = jax.jit(lambda key, n=n: [jax.random.normal(k, shape) for k, shape in
                                      zip(jax.random.split(key, n), shapes[:n])])
    out[f'normal_x{n}_compile_s'] = _compile_seconds(draws.lower(jax.random.PRNGKey(0)))[0]
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--init_probe', action='store_true',
                 help='only: what compiling the model\'s initialisation costs (module doc)')
  p.add_argument('--before', help='the other tree (a git worktree)')
  p.add_argument('--after', default=REPO, help='default: this tree')
  p.add_argument('--export',
                 help='dataset export of synthetic_screens/small (smsdd_jax.dataset_export)')
  p.add_argument('--reps', type=int, default=4, help='even: as many of each order')
  p.add_argument('--out', help='scratch folder for the runs')
  p.add_argument('--json', default=None, help='write the results here')
  args = p.parse_args(argv)
  if args.init_probe:
    print(json.dumps(init_probe(), indent=1))
    return 0
  if not (args.before and args.export and args.out):
    p.error('--before, --export and --out are needed (or --init_probe)')
  trees = {'before': os.path.abspath(args.before), 'after': os.path.abspath(args.after),
           'after+cache': os.path.abspath(args.after)}
  export = os.path.abspath(args.export)
  reps = [one_repetition(trees, os.path.abspath(args.out), export, r)
          for r in range(args.reps)]
  result = {'trees': {k: v for k, v in trees.items() if k != 'after+cache'},
            'reps': reps, 'median': summary(reps)}
  text = json.dumps(result, indent=1)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      f.write(text + '\n')
  print(json.dumps(result['median'], indent=1))
  return 0


if __name__ == '__main__':
  sys.exit(main())
