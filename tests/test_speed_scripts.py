"""launch/roi_speed.py and launch/precision_check.py, the scripts behind the
third speed round's ROI and bfloat16 numbers, on generated frames (their
numbers are not asserted, only what they compare)."""
import importlib.util
import json
import os

import pytest

from smsdd_jax.datasets import synthetic_screens


def _load(name):
  path = os.path.join(os.path.dirname(__file__), '..', 'launch', f'{name}.py')
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
  out = tmp_path_factory.mktemp('speed_frames')
  synthetic_screens.write_sample_frames(str(out), 3, frame_size=(540, 960))
  return str(out)


def test_roi_speed_compares_each_width_with_today(frames, capsys):
  from smsdd_jax.roi import work
  today = work.WORK_WIDTH
  _load('roi_speed').main([f'--frames={frames}', '--work_widths=960,480'])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert work.WORK_WIDTH == today  # Put back.
  assert out['frames'] == 3 and out['found'] == 3
  # 960 is today's width on these 960-wide frames: nothing may differ.
  same = out['widths']['960']
  assert same['found_differs'] == 0 and same['frames_over_1px'] == 0
  assert same['max_corner_dev_px_p50_p90_p99_max'][-1] == 0.0
  assert out['widths']['480']['ms'] > 0


def test_precision_check_scores_a_run_both_ways(frames, trained_run, capsys):
  _load('precision_check').main([f'--frames={frames}', f'--workdir={trained_run}'])
  out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert out['rois'] == 3 and out['skipped_frames'] == 0
  assert 0 <= out['max_abs_dprob'] < 0.05
  assert 0 <= out['decisions_flipped'] <= 3
