"""Metrics to a JSON-lines file anyone can read, and to TensorBoard.

`metrics.jsonl` gets one object per write: {"step": N, "train/loss": ...}.
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

# tf.summary.scalar lives in the `tensorboard` package, which tensorflow-cpu
# does not install. The low-level tf.summary.write with the scalars plugin's
# metadata writes the identical event, so TensorBoard reads it as a scalar.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


class MetricWriter:
  """Appends scalars to `workdir/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    """enabled=False (processes other than 0 of a multi-process run) writes nothing."""
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    self._tb = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    # JSON has no NaN/inf: write them as null so every line stays parseable.
    record = {'step': int(step),
              **{k: (v if math.isfinite(v) else None) for k, v in scalars.items()}}
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    with self._tb.as_default(step=int(step)):
      for k, v in scalars.items():
        tf.summary.write(k, tf.constant(v, tf.float32), metadata=_SCALAR_METADATA)
    self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All records of a run's metrics.jsonl, in order."""
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def read_tensorboard_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """Scalars from a run's TensorBoard event files: {tag: [(step, value)]}."""
  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(workdir, 'tensorboard', 'events.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return out
