"""The one pair sampler: its rules, resuming by step, and both sources giving
bit-identical batches from it."""
import numpy as np
import pytest

from configs import default
from smsdd_jax import dataset_export
from smsdd_jax import input_pipeline
from smsdd_jax import pairs

LABELS = np.array([0, 0, 0, 1, 1, 0, 0])  # 5 good, 2 defective.


def _config(batch_size=4, **data):
  config = default.get_config('quick')
  config.batch_size = batch_size
  for key, value in data.items():
    config.data[key] = value
  return config


def test_class_stream_cycles_each_class_and_needs_both():
  stream = pairs.ClassStream(LABELS, 0.5, seed=(3, 0))
  drawn = stream.take(400)
  for c in (0, 1):
    counts = np.bincount(drawn[LABELS[drawn] == c], minlength=len(LABELS))[LABELS == c]
    assert counts.max() - counts.min() <= 1, counts  # Each pass: every image once.
  assert abs((LABELS[drawn] == 1).mean() - 0.5) < 0.1
  with pytest.raises(ValueError, match='no defective image to sample pairs from'):
    pairs.ClassStream(np.zeros(4, int), 0.5, seed=(0, 0))


def test_class_stream_skips_to_the_same_draws():
  for skip in (0, 1, 7, 33):  # Within a pass, at its end, across several.
    taken = pairs.ClassStream(LABELS, 0.3, seed=(5, 1))
    taken.take(skip)
    skipped = pairs.ClassStream(LABELS, 0.3, seed=(5, 1))
    skipped.skip(skip)
    np.testing.assert_array_equal(skipped.take(20), taken.take(20), err_msg=str(skip))


def test_sampler_resumes_at_a_step_and_seeds_by_process():
  config = _config(augment_flips=True, augment_jitter=0.2)
  sampler = pairs.PairSampler(LABELS, config)
  run = sampler.steps()
  first = [next(run) for _ in range(6)]
  resumed = next(sampler.steps(start_step=5))
  for field in ('a', 'b', 'flip_lr', 'flip_ud', 'contrast', 'brightness'):
    np.testing.assert_array_equal(getattr(resumed, field), getattr(first[5], field), field)
  assert resumed.step == 5 and resumed.jitter
  other = next(pairs.PairSampler(LABELS, config, shard=(1, 2)).steps())
  assert other.a.shape == (2,) and other.flip_lr.shape == (4,)
  config.seed = 1
  assert not np.array_equal(next(pairs.PairSampler(LABELS, config).steps()).contrast,
                            first[0].contrast)


def test_augmentation_is_decided_apart_from_the_pairs():
  on = next(pairs.PairSampler(LABELS, _config(augment_flips=True, augment_jitter=0.2)).steps())
  off = next(pairs.PairSampler(LABELS, _config()).steps())
  np.testing.assert_array_equal(on.a, off.a)  # Turning augmentation on keeps the pairs.
  np.testing.assert_array_equal(on.b, off.b)
  assert on.flip_lr.any() and not off.flip_lr.any() and not off.flip_ud.any()
  assert not off.jitter and np.all(np.abs(on.contrast - 1) < 0.2)
  assert np.all(np.abs(on.brightness) < 0.2)


def test_augment_flips_and_jitters_about_each_channel_mean():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
  means = pairs.channel_means(images)
  decided = pairs.Pairs(0, np.zeros(1, int), np.zeros(1, int),
                        flip_lr=np.array([True, False]), flip_ud=np.array([False, True]),
                        contrast=np.array([1.0, 0.5], np.float32),
                        brightness=np.array([0.0, 0.25], np.float32), jitter=True)
  out = pairs.augment(images.copy(), means, decided)
  np.testing.assert_array_equal(out[0], images[0, :, ::-1])
  expected = (images[1, ::-1] - means[1]) * 0.5 + means[1] + 0.25
  np.testing.assert_allclose(out[1], expected, atol=1e-6)


def test_defective_fraction_outside_0_1_is_refused():
  with pytest.raises(ValueError, match=r'config.data.defective_fraction=1.0: must be in \(0, 1\)'):
    pairs.PairSampler(LABELS, _config(defective_fraction=1.0))


def _same_batches(a, b, steps):
  for step in range(steps):
    x, y = next(a), next(b)
    assert x.keys() == y.keys()
    for key in x:
      assert x[key].dtype == y[key].dtype, key
      np.testing.assert_array_equal(x[key], y[key], err_msg=f'step {step} {key}')


@pytest.fixture(scope='module')
def session_export(data_dir, tmp_path_factory):
  """An export of the session's built dataset (synthetic_screens/small)."""
  config = _config()
  config.data.data_dir = data_dir
  path = str(tmp_path_factory.mktemp('export') / 'small.npz')
  dataset_export.write(input_pipeline.prepare(config.data), config.data, path)
  return path


@pytest.mark.parametrize('shard', [(0, 1), (1, 2)])
def test_both_sources_give_bit_identical_batches(data_dir, session_export, shard):
  configs = []
  for source in ('tfds', 'export'):
    config = _config(batch_size=8, augment_flips=True, augment_jitter=0.2,
                     normalize='train_stats', data_dir=data_dir, source=source,
                     export_path=session_export if source == 'export' else '')
    configs.append(config)
  built = [input_pipeline.prepare(c.data) for c in configs]
  stats = [input_pipeline.compute_stats(b, c.data) for b, c in zip(built, configs)]
  assert stats[0] == stats[1]
  a, b = (input_pipeline.train_pairs(x, c, stats=s, shard=shard, start_step=3)
          for x, c, s in zip(built, configs, stats))
  _same_batches(a, b, 4)


def test_both_sources_agree_on_gray_crops_k_fold(crops_data):
  data, path = crops_data
  configs = []
  for source in ('tfds', 'export'):
    config = _config(augment_flips=True, augment_jitter=0.1)
    config.data.update(data.to_dict())
    config.data.source, config.data.export_path = source, path if source == 'export' else ''
    configs.append(config)
  a, b = (input_pipeline.train_pairs(input_pipeline.prepare(c.data), c) for c in configs)
  _same_batches(a, b, 3)
