"""The backbone registry (smsdd_jax/backbones/): the paper's VGG16 unchanged
by it, what each backbone states matching what its tower builds, and the
ResNet-18-style tower through training, prediction and maps."""
import importlib.util
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import default
from smsdd_jax import backbones, inference, models, pretrained, rundir, train

REPO = pathlib.Path(__file__).resolve().parents[1]
# The commit before the registry: its models.py is the reference for the default.
BEFORE = 'de4b3b086c27bc8511dcc2b52973a9f7914dd86f'
# The paper model's params tree (configs/default.py), as the code before the
# registry built it: {layer: (bias, kernel) shapes}.
PAPER_TREE = {
    'block1_conv1': ((64,), (3, 3, 3, 64)), 'block1_conv2': ((64,), (3, 3, 64, 64)),
    'block2_conv1': ((128,), (3, 3, 64, 128)), 'block2_conv2': ((128,), (3, 3, 128, 128)),
    'block3_conv1': ((256,), (3, 3, 128, 256)), 'block3_conv2': ((256,), (3, 3, 256, 256)),
    'block3_conv3': ((256,), (3, 3, 256, 256)), 'block4_conv1': ((512,), (3, 3, 256, 512)),
    'block4_conv2': ((512,), (3, 3, 512, 512)), 'block4_conv3': ((512,), (3, 3, 512, 512)),
    'block5_conv1': ((512,), (3, 3, 512, 512)), 'block5_conv2': ((512,), (3, 3, 512, 512)),
    'block5_conv3': ((512,), (3, 3, 512, 512)), 'predictions': ((2,), (10752, 2))}
# The quick model's (width 1/16, conv_impl 'xla') params at PRNGKey(0): sum and
# sum of magnitudes, and its logits for normal(PRNGKey(1), (2, 110, 230, 3)),
# computed before the registry.
QUICK_PARAMS_SUMS = (-58.18804134397328, 4095.763057196472)
QUICK_LOGITS = [[0.010008774697780609, -0.32340872287750244],
                [0.043036963790655136, -0.2727924585342407]]


def _quick_model(**fields):
  config = default.get_config('quick').model
  for k, v in fields.items():
    config[k] = v
  return models.create(config)


def _models_before():
  """models.py of the commit before the registry, loaded as a module."""
  try:
    src = subprocess.run(['git', 'show', f'{BEFORE}:smsdd_jax/models.py'], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip(f'git history with {BEFORE[:7]} not available (the stored sums still check)')
  name = 'models_before_backbones'
  if name not in sys.modules:  # Flax's dataclasses look their module up there.
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = module
    exec(compile(src, f'{name}.py', 'exec'), module.__dict__)  # noqa: S102
  return sys.modules[name]


def test_the_paper_model_keeps_its_tree_and_its_numbers():
  """Against sums stored before the registry (runs without git history)."""
  paper = models.create(default.get_config().model)
  params = jax.eval_shape(lambda: models.init(paper, jax.random.PRNGKey(0), (110, 230, 3))[0])
  assert list(params) == list(PAPER_TREE)
  assert {k: (v['bias'].shape, v['kernel'].shape) for k, v in params.items()} == PAPER_TREE
  model = _quick_model(conv_impl='xla')
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  assert state == {}
  leaves = np.concatenate([np.asarray(x, np.float64).ravel()
                           for x in jax.tree_util.tree_leaves(params)])
  np.testing.assert_allclose((leaves.sum(), np.abs(leaves).sum()), QUICK_PARAMS_SUMS, rtol=1e-9)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 110, 230, 3))
  logits, _ = models.forward(params, x, model=model)
  np.testing.assert_allclose(logits, QUICK_LOGITS, rtol=1e-5)


@pytest.mark.parametrize('conv_impl', ['xla', 'auto'])
@pytest.mark.parametrize('batch_norm', [False, True])
def test_the_default_backbone_is_bit_identical_to_the_code_before_it(conv_impl, batch_norm):
  old = _models_before()
  config = default.get_config('quick').model
  config.conv_impl, config.batch_norm = conv_impl, batch_norm
  new_model, old_model = models.create(config), old.create(config)
  assert new_model.backbone == 'vgg16' and new_model.conv_impl == old_model.conv_impl
  new_params, new_state = models.init(new_model, jax.random.PRNGKey(0), (110, 230, 3))
  old_params, old_state = old.init(old_model, jax.random.PRNGKey(0), (110, 230, 3))
  assert jax.tree_util.tree_structure(new_params) == jax.tree_util.tree_structure(old_params)
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(old_state)
  for a, b in zip(jax.tree_util.tree_leaves((new_params, new_state)),
                  jax.tree_util.tree_leaves((old_params, old_state))):
    np.testing.assert_array_equal(a, b)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 110, 230, 3))
  new_logits, new_out = models.forward(new_params, x, model=new_model, model_state=new_state)
  old_logits, old_out = old.forward(old_params, x, model=old_model, model_state=old_state)
  np.testing.assert_array_equal(new_logits, old_logits)
  np.testing.assert_array_equal(new_out['embedding'], old_out['embedding'])
  assert models.LEGACY_NAMES == old.LEGACY_NAMES


@pytest.mark.parametrize('name', sorted(backbones.REGISTRY))
def test_what_a_backbone_states_is_what_its_tower_builds(name):
  backbone = backbones.get(name)
  model = _quick_model(backbone=name, conv_impl='xla')
  image = (70, 100, 3)
  params, state = models.init(model, jax.random.PRNGKey(0), image)
  width = model.width_mult
  specs = backbone.convs(image, width)
  for spec in specs:  # Every conv it counts is a layer of the tree, same shape.
    assert params[spec.name]['kernel'].shape == (spec.kernel, spec.kernel, spec.cin, spec.cout)
  n_convs = sum(1 for p in jax.tree_util.tree_leaves(params) if p.ndim == 4)
  assert n_convs == len(specs)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, *image))
  (_, out), taps = model.apply({'params': params, **state}, x, mutable=['intermediates'])
  assert list(taps['intermediates']) == list(backbone.taps)  # In network order.
  # Each tap's cells are `stride` pixels apart: VGG16's pools floor, ResNet's
  # stride-2 layers pad to ceil(size / 2).
  cells = (lambda n, s: -(-n // s)) if name == 'resnet18' else (lambda n, s: n // s)
  for tap, stride in backbone.taps.items():
    assert taps['intermediates'][tap][0].shape[1:3] == (cells(image[0], stride),
                                                        cells(image[1], stride)), tap
  assert backbone.default_tap in backbone.taps
  h, w, c = backbone.feature_shape(image, width)
  assert out['embedding'].shape == (2, h * w * c)  # flatten_l2: the last map, flattened.
  assert backbone.conv_macs(image, width) == sum(
      -(-s.h // s.stride) * -(-s.w // s.stride) * s.kernel ** 2 * s.cin * s.cout for s in specs)


def test_vgg16_counts_what_it_counted_before():
  vgg = backbones.get('vgg16')
  shapes = vgg.conv3x3_shapes((110, 230), 1.0)
  assert len(shapes) == len(vgg.convs((110, 230), 1.0)) == 13
  assert vgg.conv_macs((110, 230), 1.0) == sum(h * w * 9 * i * o for h, w, i, o in shapes)
  assert vgg.feature_shape((110, 230), 1.0) == (3, 7, 512)
  assert vgg.taps == {'block1': 1, 'block2': 2, 'block3': 4, 'block4': 8, 'block5': 16}


def test_resnet18_is_basic_blocks_with_batch_norm_at_any_width():
  model = _quick_model(backbone='resnet18')  # config.model.batch_norm stays False.
  assert model.batch_norm
  params, state = models.init(model, jax.random.PRNGKey(0), (110, 230, 3))
  assert params['conv1']['kernel'].shape == (7, 7, 3, 4)  # 64 / 16.
  assert params['layer4_1_conv2']['kernel'].shape == (3, 3, 32, 32)  # 512 / 16.
  assert 'bias' not in params['conv1']  # Batch norm follows every conv.
  downsample = sorted(k for k in params if 'downsample' in k)
  assert downsample == [f'layer{s}_0_downsample_{p}' for s in (2, 3, 4) for p in ('bn', 'conv')]
  assert sorted(state['batch_stats']) == sorted(k for k in params if 'bn' in k)
  assert backbones.get('resnet18').feature_shape((110, 230), 1 / 16) == (4, 8, 32)
  assert params[models.HEAD_NAME]['kernel'].shape == (4 * 8 * 32, 2)
  wide = _quick_model(backbone='resnet18', width_mult=1.0)
  wide_params = jax.eval_shape(lambda: models.init(wide, jax.random.PRNGKey(0), (224, 224, 3))[0])
  tower = sum(int(np.prod(p.shape)) for k, v in wide_params.items() if k != models.HEAD_NAME
              for p in v.values())
  assert tower == 11_176_512  # torchvision's resnet18 without its fc layer (512 x 1000 + 1000).
  # Training moves its statistics; eval mode does not.
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 110, 230, 3))
  _, out = models.forward(params, x, model=model, model_state=state, train=True)
  moved = out['model_state']['batch_stats']['bn1']['mean']
  assert not np.allclose(moved, state['batch_stats']['bn1']['mean'])
  assert models.packed_for_inference(model, params, (110, 230, 3))[1] is params


def test_bad_backbones_and_sizes_are_one_line():
  with pytest.raises(ValueError, match=r"config.model.backbone='nope': expected one of "
                     r"\('vgg16', 'resnet18'\)"):
    _quick_model(backbone='nope')
  with pytest.raises(ValueError, match=r'too small for ResNet-18: needs at least 32x32'):
    models.init(_quick_model(backbone='resnet18'), jax.random.PRNGKey(0), (16, 64, 3))
  config = default.get_config('quick')
  config.model.backbone, config.data.image_size = 'resnet18', (24, 64)
  with pytest.raises(ValueError, match='too small for ResNet-18'):
    train.validate_config(config)


def test_a_backbone_without_weights_files_refuses_one(tmp_path):
  path = tmp_path / 'vgg16.safetensors'
  path.write_bytes(b'\x02\x00\x00\x00\x00\x00\x00\x00{}')
  config = default.get_config('quick').model
  config.backbone, config.width_mult, config.init = 'resnet18', 1.0, str(path)
  with pytest.raises(pretrained.PretrainedError,
                     match=r"backbone='resnet18' reads no weights file .*init=''"):
    pretrained.stats(config)


def test_old_runs_are_vgg16_and_legacy_names_do_not_clash():
  assert rundir.run_config({'model': {'width_mult': 1.0}}).model.backbone == 'vgg16'
  names = backbones.legacy_names()
  assert names == backbones.get('vgg16').legacy_names  # ResNet-18 has no old runs.
  assert not set(names.values()) & set(
      jax.eval_shape(lambda: models.init(_quick_model(backbone='resnet18'),
                                         jax.random.PRNGKey(0), (64, 64, 3))[0]))


def test_resnet18_trains_predicts_and_draws_maps(quick_config, tmp_path):
  """The same commands: train.train_and_evaluate (what smsdd_jax.main runs),
  a Predictor of the run, Grad-CAM at every tap."""
  config = quick_config
  config.model.backbone = 'resnet18'
  config.batch_size, config.num_epochs = 32, 1  # 2 steps of the small train split.
  workdir = str(tmp_path / 'resnet')
  train.train_and_evaluate(config, workdir)
  run = inference.load_run(workdir)
  assert run.config.model.backbone == 'resnet18' and 'layer1_0_conv1' in run.params
  assert 'layer1_0_bn1' in run.model_state['batch_stats']
  predictor = inference.Predictor(workdir, batch_size=4)
  h, w = predictor.image_size
  images = np.random.default_rng(0).integers(0, 256, (3, h, w, 3), dtype=np.uint8)
  prob = predictor.predict_proba(images)
  assert prob.shape == (3,) and np.all((prob >= 0) & (prob <= 1))
  heat = predictor.maps(images, 'gradcam', scale='image')  # The default tap: layer4.
  assert heat.shape == (3, h, w) and heat.dtype == np.float32
  assert heat.min() >= 0 and heat.max() <= 1
  assert ('gradcam', 'layer4') in {k[:2] for k in predictor._network_maps}  # pylint: disable=protected-access
  for tap in backbones.get('resnet18').taps:
    assert predictor.maps(images[:1], 'gradcam', layer=tap).shape == (1, h, w)
  assert predictor.maps(images).shape == (3, h, w)  # The fine map: layer1 at layer4's height.
  with pytest.raises(ValueError, match="layer='block5'"):
    predictor.maps(images, layer='block5')
