#!/usr/bin/env python3
"""A contact sheet of the screen finder (smsdd_jax.roi), to check it by eye.

  python launch/roi_sheet.py --input=DIR --sheet=out.png [--columns=4]
      [--thumb_width=320] [--threads=1]

Every jpg/png under --input (recursively) goes through
`roi.find_screen_with_info` and `roi.rectify`. The sheet shows each frame
downscaled with the found outline drawn (corner marks: tl red, tr yellow,
br magenta, bl blue) and its rectified ROI beside it, failures labelled in
red. Printed per frame: the method, area, aspect, corner deviation and time
(find + rectify); then a summary with the median time and every failure.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
from typing import Sequence

import cv2
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from smsdd_jax import roi  # pylint: disable=wrong-import-position


def _list_images(root: pathlib.Path) -> list[pathlib.Path]:
  exts = {'.jpg', '.jpeg', '.png'}
  return sorted(p for p in root.rglob('*')
                if p.is_file() and p.suffix.lower() in exts)


def _thumbnail(image: np.ndarray | None, corners: np.ndarray | None,
               thumb_w: int) -> np.ndarray:
  """The frame downscaled to thumb_w with the outline and corner marks."""
  if image is None:
    return np.zeros((round(thumb_w * 9 / 16), thumb_w, 3), np.uint8)
  h, w = image.shape[:2]
  s = thumb_w / float(w)
  thumb = cv2.resize(image, (thumb_w, max(1, round(h * s))),
                     interpolation=cv2.INTER_AREA)
  if corners is not None:
    p = np.round(((corners + 0.5) * s - 0.5) * 4).astype(np.int32)
    cv2.polylines(thumb, [p.reshape(-1, 1, 2)], True, (0, 255, 0), 1,
                  cv2.LINE_AA, shift=2)
    for (x, y), col in zip(p, [(0, 0, 255), (0, 255, 255), (255, 0, 255),
                                (255, 128, 0)]):
      cv2.circle(thumb, (int(x), int(y)), 3 * 4, col, 1, cv2.LINE_AA,
                 shift=2)
  return thumb


def _tile(image: np.ndarray | None, corners: np.ndarray | None,
          roi_image: np.ndarray | None, label: str, ok: bool,
          thumb_w: int) -> np.ndarray:
  """The thumbnail and the rectified ROI beside it, under a label."""
  thumb = _thumbnail(image, corners, thumb_w)
  if roi_image is None:
    roi_image = np.zeros((roi.ROI_SIZE[0], roi.ROI_SIZE[1], 3), np.uint8)
  th = max(thumb.shape[0], roi_image.shape[0])
  tile = np.full((th + 18, thumb.shape[1] + roi_image.shape[1] + 6, 3), 32,
                 np.uint8)
  tile[18:18 + thumb.shape[0], :thumb.shape[1]] = thumb
  tile[18:18 + roi_image.shape[0], thumb.shape[1] + 6:] = roi_image
  cv2.putText(tile, label[:90], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
              (255, 255, 255) if ok else (0, 0, 255), 1, cv2.LINE_AA)
  return tile


def _contact_sheet(tiles: list[np.ndarray], columns: int) -> np.ndarray:
  if not tiles:
    return np.zeros((32, 32, 3), np.uint8)
  th = max(t.shape[0] for t in tiles)
  tw = max(t.shape[1] for t in tiles)
  rows = (len(tiles) + columns - 1) // columns
  sheet = np.zeros((rows * (th + 4), columns * (tw + 4), 3), np.uint8)
  for i, t in enumerate(tiles):
    r, c = divmod(i, columns)
    sheet[r * (th + 4):r * (th + 4) + t.shape[0],
          c * (tw + 4):c * (tw + 4) + t.shape[1]] = t
  return sheet


def _one_frame(path: pathlib.Path, rel: pathlib.Path, thumb_w: int):
  """(tile, ScreenInfo or None, failure reason or None, seconds or None) for
  one file; prints its line."""
  image = cv2.imread(str(path), cv2.IMREAD_COLOR)
  if image is None:
    print(f'{rel}: FAILED unreadable image file', flush=True)
    return (_tile(None, None, None, f'{rel}: unreadable', False, thumb_w),
            None, 'unreadable image file', None)
  t0 = time.perf_counter()
  try:
    corners, info = roi.find_screen_with_info(image)
    roi_image = roi.rectify(image, corners)
  except roi.ScreenNotFoundError as e:
    print(f'{rel}: FAILED {e}', flush=True)
    return (_tile(image, None, None, f'{rel}: {e}', False, thumb_w),
            None, str(e), None)
  seconds = time.perf_counter() - t0
  extra = ''
  if info.hough_failure:
    extra += f' (hough: {info.hough_failure})'
  if info.frame_edge_sides:
    extra += f' (at frame edge: {",".join(info.frame_edge_sides)})'
  print(f'{rel}: {info.method} area={info.area_fraction:.3f} '
        f'aspect={info.aspect:.2f} '
        f'corner_dev={info.max_corner_deviation:.1f}deg '
        f'{1e3 * seconds:.1f}ms{extra}', flush=True)
  return (_tile(image, corners, roi_image, f'{rel} [{info.method}]', True,
                thumb_w), info, None, seconds)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='launch/roi_sheet.py',
      description='Find the phone screen in every jpg/png under --input '
      '(recursively) and write a PNG contact sheet: each frame downscaled '
      'with the found outline drawn, and its rectified ROI beside it.')
  parser.add_argument('--input', required=True, help='folder, read recursively')
  parser.add_argument('--sheet', required=True, help='output PNG path')
  parser.add_argument('--columns', type=int, default=4)
  parser.add_argument('--thumb_width', type=int, default=320)
  parser.add_argument('--threads', type=int, default=1,
                      help='OpenCV threads (1: the timings are per core)')
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  cv2.setNumThreads(args.threads)
  root = pathlib.Path(args.input)
  paths = _list_images(root)
  if not paths:
    print(f'no jpg/png files under {root}', file=sys.stderr)
  tiles, counts, failures, times = [], {}, [], []
  for p in paths:
    rel = p.relative_to(root)
    tile, info, failure, seconds = _one_frame(p, rel, args.thumb_width)
    tiles.append(tile)
    if info is None:
      failures.append((str(rel), failure))
      continue
    times.append(seconds)
    counts[info.method] = counts.get(info.method, 0) + 1
  sheet = _contact_sheet(tiles, max(1, args.columns))
  pathlib.Path(args.sheet).parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(args.sheet, sheet):
    print(f'could not write {args.sheet}', file=sys.stderr)
    return 1
  found = sum(counts.values())
  summary = ', '.join(f'{k} {v}' for k, v in sorted(counts.items()))
  median = f'{1e3 * np.median(times):.1f} ms' if times else 'n/a'
  print(f'summary: {found}/{len(paths)} found ({summary or "none"}), '
        f'{len(failures)} failed; median find_screen + rectify {median} '
        f'({args.threads} OpenCV thread(s)); sheet {args.sheet}')
  for name, why in failures:
    print(f'  failed: {name}: {why}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
