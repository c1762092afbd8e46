"""ImageNet VGG16 conv weights from a local file, without torch or TensorFlow.

`config.model.init` = '' trains from scratch (the paper's literal reading);
a path initialises the 13 conv layers (and batch-norm statistics) from one of
the files people have, where the backbone states where they go
(backbones' `pretrained` layout: VGG16's; a backbone without one refuses any
file). The format is recognised from the bytes, not the name:

  torchvision state dict   vgg16-397923af.pth, vgg16_bn-6c64b313.pth: PyTorch's
                           zip format (>= 1.6) or the older pickle stream,
                           read by a restricted unpickler that only rebuilds
                           arrays (nothing in the file is executed)
  safetensors              the same keys (features.N.weight, ...)
  Keras HDF5               vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
                           (block1_conv1 ... block5_conv3, kernel and bias)

The classifier stays randomly initialised. Each file's weights expect their
own input convention, expressed here as the (pixel - mean) / std stats our
pipeline applies to RGB pixels in [0, 255] (see `CONVENTIONS`); train.py
writes them to data_stats.json, so training and prediction both use them.

  stats = pretrained.stats(config.model)        # validates, reads no arrays
  params, model_state = pretrained.load(config.model, params, model_state)

Every refusal is a `PretrainedError` (a ValueError) with a one-line message.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import os
import pickle
import re
import struct
import zipfile
from typing import Callable

import numpy as np

from smsdd_jax import backbones
from smsdd_jax import rundir

logging = logging.getLogger('smsdd_jax')

TORCHVISION, KERAS = 'torchvision', 'keras'
# torchvision: RGB, (pixel / 255 - mean) / std with ImageNet's stats.
# keras (caffe style): BGR minus the BGR mean, no std; `load` flips the first
# conv's input channels so the model still takes RGB, hence the RGB mean here.
CONVENTIONS = {
    TORCHVISION: {'mean': [0.485 * 255, 0.456 * 255, 0.406 * 255],
                  'std': [0.229 * 255, 0.224 * 255, 0.225 * 255]},
    KERAS: {'mean': [123.68, 116.779, 103.939], 'std': [1.0, 1.0, 1.0]},
}
BN_EPSILON = 1e-5  # torch's BatchNorm2d default, the same as flax's nn.BatchNorm.

_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # The legacy (pre-zip) torch.save header.
_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
_BF16 = 'bfloat16'  # numpy has no bfloat16: its bits are widened to float32.
_TORCH_DTYPES = {'FloatStorage': '<f4', 'DoubleStorage': '<f8', 'HalfStorage': '<f2',
                 'BFloat16Storage': _BF16, 'LongStorage': '<i8', 'IntStorage': '<i4',
                 'ShortStorage': '<i2', 'CharStorage': 'i1', 'ByteStorage': 'u1',
                 'BoolStorage': '?'}
_SAFETENSORS_DTYPES = {'F32': '<f4', 'F64': '<f8', 'F16': '<f2', 'BF16': _BF16,
                       'I64': '<i8', 'I32': '<i4', 'I16': '<i2', 'I8': 'i1', 'U8': 'u1',
                       'BOOL': '?'}


class PretrainedError(ValueError):
  """config.model.init names a file that cannot initialise this model."""


@dataclasses.dataclass(frozen=True)
class _Array:
  """An array in a file: its shape now, its values when `read()`."""
  shape: tuple[int, ...]
  read: Callable[[], np.ndarray]


@dataclasses.dataclass(frozen=True)
class _Layer:
  """Where conv layer i of the model comes from, with the shapes it needs."""
  index: int
  kernel: str  # Key of the kernel in the file.
  bias: str
  kernel_shape: tuple[int, ...]  # In the file's own layout.
  bn: dict[str, str] | None = None  # 'scale', 'bias', 'mean', 'var' -> key.


# ------------------------------------------------------------------ public


def stats(model_config) -> dict:
  """The input normalisation the weights in `model_config.init` expect:
  {'mean', 'std', 'convention'}. Checks the file against the model (keys,
  shapes, batch norm, width) from its header alone, so a bad file is refused
  before anything compiles."""
  fmt, index = _open(model_config.init)
  _plan(model_config, fmt, index)
  convention = KERAS if fmt == 'keras_h5' else TORCHVISION
  return {**CONVENTIONS[convention], 'convention': convention}


def load(model_config, params: dict, model_state: dict) -> tuple[dict, dict]:
  """`params` / `model_state` with the 13 conv layers (kernel, bias, batch-norm
  scale, offset and statistics) replaced by the file's; the rest unchanged.
  Replaced leaves are numpy arrays of the leaves' dtypes."""
  fmt, index = _open(model_config.init)
  plan = _plan(model_config, fmt, index)
  try:
    return _replace(model_config.init, fmt, index, plan, params, model_state,
                    _layout(model_config))
  except PretrainedError:
    raise
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # Corrupt data.
    _fail(model_config.init, f'unreadable ({type(e).__name__}: {e})')


def _replace(path, fmt, index, plan, params, model_state, layout):
  """`load` once the plan is checked: reads the arrays and swaps them in."""
  params = dict(params)
  batch_stats = dict(model_state.get('batch_stats', {}))
  for layer in plan:
    kernel = index[layer.kernel].read().astype(np.float32)
    bias = index[layer.bias].read().astype(np.float32)
    if fmt == 'keras_h5':  # HWIO already; the first layer's input BGR -> RGB.
      kernel = kernel[:, :, ::-1, :] if layer.index == 0 else kernel
    else:  # torch OIHW -> HWIO; both are cross-correlations, no spatial flip.
      kernel = kernel.transpose(2, 3, 1, 0)
    conv_name = layout.conv_names[layer.index]
    conv = dict(params[conv_name])
    conv['kernel'] = _like(kernel, conv['kernel'], f'{conv_name}/kernel')
    if layer.bn is None:
      conv['bias'] = _like(bias, conv['bias'], f'{conv_name}/bias')
    else:
      # Our conv has no bias before batch norm; torchvision's has one. BN
      # subtracts the running mean right after it, so folding it there is exact.
      name = layout.bn_name(conv_name)
      read = {k: index[v].read().astype(np.float32) for k, v in layer.bn.items()}
      norm = dict(params[name])
      norm['scale'] = _like(read['scale'], norm['scale'], f'{name}/scale')
      norm['bias'] = _like(read['bias'], norm['bias'], f'{name}/bias')
      params[name] = norm
      bn_stats = dict(batch_stats[name])
      bn_stats['mean'] = _like(read['mean'] - bias, bn_stats['mean'], f'{name}/mean')
      bn_stats['var'] = _like(read['var'], bn_stats['var'], f'{name}/var')
      batch_stats[name] = bn_stats
    params[conv_name] = conv
  if batch_stats:
    model_state = {**model_state, 'batch_stats': batch_stats}
  logging.info('initialised the %d conv layers from %s (%s, %s convention)',
               len(plan), path, fmt,
               KERAS if fmt == 'keras_h5' else TORCHVISION)
  return params, model_state


def _like(value: np.ndarray, leaf, what: str) -> np.ndarray:
  if tuple(value.shape) != tuple(leaf.shape):  # _plan checked: a model change.
    raise PretrainedError(f'{what}: pretrained {value.shape} vs model {leaf.shape}')
  return np.ascontiguousarray(value, dtype=np.dtype(leaf.dtype))


# ------------------------------------------------------------------ the plan


def _fail(path: str, message: str):
  raise PretrainedError(f'config.model.init={path}: {message}')


def _plan(model_config, fmt: str, index: dict[str, _Array]) -> list[_Layer]:
  """The 13 layers' keys in the file, after checking everything that can be
  checked without reading the arrays."""
  path = model_config.init
  layout = _layout(model_config)
  if model_config.width_mult != 1.0:
    _fail(path, f'ImageNet {layout.title} weights fit only config.model.width_mult=1.0, '
          f'not {model_config.width_mult}')
  if fmt == 'keras_h5':
    plan = _keras_plan(path, index, layout, model_config.batch_norm)
  else:
    plan = _torch_plan(path, index, layout, model_config.batch_norm)
  missing = [k for layer in plan
             for k in (layer.kernel, layer.bias, *(layer.bn or {}).values())
             if k not in index]
  if missing:
    _fail(path, f'missing keys {", ".join(missing[:4])}'
          f'{f" and {len(missing) - 4} more" if len(missing) > 4 else ""} '
          f'({len(missing)} of the {layout.title} conv layers\' {_count(plan)} entries)')
  return plan


def _layout(model_config) -> backbones.base.PretrainedLayout:
  """Where the backbone's conv layers come from in a weights file."""
  backbone = backbones.get(model_config.backbone)
  if backbone.pretrained is None:
    _fail(model_config.init, f'config.model.backbone={backbone.name!r} reads no weights '
          "file (only 'vgg16' does): set config.model.init=''")
  return backbone.pretrained


def _count(plan) -> int:
  return sum(2 + len(layer.bn or {}) for layer in plan)


def _check_shape(path, index, key, need, layout, layer, hint=''):
  if key in index and tuple(index[key].shape) != tuple(need):
    _fail(path, f'{key} has shape {tuple(index[key].shape)} but the model\'s '
          f'{layer} needs {tuple(need)} ({layout}){hint}')


def _torch_plan(path, index, layout, batch_norm: bool) -> list[_Layer]:
  features = {k: v for k, v in index.items() if k.startswith('features.')}
  if not features:
    some = ', '.join(list(index)[:5]) or 'none'
    _fail(path, f'no features.N.weight keys: not a torchvision VGG16 state dict '
          f'(keys: {some})')
  file_bn = any(k.endswith(('.running_mean', '.running_var')) for k in features)
  if file_bn != batch_norm:
    _fail(path, f'the file holds VGG16{"-BN" if file_bn else ""} weights '
          f'({"with" if file_bn else "without"} batch norm) but '
          f'config.model.batch_norm={batch_norm}: set it to {file_bn} or use '
          f'{"vgg16_bn-6c64b313.pth" if batch_norm else "vgg16-397923af.pth"}')
  positions = layout.torch_positions(batch_norm)
  extra = sorted((k for k, v in features.items()
                  if len(v.shape) == 4 and int(k.split('.')[1]) not in positions),
                 key=lambda k: int(k.split('.')[1]))
  if extra:
    _fail(path, f'conv weights at {", ".join(extra[:3])}, where VGG16 has none: '
          'not a VGG16 (VGG11/13/19?)')
  plan = []
  for i, (p, (cin, cout)) in enumerate(zip(positions, layout.conv_io)):
    bn = None
    if batch_norm:
      bn = {'scale': f'features.{p + 1}.weight', 'bias': f'features.{p + 1}.bias',
            'mean': f'features.{p + 1}.running_mean',
            'var': f'features.{p + 1}.running_var'}
    layer = _Layer(i, f'features.{p}.weight', f'features.{p}.bias',
                   (cout, cin, 3, 3), bn)
    _check_shape(path, index, layer.kernel, layer.kernel_shape, 'OIHW', layout.conv_names[i])
    for key in (layer.bias, *(bn or {}).values()):
      _check_shape(path, index, key, (cout,), 'channels', f'layer {i}')
    plan.append(layer)
  return plan


def _keras_plan(path, index, layout, batch_norm: bool) -> list[_Layer]:
  if batch_norm:
    _fail(path, 'Keras\' VGG16 weights have no batch norm but '
          'config.model.batch_norm=True: set it to False or use vgg16_bn-6c64b313.pth')
  plan = []  # Keras names its layers as our tree does.
  for i, (name, (cin, cout)) in enumerate(zip(layout.conv_names, layout.conv_io)):
    layer = _Layer(i, f'{name}/kernel', f'{name}/bias', (3, 3, cin, cout))
    hint = ''
    if layer.kernel in index and tuple(index[layer.kernel].shape) == (cout, cin, 3, 3):
      hint = ': a Theano-ordered file? use the tf_dim_ordering one'
    _check_shape(path, index, layer.kernel, layer.kernel_shape, 'HWIO', name, hint)
    _check_shape(path, index, layer.bias, (cout,), 'channels', name)
    plan.append(layer)
  return plan


# ------------------------------------------------------------------ formats


def _open(path: str) -> tuple[str, dict[str, _Array]]:
  """(format, {key: _Array}) of the file; arrays are read on demand."""
  if path and os.path.isdir(path):
    _fail(path, _directory_reason(path))
  if not path or not os.path.isfile(path):
    _fail(path, 'no such file')
  with open(path, 'rb') as f:
    head = f.read(1024)
  size = os.path.getsize(path)
  try:
    if len(head) >= 9 and head[8:9] == b'{':  # Before pickle: its length may start 0x80.
      (n,) = struct.unpack('<Q', head[:8])
      if 8 + n <= size:
        return 'safetensors', _safetensors(path, n)
    if head.startswith(b'PK\x03\x04'):
      with zipfile.ZipFile(path) as z:
        if _data_pkl(z) is None:
          _fail(path, 'a zip archive without data.pkl: not a torch.save file '
                '(a Keras 3 .keras file? give its model.weights.h5)')
      return 'torch_zip', _torch_zip(path)
    if head.startswith(_HDF5_SIGNATURE):
      return 'keras_h5', _keras_h5(path)
    if head[257:262] == b'ustar':
      _fail(path, 'a tar-format torch file (PyTorch < 0.1.10): load and re-save it '
            'with torch, or download vgg16-397923af.pth')
    if head[:1] == b'\x80':
      return 'torch_legacy', _torch_legacy(path)
  except PretrainedError:
    raise
  except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError, struct.error,
          zipfile.BadZipFile, pickle.UnpicklingError) as e:
    _fail(path, f'unreadable ({type(e).__name__}: {e})')
  _fail(path, f'unknown format (first bytes {head[:8]!r}): expected a torchvision '
        '.pth state dict, .safetensors or a Keras .h5')


def _directory_reason(path: str) -> str:
  """Why a directory cannot initialise the model, and what would."""
  wanted = ('expected an ImageNet VGG16 weights file (.pth state dict, .safetensors or '
            'Keras .h5)')
  if any(os.path.exists(os.path.join(path, name))
         for name in (rundir.CONFIG, rundir.CHECKPOINTS)):
    return (f'a training run directory, not a weights file: {wanted}; to continue that '
            f'run, rerun its command with --workdir={path} and no model.init')
  return f'a directory, not a file: {wanted}'


def _bytes_to_array(data: bytes, dtype: str, count: int, offset: int = 0) -> np.ndarray:
  if dtype == _BF16:
    bits = np.frombuffer(data, '<u2', count, offset).astype(np.uint32) << 16
    return bits.view(np.float32)
  return np.frombuffer(data, dtype, count, offset)


def _safetensors(path: str, header_len: int) -> dict[str, _Array]:
  with open(path, 'rb') as f:
    f.seek(8)
    header = json.loads(f.read(header_len))
  start, size = 8 + header_len, os.path.getsize(path)
  index = {}
  for key, entry in header.items():
    if key == '__metadata__':
      continue
    dtype = _SAFETENSORS_DTYPES.get(entry['dtype'])
    shape = tuple(int(d) for d in entry['shape'])
    begin, end = (int(v) for v in entry['data_offsets'])
    count = int(np.prod(shape))
    item = 2 if dtype == _BF16 else np.dtype(dtype or 'u1').itemsize
    if dtype is None or end - begin != count * item or start + end > size or begin < 0:
      _fail(path, f'safetensors entry {key} ({entry["dtype"]}, {shape}, '
            f'{begin}..{end}) is unsupported or out of bounds')

    def read(begin=begin, count=count, dtype=dtype, shape=shape, n=end - begin):
      with open(path, 'rb') as f:
        f.seek(start + begin)
        return _bytes_to_array(f.read(n), dtype, count).reshape(shape)
    index[key] = _Array(shape, read)
  return index


def _keras_h5(path: str) -> dict[str, _Array]:
  """{'block1_conv1/kernel': ..., 'block1_conv1/bias': ...}: each layer's group
  (at the root in save_weights files, under model_weights/ in whole-model ones,
  layers/<name>/vars in Keras 3) holds a 4-D kernel and a 1-D bias."""
  try:
    import h5py  # pylint: disable=import-outside-toplevel
  except ImportError:
    _fail(path, 'an HDF5 file, and reading it needs h5py (TensorFlow brings it)')
  index = {}
  with h5py.File(path, 'r') as f:
    groups = {}  # Layer name -> its shallowest group (visititems goes breadth-first).

    def find_layers(name, obj):  # visititems stops at a callback's non-None.
      layer = name.rsplit('/', 1)[-1]
      if isinstance(obj, h5py.Group) and re.fullmatch(r'block\d_conv\d', layer):
        groups.setdefault(layer, name)
    f.visititems(find_layers)
    for layer, group in groups.items():
      datasets = []

      def find_arrays(name, obj, group=group, datasets=datasets):
        if isinstance(obj, h5py.Dataset):
          datasets.append((f'{group}/{name}', obj.shape))
      f[group].visititems(find_arrays)
      for kind, ndim in (('kernel', 4), ('bias', 1)):
        found = [(n, s) for n, s in datasets if len(s) == ndim]
        if len(found) > 1:
          _fail(path, f'{layer} holds {len(found)} {ndim}-D arrays: which is its {kind}?')
        if found:
          name, shape = found[0]

          def read(name=name):
            with h5py.File(path, 'r') as g:
              return np.asarray(g[name])
          index[f'{layer}/{kind}'] = _Array(tuple(shape), read)
  return index


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  dtype: str
  numel: int
  offset: int = 0  # Elements into the root storage (legacy views).


@dataclasses.dataclass(frozen=True)
class _TorchTensor:
  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]


class _StorageType:
  def __init__(self, name: str):
    self.dtype = _TORCH_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError('a tensor without a storage')
  return _TorchTensor(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


def _rebuild_parameter(data, *unused):
  return data


# The only callables a state dict of tensors needs; anything else (a pickled
# nn.Module, os.system, ...) is refused rather than imported.
_SAFE_GLOBALS = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
  """Rebuilds a torch state dict as `_TorchTensor`s; imports nothing."""

  def __init__(self, file, path: str, storages: dict[str, _Storage] | None = None):
    super().__init__(file)
    self.path, self.storages = path, storages

  def find_class(self, module, name):
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[module, name]
    if module == 'torch' and name in _TORCH_DTYPES:
      return _StorageType(name)
    _fail(self.path, f'the pickle holds {module}.{name}, which a state dict of '
          'tensors does not: save model.state_dict() (refused, nothing executed)')

  def persistent_load(self, pid):
    if self.storages is None or not isinstance(pid, tuple) or len(pid) < 5:
      raise pickle.UnpicklingError(f'unexpected persistent id {pid!r}')
    kind, storage_type, key, _, numel, *view = pid
    if (kind.decode() if isinstance(kind, bytes) else kind) != 'storage' or not isinstance(
        storage_type, _StorageType):
      raise pickle.UnpicklingError(f'unexpected persistent id {pid!r}')
    key = str(key)
    root = self.storages.setdefault(key, _Storage(key, storage_type.dtype, int(numel)))
    if view and view[0] is not None:  # Legacy: (view_key, offset, size) of the root.
      return dataclasses.replace(root, offset=int(view[0][1]))
    return root


def _state_dict(result, path: str) -> dict:
  if isinstance(result, dict) and not any(
      isinstance(k, str) and k.startswith(('features.', 'module.features.')) for k in result):
    for wrapper in ('state_dict', 'model'):  # Training checkpoints nest it.
      if isinstance(result.get(wrapper), dict):
        result = result[wrapper]
        break
  if not isinstance(result, dict):
    _fail(path, f'holds a {type(result).__name__}, not a state dict')
  return {(k[len('module.'):] if k.startswith('module.') else k): v
          for k, v in result.items() if isinstance(k, str)}


def _tensor_index(state: dict, storage_bytes: Callable[[_Storage], bytes],
                  path: str) -> dict[str, _Array]:
  index = {}
  for key, t in state.items():
    if not isinstance(t, _TorchTensor):
      continue  # e.g. num_batches_tracked as a plain int in some exports.
    last = t.storage.offset + t.offset + sum((n - 1) * s for n, s in zip(t.shape, t.stride))
    if min(t.shape, default=1) > 0 and (last >= t.storage.numel or min(t.stride, default=0) < 0
                                        or t.offset < 0):
      _fail(path, f'{key}: shape {t.shape} / stride {t.stride} overrun its storage')

    def read(t=t):
      flat = _bytes_to_array(storage_bytes(t.storage), t.storage.dtype, t.storage.numel)
      item = flat.itemsize
      if int(np.prod(t.shape)) == 0:
        return np.zeros(t.shape, flat.dtype)
      return np.lib.stride_tricks.as_strided(
          flat[t.storage.offset + t.offset:], t.shape,
          tuple(s * item for s in t.stride)).copy()
    index[key] = _Array(t.shape, read)
  return index


def _data_pkl(z: zipfile.ZipFile) -> str | None:
  return next((n for n in z.namelist() if n.endswith('data.pkl') and n.count('/') <= 1),
              None)


def _torch_zip(path: str) -> dict[str, _Array]:
  """torch.save's zip: <prefix>/data.pkl refers to storages <prefix>/data/<key>."""
  with zipfile.ZipFile(path) as z:
    pkl = _data_pkl(z)
    prefix = pkl[:-len('data.pkl')]
    names = set(z.namelist())
    order = (z.read(f'{prefix}byteorder').decode().strip()
             if f'{prefix}byteorder' in names else 'little')
    if order != 'little':
      _fail(path, f'byte order {order!r}: only little-endian files are supported')
    storages: dict[str, _Storage] = {}
    state = _state_dict(_Unpickler(io.BytesIO(z.read(pkl)), path, storages).load(), path)

  def storage_bytes(s: _Storage) -> bytes:
    with zipfile.ZipFile(path) as z:
      data = z.read(f'{prefix}data/{s.key}')
    if len(data) < s.numel * (2 if s.dtype == _BF16 else np.dtype(s.dtype).itemsize):
      _fail(path, f'storage {s.key} is shorter than its {s.numel} elements')
    return data
  return _tensor_index(state, storage_bytes, path)


def _torch_legacy(path: str) -> dict[str, _Array]:
  """torch.save before PyTorch 1.6 (torchvision's VGG files): pickles of the
  magic number, protocol, system info, the object, the storage keys; then
  each storage as an int64 element count followed by its raw bytes."""
  storages: dict[str, _Storage] = {}
  with open(path, 'rb') as f:
    if _Unpickler(f, path).load() != _TORCH_MAGIC:
      _fail(path, 'a pickle but not a torch.save file (no torch magic number)')
    _Unpickler(f, path).load()  # Protocol version.
    _Unpickler(f, path).load()  # System info: byte order, type sizes.
    state = _state_dict(_Unpickler(f, path, storages).load(), path)
    keys = [str(k) for k in _Unpickler(f, path).load()]
    positions, size = {}, os.path.getsize(path)
    for key in keys:
      if key not in storages:
        _fail(path, f'storage {key} is listed but never used: corrupt file')
      s = storages[key]
      (count,) = struct.unpack('<q', f.read(8))
      item = 2 if s.dtype == _BF16 else np.dtype(s.dtype).itemsize
      positions[key] = f.tell()
      if count != s.numel or f.tell() + count * item > size:
        _fail(path, f'storage {key}: {count} elements on disk, {s.numel} expected, '
              f'or past the end of the file')
      f.seek(count * item, io.SEEK_CUR)

  def storage_bytes(s: _Storage) -> bytes:
    if s.key not in positions:
      _fail(path, f'storage {s.key} has no data: corrupt file')
    with open(path, 'rb') as f:
      f.seek(positions[s.key])
      return f.read(s.numel * (2 if s.dtype == _BF16 else np.dtype(s.dtype).itemsize))
  return _tensor_index(state, storage_bytes, path)

