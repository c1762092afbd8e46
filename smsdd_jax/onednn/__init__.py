"""A 3x3 / stride 1 / SAME float32 conv on CPU computed by oneDNN, through XLA's FFI.

Why: PyTorch's CPU convolutions (oneDNN) beat XLA:CPU's on this project's
machine (docs/performance.md); this module lets the jitted train step call
oneDNN's convolution primitives directly, forward and both gradients, so the
two can be compared inside the same JAX program.

The C++ side is conv_ffi.cc, compiled by setup.py at `pip install` time into
`_conv_ffi*.so` next to this file and linked against the `onednn-cpu-gomp`
package's libdnnl (the oneDNN build with GNU OpenMP threads, as PyTorch's).
Where the library was not built or cannot load, `available()` is False,
`reason()` says why in one line, and `conv_general_dilated` falls back to
`smsdd_jax.conv.conv_general_dilated` (pure JAX), logging that line once.

Limits: NHWC activations, HWIO weights, float32 (bfloat16: below), CPU; no vmap (the FFI
calls use jax.ffi's default vmap_method=None, so vmap raises); inputs
sharded over several devices take the pure-JAX path.

bfloat16 training (opt-in: config.model.dtype='bfloat16' with conv_impl
'onednn' or 'onednn_fused'): `conv3x3_bias_relu` (fused, no batch norm) and
`conv_general_dilated` (the plain conv, batch norm's) of bfloat16 x and
float32 (master) weights run oneDNN's bfloat16 kernels where the CPU
multiplies bfloat16 natively (AVX512-BF16 or AMX: `native_bf16()`), with
float32 accumulation and float32 weight (and bias) gradients; XLA:CPU's own
bfloat16 convs are slower than its float32 ones here (docs/performance.md).
Elsewhere it logs one line saying so and runs the pure-JAX conv in bfloat16
(slow). The step's trace logs the kernels oneDNN picked (`bf16_kernels()`).
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import logging
import os
import pathlib
from importlib import metadata
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from smsdd_jax import conv, rundir

__all__ = ['available', 'reason', 'load_library', 'conv3x3', 'conv3x3_bias_relu',
           'conv_general_dilated', 'pack_kernel', 'packed_conv3x3_bias_relu', 'plans',
           'stats', 'native_bf16', 'bf16_kernels', 'BF16_OPS', 'BF16_CONV_OPS']

LIB_ENV = 'SMSDD_ONEDNN_LIB'  # Overrides the built library's path (tests, experiments).
RUNTIME_DIST = 'onednn-cpu-gomp'  # The pip package that ships libdnnl.so.3.
TARGETS = {  # FFI target name -> the symbol in conv_ffi.cc.
    'smsdd_onednn_conv3x3_fwd': 'OnednnConv3x3Fwd',
    'smsdd_onednn_conv3x3_bwd_data': 'OnednnConv3x3BwdData',
    'smsdd_onednn_conv3x3_bwd_weights': 'OnednnConv3x3BwdWeights',
    'smsdd_onednn_conv3x3_bias_relu_fwd': 'OnednnConv3x3BiasReluFwd',
    'smsdd_onednn_conv3x3_bwd_weights_bias': 'OnednnConv3x3BwdWeightsBias',
    'smsdd_onednn_conv3x3_packed_bias_relu_fwd': 'OnednnConv3x3PackedBiasReluFwd',
    'smsdd_onednn_conv3x3_packed_bias_relu_fwd_bf16': 'OnednnConv3x3PackedBiasReluFwdBf16',
    'smsdd_onednn_conv3x3_bias_relu_fwd_bf16': 'OnednnConv3x3BiasReluFwdBf16',
    'smsdd_onednn_conv3x3_bwd_data_bf16': 'OnednnConv3x3BwdDataBf16',
    'smsdd_onednn_conv3x3_bwd_weights_bias_bf16': 'OnednnConv3x3BwdWeightsBiasBf16',
    'smsdd_onednn_conv3x3_fwd_bf16': 'OnednnConv3x3FwdBf16',
    'smsdd_onednn_conv3x3_bwd_weights_bf16': 'OnednnConv3x3BwdWeightsBf16',
}
# oneDNN's instruction sets with bfloat16 dot products (AVX512-BF16, and the
# AMX ones, whose CPUs have it too): where bfloat16 convs beat float32 ones.
# Below them oneDNN still computes bfloat16, emulated, slower than float32.
BF16_ISAS = ('avx512_core_bf16', 'avx512_core_fp16', 'avx512_core_amx', 'avx512_core_amx_fp16')
BF16_CPU_FLAGS = ('avx512_bf16', 'amx_bf16')  # /proc/cpuinfo's names for the same.
# The bfloat16 training primitives, as conv_ffi.cc's kOpNames: the fused
# path's (conv + bias + ReLU) and the plain conv's (batch norm's).
BF16_OPS = ('fwd_bias_relu_bf16', 'bwd_data_bf16', 'bwd_weights_bias_bf16')
BF16_CONV_OPS = ('fwd_bf16', 'bwd_data_bf16', 'bwd_weights_bf16')
_log = logging.getLogger(__name__)
_state: dict = {}  # 'lib' and 'reason' once loaded; 'warned' once logged.


def _built_library() -> pathlib.Path | None:
  """The library setup.py compiled, named like an extension module."""
  here = pathlib.Path(__file__).parent
  for suffix in importlib.machinery.EXTENSION_SUFFIXES:
    if (here / f'_conv_ffi{suffix}').exists():
      return here / f'_conv_ffi{suffix}'
  return None


def _preload_libdnnl() -> None:
  """Loads the onednn package's libdnnl.so.3 by its installed path, so that
  the conv library's dependency on it resolves wherever pip put it (the
  rpath only covers the usual venv layouts); best effort, the conv
  library's own load reports what is missing."""
  try:
    files = metadata.distribution(RUNTIME_DIST).files or []
  except metadata.PackageNotFoundError:
    return
  for f in files:
    if f.name == 'libdnnl.so.3':
      try:
        ctypes.CDLL(str(f.locate()))
      except OSError:
        pass
      return


def _one_line(text: str) -> str:
  return ' '.join(str(text).split())


def load_library(path: str | os.PathLike | None = None):
  """Loads the conv library: (ctypes.CDLL, '') or (None, one-line reason).

  path defaults to $SMSDD_ONEDNN_LIB, else the library setup.py built."""
  path = path or os.environ.get(LIB_ENV) or _built_library()
  if path is None:
    return None, ('the oneDNN conv library was not built (pip install builds it '
                  "where g++ and the onednn packages are available)")
  _preload_libdnnl()
  try:
    lib = ctypes.CDLL(str(path))
  except OSError as e:
    hint = '' if _has_runtime() else f"; is {RUNTIME_DIST} installed? pip install 'smsdd-jax[onednn]'"
    return None, _one_line(f'cannot load {pathlib.Path(path).name}: {e}{hint}')
  lib.SmsddOnednnInit.restype = ctypes.c_char_p
  lib.SmsddOnednnVersion.restype = ctypes.c_char_p
  lib.SmsddOnednnPlans.restype = ctypes.c_char_p
  lib.SmsddOnednnNumPlans.restype = ctypes.c_int64
  lib.SmsddOnednnStats.restype = ctypes.c_char_p
  lib.SmsddOnednnStats.argtypes = [ctypes.c_int]
  lib.SmsddOnednnPack.restype = ctypes.c_char_p
  if hasattr(lib, 'SmsddOnednnIsa'):  # A library built before bfloat16 training lacks them.
    lib.SmsddOnednnIsa.restype = ctypes.c_char_p
    lib.SmsddOnednnPlanImpl.restype = ctypes.c_char_p
    lib.SmsddOnednnPlanImpl.argtypes = [ctypes.c_char_p] + [ctypes.c_int64] * 5
  lib.SmsddOnednnPack.argtypes = ([ctypes.c_int64] * 4 + [ctypes.c_int] + [ctypes.c_void_p] * 2
                                  + [ctypes.c_int64])
  error = lib.SmsddOnednnInit().decode()
  if error:
    return None, _one_line(f'oneDNN CPU engine: {error}')
  return lib, ''


def _has_runtime() -> bool:
  try:
    metadata.distribution(RUNTIME_DIST)
    return True
  except metadata.PackageNotFoundError:
    return False


def _load_once():
  """Loads the default library and registers its FFI targets, once."""
  if 'reason' not in _state:
    lib, why = load_library()
    if lib is not None:
      for name, symbol in TARGETS.items():
        if hasattr(lib, symbol):  # native_bf16() says so where the bf16 ones are missing.
          jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, symbol)),
                                      platform='cpu')
    _state.update(lib=lib, reason=why)
  return _state['lib']


def available() -> bool:
  """Whether the oneDNN path can run here; `reason()` says why not."""
  return _load_once() is not None and jax.default_backend() == 'cpu'


def reason() -> str:
  """One line: why `available()` is False ('' when it is True)."""
  if _load_once() is None:
    return _state['reason']
  return '' if jax.default_backend() == 'cpu' else f'backend is {jax.default_backend()}, not cpu'


def version() -> str:
  """'oneDNN X.Y.Z (cpu runtime N)' of the loaded library, '' if none."""
  lib = _load_once()
  return lib.SmsddOnednnVersion().decode() if lib is not None else ''


def plans() -> list[str]:
  """The cached primitives, one 'op n h w c k implementation' line each."""
  lib = _load_once()
  return lib.SmsddOnednnPlans().decode().splitlines() if lib is not None else []


def stats(reset: bool = False) -> list[dict]:
  """Per primitive that ran since the last reset: calls and the summed
  milliseconds of the convolution and of its weights reorder."""
  lib = _load_once()
  if lib is None:
    return []
  rows = []
  for line in lib.SmsddOnednnStats(int(reset)).decode().splitlines():
    op, n, h, w, c, k, calls, conv_ms, reorder_ms = line.split()
    rows.append({'op': op, 'shape': tuple(int(v) for v in (n, h, w, c, k)),
                 'calls': int(calls), 'conv_ms': float(conv_ms),
                 'reorder_ms': float(reorder_ms)})
  return rows


def _ffi(target: str, shapes, *args, dtype=jnp.float32):
  """Calls a target; shapes: one result's shape, or a list of them."""
  if _load_once() is None:  # Registers the targets on first use.
    raise RuntimeError(f'smsdd_jax.onednn: {reason()}')
  if isinstance(shapes, list):
    out = [jax.ShapeDtypeStruct(tuple(s), dtype) for s in shapes]
  else:
    out = jax.ShapeDtypeStruct(tuple(shapes), dtype)
  return jax.ffi.ffi_call(target, out)(*args)


def _with_batch_sharding(out, like):
  """ffi_call's results carry no sharding; on a 1-device explicit mesh
  (train.py's on one CPU) give `out` the batch sharding of `like` back, free,
  so that the types match what lax's conv would give."""
  if not conv._batch_axes(like):
    return out
  sharding = jax.typeof(like).sharding
  return jax.sharding.reshard(out, NamedSharding(sharding.mesh, P(sharding.spec[0])))


def _fwd_call(x, w):
  y = _ffi('smsdd_onednn_conv3x3_fwd', (*x.shape[:3], w.shape[3]), x, w)
  return _with_batch_sharding(y, x)


@jax.custom_vjp
def conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
  """3x3, stride 1, SAME conv of float32 x (N, H, W, C) and w (3, 3, C, K)."""
  return _fwd_call(x, w)


def _conv3x3_fwd(x, w):
  return _fwd_call(x, w), (x, w)


def _conv3x3_bwd(res, dy):
  x, w = res
  dx = _ffi('smsdd_onednn_conv3x3_bwd_data', x.shape, dy, w)
  dw = _ffi('smsdd_onednn_conv3x3_bwd_weights', w.shape, x, dy)
  return _with_batch_sharding(dx, x), dw


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


def _fused_bias_relu(suffix: str, dtype) -> Callable:
  """relu(conv3x3(x, w) + b) through oneDNN's kernels named
  smsdd_onednn_conv3x3_*{suffix}, with their gradients: x, y and dx in
  `dtype` (float32, or bfloat16 where the CPU has it), w and b float32 (the
  master weights) and so are dw and db, accumulated by the kernel in float32,
  never rounded to bfloat16."""
  fwd_target = f'smsdd_onednn_conv3x3_bias_relu_fwd{suffix}'

  def call(x, w, b):
    y = _ffi(fwd_target, (*x.shape[:3], w.shape[3]), x, w, b, dtype=dtype)
    return _with_batch_sharding(y, x)

  @jax.custom_vjp
  def fused(x, w, b):
    return call(x, w, b)

  def fwd(x, w, b):
    y = call(x, w, b)
    return y, (x, w, y)

  def bwd(res, dy):
    x, w, y = res
    g = conv.relu_backward(y, dy.astype(dtype))
    dx = _ffi(f'smsdd_onednn_conv3x3_bwd_data{suffix}', x.shape, g, w, dtype=dtype)
    dw, db = _ffi(f'smsdd_onednn_conv3x3_bwd_weights_bias{suffix}', [w.shape, w.shape[3:]],
                  x, g)
    return _with_batch_sharding(dx, x), dw, db

  fused.defvjp(fwd, bwd)
  return fused


_bias_relu = _fused_bias_relu('', jnp.float32)


def conv3x3_bias_relu(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """relu(conv3x3(x, w) + b) as one oneDNN primitive (bias and ReLU as its
  post-ops; the bias gradient inside the weight-gradient kernel); float32
  x (N, H, W, C), w (3, 3, C, K), b (K,). Computed in x's dtype: bfloat16
  x with float32 (master) w and b runs the bfloat16 kernels where the CPU
  has native bfloat16 (`native_bf16`; float32 gradients of w and b), else
  logs once why not and runs the pure-JAX conv in bfloat16. Where oneDNN
  cannot take it (the library missing, another dtype, a batch sharded over
  devices) it is `smsdd_jax.conv.conv3x3_bias_relu`, the same values in
  pure JAX."""
  one_device = not any(size > 1 for size in conv._batch_axes(x).values())
  if x.ndim == 4 and x.dtype == jnp.bfloat16 and one_device:
    native, why = native_bf16()
    if native:
      _note_bf16_kernels(x, w)
      return _bias_relu_bf16(x, w.astype(jnp.float32), b.astype(jnp.float32))
    _warn_bf16_once(why)
    return conv.conv3x3_bias_relu(x, w.astype(x.dtype), b.astype(x.dtype))
  fits = (x.ndim == 4 and all(a.dtype == jnp.float32 for a in (x, w, b)) and one_device)
  if fits and available():
    return _bias_relu(x, w, b)
  if fits:
    _warn_fallback_once()
  return conv.conv3x3_bias_relu(x, w.astype(x.dtype), b.astype(x.dtype))


def _cpu_flags() -> set[str]:
  return set(rundir.cpu_field('flags').split())


def native_bf16() -> tuple[bool, str]:
  """(whether bfloat16 training runs oneDNN's bfloat16 kernels here, one
  line saying why or why not). Both the CPU's flags (avx512_bf16 / amx_bf16)
  and oneDNN's effective ISA (the CPU's, capped by ONEDNN_MAX_CPU_ISA) must
  have native bfloat16 dot products: without them oneDNN emulates bfloat16,
  slower than its float32."""
  if 'bf16' not in _state:
    lib = _load_once()
    if not available():
      _state['bf16'] = (False, f'oneDNN unavailable ({reason()})')
    elif not hasattr(lib, 'SmsddOnednnIsa') or not all(
        hasattr(lib, TARGETS[t]) for t in (_BF16_FWD, _BF16_CONV_FWD)):
      _state['bf16'] = (False, 'the oneDNN conv library predates (some of) its bfloat16 '
                        "training kernels: reinstall (pip install -e '.[test]') to rebuild it")
    else:
      isa = lib.SmsddOnednnIsa().decode()
      flags = sorted(_cpu_flags() & set(BF16_CPU_FLAGS))
      ok = isa in BF16_ISAS and bool(flags)
      cpu = f"CPU flags {'+'.join(flags)}" if flags else 'no avx512_bf16/amx_bf16 CPU flag'
      _state['bf16'] = (ok, f'oneDNN ISA {isa}, {cpu}')
  return _state['bf16']


def bf16_kernels(shape, ops=BF16_OPS) -> dict[str, str]:
  """{op: oneDNN implementation} of the bfloat16 training primitives `ops`
  (the fused path's by default; BF16_CONV_OPS: the plain conv's) for x of
  shape (n, h, w, c) and k output channels (shape = (n, h, w, c, k)),
  building them if needed (they are cached for the run), e.g.
  {'fwd_bias_relu_bf16': 'brgconv:avx512_core_bf16', ...}."""
  lib = _load_once()
  if lib is None or not hasattr(lib, 'SmsddOnednnPlanImpl'):
    return {}
  return {op: lib.SmsddOnednnPlanImpl(op.encode(), *(int(v) for v in shape)).decode()
          for op in ops}


def _note_bf16_kernels(x, w, ops=BF16_OPS) -> None:
  """Logs (once per new combination, while the step is traced) which oneDNN
  kernels the bfloat16 step runs: the record of which path ran."""
  impls = bf16_kernels((*x.shape, w.shape[3]), ops)
  seen = _state.setdefault('bf16_impls', {})
  new = {op: impl for op, impl in impls.items() if impl not in seen.setdefault(op, set())}
  for op, impl in new.items():
    seen[op].add(impl)
  if new:
    _log.info('bfloat16 training through oneDNN (%s): %s', native_bf16()[1],
              ', '.join(f'{op} {impl}' for op, impl in impls.items()))


_BF16_FWD = 'smsdd_onednn_conv3x3_bias_relu_fwd_bf16'


_bias_relu_bf16 = _fused_bias_relu('_bf16', jnp.bfloat16)

_BF16_CONV_FWD = 'smsdd_onednn_conv3x3_fwd_bf16'


def _conv3x3_bf16_call(x, w):
  y = _ffi(_BF16_CONV_FWD, (*x.shape[:3], w.shape[3]), x, w.astype(jnp.float32),
           dtype=jnp.bfloat16)
  return _with_batch_sharding(y, x)


@jax.custom_vjp
def _conv3x3_bf16(x, w):
  """The plain conv (batch norm's) in bfloat16: bfloat16 x, w float32 (the
  master weights, which models.py passes as they are) or bfloat16 (as
  nn.Conv's own dtype promotion gives it; widened exactly, for the kernels'
  float32 HWIO input)."""
  return _conv3x3_bf16_call(x, w)


def _conv3x3_bf16_fwd(x, w):
  return _conv3x3_bf16_call(x, w), (x, w)


def _conv3x3_bf16_bwd(res, dy):
  x, w = res
  dy = dy.astype(jnp.bfloat16)
  dx = _ffi('smsdd_onednn_conv3x3_bwd_data_bf16', x.shape, dy, w.astype(jnp.float32),
            dtype=jnp.bfloat16)
  # Accumulated and returned in float32 by oneDNN; a custom_vjp must give
  # w's own dtype back, so a bfloat16 w (not models.py's) gets it rounded.
  dw = _ffi('smsdd_onednn_conv3x3_bwd_weights_bf16', w.shape, x, dy)
  return _with_batch_sharding(dx, x), dw.astype(w.dtype)


_conv3x3_bf16.defvjp(_conv3x3_bf16_fwd, _conv3x3_bf16_bwd)


def _warn_bf16_once(why: str):
  if not _state.get('warned_bf16'):
    _state['warned_bf16'] = True
    _log.warning('bfloat16 training: not through oneDNN (%s); its convs run in XLA:CPU '
                 'bfloat16 instead, slower than float32 here', why)


def pack_kernel(kernel, h: int, w: int, dtype='float32'):
  """A layer's HWIO kernel (3, 3, C, K) float32, seen at h x w, rearranged
  into oneDNN's layout for `packed_conv3x3_bias_relu`, in `dtype` (float32
  or bfloat16): a numpy array of the same shape (so that it stands in the
  same parameter tree) whose memory is in that layout. None where it cannot
  be (no library; a layout of another size, as for C = 3 in bfloat16). For
  inference only: pack once, score many times."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  lib = _load_once()
  src = np.ascontiguousarray(np.asarray(kernel, np.float32))
  if lib is None or src.ndim != 4 or src.shape[:2] != (3, 3):
    return None
  out = np.empty(src.shape, jnp.dtype(dtype))
  why = lib.SmsddOnednnPack(h, w, src.shape[2], src.shape[3], int(out.dtype == jnp.bfloat16),
                            src.ctypes.data, out.ctypes.data, out.nbytes).decode()
  return None if why else out


def packed_conv3x3_bias_relu(x: jax.Array, w_packed: jax.Array, b: jax.Array) -> jax.Array:
  """relu(conv3x3(x, w) + b) for inference, with w from `pack_kernel` (no
  reorder per call), computed in w_packed's dtype (x is cast to it and the
  result back to x's; the bias stays float32). Not differentiable: the
  packed array is not HWIO."""
  bf16 = w_packed.dtype == jnp.bfloat16
  target = 'smsdd_onednn_conv3x3_packed_bias_relu_fwd' + ('_bf16' if bf16 else '')
  y = _ffi(target, (*x.shape[:3], w_packed.shape[3]), x.astype(w_packed.dtype), w_packed,
           b.astype(jnp.float32), dtype=w_packed.dtype)
  return _with_batch_sharding(y.astype(x.dtype), x)


def _onednn_fits(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                 dimension_numbers, feature_group_count, batch_group_count,
                 precision, preferred_element_type) -> str:
  """The oneDNN kernels' case: 3x3 / stride 1 / SAME / NHWC-HWIO, on one
  device (a batch sharded over several would need a partitioning rule):
  'float32' (x and w float32), 'bfloat16' (x bfloat16, w float32 or
  bfloat16), else ''."""
  if precision is not None or preferred_element_type is not None or lhs.ndim != 4:
    return ''
  if lhs.dtype == rhs.dtype == jnp.float32:
    dtype = 'float32'
  elif lhs.dtype == jnp.bfloat16 and rhs.dtype in (jnp.float32, jnp.bfloat16):
    dtype = 'bfloat16'
  else:
    return ''
  if not conv._is_3x3_same(rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                           dimension_numbers, feature_group_count, batch_group_count):
    return ''
  return '' if any(size > 1 for size in conv._batch_axes(lhs).values()) else dtype


def _warn_fallback_once():
  if not _state.get('warned'):
    _state['warned'] = True
    _log.warning('oneDNN conv unavailable (%s); using the pure-JAX conv', reason())


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None,
                         feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """Drop-in for `lax.conv_general_dilated`: oneDNN for the 3x3 / stride 1
  / SAME / NHWC-HWIO case, `smsdd_jax.conv.conv_general_dilated` otherwise.
  bfloat16 lhs may come with a float32 (master) rhs: oneDNN's bfloat16
  kernels where the CPU has native bfloat16 (float32 weight gradient), else
  one line saying why not and the pure-JAX conv in bfloat16."""
  if lhs.dtype == jnp.bfloat16 and rhs.dtype != lhs.dtype:
    master, rhs = rhs, rhs.astype(lhs.dtype)  # What every path but oneDNN's bfloat16 one takes.
  else:
    master = None
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count, precision,
          preferred_element_type)
  fits = _onednn_fits(*args)
  if fits == 'float32':
    if available():
      return conv3x3(lhs, rhs)
    _warn_fallback_once()
  elif fits == 'bfloat16':
    native, why = native_bf16()
    if native:
      w = rhs if master is None else master  # The float32 master weights, uncast.
      _note_bf16_kernels(lhs, w, BF16_CONV_OPS)
      return _conv3x3_bf16(lhs, w)
    _warn_bf16_once(why)
  return conv.conv_general_dilated(*args)
