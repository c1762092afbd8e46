"""A run is self-contained: its own loss term travels with it (a fresh
process loads it and computes its loss), config files import from any
working directory, and `step.loss_fn` is the gradient the train step applies."""
import functools
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from smsdd_jax import inference, losses, models, rundir, step, train

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = REPO / 'configs' / 'examples' / 'smoothed_ce.py'


def _load_config_file(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _fresh_python(code: str, *args: str, cwd) -> str:
  """stdout of `code` run by a new interpreter in `cwd` (outside the
  repository, without PYTHONPATH): the package is found as installed,
  `configs` and the example's term only if something imports them."""
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  proc = subprocess.run([sys.executable, '-c', code, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


@pytest.fixture(scope='module')
def custom_run(tmp_path_factory, data_dir) -> str:
  """A 2-step quick run whose classification term is the example config's
  own (smoothed_ce, smoothing 0.2)."""
  config = _load_config_file(EXAMPLE).get_config('quick')
  config.data.data_dir = data_dir
  config.loss.smoothing = 0.2
  config.batch_size, config.num_epochs, config.log_every_steps = 32, 1, 1
  workdir = str(tmp_path_factory.mktemp('custom_run'))
  train.train_and_evaluate(config, workdir)
  return workdir


_LOAD_AND_SCORE = '''
import importlib.util, json, sys
import numpy as np
from smsdd_jax import inference, losses
assert importlib.util.find_spec('configs') is None, 'configs importable before loading'
assert 'smoothed_ce' not in losses.registered()
run = inference.load_run(sys.argv[1])
ctx = dict(np.load(sys.argv[2]))
total, aux = losses.combined_loss(ctx, run.config.loss)
print(json.dumps({'total': float(total), 'smoothed_ce': float(aux['smoothed_ce'])}))
'''


def test_a_run_with_its_own_term_loads_in_a_fresh_process(custom_run, tmp_path):
  info = json.loads((pathlib.Path(custom_run) / 'config.json').read_text())
  assert info['loss_term_sources']['smoothed_ce'] == {'file': str(EXAMPLE),
                                                      'code': EXAMPLE.read_text()}
  assert 'contrastive' not in info['loss_term_sources']  # The package's own: not copied.
  rng = np.random.default_rng(0)
  ctx = {'logits': rng.normal(size=(8, 2)).astype(np.float32),
         'labels': np.array([0, 1] * 4, np.int32),
         'emb_a': rng.normal(size=(4, 6)).astype(np.float32),
         'emb_b': rng.normal(size=(4, 6)).astype(np.float32),
         'same': np.array([1, 0, 0, 1], np.float32),
         'rng': np.asarray(jax.random.PRNGKey(0))}
  np.savez(tmp_path / 'ctx.npz', **ctx)
  got = json.loads(_fresh_python(_LOAD_AND_SCORE, custom_run, str(tmp_path / 'ctx.npz'),
                                 cwd=tmp_path).splitlines()[-1])
  loss_config = rundir.run_config(info['config']).loss
  total, _ = losses.combined_loss(ctx, loss_config)  # Here, from the file itself.
  log_p = np.asarray(jax.nn.log_softmax(ctx['logits']))
  target = 0.8 * np.eye(2)[ctx['labels']] + 0.1  # Smoothing 0.2, as the run recorded.
  np.testing.assert_allclose(got['smoothed_ce'], -np.mean(np.sum(target * log_p, -1)),
                             rtol=1e-6)
  np.testing.assert_allclose(got['total'], float(total), rtol=1e-6)


def _recorded_copy(custom_run, tmp_path, edit) -> str:
  """A copy of the run with config.json edited by `edit(info)`."""
  workdir = tmp_path / 'run'
  shutil.copytree(custom_run, workdir)
  info = json.loads((workdir / 'config.json').read_text())
  edit(info)
  (workdir / 'config.json').write_text(json.dumps(info))
  return str(workdir)


def test_a_term_differing_from_the_registered_one_is_refused(custom_run, tmp_path):
  _load_config_file(EXAMPLE)  # Registered here from the file as it is.
  losses.register_from_run(custom_run)  # The same text: accepted.

  def edit(info):
    info['loss_term_sources']['smoothed_ce']['code'] += '# edited since\n'

  workdir = _recorded_copy(custom_run, tmp_path, edit)
  with pytest.raises(ValueError, match=r"^\S+config\.json: loss term 'smoothed_ce' is "
                                       r'registered here from .*smoothed_ce\.py, which differs'):
    inference.load_run(workdir)


def test_a_term_without_a_source_is_refused_and_a_recorded_one_registers(custom_run,
                                                                          tmp_path):
  name = 'test_recorded_only_term'
  code = (f'from smsdd_jax import losses\n'
          f'losses.register({name!r})(lambda ctx, cfg: ctx["logits"].mean())\n')

  def edit(info):
    info['loss_terms'][name] = {'weight': 0.5, 'source': 'elsewhere/terms.py'}

  workdir = _recorded_copy(custom_run, tmp_path, edit)
  with pytest.raises(ValueError, match=f"config.json: loss term '{name}' is not registered "
                                       'and the run recorded no source .*elsewhere/terms.py'):
    losses.register_from_run(workdir)
  info = json.loads(pathlib.Path(workdir, 'config.json').read_text())
  info['loss_term_sources'][name] = {'file': 'elsewhere/terms.py', 'code': 'raise OSError(1)\n'}
  pathlib.Path(workdir, 'config.json').write_text(json.dumps(info))
  with pytest.raises(ValueError, match=f"loss term '{name}' .* fails: OSError: 1$"):
    losses.register_from_run(workdir)
  info['loss_term_sources'][name]['code'] = code
  pathlib.Path(workdir, 'config.json').write_text(json.dumps(info))
  assert losses.register_from_run(workdir) == [name]
  assert losses.register_from_run(workdir) == []  # Now registered, from the same text.


_LOAD_CONFIGS = '''
import importlib.util, sys
from absl import flags
from ml_collections import config_flags
assert importlib.util.find_spec('configs') is None, 'configs importable before loading'
for path in sys.argv[1:]:
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values)
  values(['prog', f'--config={path}:quick'])  # As smsdd_jax.main reads --config.
  print(values.config.loss.classification, values.config.loss.beta)
'''


def test_config_files_load_from_another_working_directory(tmp_path):
  out = _fresh_python(_LOAD_CONFIGS, str(REPO / 'configs' / 'beta_c.py'), str(EXAMPLE),
                      cwd=tmp_path)
  assert out.split('\n')[:2] == ['cross_entropy 0.01', 'smoothed_ce 0.01']


def _keep_the_gradient() -> optax.GradientTransformation:
  """An optimiser whose state is the last gradient it was given, and which
  leaves the parameters where they are."""
  return optax.GradientTransformation(
      init=lambda params: params,
      update=lambda grads, state, params=None: (jax.tree.map(jnp.zeros_like, grads), grads))


def test_grad_of_loss_fn_is_the_gradient_the_train_step_applied():
  config = default.get_config('quick')
  config.data.image_size = (32, 64)  # Five pools: the smallest input, for a fast compile.
  config.model.batch_norm = True  # The step's batch statistics go through model_state.
  model = models.create(config.model)
  state = step.create_train_state(config, model, _keep_the_gradient())
  rng = np.random.default_rng(0)
  batch = {'image_a': rng.normal(size=(2, 32, 64, 3)).astype(np.float32),
           'image_b': rng.normal(size=(2, 32, 64, 3)).astype(np.float32),
           'label_a': np.array([0, 1], np.int32), 'label_b': np.array([0, 0], np.int32),
           'same': np.array([1.0, 0.0], np.float32)}
  loss_of = functools.partial(step.loss_fn, model=model, loss_config=config.loss)
  (loss, aux), grads = jax.device_get(jax.jit(jax.value_and_grad(loss_of, has_aux=True))(
      state.params, batch, model_state=state.model_state,
      rng=jax.random.fold_in(state.rng, state.step)))
  new_state, metrics = step.make_train_step(model, _keep_the_gradient(), config.loss)(
      state, batch)
  applied = jax.device_get(new_state.opt_state)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
  assert scale > 0
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * scale),
               applied, grads)
  np.testing.assert_allclose(float(metrics['loss']), float(loss), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(new_state.model_state), aux['model_state'])
  assert jax.tree.leaves(aux['model_state'])  # Batch norm: statistics were compared.
