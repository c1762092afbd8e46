"""The one pair sampler: which two training images each pair holds, and how
each image is augmented. Pure numpy; both data sources (tf.data in
input_pipeline.py, a dataset export in numpy_pipeline.py) only hand it the
training images, so they give bit-identical batches on the same build.

Pair rule. Two independent image streams A and B are drawn; each picks a
defective image with probability `config.data.defective_fraction` (default
0.5, in (0, 1)) and otherwise a good one, each class cycling through its own
seeded shuffle (every image of a class once before any twice, reshuffled each
pass). Pair i is (A_i, B_i); `same` is 1.0 when their labels agree. With 0.5,
every class makes half of the images the tower sees and same/different pairs
come 1:1 (GG, GD, DG, DD each 1/4), so the rare defective class is never
drowned. Drawing pairs uniformly from 168/1032 images would instead give ~76%
same-class pairs, nearly all good-good.

Augmentation (`augment_flips`, `augment_jitter` = a), of normalised images:
horizontal and vertical flips with probability 1/2 each, contrast scaled by a
factor in [1 - a, 1 + a) about each channel's mean, brightness shifted by
[-a, a). Drawn per step whatever the config, so turning augmentation on keeps
the pairs.

Seeds and resuming. Stream seeds come from config.seed * 1000 + 100 *
process; every draw is a function of (seed, step), so a sampler started at
step s yields what a run from 0 yields at step s, and skipping costs no image
work (only the class draws, vectorised).

Sharding: process i of n samples from every n-th training image (in the
split's order) and yields batch_size // n pairs: its part of the global batch.

An epoch is `len(train split) // (2 * batch_size)` steps: as many images as
the split holds.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator

import numpy as np

from smsdd_jax.data_splits import DEFECTIVE, GOOD

_SKIP_CHUNK = 1 << 20  # Class draws per vectorised pass when skipping.


def steps_per_epoch(num_train_examples: int, batch_size: int) -> int:
  return max(1, num_train_examples // (2 * batch_size))


def check_fraction(data_config) -> float:
  """config.data.defective_fraction, checked to lie in (0, 1)."""
  f = float(data_config.defective_fraction)
  if not 0.0 < f < 1.0:
    raise ValueError(f'config.data.defective_fraction={data_config.defective_fraction}:'
                     ' must be in (0, 1)')
  return f


class ClassStream:
  """Endless positions into `labels`: a defective one with probability
  `fraction`, each class cycling through its own shuffle (a new one every
  pass). Draw t depends on (seed, t) only: `skip` jumps without images."""

  def __init__(self, labels: np.ndarray, fraction: float, seed: tuple[int, ...]):
    self._seed, self._fraction = tuple(seed), fraction
    self._members = [np.flatnonzero(labels == c) for c in (GOOD, DEFECTIVE)]
    for c, members in enumerate(self._members):
      if not len(members):
        raise ValueError(f'no {("good", "defective")[c]} image to sample pairs from '
                         'in this process\'s share of the training split')
    self._classes = np.random.default_rng([*self._seed, 0])
    self._drawn = [0, 0]  # Images drawn so far, per class.
    self._order = [(-1, None), (-1, None)]  # (pass, its permutation), per class.

  def _next_classes(self, n: int) -> np.ndarray:
    return (self._classes.random(n) < self._fraction).astype(np.int64)

  def _shuffle(self, c: int, p: int) -> np.ndarray:
    if self._order[c][0] != p:
      rng = np.random.default_rng([*self._seed, 1 + c, p])
      self._order[c] = (p, rng.permutation(self._members[c]))
    return self._order[c][1]

  def skip(self, n: int) -> None:
    """Moves past the next n draws."""
    while n > 0:
      k = min(n, _SKIP_CHUNK)
      counts = np.bincount(self._next_classes(k), minlength=2)
      self._drawn = [d + int(m) for d, m in zip(self._drawn, counts)]
      n -= k

  def take(self, n: int) -> np.ndarray:
    """The next n positions (into the labels given)."""
    classes = self._next_classes(n)
    out = np.empty(n, np.int64)
    for c in (GOOD, DEFECTIVE):
      where = np.flatnonzero(classes == c)
      draws = self._drawn[c] + np.arange(len(where))
      size = len(self._members[c])
      for p in np.unique(draws // size):
        at = draws // size == p
        out[where[at]] = self._shuffle(c, int(p))[draws[at] % size]
      self._drawn[c] += len(where)
    return out


@dataclasses.dataclass(frozen=True)
class Pairs:
  """One step's pairs, decided: positions (into the sampler's labels) of the
  A and B images, and each image's augmentation, A's images then B's."""
  step: int
  a: np.ndarray
  b: np.ndarray
  flip_lr: np.ndarray  # (2n,) bool
  flip_ud: np.ndarray  # (2n,) bool
  contrast: np.ndarray  # (2n,) float32 factor about each channel's mean
  brightness: np.ndarray  # (2n,) float32 shift
  jitter: bool  # Whether contrast and brightness apply (augment_jitter > 0).


class PairSampler:
  """Decides every pair of a run (module doc) from the labels of this
  process's share of the training split, config.seed and config.data."""

  def __init__(self, labels: np.ndarray, config, shard: tuple[int, int] = (0, 1)):
    data_config = config.data
    index, count = shard
    self.labels = np.asarray(labels)
    self.fraction = check_fraction(data_config)
    self.batch_size = config.batch_size // count
    self.seed = int(config.seed) * 1000 + 100 * index
    self.flips = bool(data_config.augment_flips)
    self.jitter = float(data_config.augment_jitter)
    self._streams()  # A class missing from this share: refused now.

  def _streams(self) -> tuple[ClassStream, ClassStream]:
    return tuple(ClassStream(self.labels, self.fraction, (self.seed, side)) for side in (0, 1))

  def _augmentation(self, step: int) -> dict:
    n, a = 2 * self.batch_size, self.jitter
    rng = np.random.default_rng([self.seed, 2, step])
    flips = (rng.random((n, 2)) < 0.5) & self.flips
    return {'flip_lr': flips[:, 0], 'flip_ud': flips[:, 1],
            'contrast': rng.uniform(1.0 - a, 1.0 + a, n).astype(np.float32),
            'brightness': rng.uniform(-a, a, n).astype(np.float32), 'jitter': a > 0}

  def steps(self, start_step: int = 0) -> Iterator[Pairs]:
    """Pairs of step start_step, start_step + 1, ... (endless)."""
    streams = self._streams()
    for s in streams:
      s.skip(start_step * self.batch_size)
    step = start_step
    while True:
      a, b = (s.take(self.batch_size) for s in streams)
      yield Pairs(step, a, b, **self._augmentation(step))
      step += 1


def augment(images: np.ndarray, means: np.ndarray, pairs: Pairs) -> np.ndarray:
  """The decided augmentation on a batch of normalised images (A's then
  B's), in place. means: each image's per-channel mean, (n, 1, 1, 3) (a flip
  keeps it)."""
  images[pairs.flip_lr] = images[pairs.flip_lr, :, ::-1]
  images[pairs.flip_ud] = images[pairs.flip_ud, ::-1]
  if pairs.jitter:
    # (x - mean) * c + mean + b, as x * c + (mean * (1 - c) + b): two passes.
    c = pairs.contrast[:, None, None, None]
    images *= c
    images += means * (1.0 - c) + pairs.brightness[:, None, None, None]
  return images


def channel_means(normalized: np.ndarray) -> np.ndarray:
  """Each normalised image's per-channel mean, (n, 1, 1, 3): what the
  contrast change scales about."""
  return normalized.mean(axis=(1, 2), keepdims=True)


def _batches(sampler: PairSampler, images: np.ndarray, means: np.ndarray,
             rows: np.ndarray, start_step: int) -> Iterator[dict]:
  size = sampler.batch_size
  for pairs in sampler.steps(start_step):
    both = rows[np.concatenate([pairs.a, pairs.b])]
    batch = augment(images[both], means[both], pairs)
    label_a = sampler.labels[pairs.a].astype(np.int32)
    label_b = sampler.labels[pairs.b].astype(np.int32)
    yield {'image_a': batch[:size], 'image_b': batch[size:], 'label_a': label_a,
           'label_b': label_b, 'same': (label_a == label_b).astype(np.float32)}


def train_batches(images: np.ndarray, means: np.ndarray, rows: np.ndarray, labels: np.ndarray,
                  config, *, start_step: int = 0,
                  shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
  """Endless numpy batches of pairs (image_a, image_b, label_a, label_b,
  same) from a source's normalised images: rows[i] is the row of `images`
  (and `means`) holding the share's i-th training image, labels[i] its
  label. Made one step ahead in a background thread."""
  sampler = PairSampler(labels, config, shard)
  return prefetch(_batches(sampler, images, means, np.asarray(rows), start_step))


_DONE = object()


def prefetch(batches: Iterator[dict], depth: int = 2) -> Iterator[dict]:
  """`batches`, made up to `depth` ahead in a daemon thread. Closing (or
  dropping) the returned generator stops the thread."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def produce():
    try:
      for item in batches:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)
      return
    q.put(_DONE)

  def consume():
    # Started on the first next(): a generator never read leaves no thread.
    threading.Thread(target=produce, daemon=True, name='pairs').start()
    try:
      while True:
        item = q.get()
        if item is _DONE:
          return
        if isinstance(item, BaseException):
          raise item
        yield item
    finally:
      stop.set()

  return consume()
