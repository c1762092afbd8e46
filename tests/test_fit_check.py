"""launch/fit_check.py: the real step learns the generated task (a broken
step, e.g. gradients that do not reach the tower, stays near 0.5)."""
import importlib.util
import json
import os

import numpy as np

_PATH = os.path.join(os.path.dirname(__file__), '..', 'launch', 'fit_check.py')
_spec = importlib.util.spec_from_file_location('fit_check', _PATH)
fit_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fit_check)


def test_generated_task_is_balanced_and_marks_the_defects():
  images, labels = fit_check.make_images(20, (40, 60), np.random.default_rng(0))
  assert images.shape == (20, 40, 60, 3) and labels.sum() == 10
  # A defective image holds a bright blob: its maximum stands out.
  peaks = images.max(axis=(1, 2, 3))
  assert peaks[labels == 1].min() > np.median(peaks[labels == 0])


def test_the_learn_recipe_learns_it_at_tiny_width(tmp_path, capsys):
  out = tmp_path / 'fit.json'
  assert fit_check.main(['--width_mult=0.0625', '--steps=60', '--pairs=8',
                         f'--out={out}']) == 0
  report = json.loads(out.read_text())
  assert report == json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert report['finite'] and report['loss_last'] < report['loss_first']
  assert report['test_accuracy'] >= 0.85, report
