"""Input size is the dataset's: config.data.image_size through build, train,
predict and export (tiny crops, a 1/16-width model)."""
import csv
import json

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from smsdd_jax import datasets
from smsdd_jax import export
from smsdd_jax import inference
from smsdd_jax import input_pipeline
from smsdd_jax import predict
from smsdd_jax import preprocess
from smsdd_jax import train

SIZE = (48, 96)  # Five pools leave 1 x 3: as small as VGG16 allows, and not 110 x 230.


@pytest.fixture(scope='module')
def crops(tmp_path_factory):
  """12 good and 12 defective 60 x 90 crops (a bright bar marks defects)."""
  root = tmp_path_factory.mktemp('crops')
  rng = np.random.default_rng(0)
  for label in ('good', 'scratch'):
    (root / label).mkdir()
    for i in range(12):
      img = cv2.resize(rng.integers(0, 120, (6, 6), dtype=np.uint8), (90, 60),
                       interpolation=cv2.INTER_CUBIC)
      if label == 'scratch':
        img[28:32, 10:80] = 255
      cv2.imwrite(str(root / label / f'{label}_{i}.png'), img)
  return root


def _data(root, data_dir, size=SIZE):
  d = default.get_config('quick').data
  d.name, d.builder_config = 'image_folder', 'none'
  d.manual_dir, d.data_dir = str(root), str(data_dir)
  d.near_dup_threshold = -1
  d.image_size = size
  return d


def test_a_size_builds_apart_and_is_recorded(crops, tmp_path):
  b = datasets.builder(_data(crops, tmp_path))
  assert b.builder_config.name.startswith('none_stretch_48x96_rgb_tm1_')
  assert b.info.features['image'].shape == (*SIZE, 3)
  ex = next(iter(tfds.as_numpy(b.as_dataset(split='train').take(1))))
  assert ex['image'].shape == (*SIZE, 3)
  md = b.info.metadata
  assert md['preprocessing']['size'] == list(SIZE)
  assert '-> 48x96 stretch' in md['card']['preprocessing']
  with open(f'{b.data_dir}/{datasets.CARD_FILE}') as f:
    assert '-> 48x96 stretch' in f.read()
  # The paper's size keeps the name builds had before sizes could change.
  paper = datasets.builder(_data(crops, tmp_path, size=(110, 230)))
  assert paper.builder_config.name.startswith('none_stretch_rgb_tm1_')
  other = datasets.builder(_data(crops, tmp_path, size=(64, 96)))
  assert len({b.data_dir, paper.data_dir, other.data_dir}) == 3
  assert other.info.features['image'].shape == (64, 96, 3)
  input_pipeline.check_image_size(other, _data(crops, tmp_path, size=(64, 96)))


def test_bad_size_is_refused_in_one_line(crops, tmp_path):
  with pytest.raises(ValueError, match=r'config.data.image_size=.*expected \(height, width\)'):
    datasets.builder(_data(crops, tmp_path, size=(48,)))


def test_synthetic_screens_take_the_size_too():
  datasets.register_all()
  d = default.get_config('quick').data
  cls = tfds.builder_cls('synthetic_screens')
  assert datasets.sized_config(cls, d) == 'small'  # Default: the named config.
  d.image_size = SIZE
  cfg = datasets.sized_config(cls, d)
  assert cfg.name == 'small_48x96' and cfg.num_frames == 160
  assert cfg.preprocessing == preprocess.Spec(roi='hough', size=SIZE)


def test_train_predict_export_at_the_dataset_size(crops, tmp_path):
  config = default.get_config('quick')
  config.data = _data(crops, tmp_path / 'tfds')
  config.batch_size, config.num_epochs = 4, 1
  config.eval_batch_size, config.log_every_steps = 4, 1
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  recorded = json.loads((workdir / 'preprocessing.json').read_text())
  assert recorded['size'] == list(SIZE) and '48x96' in recorded['dataset']

  out = tmp_path / 'p.csv'
  crop = crops / 'scratch' / 'scratch_0.png'
  assert predict.main([f'--workdir={workdir}', f'--input={crop}', f'--output={out}',
                       '--workers=1']) == 0
  row, = csv.DictReader(out.open())
  assert row['error'] == '' and 0.0 <= float(row['prob_defective']) <= 1.0
  predictor = inference.Predictor(str(workdir), batch_size=2)
  assert predictor.image_size == SIZE and predictor.preprocessing.size == SIZE
  got = inference.prepare_frame(str(crop), spec=predictor.preprocessing)
  assert got.roi.shape == (*SIZE, 3)
  assert float(row['prob_defective']) == pytest.approx(
      float(predictor.predict_proba(got.roi[None])[0]), abs=1e-6)

  exp_dir = tmp_path / 'export'
  assert export.main([f'--workdir={workdir}', f'--out={exp_dir}', '--platforms=cpu',
                      '--saved_model=false']) == 0
  info = json.loads((exp_dir / export.INFO_NAME).read_text())
  assert info['input']['shape'] == [None, *SIZE, 3]
  assert info['preprocessing']['size'] == list(SIZE)
