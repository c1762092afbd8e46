"""predict's outputs say what made them and never land on an input or on
each other; an ensemble is one model of one dataset (issue 29)."""
import csv
import json
import os
import pathlib
import shutil

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smsdd_jax import checkpointing
from smsdd_jax import models
from smsdd_jax import predict
from smsdd_jax import rundir
from smsdd_jax import step as step_lib
from smsdd_jax.datasets import synthetic_screens

FRAME_SIZE = (270, 480)


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
  out = tmp_path_factory.mktemp('frames')
  paths = synthetic_screens.write_sample_frames(str(out), 3, frame_size=FRAME_SIZE)
  return out, paths


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _copy(run_dir, dest):
  shutil.copytree(run_dir, dest)
  return dest


def _predict(workdir, frames_dir, out, *extra):
  return predict.main([f'--workdir={workdir}', f'--input={frames_dir}',
                       f'--output={out}', *extra])


# ------------------------------------------------------------------ 5: NaN is no decision


def _set_head_bias_nan(workdir: pathlib.Path, subdir='checkpoints_best', step=2):
  """The checkpoint restored, its head bias set to NaN and saved back the way
  training saves (checkpointing.Checkpointer)."""
  config = rundir.run_config(rundir.read_config(str(workdir)))
  model = models.create(config.model)
  target = jax.eval_shape(lambda: step_lib.create_train_state(
      config, model, step_lib.make_optimizer(config.optimizer)))
  directory = workdir / subdir
  ckpt = checkpointing.Checkpointer(str(directory), max_to_keep=5)
  try:
    state = ckpt.restore(target, step)
  finally:
    ckpt.close()
  head = dict(state.params[models.HEAD_NAME])
  head['bias'] = jnp.full_like(head['bias'], jnp.nan)
  state = state.replace(params={**state.params, models.HEAD_NAME: head})
  shutil.rmtree(directory / str(step))
  ckpt = checkpointing.Checkpointer(str(directory), max_to_keep=5)
  try:
    ckpt.save(step, state)
  finally:
    ckpt.close()


def test_a_nan_score_is_an_error_row_never_good(trained_run, frames, tmp_path, capsys):
  workdir = _copy(trained_run, tmp_path / 'run')
  _set_head_bias_nan(workdir)
  out = tmp_path / 'p.csv'
  assert _predict(workdir, frames[0], out) == 1
  rows = _rows(out)
  assert len(rows) == 3
  for row in rows:
    assert (row['prob_defective'], row['decision']) == ('', '')
    assert 'non-finite score (nan)' in row['error']
  printed = capsys.readouterr().out
  assert 'summary: 0/3 scored' in printed and '3 failed' in printed


# ------------------------------------------------------------------ 7, 8, 9: outputs apart


def test_maps_into_the_input_folder_is_refused(trained_run, frames, tmp_path, capsys):
  inputs = tmp_path / 'in'
  inputs.mkdir()
  # PNG inputs: an overlay of in/a.png would be in/a.png itself.
  for i, p in enumerate(frames[1]):
    cv2.imwrite(str(inputs / f'f{i}.png'), cv2.imread(p))
  before = {p.name: p.read_bytes() for p in inputs.iterdir()}
  out = tmp_path / 'p.csv'
  for flag in ('--maps', '--save_rois'):
    for where in (inputs, tmp_path / 'link'):
      if where.name == 'link' and not where.exists():
        where.symlink_to(inputs)
      assert _predict(trained_run, inputs, out, f'{flag}={where}') == 2
      err = capsys.readouterr().err
      assert err.count('\n') == 1 and f'{flag}={where}' in err and 'input' in err, err
  # A folder above the inputs whose mirror lands on them: --input=in/f0.png,
  # --maps=in -> in/f0.png.
  assert _predict(trained_run, inputs / 'f0.png', out, f'--maps={inputs}') == 2
  assert 'would overwrite the input file' in capsys.readouterr().err
  assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before
  assert not out.exists()


@pytest.mark.parametrize('pair', [('--output', '--embeddings', 'same.csv'),
                                  ('--output', '--sheet', 'x.png'),
                                  ('--embeddings', '--sheet', 'x.png')])
def test_two_outputs_on_one_path_are_refused(trained_run, frames, tmp_path, capsys, pair):
  first, second, name = pair
  target = tmp_path / name
  link = tmp_path / f'link_{name}'
  link.symlink_to(target)  # The same file under another name.
  flags = {'--output': str(tmp_path / 'p.csv'), first: str(target), second: str(link)}
  args = [f'--workdir={trained_run}', f'--input={frames[0]}',
          *(f'{k}={v}' for k, v in flags.items())]
  assert predict.main(args) == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'would write the same file' in err, err
  assert first in err and second in err
  assert not target.exists() and not (tmp_path / 'p.csv').exists()


def test_an_output_on_an_input_file_is_refused(trained_run, frames, tmp_path, capsys):
  inputs = _copy(frames[0], tmp_path / 'in')
  image = sorted(p for p in inputs.rglob('*') if p.is_file())[0]
  before = image.read_bytes()
  for flag in ('--output', '--embeddings', '--sheet'):
    extra = [] if flag == '--output' else [f'--output={tmp_path / "p.csv"}']
    args = [f'--workdir={trained_run}', f'--input={inputs}', *extra, f'{flag}={image}']
    if flag == '--output':
      args.append(f'--output={image}')
    assert predict.main(args) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'would overwrite the input file' in err, err
    assert image.read_bytes() == before
  # A file among the PNGs --maps writes: also refused.
  assert predict.main([f'--workdir={trained_run}', f'--input={inputs}',
                       f'--output={tmp_path / "maps" / image.relative_to(inputs).with_suffix(".png")}',
                       f'--maps={tmp_path / "maps"}']) == 2
  assert 'would write the same file' in capsys.readouterr().err


# ------------------------------------------------------------------ 10: a FIFO stays a FIFO


def test_embeddings_to_a_fifo_are_written_into_it(trained_run, frames, tmp_path):
  fifo = tmp_path / 'emb.fifo'
  os.mkfifo(fifo)
  # A reader first (non-blocking open), so predict's open for writing does
  # not wait; the npz of three files fits the pipe's buffer.
  fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
  try:
    assert _predict(trained_run, frames[0], tmp_path / 'p.csv', f'--embeddings={fifo}') == 0
    assert fifo.is_fifo()
    chunks = []
    while True:
      try:
        chunk = os.read(fd, 1 << 16)
      except BlockingIOError:
        break
      if not chunk:
        break
      chunks.append(chunk)
  finally:
    os.close(fd)
  import io  # pylint: disable=import-outside-toplevel
  with np.load(io.BytesIO(b''.join(chunks))) as npz:
    assert len(npz['files']) == 3 and npz['embeddings'].shape[0] == 3


# ------------------------------------------------------------------ 11 and data: ensembles


def test_one_run_twice_through_a_symlink_is_refused(trained_run, frames, tmp_path, capsys):
  link = tmp_path / 'link'
  link.symlink_to(trained_run)
  out = tmp_path / 'p.csv'
  assert _predict(f'{trained_run}', frames[0], out, f'--workdir={link}') == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'listed twice' in err and str(link) in err, err
  assert not out.exists()


def test_an_ensemble_of_runs_of_different_data_is_refused(trained_run, frames, tmp_path,
                                                        capsys):
  other = _copy(trained_run, tmp_path / 'other')
  spec = json.loads((other / 'preprocessing.json').read_text())
  (other / 'preprocessing.json').write_text(json.dumps(
      {**spec, 'dataset': 'msd_screens/default', 'source_fingerprint': 'abc123'}))
  out = tmp_path / 'p.csv'
  assert _predict(trained_run, frames[0], out, f'--workdir={other}') == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and 'trained on different data' in err, err
  assert str(other) in err and 'msd_screens/default' in err and spec['dataset'] in err
  assert not out.exists()


# ------------------------------------------------------------------ ugly: sheet, notes, health


def test_a_sheet_without_an_image_extension_is_refused_before_work(trained_run, frames,
                                                                  tmp_path, capsys):
  out = tmp_path / 'p.csv'
  assert _predict(trained_run, frames[0], out, f'--sheet={tmp_path / "sheet"}') == 2
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and '--sheet=' in err and '.png' in err, err
  assert not out.exists()


def test_rows_record_precision_and_enlarged_inputs(trained_run, tmp_path, capsys):
  inputs = tmp_path / 'in'
  inputs.mkdir()
  sizes = {'tiny': (1, 1), 'small': (2, 3), 'strip': (1, 4000), 'fine': (110, 230)}
  rng = np.random.default_rng(0)
  for name, (h, w) in sizes.items():
    cv2.imwrite(str(inputs / f'{name}.png'), rng.integers(0, 255, (h, w, 3), np.uint8))
  out = tmp_path / 'p.csv'
  assert _predict(trained_run, inputs, out, '--roi=none') == 0
  rows = {pathlib.Path(r['file']).stem: r for r in _rows(out)}
  assert set(rows) == set(sizes)
  assert all(r['precision'] == 'float32' and r['error'] == '' for r in rows.values())
  assert rows['fine']['notes'] == ''
  assert rows['tiny']['notes'].startswith('enlarged 230.0x along a side')
  assert rows['small']['notes'].startswith('enlarged 76.7x')
  assert rows['strip']['notes'].startswith('enlarged 110.0x')
  assert 'note: 3 scored file(s) enlarged' in capsys.readouterr().out
  assert list(predict.CSV_COLUMNS[:9]) == ['file', 'prob_defective', 'decision',
                                           'threshold', 'roi_method', 'corners', 'error',
                                           'tta', 'runs']  # Old columns keep their places.


def test_the_model_line_shows_health_and_warns_unless_ok(trained_run, frames, tmp_path,
                                                       capsys):
  workdir = _copy(trained_run, tmp_path / 'run')
  ev = json.loads((workdir / 'eval.json').read_text())
  out = tmp_path / 'p.csv'
  assert _predict(workdir, frames[0], out) == 0
  captured = capsys.readouterr()
  status = ev['health']['status']
  assert f'health {status}' in captured.out.splitlines()[0]
  assert ('warning:' in captured.err) == (status != 'ok')
  ev['health'] = {'status': 'suspect', 'reasons': ['probabilities span only 0.02']}
  (workdir / 'eval.json').write_text(json.dumps(ev))
  assert _predict(workdir, frames[0], out) == 0
  captured = capsys.readouterr()
  assert 'health suspect' in captured.out.splitlines()[0]
  [warning] = [line for line in captured.err.splitlines() if line.startswith('warning:')]
  assert 'health is suspect' in warning
  assert 'probabilities span only 0.02' in warning
