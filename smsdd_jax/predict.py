"""Score raw camera frames (or ready ROIs) with a trained run; write a CSV.

  python -m smsdd_jax.predict --workdir=runs/beta_c --input=PATH --output=preds.csv
      [--roi=auto|hough|none] [--step=N] [--batch_size=16] [--max_pixels=40000000]
      [--save_rois=DIR] [--sheet=decisions.png] [--workers=2] [--tta=none|flips]
      [--embeddings=emb.npz] [--maps=DIR] [--map_method=fine|gradcam|...]
      [--map_scale=FILE] [--bank=FILE] [--precision=float32|bfloat16]
      [--workdir=runs/other ...]

PATH is an image file, a folder (searched recursively for .jpg/.jpeg/.png/
.bmp) or a quoted glob pattern ('frames/**/*.jpg'; every matching file). Each
file goes through the same preprocessing as the run's training data
(smsdd_jax.preprocess with the run's preprocessing.json: the screen found
and rectified for raw frames, the aspect and channel policies for crops),
then is scored by the run's best checkpoint (or --step=N). --roi=hough|none
overrides the ROI step only. --tta=flips averages the probability over the
image and its left-right and up-down flips (one batch). --precision=bfloat16
scores with the convolutions in bfloat16 where the run uses oneDNN (about
twice the frames per second on a CPU with AVX512-BF16; the probabilities
move slightly, docs/performance.md). Several --workdir
(repeated or comma-separated) score as an ensemble: the mean of the runs'
probabilities (each run's best checkpoint and own normalisation), decided at
the mean of their thresholds; runs whose preprocessing differs (image size,
channels, aspect, ROI step), runs trained on different data (dataset, or its
source fingerprint) and one run named twice (also through a symbolic link)
are refused. The model line shows each run's health (eval.json "health":
ok, suspect, collapsed, unknown); any but ok is also a warning on stderr.

CSV columns, one row per input file, in input order:
  file            the path as found
  prob_defective  softmax probability of 'defective' (6 decimals; empty on error)
  decision        'defective' if prob_defective >= threshold else 'good' (empty on error)
  threshold       from <workdir>/threshold.json, else 0.5 (the output says which)
  roi_method      'hough' or 'contour' (the detector that found the screen), 'none'
  corners         'x,y x,y x,y x,y' of the screen outline in frame pixels, order
                  tl tr br bl (empty with --roi=none or on error)
  error           why the file was not scored (empty on success)
  tta             'none' or 'flips'
  runs            the run(s) that scored it: '<workdir>@<step>', ';'-separated
  precision       the dtype the scores' convolutions ran in: 'float32', or
                  'bfloat16' where --precision=bfloat16 was available
  notes           what a reader of a scored row should know (empty if nothing):
                  an input enlarged more than 4x along a side (a 1x1 or 1x4000
                  image; preprocess.enlargement) is mostly interpolation
A non-finite probability (a checkpoint with NaN weights) is an error row,
never a decision.

The CSV is written to a temporary file beside --output (rows flushed each
batch) and moved over it at the end, so an existing --output is replaced only
by a complete one: a failure (a bad checkpoint, a full disk) leaves it as it
was, Ctrl-C leaves the rows so far in <output>.partial. An --output that is
not a regular file (/dev/stdout, a FIFO) is written directly.

Nothing is written over an input or over another output: before any work,
an output file (--output, --embeddings, --sheet) or a PNG --save_rois or
--maps would write that is one of the inputs, --save_rois/--maps naming the
--input folder, and two outputs naming one file (compared by real path) are
usage errors. --sheet must end in an image extension (.png).

A bad file never stops the run: unreadable, truncated (JPEG without its
end-of-image marker, PNG without IEND) or non-image files, frames larger than
--max_pixels (refused from the JPEG/PNG/BMP header, before decoding) and
frames without a detectable screen each become a row with `error` set. So
does every listed path that is not a regular file (a dangling symbolic link,
'broken symbolic link -> target'; a FIFO or socket, 'not a regular file'):
every input named is either scored or reported, and counted in the summary.

Exit status: 0 when every row was scored, 1 when any row has an error (a
summary line lists them), 2 for usage errors (bad flags, missing workdir or
checkpoints, an unreadable checkpoint, no input files, unwritable output or
a write to it failing): one line on stderr.

--embeddings=FILE writes, beside the CSV, an npz of the scored files (those
without error, in input order): `files` (N,) str, `embeddings` (N, d) float32
(the vector the contrastive loss compares, inference.Predictor.embed) and
`probabilities` (N,) float32 (the CSV's prob_defective, unrounded). One run
only (an ensemble's members embed into different spaces). Like the CSV it goes
to a temporary file moved over FILE once complete, after the model loaded (a
FILE that is not a regular file, a FIFO or a device, is written directly).

--sheet writes a PNG contact sheet of the decisions: defective first (most
confident first), then errors, then good (closest to the threshold first),
at most SHEET_MAX_TILES tiles.

--maps=DIR writes, for every scored file, where the network looked: the ROI
with the map of what raised its defect score overlaid (smsdd_jax/maps.py;
--map_method, default 'fine', the best by evidence against magnetic_tile's
masks, docs/results.md "Where is the defect"; 'gradcam', 'gradcampp',
'gradxinput', 'occlusion' (slow, gradient-free) and 'feature_distance' (the
run's memory bank, --bank) one flag away; an ensemble's is the members'
mean), and under it the probability, the decision, the method and the scale,
as a PNG under DIR mirroring the inputs' paths (as --save_rois). The colours
are on the run's scale (smsdd_jax/map_scale: --map_scale=FILE, else the
run's <workdir>/map_scale.json; red = as strong as a typical defect of its
validation split, so a crop the network saw nothing in stays blue); without
a calibration each map is stretched to its own maximum, which a warning on
stderr and every overlay ("PER-IMAGE scale") say. A calibration of another
run or checkpoint is a usage error. With --sheet, the sheet's tiles show the
overlay too.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import io
import os
import pathlib
import shutil
import sys
import time
from typing import Optional, Sequence

import cv2
import numpy as np

from smsdd_jax import preprocess  # Light too: OpenCV and numpy.
from smsdd_jax import rundir  # Light: no JAX, TensorFlow or Orbax.

# New columns go at the end: readers by position keep working.
CSV_COLUMNS = ('file', 'prob_defective', 'decision', 'threshold', 'roi_method',
               'corners', 'error', 'tta', 'runs', 'precision', 'notes')
# smsdd_jax.maps.METHODS, the default (maps.DEFAULT_METHOD) first; named here so
# that the flags parse without importing JAX (tests/test_predict checks they agree).
MAP_METHODS = ('fine', 'fine_fast', 'gradcam', 'gradcampp', 'gradxinput', 'occlusion',
               'feature_distance')
SHEET_MAX_TILES = 600
SHEET_COLUMNS = 6


class UsageError(Exception):
  """Exit status 2 with a one-line message."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m smsdd_jax.predict',
      description='Score camera frames with a trained SMSDD run and write a CSV.')
  p.add_argument('--workdir', required=True, action='append',
                 help='training run directory; repeat it or give a comma list for an '
                 'ensemble: the mean of the runs\' probabilities, decided at the mean '
                 'of their thresholds (each run\'s best checkpoint; their image size, '
                 'channels, aspect and ROI step must match)')
  p.add_argument('--input', required=True,
                 help='image file, folder (recursive) or quoted glob pattern')
  p.add_argument('--output', required=True, help='CSV file to write')
  p.add_argument('--roi', choices=('auto', 'hough', 'none'), default='auto',
                 help="'auto' (default): exactly what the run's build did "
                 "(<workdir>/preprocessing.json); 'hough': find and rectify the "
                 "screen in raw frames; 'none': the inputs are whole images")
  p.add_argument('--step', type=int, default=None,
                 help='checkpoint step (default: the best checkpoint); one run only')
  p.add_argument('--tta', choices=('none', 'flips'), default='none',
                 help="'flips': mean probability over the image and its left-right and "
                 'up-down flips (3x the compute, one batch)')
  p.add_argument('--precision', choices=('float32', 'bfloat16'), default='float32',
                 help="the scores' convolutions; 'bfloat16' where the run uses oneDNN "
                 '(float32 accumulation; ~2x faster on AVX512-BF16 CPUs)')
  p.add_argument('--batch_size', type=int, default=16)
  p.add_argument('--max_pixels', type=int, default=40_000_000,
                 help='refuse images with more pixels (read from the header)')
  p.add_argument('--save_rois', default=None, help='folder for the rectified ROIs (PNG)')
  p.add_argument('--sheet', default=None, help='PNG contact sheet of the decisions')
  p.add_argument('--embeddings', default=None,
                 help='npz to write: files, embeddings (N, d), probabilities of the '
                 'scored files (one run only)')
  p.add_argument('--maps', default=None,
                 help='folder for overlays of where the network looked (one PNG per '
                 'scored file; the --sheet tiles show them too)')
  p.add_argument('--map_method', choices=MAP_METHODS, default=MAP_METHODS[0],
                 help='how --maps are made (smsdd_jax/maps.py; the default is the best by '
                 'evidence, docs/results.md "Where is the defect")')
  p.add_argument('--map_scale', default=None,
                 help='map calibration of the run (python -m smsdd_jax.map_scale; default '
                 '<workdir>/map_scale.json when present; without one, each map is scaled to '
                 'its own maximum and the overlay says so)')
  p.add_argument('--bank', default=None,
                 help='memory bank for --map_method=feature_distance (default '
                 '<workdir>/memory_bank.npz)')
  p.add_argument('--workers', type=int, default=2,
                 help='threads reading frames and searching ROIs')
  return p


def _format_corners(corners: Optional[np.ndarray]) -> str:
  if corners is None:
    return ''
  return ' '.join(f'{x:.1f},{y:.1f}' for x, y in np.asarray(corners, np.float64))


def _notes(result) -> str:
  """What a scored row's reader should know (empty when nothing): an input
  enlarged beyond preprocess.ENLARGEMENT_LIMIT along a side is mostly
  interpolation, unlike anything the run trained on."""
  e = result.enlargement
  if e is not None and e > preprocess.ENLARGEMENT_LIMIT:
    return (f'enlarged {e:.1f}x along a side (over {preprocess.ENLARGEMENT_LIMIT:g}x): '
            'the model saw mostly interpolated pixels')
  return ''


def _row(result, threshold: float, tta: str, runs: str, precision: str) -> dict:
  return {'file': result.path,
          'prob_defective': '' if result.prob is None else f'{result.prob:.6f}',
          'decision': result.decision or '',
          'threshold': f'{threshold:g}',
          'roi_method': result.roi_method,
          'corners': _format_corners(result.corners),
          'error': result.error,
          'tta': tta,
          'runs': runs,
          'precision': precision,
          'notes': _notes(result)}


def _members(predictor) -> list:
  return getattr(predictor, 'members', [predictor])  # An Ensemble, or one Predictor.


class Output:
  """The CSV: rows stream into `<path>.tmp<pid>` beside it and `commit` moves
  that over `path`, so an existing file is replaced only by a whole one. A
  path that is not a regular file (/dev/stdout, a FIFO) is written directly.
  Every OSError becomes a one-line UsageError naming the path."""

  def __init__(self, path: str):
    self.path = path
    self.direct = _not_a_file(path)
    # Through a symbolic link: its target is replaced, the link kept.
    self.target = path if self.direct else os.path.realpath(path)
    self.tmp = self.target if self.direct else f'{self.target}.tmp{os.getpid()}'
    self.done = False
    self._file = self._call(open, self.tmp, 'w', newline='', encoding='utf-8')

  def _call(self, fn, *args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except OSError as e:
      raise UsageError(f'cannot write --output {self.path}: {e.strerror or e}') from None

  def write(self, text: str) -> int:
    return self._call(self._file.write, text)

  def flush(self) -> None:
    self._call(self._file.flush)

  def commit(self) -> None:
    """Flushes, syncs and closes the rows, then moves them over `path`."""
    self.flush()
    if not self.direct:
      self._call(os.fsync, self._file.fileno())
    self._call(self._file.close)
    if not self.direct:
      if os.path.isfile(self.target):
        self._call(shutil.copymode, self.target, self.tmp)
      self._call(os.replace, self.tmp, self.target)
    self.done = True

  def keep_partial(self) -> str:
    """Closes the rows written so far under `<path>.partial`; returns where."""
    with contextlib.suppress(OSError):
      self._file.close()
    self.done = True
    if self.direct:
      return self.path
    partial = f'{self.target}.partial'
    try:
      os.replace(self.tmp, partial)
    except OSError:
      return self.tmp
    return partial

  def discard(self) -> None:
    """Drops the temporary file; `path` stays as it was."""
    if self.done:
      return
    self.done = True
    with contextlib.suppress(OSError):
      self._file.close()  # May fail again flushing the same full disk.
    if not self.direct:
      with contextlib.suppress(OSError):
        os.remove(self.tmp)


class RoiWriter:
  """Writes ROIs under a folder, mirroring the inputs' relative paths."""

  def __init__(self, directory: str, paths: Sequence[str], input_spec: str):
    self.directory = pathlib.Path(directory)
    if os.path.isdir(input_spec):
      self.base = os.path.abspath(input_spec)
    else:
      self.base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    self.used: set[str] = set()

  def write(self, path: str, roi_rgb: np.ndarray) -> str:
    rel = pathlib.Path(os.path.relpath(os.path.abspath(path), self.base))
    out = rel.with_suffix('.png')
    if str(out) in self.used:  # a.jpg and a.png side by side.
      out = rel.with_name(rel.name + '.png')
    self.used.add(str(out))
    target = self.directory / out
    target.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(target), cv2.cvtColor(roi_rgb, cv2.COLOR_RGB2BGR)):
      raise OSError(f'could not write {target}')
    return str(target)


class Sheet:
  """Keeps the tiles a contact sheet will show (bounded memory)."""

  def __init__(self, threshold: float, max_tiles: int = SHEET_MAX_TILES,
               map_line: Optional[str] = None):
    self.threshold, self.max_tiles = threshold, max_tiles
    self.map_line = map_line  # Under a tile with a map: its method and scale.
    self.entries: list[tuple[tuple, np.ndarray]] = []
    self.total = 0

  def _key(self, r, order: int) -> tuple:
    if r.error:
      return (1, order)
    if r.decision == 'defective':
      return (0, -r.prob, order)
    return (2, abs(r.prob - self.threshold), order)

  def add(self, result, order: int) -> None:
    self.total += 1
    self.entries.append((self._key(result, order), _tile(result, self.map_line)))
    if len(self.entries) > 2 * self.max_tiles:
      self.entries = sorted(self.entries, key=lambda e: e[0])[:self.max_tiles]

  def write(self, path: str) -> int:
    tiles = [t for _, t in sorted(self.entries, key=lambda e: e[0])[:self.max_tiles]]
    if not tiles:
      tiles = [np.zeros((32, 32, 3), np.uint8)]
    th, tw = tiles[0].shape[:2]
    cols = min(SHEET_COLUMNS, len(tiles))
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.full((rows * (th + 4) + 4, cols * (tw + 4) + 4, 3), 16, np.uint8)
    for i, t in enumerate(tiles):
      r, c = divmod(i, cols)
      sheet[4 + r * (th + 4):4 + r * (th + 4) + th, 4 + c * (tw + 4):4 + c * (tw + 4) + tw] = t
    ok, encoded = cv2.imencode(os.path.splitext(path)[1] or '.png', sheet)
    if not ok:
      raise OSError(f'could not encode {path}')
    with rundir.atomic_file(path, 'wb') as f:  # Never a half-written sheet.
      f.write(encoded.tobytes())
    return len(tiles)


def _add_maps(predictor, results, method: str, bank=None) -> None:
  """Sets `heat` (in [0, 1] on the run's scale, `readable_maps`) on every
  scored result of one chunk (one batched call)."""
  scored = [r for r in results if r.ok and r.roi is not None]
  if scored:
    heat, _ = predictor.readable_maps(np.stack([r.roi for r in scored]), method,
                                      **({'bank': bank} if bank is not None else {}))
    for r, h in zip(scored, heat):
      r.heat = h


def _overlay(result, caption=()) -> np.ndarray:
  from smsdd_jax import maps  # pylint: disable=import-outside-toplevel
  return maps.overlay(result.roi, result.heat, caption=caption)


def _map_caption(result, threshold: float, method: str, scale) -> list[str]:
  """What an overlay file says under its ROI: the probability and the
  decision, then the method and its scale."""
  from smsdd_jax import maps  # pylint: disable=import-outside-toplevel
  return [maps.decision_line(result.prob, threshold), f'{method} map, {scale.short}']


_TILE_ROI = (110, 230)


def _tile(result, map_line: Optional[str] = None) -> np.ndarray:
  """ROI with a coloured frame (red defective, green good, orange error) and
  two lines of text: file name, then probability and decision or the error;
  a third, `map_line` (the map's method and scale), under a ROI drawn with
  its map."""
  h, w = _TILE_ROI
  # Every tile of a sheet with maps has the third line's room (one tile size).
  tile = np.full((h + (54 if map_line else 40), w + 8, 3), 40, np.uint8)
  if result.error:
    color, line2 = (0, 140, 255), 'ERROR (not scored)'
  elif result.decision == 'defective':
    color, line2 = (0, 0, 255), f'p={result.prob:.3f} DEFECTIVE'
  else:
    color, line2 = (0, 200, 0), f'p={result.prob:.3f} good'
  tile[:h + 8] = color
  if result.roi is not None:
    roi = result.roi if result.heat is None else _overlay(result)
    roi = roi if roi.shape[:2] == (h, w) else cv2.resize(roi, (w, h))
    tile[4:4 + h, 4:4 + w] = cv2.cvtColor(roi, cv2.COLOR_RGB2BGR)
  else:
    tile[4:4 + h, 4:4 + w] = 0
    words, lines = result.error.split(), ['']
    for word in words:  # The full reason, wrapped, inside the empty ROI.
      if len(lines[-1]) + len(word) > 36 and lines[-1]:
        lines.append('')
      lines[-1] = f'{lines[-1]} {word}'.strip()
    for k, line in enumerate(lines[:8]):
      cv2.putText(tile, line, (8, 18 + 13 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                  (200, 200, 200), 1, cv2.LINE_AA)
  name = os.path.basename(result.path)
  cv2.putText(tile, name[:38], (4, h + 21), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
              (255, 255, 255), 1, cv2.LINE_AA)
  cv2.putText(tile, line2[:38], (4, h + 35), cv2.FONT_HERSHEY_SIMPLEX, 0.38,
              color, 1, cv2.LINE_AA)
  if map_line and result.roi is not None and result.heat is not None:
    cv2.putText(tile, map_line[:42], (4, h + 49), cv2.FONT_HERSHEY_SIMPLEX, 0.36,
                (200, 200, 200), 1, cv2.LINE_AA)
  return tile


class Progress:
  """'n/total frames, rate, errors' on stderr: rewritten in place on a
  terminal, else a line every few seconds."""

  def __init__(self, total: int, stream=None, every_s: float = 5.0):
    stream = sys.stderr if stream is None else stream
    self.total, self.stream, self.every_s = total, stream, every_s
    self.t0 = time.perf_counter()
    self.last = -float('inf')
    self.tty = hasattr(stream, 'isatty') and stream.isatty()

  def update(self, done: int, errors: int) -> None:
    now = time.perf_counter()
    final = done == self.total
    if not (self.tty or final or now - self.last >= self.every_s):
      return
    self.last = now
    rate = done / max(now - self.t0, 1e-9)
    line = (f'{done}/{self.total} frames, {rate:.1f} frames/s, {errors} error'
            f'{"" if errors == 1 else "s"}')
    if self.tty:
      self.stream.write('\r' + line + ('\n' if final else ''))
    else:
      self.stream.write(line + '\n')
    self.stream.flush()


def _check_args(args) -> None:
  if args.batch_size < 1:
    raise UsageError(f'--batch_size={args.batch_size}: must be >= 1')
  if args.max_pixels < 1:
    raise UsageError(f'--max_pixels={args.max_pixels}: must be >= 1')
  if args.workers < 1:
    raise UsageError(f'--workers={args.workers}: must be >= 1')
  if args.step is not None and args.step < 0:
    raise UsageError(f'--step={args.step}: must be >= 0')
  if args.sheet and not cv2.haveImageWriter(args.sheet):
    raise UsageError(f'--sheet={args.sheet}: not an image file name OpenCV can write; '
                     'end it in .png')


def _planned(directory: str, paths: Sequence[str], input_spec: str):
  """Every file a RoiWriter over `directory` may write for `paths` (both
  names it can give each input)."""
  writer = RoiWriter(directory, paths, input_spec)
  for path in paths:
    rel = pathlib.Path(os.path.relpath(os.path.abspath(path), writer.base))
    yield writer.directory / rel.with_suffix('.png')
    yield writer.directory / rel.with_name(rel.name + '.png')


def _check_apart(args, paths: Sequence[str]) -> None:
  """Refuses, before any work, outputs that would land on an input file (or
  fill --input's folder with overlays) or on each other: two flags naming one
  file, a file inside what --save_rois or --maps writes. By real paths, so a
  symbolic link or '..' hides nothing."""
  real = os.path.realpath
  inputs = {real(p) for p in paths}
  claims = {}  # Real path -> (flag, path as given).

  def claim(flag: str, path, shown: str) -> None:
    target = real(path)
    if target == real(os.devnull):
      return  # Any number of outputs may be thrown away.
    if target in inputs:
      raise UsageError(f'{flag}={shown} would overwrite the input file {path}: '
                       'write outputs outside the inputs')
    other = claims.setdefault(target, (flag, shown))
    if other[0] != flag:
      raise UsageError(f'{other[0]}={other[1]} and {flag}={shown} would write the same '
                       f'file {path}: give each output its own path')

  for flag in ('--output', '--embeddings', '--sheet'):
    if getattr(args, flag[2:]):
      claim(flag, getattr(args, flag[2:]), getattr(args, flag[2:]))
  for flag in ('--save_rois', '--maps'):
    directory = getattr(args, flag[2:])
    if not directory:
      continue
    if os.path.isdir(args.input) and real(directory) == real(args.input):
      raise UsageError(f'{flag}={directory} is the --input folder: its PNGs would be '
                       'written among (and over) the inputs; give another folder')
    claim(flag, directory, directory)  # The folder itself: no file flag may name it.
    for target in _planned(directory, paths, args.input):
      claim(flag, target, directory)


def _not_a_file(path: str) -> bool:
  """Whether path exists as something other than a regular file (a device,
  a FIFO, /dev/stdout): written directly, never replaced."""
  return os.path.exists(path) and not os.path.isfile(path)


def _check_output(path: str, flag: str = '--output') -> None:
  """Refuses an output file that cannot be written, before the model loads
  (touching nothing but creating its folder)."""
  if os.path.isdir(path):
    raise UsageError(f'cannot write {flag} {path}: it is a directory')
  if _not_a_file(path):
    if not os.access(path, os.W_OK):
      raise UsageError(f'cannot write {flag} {path}: permission denied')
    return
  parent = os.path.dirname(os.path.realpath(path))
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise UsageError(f'cannot write {flag} {path}: {e.strerror or e}') from None
  if not os.access(parent, os.W_OK):
    raise UsageError(f'cannot write {flag} {path}: permission denied in {parent}')


class Embeddings:
  """The scored files' embeddings, gathered per chunk and written as one npz
  through a temporary file beside `path` (an existing file is replaced only
  by a complete one)."""

  def __init__(self, path: str, predictor):
    self.path, self.predictor = path, predictor
    self.files, self.embeddings, self.probs = [], [], []

  def add(self, results) -> None:
    good = [r for r in results if r.ok and r.roi is not None]
    if good:
      self.embeddings.append(self.predictor.embed(np.stack([r.roi for r in good])))
      self.files += [r.path for r in good]
      self.probs += [r.prob for r in good]

  def write(self) -> int:
    """Writes the npz; returns the number of rows. OSError -> UsageError."""
    emb = (np.concatenate(self.embeddings) if self.embeddings else
           self.predictor.embed(np.zeros((0, *self.predictor.image_size, 3), np.uint8)))
    arrays = {'files': np.asarray(self.files, dtype=str), 'embeddings': emb,
              'probabilities': np.asarray(self.probs, np.float32)}
    if _not_a_file(self.path):  # A FIFO, a device: written, never replaced.
      data = io.BytesIO()  # Whole first: a zip wants to seek, a pipe cannot.
      np.savez(data, **arrays)
      try:
        with open(self.path, 'wb') as f:
          f.write(data.getvalue())
      except OSError as e:
        raise UsageError(f'cannot write --embeddings {self.path}: {e.strerror or e}') from None
      return len(self.files)
    target = os.path.realpath(self.path)
    tmp = f'{target}.tmp{os.getpid()}'
    try:
      with open(tmp, 'wb') as f:  # A file object: np.savez adds no '.npz'.
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, target)
    except OSError as e:
      with contextlib.suppress(OSError):
        os.remove(tmp)
      raise UsageError(f'cannot write --embeddings {self.path}: {e.strerror or e}') from None
    return len(self.files)


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)  # Exits 2 on bad flags.
  try:
    return _run(args)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2


def _run(args) -> int:
  _check_args(args)
  from smsdd_jax import inference  # pylint: disable=import-outside-toplevel
  workdirs = [w for arg in args.workdir for w in arg.split(',') if w]
  if not workdirs:
    raise UsageError('--workdir is empty')
  if args.step is not None and len(workdirs) > 1:
    raise UsageError(f'--step={args.step} applies to one run; an ensemble of '
                     f'{len(workdirs)} uses each run\'s best checkpoint')
  try:  # Cheap checks first: no TensorFlow or Orbax loaded yet.
    for workdir in workdirs:
      rundir.resolve_run(workdir, args.step)
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(str(e)) from None
  paths = inference.list_inputs(args.input)
  if not paths:
    raise UsageError(f'no input files: {args.input} is not a file, a folder with '
                     f'{"/".join(inference.IMAGE_EXTENSIONS)} files, or a glob '
                     'matching files')
  if os.path.isdir(args.input):
    others = sum(1 for p in pathlib.Path(args.input).rglob('*') if not p.is_dir()) - len(paths)
    if others:
      print(f'note: {others} file(s) under {args.input} without an image extension '
            f'({"/".join(inference.IMAGE_EXTENSIONS)}) are not read')
  _check_apart(args, paths)
  for flag, path in (('--save_rois', args.save_rois), ('--sheet', args.sheet),
                     ('--maps', args.maps)):
    if path:
      try:
        os.makedirs(path if flag in ('--save_rois', '--maps') else
                    os.path.dirname(os.path.abspath(path)), exist_ok=True)
      except OSError as e:
        raise UsageError(f'cannot create {flag} {path}: {e.strerror or e}') from None
  _check_output(args.output)
  for flag in ('--map_scale', '--bank'):
    if getattr(args, flag[2:]) and len(workdirs) > 1:
      raise UsageError(f'{flag} applies to one run; an ensemble reads each run\'s own '
                       f'(<workdir>/{"map_scale.json" if flag == "--map_scale" else "memory_bank.npz"})')
    if getattr(args, flag[2:]) and not args.maps:
      raise UsageError(f'{flag} is read for maps: add --maps=DIR')
    if getattr(args, flag[2:]) and not os.path.isfile(getattr(args, flag[2:])):
      raise UsageError(f'{flag}={getattr(args, flag[2:])}: no such file')
  if args.embeddings:
    if len(workdirs) > 1:
      raise UsageError(f'--embeddings applies to one run; an ensemble of {len(workdirs)} '
                       'embeds into different spaces')
    _check_output(args.embeddings, flag='--embeddings')
  try:  # The model first: nothing is written if it cannot be loaded.
    predictor = inference.load(workdirs, step=args.step, batch_size=args.batch_size,
                               tta=args.tta, precision=args.precision)
  except (FileNotFoundError, ValueError) as e:  # Checkpoint mismatch, unreadable too.
    raise UsageError(str(e).splitlines()[0]) from None
  bank = _prepare_maps(args, predictor) if args.maps else None
  out = Output(args.output)
  try:
    return _score(args, predictor, paths, out, inference, bank)
  finally:
    out.discard()  # Unless committed or kept partial.


def _threshold_line(predictor) -> str:
  members = _members(predictor)
  if len(members) > 1:
    each = ', '.join(f'{m.threshold:g}' for m in members)
    return f'threshold: {predictor.threshold:g} (mean of the runs\' thresholds {each})'
  if predictor.run.threshold_source.startswith('default'):
    return (f'threshold: {predictor.threshold:g} (default: no {rundir.THRESHOLD} in '
            f'{predictor.run.workdir})')
  return f'threshold: {predictor.threshold:g} ({predictor.run.threshold_source})'


def _prepare_maps(args, predictor):
  """Before any frame: the map calibration (--map_scale, else the run's own)
  and memory bank (feature_distance) read and checked, and one line saying
  which scale the overlays use (a warning on stderr when it is per image).
  Returns the bank given by --bank, or None. A calibration or bank of another
  run is a usage error."""
  try:
    if args.map_scale:
      predictor.use_map_scale(args.map_scale)
    bank = None
    if args.map_method == 'feature_distance':  # Each run's own bank, read now.
      banks = [m.memory_bank(args.bank) for m in _members(predictor)]
      bank = banks[0] if args.bank else None
    scale = predictor.map_scale(args.map_method, **({'bank': bank} if bank else {}))
  except (ValueError, FileNotFoundError) as e:
    raise UsageError(str(e).splitlines()[0]) from None
  if scale.kind == 'run':
    print(f'maps: {scale.note}')
  else:
    print(f'warning: maps ({args.map_method}) have no run scale: {scale.note}', file=sys.stderr)
  args.scale = scale
  return bank


def _score(args, predictor, paths, out_file, inference, bank=None) -> int:
  print(f'model: {predictor.describe()}')
  warning = predictor.health_warning()
  if warning:
    print(f'warning: {warning}', file=sys.stderr)
  print(_threshold_line(predictor))
  print(f'input: {len(paths)} file(s) from {args.input}; roi={args.roi}; '
        f'batch {predictor.batch_size}; max_pixels {args.max_pixels}; tta {args.tta}')
  runs = ';'.join(f'{m.run.workdir}@{m.run.step}' for m in _members(predictor))
  precision = predictor.scored_precision
  writer = csv.DictWriter(out_file, fieldnames=CSV_COLUMNS)
  writer.writeheader()
  rois = RoiWriter(args.save_rois, paths, args.input) if args.save_rois else None
  overlays = RoiWriter(args.maps, paths, args.input) if args.maps else None
  sheet = Sheet(predictor.threshold, map_line=(f'{args.map_method} map, {args.scale.short}'
                                               if args.maps else None)) if args.sheet else None
  embeddings = Embeddings(args.embeddings, predictor) if args.embeddings else None
  progress = Progress(len(paths))
  done, failures, counts, noted = 0, [], {'good': 0, 'defective': 0}, 0
  t0 = time.perf_counter()
  try:
    for results in _frame_results(args, predictor, paths, inference):
      if embeddings is not None:
        embeddings.add(results)
      if overlays is not None:
        _add_maps(predictor, results, args.map_method, bank)
      for r in results:
        if rois is not None and r.roi is not None:
          try:
            rois.write(r.path, r.roi)
          except OSError as e:  # The score stands; the row says what failed.
            r.error = f'scored, but saving the ROI failed: {e}'
        if overlays is not None and r.heat is not None:
          try:
            overlays.write(r.path, _overlay(r, _map_caption(r, predictor.threshold,
                                                            args.map_method, args.scale)))
          except OSError as e:
            r.error = f'scored, but saving the map failed: {e}'
        writer.writerow(_row(r, predictor.threshold, args.tta, runs, precision))
        if r.ok and _notes(r):
          noted += 1
        if sheet is not None:
          sheet.add(r, done)
        if r.error:
          failures.append((r.path, r.error))
        if r.decision:
          counts[r.decision] += 1
        r.roi = r.heat = None  # Free them.
        done += 1
      out_file.flush()
      progress.update(done, len(failures))
  except KeyboardInterrupt:
    kept = out_file.keep_partial()
    held = (f'{args.output} holds those rows' if kept == args.output else
            f'{args.output} is unchanged; those rows are in {kept}')
    print(f'\ninterrupted after {done}/{len(paths)} frames; {held}', file=sys.stderr)
    return 130
  out_file.commit()
  elapsed = time.perf_counter() - t0
  if embeddings is not None:
    print(f'embeddings: {args.embeddings} ({embeddings.write()} scored files)')
  if sheet is not None:
    try:
      shown = sheet.write(args.sheet)
      print(f'sheet: {args.sheet} ({shown} of {sheet.total} tiles)')
    except OSError as e:
      print(f'error: {e}', file=sys.stderr)
      failures.append((args.sheet, str(e)))
  if rois is not None:
    print(f'rois: {args.save_rois}')
  if overlays is not None:
    print(f'maps: {args.maps} ({args.map_method}, {args.scale.short})')
  scored = counts['good'] + counts['defective']
  print(f'summary: {scored}/{len(paths)} scored ({counts["defective"]} defective, '
        f'{counts["good"]} good at threshold {predictor.threshold:g}), '
        f'{len(failures)} failed; {elapsed:.1f} s ({len(paths) / max(elapsed, 1e-9):.1f}'
        f' frames/s); wrote {args.output}')
  if noted:
    print(f'note: {noted} scored file(s) enlarged over {preprocess.ENLARGEMENT_LIMIT:g}x '
          'along a side (see the notes column)')
  for path, why in failures[:50]:
    print(f'  failed: {path}: {why}')
  if len(failures) > 50:
    print(f'  ... and {len(failures) - 50} more (see the error column)')
  return 1 if failures else 0


def _frame_results(args, predictor, paths, inference):
  """inference.score_frames over the paths that are regular files, with an
  error row in its place for each one that is not (never opened: a FIFO would
  block the reader); chunks of at most batch_size, in input order."""
  problems = [inference.input_problem(p) for p in paths]
  scored = inference.score_frames(
      predictor, [p for p, why in zip(paths, problems) if not why], roi_method=args.roi,
      max_pixels=args.max_pixels, workers=args.workers)
  pending, chunk = collections.deque(), []
  try:
    for path, why in zip(paths, problems):
      if why:
        chunk.append(inference.FrameResult(path=path, error=why))
      else:
        if not pending:
          pending.extend(next(scored))
        chunk.append(pending.popleft())
      if len(chunk) == predictor.batch_size:
        yield chunk
        chunk = []
    if chunk:
      yield chunk
  finally:
    scored.close()  # Its reader threads.


def run() -> None:
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only imported for data.
  sys.exit(main())


if __name__ == '__main__':
  run()
