#!/usr/bin/env python3
"""Re-runs the health checks (smsdd_jax/health.py) on finished runs.

  python launch/recheck_health.py docs/sweeps/mt_k5_quick [RUN_DIR ...] [--write]

A run's health is computed once, at the end of training, from its
metrics.jsonl and the evaluated checkpoint's numbers in eval.json; when the
checks improve, runs made before say what the old checks found. This
recomputes it from the same two files (no model, no data: the same inputs as
evaluation.final_evaluation gives health.diagnose) and prints every run whose
status changes. With --write it replaces eval.json's "health" and keeps the
previous one as "health_as_trained"; re-aggregate the sweep afterwards
(`launch/sweep.py --out=SWEEP --aggregate_only`) for its tables. A finished
run whose eval.json or metrics.jsonl is missing or broken, or whose history
stops before the step the run reached (an emptied or cut metrics.jsonl:
checks on part of a history find fewer reasons), cannot be checked: it is
named on stderr, its health left as trained, and the others are still
checked; the exit status is then 1, as it is when no run has finished (nothing
was checked). Each argument is a sweep, a folder of runs, or one run
directory; one holding no run is an error (exit 2).
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from smsdd_jax import health, report, rundir, sweep_runs  # pylint: disable=wrong-import-position


def recheck(run_path: str) -> tuple[dict, dict] | None:
  """(eval.json, health recomputed) of a finished run; None if unfinished.
  Raises FileNotFoundError (no metrics.jsonl: its history is gone) or
  ValueError (a broken file), each naming the file."""
  eval_path = os.path.join(run_path, rundir.EVAL)
  if not os.path.isfile(eval_path):
    return None
  ev = rundir.read_json(eval_path, 'eval record')
  if not (isinstance(ev, dict) and isinstance(ev.get('step'), int) and all(
      isinstance(ev.get(split), dict) for split in ('val', 'test'))):
    raise ValueError(f'{eval_path}: no "step", "val" and "test" entries: not an eval '
                     'record of evaluation.final_evaluation')
  records = rundir.read_metrics(run_path)
  end = max([ev['step'], *rundir.finished_steps(os.path.join(run_path, rundir.CHECKPOINTS))])
  gap = health.history_gap(records, end)
  if gap:
    raise ValueError(f'{os.path.join(run_path, rundir.METRICS)}: {gap}; its history cannot '
                     'be checked (health left as trained)')
  return ev, health.diagnose(records, {'val': ev['val'], 'test': ev['test']}, ev['step'])


def runs_of(path: str) -> list[str]:
  """The run directories `path` names: itself if it is a run, else those of
  the sweep or folder of runs. Raises FileNotFoundError when there is none."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path} does not exist')
  if any(os.path.isfile(os.path.join(path, f)) for f in (rundir.EVAL, rundir.CONFIG)):
    return [path]
  found = sweep_runs.run_dirs(path) or sweep_runs.single_runs_below(path)
  if not found:
    raise FileNotFoundError(report.no_runs_reason(path).replace(' as --sweep', ''))
  return found


def write(run_path: str, ev: dict, new: dict) -> None:
  """Stores `new` as eval.json's health; the first verdict stays as health_as_trained."""
  ev.setdefault('health_as_trained', ev.get('health'))
  rundir.write_json(os.path.join(run_path, rundir.EVAL), {**ev, 'health': new})


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('sweeps', nargs='+', help='sweep directories (launch/sweep.py --out), '
                 'folders of runs, or run directories')
  p.add_argument('--write', action='store_true',
                 help='store the recomputed health in each changed eval.json')
  args = p.parse_args(argv)
  try:  # Every argument first: a wrong path checks nothing.
    paths = [run for sweep in args.sweeps for run in runs_of(sweep)]
  except FileNotFoundError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print('| run | status as trained | status now | reasons now |\n|---|---|---|---|')
  checked = changed = 0
  bad = []
  for path in paths:
    try:
      result = recheck(path)
    except (OSError, ValueError) as e:  # Said, and the others still checked.
      bad.append(path)
      print(f'cannot recheck {path}: {e}', file=sys.stderr)
      continue
    if result is None:
      continue
    checked += 1
    ev, new = result
    stored = ev.get('health') or {'status': 'unknown', 'reasons': []}
    if stored.get('status') == new['status'] and stored.get('reasons') == new['reasons']:
      continue
    changed += 1
    print(f"| {os.path.relpath(path)} | {stored.get('status')} | {new['status']} | "
          f"{'; '.join(new['reasons']) or '-'} |")
    if args.write:
      write(path, ev, new)
  print(f'\n{checked} finished runs checked, {changed} with a different health'
        + (' (written)' if args.write and changed else '')
        + (f'; {len(bad)} could not be read (named on stderr): {", ".join(bad)}'
           if bad else ''))
  if not checked and not bad:  # Nothing finished: nothing was checked, and that is no pass.
    print(f'error: no finished run (eval.json) to check in {", ".join(args.sweeps)}',
          file=sys.stderr)
    return 1
  return 1 if bad else 0


if __name__ == '__main__':
  sys.exit(main())
