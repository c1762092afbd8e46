"""tf.data pairs: balance, determinism, resume position; eval counts once."""
import numpy as np

from smsdd_jax import input_pipeline


def take(it, n):
  return [next(it) for _ in range(n)]


def test_pairs_are_well_formed_and_balanced(quick_config):
  builder = input_pipeline.prepare(quick_config.data)
  quick_config.batch_size = 8
  batches = take(input_pipeline.train_pairs(builder, quick_config), 40)
  b = batches[0]
  assert b['image_a'].shape == (8, 110, 230, 3) and b['image_a'].dtype == np.float32
  assert -1.0 <= b['image_a'].min() and b['image_a'].max() <= 1.0
  labels = np.concatenate([np.concatenate([x['label_a'], x['label_b']]) for x in batches])
  same = np.concatenate([x['same'] for x in batches])
  same_check = np.concatenate([x['label_a'] == x['label_b'] for x in batches])
  np.testing.assert_array_equal(same, same_check.astype(np.float32))
  # 640 images, 320 pairs: binomial sd ~ 0.02 and 0.028; 4 sd bounds.
  assert abs(labels.mean() - 0.5) < 0.08, labels.mean()
  assert abs(same.mean() - 0.5) < 0.12, same.mean()


def test_pairs_are_seeded_and_resume_at_a_step(quick_config):
  builder = input_pipeline.prepare(quick_config.data)
  first = take(input_pipeline.train_pairs(builder, quick_config), 5)
  again = take(input_pipeline.train_pairs(builder, quick_config), 5)
  for x, y in zip(first, again):
    np.testing.assert_array_equal(x['image_a'], y['image_a'])
    np.testing.assert_array_equal(x['label_b'], y['label_b'])
  resumed = next(input_pipeline.train_pairs(builder, quick_config, start_step=3))
  np.testing.assert_array_equal(resumed['image_b'], first[3]['image_b'])
  quick_config.seed = 1
  other = next(input_pipeline.train_pairs(builder, quick_config))
  assert not np.array_equal(other['image_a'], first[0]['image_a'])


def test_eval_sees_every_example_exactly_once(quick_config):
  builder = input_pipeline.prepare(quick_config.data)
  info = input_pipeline.split_info(builder, 'validation')
  quick_config.eval_batch_size = 7  # Not a divisor: forces a padded last batch.
  batches = list(input_pipeline.eval_batches(builder, 'validation', quick_config))
  assert all(b['image'].shape[0] == 7 for b in batches)
  mask = np.concatenate([b['mask'] for b in batches])
  assert mask.sum() == info.num_examples
  assert mask[-1] == 0 or info.num_examples % 7 == 0
  labels = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
  assert (labels == 1).sum() == info.num_defective
  images = np.concatenate([b['image'][b['mask'] > 0] for b in batches])
  flat = images.reshape(len(images), -1)
  assert len({row.tobytes() for row in flat}) == len(flat)  # No example twice.


def test_steps_per_epoch_covers_the_split_once():
  assert input_pipeline.steps_per_epoch(960, 8) == 60
  assert input_pipeline.steps_per_epoch(10, 8) == 1


def test_augmentation_changes_training_images_only_and_is_seeded(quick_config):
  builder = input_pipeline.prepare(quick_config.data)
  plain = take(input_pipeline.train_pairs(builder, quick_config), 3)
  quick_config.data.augment_flips = True
  quick_config.data.augment_jitter = 0.2
  aug = take(input_pipeline.train_pairs(builder, quick_config), 3)
  again = next(input_pipeline.train_pairs(builder, quick_config, start_step=2))
  np.testing.assert_array_equal(again['image_a'], aug[2]['image_a'])  # Resume-exact.
  for p, a in zip(plain, aug):
    np.testing.assert_array_equal(p['label_a'], a['label_a'])  # Same images drawn...
    assert not np.array_equal(p['image_a'], a['image_a'])  # ...but changed.
  # A flip or jitter keeps each image's content: the sorted pixel values of a
  # flipped image equal the original's; jitter moves them by at most ~0.2 x 2.
  diff = np.abs(np.sort(plain[0]['image_a'][0].ravel()) - np.sort(aug[0]['image_a'][0].ravel()))
  assert diff.max() < 1.0
  val = next(input_pipeline.eval_batches(builder, 'validation', quick_config))
  quick_config.data.augment_flips, quick_config.data.augment_jitter = False, 0.0
  val_plain = next(input_pipeline.eval_batches(builder, 'validation', quick_config))
  np.testing.assert_array_equal(val['image'], val_plain['image'])  # Off at eval.


def test_kfold_split_names_and_train_stats(quick_config):
  quick_config.data.kfold, quick_config.data.fold = 5, 4
  names = input_pipeline.split_names(quick_config.data)
  assert names == {'train': 'fold_1+fold_2+fold_3', 'val': 'fold_0', 'test': 'fold_4'}
  quick_config.data.fold = 5
  import pytest  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match='config.data.kfold/fold'):
    input_pipeline.split_names(quick_config.data)
  quick_config.data.kfold = 0
  quick_config.data.normalize = 'train_stats'
  builder = input_pipeline.prepare(quick_config.data)
  stats = input_pipeline.compute_stats(builder, quick_config.data)
  images = np.concatenate([b['image'] for b in input_pipeline.eval_batches(
      builder, 'train', quick_config, stats=stats)])  # Padding is zeros: fine
  real = images[:input_pipeline.split_info(builder, 'train').num_examples]
  np.testing.assert_allclose(real.reshape(-1, 3).mean(0), 0.0, atol=1e-3)
  np.testing.assert_allclose(real.reshape(-1, 3).std(0), 1.0, atol=1e-2)
