"""The synthetic raw-frame generator (synthetic_render) and its TFDS builder
(synthetic_screens)."""
import collections
import importlib.util
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from smsdd_jax.datasets import synthetic_render as sr
from smsdd_jax.datasets import synthetic_screens as ss

SMALL = (540, 960)  # Frame size used where full HD is not the point.


def _rectify(image, corners, size=sr.ROI_SIZE):
  h, w = size
  m = cv2.getPerspectiveTransform(
      np.float32(corners), np.float32([[0, 0], [w, 0], [w, h], [0, h]]))
  return cv2.warpPerspective(image, m, (w, h), flags=cv2.INTER_AREA)


# --- render_frame ----------------------------------------------------------


def test_same_seed_and_index_give_identical_bytes():
  a = sr.render_frame(7, seed=3, defective=True, defect_type='oil')
  sr.render_frame(8, seed=3, defective=False)  # Other frames do not matter.
  b = sr.render_frame(7, seed=3, defective=True, defect_type='oil')
  assert a.image.shape == (1080, 1920, 3) and a.image.dtype == np.uint8
  assert a.image.tobytes() == b.image.tobytes()
  assert a.corners.tobytes() == b.corners.tobytes()
  assert (a.label, a.defect_type, a.phone) == (b.label, b.defect_type, b.phone) == (
      1, 'oil', a.phone)


def test_different_seeds_and_indices_differ():
  a = sr.render_frame(4, seed=0, frame_size=SMALL, defective=False)
  b = sr.render_frame(4, seed=1, frame_size=SMALL, defective=False)
  c = sr.render_frame(5, seed=0, frame_size=SMALL, defective=False)
  assert not np.array_equal(a.image, b.image)
  assert not np.array_equal(a.corners, b.corners)
  assert not np.array_equal(a.image, c.image)


def test_same_scene_at_every_frame_size():
  for i in range(6):
    big = sr.render_frame(i, defective=True, defect_type='scratch')
    small = sr.render_frame(i, frame_size=SMALL, defective=True, defect_type='scratch')
    assert big.phone == small.phone
    np.testing.assert_allclose(small.corners * 2, big.corners, atol=0.01)


def test_frame_fields_and_argument_checks():
  f = sr.render_frame(0, frame_size=SMALL, defective=False)
  assert (f.label, f.defect_type) == (0, 'none')
  assert f.phone in sr.PHONES
  assert f.corners.shape == (4, 2) and f.corners.dtype == np.float32
  f = sr.render_frame(0, frame_size=SMALL, defective=True)  # Type drawn per frame.
  assert f.label == 1 and f.defect_type in sr.DEFECT_KINDS
  with pytest.raises(ValueError):
    sr.render_frame(0, frame_size=SMALL, defective=False, defect_type='oil')
  with pytest.raises(ValueError):
    sr.render_frame(0, frame_size=SMALL, defective=True, defect_type='crack')


@pytest.mark.parametrize('frame_size', [SMALL, (1080, 1920)])
def test_corners_inside_frame_convex_and_phone_shaped(frame_size):
  h, w = frame_size
  phones = set()
  for i in range(24):
    f = sr.render_frame(i, frame_size=frame_size, defective=False)
    c = f.corners.astype(np.float64)
    phones.add(f.phone)
    assert np.all(c >= 0) and np.all(c[:, 0] < w) and np.all(c[:, 1] < h), c
    assert cv2.isContourConvex(f.corners.reshape(-1, 1, 2))
    tl, tr, br, bl = c
    assert tl[0] < tr[0] and bl[0] < br[0] and tl[1] < bl[1] and tr[1] < br[1]
    long_side = (np.linalg.norm(tr - tl) + np.linalg.norm(br - bl)) / 2
    short_side = (np.linalg.norm(bl - tl) + np.linalg.norm(br - tr)) / 2
    assert 1.8 < long_side / short_side < 2.3
    assert 0.7 < long_side / w < 0.96
    # Nearly level: at most a few degrees of rotation.
    angle = np.degrees(np.arctan2(tr[1] - tl[1], tr[0] - tl[0]))
    assert abs(angle) < 4
  assert phones == {'black', 'white'}


@pytest.mark.parametrize('kind', sr.DEFECT_KINDS)
def test_defect_changes_only_the_screen(kind):
  for i in (2, 11):
    bad = sr.render_frame(i, frame_size=SMALL, defective=True, defect_type=kind)
    good = sr.render_frame(i, frame_size=SMALL, defective=False)
    np.testing.assert_array_equal(bad.corners, good.corners)
    screen = np.zeros(SMALL, np.uint8)
    cv2.fillPoly(screen, [np.rint(bad.corners).astype(np.int32)], 1)
    diff = cv2.absdiff(bad.image, good.image).max(-1)
    assert diff[screen == 0].max() == 0, 'defect drawn off the phone'
    assert diff[screen == 1].max() > 60
    # Still clearly visible once the screen is warped down to 110 x 230.
    roi_diff = cv2.absdiff(_rectify(bad.image, bad.corners),
                           _rectify(good.image, good.corners)).max(-1)
    assert roi_diff.max() > 40, (kind, i, roi_diff.max())
    assert np.count_nonzero(roi_diff > 15) >= 3, (kind, i)


# --- frame_plan, frame_splits, quad_iou ------------------------------------


@pytest.mark.parametrize('n,n_bad', [(1200, 168), (160, 40), (10, 0), (7, 7)])
def test_frame_plan_counts_exact_and_deterministic(n, n_bad):
  plan = sr.frame_plan(n, n_bad, seed=0)
  assert plan == sr.frame_plan(n, n_bad, seed=0)
  assert [p[0] for p in plan] == list(range(n))
  assert sum(d for _, d, _ in plan) == n_bad
  assert all((t == 'none') != d for _, d, t in plan)
  kinds = collections.Counter(t for _, d, t in plan if d)
  assert set(kinds) <= set(sr.DEFECT_KINDS)
  if n_bad >= 4:
    assert set(kinds) == set(sr.DEFECT_KINDS)
    assert max(kinds.values()) - min(kinds.values()) <= 1
  if 0 < n_bad < n:
    assert plan != sr.frame_plan(n, n_bad, seed=1)


def test_frame_plan_rejects_bad_counts():
  with pytest.raises(ValueError):
    sr.frame_plan(10, 11)


def test_frame_splits_proportions_types_and_determinism():
  plan = sr.frame_plan(1200, 168, seed=0)
  labels = [int(d) for _, d, _ in plan]
  split_of = ss.frame_splits(plan, seed=0)
  assert split_of == ss.frame_splits(plan, seed=0)
  assert split_of != ss.frame_splits(plan, seed=1)
  assert len(split_of) == len(labels) and set(split_of) == set(ss.SPLIT_NAMES)
  count = collections.Counter(zip(split_of, labels))
  for c in (0, 1):
    n = labels.count(c)
    for name, frac in zip(ss.SPLIT_NAMES, (0.8, 0.1, 0.1)):
      assert abs(count[name, c] - frac * n) < 1, (name, c, count)
  assert collections.Counter(split_of) == {'train': 960, 'validation': 120, 'test': 120}
  # Defect types spread over the splits too (42 of each kind).
  types = collections.Counter((s, t) for s, (_, d, t) in zip(split_of, plan) if d)
  for kind in sr.DEFECT_KINDS:
    for name, frac in zip(ss.SPLIT_NAMES, (0.8, 0.1, 0.1)):
      assert abs(types[name, kind] - frac * 42) < 1, (name, kind, types)
  # Small config: 120 good, 40 defective, one of each defect kind in
  # validation and in test.
  small_plan = sr.frame_plan(160, 40, seed=0)
  small = ss.frame_splits(small_plan, seed=0)
  assert collections.Counter(zip(small, (int(d) for _, d, _ in small_plan))) == {
      ('train', 0): 96, ('validation', 0): 12, ('test', 0): 12,
      ('train', 1): 32, ('validation', 1): 4, ('test', 1): 4}
  for name in ('validation', 'test'):
    assert sorted(t for s, (_, d, t) in zip(small, small_plan) if d and s == name) == \
        sorted(sr.DEFECT_KINDS)


def test_quad_iou():
  sq = np.float32([[0, 0], [10, 0], [10, 10], [0, 10]])
  assert sr.quad_iou(sq, sq) == pytest.approx(1.0)
  assert sr.quad_iou(sq, sq + [5, 0]) == pytest.approx(50 / 150)
  assert sr.quad_iou(sq, sq[::-1]) == pytest.approx(1.0)  # Orientation-free.
  assert sr.quad_iou(sq, sq + [20, 0]) == pytest.approx(0.0)
  bowtie = np.float32([[0, 0], [10, 10], [10, 0], [0, 10]])  # Not convex.
  assert 0.0 <= sr.quad_iou(sq, bowtie) <= 1.0


def test_write_sample_frames(tmp_path):
  paths = sr.write_sample_frames(str(tmp_path), 4, seed=0, frame_size=SMALL)
  assert len(paths) == 4
  assert len(list((tmp_path / 'good').glob('*.jpg'))) == 2
  assert len(list((tmp_path / 'defective').glob('*.jpg'))) == 2
  img = cv2.imread(paths[0])
  assert img is not None and img.shape == (*SMALL, 3)


def test_renderer_imports_without_tensorflow():
  code = ('import sys; import smsdd_jax.datasets.synthetic_render;'
          "print(sorted(m for m in sys.modules if m.split('.')[0] in "
          "('tensorflow', 'tensorflow_datasets', 'jax')))")
  out = subprocess.run([sys.executable, '-c', code], check=True, capture_output=True,
                       text=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout
  assert out.strip() == '[]'


def test_builder_module_reexports_the_renderer():
  for name in ('render_frame', 'frame_plan', 'write_sample_frames', 'quad_iou', 'Frame',
               'DEFECT_TYPES', 'DEFECT_KINDS', 'LABEL_NAMES', 'PHONES', 'ROI_SIZE'):
    assert getattr(ss, name) is getattr(sr, name), name


# --- the TFDS builder --------------------------------------------------------


def _roi_available() -> bool:
  try:
    return importlib.util.find_spec('smsdd_jax.roi') is not None
  except ImportError:
    return False


needs_roi = pytest.mark.skipif(
    not _roi_available(),
    reason='smsdd_jax.roi (find_screen / rectify) is not in the tree yet; the '
           'builder calls it for every frame')


def test_builder_is_registered_with_configs():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  assert tfds.builder_cls('synthetic_screens') is ss.SyntheticScreens
  configs = {c.name: c for c in ss.SyntheticScreens.BUILDER_CONFIGS}
  assert configs['default'].num_frames == 1200
  assert configs['default'].num_defective == 168
  assert configs['small'].num_frames == 160 and configs['small'].num_defective == 40
  assert str(ss.SyntheticScreens.VERSION) == '1.1.0'


@pytest.fixture(scope='module')
def small_builder(tmp_path_factory):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()
  builder = tfds.builder('synthetic_screens/small',
                         data_dir=str(tmp_path_factory.mktemp('tfds')))
  builder.download_and_prepare()
  return builder


def _examples(builder, split):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


@needs_roi
def test_small_builder_splits_and_features(small_builder):
  info = small_builder.info
  assert info.supervised_keys is None
  assert {k: v.num_examples for k, v in info.splits.items()} == {
      'train': 128, 'validation': 16, 'test': 16}
  assert small_builder.num_skipped == 0, small_builder.skipped
  assert info.metadata['skipped'] == {'train': [], 'validation': [], 'test': []}
  plan = ss.frame_plan(160, 40, seed=0)
  seen = set()
  for split, n_bad in (('train', 32), ('validation', 4), ('test', 4)):
    ex = _examples(small_builder, split)
    assert sum(int(e['label']) for e in ex) == n_bad
    for e in ex:
      i = int(e['frame_id'])
      assert i not in seen
      seen.add(i)
      assert e['image'].shape == (110, 230, 3) and e['image'].dtype == np.uint8
      assert e['corners_true'].shape == e['corners_found'].shape == (4, 2)
      _, defective, dtype = plan[i]
      assert int(e['label']) == int(defective)
      assert ss.DEFECT_TYPES[int(e['defect_type'])] == dtype
      assert e['phone'].decode() in ss.PHONES
  assert seen == set(range(160))


@needs_roi
def test_small_builder_matches_renderer(small_builder):
  from smsdd_jax import roi  # pylint: disable=import-outside-toplevel
  e = _examples(small_builder, 'test')[0]
  i = int(e['frame_id'])
  _, defective, dtype = ss.frame_plan(160, 40, seed=0)[i]
  f = ss.render_frame(i, frame_size=(540, 960), defective=defective,
                      defect_type=dtype if defective else None)
  np.testing.assert_array_equal(e['corners_true'], f.corners)
  expect = cv2.cvtColor(roi.rectify(f.image, e['corners_found'], size=(110, 230)),
                        cv2.COLOR_BGR2RGB)
  np.testing.assert_array_equal(e['image'], expect)


@needs_roi
def test_small_builder_finds_every_screen(small_builder):
  ious = np.array([float(e['roi_iou']) for s in ss.SPLIT_NAMES
                   for e in _examples(small_builder, s)])
  assert len(ious) == 160
  assert ious.min() >= 0.9, np.sort(ious)[:5]
