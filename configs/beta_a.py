"""SMSDD-A (the paper's Table 1): cross-entropy only (beta = 0)."""
from configs import default


def get_config(arg=None):
  config = default.get_config(arg)
  config.loss.beta = 0.0
  return config
