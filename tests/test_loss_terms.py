"""Own loss terms: the example config, registration, per-term validation,
the config.json record and the command-line form of loss.extra."""
import importlib.util
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from configs import default
from smsdd_jax import losses

REPO = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = 'configs/examples/smoothed_ce.py'


def parse(*args):
  """The config as smsdd_jax.main's flags would give it (same loader, which
  reads the overrides from sys.argv)."""
  argv = ['prog', *args]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', default=None, flag_values=values)
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr('sys.argv', argv)
    values(argv)
    return values.config


def test_example_config_defines_selects_and_validates_its_term(monkeypatch, loss_ctx):
  monkeypatch.chdir(REPO)
  config = parse(f'--config={EXAMPLE}:quick', '--config.loss.smoothing=0.2')
  parse(f'--config={EXAMPLE}')  # Loaded again: the same function, accepted...
  spec = importlib.util.spec_from_file_location('smoothed_ce', REPO / EXAMPLE)
  spec.loader.exec_module(importlib.util.module_from_spec(spec))  # ...under its own name too.
  losses.validate(config.loss)
  c = loss_ctx()
  total, aux = losses.combined_loss(c, config.loss)
  log_p = np.asarray(jax.nn.log_softmax(c['logits']))
  target = 0.8 * np.eye(2)[np.asarray(c['labels'])] + 0.1
  want = -np.mean(np.sum(target * log_p, -1))
  np.testing.assert_allclose(float(aux['smoothed_ce']), want, rtol=1e-6)
  assert set(aux) == {'smoothed_ce', 'contrastive'}
  assert np.isfinite(float(total))
  config.loss.smoothing = 1.5
  with pytest.raises(ValueError, match=r'^config\.loss\.smoothing=1\.5: must be in'):
    losses.validate(config.loss)


def test_extra_is_set_whole_on_the_command_line(monkeypatch):
  monkeypatch.chdir(REPO)
  config = parse('--config=configs/beta_c.py:quick', "--config.loss.extra={'focal': 0.5}")
  losses.validate(config.loss)
  assert losses.terms_in_use(config.loss) == {'cross_entropy': 1.0, 'contrastive': 0.01,
                                              'focal': 0.5}


def _term_a(ctx, cfg):
  del cfg
  return jnp.mean(ctx['logits'])


def _term_b(ctx, cfg):
  del cfg
  return jnp.mean(ctx['emb_a'])


def test_register_is_idempotent_for_the_same_function_only():
  name = 'test_idempotent_term'
  losses.register(name)(_term_a)
  rerun = lambda ctx, cfg: None  # noqa: E731  # A re-run cell: a new object, same names.
  rerun.__module__, rerun.__qualname__ = _term_a.__module__, _term_a.__qualname__
  losses.register(name)(rerun)
  assert losses.get_term(name) is rerun
  with pytest.raises(ValueError, match=f"'{name}' is already registered by .*_term_a"):
    losses.register(name)(_term_b)
  assert losses.get_term(name) is rerun


def loss_config(**overrides):
  cfg = default.get_config().loss
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


@pytest.mark.parametrize('overrides,match', [
    ({'classification': 'focal', 'focal_gamma': -1.0}, r'config\.loss\.focal_gamma=-1\.0'),
    ({'classification': 'focal', 'focal_gamma': math.inf}, r'config\.loss\.focal_gamma=inf'),
    ({'pair': 'cosine_margin', 'cosine_margin': 5.0}, r'config\.loss\.cosine_margin=5\.0'),
    ({'pair': 'cosine_margin', 'cosine_margin': math.nan}, r'config\.loss\.cosine_margin=nan'),
    ({'margin': math.nan}, r'config\.loss\.margin=nan'),
    ({'beta': math.nan}, r'config\.loss\.beta=nan'),
    ({'extra': {'focal': -1.0}}, r'config\.loss\.extra\.focal=-1\.0'),
])
def test_each_term_checks_its_own_parameters(overrides, match):
  with pytest.raises(ValueError, match='^' + match + ': must be finite'):
    losses.validate(loss_config(**overrides))


def test_parameters_of_unused_terms_are_not_checked():
  losses.validate(loss_config(focal_gamma=-1.0, cosine_margin=5.0))
  losses.validate(loss_config(pair='cosine_margin', margin=-1.0))
  losses.validate(loss_config(extra={'focal': 0.5}, focal_gamma=0.0))


def test_new_term_check_runs_only_when_in_use():
  def check(cfg):
    raise ValueError('config.loss.test_param=?: refused')

  losses.register('test_checked_term', check=check)(_term_a)
  losses.validate(loss_config())
  with pytest.raises(ValueError, match='test_param'):
    losses.validate(loss_config(extra={'test_checked_term': 1.0}))


def test_combined_loss_refuses_a_dict_in_one_line_and_runs_under_grad(loss_ctx):
  cfg = loss_config(beta=0.1)
  with pytest.raises(TypeError, match='^loss_config must be an ml_collections.ConfigDict'):
    losses.combined_loss(loss_ctx(), cfg.to_dict())
  c = loss_ctx(1)
  grad = jax.grad(lambda e: losses.combined_loss({**c, 'emb_a': e}, cfg)[0])(c['emb_a'])
  assert grad.shape == c['emb_a'].shape and np.all(np.isfinite(np.asarray(grad)))
  losses.combined_loss(c, ml_collections.ConfigDict(cfg.to_dict()))  # The fix it names.


def test_config_json_records_each_term_and_where_it_lives(tmp_path, monkeypatch):
  from smsdd_jax import run_records  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(REPO)
  config = parse(f'--config={EXAMPLE}:quick', "--config.loss.extra={'focal': 0.5}")
  run_records.write_run_info(config, str(tmp_path))
  terms = json.loads((tmp_path / 'config.json').read_text())['loss_terms']
  assert terms['smoothed_ce'] == {'weight': 1.0, 'module': terms['smoothed_ce']['module'],
                                  'function': 'smoothed_ce', 'source': EXAMPLE}
  assert terms['focal']['source'] == 'smsdd_jax/losses.py'
  assert terms['contrastive']['weight'] == 0.01
