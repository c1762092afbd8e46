"""Pretrained VGG16 init: files in each format are written here with random
values (nothing can be downloaded) and the model's conv outputs are compared
with an independent forward pass computed from the file's own arrays, in the
file's own layout (torch OIHW / NCHW, Keras HWIO / NHWC and BGR) and input
convention. Then every refusal.
"""
import collections
import io
import json
import os
import pickle
import struct
import zipfile

import h5py
import jax
import numpy as np
import pytest
from jax import lax

from configs import default
from smsdd_jax import input_pipeline
from smsdd_jax import models
from smsdd_jax import pretrained
from smsdd_jax import run_records
from smsdd_jax import step

IMAGE_SIZE = (32, 64)  # The smallest size five pools allow, twice as wide.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


# ------------------------------------------------------------------ random weights


def torchvision_state(batch_norm: bool, *, layers: int = 13, seed: int = 0) -> dict:
  """A torchvision VGG16(-BN) state dict: features.N.* numbered as torchvision
  numbers them (conv[, bn], relu; pool), He-scaled so 13 layers stay O(1)."""
  rng = np.random.default_rng(seed)
  state, n, cin, done = collections.OrderedDict(), 0, 3, 0
  for v in models.VGG16_LAYERS:
    if v == 'M':
      n += 1
      continue
    if done == layers:
      break
    std = np.sqrt(2 / (9 * cin))
    state[f'features.{n}.weight'] = (rng.standard_normal((v, cin, 3, 3)) * std).astype(np.float32)
    state[f'features.{n}.bias'] = (0.1 * rng.standard_normal(v)).astype(np.float32)
    if batch_norm:
      state[f'features.{n + 1}.weight'] = (1 + 0.2 * rng.standard_normal(v)).astype(np.float32)
      state[f'features.{n + 1}.bias'] = (0.1 * rng.standard_normal(v)).astype(np.float32)
      state[f'features.{n + 1}.running_mean'] = (0.2 * rng.standard_normal(v)).astype(np.float32)
      state[f'features.{n + 1}.running_var'] = rng.uniform(0.5, 2.0, v).astype(np.float32)
      state[f'features.{n + 1}.num_batches_tracked'] = np.array(1000, np.int64)
    n, cin, done = n + (3 if batch_norm else 2), v, done + 1
  # The classifier is ignored (4096 x 25088 in the real file; small here).
  state['classifier.0.weight'] = rng.standard_normal((8, 16)).astype(np.float32)
  state['classifier.0.bias'] = rng.standard_normal(8).astype(np.float32)
  return state


def keras_layers(*, layers: int = 13, seed: int = 1) -> dict:
  """{'block1_conv1': (kernel HWIO with BGR input, bias), ...}."""
  rng = np.random.default_rng(seed)
  out, block, conv, cin = {}, 1, 1, 3
  for v in models.VGG16_LAYERS:
    if v == 'M':
      block, conv = block + 1, 1
      continue
    if len(out) == layers:
      break
    kernel = rng.standard_normal((3, 3, cin, v)) * np.sqrt(2 / (9 * cin))
    out[f'block{block}_conv{conv}'] = (kernel.astype(np.float32),
                                       (0.1 * rng.standard_normal(v)).astype(np.float32))
    conv, cin = conv + 1, v
  return out


# ------------------------------------------------------------------ writers


def _fake(module: str, name: str) -> type:
  """A stand-in for a torch class or function, pickled by its name only."""
  return type(name, (), {'__module__': module, '__qualname__': name})


REBUILD_V2 = _fake('torch._utils', '_rebuild_tensor_v2')
STORAGE_TYPES = {np.dtype('float32'): _fake('torch', 'FloatStorage'),
                 np.dtype('int64'): _fake('torch', 'LongStorage')}
FAKES = {REBUILD_V2, *STORAGE_TYPES.values()}


class _Storage:
  def __init__(self, key, array):
    self.key, self.array = key, array


class _Tensor:
  def __init__(self, storage, offset, shape):
    self.storage, self.offset, self.shape = storage, offset, shape

  def __reduce_ex__(self, protocol):
    stride = tuple(int(np.prod(self.shape[i + 1:])) for i in range(len(self.shape)))
    return REBUILD_V2, (self.storage, self.offset, self.shape, stride, False,
                        collections.OrderedDict())


class _TorchPickler(pickle._Pickler):  # The pure-Python one: save_global overridable.
  """Pickles what torch.save pickles: the fakes by name, storages by id."""

  def __init__(self, file, persistent):
    super().__init__(file, protocol=2)
    self.persistent = persistent

  def persistent_id(self, obj):
    return self.persistent(obj) if isinstance(obj, _Storage) else None

  def save_global(self, obj, name=None):
    if obj in FAKES:
      self.write(pickle.GLOBAL + f'{obj.__module__}\n{obj.__qualname__}\n'.encode())
      self.memoize(obj)
      return
    super().save_global(obj, name)


def write_pth_zip(path, state: dict):
  """torch.save's format since PyTorch 1.6: one storage per tensor."""
  tensors = collections.OrderedDict(
      (k, _Tensor(_Storage(str(i), np.ascontiguousarray(v)), 0, v.shape))
      for i, (k, v) in enumerate(state.items()))
  buf = io.BytesIO()
  _TorchPickler(buf, lambda s: ('storage', STORAGE_TYPES[s.array.dtype], s.key, 'cpu',
                                s.array.size)).dump(tensors)
  with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as z:
    z.writestr('archive/data.pkl', buf.getvalue())
    z.writestr('archive/byteorder', 'little')
    for t in tensors.values():
      z.writestr(f'archive/data/{t.storage.key}', t.storage.array.tobytes())
    z.writestr('archive/version', '3\n')


def write_pth_legacy(path, state: dict):
  """torch.save's format before 1.6 (torchvision's VGG files). All tensors of
  one dtype share one storage at different offsets, to exercise offsets."""
  roots, tensors = {}, collections.OrderedDict()
  for dtype in sorted({v.dtype for v in state.values()}, key=str):
    arrays = [v for v in state.values() if v.dtype == dtype]
    roots[dtype] = _Storage(str(1000 + len(roots)),
                            np.concatenate([a.reshape(-1) for a in arrays]))
  offsets = collections.Counter()
  for k, v in state.items():
    tensors[k] = _Tensor(roots[v.dtype], offsets[v.dtype], v.shape)
    offsets[v.dtype] += v.size
  with open(path, 'wb') as f:
    for header in (0x1950A86A20F9469CFC6C, 1001,
                   {'protocol_version': 1001, 'little_endian': True,
                    'type_sizes': {'short': 2, 'int': 4, 'long': 8}}):
      pickle.dump(header, f, protocol=2)
    _TorchPickler(f, lambda s: ('storage', STORAGE_TYPES[s.array.dtype], s.key, 'cpu',
                                s.array.size, None)).dump(tensors)
    pickle.dump([s.key for s in roots.values()], f, protocol=2)
    for s in roots.values():
      f.write(struct.pack('<q', s.array.size))
      f.write(s.array.tobytes())


def write_safetensors(path, state: dict, dtypes=None):
  names = {'float32': 'F32', 'int64': 'I64', 'float16': 'F16'}
  header, chunks, offset = {'__metadata__': {'format': 'pt'}}, [], 0
  for k, v in state.items():
    data = np.ascontiguousarray(v).tobytes()
    header[k] = {'dtype': (dtypes or {}).get(k) or names[v.dtype.name],
                 'shape': list(v.shape), 'data_offsets': [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  text = json.dumps(header).encode()
  text += b' ' * (-len(text) % 8)
  with open(path, 'wb') as f:
    f.write(struct.pack('<Q', len(text)) + text + b''.join(chunks))


def write_keras_h5(path, layers: dict, layout: str = 'save_weights'):
  """Keras layouts: 'save_weights' (Keras 2: <layer>/<layer>/kernel:0),
  'keras1' (the 2016 files: <layer>/<layer>_W_1:0), 'whole_model'
  (model_weights/<layer>/...), 'keras3' (layers/<layer>/vars/0, 1)."""
  with h5py.File(path, 'w') as f:
    root = f.create_group('model_weights') if layout == 'whole_model' else f
    root.attrs['layer_names'] = np.array([n.encode() for n in layers])
    for name, (kernel, bias) in layers.items():
      if layout == 'keras3':
        f.create_dataset(f'layers/{name}/vars/0', data=kernel)
        f.create_dataset(f'layers/{name}/vars/1', data=bias)
        continue
      g = root.create_group(name)
      weight_names = ((f'{name}_W_1:0', f'{name}_b_1:0') if layout == 'keras1'
                      else (f'{name}/kernel:0', f'{name}/bias:0'))
      g.attrs['weight_names'] = np.array([w.encode() for w in weight_names])
      g.create_dataset(weight_names[0], data=kernel)
      g.create_dataset(weight_names[1], data=bias)


# ------------------------------------------------------------------ forwards


def _conv(x, w, dims):
  return np.asarray(lax.conv_general_dilated(
      x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims,
      precision=lax.Precision.HIGHEST))


def reference_torchvision(state: dict, image: np.ndarray, batch_norm: bool) -> list:
  """torchvision's VGG16 features in NCHW / OIHW on (x / 255 - mean) / std RGB;
  returns each conv (or BN) output before its ReLU, as NHWC."""
  x = ((image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).transpose(0, 3, 1, 2)
  outs, n = [], 0
  for v in models.VGG16_LAYERS:
    if v == 'M':
      b, c, h, w = x.shape
      x = x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
      n += 1
      continue
    y = _conv(x, state[f'features.{n}.weight'], ('NCHW', 'OIHW', 'NCHW'))
    y = y + state[f'features.{n}.bias'][None, :, None, None]
    if batch_norm:
      # Used on the next line only, within this iteration: sees this n.
      p = lambda s: state[f'features.{n + 1}.{s}'][None, :, None, None]  # noqa: B023
      y = (y - p('running_mean')) / np.sqrt(p('running_var') + 1e-5) * p('weight') + p('bias')
    outs.append(y.transpose(0, 2, 3, 1))
    x = np.maximum(y, 0)
    n += 3 if batch_norm else 2
  return outs


def reference_keras(layers: dict, image: np.ndarray) -> list:
  """Keras' VGG16 in NHWC / HWIO on caffe input: BGR minus the BGR mean."""
  x = (image[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR)
  outs, names = [], iter(layers.values())
  for v in models.VGG16_LAYERS:
    if v == 'M':
      b, h, w, c = x.shape
      x = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
      continue
    kernel, bias = next(names)
    y = _conv(x, kernel, ('NHWC', 'HWIO', 'NHWC')) + bias
    outs.append(y)
    x = np.maximum(y, 0)
  return outs


def ours(config, image: np.ndarray) -> tuple[list, object]:
  """Our model, initialised by step.create_train_state, on the image
  normalised our way with the stats the file's convention gives. Each conv
  layer's output before its ReLU; where the model fuses conv + bias + ReLU
  into one module (models.FUSED_IMPLS) only the ReLU'd output exists, and
  `assert_layers_match` compares the reference's ReLU'd too."""
  model = models.create(config.model)
  state = step.create_train_state(config, model, step.make_optimizer(config.optimizer))
  x = input_pipeline.normalize_np(image, pretrained.stats(config.model))
  _, inter = model.apply({'params': state.params, **state.model_state}, x,
                         capture_intermediates=True, mutable=['intermediates'])
  suffix = models.BN_SUFFIX if config.model.batch_norm else ''
  return [np.asarray(inter['intermediates'][name + suffix]['__call__'][0])
          for name in models.CONV_NAMES], state


def full_config(path='', batch_norm=False):
  config = default.get_config()
  config.data.image_size = IMAGE_SIZE
  config.model.batch_norm = batch_norm
  config.model.init = str(path)
  return config


@pytest.fixture(scope='module')
def image():
  return np.random.default_rng(7).integers(0, 256, (1, *IMAGE_SIZE, 3), dtype=np.uint8)


def fused(config) -> bool:
  """Whether `ours` captures ReLU'd conv outputs (see there)."""
  return models.create(config.model).conv_impl in models.FUSED_IMPLS and \
      not config.model.batch_norm


def assert_layers_match(got: list, want: list, post_relu: bool = False):
  assert len(got) == len(want) == 13
  if post_relu:
    want = [np.maximum(w, 0) for w in want]
  for i, (g, w) in enumerate(zip(got, want)):
    assert g.shape == w.shape, (i, g.shape, w.shape)
    scale = float(np.abs(w).max())
    assert scale > 0 and (w > 0).mean() > 0.05, f'layer {i} is dead: a vacuous check'
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * scale, err_msg=f'conv layer {i}')


# ------------------------------------------------------------------ mapping


@pytest.mark.parametrize('fmt,batch_norm', [('pth_zip', False), ('pth_legacy', False),
                                            ('safetensors', False), ('pth_zip', True)])
def test_torchvision_formats_match_an_independent_forward(fmt, batch_norm, image, tmp_path):
  state = torchvision_state(batch_norm)
  path = tmp_path / f'vgg16.{"safetensors" if fmt == "safetensors" else "pth"}'
  {'pth_zip': write_pth_zip, 'pth_legacy': write_pth_legacy,
   'safetensors': write_safetensors}[fmt](path, state)
  config = full_config(path, batch_norm)
  stats = pretrained.stats(config.model)
  assert stats['convention'] == 'torchvision'
  np.testing.assert_allclose(stats['mean'], IMAGENET_MEAN * 255, rtol=1e-6)
  np.testing.assert_allclose(stats['std'], IMAGENET_STD * 255, rtol=1e-6)
  got, state_ours = ours(config, image)
  assert_layers_match(got, reference_torchvision(state, image, batch_norm), fused(config))
  # The classifier stays as a from-scratch init of the same seed made it.
  scratch = step.create_train_state(full_config(batch_norm=batch_norm), models.create(
      config.model), step.make_optimizer(config.optimizer))
  np.testing.assert_array_equal(state_ours.params['predictions']['kernel'],
                                scratch.params['predictions']['kernel'])


def test_keras_h5_matches_an_independent_bgr_forward(image, tmp_path):
  layers = keras_layers()
  path = tmp_path / 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'
  write_keras_h5(path, layers)
  config = full_config(path)
  stats = pretrained.stats(config.model)
  assert stats == {'mean': [123.68, 116.779, 103.939], 'std': [1.0, 1.0, 1.0],
                   'convention': 'keras'}
  got, _ = ours(config, image)
  assert_layers_match(got, reference_keras(layers, image), fused(config))


@pytest.mark.parametrize('layout', ['save_weights', 'keras1', 'whole_model', 'keras3'])
def test_keras_h5_layouts_are_found(layout, tmp_path):
  layers = keras_layers(layers=2)
  path = tmp_path / 'w.h5'
  write_keras_h5(path, layers, layout)
  fmt, index = pretrained._open(str(path))  # pylint: disable=protected-access
  assert fmt == 'keras_h5'
  assert sorted(index) == ['block1_conv1/bias', 'block1_conv1/kernel',
                           'block1_conv2/bias', 'block1_conv2/kernel']
  np.testing.assert_array_equal(index['block1_conv2/kernel'].read(), layers['block1_conv2'][0])
  np.testing.assert_array_equal(index['block1_conv1/bias'].read(), layers['block1_conv1'][1])


def test_half_precision_safetensors_are_widened(tmp_path):
  values = np.array([1.0, -2.5, 3.140625], np.float32)
  bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # Exact in bfloat16.
  state = {'a': values.astype(np.float16), 'b': bf16}
  path = tmp_path / 'half.safetensors'
  write_safetensors(path, state, dtypes={'b': 'BF16'})
  index = pretrained._open(str(path))[1]  # pylint: disable=protected-access
  np.testing.assert_array_equal(index['a'].read(), values.astype(np.float16))
  np.testing.assert_array_equal(index['b'].read(), values)


def test_eval_shape_of_the_state_does_not_read_the_file():
  """inference.py builds its restore target with jax.eval_shape: the
  checkpoint overwrites the values, and the file need not exist there."""
  config = full_config('/nonexistent/vgg16-397923af.pth')
  config.model.width_mult = 1 / 16
  shapes = jax.eval_shape(lambda: step.create_train_state(
      config, models.create(config.model), step.make_optimizer(config.optimizer)))
  assert shapes.params['block1_conv1']['kernel'].shape == (3, 3, 3, 4)


def test_data_stats_and_config_json_record_the_convention(tmp_path):
  path = tmp_path / 'w.h5'
  write_keras_h5(path, keras_layers())
  config = full_config(path)
  config.data.normalize = 'train_stats'  # Ignored: the weights fix it.
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  stats = run_records.data_stats(None, config, workdir)
  assert stats['mean'] == [123.68, 116.779, 103.939] and stats['std'] == [1.0] * 3
  saved = json.load(open(os.path.join(workdir, 'data_stats.json')))
  assert saved['normalize'] == 'pretrained_keras' and saved['init'] == str(path)
  assert saved['mean'] == stats['mean'] and saved['std'] == stats['std']
  run_records.write_run_info(config, workdir)
  info = json.load(open(os.path.join(workdir, 'config.json')))
  assert info['init_convention'] == 'keras'
  assert info['config']['model']['init'] == str(path)


# ------------------------------------------------------------------ refusals


def _small_torch(path, state):
  write_pth_zip(path, state)
  return path


def _refusal_cases(tmp):
  """(name, path, config overrides, expected words in the message)."""
  cases = []
  text = tmp / 'notes.pth'
  text.write_text('not weights at all\n')
  cases.append(('missing file', tmp / 'absent.pth', {}, 'no such file'))
  cases.append(('unknown format', text, {}, 'unknown format'))
  cases.append(('missing torch keys', _small_torch(
      tmp / 'two.pth', torchvision_state(False, layers=2)), {},
                'missing keys features.5.weight, features.5.bias'))
  h5 = tmp / 'two.h5'
  write_keras_h5(h5, keras_layers(layers=2))
  cases.append(('missing keras keys', h5, {}, 'missing keys block2_conv1/kernel'))
  bad = torchvision_state(False, layers=1)
  bad['features.0.weight'] = np.zeros((64, 3, 5, 5), np.float32)
  cases.append(('torch shape', _small_torch(tmp / 'bad.pth', bad), {},
                "features.0.weight has shape (64, 3, 5, 5) but the model's block1_conv1 needs "
                '(64, 3, 3, 3) (OIHW)'))
  theano = tmp / 'th.h5'
  layers = keras_layers(layers=1)
  layers['block1_conv1'] = (layers['block1_conv1'][0].transpose(3, 2, 0, 1),
                            layers['block1_conv1'][1])
  write_keras_h5(theano, layers)
  cases.append(('keras shape', theano, {}, 'block1_conv1/kernel has shape (64, 3, 3, 3) '
                "but the model's block1_conv1 needs (3, 3, 3, 64) (HWIO): a Theano"))
  cases.append(('bn into plain', _small_torch(tmp / 'bn.pth', torchvision_state(
      True, layers=1)), {}, 'VGG16-BN weights (with batch norm) but config.model.batch_norm=False'))
  cases.append(('plain into bn', _small_torch(tmp / 'plain.pth', torchvision_state(
      False, layers=1)), {'batch_norm': True},
                'VGG16 weights (without batch norm) but config.model.batch_norm=True'))
  cases.append(('keras into bn', h5, {'batch_norm': True}, "Keras' VGG16 weights have no batch norm"))
  cases.append(('width', tmp / 'plain.pth', {'width_mult': 1 / 16},
                'fit only config.model.width_mult=1.0'))
  vgg19 = torchvision_state(False, layers=1)
  vgg19['features.16.weight'] = np.zeros((256, 256, 3, 3), np.float32)
  cases.append(('vgg19', _small_torch(tmp / 'vgg19.pth', vgg19), {}, 'not a VGG16'))
  tar = tmp / 'old.pth'
  tar.write_bytes(b'\0' * 257 + b'ustar' + b'\0' * 700)
  cases.append(('tar', tar, {}, 'tar-format torch file'))
  zip_path = tmp / 'other.zip'
  with zipfile.ZipFile(zip_path, 'w') as z:
    z.writestr('model.weights.h5', b'')
  cases.append(('zip', zip_path, {}, 'without data.pkl'))
  overrun = tmp / 'overrun.safetensors'
  write_safetensors(overrun, {'features.0.weight': np.zeros((4,), np.float32)},
                    dtypes={'features.0.weight': 'F64'})
  cases.append(('safetensors bounds', overrun, {}, 'out of bounds'))
  return cases


def test_every_refusal_is_one_clear_line(tmp_path):
  for name, path, overrides, words in _refusal_cases(tmp_path):
    config = full_config(path)
    for k, v in overrides.items():
      config.model[k] = v
    with pytest.raises(pretrained.PretrainedError) as e:
      pretrained.stats(config.model)
    message = str(e.value)
    assert words in message, (name, message)
    assert '\n' not in message and message.startswith(f'config.model.init={path}: '), name


def test_a_pickle_that_would_run_code_is_refused_unrun(tmp_path):
  marker = tmp_path / 'ran'

  class Evil:
    def __reduce__(self):
      return os.system, (f'touch {marker}',)
  path = tmp_path / 'evil.pth'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', pickle.dumps({'features.0.weight': Evil()}, protocol=2))
  with pytest.raises(pretrained.PretrainedError, match='refused, nothing executed'):
    pretrained.stats(full_config(path).model)
  assert not marker.exists()
