"""A build is tied to its source folder (smsdd_jax.datasets.source)."""
import shutil

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from smsdd_jax import datasets
from smsdd_jax import input_pipeline
from smsdd_jax.datasets import source


def _crops(root, seed, n=10, value_shift=0):
  rng = np.random.default_rng(seed)
  for label in ('good', 'bad'):
    (root / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
      img = cv2.resize(rng.integers(0, 255, (6, 6), dtype=np.uint8), (80, 40),
                       interpolation=cv2.INTER_CUBIC)
      cv2.imwrite(str(root / label / f'{label}{i}.png'), np.clip(img + value_shift, 0, 255))
  return root


def _data(root, data_dir):
  d = default.get_config().data
  d.name, d.builder_config = 'image_folder', 'none'
  d.manual_dir, d.data_dir = str(root), str(data_dir)
  return d


def _files(b):
  ds = b.as_dataset(split='train+validation+test',
                    decoders={'image': tfds.decode.SkipDecoding()})
  return sorted(ex['file_name'].decode() for ex in tfds.as_numpy(ds))


def test_two_folders_one_data_dir_two_datasets(tmp_path, capsys):
  a = _crops(tmp_path / 'a', seed=0)
  b = _crops(tmp_path / 'b', seed=1, n=11)
  ba = datasets.builder(_data(a, tmp_path / 'tfds'))
  out = capsys.readouterr().out
  assert 'image_folder/none_stretch_rgb_' in out and 'dataset card:' in out
  assert 'Downloading' not in out  # No TFDS download noise for a local folder.
  bb = datasets.builder(_data(b, tmp_path / 'tfds'))
  assert '22 examples' in capsys.readouterr().out
  assert ba.data_dir != bb.data_dir
  assert len(_files(ba)) == 20 and len(_files(bb)) == 22
  assert ba.info.metadata['card']['source']['root'] == str(a.resolve())
  # The same folder again reuses its build, silently.
  again = datasets.builder(_data(a, tmp_path / 'tfds'))
  assert again.data_dir == ba.data_dir and capsys.readouterr().out == ''
  # One changed file: a new build.
  (a / 'good' / 'good0.png').unlink()
  changed = datasets.builder(_data(a, tmp_path / 'tfds'))
  assert changed.data_dir != ba.data_dir and len(_files(changed)) == 19


def test_missing_or_bad_folder_fails_even_with_an_old_build(tmp_path):
  a = _crops(tmp_path / 'a', seed=0)
  datasets.builder(_data(a, tmp_path / 'tfds'))
  shutil.rmtree(a)
  with pytest.raises(ValueError, match=r"manual_dir='.*a': no such folder"):
    input_pipeline.prepare(_data(a, tmp_path / 'tfds'))
  with pytest.raises(ValueError, match='manual_dir is empty'):
    input_pipeline.prepare(_data('', tmp_path / 'tfds'))
  one = _crops(tmp_path / 'one', seed=2)
  shutil.rmtree(one / 'bad')
  with pytest.raises(ValueError, match="class 'defective' is empty"):
    input_pipeline.prepare(_data(one, tmp_path / 'tfds'))
  (tmp_path / 'file').write_text('x')
  with pytest.raises(ValueError, match='not a folder'):
    input_pipeline.prepare(_data(tmp_path / 'file', tmp_path / 'tfds'))


def test_fingerprint_is_exact(tmp_path):
  a = _crops(tmp_path / 'a', seed=0)
  f1 = source.fingerprint(a)
  (a / 'good' / 'good1.png').write_bytes((a / 'good' / 'good1.png').read_bytes() + b'\0')
  f2 = source.fingerprint(a)
  assert f1.digest != f2.digest and f1.num_files == f2.num_files == 20
  (a / '.hidden').write_text('ignored')
  assert source.fingerprint(a).digest == f2.digest


def test_preprocessing_settings_build_apart(tmp_path):
  a = _crops(tmp_path / 'a', seed=0)
  d = _data(a, tmp_path / 'tfds')
  stretch = datasets.builder(d)
  d.aspect = 'letterbox'
  letterbox = datasets.builder(d)
  assert stretch.data_dir != letterbox.data_dir
  assert letterbox.info.metadata['preprocessing']['aspect'] == 'letterbox'
  d.builder_config = 'nope'
  with pytest.raises(ValueError, match=r"builder_config='nope': image_folder has \['none', 'roi'\]"):
    datasets.builder(d)
