"""The optimiser and recipe choices of smsdd_jax/step.py and configs/default.py."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import beta_a
from configs import default
from smsdd_jax import step


def _opt(**kw):
  c = default.get_config().optimizer
  for k, v in kw.items():
    c[k] = v
  return c


def test_paper_optimizer_is_plain_sgd_at_a_constant_rate():
  tx = step.make_optimizer(_opt(grad_clip_norm=0.0), total_steps=100)
  params = {'w': jnp.ones((2, 2)), 'b': jnp.ones(2)}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  for _ in range(3):  # Momentum 0.9: updates -0.01, -0.019, -0.0271.
    updates, state = tx.update(grads, state, params)
  np.testing.assert_allclose(updates['w'], -0.01 * (1 + 0.9 + 0.81), rtol=1e-6)


def test_warmup_cosine_schedule():
  lr = step.learning_rate(_opt(schedule='warmup_cosine', warmup_steps=10), total_steps=110)
  assert float(lr(0)) == 0.0
  assert float(lr(5)) == pytest.approx(0.005)
  assert float(lr(10)) == pytest.approx(0.01)
  assert float(lr(60)) == pytest.approx(0.005, rel=1e-3)  # Half-way down the cosine.
  assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match='schedule'):
    step.learning_rate(_opt(schedule='step'))


@pytest.mark.parametrize('name', ['sgd', 'adamw'])
def test_weight_decay_skips_biases(name):
  tx = step.make_optimizer(_opt(name=name, weight_decay=0.1, momentum=0.0,
                                grad_clip_norm=0.0), total_steps=10)
  params = {'kernel': jnp.ones((3, 3)), 'bias': jnp.ones(3)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert float(jnp.abs(updates['bias']).max()) == 0.0  # No gradient, no decay.
  assert float(updates['kernel'][0, 0]) < 0.0  # Decayed towards zero.
  with pytest.raises(ValueError, match='optimizer.name'):
    step.make_optimizer(_opt(name='lion'))


def test_recipes():
  paper = beta_a.get_config()
  assert paper.recipe == 'paper' and not paper.model.batch_norm
  assert paper.optimizer.schedule == 'constant' and paper.optimizer.learning_rate == 0.01
  assert paper.optimizer.name == 'sgd' and paper.optimizer.weight_decay == 0.0
  learn = beta_a.get_config('quick,learn')
  assert learn.recipe == 'learn' and learn.model.batch_norm and learn.data.quick
  assert learn.optimizer.schedule == 'warmup_cosine' and learn.loss.beta == 0.0
  assert learn.optimizer.name == 'adamw' and learn.optimizer.learning_rate == 1e-3
  assert isinstance(step.make_optimizer(learn.optimizer, 100), optax.GradientTransformation)
  with pytest.raises(ValueError, match="unknown config argument 'fast'"):
    default.get_config('quick,fast')
