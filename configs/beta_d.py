"""SMSDD-D (the paper's Table 1): cross-entropy + 0.001 x contrastive."""
from configs import default


def get_config(arg=None):
  config = default.get_config(arg)
  config.loss.beta = 0.001
  return config
