#!/usr/bin/env python3
"""Runs the paper's Table 2 protocol: configs x seeds (x folds) on one dataset,
then aggregates the results.

  python launch/sweep.py --out=runs/sweep [--configs=beta_a,beta_b,beta_c,beta_d,beta_e]
      [--seeds=0,1,2] [--kfold=K [--folds=0,1]] [--quick] [--workers=1] [--override=KEY=VALUE ...]
      [--data=NAME --builder_config=NAME --manual_dir=DIR --data_dir=DIR]
      [--run_floors] [--floors=PATH] [--compile_cache=DIR]
  python launch/sweep.py --out=runs/sweep --aggregate_only    # tables from what is there

Each run is `python -m smsdd_jax.main --config=configs/<variant>.py[:quick]
--workdir=OUT/<variant>_s<seed>[_f<fold>] --config.seed=<seed> ...`, in its own
process (up to --workers at once; the first alone until its dataset is built,
so that two never build the same TFDS dataset), its output in
OUT/<run>/log.txt. With
--kfold=K every seed runs every fold i of K (--config.data.kfold=K
--config.data.fold=i); --seeds then defaults to 0 alone; --folds keeps
only some folds (for a model too costly for all). Each run's
OUT/<run>/wall.jsonl records the wall seconds of every process that trained
it and the CPU it ran on. The runs share JAX's compilation cache
(--compile_cache, default ~/.cache/smsdd_jax/jax_compile; smsdd_jax/startup.py):
a program one run compiled (the model's initialisation, a variant's steps)
the next loads, with the same numbers; each run's log has its start-up line.

Resumable: a finished run (OUT/<run>/eval.json present) is skipped, an
unfinished one is rerun with the same command and resumes from its last
checkpoint. A run directory made with other arguments is refused (use another
--out). One launcher per OUT: a second is refused while the first lives
(OUT/.lock), and a run another process is training (its OUT/<run>/.lock held)
is skipped. The runs stop, as on Ctrl-C, when the launcher ends, however it
ends (kill -9 included). At the end, from every finished run:

  OUT/results.csv   one row per variant, seed, fold and split (val, test):
                    report.CSV_COLUMNS (metrics at the threshold chosen on val)
  OUT/results.md    mean ± std per variant, val and test, beside the paper's Table 2
                    and the floors; runs whose eval.json health says "collapsed"
                    counted per variant; each variant against beta_a (beta = 0)
                    paired on the same seeds and folds: mean difference of test
                    AUROC and balanced accuracy, bootstrap 95% interval,
                    signed-rank p, verdict (smsdd_jax.stats)

Floors: trivial models on the same splits (launch/floors.py). Their rows join
both files when OUT/floors.json exists (or --floors=PATH names one);
--run_floors computes OUT/floors.json (once, after the runs) with the sweep's
data arguments, --kfold and data.* overrides.

A run whose records cannot be read (a damaged OUT/<run>/sweep.json, eval.json,
config.json) is named with the file, neither trained nor aggregated, and the
others go on; fix or remove it and rerun. `python -m smsdd_jax.report
--sweep=OUT` follows the same rule.

Figures: python -m smsdd_jax.report --sweep=OUT. Exit status: 0 when every
run finished, 1 when one failed (its log is named), was left to the process
training it or could not be read (with --aggregate_only too), 2 for a usage
error or an OUT in use.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from typing import Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from smsdd_jax import report, rundir, sweep_runs  # pylint: disable=wrong-import-position

DEFAULT_CONFIGS = ('beta_a', 'beta_b', 'beta_c', 'beta_d', 'beta_e')
# smsdd_jax/main.py stops when the process this names ends (LAUNCHER_ENV there).
LAUNCHER_ENV = 'SMSDD_LAUNCHER_PID'
WALL = 'wall.jsonl'  # Per run: wall seconds of each process that trained it.
# smsdd_jax/main.py's --compile_cache default: the runs share one compilation cache.
COMPILE_CACHE_ENV = 'SMSDD_COMPILE_CACHE'
_print_lock = threading.Lock()


class UsageError(Exception):
  pass


def _say(message: str) -> None:
  with _print_lock:
    print(f'{datetime.datetime.now():%H:%M:%S} {message}', flush=True)


def _ints(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(',') if x.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected comma-separated integers, got {text!r}') from None


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python launch/sweep.py',
      description='Configs x seeds (x folds) of SMSDD on one dataset, resumable, '
      'aggregated into OUT/results.csv and OUT/results.md.')
  p.add_argument('--out', required=True, help='sweep directory (one sub-folder per run)')
  p.add_argument('--configs', default=','.join(DEFAULT_CONFIGS),
                 help='comma-separated config names in configs/ or paths to config '
                 'files (default: %(default)s)')
  p.add_argument('--seeds', type=_ints, default=None,
                 help='comma-separated seeds (default 0,1,2; 0 with --kfold)')
  p.add_argument('--kfold', type=int, default=0,
                 help='K > 0: run every fold 0..K-1 of a K-fold split (each seed)')
  p.add_argument('--folds', type=_ints, default=None,
                 help='with --kfold: only these folds (e.g. 0,1 for a costly width); '
                 'default every fold')
  p.add_argument('--quick', action='store_true',
                 help="the configs' :quick variant (tiny model and data, minutes on a CPU)")
  p.add_argument('--learn', action='store_true',
                 help="the configs' :learn recipe (batch norm, warm-up + cosine, weight "
                 'decay, augmentation; configs/default.py apply_learn) instead of the paper\'s')
  p.add_argument('--workers', type=int, default=1,
                 help='runs at once, each its own process (default 1; a 2-core CPU '
                 'gains little from more; on one GPU each gets 1/N of its memory)')
  p.add_argument('--override', action='append', default=[], metavar='KEY=VALUE',
                 help='config override for every run, e.g. num_epochs=5 or '
                 'eval.threshold_rule=max_escape (repeatable)')
  p.add_argument('--data', default=None, help='config.data.name (TFDS builder)')
  p.add_argument('--builder_config', default=None, help='config.data.builder_config')
  p.add_argument('--manual_dir', default=None, help='config.data.manual_dir')
  p.add_argument('--data_dir', default=None, help='config.data.data_dir (TFDS data_dir)')
  p.add_argument('--floors', default=None,
                 help='launch/floors.py JSON to put beside the variants '
                 '(default OUT/floors.json when it exists)')
  p.add_argument('--run_floors', action='store_true',
                 help='after the runs, compute OUT/floors.json with launch/floors.py on '
                 'the same data and folds (skipped when it exists)')
  p.add_argument('--aggregate_only', action='store_true',
                 help='launch nothing: aggregate the finished runs found in OUT')
  p.add_argument('--compile_cache', default=os.environ.get(COMPILE_CACHE_ENV, 'default'),
                 help='folder of JAX\'s compilation cache the runs share (main.py '
                 '--compile_cache): each compiles a program once, later runs load it '
                 '(the same numbers, ~10-15 s less start-up per run on a CPU); default '
                 '$SMSDD_COMPILE_CACHE, else "default": ~/.cache/smsdd_jax/jax_compile; '
                 'empty: off')
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  return p


def repo_path(path: str) -> str:
  """A path as the runs (cwd = the repo) see it: relative to the repo, so
  the small files a sweep keeps (sweep.json, config.json) hold no path of
  this machine and a copy of the sweep resumes on another."""
  return os.path.relpath(os.path.abspath(path), REPO)


def config_path(name: str) -> tuple[str, str]:
  """(variant name, config file path relative to the repo when inside it)."""
  path = name if name.endswith('.py') else os.path.join('configs', f'{name}.py')
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    raise UsageError(f'no config file {full}')
  return os.path.splitext(os.path.basename(path))[0], path


def _seeds(args) -> list[int]:
  return args.seeds if args.seeds is not None else ([0] if args.kfold else [0, 1, 2])


def plan(args) -> list[dict]:
  """Every run: name, variant, seed, fold and its main.py arguments (the
  workdir excepted, which follows from OUT and the name)."""
  if args.kfold < 0 or args.workers < 1:
    raise UsageError('--kfold must be >= 0 and --workers >= 1')
  seeds = _seeds(args)
  if not seeds:
    raise UsageError('--seeds is empty')
  folds = list(range(args.kfold)) if args.kfold else [None]
  if args.folds is not None:
    if not args.kfold or not args.folds or not set(args.folds) <= set(folds):
      raise UsageError(f'--folds={",".join(map(str, args.folds))}: expected folds of '
                       f'--kfold={args.kfold} (0..{args.kfold - 1})')
    folds = sorted(set(args.folds))
  data = [(f'--config.data.{key}', value) for key, value in (
      ('name', args.data), ('builder_config', args.builder_config),
      ('manual_dir', args.manual_dir and repo_path(args.manual_dir)),
      ('data_dir', args.data_dir and repo_path(args.data_dir))) if value]
  overrides = []
  for item in args.override:
    key, sep, value = item.partition('=')
    key = key.strip().removeprefix('--').removeprefix('config.')
    if not sep or not key:
      raise UsageError(f'--override={item!r}: expected KEY=VALUE, e.g. num_epochs=5')
    if key in ('seed', 'data.kfold', 'data.fold'):
      raise UsageError(f'--override={item!r}: set {key} with --seeds / --kfold')
    overrides.append((f'--config.{key}', value))
  variants = [config_path(n.strip()) for n in args.configs.split(',') if n.strip()]
  runs = []
  # Seed and fold outermost, variants innermost: a sweep cut short (or still
  # running) has whole paired sets (every variant on the same seed and fold)
  # rather than every fold of the first variant and nothing of the last.
  for seed in seeds:
    for fold in folds:
      for variant, path in variants:
        run = f'{variant}_s{seed}' + ('' if fold is None else f'_f{fold}')
        modes = ','.join(m for m, on in (('quick', args.quick), ('learn', args.learn)) if on)
        flags = [f'--config={path}{":" + modes if modes else ""}',
                 f'--config.seed={seed}']
        if fold is not None:
          flags += [f'--config.data.kfold={args.kfold}', f'--config.data.fold={fold}']
        flags += [f'{k}={v}' for k, v in data + overrides]
        runs.append({'run': run, 'variant': variant, 'seed': seed, 'fold': fold,
                     'args': flags})
  if len({r['run'] for r in runs}) != len(runs):
    raise UsageError('two configs share a file name: runs would share a directory')
  return runs


def state_of(out: str, run: dict) -> str:
  """'finished', 'partial' (resume it), 'new', 'running' (a live process
  holds its lock: training it again at once would write every record twice),
  or raises UsageError if the directory belongs to other arguments, ValueError
  naming its sweep.json if that cannot be read (a damaged run)."""
  workdir = os.path.join(out, run['run'])
  meta_path = os.path.join(workdir, rundir.SWEEP)
  if not os.path.isdir(workdir) or not os.listdir(workdir):
    return 'new'
  if not os.path.isfile(meta_path):
    raise UsageError(f'{workdir} exists but was not made by this launcher (no sweep.json)')
  record = rundir.read_json(meta_path, 'sweep record')
  if not isinstance(record, dict) or 'args' not in record:
    raise ValueError(f'cannot read sweep record {meta_path}: no "args" entry')
  recorded = record['args']
  if recorded != run['args']:
    raise UsageError(f'{workdir} was run with other arguments:\n  there: {recorded}\n'
                     f'  now:   {run["args"]}\nuse another --out (or remove it)')
  if rundir.owner(workdir) is not None:
    return 'running'
  return 'finished' if os.path.isfile(os.path.join(workdir, rundir.EVAL)) else 'partial'


def child_env(workers: int, compile_cache: str = '') -> dict:
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
  env[LAUNCHER_ENV] = str(os.getpid())  # The runs end with this process.
  # A run of a sweep compiles what the one before compiled (the model's
  # initialisation, the steps of a variant seen on another seed): shared
  # through JAX's persistent cache (smsdd_jax/startup.py). Not in the runs'
  # arguments: it changes no number, and sweep.json's arguments must match.
  env.pop(COMPILE_CACHE_ENV, None)
  if compile_cache:
    env[COMPILE_CACHE_ENV] = (compile_cache if compile_cache == 'default'
                              else os.path.abspath(os.path.expanduser(compile_cache)))
  if workers > 1:
    # Several processes on one GPU: each may take only its share of the memory
    # (JAX preallocates 75% by default). No effect on a CPU.
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / workers:.3f}')
  return env


def execute(out: str, run: dict, env: dict, state: str,
            data_ready: threading.Event, first: bool) -> tuple[str, int, float]:
  """Runs one training process; output appended to OUT/<run>/log.txt.

  The first run opens `data_ready` once its data_stats.json exists (the
  dataset is built by then) or it ends; the others wait for that, so that
  parallel runs never build the same TFDS dataset at once."""
  if not first:
    data_ready.wait()
  workdir = os.path.join(out, run['run'])
  os.makedirs(workdir, exist_ok=True)
  meta = {k: run[k] for k in ('variant', 'seed', 'fold', 'args')}
  rundir.write_json(os.path.join(workdir, rundir.SWEEP), meta)
  cmd = [sys.executable, '-m', 'smsdd_jax.main', *run['args'], f'--workdir={workdir}']
  _say(f'start {run["run"]} ({state})')
  t0 = time.time()
  try:
    with open(os.path.join(workdir, 'log.txt'), 'a', encoding='utf-8') as log:
      log.write(f'=== {datetime.datetime.now().isoformat(timespec="seconds")} '
                f'{" ".join(cmd)}\n')
      log.flush()
      proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              env=env, stdin=subprocess.DEVNULL)
      if first:
        stats = os.path.join(workdir, rundir.DATA_STATS)
        while proc.poll() is None and not os.path.exists(stats):
          time.sleep(0.5)
        data_ready.set()
      rc = proc.wait()
  finally:
    data_ready.set()
  seconds = time.time() - t0
  _record_wall(workdir, state, rc, seconds)
  return run['run'], rc, seconds


def cpu_name() -> str:
  """The processor's model name, so a time says which machine made it."""
  return rundir.cpu_field('model name') or platform.processor() or platform.machine()


def _record_wall(workdir: str, state: str, rc: int, seconds: float) -> None:
  """Appends this process's wall time to OUT/<run>/wall.jsonl (one line per
  segment: a resumed run has several), the run's cost on this machine."""
  line = {'ended': datetime.datetime.now().isoformat(timespec='seconds'), 'state': state,
          'exit': rc, 'seconds': round(seconds, 1), 'cpu': cpu_name(),
          'cores': os.cpu_count()}
  with open(os.path.join(workdir, WALL), 'a', encoding='utf-8') as f:
    f.write(json.dumps(line) + '\n')


def _last_line(path: str) -> str:
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      lines = [line.strip() for line in f if line.strip()]
    return lines[-1] if lines else ''
  except OSError:
    return ''


def floors_path(out: str, given: Optional[str] = None) -> Optional[str]:
  """The floors JSON to use: the one given, else OUT/floors.json if present."""
  if given:
    if not os.path.isfile(given):
      raise UsageError(f'--floors={given}: no such file')
    return given
  path = os.path.join(out, 'floors.json')
  return path if os.path.isfile(path) else None


def aggregate(out: str, meta: dict, floors: Optional[str] = None
              ) -> tuple[str, str, int, list[str]]:
  """results.csv and results.md from every finished run in OUT (and the
  floors JSON, if any), and the runs left out. A run whose files cannot be
  read is named with the reason, here and in results.md, and left out; the
  others are aggregated (the caller's exit status is then 1, as report's)."""
  unreadable = {}
  runs = report.load_runs(out, unreadable)
  for name, why in unreadable.items():
    _say(f'left out {name}: {why}')
  floor_json = report.load_floors(floors) if floors else None
  table = report.rows(runs)
  csv_path, md_path = os.path.join(out, 'results.csv'), os.path.join(out, 'results.md')
  report.write_csv(csv_path, table + report.floor_rows(floor_json))
  missing = [r['run'] for r in runs if not r['finished']]
  text = report.markdown(table, meta, missing, floor_json,
                         sweep_runs.relative_reasons(unreadable, out))
  rundir.write_text(md_path, text)
  return csv_path, md_path, len(table), sorted(unreadable)


def floors_command(args, out: str) -> list[str]:
  """launch/floors.py on the sweep's data and folds, writing OUT/floors.json."""
  cmd = [sys.executable, os.path.join(REPO, 'launch', 'floors.py'), '--model=all',
         f'--kfold={args.kfold}', f'--out={os.path.join(out, "floors.json")}']
  for key in ('data', 'builder_config', 'manual_dir', 'data_dir'):
    value = getattr(args, key)
    if value is not None:
      if key.endswith('_dir') and value:
        value = repo_path(value)
      cmd.append(f'--{key}={value}')
  for item in args.override:
    key, _, value = item.partition('=')
    key = key.strip().removeprefix('--').removeprefix('config.')
    if key.startswith('data.'):
      cmd.append(f'--set={key.removeprefix("data.")}={value}')
  return cmd


def run_floors(args, out: str, env: dict) -> bool:
  """OUT/floors.json by launch/floors.py unless it exists; output in
  OUT/floors_log.txt. True when the file is there afterwards."""
  if os.path.isfile(os.path.join(out, 'floors.json')):
    _say('skip floors: OUT/floors.json exists')
    return True
  cmd = floors_command(args, out)
  _say('start floors')
  with open(os.path.join(out, 'floors_log.txt'), 'a', encoding='utf-8') as log:
    log.write(f'=== {datetime.datetime.now().isoformat(timespec="seconds")} '
              f'{" ".join(cmd)}\n')
    log.flush()
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                         stdin=subprocess.DEVNULL)
  log_path = os.path.join(out, 'floors_log.txt')
  if rc:
    _say(f'FAILED floors (exit {rc}, {log_path}): {_last_line(log_path)}')
  else:
    _say('done floors')
  return rc == 0


def _meta(args) -> dict:
  meta = {'configs': args.configs, 'quick': args.quick, 'learn': args.learn,
          'seeds': ','.join(map(str, _seeds(args)))}
  if args.kfold:
    meta['kfold'] = args.kfold
  if args.folds is not None:
    meta['folds'] = ','.join(map(str, sorted(set(args.folds))))
  for key in ('data', 'builder_config', 'manual_dir'):
    if getattr(args, key):
      meta[key] = getattr(args, key)
  if args.override:
    meta['overrides'] = ' '.join(args.override)
  return meta


def _recorded_meta(out: str) -> dict:
  """The 'Sweep:' line of the tables, from the arguments OUT/sweep.json
  recorded when the sweep ran ({} without one), so that re-aggregating keeps
  saying what made the runs."""
  path = os.path.join(out, rundir.SWEEP)
  if not os.path.isfile(path):
    return {}
  try:
    recorded = rundir.read_json(path, 'sweep record')
    if not isinstance(recorded, dict):
      raise ValueError(f'cannot read sweep record {path}: not a JSON object')
  except ValueError as e:
    raise UsageError(f'{e}; rerun the launcher with the sweep\'s arguments to rewrite it, '
                     'or remove it (the tables then name no arguments)') from None
  return {k: v for k, v in recorded.items() if k != 'argv'}


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  out = os.path.abspath(args.out)
  try:
    if args.aggregate_only:
      if not os.path.isdir(out):
        raise UsageError(f'{out} does not exist')
      csv_path, md_path, n, left_out = aggregate(out, _recorded_meta(out),
                                                 floors_path(out, args.floors))
      _say(f'aggregated {n} rows: {csv_path}, {md_path}')
      return _left_out(left_out)
    runs = plan(args)
    floors_path(out, args.floors)  # Refuses a missing --floors file before launching.
    if args.dry_run:
      return dry_run(args, out, runs)
    # One launcher per OUT for as long as it lives: a second would take the
    # first's half-made runs for unfinished ones and train them at once.
    with rundir.Claim(out, 'sweep directory', '--out'):
      return launch(args, out, runs, argv)
  except (UsageError, rundir.WorkdirError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def _left_out(names: list[str]) -> int:
  """The exit status of an aggregation: 1 if a run was left out (named above)."""
  if names:
    _say(f'{len(names)} run(s) could not be read (named above): {", ".join(names)}; '
         'fix or remove them and rerun')
  return 1 if names else 0


def _states(out: str, runs: list[dict]) -> dict:
  """{run: state_of}, saying which runs are skipped ('damaged': its sweep.json
  cannot be read, named here). Raises UsageError, before anything is
  launched, for a run directory made with other arguments."""
  states = {}
  for r in runs:
    try:
      states[r['run']] = state_of(out, r)
    except ValueError as e:
      states[r['run']] = 'damaged'
      _say(f'skip {r["run"]}: {e}; fix or remove {os.path.join(out, r["run"])} to rerun it')
  for name, state in states.items():
    workdir = os.path.join(out, name)
    if state == 'finished':
      _say(f'skip {name}: finished (eval.json)')
    elif state == 'running':
      _say(f'skip {name}: being trained by process {rundir.owner(workdir) or "?"} '
           f'({os.path.join(workdir, rundir.LOCK)}); rerun when it has ended')
  return states


def dry_run(args, out: str, runs: list[dict]) -> int:
  states = _states(out, runs)
  for r in runs:
    if states[r['run']] in ('new', 'partial'):
      print(' '.join(['python -m smsdd_jax.main', *r['args'],
                      f'--workdir={os.path.join(out, r["run"])}']))
  if args.run_floors and not os.path.isfile(os.path.join(out, 'floors.json')):
    print(' '.join(floors_command(args, out)))
  return 1 if 'damaged' in states.values() else 0


def launch(args, out: str, runs: list[dict], argv) -> int:
  """Runs what is neither finished nor running elsewhere, then aggregates;
  the caller owns OUT."""
  states = _states(out, runs)
  todo = [r for r in runs if states[r['run']] in ('new', 'partial')]
  busy = [name for name, state in states.items() if state == 'running']
  damaged = [name for name, state in states.items() if state == 'damaged']
  rundir.write_json(os.path.join(out, 'sweep.json'),
                    {'argv': sys.argv[1:] if argv is None else list(argv), **_meta(args)})
  _say(f'{len(runs)} runs, {len(runs) - len(todo) - len(busy) - len(damaged)} finished, '
       + (f'{len(damaged)} unreadable, ' if damaged else '')
       + f'{len(todo)} to run with {args.workers} worker(s); logs in {out}/<run>/log.txt')
  env = child_env(args.workers, args.compile_cache)
  failed = []
  data_ready = threading.Event()
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.workers)
  try:
    futures = [pool.submit(execute, out, r, env, states[r['run']], data_ready, i == 0)
               for i, r in enumerate(todo)]
    for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
      name, rc, seconds = future.result()
      log = os.path.join(out, name, 'log.txt')
      if rc == 0:
        _say(f'[{done}/{len(todo)}] done {name} in {seconds:.0f} s')
      else:
        failed.append(name)
        _say(f'[{done}/{len(todo)}] FAILED {name} (exit {rc}, {log}): {_last_line(log)}')
  except KeyboardInterrupt:
    data_ready.set()
    pool.shutdown(wait=True, cancel_futures=True)
    print('interrupted: rerun the same command to resume', file=sys.stderr)
    return 130
  pool.shutdown(wait=True)
  if args.run_floors and not run_floors(args, out, env):
    failed.append('floors')
  csv_path, md_path, n, left_out = aggregate(out, _meta(args), floors_path(out, args.floors))
  _say(f'results: {csv_path} ({n} rows), {md_path}')
  unreadable = _left_out(left_out)
  if busy:
    _say(f'{len(busy)} run(s) left to the process training them: {", ".join(busy)}; '
         'rerun when they have ended')
  if failed:
    _say(f'{len(failed)} run(s) failed: {", ".join(failed)}; rerun to retry them')
  return 1 if failed or busy or unreadable else 0


if __name__ == '__main__':
  sys.exit(main())
