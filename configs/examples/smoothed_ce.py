"""A config that defines its own loss term: label-smoothed cross-entropy.

  python -m smsdd_jax.main --config=configs/examples/smoothed_ce.py:quick
  python -m smsdd_jax.main --config=configs/examples/smoothed_ce.py:quick \
      --config.loss.smoothing=0.2

The term lives in this file: loading the config registers it (the registry
accepts the same function again, so loading the file twice is fine). It
declares its parameter, config.loss.smoothing, below, so the command line
can override it, and checks it before anything compiles. `ctx` is described
in smsdd_jax/losses.py (logits (2N, 2), labels (2N,), emb_a/emb_b (N, d),
same (N,), rng). To add it beside cross-entropy instead of replacing it:
config.loss.extra = {'smoothed_ce': 0.5} (or, on the command line,
--config.loss.extra="{'smoothed_ce': 0.5}").
"""
import pathlib
import sys

import jax
import jax.numpy as jnp

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if ROOT not in sys.path:  # `configs` found from any working directory.
  sys.path.insert(0, ROOT)
from configs import default  # noqa: E402
from smsdd_jax import losses  # noqa: E402

NAME = 'smoothed_ce'


def check(loss_config):
  """Refuses a smoothing outside [0, 1) in one line naming the field."""
  s = loss_config.smoothing
  if not 0.0 <= s < 1.0:  # False for NaN too.
    raise ValueError(f'config.loss.smoothing={s}: must be in [0, 1)')


@losses.register(NAME, check=check)
def smoothed_ce(ctx, cfg):
  """Cross-entropy against (1 - s) * one_hot + s / 2, mean over images."""
  log_p = jax.nn.log_softmax(ctx['logits'])
  k = log_p.shape[-1]
  target = jax.nn.one_hot(ctx['labels'], k, dtype=log_p.dtype)
  target = (1.0 - cfg.smoothing) * target + cfg.smoothing / k
  return -jnp.mean(jnp.sum(target * log_p, axis=-1))


def get_config(arg=None):
  config = default.get_config(arg)
  config.loss.smoothing = 0.1  # Share of the target spread over both classes.
  config.loss.classification = NAME
  return config
