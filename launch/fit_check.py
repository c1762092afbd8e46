"""A short real training of the model on generated pairs, without TensorFlow.

  python launch/fit_check.py [--steps=150] [--pairs=16] [--width_mult=1.0]
      [--dtype=bfloat16] [--recipe=learn|paper] [--conv_impl=auto] [--out=fit.json]

Why: the benchmark times the train step on random data, which says nothing
about whether the step *learns* on that machine (bfloat16 compute, a
different convolution path, a GPU). This trains the real step
(smsdd_jax/step.py: model, loss, optimiser, schedule of the chosen recipe)
on a task with a known answer, then scores held-out images:

  each image is noise with a faint vertical gradient; a "defective" one has a
  small bright blob at a random place (a spot defect on a screen ROI).

A model that learns reaches a held-out accuracy near 1; one whose step is
broken stays near 0.5. It needs only jax, flax, optax and ml-collections, so
it runs on GPU machines without TensorFlow (launch/gpu_check.sh calls it).
The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_images(n: int, image_size, rng: np.random.Generator):
  """(n, H, W, 3) float32 normalised images and their 0/1 labels (half each)."""
  h, w = image_size
  labels = rng.permutation(np.arange(n) % 2).astype(np.int32)
  base = np.linspace(-0.5, 0.5, h, dtype=np.float32)[None, :, None, None]
  images = base + 0.5 * rng.standard_normal((n, h, w, 3)).astype(np.float32)
  yy, xx = np.mgrid[0:h, 0:w]
  for i in np.flatnonzero(labels):
    cy, cx = rng.integers(12, h - 12), rng.integers(12, w - 12)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 6.0 ** 2)).astype(np.float32)
    images[i] += 2.5 * blob[:, :, None]
  return images, labels


def pair_batch(images, labels, pairs: int, rng: np.random.Generator) -> dict:
  a, b = rng.integers(0, len(labels), (2, pairs))
  return {'image_a': images[a], 'image_b': images[b], 'label_a': labels[a],
          'label_b': labels[b], 'same': (labels[a] == labels[b]).astype(np.float32)}


def build_config(args):
  from configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config('learn' if args.recipe == 'learn' else None)
  config.model.width_mult = args.width_mult
  if args.recipe == 'learn':  # The rate ':learn' gives this width.
    config.optimizer.learning_rate = default.learn_rate(args.width_mult)
  config.model.dtype = args.dtype
  config.model.conv_impl = args.conv_impl
  config.batch_size = args.pairs
  return config


def run(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from smsdd_jax import models, step as step_lib  # pylint: disable=import-outside-toplevel
  config = build_config(args)
  rng = np.random.default_rng(args.seed)
  train_x, train_y = make_images(args.train_images, config.data.image_size, rng)
  test_x, test_y = make_images(args.test_images, config.data.image_size, rng)
  model = models.create(config.model)
  tx = step_lib.make_optimizer(config.optimizer, args.steps)
  state = step_lib.create_train_state(config, model, tx)
  train_step = step_lib.make_train_step(model, tx, config.loss)
  losses, t0 = [], time.perf_counter()
  for _ in range(args.steps):
    state, metrics = train_step(state, pair_batch(train_x, train_y, args.pairs, rng))
    losses.append(float(metrics['loss']))
  seconds = time.perf_counter() - t0
  eval_fn = jax.jit(lambda p, s, x: step_lib.eval_step(
      p, s, {'image': x, 'label': jax.numpy.zeros(x.shape[0], 'int32')},
      model=model)['prob_defective'])
  probs = np.concatenate([np.asarray(eval_fn(state.params, state.model_state, test_x[i:i + 32]))
                          for i in range(0, len(test_x), 32)])
  k = max(1, args.steps // 10)
  return {'steps': args.steps, 'pairs': args.pairs, 'width_mult': args.width_mult,
          'dtype': args.dtype, 'recipe': args.recipe,
          'conv_impl': models.resolve_conv_impl(config.model.conv_impl),
          'device': jax.devices()[0].device_kind, 'seconds': round(seconds, 2),
          'loss_first': round(float(np.mean(losses[:k])), 4),
          'loss_last': round(float(np.mean(losses[-k:])), 4),
          'finite': bool(np.all(np.isfinite(losses))),
          'test_accuracy': round(float(np.mean((probs >= 0.5) == test_y)), 4)}


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--steps', type=int, default=150)
  p.add_argument('--pairs', type=int, default=16)
  p.add_argument('--width_mult', type=float, default=1.0)
  p.add_argument('--dtype', default='float32', help='compute dtype: float32 | bfloat16')
  p.add_argument('--recipe', default='learn', choices=('learn', 'paper'))
  p.add_argument('--conv_impl', default='auto')
  p.add_argument('--train_images', type=int, default=256)
  p.add_argument('--test_images', type=int, default=128)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out', default='', help='also write the JSON here')
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  report = run(args)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      json.dump(report, f, indent=1)
  print(json.dumps(report))
  return 0


if __name__ == '__main__':
  sys.exit(main())
