"""python -m smsdd_jax.map_scale: a run's map calibration from its validation split.

  python -m smsdd_jax.map_scale --workdir=RUN --export=FILE [--methods=fine,gradcam]
      [--bank=RUN/memory_bank.npz] [--out=RUN/map_scale.json]

Writes the calibration (smsdd_jax/map_scale/__init__.py says what it holds)
and prints, per method, its value and how cool the good validation crops look
on it. Exit status 2 with one line for bad input (a missing run, an export of
other data, a bank of another run). Apart from the library because it builds
a Predictor (inference.py), which imports the library.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from smsdd_jax import inference, maps, rundir
from smsdd_jax.map_scale import DEFAULT_METHODS, DEFAULT_NAME, calibrate, save


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m smsdd_jax.map_scale',
                              description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', required=True, help='training run directory')
  p.add_argument('--export', required=True,
                 help='dataset export of the run\'s build (python -m smsdd_jax.dataset_export)')
  p.add_argument('--methods', default=','.join(DEFAULT_METHODS),
                 help=f'comma-separated, of {", ".join(maps.METHODS)}')
  p.add_argument('--bank', default=None,
                 help='memory bank for feature_distance (default <workdir>/memory_bank.npz)')
  p.add_argument('--out', default=None, help=f'JSON (default <workdir>/{DEFAULT_NAME})')
  p.add_argument('--batch_size', type=int, default=16)
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  try:
    methods = [maps.check_method(m.strip()) for m in args.methods.split(',') if m.strip()]
    if not methods:
      raise ValueError('--methods is empty')
    rundir.resolve_run(args.workdir)  # A bad workdir in one line, before loading anything.
    from smsdd_jax import dataset_export  # pylint: disable=import-outside-toplevel
    export = dataset_export.load(args.export)
    predictor = inference.Predictor(args.workdir, batch_size=args.batch_size)
    bank = predictor.memory_bank(args.bank) if 'feature_distance' in methods else None
    record = calibrate(predictor, export, methods, bank=bank)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {str(e).splitlines()[0] if str(e) else e!r}', file=sys.stderr)
    return 2
  out = args.out or os.path.join(args.workdir, DEFAULT_NAME)
  save(out, record)
  for method, entry in record['methods'].items():
    print(f'{method}: 1 = {entry["value"]:.4g} ({entry["defective_crops"]} defective '
          f'crops); good crops peak at {entry.get("good_peak_median", float("nan")):.2f} '
          f'(median), {entry.get("good_peak_p90", float("nan")):.2f} (90th percentile) of it; '
          f'peak AUROC {entry.get("peak_auroc", float("nan")):.3f}')
  print(f'wrote {out} ({record["data"]["split"]} of {record["data"]["export"]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
