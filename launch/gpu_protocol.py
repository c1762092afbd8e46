#!/usr/bin/env python3
"""The paper's scale on one GPU in one command, within a time budget.

  python launch/gpu_protocol.py --out=/tmp/protocol --archive=$OUT/protocol.tar.gz \
      [--exports=exports/msd_screens_110x230.npz,exports/magnetic_tile_110x230.npz]
      [--parts=twin,bench,protocol] [--budget_s=500] [--seeds=0,1] [--quick]
  python launch/gpu_protocol.py --out=unused --dry_run [--first_step]   # the recipe, the commands

runs, in this order, without TensorFlow (the data are dataset exports:
smsdd_jax/dataset_export.py, read by smsdd_jax/numpy_pipeline.py):

  twin      the PyTorch twin of the train step (launch/torch_siamese_vgg.py)
            at --bench_pairs, bfloat16 autocast (--twin_dtypes), torch.compile
            on a GPU (eager if compiling fails), in a child process before JAX
            takes the GPU; skipped, saying why, where torch is missing
  bench     the JAX train step at the same size in float32 and bfloat16
            (smsdd_jax.benchmark.bench_train_step: median step time, MFU on a
            GPU) and its speed over the twin's in the same dtype
  protocol  the Table 2 protocol: for each seed, export, fold and variant,
            configs/<variant>.py:learn (full width; ':quick,learn' with
            --quick) trained and evaluated on the export by
            train.train_and_evaluate, one run after another in this process:
            runs of one shape share their compiled programs through JAX's
            persistent compilation cache (the runs of one dataset differ in
            beta only, so its five betas compile and its other folds read
            them back). Each run writes what a launch/sweep.py run writes,
            in OUT/<sweep>/<variant>_s<seed>_f<fold>/ (sweep.json, config.json,
            metrics.jsonl, eval.json, ...), and its checkpoints are deleted when
            it ends (a full-width state is 180 MB). OUT/<sweep>/floors.json is
            the export's floors: the file <export>.floors.json beside it (made
            here with launch/floors.py), else computed by launch/floors.py in a
            child process on the CPU while the runs use the GPU. After every
            run `launch/sweep.py --out=OUT/<sweep> --aggregate_only` rewrites
            the sweep's results.md and results.csv.

Time: the whole command stops by --budget_s seconds after its start. A run
is not started when the runs of its export so far say it would not end in
time; one still going at the deadline is stopped between steps (train.py's
Ctrl-C path) and left unfinished, which the tables leave out. Seed, export,
fold, variant is the loop order, so a cut leaves whole folds of paired
variants. At the end: OUT/protocol.json (speed, each run's seconds, status,
health and test AUROC, compilations and cache reads), the tables, and with
--archive one .tar.gz of OUT's small files (no checkpoints, npz or events):
the GPU machine hands back only a few files.

On the GPU machine (no TensorFlow, no ml-collections; the raw data does
not travel) the exports, their floors and the ml-collections wheel travel with
the tree: see README.md, "Training without TensorFlow". The same command at
1/16 width on a CPU (--quick) is the proof before GPU time is spent
(tests/test_gpu_protocol.py runs it on a tiny export with TensorFlow
blocked).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

DEFAULT_EXPORTS = ('exports/msd_screens_110x230.npz', 'exports/magnetic_tile_110x230.npz')
DEFAULT_CONFIGS = ('beta_a', 'beta_b', 'beta_c', 'beta_d', 'beta_e')
TWIN = os.path.join('launch', 'torch_siamese_vgg.py')
# Kept out of the archive: large, and not what the tables or a reader need.
ARCHIVE_SKIP = ('checkpoints', 'checkpoints_best', 'tensorboard', 'jax_cache', '.lock')
RESERVE_S = 20.0  # Kept at the end for the tables, protocol.json and the archive.

log = logging.getLogger('gpu_protocol')


class Clock:
  """Seconds left of the budget, from the command's start."""

  def __init__(self, budget_s: float):
    self.start, self.budget = time.monotonic(), budget_s

  def elapsed(self) -> float:
    return time.monotonic() - self.start

  def left(self) -> float:
    return self.budget - self.elapsed()


def _ints(text: str) -> list[int]:
  try:
    return [int(x) for x in text.split(',') if x.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}') \
        from None


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python launch/gpu_protocol.py',
                              description=__doc__.splitlines()[0])
  p.add_argument('--out', required=True, help='folder for the runs, tables and protocol.json')
  p.add_argument('--archive', default='', help="a .tar.gz of OUT's small files, rewritten "
                 'after every run (e.g. $OUT/protocol.tar.gz on the GPU machine)')
  p.add_argument('--exports', default=','.join(DEFAULT_EXPORTS),
                 help='comma-separated dataset exports (default: %(default)s)')
  p.add_argument('--parts', default='twin,bench,protocol',
                 help='comma-separated, run in this order: twin, bench, protocol')
  p.add_argument('--budget_s', type=float, default=500.0,
                 help='seconds from the start by which everything has stopped')
  p.add_argument('--configs', default=','.join(DEFAULT_CONFIGS), help='variants in configs/')
  p.add_argument('--seeds', type=_ints, default=[0, 1], help='comma-separated seeds')
  p.add_argument('--kfold', type=int, default=5)
  p.add_argument('--folds', type=_ints, default=None, help='default: all of --kfold')
  p.add_argument('--quick', action='store_true', help="the configs' :quick size (a CPU)")
  p.add_argument('--override', action='append', default=[], metavar='KEY=VALUE',
                 help='config override for every run, e.g. num_epochs=2 (repeatable)')
  p.add_argument('--bench_pairs', type=int, default=256, help='pairs per timed step')
  p.add_argument('--bench_steps', type=int, default=20, help='timed steps (median)')
  p.add_argument('--bench_dtypes', default='float32,bfloat16',
                 help='compute dtypes of the JAX step')
  p.add_argument('--twin_dtypes', default='bfloat16',
                 help="the twin's (each a torch.compile on a GPU, a minute or so)")
  p.add_argument('--twin_timeout_s', type=float, default=240.0,
                 help='most seconds the twin may take in all')
  p.add_argument('--keep_checkpoints', action='store_true')
  p.add_argument('--dry_run', action='store_true',
                 help='print the recipe the runs train with and their commands; run nothing')
  p.add_argument('--first_step', action='store_true',
                 help="with --dry_run: one train step of the first run's config here, on "
                 'random images of its input shape (its loss must be finite)')
  p.add_argument('--compile_cache', default='',
                 help='JAX persistent compilation cache (default OUT/jax_cache)')
  return p


def width(args) -> float:
  return 1 / 16 if args.quick else 1.0


# ------------------------------------------------------------------ speed


def torch_device() -> str:
  """'cuda', 'cpu' or '' (no torch), asked of a child process so that this
  one neither imports torch nor touches the GPU."""
  probe = subprocess.run([sys.executable, '-c', 'import torch; print("cuda" if '
                          'torch.cuda.is_available() else "cpu")'],
                         capture_output=True, text=True, check=False)
  return probe.stdout.strip() if probe.returncode == 0 else ''


def run_twin(args, clock: Clock) -> dict:
  """The twin's step in each of --twin_dtypes: {dtype: its JSON line}."""
  device = torch_device()
  if not device:
    return {'skipped': 'torch is not installed here'}
  out, deadline = {'device': device}, time.monotonic() + min(args.twin_timeout_s,
                                                             max(clock.left() - 60, 0))
  for dtype in args.twin_dtypes.split(','):
    cmd = [sys.executable, TWIN, '--device', device, '--pairs', str(args.bench_pairs),
           '--steps', str(args.bench_steps), '--warmup', '3',
           '--width-mult', str(width(args))]
    cmd += ['--bf16'] if dtype == 'bfloat16' else []
    attempts = [cmd + ['--compile'], cmd] if device == 'cuda' else [cmd]
    for attempt in attempts:
      left = deadline - time.monotonic()
      if left < 10:
        out[dtype] = {'skipped': 'no time left in --twin_timeout_s'}
        break
      out[dtype] = _json_child(attempt, left)
      if 'error' not in out[dtype]:
        break
    log.info('twin %s: %s', dtype, out[dtype])
  return out


def _json_child(cmd: list[str], timeout: float) -> dict:
  """The JSON object a child prints last, or {'error': why}."""
  try:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {'error': f'timed out after {timeout:.0f} s', 'cmd': ' '.join(cmd)}
  lines = done.stdout.strip().splitlines()
  if done.returncode or not lines:
    tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
    return {'error': f'exit {done.returncode}: {tail}', 'cmd': ' '.join(cmd)}
  return {**json.loads(lines[-1]), 'cmd': ' '.join(cmd)}


def run_bench(args, twin: dict) -> dict:
  """The JAX step in float32 and bfloat16 at --bench_pairs, each beside the
  twin's pairs/s in the same dtype."""
  from smsdd_jax import benchmark  # pylint: disable=import-outside-toplevel
  out = {}
  for dtype in args.bench_dtypes.split(','):
    r = benchmark.bench_train_step(args.bench_pairs, args.bench_steps, width(args), dtype)
    other = (twin or {}).get(dtype, {})
    if 'pairs_per_s' in other:
      r['twin_pairs_per_s'] = other['pairs_per_s']
      r['speed_over_twin'] = round(r['pairs_per_s'] / other['pairs_per_s'], 3)
    out[dtype] = r
    log.info('jax step %s, %d pairs: %.1f pairs/s%s%s', dtype, args.bench_pairs,
             r['pairs_per_s'], f', MFU {r["mfu"]:.1%}' if 'mfu' in r else '',
             f', {r["speed_over_twin"]}x the twin' if 'speed_over_twin' in r else '')
  return out


# ------------------------------------------------------------------ the plan


def export_info(path: str) -> dict:
  """What a run needs to know of an export (read without its images)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from smsdd_jax import dataset_export  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise ValueError(f'--exports: no file {path} (write it with python -m '
                     'smsdd_jax.dataset_export; README "Training without TensorFlow")')
  with np.load(path, allow_pickle=False) as data:
    if 'meta' not in data.files:
      raise ValueError(f'--exports: {path} is not a dataset export')
    meta = json.loads(str(data['meta']))
  if meta.get('format') != dataset_export.FORMAT:
    raise ValueError(f'--exports: {path} has format {meta.get("format")!r}')
  return meta


def sweep_name(meta: dict, args) -> str:
  size = 'quick' if args.quick else 'full'
  return f'{meta["name"]}_k{args.kfold}_{size}_learn'


def data_flags(meta: dict, path: str) -> list[str]:
  """main.py flags that put a run on the export: its dataset, where it was
  built from (recorded, not read), the source, and any input setting that is
  not configs/default.py's."""
  from configs import default  # pylint: disable=import-outside-toplevel
  built, d = meta['data'], default.get_config().data
  flags = [f'--config.data.name={meta["name"]}']
  if built.get('manual_dir'):
    flags.append(f'--config.data.manual_dir={built["manual_dir"]}')
  for key in ('aspect', 'channels'):
    if built.get(key) != d[key]:
      flags.append(f'--config.data.{key}={built[key]}')
  if tuple(meta['image_size']) != tuple(d.image_size):
    flags.append(f'--config.data.image_size=({meta["image_size"][0]},{meta["image_size"][1]})')
  return flags + ['--config.data.source=export', f'--config.data.export_path={path}']


def plan(args, exports: dict) -> list[dict]:
  """Every run, seed-major then export, fold, variant: main.py's arguments
  for it, as launch/sweep.py records them."""
  folds = args.folds if args.folds is not None else list(range(args.kfold))
  modes = 'quick,learn' if args.quick else 'learn'
  variants = [v.strip() for v in args.configs.split(',') if v.strip()]
  for v in variants:
    if not os.path.isfile(os.path.join(REPO, 'configs', f'{v}.py')):
      raise ValueError(f'--configs: no configs/{v}.py')
  for f in folds:
    if not 0 <= f < args.kfold:
      raise ValueError(f'--folds: {f} is not in [0, {args.kfold})')
  overrides = []
  for item in args.override:
    key, sep, value = item.partition('=')
    key = key.strip().removeprefix('--').removeprefix('config.')
    if not sep or not key or key in ('seed', 'data.kfold', 'data.fold'):
      raise ValueError(f'--override={item!r}: expected KEY=VALUE (not seed or folds)')
    overrides.append(f'--config.{key}={value}')
  runs = []
  for seed in args.seeds:
    for path, meta in exports.items():
      for fold in folds:
        for variant in variants:
          runs.append({
              'sweep': sweep_name(meta, args), 'run': f'{variant}_s{seed}_f{fold}',
              'variant': variant, 'seed': seed, 'fold': fold, 'export': path,
              'args': [f'--config=configs/{variant}.py:{modes}', f'--config.seed={seed}',
                       f'--config.data.kfold={args.kfold}', f'--config.data.fold={fold}',
                       *data_flags(meta, path), *overrides]})
  return runs


def load_config(argv: list[str]):
  """The config main.py makes of these flags (the same parser, so the same
  overrides and errors)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  values, argv = flags.FlagValues(), ['gpu_protocol', *argv]
  # sys_argv: the override flags (--config.KEY) are defined from these.
  config_flags.DEFINE_config_file('config', None, 'config file', flag_values=values,
                                  lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


# The fields that make a recipe, printed by --dry_run whatever their value.
RECIPE_FIELDS = ('recipe', 'model.width_mult', 'model.head', 'model.batch_norm', 'model.dtype',
                 'batch_size', 'num_epochs', 'optimizer.name', 'optimizer.learning_rate',
                 'optimizer.schedule', 'optimizer.warmup_steps', 'optimizer.weight_decay',
                 'optimizer.grad_clip_norm', 'loss.beta')


def recipe_lines(config) -> list[str]:
  """RECIPE_FIELDS of a run's config, then every other field that is not
  configs/default.py's (data location and fold fields aside)."""
  from configs import default  # pylint: disable=import-outside-toplevel
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  now = traverse_util.flatten_dict(config.to_dict(), sep='.')
  base = traverse_util.flatten_dict(default.get_config().to_dict(), sep='.')
  skip = {'seed', 'data.fold', 'data.export_path', 'data.manual_dir', 'data.source'}
  other = [k for k in now if k not in RECIPE_FIELDS and k not in skip
           and now[k] != base.get(k, object())]
  return [f'  {k} = {now[k]!r}' for k in (*RECIPE_FIELDS, *other)]


def first_step(config) -> tuple[float, float]:
  """(seconds, loss) of one jitted train step of `config` (compile
  included) on random images of its input shape, on this machine."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from smsdd_jax import models, step as step_lib  # pylint: disable=import-outside-toplevel
  model = models.create(config.model)
  tx = step_lib.make_optimizer(config.optimizer, total_steps=100)
  state = step_lib.create_train_state(config, model, tx)
  train_step = step_lib.make_train_step(model, tx, config.loss)
  rng, n = np.random.default_rng(0), config.batch_size
  labels = rng.integers(0, 2, (2, n)).astype(np.int32)
  shape = (n, *config.data.image_size, 3)
  batch = {'image_a': rng.standard_normal(shape, np.float32),
           'image_b': rng.standard_normal(shape, np.float32),
           'label_a': labels[0], 'label_b': labels[1],
           'same': (labels[0] == labels[1]).astype(np.float32)}
  t = time.time()
  _, metrics = train_step(state, batch)
  loss = float(jax.device_get(metrics['loss']))
  return time.time() - t, loss


def dry_run(runs: list[dict], with_step: bool) -> int:
  """Prints the first run's recipe (the config main.py makes of its flags)
  and every run's command; with_step: its first train step here, exit 1 on a
  non-finite loss."""
  if not runs:
    print('no runs planned (--parts has no protocol)')
    return 0
  config = load_config(runs[0]['args'])
  print(f'recipe of {runs[0]["sweep"]}/{runs[0]["run"]} (every run differs only in '
        'seed, fold, variant and export):')
  print('\n'.join(recipe_lines(config)))
  for r in runs:
    print(' '.join(['python -m smsdd_jax.main', *r['args'],
                    f'--workdir=OUT/{r["sweep"]}/{r["run"]}']))
  if not with_step:
    return 0
  seconds, loss = first_step(config)
  print(f'first step here: loss {loss:.4f} in {seconds:.1f} s (compile included)')
  return 0 if math.isfinite(loss) else 1


# ------------------------------------------------------------------ running


class CompileCounter:
  """Compilations, persistent-cache reads and compile seconds since start."""

  def __init__(self):
    import jax  # pylint: disable=import-outside-toplevel
    self.counts = {'compiled': 0, 'read_from_cache': 0, 'compile_s': 0.0}
    jax.monitoring.register_event_listener(self._event)
    jax.monitoring.register_event_duration_secs_listener(self._duration)

  def _event(self, event: str, **kwargs) -> None:
    del kwargs
    if event == '/jax/compilation_cache/cache_hits':
      self.counts['read_from_cache'] += 1
    elif event == '/jax/compilation_cache/cache_misses':
      self.counts['compiled'] += 1

  def _duration(self, event: str, duration: float, **kwargs) -> None:
    del kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      self.counts['compile_s'] += duration

  def since(self, before: dict) -> dict:
    return {k: round(v - before[k], 2) if isinstance(v, float) else v - before[k]
            for k, v in self.counts.items()}


def setup_jax(args) -> None:
  """The persistent compilation cache (unless the environment names one)."""
  import jax  # pylint: disable=import-outside-toplevel
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir',
                      args.compile_cache or os.path.join(args.out, 'jax_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)


class Watchdog:
  """At the deadline, Ctrl-C (SIGINT) to this process, again every 10 s
  until cancelled: train.py stops a run between steps on the first, at
  once on the second."""

  def __init__(self, clock: Clock):
    self._stop = threading.Event()
    self.fired = False
    self._thread = threading.Thread(target=self._watch, args=(clock,), daemon=True)
    self._thread.start()

  def _watch(self, clock: Clock) -> None:
    wait = max(clock.left() - RESERVE_S, 0.0)
    while not self._stop.wait(wait):
      self.fired = True
      os.kill(os.getpid(), signal.SIGINT)
      wait = 10.0

  def cancel(self) -> None:
    self._stop.set()


def write_sweep_meta(out: str, meta: dict, path: str, args, device: str) -> None:
  from smsdd_jax import rundir  # pylint: disable=import-outside-toplevel
  os.makedirs(out, exist_ok=True)
  info = {'command': 'launch/gpu_protocol.py', 'configs': args.configs, 'quick': args.quick,
          'learn': True, 'seeds': ','.join(map(str, args.seeds)), 'kfold': args.kfold,
          'data': meta['name'], 'source': 'export', 'export': path, 'device': device}
  if meta['data'].get('manual_dir'):
    info['manual_dir'] = meta['data']['manual_dir']
  rundir.write_json(os.path.join(out, 'sweep.json'), info)


def one_run(run: dict, workdir: str, counter: CompileCounter, args) -> dict:
  """Trains and evaluates one run in this process; its log in workdir/log.txt."""
  from smsdd_jax import rundir, train  # pylint: disable=import-outside-toplevel
  os.makedirs(workdir, exist_ok=True)
  rundir.write_json(os.path.join(workdir, rundir.SWEEP),
                    {k: run[k] for k in ('variant', 'seed', 'fold', 'args')})
  handler = logging.FileHandler(os.path.join(workdir, 'log.txt'), encoding='utf-8')
  handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
  package = logging.getLogger('smsdd_jax')
  package.addHandler(handler)
  before, t0 = dict(counter.counts), time.monotonic()
  record = {'sweep': run['sweep'], 'run': run['run']}
  try:
    handler.stream.write(f'=== gpu_protocol: main.py {" ".join(run["args"])}\n')
    config = load_config(run['args'])
    config.checkpoint.every_steps = 10 ** 9  # The last step only: no resume needed here.
    config.checkpoint.max_to_keep = 1
    result = train.train_and_evaluate(config, workdir)
    record.update(status='finished', health=result['health']['status'],
                  test_auroc=result.get('test/auroc'))
  except KeyboardInterrupt:
    record['status'] = 'stopped at the deadline'
  except Exception as e:  # pylint: disable=broad-except
    package.error('%s', traceback.format_exc())
    record['status'] = f'failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
  finally:
    package.removeHandler(handler)
    handler.close()
  if not args.keep_checkpoints:
    for name in (rundir.CHECKPOINTS, rundir.CHECKPOINTS_BEST):
      shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
  record.update(seconds=round(time.monotonic() - t0, 1), **counter.since(before))
  return record


def aggregate(sweep_dir: str) -> str:
  """launch/sweep.py --aggregate_only on one sweep: its last output line."""
  done = subprocess.run([sys.executable, os.path.join(REPO, 'launch', 'sweep.py'),
                         f'--out={sweep_dir}', '--aggregate_only'],
                        capture_output=True, text=True, cwd=REPO, check=False)
  lines = (done.stdout + done.stderr).strip().splitlines()
  return lines[-1] if lines else f'exit {done.returncode}'


def start_floors(meta: dict, path: str, sweep_dir: str, args):
  """The export's floors into sweep_dir/floors.json: copied from
  <export>.floors.json, or a child process computing them (returned)."""
  target = os.path.join(sweep_dir, 'floors.json')
  ready = os.path.splitext(path)[0] + '.floors.json'
  if os.path.isfile(ready):
    shutil.copyfile(ready, target)
    return None
  cmd = [sys.executable, os.path.join(REPO, 'launch', 'floors.py'), f'--data={meta["name"]}',
         '--set=source=export', f'--set=export_path={path}', f'--kfold={args.kfold}',
         f'--out={target}']
  for key in ('aspect', 'channels'):
    if meta['data'].get(key):
      cmd.append(f'--set={key}={meta["data"][key]}')
  cmd.append(f'--set=image_size=({meta["image_size"][0]},{meta["image_size"][1]})')
  env = {**os.environ, 'OMP_NUM_THREADS': '4', 'OPENBLAS_NUM_THREADS': '4',
         'JAX_PLATFORMS': 'cpu'}
  log.info('floors of %s: computing (no %s)', path, ready)
  with open(os.path.join(sweep_dir, 'floors_log.txt'), 'w', encoding='utf-8') as logfile:
    return subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                            stdin=subprocess.DEVNULL)


def fits(run: dict, records: list[dict], clock: Clock) -> bool:
  """Whether the runs of this export so far say the next one ends in time
  (the median of the finished ones, which count their compilation once)."""
  same = [r['seconds'] for r in records
          if r['sweep'] == run['sweep'] and r['status'] == 'finished']
  need = statistics.median(same) if same else 0.0
  return clock.left() - RESERVE_S > max(need, 1.0)


def run_protocol(args, clock: Clock, exports: dict, runs: list[dict], device: str) -> dict:
  """Every run of the plan that fits the budget; tables after each."""
  setup_jax(args)
  counter = CompileCounter()
  floors = {}
  for path, meta in exports.items():
    sweep_dir = os.path.join(args.out, sweep_name(meta, args))
    write_sweep_meta(sweep_dir, meta, path, args, device)
    floors[sweep_dir] = start_floors(meta, path, sweep_dir, args)
  records, skipped, stop = [], 0, ''
  watchdog = Watchdog(clock)
  interrupted = threading.Event()  # Ctrl-C between runs (inside one, train.py has it).
  previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
  try:
    for i, run in enumerate(runs):
      workdir = os.path.join(args.out, run['sweep'], run['run'])
      if os.path.isfile(os.path.join(workdir, 'eval.json')):
        continue  # Finished by an earlier call.
      if watchdog.fired or interrupted.is_set():
        stop = f'stopped: {len(runs) - i} of {len(runs)} runs not started'
        break
      if not fits(run, records, clock):  # A run of a quicker export may still fit.
        skipped += 1
        continue
      record = one_run(run, workdir, counter, args)
      records.append(record)
      log.info('[%d/%d] %s/%s: %s in %.0f s (compiled %d, read from cache %d)%s', i + 1,
               len(runs), run['sweep'], run['run'], record['status'], record['seconds'],
               record['compiled'], record['read_from_cache'],
               f'; health {record["health"]}, test AUROC {record["test_auroc"]}'
               if record['status'] == 'finished' else '')
      log.info('  %s', aggregate(os.path.dirname(workdir)))
      write_archive(args)
      if record['status'] == 'stopped at the deadline':
        stop = f'stopped {run["run"]} at the deadline; {len(runs) - i - 1} runs not started'
        break
  finally:
    watchdog.cancel()
    signal.signal(signal.SIGINT, previous)
  for sweep_dir, child in floors.items():
    floors[sweep_dir] = finish_floors(sweep_dir, child, clock)
    log.info('  %s', aggregate(sweep_dir))
  floors = {os.path.basename(k): v for k, v in floors.items()}
  if skipped and not stop:
    stop = f'{skipped} runs not started: they would not have ended within the budget'
  return {'runs': records, 'stop': stop or 'every run done', 'floors': floors,
          'compilations': counter.counts}


def finish_floors(sweep_dir: str, child, clock: Clock) -> str:
  if child is None:
    return 'copied from the export'
  try:
    child.wait(timeout=max(clock.left() - RESERVE_S / 2, 1.0))
  except subprocess.TimeoutExpired:
    child.kill()
    child.wait()
    return 'not finished within the budget'
  ok = child.returncode == 0 and os.path.isfile(os.path.join(sweep_dir, 'floors.json'))
  return 'computed' if ok else f'failed (exit {child.returncode}, floors_log.txt)'


def write_archive(args) -> None:
  """OUT's small files as one .tar.gz (atomically), if --archive."""
  if not args.archive:
    return
  out = os.path.abspath(args.out)

  def small(info: tarfile.TarInfo):
    parts = info.name.split('/')
    if set(parts) & set(ARCHIVE_SKIP) or info.name.endswith(('.npz', '.tar.gz')) \
        or '.tar.gz.tmp' in parts[-1]:
      return None
    return info

  tmp = f'{args.archive}.tmp{os.getpid()}'
  with tarfile.open(tmp, 'w:gz') as tar:
    tar.add(out, arcname=os.path.basename(out), filter=small)
  os.replace(tmp, args.archive)


# ------------------------------------------------------------------ main


def setup_logging(out: str) -> None:
  """This script's lines to the terminal and OUT/protocol_log.txt; the
  runs' own lines go to their log.txt (warnings also here)."""
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax's INFO chatter.
  fmt = logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S')
  handlers = [logging.StreamHandler(sys.stdout),
              logging.FileHandler(os.path.join(out, 'protocol_log.txt'), encoding='utf-8')]
  for h in handlers:
    h.setFormatter(fmt)
    log.addHandler(h)
  log.setLevel(logging.INFO)
  log.propagate = False
  package = logging.getLogger('smsdd_jax')
  package.setLevel(logging.INFO)
  package.propagate = False
  warnings = logging.StreamHandler(sys.stdout)
  warnings.setLevel(logging.WARNING)
  warnings.setFormatter(fmt)
  package.addHandler(warnings)


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  clock = Clock(args.budget_s)
  parts = [p.strip() for p in args.parts.split(',') if p.strip()]
  unknown = set(parts) - {'twin', 'bench', 'protocol'}
  # The runs work in the repo; paths relative to it, so that what they
  # record (config.json) holds no path of one machine.
  paths = [os.path.relpath(os.path.abspath(p.strip()), REPO)
           for p in args.exports.split(',') if p.strip()]
  args.out = os.path.abspath(args.out)
  if args.archive:
    args.archive = os.path.abspath(args.archive)
  os.chdir(REPO)
  try:
    if unknown:
      raise ValueError(f'--parts: unknown {sorted(unknown)}; expected twin, bench, protocol')
    exports = {p: export_info(p) for p in paths}
    runs = plan(args, exports) if 'protocol' in parts else []
    if args.dry_run:
      return dry_run(runs, args.first_step)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  from smsdd_jax import rundir  # pylint: disable=import-outside-toplevel
  try:
    # One command per OUT at a time, as launch/sweep.py holds its --out.
    with rundir.Claim(args.out, 'protocol directory', '--out') as claim:
      claim.keep()
      return run_parts(args, clock, parts, exports, runs, argv)
  except rundir.WorkdirError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def run_parts(args, clock: Clock, parts: list[str], exports: dict, runs: list[dict],
              argv) -> int:
  """The parts asked for, then protocol.json and the archive; the exit status."""
  from smsdd_jax import rundir  # pylint: disable=import-outside-toplevel
  setup_logging(args.out)
  summary = {'argv': sys.argv[1:] if argv is None else list(argv), 'budget_s': args.budget_s,
             'width_mult': width(args)}
  log.info('plan: %s; %d runs on %s', ','.join(parts), len(runs), ', '.join(exports))
  if 'twin' in parts:
    summary['twin'] = run_twin(args, clock)
  import jax  # pylint: disable=import-outside-toplevel
  summary['device'] = f'{jax.devices()[0].device_kind} ({jax.default_backend()})'
  summary['versions'] = {'jax': jax.__version__, 'python': sys.version.split()[0]}
  if 'bench' in parts:
    summary['bench'] = run_bench(args, summary.get('twin'))
  if 'protocol' in parts:
    summary['protocol'] = run_protocol(args, clock, exports, runs, summary['device'])
    log.info('protocol: %s', summary['protocol']['stop'])
  summary['seconds'] = round(clock.elapsed(), 1)
  summary['tensorflow_imported'] = sys.modules.get('tensorflow') is not None
  rundir.write_json(os.path.join(args.out, 'protocol.json'), summary)
  write_archive(args)
  log.info('done in %.0f s: %s%s', clock.elapsed(), os.path.join(args.out, 'protocol.json'),
           f', {args.archive}' if args.archive else '')
  failed = [r for r in summary.get('protocol', {}).get('runs', [])
            if r['status'].startswith('failed')]
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
