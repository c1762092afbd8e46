"""Every config file (examples/ included) loads, in both modes; the variants
have the paper's beta."""
import importlib.util
import pathlib

import pytest

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'
PAPER_BETA = {'beta_a': 0.0, 'beta_b': 0.1, 'beta_c': 0.01, 'beta_d': 0.001,
              'beta_e': 0.0001}


def load(path):
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize('path', sorted(CONFIGS.rglob('*.py')),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
@pytest.mark.parametrize('arg', [None, 'quick'])
def test_every_config_loads(path, arg):
  if path.name == '__init__.py':
    return
  config = load(path).get_config(arg)
  assert config.loss.beta >= 0
  if arg == 'quick':
    assert config.model.width_mult < 1 and config.data.quick and not config.data.builder_config
  else:
    assert config.model.width_mult == 1.0


@pytest.mark.parametrize('name,beta', sorted(PAPER_BETA.items()))
def test_variants_have_the_paper_beta_and_differ_only_there(name, beta):
  config = load(CONFIGS / f'{name}.py').get_config()
  base = load(CONFIGS / 'default.py').get_config()
  assert config.loss.beta == beta
  base.loss.beta = beta
  assert config.to_dict() == base.to_dict()


def test_unknown_config_argument_is_refused():
  with pytest.raises(ValueError, match='quik'):
    load(CONFIGS / 'default.py').get_config('quik')


def test_learn_takes_a_tenth_of_the_rate_at_full_width_in_any_mode_order():
  from configs import default  # pylint: disable=import-outside-toplevel
  assert default.get_config('learn').optimizer.learning_rate == 1e-4  # Full width.
  for arg in ('quick,learn', 'learn,quick'):
    config = default.get_config(arg)
    assert config.model.width_mult == 1 / 16 and config.optimizer.learning_rate == 1e-3
