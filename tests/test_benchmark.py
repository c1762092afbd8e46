"""The benchmark's arithmetic and its machine-readable output (not speed:
timings are never asserted)."""
import json
import os

import pytest

from smsdd_jax import benchmark, speed_ab

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


@pytest.mark.skipif(not TWIN, reason='set SMSDD_TORCH_TWIN to the PyTorch twin (needs torch)')
def test_torch_in_the_ab_and_layer_tables(capsys):
  benchmark.main(['--only=ab,layers', '--pairs=1', '--steps=1', '--rounds=2', '--impls=xla',
                  '--width-mult=0.0625', '--layer-batch=1', f'--compare-torch={TWIN}'])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['ab_1']['variants']['xla']['ratio_vs_torch'] > 0
  torch_rows = [r for r in summary['layers'] if r['impl'] == 'torch']
  assert len(torch_rows) == 9 * 3 and all(r['ms'] > 0 for r in torch_rows)


# ------------------------------------------------- A/B harness and layer timings

def test_interleaved_ratios_are_paired_per_round(monkeypatch):
  # Replace the clock: each runner "takes" the seconds it returns, so the
  # arithmetic is checked without timing anything.
  monkeypatch.setattr(speed_ab, '_timed', lambda fn: fn())
  slow = iter([2.0, 2.0, 4.0, 4.0])  # Round 2 ran under twice the load.
  fast = iter([1.0, 1.0, 2.0, 2.0])
  torch_s = iter([1.0, 2.0])
  r = speed_ab.interleaved_train({'a': lambda: next(slow), 'b': lambda: next(fast)},
                                 pairs=4, rounds=2, steps=2,
                                 torch_step=lambda n: next(torch_s))
  a, b = r['variants']['a'], r['variants']['b']
  # Unpaired medians mix the loads; the per-round ratios do not.
  assert a['ratio_vs_torch'] == 0.5 and a['ratio_range'] == [0.5, 0.5]
  assert b['ratio_vs_torch'] == 1.0 and b['ratio_range'] == [1.0, 1.0]
  assert a['pairs_per_s'] == pytest.approx(4 / 3, abs=1e-3) and r['torch']['step_s'] == 1.5


def test_layer_shapes_are_the_13_vgg16_convolutions():
  shapes = speed_ab.layer_shapes((110, 230), 1.0)
  assert len(shapes) == 13
  assert shapes[0] == (110, 230, 3, 64) and shapes[2] == (55, 115, 64, 128)
  assert shapes[-1] == (6, 14, 512, 512)


def test_conv_parts_give_the_gradients_of_each_impl():
  import jax
  import numpy as np
  from smsdd_jax import models
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 9, 4), np.float32)
  w = rng.standard_normal((3, 3, 4, 5), np.float32)
  dy = rng.standard_normal((2, 7, 9, 5), np.float32)
  ref = speed_ab.conv_parts(jax.lax.conv_general_dilated)
  _, vjp = jax.vjp(lambda a, b: jax.lax.conv_general_dilated(
      a, b, (1, 1), 'SAME', dimension_numbers=speed_ab.DIMENSION_NUMBERS), x, w)
  dx, dw = vjp(dy)
  np.testing.assert_allclose(ref['dx'](x, w, dy), dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ref['dw'](x, w, dy), dw, rtol=1e-5, atol=1e-4)
  custom = speed_ab.conv_parts(models.CONV_IMPLS['custom'])
  for part, args in (('fwd', (x, w)), ('dx', (x, w, dy)), ('dw', (x, w, dy))):
    np.testing.assert_allclose(custom[part](*args), ref[part](*args), rtol=1e-4, atol=1e-4)


def test_ab_and_layers_from_the_command_line(capsys):
  benchmark.main(['--only=ab,layers', '--pairs=1', '--steps=1', '--rounds=2',
                  '--width-mult=0.0625', '--layer-batch=1', '--impls=custom,xla'])
  out = capsys.readouterr().out.strip().splitlines()
  summary = json.loads(out[-1])
  assert set(summary['ab_1']['variants']) == {'custom', 'xla'}
  # The 9 distinct layer shapes x impls x (fwd, dx, dw); 'count' restores the 13.
  assert len(summary['layers']) == 9 * 2 * 3
  assert sum(r['count'] for r in summary['layers']) == 13 * 2 * 3
  assert any(line.startswith('| 110x230 3->4 |') for line in out)


def test_layers_refuses_an_unknown_impl():
  with pytest.raises(SystemExit, match='winograd2'):
    benchmark.main(['--only=layers', '--impls=winograd2', '--width-mult=0.0625'])


def test_runtimes_time_every_way_to_serve_the_model(capsys):
  benchmark.main(['--only=runtimes', '--steps=1', '--width-mult=0.0625', '--impls=xla'])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(summary['runtimes']) == {'jit_xla_ms', 'jax_export_ms', 'saved_model_ms'}
  assert all(v > 0 for v in summary['runtimes'].values())


def test_maps_are_timed_beside_the_plain_score(capsys):
  benchmark.main(['--only=maps', '--steps=1', '--width-mult=0.0625', '--inference-batch=2'])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert set(summary['maps']) == {
      f'{m}_ms_per_roi_batch{n}' for m in ('score', 'gradcam', 'fine', 'fine_fast')
      for n in (1, 2)} | {'occlusion_ms_per_roi', 'occlusion_forwards_per_roi'}
  assert summary['maps']['occlusion_forwards_per_roi'] == 13 * 28  # 16 px windows, 8 apart.
  assert all(v > 0 for v in summary['maps'].values())


def test_a_second_backbone_is_measured_by_the_same_command(capsys):
  benchmark.main(['--pairs=1', '--steps=1', '--width-mult=0.0625', '--backbone=resnet18',
                  '--only=train,maps', '--inference-batch=2'])
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary['backbone'] == 'resnet18' and summary['train_1']['backbone'] == 'resnet18'
  # Its own work, not VGG16's: GFLOP/s = the ResNet's FLOPs over the step's time.
  step = summary['train_1']
  want = benchmark.train_gflop_per_pair((110, 230), 0.0625, 'resnet18') / step['step_s']
  assert step['gflop_per_s'] == pytest.approx(want, rel=0.01, abs=0.1)
  assert want != pytest.approx(
      benchmark.train_gflop_per_pair((110, 230), 0.0625) / step['step_s'], rel=0.05)
  assert summary['maps']['gradcam_ms_per_roi_batch1'] > 0


@pytest.mark.parametrize('argv, says', [
    (['--backbone=alexnet'], 'expected one of vgg16, resnet18'),
    (['--backbone=resnet18', '--compare-torch=twin.py'], 'VGG16 only'),
    (['--backbone=resnet18', '--only=layers'], '--only=layers'),
])
def test_a_backbone_the_measurement_cannot_take_is_a_usage_error(argv, says, capsys):
  with pytest.raises(SystemExit) as e:
    benchmark.main(argv)
  assert e.value.code == 2
  assert says in capsys.readouterr().err


def test_side_by_side_table_has_one_line_per_size():
  r = {4: {'rounds': 3, 'steps_per_round': 2,
           'variants': {'onednn_fused': {'pairs_per_s': 3.9, 'ratio_vs_torch': 1.3,
                                         'ratio_range': [1.1, 1.4]}},
           'torch': {'pairs_per_s': 3.0}},
       8: {'rounds': 3, 'steps_per_round': 2,
           'variants': {'onednn_fused': {'pairs_per_s': 3.8, 'ratio_vs_torch': 1.25,
                                         'ratio_range': [1.0, 1.3]}},
           'torch': {'pairs_per_s': 3.1}}}
  lines = benchmark.side_by_side_table(r, ['onednn_fused'], torch=True).splitlines()
  assert lines[2] == '| 4 | 3.900 | 3.000 | **1.30x** (1.10-1.40) |'
  assert lines[3].startswith('| 8 | 3.800 | 3.100 | **1.25x**')
  assert '3 interleaved rounds of 2 steps' in lines[-1]


def test_thread_environments_parse_and_pair_per_round():
  envs = benchmark.parse_envs('OMP_WAIT_POLICY=PASSIVE; OMP_PROC_BIND=close OMP_PLACES=cores')
  assert envs == {'default': {}, 'OMP_WAIT_POLICY=PASSIVE': {'OMP_WAIT_POLICY': 'PASSIVE'},
                  'OMP_PROC_BIND=close OMP_PLACES=cores': {'OMP_PROC_BIND': 'close',
                                                           'OMP_PLACES': 'cores'}}
  with pytest.raises(SystemExit, match='NAME=VALUE'):
    benchmark.parse_envs('OMP_WAIT_POLICY')
  # Round 2 ran under twice the load: the paired speed-ups do not see it.
  times = {('jax', 'default'): iter([2.0, 4.0]), ('jax', 'fast'): iter([1.0, 2.0])}
  r = speed_ab.interleaved_envs(
      {'jax': lambda env, n: next(times[('jax', 'fast' if env else 'default')])},
      {'default': {}, 'fast': {'X': '1'}}, pairs=4, rounds=2, steps=1)
  fast = r['results']['jax | fast']
  assert fast['speedup_vs_default'] == 2.0 and fast['speedup_range'] == [2.0, 2.0]
  assert r['results']['jax | default']['pairs_per_s'] == pytest.approx(4 / 3, abs=1e-3)
  assert 'PASSIVE' not in speed_ab.env_table(r, 'onednn_fused')


def test_predict_throughput_from_the_command_line(capsys):
  benchmark.main(['--only=predict', '--frames=3', '--inference-batch=2', '--workers=2',
                  '--width-mult=0.0625', '--steps=1'])
  r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])['predict']
  assert r['predict_frames'] == 3 and r['predict_failed'] == 0
  assert r['predict_frames_per_s'] > 0
