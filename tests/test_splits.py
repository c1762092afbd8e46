"""Grouped stratified splits, k-fold and near-duplicate grouping (no TF)."""
import collections
import hashlib
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from smsdd_jax.datasets import splits


def _counts(labels, assign):
  out = collections.defaultdict(collections.Counter)
  for l, a in zip(labels, assign):
    out[a][l] += 1
  return out


def _assert_near_targets(labels, assign, names, fractions, slack=1.0):
  per_class = collections.Counter(labels)
  got = _counts(labels, assign)
  for name, f in zip(names, fractions):
    for c, n in per_class.items():
      assert abs(got[name][c] - f * n) < slack, (name, c, got[name][c], f * n)


@pytest.mark.parametrize('n_good,n_bad', [(20, 123), (952, 392), (7, 3), (10, 10)])
@pytest.mark.parametrize('fractions', [(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.5, 0.5, 0.0)])
def test_split_hits_per_class_targets(n_good, n_bad, fractions):
  labels = [0] * n_good + [1] * n_bad
  labels = [labels[i] for i in np.random.default_rng(1).permutation(len(labels))]
  assign = splits.stratified_split(labels, fractions, seed=3)
  assert set(assign) <= set(splits.SPLIT_NAMES) and len(assign) == len(labels)
  _assert_near_targets(labels, assign, splits.SPLIT_NAMES, fractions)


@pytest.mark.parametrize('k', [2, 3, 5, 10])
def test_kfold_hits_per_class_targets(k):
  labels = ['good'] * 20 + ['defective'] * 123
  folds = splits.stratified_kfold(labels, k, seed=0)
  assert sorted(set(folds)) == list(range(k))
  _assert_near_targets(labels, folds, range(k), [1 / k] * k)


def test_singleton_groups_equal_no_groups():
  labels = [0] * 30 + [1] * 70
  a = splits.stratified_split(labels, seed=5)
  b = splits.stratified_split(labels, seed=5, groups=[f'g{i}' for i in range(100)])
  assert a == b


def test_deterministic_by_seed():
  labels = [0] * 40 + [1] * 60
  groups = [i // 3 for i in range(100)]
  for seed in (0, 1):
    assert splits.stratified_split(labels, seed=seed, groups=groups) == \
        splits.stratified_split(labels, seed=seed, groups=groups)
    assert splits.stratified_kfold(labels, 5, seed=seed, groups=groups) == \
        splits.stratified_kfold(labels, 5, seed=seed, groups=groups)
  assert splits.stratified_split(labels, seed=0) != splits.stratified_split(labels, seed=1)
  assert splits.stratified_kfold(labels, 5, seed=0) != splits.stratified_kfold(labels, 5, seed=1)


def test_deterministic_across_hash_seeds():
  """String labels and groups: no dependence on Python's hash randomisation."""
  code = ('from smsdd_jax.datasets import splits;'
          "l=['good']*20+['bad']*30; g=[f'run{i%17}' for i in range(50)];"
          'print(splits.stratified_split(l, seed=2, groups=g),'
          ' splits.stratified_kfold(l, 4, seed=2, groups=g))')
  outs = set()
  for hash_seed in ('1', '2'):
    env = {**os.environ, 'PYTHONHASHSEED': hash_seed}
    outs.add(subprocess.run([sys.executable, '-c', code], env=env, check=True,
                            capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__))).stdout)
  assert len(outs) == 1


def _random_groups(rng, n_groups):
  labels, groups = [], []
  for g in range(n_groups):
    size = int(rng.choice([1, 1, 1, 2, 3, 6]))
    lab = int(rng.random() < 0.3)
    labels += [lab] * size
    groups += [f'grp{g}'] * size
  return labels, groups


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_groups_never_straddle_and_stay_balanced(seed):
  rng = np.random.default_rng(seed)
  labels, groups = _random_groups(rng, 120)
  assign = splits.stratified_split(labels, seed=seed, groups=groups)
  folds = splits.stratified_kfold(labels, 5, seed=seed, groups=groups)
  for a in (assign, folds):
    where = collections.defaultdict(set)
    for g, s in zip(groups, a):
      where[g].add(s)
    assert all(len(v) == 1 for v in where.values())
  # Whole groups of <= 6: every split within one group size of its targets.
  _assert_near_targets(labels, assign, splits.SPLIT_NAMES, (0.8, 0.1, 0.1), slack=6)
  _assert_near_targets(labels, folds, range(5), [0.2] * 5, slack=6)


def test_mixed_class_group_stays_whole():
  labels = [0, 1, 1, 0] + [0] * 20 + [1] * 20
  groups = ['a', 'a', 'a', 'a'] + list(range(40))
  assign = splits.stratified_split(labels, seed=0, groups=groups)
  assert len(set(assign[:4])) == 1


def test_argument_errors():
  with pytest.raises(ValueError, match='sum to 1'):
    splits.stratified_split([0, 1], (0.5, 0.2, 0.2))
  with pytest.raises(ValueError, match='3 entries'):
    splits.stratified_split([0, 1], (0.5, 0.5))
  with pytest.raises(ValueError, match='k must be'):
    splits.stratified_kfold([0, 1], 1)
  with pytest.raises(ValueError, match='groups has'):
    splits.stratified_split([0, 1], seed=0, groups=[1])


def test_kfold_split_strings():
  assert splits.kfold_split_names(3) == ['fold_0', 'fold_1', 'fold_2']
  assert splits.kfold_splits(5, 4) == {
      'train': 'fold_1+fold_2+fold_3', 'validation': 'fold_0', 'test': 'fold_4'}
  assert splits.kfold_splits(5, 0)['train'] == 'fold_2+fold_3+fold_4'
  with pytest.raises(ValueError):
    splits.kfold_splits(5, 5)


def test_content_hash():
  assert splits.content_hash(b'abc') == hashlib.sha256(b'abc').hexdigest()
  assert splits.content_hash(b'abc') != splits.content_hash(b'abd')


def _scene(seed, size=(110, 230)):
  """A smooth random image with a few strokes (a stand-in for a screen ROI)."""
  rng = np.random.default_rng(seed)
  small = rng.uniform(0, 255, (6, 12)).astype(np.float32)
  img = cv2.resize(small, size[::-1], interpolation=cv2.INTER_CUBIC)
  for _ in range(3):
    p = rng.integers(0, [size[1], size[0]], size=(2, 2))
    cv2.line(img, tuple(map(int, p[0])), tuple(map(int, p[1])), 255.0, 2)
  img = np.clip(img, 0, 255).astype(np.uint8)
  return np.stack([img] * 3, -1)


def test_perceptual_hash_invariances():
  base = _scene(0)
  h0 = splits.perceptual_hash(base)
  assert h0.shape == (splits.HASH_BITS,) and h0.dtype == bool
  ok, jpg = cv2.imencode('.jpg', base, [cv2.IMWRITE_JPEG_QUALITY, 60])
  variants = [
      cv2.imdecode(jpg, cv2.IMREAD_COLOR),
      np.clip(base.astype(np.int16) * 0.8 + 10, 0, 255).astype(np.uint8),
      np.roll(base, 2, axis=1),
      base[..., :1],  # Gray.
  ]
  for v in variants:
    assert (splits.perceptual_hash(v) != h0).sum() <= 14  # Unrelated: > 30.
  others = [splits.perceptual_hash(_scene(s)) for s in range(1, 6)]
  assert min((h != h0).sum() for h in others) > 30


def test_near_duplicate_groups():
  a, b, c = _scene(0), _scene(1), _scene(2)
  a2 = np.clip(a.astype(np.int16) + 5, 0, 255).astype(np.uint8)
  b2 = np.roll(b, 1, axis=0)
  images = [a, b, c, a2, b2]
  assert splits.near_duplicate_groups(images, threshold=10) == [0, 1, 2, 0, 1]
  assert splits.near_duplicate_groups(images, threshold=-1) == [0, 1, 2, 3, 4]
  # Extra links join groups (transitively).
  assert splits.near_duplicate_groups(images, threshold=10, extra_pairs=[(2, 4)]) == \
      [0, 1, 1, 0, 1]


def test_union_find_and_hamming():
  assert splits.union_find_groups(5, [(3, 4), (1, 3)]) == [0, 1, 2, 1, 1]
  h = np.array([[0, 0, 0], [1, 1, 0], [1, 1, 1]], bool)
  np.testing.assert_array_equal(splits.hamming_matrix(h),
                                [[0, 2, 3], [2, 0, 1], [3, 1, 0]])
