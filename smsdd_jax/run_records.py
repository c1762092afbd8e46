"""What a training run records in its workdir, and what a resume checks.

  config.json         the config as recorded, package versions, git commit,
                      loss terms (write_run_info); on a resume that changed a
                      field, from which step each new value holds
  preprocessing.json  how the build turned files into inputs, which build
                      (preprocessing_record)
  data_stats.json     the input normalisation, reused on a resume (data_stats)

A rerun on a workdir with checkpoints (steps_taken) resumes them: it must
read the same data (check_same_data) and change only the config fields that
leave the steps taken as they were (check_resume, _RESUME_FREE).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from importlib import metadata

import jax

from smsdd_jax import dataset_export
from smsdd_jax import input_pipeline
from smsdd_jax import losses
from smsdd_jax import pretrained
from smsdd_jax import rundir
from smsdd_jax.rundir import write_json


logging = logging.getLogger('smsdd_jax')


def write_run_info(config, workdir: str, record: dict | None = None,
                   resumed: list | None = None) -> None:
  """config.json with the package versions and git commit beside it.
  record: the config as the run records it (train.Run.record; default the config
  as given); resumed: the config changes made on resuming (train.Run.resumed)."""
  packages = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'numpy',
              'tensorflow-cpu', 'tensorflow', 'tensorflow-datasets', 'ml-collections',
              'opencv-python-headless')
  versions = {}
  for p in packages:
    try:
      versions[p] = metadata.version(p)
    except metadata.PackageNotFoundError:
      pass
  info = {'config': record or config.to_dict(), 'versions': versions,
          'python': sys.version.split()[0], 'git_commit': git_commit(),
          'devices': [str(d) for d in jax.devices()],
          # Weights alone do not say which code ran: a term may come from a config file.
          'loss_terms': losses.describe(config.loss),
          # Their files' text, which inference.load_run runs where a term is not registered.
          'loss_term_sources': losses.term_sources(config.loss)}
  if config.model.init:  # The input convention the pretrained weights fixed.
    info['init_convention'] = pretrained.stats(config.model)['convention']
  if resumed:  # From which step on each changed value of "config" holds.
    info['resumed'] = resumed
  if jax.process_index() == 0:
    write_json(os.path.join(workdir, rundir.CONFIG), info)


def git_commit() -> str:
  """HEAD of the checkout this package runs from ('unknown' outside one)."""
  try:
    return subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def preprocessing_record(builder, data: dict) -> dict:
  """preprocessing.json: how the build turned files into inputs (what
  predict must do to a new file), and which build it was (on an export,
  also the export's sha256 and path). data: config.data as recorded."""
  md = builder.info.metadata or {}
  spec = md.get('preprocessing') or {'roi': 'hough'}  # Synthetic frames: screen search.
  card = md.get('card') or {}
  record = {**spec, 'dataset': f'{builder.name}/{builder.builder_config.name}',
            'version': str(builder.version), 'manual_dir': data.get('manual_dir', ''),
            'source_fingerprint': card.get('source', {}).get('fingerprint', '')}
  if isinstance(builder, dataset_export.ExportedDataset):
    record.update(export_sha256=builder.meta['sha256'],
                  export_path=os.path.abspath(builder.path))
  return record


# preprocessing.json entries that say where the data lay, not what it was.
_LOCATIONS = ('manual_dir', 'export_path')


def check_same_data(workdir: str, record: dict, taken: int) -> None:
  """A resumed run (`taken` steps in checkpoints) must read the data its
  steps were taken on: every entry of its preprocessing.json but the
  locations (the build, its version, source fingerprint, preprocessing, the
  export's sha256) must be what config.data reads now. An entry either side
  lacks (a run older than it) is not compared."""
  path = os.path.join(workdir, rundir.PREPROCESSING)
  if not taken or not os.path.isfile(path):
    return
  old = rundir.read_json(path, 'preprocessing record')
  if not isinstance(old, dict):
    raise ValueError(f'{path}: not a preprocessing record; pass another --workdir')
  plain = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731  Tuples as lists.
  diffs = [f'{key} {old[key]!r} vs {value!r}' for key, value in record.items()
           if key not in _LOCATIONS and old.get(key) not in (None, '')
           and value not in (None, '') and plain(old[key]) != plain(value)]
  if diffs:
    raise ValueError(
        f'workdir {workdir} was trained ({taken} steps) on other data than config.data '
        f'reads now: {"; ".join(diffs)} (its {rundir.PREPROCESSING} vs now): rerun with '
        'the data it was trained on, or pass another --workdir')


# Config fields a resume may change: each leaves what the steps already
# taken computed, and what they mean, as it was. Any other change (loss,
# optimiser, model, data, seed, batch, ...) is refused; num_epochs alone is
# allowed under conditions (check_resume). Every change is recorded in
# config.json's "resumed" with the step from which it holds.
_RESUME_FREE = frozenset({
    'log_every_steps',  # How often train metrics are written.
    'eval_batch_size',  # Eval batches are padded and masked: the same per-example outputs.
    'checkpoint.every_steps', 'checkpoint.max_to_keep',  # Which states are kept.
    'model.conv_impl',  # Speed only: every implementation computes the same function.
    'data.cache',  # Memory only.
    # Where the data lies; that it is the same data is checked (check_same_data).
    'data.data_dir', 'data.manual_dir', 'data.export_path',
    # The final evaluation: redone whole after the last step, on the run's states.
    'eval.threshold_rule', 'eval.max_escape_rate', 'eval.checkpoint',
})


def steps_taken(workdir: str) -> int:
  """The last step of any finished checkpoint in workdir (0: none)."""
  return max(rundir.finished_steps(os.path.join(workdir, rundir.CHECKPOINTS)) +
             rundir.finished_steps(os.path.join(workdir, rundir.CHECKPOINTS_BEST)),
             default=0)


def _default_config() -> dict | None:
  """configs/default.py's config as a dict (the value of a field a saved
  config predates), or None where configs/ cannot be imported."""
  try:
    from configs import default  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return default.get_config().to_dict()


def recorded_config(config, builder) -> dict:
  """The config as config.json records it (input_pipeline.recorded_data)."""
  record = config.to_dict()
  record['data'] = input_pipeline.recorded_data(record['data'], builder)
  return record


def check_resume(workdir: str, record: dict, taken: int, steps_per_epoch: int
                  ) -> tuple[dict, list]:
  """On a resume (`taken` steps in checkpoints), refuses a config that
  changes what those steps meant (ValueError naming the fields). A longer
  or shorter schedule (num_epochs) is allowed while it does not end before
  the steps taken and the learning rate does not depend on the run's length
  (schedule 'constant'): the resumed run is then the run a fresh one with
  the new value would be. Returns (the changes, {field: [was, now]}; the
  saved config.json's earlier "resumed" entries)."""
  path = os.path.join(workdir, rundir.CONFIG)
  if not taken or not os.path.isfile(path):
    return {}, []
  info = rundir.read_json(path, 'run config')
  if not isinstance(info, dict) or not isinstance(info.get('config'), dict):
    raise ValueError(f'run config {path} has no "config" entry; pass another --workdir')
  saved = json.loads(json.dumps(info['config']))
  if isinstance(saved.get('data'), dict) and saved['data'].get('source') == 'export':
    # Fields a run before recorded_data left empty: the export's, as now.
    saved['data'] = {**saved['data'], **{
        k: v for k, v in record['data'].items()
        if k in ('builder_config', 'manual_dir') and not saved['data'].get(k)}}
  changes = rundir.config_changes(saved, record, _default_config())
  refused = {k: v for k, v in changes.items() if k not in _RESUME_FREE | {'num_epochs'}}
  where = f'workdir {workdir} holds a run trained {taken} steps'
  way_out = 'rerun with the saved values, or pass another --workdir'
  if refused:
    fields = ', '.join(f'{k} {_shown(was)} -> {_shown(now)}'
                       for k, (was, now) in refused.items())
    raise ValueError(f'{where} with another config ({path}): {fields}; a resume must not '
                     f'change what those steps meant: {way_out}')
  if 'num_epochs' in changes:
    was, now = changes['num_epochs']
    schedule = record['optimizer']['schedule']
    if schedule != 'constant':
      raise ValueError(f'{where}: config.num_epochs {was} -> {now}: with '
                       f'optimizer.schedule={schedule!r} the learning rate of those steps '
                       f"depends on the run's length: {way_out}")
    if now * steps_per_epoch < taken:
      raise ValueError(f'{where}: config.num_epochs {was} -> {now} ends at step '
                       f'{now * steps_per_epoch}, before them: {way_out}')
  earlier = info.get('resumed')
  return changes, list(earlier) if isinstance(earlier, list) else []


def _shown(value) -> str:
  return 'unset' if value is None else repr(value)


def data_stats(builder, config, workdir: str) -> dict:
  """Normalisation stats, saved beside the checkpoints for inference; a
  resumed run reuses the saved ones. Pretrained weights (config.model.init)
  fix them to the convention they were trained with."""
  path = os.path.join(workdir, rundir.DATA_STATS)
  if os.path.exists(path):
    return rundir.read_json(path, 'normalisation stats')
  if config.model.init:  # Also refuses a file that does not fit the model.
    stats = pretrained.stats(config.model)
    if config.data.normalize != 'fixed':
      logging.warning('config.data.normalize=%r ignored: %s weights expect their own '
                      'normalisation', config.data.normalize, stats['convention'])
    record = {**stats, 'normalize': f'pretrained_{stats["convention"]}',
              'init': config.model.init}
  else:
    stats = input_pipeline.compute_stats(builder, config.data)
    record = {**stats, 'normalize': config.data.normalize}
  if jax.process_index() == 0:
    write_json(path, record)
  return stats

