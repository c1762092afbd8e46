"""python -m smsdd_jax.memory_bank --workdir=RUN --export=FILE [--out=RUN/memory_bank.npz]

Builds a run's memory bank (the package's __init__: what it holds and how it
measures) from the good images of the run's own training split of the
export and saves it, by default as <workdir>/memory_bank.npz. Refused in one
line, exit 2, before any work: an --out on the export or on one of the run's
own files, a folder, a file that is no memory bank; an export of other data
than the run's. Apart from the library because it makes a Predictor
(inference.py), which imports the library.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from smsdd_jax import export_reader, inference, rundir
from smsdd_jax.memory_bank import (DEFAULT_AGGREGATE, DEFAULT_MAX_CELLS, DEFAULT_NAME,
                                   DEFAULT_POSITION, DEFAULT_SIGMA, DEFAULT_TAP, DEFAULT_TOPK,
                                   FORMAT, POSITIONS, SAMPLINGS, build, good_training_images,
                                   parse_taps)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m smsdd_jax.memory_bank',
                              description='Build a run\'s memory bank of good training '
                              'cells (feature-distance maps and scores).')
  p.add_argument('--workdir', required=True, help='the run (its best checkpoint)')
  p.add_argument('--export', required=True, help='dataset export holding the run\'s data')
  p.add_argument('--out', default=None, help=f'default <workdir>/{DEFAULT_NAME}')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default best)')
  p.add_argument('--tap', default=DEFAULT_TAP)
  p.add_argument('--max_cells', type=int, default=DEFAULT_MAX_CELLS)
  p.add_argument('--sampling', default='greedy', choices=SAMPLINGS)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--aggregate', type=int, default=DEFAULT_AGGREGATE)
  p.add_argument('--topk', type=int, default=DEFAULT_TOPK)
  p.add_argument('--sigma', type=float, default=DEFAULT_SIGMA)
  p.add_argument('--position', default=DEFAULT_POSITION, choices=POSITIONS,
                 help='z: standardise by the good training images\' distances per position')
  p.add_argument('--batch_size', type=int, default=32)
  return p


def check_out(out: str, workdir: str, export_path: str) -> str:
  """Refuses, before any work, an --out that would land on an input: the
  export, a file the run reads (config, stats, checkpoints ...), a folder or
  a device, or an existing file that is no memory bank."""
  real = os.path.realpath(out)
  if real == os.path.realpath(export_path):
    raise ValueError(f'--out={out} is the --export file: write the bank elsewhere')
  run = os.path.realpath(workdir)
  inputs = {os.path.join(run, n) for n in (rundir.CONFIG, rundir.PREPROCESSING, rundir.EVAL,
                                            rundir.THRESHOLD, rundir.BEST, rundir.DATA_STATS,
                                            rundir.METRICS, rundir.eval_npz('val'),
                                            rundir.eval_npz('test'))}
  inside = [os.path.join(run, d) + os.sep for d in (rundir.CHECKPOINTS, rundir.CHECKPOINTS_BEST)]
  if real in inputs or any(real.startswith(d) for d in inside):
    raise ValueError(f'--out={out} is one of the run\'s own files: name another file')
  if os.path.isdir(real):
    raise ValueError(f'--out={out} is a directory: name a file, e.g. {out}/{DEFAULT_NAME}')
  if os.path.exists(real):
    if not os.path.isfile(real):
      raise ValueError(f'--out={out} is not a regular file: name a .npz path')
    try:
      with np.load(real, allow_pickle=False) as data:
        fmt = json.loads(str(data['record'])).get('format')
    except (OSError, ValueError, KeyError, EOFError):
      fmt = None
    if fmt != FORMAT:
      raise ValueError(f'--out={out} exists and is not a memory bank: not replaced')
  if not real.endswith('.npz'):
    raise ValueError(f'--out={out}: name a .npz file')
  return out


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = _parser().parse_args(argv)
  try:
    out = args.out or os.path.join(args.workdir, DEFAULT_NAME)
    if not os.path.isfile(args.export):
      raise ValueError(f'--export={args.export}: no such file')
    rundir.resolve_run(args.workdir, args.step)  # A bad workdir: one line, before loading.
    check_out(out, args.workdir, args.export)
    if args.max_cells < 1 or args.batch_size < 1:
      raise ValueError(f'--max_cells={args.max_cells}, --batch_size={args.batch_size}: '
                       'both must be >= 1')
    predictor = inference.Predictor(args.workdir, step=args.step, batch_size=args.batch_size)
    parse_taps(args.tap, predictor.model.backbone)
    export = export_reader.load(args.export)
    images, source = good_training_images(export, predictor)
    bank = build(predictor, images, tap=args.tap, max_cells=args.max_cells, seed=args.seed,
                 sampling=args.sampling, aggregate=args.aggregate, topk=args.topk,
                 sigma=args.sigma, position=args.position, source=source)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  bank.save(out)
  r, c = bank.record, bank.cost()
  print(f'wrote {out}: {r["cells_kept"]} of {r["cells_total"]} cells ({r["sampling"]}) of '
        f'{r["images"]} good images of {r["source"]["split"]}, tap {r["tap"]}, position '
        f'{r["position"]}, '
        f'{c["dims"]} dims, {c["bank_mbytes"]:.1f} MB; {c["search_gflop_per_roi"]:.2f} '
        'GFLOP per ROI to search')
  return 0


if __name__ == '__main__':
  sys.exit(main())
