"""SMSDD-C (the paper's Table 1): cross-entropy + 0.01 x contrastive."""
import pathlib
import sys

ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if ROOT not in sys.path:  # `configs` found from any working directory.
  sys.path.insert(0, ROOT)
from configs import default  # noqa: E402


def get_config(arg=None):
  config = default.get_config(arg)
  config.loss.beta = 0.01
  return config
