"""Metrics to a JSON-lines file anyone can read, and to TensorBoard.

`metrics.jsonl` gets one object per write: {"step": N, "train/loss": ...}.
Integers (confusion counts) stay integers; a NaN or infinite value is written
as null, and the record's "undefined" object says why:
{"step": 96, "test/precision": null, "undefined": {"test/precision": "no image
predicted defective"}}. Steps never run backwards: a resumed run first drops
what was written after the step it restored (`MetricWriter(resume_step=...)`).

The TensorBoard events are written without TensorFlow (`EventFile`), so a
run trains where TensorFlow is not installed; TensorBoard (and TensorFlow's
reader, `read_tensorboard_scalars`) read them as the scalars tf.summary
writes.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import socket
import struct
import time
from typing import Mapping, Optional

import numpy as np

from smsdd_jax import rundir


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
    self._tb = EventFile(os.path.join(workdir, rundir.TENSORBOARD))

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
    for k, v in scalars.items():
      self._tb.scalar(k, float(v), int(step))
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
  """Scalars from a run's TensorBoard event files: {tag: [(step, value)]},
  read by TensorFlow (an independent reader of what EventFile writes)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(tf.io.gfile.glob(os.path.join(workdir, rundir.TENSORBOARD, 'events.*'))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        out.setdefault(value.tag, []).append(
            (event.step, float(tf.make_ndarray(value.tensor))))
  return out


# ------------------------------------------------------------------ event files
#
# An event file is a sequence of TFRecord frames (length, its masked CRC-32C,
# data, its masked CRC-32C), each holding one serialized `Event` protocol
# buffer. A scalar is an Event {wall_time, step, summary {value {tag, tensor
# (float32, shape []), metadata {plugin 'scalars', DATA_CLASS_SCALAR}}}}: the
# event tf.summary.write makes with the scalars plugin's metadata. The few
# protobuf fields involved are encoded by hand below (field numbers from
# tensorflow/core/util/event.proto, framework/summary.proto, tensor.proto).


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum of TFRecord frames."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (a string or a nested message)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _scalar_value(tag: str, value: float) -> bytes:
  """A Summary.Value holding `value` as TensorBoard's scalars plugin wants it."""
  tensor = (_varint(1 << 3) + _varint(1)  # dtype: DT_FLOAT
            + _field(2, b'')  # tensor_shape: [] (a scalar)
            + _field(5, struct.pack('<f', value)))  # float_val, packed
  metadata = (_field(1, _field(1, b'scalars'))  # plugin_data.plugin_name
              + _varint(4 << 3) + _varint(1))  # data_class: DATA_CLASS_SCALAR
  return _field(1, tag.encode()) + _field(8, tensor) + _field(9, metadata)


def _event(wall_time: float, step: int, *, summary: bytes = b'',
           file_version: str = '') -> bytes:
  out = _varint(1 << 3 | 1) + struct.pack('<d', wall_time)  # wall_time (double)
  out += _varint(2 << 3) + _varint(step)  # step (int64, >= 0)
  if file_version:
    out += _field(3, file_version.encode())
  if summary:
    out += _field(5, summary)
  return out


_file_ids = itertools.count()


class EventFile:
  """Appends scalar events to a new TensorBoard event file in `logdir`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.'
            f'{os.getpid()}.{next(_file_ids)}.v2')
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, 'ab')
    self._record(_event(time.time(), 0, file_version='brain.Event:2'))

  def _record(self, data: bytes) -> None:
    length = struct.pack('<Q', len(data))
    self._file.write(length + struct.pack('<I', _masked_crc(length)) + data +
                     struct.pack('<I', _masked_crc(data)))

  def scalar(self, tag: str, value: float, step: int) -> None:
    self._record(_event(time.time(), step, summary=_field(1, _scalar_value(tag, value))))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()
