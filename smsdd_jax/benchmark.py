"""Speed of the real jitted train step, the input pipeline and inference.

  python -m smsdd_jax.benchmark --pairs=4 --steps=5
  python -m smsdd_jax.benchmark --pairs=4,8 --compare-torch=PATH/torch_siamese_vgg.py
  python -m smsdd_jax.benchmark --only=pipeline,inference --cores=1 [--compare-torch=PATH]
  python -m smsdd_jax.benchmark --only=ab --impls=custom,xla --rounds=5 [--compare-torch=PATH]
  python -m smsdd_jax.benchmark --only=layers --impls=custom,xla --steps=5
  python -m smsdd_jax.benchmark --only=runtimes --impls=xla,custom --cores=1
  python -m smsdd_jax.benchmark --only=maps --width_mult=0.0625 --cores=1
  python -m smsdd_jax.benchmark --pairs=8 --dtype=bfloat16 --compare-torch=PATH/torch_siamese_vgg.py

Times are medians of `--steps` repeated runs after a warm-up (compile) run.
`--compare-torch` runs the PyTorch twin of the step in the same invocation
(same model, loss, optimiser; it needs `pip install torch==2.13.0`) and prints
the ratio; with `--dtype=bfloat16` the train step runs in bfloat16 (float32
master weights; oneDNN's bfloat16 kernels where the CPU has them, the line
printed says which path ran) beside the same step in float32, and the twin
under torch.autocast('cpu', torch.bfloat16); with inference it times the twin's forward of one image on the
same cores (the reference for the forward stage). The last line printed is
one JSON object (`pairs_per_s` is the train step at the first --pairs value)
for scripts.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

# Work per pair: forward of 2 images, backward ~2x forward (input + weight grads).
FWD_BWD_FACTOR = 3


def conv_macs_per_image(image_size, width_mult: float, backbone: str = 'vgg16') -> int:
  """Multiply-accumulates of the tower's convolutions for one image."""
  from smsdd_jax import backbones  # pylint: disable=import-outside-toplevel
  return backbones.get(backbone).conv_macs(image_size, width_mult)


def train_gflop_per_pair(image_size=(110, 230), width_mult: float = 1.0,
                         backbone: str = 'vgg16') -> float:
  return 2 * conv_macs_per_image(image_size, width_mult, backbone) * 2 * FWD_BWD_FACTOR / 1e9


def _median_time(fn, steps: int) -> float:
  fn()  # Warm-up: compiles.
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def make_train_runner(pairs: int, width_mult: float, dtype: str, conv_impl: str = '',
                      recipe: str = 'paper', backbone: str = 'vgg16'):
  """(one_step, config): a callable running one jitted train step on a fixed
  random batch (state carried from call to call), and the config it built;
  recipe 'learn' is `:learn`'s step (batch norm, AdamW), 'paper' the twin's."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import models, step as step_lib  # pylint: disable=import-outside-toplevel
  config = default.get_config(recipe if recipe == default.LEARN else None)
  config.model.width_mult, config.model.dtype = width_mult, dtype
  config.model.backbone = backbone
  if conv_impl:
    config.model.conv_impl = conv_impl
  model = models.create(config.model)
  tx = step_lib.make_optimizer(config.optimizer)
  state = [step_lib.create_train_state(config, model, tx)]
  step = step_lib.make_train_step(model, tx, config.loss)
  rng = np.random.default_rng(0)
  h, w = config.data.image_size
  labels = rng.integers(0, 2, (2, pairs)).astype(np.int32)
  batch = jax.device_put({
      'image_a': rng.standard_normal((pairs, h, w, 3), np.float32),
      'image_b': rng.standard_normal((pairs, h, w, 3), np.float32),
      'label_a': labels[0], 'label_b': labels[1],
      'same': (labels[0] == labels[1]).astype(np.float32)})

  def run():
    state[0], metrics = step(state[0], batch)
    jax.block_until_ready(metrics)

  return run, config


def step_record(pairs: int, step_s: float, width_mult: float, dtype: str,
                conv_impl: str, image_size=(110, 230), backbone: str = 'vgg16') -> dict:
  """What the train step's speed is reported as: pairs/s, GFLOP/s and,
  on a chip whose peak is listed, the model-FLOP utilisation."""
  import jax  # pylint: disable=import-outside-toplevel
  gflop = train_gflop_per_pair(tuple(image_size), width_mult, backbone) * pairs
  out = {'impl': 'jax', 'backbone': backbone, 'pairs': pairs, 'step_s': round(step_s, 4),
         'pairs_per_s': round(pairs / step_s, 3),
         'gflop_per_s': round(gflop / step_s, 1), 'dtype': dtype, 'conv_impl': conv_impl}
  peak = peak_tflops(jax.devices()[0], dtype)
  if peak:  # Model-FLOP utilisation: the convolutions' FLOPs over the chip's peak.
    out['mfu'] = round(gflop / step_s / 1e3 / peak, 4)
    out['peak_tflops'] = peak
  return out


def bench_train_step(pairs: int, steps: int, width_mult: float, dtype: str,
                     conv_impl: str = '') -> dict:
  from smsdd_jax import models  # pylint: disable=import-outside-toplevel
  run, config = make_train_runner(pairs, width_mult, dtype, conv_impl)
  return step_record(pairs, _median_time(run, steps), width_mult, dtype,
                     models.resolve_conv_impl(config.model.conv_impl),
                     config.data.image_size)


# Dense peaks (TFLOP/s) from the vendors' datasheets, by device kind and
# compute dtype; float32 on these GPUs runs XLA's convolutions as TF32.
PEAK_TFLOPS = {('H100', 'bfloat16'): 989.0, ('H100', 'float32'): 494.5,
               ('H200', 'bfloat16'): 989.0, ('H200', 'float32'): 494.5,
               ('A100', 'bfloat16'): 312.0, ('A100', 'float32'): 156.0}


def peak_tflops(device, dtype: str) -> float | None:
  """The chip's dense peak for `dtype`, or None where not listed (CPUs)."""
  kind = getattr(device, 'device_kind', '')
  for (name, dt), peak in PEAK_TFLOPS.items():
    if name in kind and dt == dtype:
      return peak
  return None


# Untimed steps of the twin in each child process before its timed ones: its
# first step builds oneDNN's primitives and the second still grows the
# allocator's pools (it measured 5-20% slower than the later ones); the JAX
# step it is compared with is compiled and warm before any timing.
TORCH_WARMUP = 2


def bench_torch(script: str, pairs: int, steps: int, width_mult: float,
                env: dict | None = None, bf16: bool = False) -> dict:
  """The twin's step; bf16: under torch.autocast('cpu', torch.bfloat16)."""
  return _last_json_line([sys.executable, script, '--pairs', str(pairs), '--steps',
                          str(steps), '--width-mult', str(width_mult),
                          '--warmup', str(TORCH_WARMUP)] + (['--bf16'] if bf16 else []),
                         'torch twin', env)


def _last_json_line(cmd: list[str], what: str, env: dict | None = None) -> dict:
  """Runs cmd (with `env` added to this process's environment) and parses
  the JSON object on its last stdout line."""
  out = subprocess.run(cmd, capture_output=True, text=True, check=False,
                       env={**os.environ, **env} if env else None)
  if out.returncode != 0:  # The exception's own line, not JAX's traceback note.
    errors = [line for line in out.stderr.splitlines() if 'Error' in line.split(':')[0]]
    raise RuntimeError(f'{what} failed: {(errors or out.stderr.strip().splitlines())[-1:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def bench_pipeline(data_dir: str, batches: int) -> dict:
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import input_pipeline  # pylint: disable=import-outside-toplevel
  config = default.get_config('quick')
  config.batch_size = 8
  if data_dir:
    config.data.data_dir = data_dir
  builder = input_pipeline.prepare(config.data)
  it = input_pipeline.train_pairs(builder, config)
  for _ in range(20):  # Warm-up: fills the cache and the prefetch buffer.
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  elapsed = time.perf_counter() - t
  return {'pipeline_pairs_per_s': round(batches * config.batch_size / elapsed, 1)}


def _frame_files(frames_dir: str, n: int, tmp: str) -> list[str]:
  """n raw frame files: those under frames_dir (sorted, cycled to n), else
  n generated 1920 x 1080 ones written into tmp."""
  from smsdd_jax import inference  # pylint: disable=import-outside-toplevel
  from smsdd_jax.datasets import synthetic_screens  # pylint: disable=import-outside-toplevel
  if not frames_dir:
    return synthetic_screens.write_sample_frames(tmp, n)
  files = inference.list_inputs(frames_dir)  # What predict would read there.
  if not files:
    raise SystemExit(f'--frames-dir={frames_dir}: no image files under it')
  return [files[i % len(files)] for i in range(n)]


def bench_inference(steps: int, width_mult: float, batch: int,
                    precision: str = 'float32', frames_dir: str = '') -> dict:
  """Raw 1920x1080 JPEG -> decode -> ROI -> rectify -> forward, one frame
  (end to end, and each stage alone; the frames cycle over 8 generated ones
  or the first 8 of --frames-dir); and the batched forward, frames/s."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import models, preprocess  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.model.width_mult = width_mult
  model = models.create(config.model)
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  # As Predictor scores: kernels packed for oneDNN where the model runs it.
  model, params = models.packed_for_inference(model, params, (110, 230), precision)
  fwd = jax.jit(lambda x: jax.nn.softmax(models.forward(
      params, x, model=model, model_state=state)[0])[:, 1])
  with tempfile.TemporaryDirectory() as tmp:
    blobs = [open(p, 'rb').read() for p in _frame_files(frames_dir, 8, tmp)]
  frame = iter(range(10 ** 9))

  spec = preprocess.Spec(roi='hough')  # What predict does to a raw frame.

  def decode():
    return preprocess.decode(blobs[next(frame) % len(blobs)])

  def extract(image):
    return preprocess.to_model_input(image, spec)[0]

  def forward(rgb):
    x = preprocess.normalize(rgb[None], preprocess.FIXED_STATS)
    return float(fwd(x)[0])

  latency = _median_time(lambda: forward(extract(decode())), steps)
  image = decode()
  rgb = extract(image)
  stages = {'decode_ms': _median_time(decode, steps),
            'roi_ms': _median_time(lambda: extract(image), steps),
            'forward_ms': _median_time(lambda: forward(rgb), steps)}
  xb = np.zeros((batch, 110, 230, 3), np.float32)
  batched = _median_time(lambda: jax.block_until_ready(fwd(xb)), steps)
  return {'frame_latency_ms': round(latency * 1e3, 1),
          **{k: round(v * 1e3, 1) for k, v in stages.items()},
          'batched_frames_per_s': round(batch / batched, 2), 'inference_batch': batch}


# Forward of a batch of images through the PyTorch twin's tower +
# classifier (its build()), timed like _median_time, in a child process that
# inherits this process's CPU affinity: with batch 1 the reference for the
# forward_ms stage, with a larger batch for predict's throughput.
_TORCH_FORWARD = r"""
import importlib.util, json, statistics, sys, time, torch
spec = importlib.util.spec_from_file_location('twin', sys.argv[1])
twin = importlib.util.module_from_spec(spec); spec.loader.exec_module(twin)
steps, width_mult, batch = int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
bf16 = sys.argv[5] == 'bfloat16'  # Autocast, as a PyTorch user would ask for it.
torch.set_num_threads(len(__import__('os').sched_getaffinity(0)))
net = twin.build(width_mult, 110, 230).to(memory_format=torch.channels_last).eval()
x = torch.randn(batch, 3, 110, 230).to(memory_format=torch.channels_last)
def run():
  with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
    return net['classifier'](net['features'](x).flatten(1)).float().softmax(-1)[:, 1].tolist()
run(); run(); times = []
for _ in range(steps):
  t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
m = statistics.median(times)
print(json.dumps({'torch_forward_ms': round(m * 1e3, 1), 'torch_batch': batch,
                  'torch_frames_per_s': round(batch / m, 2), 'torch_precision': sys.argv[5],
                  'torch_threads': torch.get_num_threads()}))
"""


# The same per-layer parts through PyTorch's oneDNN convolutions (channels-
# last, float32), on the same shapes and cores: where each JAX layer stands
# against the library the twin uses. Shapes come as JSON [[H, W, C, K, n], ...]
# (n: how often the tower runs that shape).
_TORCH_LAYERS = r"""
import json, statistics, sys, time, torch
batch, repeats, shapes = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
torch.set_num_threads(len(__import__('os').sched_getaffinity(0)))
cl, rows = torch.channels_last, []
for h, w, c, k, n in shapes:
  x = torch.randn(batch, c, h, w).relu().to(memory_format=cl)
  wt = torch.randn(k, c, 3, 3).to(memory_format=cl)
  dy = torch.randn(batch, k, h, w).to(memory_format=cl)
  # aten's convolution_backward with an output mask runs only the asked-for
  # oneDNN primitive (backward-data or backward-weights), as autograd does.
  def back(mask):
    return torch.ops.aten.convolution_backward(dy, x, wt, None, [1, 1], [1, 1], [1, 1],
                                               False, [0, 0], 1, mask)
  parts = (('fwd', lambda: torch.nn.functional.conv2d(x, wt, padding=1)),
           ('dx', lambda: back([True, False, False])), ('dw', lambda: back([False, True, False])))
  gflop = 2 * batch * h * w * 9 * c * k / 1e9
  with torch.no_grad():
    for part, fn in parts:
      fn(); t = []
      for _ in range(repeats):
        s = time.perf_counter(); fn(); t.append(time.perf_counter() - s)
      m = statistics.median(t)
      rows.append(dict(layer=f'{h}x{w} {c}->{k}', count=n, impl='torch', part=part,
                       ms=round(m * 1e3, 2), gflop_per_s=round(gflop / m, 1)))
print(json.dumps(rows))
"""


def bench_torch_layers(batch: int, repeats: int, shapes) -> list[dict]:
  unique = [[*s, list(shapes).count(s)] for s in dict.fromkeys(shapes)]
  out = subprocess.run([sys.executable, '-c', _TORCH_LAYERS, str(batch), str(repeats),
                        json.dumps(unique)],
                       capture_output=True, text=True, check=False)
  if out.returncode != 0:
    raise RuntimeError(f'torch layers failed: {out.stderr.strip().splitlines()[-1:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def bench_torch_forward(script: str, steps: int, width_mult: float, batch: int = 1,
                        precision: str = 'float32') -> dict:
  return _last_json_line([sys.executable, '-c', _TORCH_FORWARD, script, str(steps),
                          str(width_mult), str(batch), precision], 'torch forward')


def bench_predict(frames_dir: str, n: int, width_mult: float, batch: int,
                  workers: int, ahead: int = 1, precision: str = 'float32') -> dict:
  """`inference.score_frames` (what `predict` runs) over n raw frame files:
  decode, ROI, rectify and the batched forward, overlapped as predict does;
  frames/s after a warm-up pass over the first batch (compile). The frames
  are those of --frames-dir (cycled to n), else n generated 1920 x 1080 ones."""
  import jax  # pylint: disable=import-outside-toplevel
  from smsdd_jax import inference, models, preprocess  # pylint: disable=import-outside-toplevel
  p = _random_predictor(width_mult)
  p.batch_size = batch
  p.preprocessing = preprocess.Spec(roi='hough', size=p.image_size)
  model, params = models.packed_for_inference(p.model, p.params, p.image_size, precision)
  score = jax.jit(lambda images: inference.probabilities(
      params, p.model_state, images, model=model, mean=p.mean, std=p.std))
  p.predict_proba = lambda images: _padded(score, images, batch)
  p.decide = lambda prob: 'defective' if prob >= 0.5 else 'good'
  with tempfile.TemporaryDirectory() as tmp:
    files = _frame_files(frames_dir, n, tmp)
    for _ in inference.score_frames(p, files[:batch], workers=workers):
      pass  # Compiles the forward at this batch size.
    t = time.perf_counter()
    results = [r for chunk in inference.score_frames(p, files, workers=workers, ahead=ahead)
               for r in chunk]
    elapsed = time.perf_counter() - t
  return {'predict_frames': n, 'predict_frames_per_s': round(n / elapsed, 2),
          'predict_failed': sum(not r.ok for r in results), 'predict_batch': batch,
          'predict_workers': workers, 'predict_ahead': ahead, 'precision': precision}


def _padded(fn, images, batch: int):
  """fn over a batch of exactly `batch` images (zero-padded, as Predictor)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  n = len(images)
  if n < batch:
    images = np.concatenate([images, np.zeros((batch - n, *images.shape[1:]), images.dtype)])
  return np.asarray(fn(images))[:n]


def side_by_side_table(results: dict, impls: list[str], torch: bool) -> str:
  """Markdown, one line per batch size: pairs/s of each JAX impl (and the
  twin), the ratio to the twin (median of the per-round ratios) and its range
  over the rounds. results: pairs -> speed_ab.interleaved_train's result."""
  head = ['pairs'] + [f'JAX {i} pairs/s' for i in impls]
  if torch:
    head += ['PyTorch pairs/s'] + [f'ratio {i} (range over rounds)' for i in impls]
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for pairs, r in results.items():
    row = [str(pairs)] + [f'{r["variants"][i]["pairs_per_s"]:.3f}' for i in impls]
    if torch:
      row.append(f'{r["torch"]["pairs_per_s"]:.3f}')
      for i in impls:
        v = r['variants'][i]
        row.append(f'**{v["ratio_vs_torch"]:.2f}x** ({v["ratio_range"][0]:.2f}-'
                   f'{v["ratio_range"][1]:.2f})')
    lines.append('| ' + ' | '.join(row) + ' |')
  rounds = next(iter(results.values()))['rounds'] if results else 0
  steps = next(iter(results.values()))['steps_per_round'] if results else 0
  return '\n'.join(lines) + (f'\n({rounds} interleaved rounds of {steps} steps each; '
                             'the ratio is JAX pairs/s over PyTorch\'s in the same round)')


def _interleaved(args, impls: list[str], pairs: int, baselines: dict | None = None) -> dict:
  """speed_ab.interleaved_train of `impls` (compiled first) and the twin
  (autocast to bfloat16 when --dtype is); baselines: more variants, label ->
  (impl, dtype), in the same rounds."""
  from smsdd_jax import speed_ab  # pylint: disable=import-outside-toplevel
  variants = {impl: (impl, args.dtype) for impl in impls} | (baselines or {})
  runners = {}
  for label, (impl, dtype) in variants.items():
    runners[label], _ = make_train_runner(pairs, args.width_mult, dtype, impl, args.recipe,
                                          args.backbone)
    runners[label]()  # Compile before any timing.
  torch_step = None
  if args.compare_torch:
    bf16 = args.dtype == 'bfloat16'
    torch_step = lambda n: bench_torch(args.compare_torch, pairs, n, args.width_mult,
                                       bf16=bf16)['step_s']
  return speed_ab.interleaved_train(runners, pairs, args.rounds, args.steps, torch_step)


def run_train(args, summary: dict) -> None:
  """The default: the train step at each --pairs with the config's conv
  path, interleaved round by round with the twin (--compare-torch); one
  table line per batch size."""
  from smsdd_jax import models  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  impl = models.resolve_conv_impl(args.conv_impl or default.get_config().model.conv_impl)
  # bfloat16 is measured against the same step in float32, in the same rounds
  # (what it is for: a faster step than float32's).
  base = f'{impl} float32'
  baselines = {base: (impl, 'float32')} if args.dtype != 'float32' else {}
  results = {}
  for i, pairs in enumerate(int(x) for x in args.pairs.split(',')):
    r = results[pairs] = _interleaved(args, [impl], pairs, baselines)
    v = r['variants'][impl]
    out = step_record(pairs, v['step_s'], args.width_mult, args.dtype, impl,
                      backbone=args.backbone)
    if 'torch' in r:
      out.update(torch_pairs_per_s=r['torch']['pairs_per_s'],
                 ratio_vs_torch=v['ratio_vs_torch'], ratio_range=v['ratio_range'])
      if args.dtype == 'bfloat16':
        out['torch_autocast'] = 'bfloat16'
    out['recipe'] = args.recipe
    if baselines:
      out.update(float32_pairs_per_s=r['variants'][base]['pairs_per_s'],
                 speedup_vs_float32=round(r['variants'][base]['step_s'] / v['step_s'], 3))
    summary[f'train_{pairs}'] = out
    if i == 0:
      summary['pairs_per_s'] = out['pairs_per_s']
  print(side_by_side_table(results, [impl, *baselines], bool(args.compare_torch)), flush=True)
  if args.dtype == 'bfloat16':
    summary['bf16_path'] = bf16_path(impl)
    print(f"bfloat16 step: {summary['bf16_path']}", flush=True)
  summary['peak_rss_mib'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bf16_path(impl: str) -> str:
  """One line: which path the bfloat16 step's convolutions ran, with
  oneDNN's implementation names of the kernels that ran (as the plans
  record them, e.g. 'fwd_bias_relu_bf16 brgconv:avx512_core_bf16')."""
  from smsdd_jax import onednn  # pylint: disable=import-outside-toplevel
  if impl not in ('onednn', 'onednn_fused'):
    return (f"conv_impl {impl}: XLA:CPU bfloat16 (oneDNN's bfloat16 kernels are conv_impl "
            "'onednn' and 'onednn_fused' only)")
  native, why = onednn.native_bf16()
  if not native:
    return f'XLA:CPU bfloat16, not oneDNN ({why})'
  impls: dict = {}
  for line in onednn.plans():  # The fused path's and the plain conv's (batch norm's).
    op, *_, name = line.removesuffix(' (weights reordered)').split()
    if op in onednn.BF16_OPS + onednn.BF16_CONV_OPS:
      impls.setdefault(op, set()).add(name)
  kernels = '; '.join(f"{op} {', '.join(sorted(names))}" for op, names in impls.items())
  return f'oneDNN bfloat16 ({why}): {kernels}'


def run_ab(args, summary: dict) -> None:
  """--only=ab: the train step of every --impls, interleaved (speed_ab)."""
  impls = args.impls.split(',')
  results = {}
  for pairs in (int(x) for x in args.pairs.split(',')):
    results[pairs] = summary[f'ab_{pairs}'] = _interleaved(args, impls, pairs)
  print(side_by_side_table(results, impls, bool(args.compare_torch)), flush=True)


def parse_envs(text: str) -> dict:
  """'A=1 B=2;C=3' -> {'A=1 B=2': {'A': '1', 'B': '2'}, 'C=3': {'C': '3'}},
  led by 'default' (nothing added); a one-line error for a malformed entry."""
  out = {'default': {}}
  for variant in filter(None, (v.strip() for v in text.split(';'))):
    pairs = [kv.split('=', 1) for kv in variant.split()]
    if any(len(kv) != 2 or not kv[0] for kv in pairs):
      raise SystemExit(f'--thread-envs: {variant!r} is not NAME=VALUE [NAME=VALUE ...]')
    out[variant] = dict(pairs)
  return out


def run_threads(args, summary: dict) -> None:
  """--only=threads: each --thread-envs variant (GNU OpenMP's waiting and
  pinning are read once, when a process starts) in fresh processes, JAX's
  step and the twin's alike, round by round; each framework's pairs/s under
  a variant against its own under the default, paired per round."""
  from smsdd_jax import models, speed_ab  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  impl = models.resolve_conv_impl(args.conv_impl or default.get_config().model.conv_impl)
  envs = parse_envs(args.thread_envs)
  for pairs in (int(x) for x in args.pairs.split(',')):
    def jax_step(env, n, pairs=pairs):
      cmd = [sys.executable, '-m', 'smsdd_jax.benchmark', '--only=train', f'--pairs={pairs}',
             f'--steps={n}', '--rounds=1', f'--width-mult={args.width_mult}',
             f'--conv-impl={impl}']
      return _last_json_line(cmd, 'jax step', env)[f'train_{pairs}']['step_s']
    frameworks = {'jax': jax_step}
    if args.compare_torch:
      frameworks['torch'] = lambda env, n, pairs=pairs: bench_torch(
          args.compare_torch, pairs, n, args.width_mult, env)['step_s']
    r = speed_ab.interleaved_envs(frameworks, envs, pairs, args.rounds, args.steps)
    summary[f'threads_{pairs}'] = r
    print(speed_ab.env_table(r, impl), flush=True)


def run_layers(args, summary: dict) -> None:
  """--only=layers: forward / dx / dw of every 3x3 layer for every --impls."""
  from smsdd_jax import models, speed_ab  # pylint: disable=import-outside-toplevel
  impls = {}
  for name in args.impls.split(','):
    if name not in models.CONV_IMPLS:
      raise SystemExit(f'--impls: {name!r} is not one of {sorted(models.CONV_IMPLS)}')
    impls[name] = models.CONV_IMPLS[name]
  shapes = speed_ab.layer_shapes((110, 230), args.width_mult)
  rows = speed_ab.layer_timings(impls, args.layer_batch, args.steps, shapes)
  if args.compare_torch:  # Only torch is needed, not the twin script itself.
    rows += bench_torch_layers(args.layer_batch, args.steps, shapes)
  print(f'GFLOP/s per layer, batch {args.layer_batch} images, median of {args.steps}:')
  print(speed_ab.layer_table(rows), flush=True)
  summary['layers'] = rows


def _random_predictor(width_mult: float, conv_impl: str = '', backbone: str = 'vgg16'):
  """What export.py needs of a Predictor, with randomly initialised weights
  (speed does not depend on the values)."""
  import types  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  from smsdd_jax import inference, models  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  config.model.width_mult, config.model.backbone = width_mult, backbone
  if conv_impl:
    config.model.conv_impl = conv_impl
  model = models.create(config.model)
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  p = types.SimpleNamespace(model=model, params=params, model_state=state,
                            mean=np.full(3, 127.0, np.float32), std=np.full(3, 60.0, np.float32),
                            image_size=(110, 230), batch_size=1)
  p.inference_fn = lambda: (lambda images: inference.probabilities(
      params, state, images, model=model, mean=p.mean, std=p.std))
  return p


def bench_runtimes(steps: int, width_mult: float, impls: str) -> dict:
  """One 110 x 230 ROI -> probability on the cores given, through each
  runtime that can serve the exported model: XLA via jax.jit (per
  --impls), the jax.export artifact, and the TF SavedModel (jax2tf)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from smsdd_jax import export  # pylint: disable=import-outside-toplevel
  image = np.random.default_rng(0).integers(0, 256, (1, 110, 230, 3), dtype=np.uint8)
  out = {}
  for impl in impls.split(','):
    fn = jax.jit(_random_predictor(width_mult, impl).inference_fn())
    # The lambda is called (steps times) within this iteration, so it sees this fn.
    out[f'jit_{impl}_ms'] = _median_time(lambda: jax.block_until_ready(fn(image)), steps)  # noqa: B023
  predictor = _random_predictor(width_mult, 'xla')  # What export.py serialises.
  with tempfile.TemporaryDirectory() as tmp:
    exported, _ = export.export_jax(predictor, os.path.join(tmp, 'm'), platforms=('cpu',))
    out['jax_export_ms'] = _median_time(
        lambda: jax.block_until_ready(exported.call(image)), steps)
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    export.export_saved_model(predictor, os.path.join(tmp, 'sm'), platforms=('cpu',))
    serve = tf.saved_model.load(os.path.join(tmp, 'sm')).signatures['serving_default']
    out['saved_model_ms'] = _median_time(lambda: serve(images=tf.constant(image)), steps)
  return {k: round(v * 1e3, 1) for k, v in out.items()}


def bench_maps(steps: int, width_mult: float, batch: int, backbone: str = 'vgg16') -> dict:
  """Per ROI: the plain score against the gradient maps (Grad-CAM, fine,
  fine_fast: maps.py's, on the model the score runs, its batch norm folded
  as Predictor does) and the occlusion map, alone (batch 1) and in batches
  of `batch`."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from smsdd_jax import inference, maps, models  # pylint: disable=import-outside-toplevel
  p = _random_predictor(width_mult, backbone=backbone)
  model, params, state = models.folded_batch_norm(p.model, p.params, p.model_state)
  score_model, score_params = models.packed_for_inference(model, params, (110, 230))
  fns = {'score': (jax.jit(functools.partial(inference.probabilities, model=score_model,
                                             mean=p.mean, std=p.std)), score_params)}
  for method in ('gradcam', 'fine', 'fine_fast'):
    fns[method] = (jax.jit(lambda params, state, images, method=method: maps.network_maps(
        params, state, inference.normalize(images, p.mean, p.std), model=model,
        method=method)), params)
  logodds = jax.jit(lambda x: maps.defect_score(models.forward(
      params, x, model=model, model_state=state)[0]))
  windows = maps.occlusion_windows((110, 230), 16, 8)
  rng = np.random.default_rng(0)
  out = {}
  for n in (1, batch):
    images = rng.integers(0, 256, (n, 110, 230, 3), dtype=np.uint8)
    for name, (fn, weights) in fns.items():
      t = _median_time(lambda: jax.block_until_ready(fn(weights, state, images)),  # noqa: B023
                       steps)  # Called within this iteration: it sees these and images.
      out[f'{name}_ms_per_roi_batch{n}'] = round(t / n * 1e3, 2)
  x = np.asarray(inference.normalize(images[0], p.mean, p.std))
  t = _median_time(lambda: maps.occlusion(logodds, x, windows), max(1, steps // 2))
  out['occlusion_ms_per_roi'] = round(t * 1e3, 1)
  out['occlusion_forwards_per_roi'] = len(windows)
  return out


def _check_backbone(p: argparse.ArgumentParser, args) -> None:
  """Usage error (exit 2) for an unknown --backbone, or one the measurement
  asked for cannot take: the twin and the per-layer tables are VGG16's."""
  from smsdd_jax import backbones  # pylint: disable=import-outside-toplevel
  if args.backbone not in backbones.REGISTRY:
    p.error(f'--backbone={args.backbone}: expected one of {", ".join(backbones.REGISTRY)}')
  parts = set(args.only.split(','))
  vgg_only = sorted(parts - {'train', 'maps', 'pipeline'})
  if args.backbone != 'vgg16' and (args.compare_torch or vgg_only):
    what = '--compare-torch' if args.compare_torch else f'--only={",".join(vgg_only)}'
    p.error(f'--backbone={args.backbone} with {what}: measured for VGG16 only '
            '(the PyTorch twin and these tables are VGG16\'s)')


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--pairs', default='4', help='comma-separated batch sizes (pairs)')
  p.add_argument('--steps', type=int, default=3,
                 help='timed repeats (median); per round where there are rounds')
  p.add_argument('--width-mult', '--width_mult', type=float, default=1.0)
  p.add_argument('--backbone', default='vgg16',
                 help='the tower (smsdd_jax/backbones) of the train step and the maps; '
                 'the PyTorch twin is VGG16 only')
  p.add_argument('--dtype', default='float32', help='compute dtype: float32 | bfloat16')
  p.add_argument('--recipe', default='paper', choices=('paper', 'learn'),
                 help="train: the paper's step (the twin's) or :learn's (batch norm, AdamW)")
  p.add_argument('--conv-impl', '--conv_impl', default='',
                 help="model.conv_impl: 'xla' | 'custom' | 'custom_fused' | 'onednn' | "
                 "'onednn_fused' | 'winograd' "
                 "(default: the config's)")
  p.add_argument('--compare-torch', '--compare_torch', default='',
                 help='path of the PyTorch twin script to run side by side (train: '
                 'its step; inference: its forward of one image)')
  p.add_argument('--only', default='train',
                 help='comma-separated: train, ab (interleaved A/B of --impls), threads '
                 '(GNU OpenMP environment variants, both frameworks), predict (raw frame files '
                 'to decisions, frames/s), '
                 'layers (per-layer conv timings), runtimes (one ROI through jit / '
                 'jax.export / SavedModel), pipeline, inference, maps (a score against '
                 'its Grad-CAM and occlusion maps, per ROI)')
  p.add_argument('--data-dir', '--data_dir', default='', help='TFDS data_dir (pipeline)')
  p.add_argument('--cores', type=int, default=0, help='pin to this many cores (0: all)')
  p.add_argument('--inference-batch', '--inference_batch', type=int, default=16)
  p.add_argument('--frames-dir', '--frames_dir', default='',
                 help='inference, predict: a folder of raw frames (default: generated ones)')
  p.add_argument('--frames', type=int, default=100, help='predict: how many frames')
  p.add_argument('--workers', type=int, default=2, help="predict: reading threads")
  p.add_argument('--precision', default='float32',
                 help="inference, predict: the convolutions' precision, 'float32' | 'bfloat16' "
                 '(models.packed_for_inference)')
  p.add_argument('--ahead', type=int, default=1,
                 help='predict: chunks read ahead of the one scored (0: none, as before)')
  p.add_argument('--impls', default='custom,xla',
                 help='ab / layers: comma-separated model.conv_impl values to compare')
  p.add_argument('--rounds', type=int, default=3,
                 help='train, ab, threads: interleaved rounds of --steps steps each')
  p.add_argument('--thread-envs', '--thread_envs',
                 default='OMP_WAIT_POLICY=PASSIVE;GOMP_SPINCOUNT=10000;'
                 'OMP_PROC_BIND=close OMP_PLACES=cores',
                 help="threads: ';'-separated environment variants, each 'NAME=VALUE ...', "
                 'against the default environment')
  p.add_argument('--layer-batch', '--layer_batch', type=int, default=16,
                 help='layers: images per batch (16 = the 8-pair step)')
  args = p.parse_args(argv)
  _check_backbone(p, args)
  if args.cores:  # Before JAX starts its thread pools.
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
  parts = set(args.only.split(','))
  import jax  # pylint: disable=import-outside-toplevel
  summary = {'cores': len(os.sched_getaffinity(0)), 'width_mult': args.width_mult,
             'backbone': args.backbone,
             'platform': jax.default_backend(), 'device': jax.devices()[0].device_kind}
  if 'train' in parts:
    run_train(args, summary)
  if 'ab' in parts:
    run_ab(args, summary)
  if 'threads' in parts:
    run_threads(args, summary)
  if 'layers' in parts:
    run_layers(args, summary)
  if 'runtimes' in parts:
    r = bench_runtimes(args.steps, args.width_mult, args.impls)
    if args.compare_torch:
      r.update(bench_torch_forward(args.compare_torch, args.steps, args.width_mult))
    print('one ROI -> probability: ' + ', '.join(f'{k} {v}' for k, v in r.items()), flush=True)
    summary['runtimes'] = r
  if 'maps' in parts:
    r = bench_maps(args.steps, args.width_mult, args.inference_batch, args.backbone)
    print('maps, ms per ROI: ' + ', '.join(f'{k} {v}' for k, v in r.items()), flush=True)
    summary['maps'] = r
  if 'predict' in parts:
    r = bench_predict(args.frames_dir, args.frames, args.width_mult, args.inference_batch,
                      args.workers, args.ahead, args.precision)
    line = (f'predict: {r["predict_frames_per_s"]} frames/s over {r["predict_frames"]} raw '
            f'frames (batch {r["predict_batch"]}, {r["predict_workers"]} reading threads)')
    if args.compare_torch:
      r.update(bench_torch_forward(args.compare_torch, args.steps, args.width_mult,
                                   args.inference_batch, args.precision))
      r['ratio_vs_torch_forward'] = round(r['predict_frames_per_s'] / r['torch_frames_per_s'], 3)
      line += (f' | PyTorch forward alone, batch {args.inference_batch}: '
               f'{r["torch_frames_per_s"]} frames/s | ratio {r["ratio_vs_torch_forward"]}x')
    print(line, flush=True)
    summary['predict'] = r
  if 'pipeline' in parts:
    summary.update(bench_pipeline(args.data_dir, 200))
    print(f'input pipeline: {summary["pipeline_pairs_per_s"]} pairs/s', flush=True)
  if 'inference' in parts:
    summary.update(bench_inference(args.steps, args.width_mult, args.inference_batch,
                                   args.precision, args.frames_dir))
    line = (f'inference: {summary["frame_latency_ms"]} ms per raw frame (decode '
            f'{summary["decode_ms"]} + ROI {summary["roi_ms"]} + forward '
            f'{summary["forward_ms"]} ms), {summary["batched_frames_per_s"]} frames/s batched')
    if args.compare_torch:
      summary.update(bench_torch_forward(args.compare_torch, args.steps, args.width_mult,
                                         1, args.precision))
      line += f' | torch forward {summary["torch_forward_ms"]} ms'
    print(line, flush=True)
  print(json.dumps(summary))


if __name__ == '__main__':
  main()
