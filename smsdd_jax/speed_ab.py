"""The measurements behind docs/performance.md: interleaved A/B of the train
step, and per-layer convolution timings.

  python -m smsdd_jax.benchmark --only=ab --impls=custom,xla --pairs=4 \
      --rounds=5 --compare-torch=PATH/torch_siamese_vgg.py
  python -m smsdd_jax.benchmark --only=layers --impls=custom,xla --layer-batch=16

Why interleave: this 2-core machine is shared, and a load that comes and goes
moves a step's time by 2x. Timing variant A for a minute and then variant B
compares two loads, not two variants. Here every round runs every variant
(and the PyTorch twin, in a child process, for the same number of steps)
back to back, so each round's variants saw about the same load, and the
result keeps each round's ratios (paired) as well as the medians.

Per-layer timings time `conv_general_dilated`-compatible functions (the ones
models.CONV_IMPLS holds) on the tower's 3x3 layer shapes (VGG16's), forward, input
gradient and weight gradient separately, each under jit, interleaved per
repeat. Their GFLOP/s are the direct convolution's FLOPs over the time, so
formulations that do fewer multiplies (Winograd) show as faster, not as
doing less work.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def _timed(fn: Callable[[], object]) -> float:
  t = time.perf_counter()
  fn()
  return time.perf_counter() - t


def interleaved_train(runners: dict, pairs: int, rounds: int, steps: int,
                      torch_step: Callable[[int], float] | None = None) -> dict:
  """Each round: `steps` timed steps of every runner (name -> callable doing
  one step, already compiled), then `torch_step(steps)` (median seconds per
  step of the twin). Returns per-variant medians and the paired ratios."""
  times = {name: [] for name in runners}
  per_round = []
  for _ in range(rounds):
    row = {}
    for name, run in runners.items():
      t = [_timed(run) for _ in range(steps)]
      times[name] += t
      row[name] = statistics.median(t)
    if torch_step is not None:
      row['torch'] = torch_step(steps)
    per_round.append(row)
  out = {'pairs': pairs, 'rounds': rounds, 'steps_per_round': steps, 'variants': {}}
  for name in runners:
    median = statistics.median(times[name])
    entry = {'step_s': round(median, 4), 'pairs_per_s': round(pairs / median, 3)}
    if torch_step is not None:  # Paired: this round's torch over this round's variant.
      ratios = sorted(r['torch'] / r[name] for r in per_round)
      entry['ratio_vs_torch'] = round(statistics.median(ratios), 3)
      entry['ratio_range'] = [round(ratios[0], 3), round(ratios[-1], 3)]
    out['variants'][name] = entry
  if torch_step is not None:
    median = statistics.median(r['torch'] for r in per_round)
    out['torch'] = {'step_s': round(median, 4), 'pairs_per_s': round(pairs / median, 3)}
  return out


def interleaved_envs(frameworks: dict, envs: dict, pairs: int, rounds: int,
                     steps: int) -> dict:
  """Each round: every framework (name -> fn(env, steps) -> median seconds
  per step, in a fresh process) under every environment variant (name ->
  dict; the first is the baseline). Returns per framework and variant the
  median pairs/s and, paired per round, the speed-up over the baseline."""
  per_round = []
  for _ in range(rounds):
    per_round.append({(f, e): fn(env, steps) for e, env in envs.items()
                      for f, fn in frameworks.items()})
  base = next(iter(envs))
  out = {'pairs': pairs, 'rounds': rounds, 'steps_per_round': steps, 'results': {}}
  for f in frameworks:
    for e in envs:
      median = statistics.median(r[(f, e)] for r in per_round)
      gains = sorted(r[(f, base)] / r[(f, e)] for r in per_round)
      out['results'][f'{f} | {e}'] = {
          'framework': f, 'env': e, 'step_s': round(median, 4),
          'pairs_per_s': round(pairs / median, 3),
          'speedup_vs_default': round(statistics.median(gains), 3),
          'speedup_range': [round(gains[0], 3), round(gains[-1], 3)]}
  return out


def env_table(result: dict, impl: str) -> str:
  """Markdown: one line per framework and environment variant."""
  lines = [f'| framework | environment | pairs/s at {result["pairs"]} pairs | '
           'speed-up vs default (range over rounds) |', '|---|---|---|---|']
  for v in result['results'].values():
    name = f'JAX ({impl})' if v['framework'] == 'jax' else 'PyTorch'
    lines.append(f'| {name} | {v["env"]} | {v["pairs_per_s"]:.3f} | '
                 f'{v["speedup_vs_default"]:.3f}x ({v["speedup_range"][0]:.3f}-'
                 f'{v["speedup_range"][1]:.3f}) |')
  return '\n'.join(lines)


def layer_shapes(image_size=(110, 230), width_mult: float = 1.0,
                 backbone: str = 'vgg16') -> list[tuple]:
  """(H, W, C_in, C_out) of each 3x3 / stride 1 conv of the tower, in order:
  the ones the impls replace."""
  from smsdd_jax import backbones  # pylint: disable=import-outside-toplevel
  return backbones.get(backbone).conv3x3_shapes(image_size, width_mult)


def conv_parts(conv_fn) -> dict:
  """Jitted forward, input gradient and weight gradient of `conv_fn` (lax's
  conv_general_dilated signature) for a 3x3 SAME conv, NHWC / HWIO."""
  import jax  # pylint: disable=import-outside-toplevel

  def conv(x, w):
    return conv_fn(x, w, (1, 1), 'SAME', dimension_numbers=DIMENSION_NUMBERS)

  # Each part asks for one cotangent only, so XLA drops the other half of a
  # custom backward (dead code) and the two are timed apart.
  return {'fwd': jax.jit(conv),
          'dx': jax.jit(lambda x, w, dy: jax.vjp(lambda a: conv(a, w), x)[1](dy)[0]),
          'dw': jax.jit(lambda x, w, dy: jax.vjp(lambda b: conv(x, b), w)[1](dy)[0])}


def layer_timings(impls: dict, batch: int, repeats: int,
                  shapes: Sequence[tuple] | None = None, seed: int = 0) -> list[dict]:
  """Median time and GFLOP/s of forward, dx and dw per layer shape and impl
  (name -> conv_general_dilated-compatible function), interleaved."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  parts = {name: conv_parts(fn) for name, fn in impls.items()}
  rows = []
  shapes = list(shapes or layer_shapes())
  # VGG16 repeats some shapes (27x57 256->256 twice, 6x14 512->512 three
  # times): time each once, and say how often the tower runs it.
  for (h, w, cin, cout) in dict.fromkeys(shapes):
    count = shapes.count((h, w, cin, cout))
    x = jax.device_put(np.maximum(rng.standard_normal((batch, h, w, cin), np.float32), 0))
    k = jax.device_put(rng.standard_normal((3, 3, cin, cout), np.float32) * (2 / (9 * cout)) ** .5)
    dy = jax.device_put(rng.standard_normal((batch, h, w, cout), np.float32))
    args = {'fwd': (x, k), 'dx': (x, k, dy), 'dw': (x, k, dy)}
    calls = {(n, p): (lambda f=f, a=args[p]: jax.block_until_ready(f(*a)))
             for n, fs in parts.items() for p, f in fs.items()}
    for call in calls.values():
      call()  # Compile.
    times = {key: [] for key in calls}
    for _ in range(repeats):
      for key, call in calls.items():
        times[key].append(_timed(call))
    gflop = 2 * batch * h * w * 9 * cin * cout / 1e9
    for (name, part), t in times.items():
      median = statistics.median(t)
      rows.append({'layer': f'{h}x{w} {cin}->{cout}', 'count': count, 'impl': name,
                   'part': part, 'ms': round(median * 1e3, 2),
                   'gflop_per_s': round(gflop / median, 1)})
  return rows


def layer_table(rows: list[dict]) -> str:
  """Markdown: one row per layer shape (n = times in the tower), one column
  per impl x part (GFLOP/s); a last row sums each column's time over the
  whole tower (ms, n times each shape)."""
  cols = list(dict.fromkeys((r['impl'], r['part']) for r in rows))
  layers = list(dict.fromkeys(r['layer'] for r in rows))
  cell = {(r['layer'], r['impl'], r['part']): r for r in rows}
  lines = ['| layer | n | ' + ' | '.join(f'{i} {p}' for i, p in cols) + ' |',
           '|---|---|' + '---|' * len(cols)]
  for layer in layers:
    n = next(r.get('count', 1) for r in rows if r['layer'] == layer)
    lines.append(f'| {layer} | {n} | ' + ' | '.join(
        str(cell[(layer, i, p)]['gflop_per_s']) for i, p in cols) + ' |')
  totals = [sum(r['ms'] * r.get('count', 1) for r in rows if (r['impl'], r['part']) == c)
            for c in cols]
  lines.append('| tower, ms | 13 | ' + ' | '.join(f'{t:.0f}' for t in totals) + ' |')
  return '\n'.join(lines)
