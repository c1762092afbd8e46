"""The benchmark's arithmetic and its machine-readable output (not speed:
timings are never asserted)."""
import json
import os

import pytest

from smsdd_jax import benchmark

TWIN = os.environ.get('SMSDD_TORCH_TWIN', '')


def test_vgg16_conv_work_matches_the_published_count():
  # VGG16's 13 convolutions at 224 x 224: 15.35 GMAC (the 15.5 G usually
  # quoted includes the three FC layers, ~0.12 G).
  assert benchmark.conv_macs_per_image((224, 224), 1.0) == pytest.approx(15.35e9, rel=2e-3)


def test_paper_step_is_about_89_gflop_per_pair():
  assert benchmark.train_gflop_per_pair((110, 230), 1.0) == pytest.approx(89, abs=1)
  # Width scales the work quadratically (first layer's 3 inputs aside).
  assert benchmark.train_gflop_per_pair((110, 230), 0.5) == pytest.approx(89 / 4, rel=0.02)


def test_last_line_is_json_with_the_fields_scripts_read(capsys):
  benchmark.main(['--pairs=1', '--steps=1', '--width-mult=0.0625',
                  '--only=train,inference', '--inference-batch=2'])
  last = capsys.readouterr().out.strip().splitlines()[-1]
  summary = json.loads(last)
  assert summary['pairs_per_s'] > 0
  assert summary['train_1']['gflop_per_s'] > 0
  assert summary['peak_rss_mib'] > 100
  for key in ('frame_latency_ms', 'decode_ms', 'roi_ms', 'forward_ms'):
    assert summary[key] > 0, key
  assert summary['batched_frames_per_s'] > 0


@pytest.mark.skipif(not TWIN, reason='set SMSDD_TORCH_TWIN to the PyTorch twin (needs torch)')
def test_torch_twin_side_by_side(capsys):
  benchmark.main(['--pairs=1', '--steps=1', '--width-mult=0.0625', '--only=train,inference',
                  f'--compare-torch={TWIN}', '--inference-batch=1'])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['train_1']['ratio_vs_torch'] > 0
  assert summary['torch_forward_ms'] > 0
