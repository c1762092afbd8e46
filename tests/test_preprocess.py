"""The one preprocessing path (smsdd_jax.preprocess) and its users agreeing."""
import pathlib

import cv2
import numpy as np
import pytest

from configs import default
from smsdd_jax import datasets
from smsdd_jax import inference
from smsdd_jax import preprocess
from smsdd_jax.datasets import synthetic_screens


def _png(image) -> bytes:
  return cv2.imencode('.png', image)[1].tobytes()


def test_resize_one_rule():
  # A 100 x 300 (w x h) crop to 230 x 110: width grows, height shrinks. The
  # height is area-averaged (a 1-pixel line of a 3-row period survives as a
  # third), then the width interpolated; both orders of a mixed case agree.
  img = np.zeros((300, 100), np.uint8)
  img[::3] = 255
  out = preprocess.resize(img, (100, 230))
  assert out.shape == (100, 230)
  np.testing.assert_allclose(out.astype(float), 85, atol=1)
  # Shrinking both: exactly OpenCV's area average.
  big = np.random.default_rng(0).integers(0, 255, (220, 460, 3), dtype=np.uint8)
  np.testing.assert_array_equal(preprocess.resize(big, (110, 230)),
                                cv2.resize(big, (230, 110), interpolation=cv2.INTER_AREA))
  same = preprocess.resize(big, (220, 460))
  assert same is big


def test_aspect_policies():
  crop = np.full((300, 100), 200, np.uint8)  # Portrait, 1:3.
  st = preprocess.fit(crop, (110, 230), 'stretch')
  assert st.shape == (110, 230) and (st == 200).all()
  lb = preprocess.fit(crop, (110, 230), 'letterbox')
  ys, xs = np.nonzero(lb)
  assert lb.shape == (110, 230) and ys.min() == 0 and ys.max() == 109
  assert abs((xs.max() - xs.min() + 1) - 110 / 3) <= 1  # Aspect kept.
  marked = crop.copy()
  marked[0, 0] = 0  # Top-left corner of a portrait image...
  rot = preprocess.fit(marked, (300, 100)[::-1], 'rotate')
  assert rot.shape == (100, 300) and rot[0, -1] == 0  # ...ends top-right (clockwise).
  land = np.full((100, 300), 7, np.uint8)
  np.testing.assert_array_equal(preprocess.fit(land, (110, 230), 'rotate'),
                                preprocess.fit(land, (110, 230), 'stretch'))
  with pytest.raises(ValueError, match='aspect'):
    preprocess.fit(crop, (110, 230), 'crop')
  with pytest.raises(ValueError, match="aspect='crop'"):
    preprocess.Spec(aspect='crop')


def test_channel_policies_and_describe():
  gray = np.random.default_rng(1).integers(0, 255, (60, 90), dtype=np.uint8)
  rgb, corners, method = preprocess.to_model_input(preprocess.decode(_png(gray)),
                                                   preprocess.Spec())
  assert rgb.shape == (110, 230, 3) and method == 'none'
  assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
  np.testing.assert_array_equal(corners, [[0, 0], [89, 0], [89, 59], [0, 59]])
  colour = np.zeros((60, 90, 3), np.uint8)
  colour[..., 2] = 200  # Red in BGR.
  as_rgb = preprocess.load(_png(colour), preprocess.Spec())[0]
  assert (as_rgb[..., 0] == 200).all() and (as_rgb[..., 2] == 0).all()
  as_gray = preprocess.load(_png(colour), preprocess.Spec(channels='gray'))[0]
  assert (as_gray == cv2.cvtColor(colour[:1, :1], cv2.COLOR_BGR2GRAY)[0, 0]).all()
  line = preprocess.Spec(aspect='letterbox').describe('2200 files, 300x300 gray', 2200, 2200)
  assert line == '2200 files, 300x300 gray -> 110x230 letterbox, gray replicated to 3 channels'


@pytest.mark.parametrize('data,why', [
    (b'', 'empty file'),
    (b'hello, not an image', 'not an image'),
    (b'\xff\xd8\xff\xe0broken', 'truncated JPEG'),
])
def test_bad_bytes_one_line(data, why):
  with pytest.raises(preprocess.BadImage, match=why) as err:
    preprocess.decode(data)
  assert '\n' not in str(err.value)


def test_truncated_files_and_links(tmp_path):
  img = np.random.default_rng(2).integers(0, 255, (40, 60, 3), dtype=np.uint8)
  jpg = cv2.imencode('.jpg', img)[1].tobytes()
  png = _png(img)
  with pytest.raises(preprocess.BadImage, match='truncated JPEG'):
    preprocess.decode(jpg[:len(jpg) - 50])
  with pytest.raises(preprocess.BadImage, match='truncated PNG'):
    preprocess.decode(png[:len(png) - 20])
  with pytest.raises(preprocess.BadImage, match='too large'):
    preprocess.decode(png, max_pixels=100)
  (tmp_path / 'gone.jpg').symlink_to(tmp_path / 'nowhere.jpg')
  with pytest.raises(preprocess.BadImage, match='broken symbolic link'):
    preprocess.read_bytes(tmp_path / 'gone.jpg')
  assert preprocess.image_header(jpg) == ('jpeg', 60, 40)


def _folder_config(name, root, data_dir, **extra):
  d = default.get_config().data
  d.name, d.manual_dir, d.data_dir = name, str(root), str(data_dir)
  for key, value in extra.items():
    d[key] = value
  return d


def _odd_crops(root: pathlib.Path):
  """Ready crops of odd sizes and kinds: portrait, landscape, gray, colour."""
  rng = np.random.default_rng(3)
  shapes = [(300, 100), (97, 311), (250, 500), (111, 229), (64, 64, 3), (400, 130, 3)]
  for label in ('good', 'scratch'):
    (root / label).mkdir(parents=True)
    for i, shape in enumerate(shapes * 2):
      img = cv2.resize(rng.integers(0, 255, (8, 8) + tuple(shape[2:]), dtype=np.uint8),
                       (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
      ext = '.jpg' if i % 2 else '.png'
      cv2.imwrite(str(root / label / f'{label}_{i}{ext}'), img)


@pytest.mark.parametrize('aspect,channels', [('stretch', 'rgb'), ('letterbox', 'gray'),
                                             ('rotate', 'rgb')])
def test_builder_and_predict_give_identical_inputs(tmp_path, aspect, channels):
  """The same file becomes bit-identical model input through a build and
  through predict's path (ready crops of odd sizes)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  root = tmp_path / 'crops'
  _odd_crops(root)
  b = datasets.builder(_folder_config('image_folder', root, tmp_path / 'tfds',
                                      builder_config='none', aspect=aspect,
                                      channels=channels, near_dup_threshold=-1))
  spec = preprocess.Spec.from_dict(b.info.metadata['preprocessing'])
  assert (spec.aspect, spec.channels, spec.roi) == (aspect, channels, 'none')
  seen = 0
  for split in ('train', 'validation', 'test'):
    for ex in tfds.as_numpy(b.as_dataset(split=split)):
      got = inference.prepare_frame(str(root / ex['file_name'].decode()), spec=spec)
      assert got.ok, got.error
      np.testing.assert_array_equal(ex['image'], got.roi)
      seen += 1
  assert seen == 24


def test_raw_frame_same_through_synthetic_builder_and_predict(tmp_path):
  frame = synthetic_screens.render_frame(3, seed=0, frame_size=(540, 960), defective=True,
                                         defect_type='scratch')
  path = tmp_path / 'frame.png'
  cv2.imwrite(str(path), frame.image)
  spec = preprocess.Spec(roi='hough')
  via_builder = preprocess.to_model_input(frame.image, spec)[0]  # What the builder stores.
  via_predict = inference.prepare_frame(str(path), spec=spec)
  np.testing.assert_array_equal(via_builder, via_predict.roi)


def test_enlargement_per_side_by_policy():
  stretch, letterbox, rotate = (preprocess.Spec(aspect=a) for a in preprocess.ASPECTS)
  corners = np.zeros((4, 2), np.float32)  # Unused for whole images.
  assert preprocess.enlargement((1, 1), corners, stretch) == 230
  assert preprocess.enlargement((220, 460, 3), corners, stretch) == 0.5  # Shrunk.
  # A 20 x 200 strip: its short side grows 5.5x when stretched; letterboxed,
  # one scale fits the long side (1.15x); turned and stretched likewise.
  assert preprocess.enlargement((20, 200), corners, stretch) == 5.5
  assert preprocess.enlargement((20, 200), corners, letterbox) == 1.15
  assert preprocess.enlargement((200, 20), corners, rotate) == 5.5
  assert preprocess.enlargement((200, 20), corners, stretch) == 11.5
  small = preprocess.Spec(size=(55, 115))
  assert preprocess.enlargement((20, 200), corners, small) == 2.75
  # A screen: the found quad's sides (23 x 11 pixels here) against the output.
  quad = np.array([[10, 10], [33, 10], [33, 21], [10, 21]], np.float32)
  assert preprocess.enlargement((500, 900), quad, preprocess.Spec(roi='hough')) == 10


def test_card_without_enlargement_still_renders():
  from smsdd_jax.datasets import card  # pylint: disable=import-outside-toplevel
  c = card.make(name='x/y', source={}, preprocessing='p', members={'train': [0, 1]},
                labels=['good', 'defective'], defect_types=['none', 'a'],
                files=['a.png', 'b.png'], groups=[0, 1], skipped=[], warnings=[])
  assert c['enlarged'] == {'limit': 4.0, 'count': 0, 'worst': None}
  assert 'Enlarged more than 4x along a side: 0.' in card.to_markdown(c)
  del c['enlarged']  # A card from an older build.
  assert 'Enlarged images: not measured.' in card.to_markdown(c)
