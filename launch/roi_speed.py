"""The screen finder's time per frame, and what a smaller working image does
to it: each --work_widths value against today's (roi.work.WORK_WIDTH), on
the same frames, one core.

  python launch/roi_speed.py --frames=FRAMES_DIR --work_widths=640,480 --cores=1

Prints, per working width, the median milliseconds of `roi.find_screen` per
frame, how many frames found a screen at one width and not at the other,
and the corners' largest deviation from today's (pixels of the full frame;
percentiles over the frames). The question it answers (issue "Speed, third
round"): can the finder run on a downscaled frame and keep the ROI within
1 pixel of today's?
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from smsdd_jax import inference  # pylint: disable=wrong-import-position
from smsdd_jax.roi import api, work  # pylint: disable=wrong-import-position


def _find_all(images: list) -> tuple[list, float]:
  """Corners (or None where no screen was found) and the median ms/frame."""
  corners, times = [], []
  for image in images:
    t = time.perf_counter()
    try:
      corners.append(api.find_screen(image))
    except ValueError:
      corners.append(None)
    times.append(time.perf_counter() - t)
  return corners, statistics.median(times) * 1e3


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--frames', required=True, help='folder of raw frames (searched recursively)')
  p.add_argument('--work_widths', default='640,480', help='comma-separated widths to try')
  p.add_argument('--cores', type=int, default=0, help='pin to this many cores (0: all)')
  args = p.parse_args(argv)
  if args.cores:  # The process's own affinity: for a command line, not for a test.
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
    cv2.setNumThreads(args.cores)
  files = inference.list_inputs(args.frames)
  if not files:
    raise SystemExit(f'--frames={args.frames}: no image files under it')
  images = [cv2.imread(f) for f in files]
  today = work.WORK_WIDTH
  base, base_ms = _find_all(images)
  out = {'frames': len(images), 'found': sum(q is not None for q in base),
         f'ms_at_{today}': round(base_ms, 2), 'widths': {}}
  print(f'{len(images)} frames, {out["found"]} found at width {today}: {base_ms:.1f} ms/frame')
  for width in (int(v) for v in args.work_widths.split(',')):
    work.WORK_WIDTH = width
    got, ms = _find_all(images)
    work.WORK_WIDTH = today
    dev = [float(np.abs(a - b).max()) for a, b in zip(base, got)
           if a is not None and b is not None]
    pct = np.percentile(dev, [50, 90, 99, 100]).round(2).tolist() if dev else []
    r = {'ms': round(ms, 2), 'found_differs': sum((a is None) != (b is None)
                                                  for a, b in zip(base, got)),
         'max_corner_dev_px_p50_p90_p99_max': pct,
         'frames_over_1px': sum(d > 1.0 for d in dev)}
    out['widths'][width] = r
    print(f'width {width}: {ms:.1f} ms/frame; found differs on {r["found_differs"]}; '
          f'corner deviation p50/p90/p99/max {pct} px; over 1 px on {r["frames_over_1px"]} '
          f'of {len(dev)}')
  print(json.dumps(out))


if __name__ == '__main__':
  main()
