"""Metrics to a JSON-lines file anyone can read, and to TensorBoard.

`metrics.jsonl` gets one object per write: {"step": N, "train/loss": ...}.
Integers (confusion counts) stay integers; a NaN or infinite value is written
as null, and the record's "undefined" object says why:
{"step": 96, "test/precision": null, "undefined": {"test/precision": "no image
predicted defective"}}. Steps never run backwards: a resumed run first drops
what was written after the step it restored (`MetricWriter(resume_step=...)`).
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from smsdd_jax import rundir

# tf.summary.scalar lives in the `tensorboard` package, which tensorflow-cpu
# does not install. The low-level tf.summary.write with the scalars plugin's
# metadata writes the identical event, so TensorBoard reads it as a scalar.
_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'),
    data_class=summary_pb2.DATA_CLASS_SCALAR)


class MetricWriter:
  """Appends scalars to `workdir/metrics.jsonl` and TensorBoard event files."""

  def __init__(self, workdir: str, *, enabled: bool = True,
               resume_step: Optional[int] = None):
    """enabled=False (processes other than 0 of a multi-process run) writes
    nothing. resume_step: the step the run restarts from; records the killed
    run wrote after it are dropped first (drop_records_after)."""
    self.enabled = enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      drop_records_after(workdir, resume_step)
    self._jsonl = open(os.path.join(workdir, rundir.METRICS), 'a', encoding='utf-8')
    self._tb = tf.summary.create_file_writer(os.path.join(workdir, rundir.TENSORBOARD))

  def write(self, step: int, scalars: Mapping[str, float],
            undefined: Optional[Mapping[str, str]] = None) -> None:
    """One record. `undefined`: {key: why} for values that are NaN by
    definition (metrics.undefined_reasons); a non-finite value without a
    reason gets a generic one."""
    if not self.enabled:
      return
    record = {'step': int(step), **{k: _json_scalar(v) for k, v in scalars.items()}}
    why = {k: str(undefined[k]) if undefined and k in undefined
           else f'not a finite number ({float(v)})'
           for k, v in scalars.items() if record[k] is None}
    if why:
      record['undefined'] = why
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    with self._tb.as_default(step=int(step)):
      for k, v in scalars.items():
        tf.summary.write(k, tf.constant(float(v), tf.float32), metadata=_SCALAR_METADATA)
    self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    self._jsonl.close()
    self._tb.close()


def _json_scalar(v):
  """int stays int (a count), every other number a float, NaN/inf -> None."""
  if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
    return int(v)
  v = float(v)
  return v if math.isfinite(v) else None


def drop_records_after(workdir: str, step: int) -> int:
  """Rewrites metrics.jsonl without the records of steps > `step`, and
  without the final test record at `step` itself (a rerun writes it again),
  and without a line cut short by a kill. Atomic: a temporary file renamed
  over the old one, so a second kill leaves the old file or the new one.
  Returns the number of lines dropped."""
  path = os.path.join(workdir, rundir.METRICS)
  if not os.path.exists(path):
    return 0
  with open(path, encoding='utf-8') as f:
    lines = [line for line in f if line.strip()]
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue  # Half a line: the process died while writing it.
    if record.get('step', 0) > step or (
        record.get('step') == step and any(k.startswith('test/') for k in record)):
      continue
    keep.append(line if line.endswith('\n') else line + '\n')
  if len(keep) == len(lines):
    return 0
  rundir.write_text(path, ''.join(keep))
  return len(lines) - len(keep)


read_metrics = rundir.read_metrics  # The reader needs no TensorFlow: it lives there.


def read_tensorboard_scalars(workdir: str) -> dict[str, list[tuple[int, float]]]:
  """Scalars from a run's TensorBoard event files: {tag: [(step, value)]}."""
  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(workdir, rundir.TENSORBOARD, 'events.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return out
