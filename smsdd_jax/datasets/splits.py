"""Grouped, stratified splits and near-duplicate grouping (pure numpy + cv2, no TF).

Small defect sets leak easily: the real MSD frames hold runs of the same
phone with the same defects shot again and again (`Scr_0003` ... `Scr_0023`),
and the magnetic tiles are each photographed under six lightings. If members
of such a run land in both train and test, the test measures memory. So:

* `near_duplicate_groups(images, threshold=...)` gives every image a group id:
  images whose perceptual hashes (`perceptual_hash`, a 127-bit DCT hash of a
  log-gray 64 x 32 thumbnail) differ in at most `threshold` bits are linked,
  and groups are the connected components (union-find).
* `stratified_split` (train/validation/test) and `stratified_kfold` (fold
  index) assign WHOLE groups, in a seeded random order, each greedily to the
  split that brings per-class (and per-stratum, e.g. defect type) counts
  closest to their targets; `imbalance` names what still misses. Without groups (or with
  singleton groups) every split holds each class exactly at its target up to
  rounding (largest remainder: |count - fraction * n_class| < 1).

Everything is deterministic in (inputs, seed) and independent of Python's
hash randomisation.

Threshold, as tuned on the real MSD screens (143 rectified 110 x 230 ROIs):
`NEAR_DUP_THRESHOLD = 22` of 127 bits. The runs `Scr_0003`..`Scr_0023` (minus
the white phone `Scr_0013`, plus `Scr_0025`) and `Sta_0007`..`Sta_0034` each
become one group from 20 bits on (18 with an earlier `roi` version; the last
to join is `Sta_0021`); up to 28 no black phone joins a white one and the two
runs stay apart, but from 24 on the white-phone groups chain into larger ones
(18 frames at 24, 35 at 26). 22 leaves a step of margin both ways: 62 groups,
e.g. {Sta_0007..Sta_0034} (28), {Scr_0003..Scr_0025 but 13, 24} (21),
{Good_0009, Good_0017, Sta_0001..Sta_0005} (the same notched black phone,
clean and stained). Magnetic tiles are far more alike and use 4 (see
`magnetic_tile`).
"""
from __future__ import annotations

import hashlib
from typing import Hashable, Sequence

import cv2
import numpy as np

SPLIT_NAMES = ('train', 'validation', 'test')
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
NEAR_DUP_THRESHOLD = 22  # Bits of 127; tuned on the real MSD ROIs (module doc).
HASH_SIZE = (64, 32)  # (width, height) of the thumbnail the DCT is taken of.
HASH_FREQS = (8, 16)  # (vertical, horizontal) low frequencies kept.
HASH_BITS = HASH_FREQS[0] * HASH_FREQS[1] - 1  # 127: the DC term is dropped.


def content_hash(data: bytes) -> str:
  """sha256 hex digest of a file's bytes (exact-duplicate detection)."""
  return hashlib.sha256(bytes(data)).hexdigest()


# --------------------------------------------------------------------------
# Perceptual hash and near-duplicate groups.


def _gray(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  if image.ndim == 3 and image.shape[2] in (3, 4):
    # RGB weights; for BGR input the hash barely changes (a gray tone).
    image = cv2.cvtColor(np.ascontiguousarray(image[..., :3]).astype(np.float32),
                         cv2.COLOR_RGB2GRAY)
  if image.ndim != 2 or image.shape[0] < 2 or image.shape[1] < 2:
    raise ValueError(f'expected an (H, W), (H, W, 1) or (H, W, 3) image, got shape '
                     f'{image.shape}')
  return image.astype(np.float32)


def perceptual_hash(image: np.ndarray) -> np.ndarray:
  """127-bit DCT hash: (127,) bool.

  Gray (RGB weights), log(1 + v) (dark phone screens sit at 10-30 gray
  levels: the log spreads them), area-resize to 64 x 32 (width x height, the
  ROI's 2:1 shape), 2-D DCT, keep the 8 x 16 lowest frequencies without the
  DC term, and set each bit where the coefficient exceeds their median. Robust
  to brightness and contrast changes, JPEG and small shifts.
  """
  g = np.log1p(_gray(image))
  small = cv2.resize(g, HASH_SIZE, interpolation=cv2.INTER_AREA)
  coef = cv2.dct(small)[:HASH_FREQS[0], :HASH_FREQS[1]].ravel()[1:]
  return coef > np.median(coef)


_POPCOUNT = np.array([bin(i).count('1') for i in range(256)], np.uint8)


def hamming_matrix(hashes: Sequence[np.ndarray]) -> np.ndarray:
  """(n, n) int32 Hamming distances between (n, bits) boolean hashes."""
  h = np.asarray(hashes, bool)
  if h.ndim != 2:
    raise ValueError(f'expected (n, bits) hashes, got shape {h.shape}')
  packed = np.packbits(h, axis=1)
  n = len(packed)
  out = np.zeros((n, n), np.int32)
  for start in range(0, n, 512):  # Row blocks keep the temporary small.
    x = packed[start:start + 512, None, :] ^ packed[None, :, :]
    out[start:start + 512] = _POPCOUNT[x].sum(-1, dtype=np.int32)
  return out


def union_find_groups(n: int, pairs) -> list[int]:
  """Connected components of n items linked by (i, j) pairs.

  Group ids are 0, 1, ... numbered in order of each group's first member.
  """
  parent = list(range(n))

  def find(x):
    while parent[x] != x:
      parent[x] = parent[parent[x]]
      x = parent[x]
    return x

  for i, j in pairs:
    ri, rj = find(int(i)), find(int(j))
    if ri != rj:
      parent[max(ri, rj)] = min(ri, rj)
  ids: dict[int, int] = {}
  return [ids.setdefault(find(i), len(ids)) for i in range(n)]


def near_duplicate_pairs(hashes: Sequence[np.ndarray], threshold: int) -> np.ndarray:
  """(m, 2) index pairs i < j whose hashes differ in <= threshold bits."""
  if threshold < 0 or len(hashes) < 2:
    return np.zeros((0, 2), np.int64)
  d = hamming_matrix(hashes)
  return np.argwhere(np.triu(d <= threshold, 1))


def near_duplicate_groups(images: Sequence[np.ndarray], *,
                          threshold: int = NEAR_DUP_THRESHOLD,
                          extra_pairs=()) -> list[int]:
  """Group id per image: near-duplicates (<= threshold bits apart) share one.

  Linking is transitive (union-find), so a run of slowly changing shots forms
  one group even where its ends differ more. `threshold < 0` turns grouping
  off (every image its own group). `extra_pairs` are more (i, j) links known
  otherwise (e.g. from file names). Ids are numbered in order of first member.
  """
  hashes = [perceptual_hash(im) for im in images]
  pairs = list(map(tuple, near_duplicate_pairs(hashes, threshold))) + list(extra_pairs)
  return union_find_groups(len(hashes), pairs)


# --------------------------------------------------------------------------
# Grouped stratified assignment.


def _largest_remainder(total: int, fractions: np.ndarray) -> np.ndarray:
  want = fractions * total
  counts = np.floor(want + 1e-9).astype(np.int64)
  rest = int(total - counts.sum())
  # Largest remainder first; ties go to the earlier bin.
  order = sorted(range(len(counts)), key=lambda j: (-(want[j] - counts[j]), j))
  for j in order[:rest]:
    counts[j] += 1
  return counts


def _class_index(labels: Sequence[Hashable]) -> tuple[np.ndarray, int]:
  labels = list(labels)
  try:
    classes = sorted(set(labels))
  except TypeError:  # Mixed types: order by repr, still deterministic.
    classes = sorted(set(labels), key=repr)
  index = {c: k for k, c in enumerate(classes)}
  return np.array([index[l] for l in labels], np.int64), len(classes)


def _group_index(n: int, groups) -> np.ndarray:
  if groups is None:
    return np.arange(n, dtype=np.int64)
  groups = list(groups)
  if len(groups) != n:
    raise ValueError(f'groups has {len(groups)} entries for {n} labels')
  ids: dict = {}
  return np.array([ids.setdefault(g, len(ids)) for g in groups], np.int64)


def _bin_targets(cls: np.ndarray, num_classes: int, fractions: np.ndarray) -> np.ndarray:
  """(bins, classes) target counts: fraction_b * n_class, largest remainder."""
  per_class = np.bincount(cls, minlength=num_classes)
  if not num_classes:
    return np.zeros((len(fractions), 0), np.int64)
  return np.stack([_largest_remainder(int(m), fractions) for m in per_class], 1)


def assign_bins(labels: Sequence[Hashable], fractions: Sequence[float], *, seed: int,
                groups: Sequence[Hashable] | None = None, salt: int = 0,
                strata: Sequence[Hashable] | None = None) -> np.ndarray:
  """Bin index per item: whole groups to bins, per-class counts near targets.

  Targets: per class, fraction_b * n_class rounded by largest remainder.
  Groups are visited in a seeded random order (NOT largest first: that sent
  every complete capture run to the first bin and left the fragments of
  broken runs, which differ in shape, to fill the others) and each goes to
  the bin where it lowers the squared shortfall most, summed over classes
  with weight 1 / n_class (the rare class counts as much as the common one);
  `strata` (e.g. defect types) are balanced the same way at a fifth of
  their class's weight. Ties go to the bin furthest below its targets, then the earlier
  bin. Then groups move or swap between bins while that lowers the cost
  (`_improve`). With singleton groups every class hits its targets exactly.
  """
  fractions = np.asarray(fractions, np.float64)
  if fractions.ndim != 1 or len(fractions) < 1 or np.any(fractions < 0) or \
      not np.isclose(fractions.sum(), 1.0):
    raise ValueError(f'fractions must be non-negative and sum to 1, got {fractions}')
  cls, num_classes = _class_index(labels)
  n = len(cls)
  grp = _group_index(n, groups)
  num_groups = int(grp.max()) + 1 if n else 0
  sub, num_sub = _class_index(strata) if strata is not None else (np.zeros(n, np.int64), 0)
  if strata is not None and len(sub) != n:
    raise ValueError(f'strata has {len(sub)} entries for {n} labels')
  # Columns: classes, then strata; each with its target and weight.
  targets = np.concatenate([_bin_targets(cls, num_classes, fractions),
                            _bin_targets(sub, num_sub, fractions)], 1)
  counts = np.concatenate([np.bincount(cls, minlength=num_classes),
                           np.bincount(sub, minlength=num_sub)[:num_sub]]).astype(np.float64)
  # A stratum's term weighs a fifth of its class's: classes first, then types.
  class_of_sub = np.zeros(num_sub, np.int64)
  if num_sub:
    class_of_sub[sub] = cls
  weight = np.concatenate([1.0 / np.maximum(counts[:num_classes], 1),
                           0.2 / np.maximum(counts[:num_classes][class_of_sub], 1)])
  gcount = np.zeros((num_groups, num_classes + num_sub), np.int64)
  np.add.at(gcount, (grp, cls), 1)
  if num_sub:
    np.add.at(gcount, (grp, num_classes + sub), 1)
  rng = np.random.default_rng([int(seed), 0x5B17, int(salt)])
  live = fractions > 0
  # A few random orders (fewer for many groups), the best kept: with groups
  # of several items one order can end where no single move or swap helps.
  best = None
  for _ in range(max(1, min(8, 2000 // max(num_groups, 1)))):
    bins, assigned = _greedy(rng.permutation(num_groups), gcount, targets, weight, live)
    _improve(bins, assigned, gcount, targets, weight, live, rng)
    cost = float(((assigned - targets) ** 2 * weight).sum())
    if best is None or cost < best[0] - 1e-12:
      best = (cost, bins)
  bin_of_group = best[1]
  return bin_of_group[grp]


def _greedy(order, gcount, targets, weight, live):
  """Each group in `order` to the bin where it lowers the cost most."""
  assigned = np.zeros_like(targets)
  bin_of_group = np.zeros(len(gcount), np.int64)
  for g in order:
    before = ((assigned - targets) ** 2 * weight).sum(1)
    after = ((assigned + gcount[g] - targets) ** 2 * weight).sum(1)
    gain = after - before  # Lower is better.
    shortfall = ((targets - assigned) * weight).sum(1)
    keys = [(not live[b], round(float(gain[b]), 12), -float(shortfall[b]), b)
            for b in range(len(live))]
    b = min(keys)[3]
    bin_of_group[g] = b
    assigned[b] += gcount[g]
  return bin_of_group, assigned


def _improve(bin_of_group, assigned, gcount, targets, weight, live, rng,
             max_passes: int = 20, swap_candidates: int = 64) -> None:
  """Moves a group to another bin, or swaps two groups of different bins,
  while that lowers the weighted squared shortfall (in place). A group
  placed late in the random order can leave a bin far off (one 28-frame run
  among 143 frames did); moves fix that without reordering by size, which
  would bring back the size bias. Swaps are tried with a seeded sample of
  `swap_candidates` groups, so a pass stays linear in the number of groups."""
  row_cost = lambda row, b: float(((row - targets[b]) ** 2 * weight[None]).sum())
  num_bins, num_groups = len(assigned), len(bin_of_group)
  for _ in range(max_passes):
    moved = False
    for g in rng.permutation(num_groups):
      a = int(bin_of_group[g])
      base_a = row_cost(assigned[a], a)
      best, choice = -1e-12, None
      for b in range(num_bins):  # Single moves.
        if b != a and live[b]:
          d = (row_cost(assigned[a] - gcount[g], a) + row_cost(assigned[b] + gcount[g], b)
               - base_a - row_cost(assigned[b], b))
          if d < best:
            best, choice = d, (b, None)
      for h in rng.choice(num_groups, min(swap_candidates, num_groups), replace=False):
        b = int(bin_of_group[h])
        if b == a:
          continue
        diff = gcount[g] - gcount[h]
        d = (row_cost(assigned[a] - diff, a) + row_cost(assigned[b] + diff, b)
             - base_a - row_cost(assigned[b], b))
        if d < best:
          best, choice = d, (b, h)
      if choice is None:
        continue
      b, h = choice
      if h is None:
        assigned[a] -= gcount[g]
        assigned[b] += gcount[g]
      else:
        assigned[a] += gcount[h] - gcount[g]
        assigned[b] += gcount[g] - gcount[h]
        bin_of_group[h] = a
      bin_of_group[g] = b
      moved = True
    if not moved:
      return


def imbalance(labels: Sequence[Hashable], bins: Sequence[int],
              fractions: Sequence[float], bin_names: Sequence[str] | None = None
              ) -> list[str]:
  """Lines naming each (bin, class) whose count misses its target by more
  than max(2, 10%); [] when every bin is balanced."""
  cls, num_classes = _class_index(labels)
  names = {k: l for l, k in zip(labels, cls)}
  fractions = np.asarray(fractions, np.float64)
  targets = _bin_targets(cls, num_classes, fractions)
  got = np.zeros_like(targets)
  np.add.at(got, (np.asarray(bins, np.int64), cls), 1)
  out = []
  for b, c in zip(*np.nonzero(np.abs(got - targets) > np.maximum(2, 0.1 * targets))):
    name = bin_names[b] if bin_names else f'bin {b}'
    out.append(f'{name}: {got[b, c]} of class {names[c]!r}, target {targets[b, c]}')
  return out


def stratified_split(labels: Sequence[Hashable],
                     fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     seed: int = 0,
                     groups: Sequence[Hashable] | None = None,
                     strata: Sequence[Hashable] | None = None) -> list[str]:
  """'train' / 'validation' / 'test' per item, stratified by label.

  Deterministic in (labels, fractions, seed, groups). With `groups`, all
  items of a group land in the same split (see `assign_bins`).
  """
  if len(fractions) != len(SPLIT_NAMES):
    raise ValueError(f'fractions must have {len(SPLIT_NAMES)} entries (train, '
                     f'validation, test), got {fractions}')
  bins = assign_bins(labels, fractions, seed=seed, groups=groups, salt=1, strata=strata)
  return [SPLIT_NAMES[int(b)] for b in bins]


def stratified_kfold(labels: Sequence[Hashable], k: int, seed: int = 0,
                     groups: Sequence[Hashable] | None = None,
                     strata: Sequence[Hashable] | None = None) -> list[int]:
  """Fold index 0 .. k-1 per item, stratified by label, groups kept whole."""
  if int(k) < 2:
    raise ValueError(f'k must be >= 2, got {k}')
  bins = assign_bins(labels, [1.0 / k] * int(k), seed=seed, groups=groups, salt=2,
                     strata=strata)
  return [int(b) for b in bins]


def kfold_split_names(k: int) -> list[str]:
  """TFDS split names of the folds: fold_0 ... fold_{k-1}."""
  return [f'fold_{i}' for i in range(int(k))]


def kfold_splits(k: int, fold: int) -> dict[str, str]:
  """TFDS split strings for fold `fold` of k: test = fold_i, validation =
  fold_{(i+1) % k}, train = the other k - 2 folds joined with '+'."""
  k, fold = int(k), int(fold)
  if k < 3:
    raise ValueError(f'k-fold with separate validation and test needs k >= 3, got {k}')
  if not 0 <= fold < k:
    raise ValueError(f'fold must be in [0, {k}), got {fold}')
  names = kfold_split_names(k)
  val = (fold + 1) % k
  train = '+'.join(n for i, n in enumerate(names) if i not in (fold, val))
  return {'train': train, 'validation': names[val], 'test': names[fold]}
