"""The export source: a dataset export read in numpy gives what tf.data gives
(the same eval batches; the same pairs: tests/test_pairs.py), its pairs keep
the pair rule, resume and shard, and it refuses what does not fit."""
import collections
import json
import os

import numpy as np
import pytest

from configs import default
from smsdd_jax import dataset_export
from smsdd_jax import input_pipeline
from smsdd_jax import train


def _configs(crops_data, **changes):
  """(tfds config, export config) of the same data and settings."""
  data, path = crops_data
  out = []
  for source in ('tfds', 'export'):
    config = default.get_config('quick')
    config.data.update(data.to_dict())
    config.data.source, config.data.export_path = source, path if source == 'export' else ''
    config.batch_size = 4
    for key, value in changes.items():
      config.data[key] = value
    out.append(config)
  return out


def test_export_holds_the_build_once_and_evaluates_identically(crops_data):
  tfds_config, export_config = _configs(crops_data)
  build = input_pipeline.prepare(tfds_config.data)
  export = input_pipeline.prepare(export_config.data)
  assert export.images.shape == (50, 110, 230, 1)  # Gray files: one channel stored.
  assert len(export.labels) == 50 and export.name == 'image_folder'
  assert export.masks is None and not export.meta['has_masks']  # A build without masks.
  assert export.info.metadata['card'] == build.info.metadata['card']
  # Every split, and every k-fold training split, in TFDS' own reading order.
  names = ['train', 'validation', 'test', *(f'fold_{i}' for i in range(5)),
           *dataset_export.kfold_train_splits([f'fold_{i}' for i in range(5)])]
  for split in names:
    assert input_pipeline.split_info(build, split) == input_pipeline.split_info(export, split)
    a = list(input_pipeline.eval_batches(build, split, tfds_config))
    b = list(input_pipeline.eval_batches(export, split, export_config))
    assert len(a) == len(b), split
    for x, y in zip(a, b):
      for key in ('image', 'label', 'mask'):
        assert x[key].dtype == y[key].dtype, (split, key)
        np.testing.assert_array_equal(x[key], y[key], err_msg=f'{split} {key}')
    types = input_pipeline.defect_types(build, split), input_pipeline.defect_types(export, split)
    np.testing.assert_array_equal(types[0][0], types[1][0])
    np.testing.assert_array_equal(types[0][1], types[1][1])
  assert set(export.defect_types) == {'none', 'scratch', 'oil'}


def _pair_stats(batches, known: dict, side: str) -> dict:
  """Share of defective images, share of same-class pairs, and per class how
  often each image came on side 'a' (images named through `known`)."""
  labels = np.concatenate([np.concatenate([b['label_a'], b['label_b']]) for b in batches])
  same = np.concatenate([b['same'] for b in batches])
  draws = collections.Counter(known[img.tobytes()] for b in batches for img in b[f'image_{side}'])
  return {'defective': labels.mean(), 'same': same.mean(), 'draws': draws,
          'labels_agree': all(np.array_equal(b['same'], b['label_a'] == b['label_b'])
                              for b in batches)}


def test_export_pairs_keep_the_pair_rule(crops_data):
  _, export_config = _configs(crops_data)
  export = input_pipeline.prepare(export_config.data)
  split = input_pipeline.split_names(export_config.data)['train']
  images = np.concatenate([b['image'][b['mask'] > 0] for b in input_pipeline.eval_batches(
      export, split, export_config)])
  labels = export.labels[export.indices(split)]
  known = {img.tobytes(): i for i, img in enumerate(images)}
  n_steps = 60  # 480 images: binomial sd 0.023 (class), 0.032 (same/different).
  it = input_pipeline.train_pairs(export, export_config)
  s = _pair_stats([next(it) for _ in range(n_steps)], known, 'a')
  assert s['labels_agree']
  assert abs(s['defective'] - 0.5) < 0.1, s['defective']
  assert abs(s['same'] - 0.5) < 0.13, s['same']
  # Coverage: each class cycles through its own shuffle, so on one side
  # every image of a class was drawn equally often, give or take one.
  for c in (0, 1):
    counts = [s['draws'][i] for i in np.flatnonzero(labels == c)]
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1, (c, counts)


def test_export_pairs_resume_augment_and_shard(crops_data):
  _, config = _configs(crops_data, augment_flips=True, augment_jitter=0.2)
  export = input_pipeline.prepare(config.data)
  stream = input_pipeline.train_pairs(export, config)
  first = [next(stream) for _ in range(4)]
  resumed = next(input_pipeline.train_pairs(export, config, start_step=3))
  for key in first[3]:
    np.testing.assert_array_equal(resumed[key], first[3][key])  # Resume-exact.
  config.seed = 1
  assert not np.array_equal(next(input_pipeline.train_pairs(export, config))['image_a'],
                            first[0]['image_a'])
  config.seed = 0
  config.data.augment_flips, config.data.augment_jitter = False, 0.0
  plain = next(input_pipeline.train_pairs(export, config))
  np.testing.assert_array_equal(plain['label_a'], first[0]['label_a'])  # Same images...
  assert not np.array_equal(plain['image_a'], first[0]['image_a'])  # ...changed.
  diff = np.abs(np.sort(plain['image_a'][0].ravel()) - np.sort(first[0]['image_a'][0].ravel()))
  assert diff.max() < 1.0  # A flip keeps the pixels; jitter moves them by < 2 x 0.2.
  # Two processes: half the batch each, from disjoint halves of the split.
  split = export.indices(input_pipeline.split_names(config.data)['train'])
  seen = []
  for index in (0, 1):
    it = input_pipeline.train_pairs(export, config, shard=(index, 2))
    batches = [next(it) for _ in range(20)]
    assert batches[0]['image_a'].shape[0] == 2
    own = {img.tobytes() for img in export.normalized(input_pipeline.FIXED_STATS)[0][
        split[index::2]]}
    drawn = {img.tobytes() for b in batches for img in np.concatenate([b['image_a'],
                                                                      b['image_b']])}
    assert drawn <= own
    seen.append(drawn)
  assert not seen[0] & seen[1]


def test_the_same_state_evaluates_identically_on_both_sources(crops_data, tmp_path):
  configs = _configs(crops_data)
  for c in configs:
    os.makedirs(tmp_path / c.data.source)
  runs = [train.Run(c, str(tmp_path / c.data.source)) for c in configs]
  state = runs[0].initial_state()
  try:
    a, b = (run.predict(state, 'val') for run in runs)
  finally:
    for run in runs:
      run.close()
  for key in ('label', 'prob', 'embedding', 'cross_entropy'):
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # What predict reads of a run: the same preprocessing and build on both.
  records = [json.loads((tmp_path / s / 'preprocessing.json').read_text())
             for s in ('tfds', 'export')]
  # The export's run also records which export (its sha256 and path).
  export_only = {k: records[1].pop(k) for k in ('export_sha256', 'export_path')}
  assert records[0] == records[1] and records[0]['source_fingerprint']
  assert export_only['export_sha256'] == dataset_export.load(crops_data[1]).meta['sha256']


def test_train_stats_match_tf_data(crops_data):
  tfds_config, export_config = _configs(crops_data, normalize='train_stats')
  a = input_pipeline.compute_stats(input_pipeline.prepare(tfds_config.data), tfds_config.data)
  b = input_pipeline.compute_stats(input_pipeline.prepare(export_config.data),
                                   export_config.data)
  np.testing.assert_allclose(a['mean'], b['mean'], rtol=1e-12)
  np.testing.assert_allclose(a['std'], b['std'], rtol=1e-12)


def test_an_export_that_does_not_fit_is_refused_in_one_line(crops_data, tmp_path):
  _, config = _configs(crops_data)
  d = config.data
  for field, value, message in (
      ('name', 'magnetic_tile', "config.data.name='magnetic_tile', but .* exported from "
                                "name='image_folder'"),
      ('image_size', (64, 128), r'config.data.image_size=\(64, 128\): the export .* holds '
                                '110x230'),
      ('near_dup_threshold', 3, 'near_dup_threshold=3, but .* built with -1'),
      ('source', 'tfrecords', r"config.data.source='tfrecords': expected one of \('tfds', "
                              r"'export'\)"),
      ('export_path', str(tmp_path / 'none.npz'), 'none.npz.: no such file')):
    bad = d.copy_and_resolve_references()
    bad[field] = value
    with pytest.raises(ValueError, match=message):
      input_pipeline.prepare(bad)
  junk = tmp_path / 'junk.npz'
  junk.write_bytes(b'not a zip')
  d.export_path = str(junk)
  with pytest.raises(ValueError, match='junk.npz: not a dataset export'):
    input_pipeline.prepare(d)
  # One byte of one image changed: the recorded sha256 no longer fits.
  with np.load(crops_data[1], allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  arrays['png'] = arrays['png'].copy()
  arrays['png'][100] ^= 1
  edited = tmp_path / 'edited.npz'
  np.savez(edited, **arrays)
  d.export_path = str(edited)
  with pytest.raises(ValueError, match='do not match the sha256'):
    input_pipeline.prepare(d)


def test_rgb_images_are_stored_in_colour_and_read_back_exactly():
  rng = np.random.default_rng(0)
  colour = rng.integers(0, 256, (3, 8, 12, 3), dtype=np.uint8)
  gray = np.repeat(rng.integers(0, 256, (3, 8, 12, 1), dtype=np.uint8), 3, axis=-1)
  for images, channels in ((colour, 3), (gray, 1)):
    examples = [{'image': im, 'label': i % 2, 'defect_type': 'x', 'file_name': f'{i}.png',
                 'group': i} for i, im in enumerate(images)]
    arrays, stored = dataset_export.to_arrays(examples, {'train': [0, 1, 2]})
    assert stored == channels
    meta = {'image_size': [8, 12], 'stored_channels': stored}
    decoded = dataset_export._decode(arrays['png'], arrays['png_offsets'], meta, 'test')
    np.testing.assert_array_equal(np.repeat(decoded, 3 // stored, axis=-1), images)


def test_export_command_line(crops_data, tmp_path, capsys):
  data, _ = crops_data
  out = str(tmp_path / 'cli.npz')
  args = ['--data=image_folder', '--builder_config=none', f'--manual_dir={data.manual_dir}',
          f'--data_dir={data.data_dir}', '--set=near_dup_threshold=-1', '--set=quick=True',
          f'--out={out}']
  assert dataset_export.main(args) == 0
  assert 'cli.npz: image_folder/none_stretch_rgb_tm1_' in capsys.readouterr().out
  assert dataset_export.load(out).meta['sha256'] == dataset_export.load(crops_data[1]).meta[
      'sha256']
  assert dataset_export.main(['--data=image_folder', '--set=bogus=1']) == 2
  assert "config.data has no field 'bogus'" in capsys.readouterr().err
  assert os.path.basename(dataset_export.default_path(data)) == 'image_folder_110x230.npz'

