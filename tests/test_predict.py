"""Inference from a real (tiny) training run: the Predictor and the predict CLI."""
import csv
import functools
import json
import os
import pathlib
import shutil
import stat
import struct
import subprocess
import sys

import cv2
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from smsdd_jax import inference
from smsdd_jax import input_pipeline
from smsdd_jax import models
from smsdd_jax import predict
from smsdd_jax import preprocess
from smsdd_jax import roi
from smsdd_jax.datasets import synthetic_screens

REPO = pathlib.Path(__file__).resolve().parents[1]
FRAME_SIZE = (270, 480)  # Small frames: ROI search takes ~10 ms each.


@pytest.fixture(scope='module')
def run_dir(trained_run):
  return trained_run


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
  out = tmp_path_factory.mktemp('frames')
  paths = synthetic_screens.write_sample_frames(str(out), 6, frame_size=FRAME_SIZE)
  return out, paths


def _raw_state(workdir, subdir, step):
  """The checkpoint as a plain dict, read with Orbax alone."""
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(os.path.join(workdir, subdir, str(step), 'default'))


_DIRECT_BATCH = 16  # Padded, so the test's own forward compiles once.


@functools.lru_cache(maxsize=None)
def _direct_forward(model_config_json):
  model = models.create(ml_collections.ConfigDict(json.loads(model_config_json)))
  return jax.jit(lambda params, state, x: jax.nn.softmax(models.forward(
      params, x, model=model, model_state=state)[0])[:, 1])


def _direct_probs(workdir, rois_rgb, subdir='checkpoints_best', step=2):
  """The workdir contract by hand: normalize_np + models.forward + softmax."""
  info = json.load(open(os.path.join(workdir, 'config.json')))
  stats = json.load(open(os.path.join(workdir, 'data_stats.json')))
  raw = _raw_state(workdir, subdir, step)
  forward = _direct_forward(json.dumps(info['config']['model'], sort_keys=True))
  x = input_pipeline.normalize_np(np.stack(rois_rgb), stats)
  out = []
  for i in range(0, len(x), _DIRECT_BATCH):
    chunk = x[i:i + _DIRECT_BATCH]
    padded = np.zeros((_DIRECT_BATCH, *x.shape[1:]), np.float32)
    padded[:len(chunk)] = chunk
    out.append(np.asarray(forward(raw['params'], raw['model_state'], padded))[:len(chunk)])
  return np.concatenate(out)


def _direct_roi(path):
  image = cv2.imread(str(path))
  corners = roi.find_screen(image)
  return cv2.cvtColor(roi.rectify(image, corners), cv2.COLOR_BGR2RGB), corners


def _rows(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def _cli(*args, timeout=120):
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  return subprocess.run([sys.executable, '-m', 'smsdd_jax.predict', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, env=env)


def _jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
  """A JPEG whose frame header claims another size (a decompression bomb's
  header on a small file)."""
  b, i = bytearray(data), 2
  while True:
    assert b[i] == 0xFF
    marker, length = b[i + 1], struct.unpack('>H', b[i + 2:i + 4])[0]
    if marker in (0xC0, 0xC1, 0xC2):
      struct.pack_into('>HH', b, i + 5, height, width)
      return bytes(b)
    i += 2 + length


# ------------------------------------------------------------------ the CLI


def test_predict_folder_matches_direct_scoring(run_dir, frames, tmp_path, capsys):
  root, paths = frames
  out = tmp_path / 'preds.csv'
  rc = predict.main([f'--workdir={run_dir}', f'--input={root}', f'--output={out}',
                     f'--save_rois={tmp_path / "rois"}', f'--sheet={tmp_path / "s.png"}',
                     '--batch_size=4'])
  printed = capsys.readouterr()
  assert rc == 0, printed
  rows = _rows(out)
  assert list(rows[0]) == list(predict.CSV_COLUMNS)
  assert [r['file'] for r in rows] == sorted(str(p) for p in paths)
  direct_rois = [_direct_roi(r['file']) for r in rows]
  want = _direct_probs(run_dir, [d[0] for d in direct_rois])
  got = np.array([float(r['prob_defective']) for r in rows])
  assert np.all((got >= 0) & (got <= 1))
  np.testing.assert_allclose(got, want, atol=1e-5)
  for r, (image, corners) in zip(rows, direct_rois):
    assert r['error'] == '' and r['threshold'] == '0.5'
    assert r['decision'] == ('defective' if float(r['prob_defective']) >= 0.5 else 'good')
    assert r['roi_method'] in ('hough', 'contour')
    xy = np.array([p.split(',') for p in r['corners'].split()], np.float64)
    np.testing.assert_allclose(xy, corners, atol=0.051)  # Written with 1 decimal.
    rel = pathlib.Path(r['file']).relative_to(root).with_suffix('.png')
    saved = cv2.cvtColor(cv2.imread(str(tmp_path / 'rois' / rel)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(saved, image)
  assert cv2.imread(str(tmp_path / 's.png')) is not None
  assert 'threshold: 0.5 (' in printed.out  # Chosen on val by 'argmax' at training.
  assert 'best checkpoint' in printed.out and 'step 2' in printed.out
  assert '6/6 frames' in printed.err and 'frames/s' in printed.err
  assert 'summary: 6/6 scored' in printed.out


def test_bad_inputs_become_error_rows_and_exit_1(run_dir, frames, tmp_path):
  _, paths = frames
  src = tmp_path / 'in'
  src.mkdir()
  for p in paths[:2]:
    shutil.copy(p, src)
  data = pathlib.Path(paths[0]).read_bytes()
  (src / 'truncated.jpg').write_bytes(data[:len(data) * 6 // 10])
  (src / 'notes.jpg').write_text('this is not an image\n')
  cv2.imwrite(str(src / 'blank.jpg'), np.full((*FRAME_SIZE, 3), 70, np.uint8))
  (src / 'bomb.jpg').write_bytes(_jpeg_with_size(data, 3000, 2000))  # 6 MP header.
  cv2.imwrite(str(src / 'big.jpg'), np.zeros((1500, 2000, 3), np.uint8))  # 3 MP.
  out = tmp_path / 'preds.csv'
  proc = _cli(f'--workdir={run_dir}', f'--input={src}', f'--output={out}',
              '--max_pixels=2000000')
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert 'Traceback' not in proc.stderr
  rows = {pathlib.Path(r['file']).name: r for r in _rows(out)}
  assert len(rows) == 7
  expected = {'truncated.jpg': 'truncated JPEG', 'notes.jpg': 'not an image',
              'blank.jpg': 'no screen found', 'bomb.jpg': 'from the JPEG header',
              'big.jpg': 'from the JPEG header'}
  for name, reason in expected.items():
    assert reason in rows[name]['error'], (name, rows[name])
    assert rows[name]['prob_defective'] == '' and rows[name]['decision'] == ''
  assert 'too large: 3000x2000' in rows['bomb.jpg']['error']
  for p in paths[:2]:
    r = rows[pathlib.Path(p).name]
    assert r['error'] == '' and 0.0 <= float(r['prob_defective']) <= 1.0
  assert 'summary: 2/7 scored' in proc.stdout and '5 failed' in proc.stdout


def _odd_entries(src):
  """A dangling link, a link loop and a FIFO, each named like an image."""
  os.symlink(src / 'missing.jpg', src / 'gone.jpg')
  os.symlink('loop.png', src / 'loop.png')
  os.mkfifo(src / 'pipe.jpg')  # Opening it to read would block forever.
  (src / 'sub.jpg').mkdir()  # A folder is searched, never a row.


def test_inputs_that_are_not_regular_files_get_error_rows(run_dir, frames, tmp_path, capsys):
  _, paths = frames
  src = tmp_path / 'in'
  src.mkdir()
  shutil.copy(paths[0], src / 'a_good.jpg')
  _odd_entries(src)
  shutil.copy(paths[1], src / 'sub.jpg' / 'z_good.jpg')
  for spec in (str(src), f'{src}/**/*.*'):
    out = tmp_path / 'preds.csv'
    rc = predict.main([f'--workdir={run_dir}', f'--input={spec}', f'--output={out}',
                       '--batch_size=2'])
    printed = capsys.readouterr()
    assert rc == 1, printed
    rows = {pathlib.Path(r['file']).name: r for r in _rows(out)}
    assert sorted(rows) == ['a_good.jpg', 'gone.jpg', 'loop.png', 'pipe.jpg', 'z_good.jpg']
    assert rows['gone.jpg']['error'] == f'broken symbolic link -> {src / "missing.jpg"}'
    assert rows['loop.png']['error'] == 'symbolic link loop -> loop.png'
    assert rows['pipe.jpg']['error'] == 'not a regular file: a FIFO (named pipe)'
    for name in ('a_good.jpg', 'z_good.jpg'):
      assert rows[name]['error'] == '' and 0 <= float(rows[name]['prob_defective']) <= 1
    assert 'summary: 2/5 scored' in printed.out and '3 failed' in printed.out
    assert f'failed: {src / "gone.jpg"}: broken symbolic link' in printed.out
    assert 'note:' not in printed.out
  out = tmp_path / 'one.csv'
  assert predict.main([f'--workdir={run_dir}', f'--input={src / "gone.jpg"}',
                       f'--output={out}']) == 1
  assert [r['error'] for r in _rows(out)] == [f'broken symbolic link -> {src / "missing.jpg"}']
  assert 'summary: 0/1 scored' in capsys.readouterr().out


def test_list_inputs_keeps_every_entry_but_folders(tmp_path):
  (tmp_path / 'a.jpg').write_bytes(b'x')
  (tmp_path / 'notes.txt').write_text('x')
  _odd_entries(tmp_path)
  names = ['a.jpg', 'gone.jpg', 'loop.png', 'pipe.jpg']
  assert inference.list_inputs(str(tmp_path)) == [str(tmp_path / n) for n in names]
  assert inference.list_inputs(f'{tmp_path}/*') == sorted(
      str(tmp_path / n) for n in names + ['notes.txt'])
  assert inference.list_inputs(str(tmp_path / 'gone.jpg')) == [str(tmp_path / 'gone.jpg')]
  assert inference.list_inputs(str(tmp_path / 'missing.jpg')) == []
  assert inference.input_problem(str(tmp_path / 'a.jpg')) is None
  assert inference.input_problem(str(tmp_path / 'sub.jpg')) == 'not a regular file: a directory'


def test_roi_none_scores_ready_rois(run_dir, frames, tmp_path):
  _, paths = frames
  src = tmp_path / 'rois'
  src.mkdir()
  rois = [_direct_roi(p)[0] for p in paths[:3]]
  for k, image in enumerate(rois):
    cv2.imwrite(str(src / f'roi_{k}.png'), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
  big = cv2.resize(cv2.cvtColor(rois[0], cv2.COLOR_RGB2BGR), (460, 220))
  cv2.imwrite(str(src / 'roi_big.png'), big)
  out = tmp_path / 'preds.csv'
  assert predict.main([f'--workdir={run_dir}', f'--input={src}/*.png', f'--output={out}',
                       '--roi=none']) == 0
  rows = _rows(out)
  assert [pathlib.Path(r['file']).name for r in rows] == [
      'roi_0.png', 'roi_1.png', 'roi_2.png', 'roi_big.png']
  assert all(r['roi_method'] == 'none' and r['corners'] == '' for r in rows)
  resized = cv2.cvtColor(cv2.resize(big, (230, 110), interpolation=cv2.INTER_AREA),
                         cv2.COLOR_BGR2RGB)
  want = _direct_probs(run_dir, rois + [resized])
  np.testing.assert_allclose([float(r['prob_defective']) for r in rows], want, atol=1e-5)


def test_missing_workdir_is_a_one_line_usage_error(tmp_path):
  proc = _cli(f'--workdir={tmp_path / "nope"}', f'--input={tmp_path}',
              f'--output={tmp_path / "p.csv"}', timeout=60)
  assert proc.returncode == 2
  assert proc.stderr.strip().count('\n') == 0, proc.stderr
  assert proc.stderr.startswith('error: ') and 'nope' in proc.stderr
  assert 'does not exist' in proc.stderr


@pytest.mark.parametrize('contents', ['empty', 'no_checkpoints'])
def test_workdir_without_checkpoints_is_a_usage_error(run_dir, tmp_path, contents):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  if contents == 'no_checkpoints':
    for name in ('config.json', 'data_stats.json'):
      shutil.copy(os.path.join(run_dir, name), workdir)
    (workdir / 'checkpoints').mkdir()
  proc = _cli(f'--workdir={workdir}', f'--input={tmp_path}',
              f'--output={tmp_path / "p.csv"}', timeout=60)
  assert proc.returncode == 2
  assert proc.stderr.strip().count('\n') == 0 and 'Traceback' not in proc.stderr
  assert str(workdir) in proc.stderr
  assert ('is empty' if contents == 'empty' else 'no checkpoints') in proc.stderr
  assert not (tmp_path / 'p.csv').exists()


def test_step_selects_a_periodic_checkpoint(run_dir, frames, tmp_path, capsys):
  root, paths = frames
  out = tmp_path / 'preds.csv'
  assert predict.main([f'--workdir={run_dir}', f'--input={paths[0]}', f'--output={out}',
                       '--step=1']) == 0
  assert 'periodic checkpoint step 1' in capsys.readouterr().out
  image = _direct_roi(paths[0])[0]
  got = float(_rows(out)[0]['prob_defective'])
  assert got == pytest.approx(_direct_probs(run_dir, [image], 'checkpoints', 1)[0],
                              abs=1e-5)
  assert abs(got - _direct_probs(run_dir, [image])[0]) > 1e-5  # Not the best (step 2).
  assert predict.main([f'--workdir={run_dir}', f'--input={root}', f'--output={out}',
                       '--step=7']) == 2
  err = capsys.readouterr().err
  assert 'no checkpoint for step 7' in err and '[1, 2]' in err


def test_no_best_falls_back_to_latest_periodic_and_threshold_file(run_dir, frames, tmp_path,
                                                                  capsys):
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir, ignore=shutil.ignore_patterns('checkpoints_best',
                                                                   'best.json'))
  predictor = inference.Predictor(str(workdir))
  assert (predictor.run.source, predictor.run.step) == ('latest periodic', 2)
  assert 'no best checkpoint' in predictor.run.note
  (workdir / 'threshold.json').write_text(json.dumps({'threshold': 0.5015}))
  out = tmp_path / 'preds.csv'
  assert predict.main([f'--workdir={workdir}', f'--input={frames[0]}',
                       f'--output={out}']) == 0
  printed = capsys.readouterr().out
  assert 'latest periodic checkpoint step 2' in printed and 'default' not in printed
  for r in _rows(out):
    assert r['threshold'] == '0.5015'
    assert r['decision'] == ('defective' if float(r['prob_defective']) >= 0.5015 else 'good')
  (workdir / 'threshold.json').write_text('{"threshold": 2}')
  with pytest.raises(ValueError, match='threshold.json.*not in'):
    inference.resolve_run(str(workdir))


# ------------------------------------------------------------------ the pieces


def test_predictor_compiles_once_and_checks_shapes(run_dir):
  predictor = inference.Predictor(run_dir, batch_size=4)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (9, 110, 230, 3), dtype=np.uint8)
  probs = predictor.predict_proba(images)
  assert probs.shape == (9,) and predictor.traces == 1
  np.testing.assert_allclose(predictor.predict_proba(images[:3]), probs[:3], atol=1e-6)
  np.testing.assert_allclose(probs, _direct_probs(run_dir, list(images)), atol=1e-5)
  assert predictor.traces == 1
  with pytest.raises(ValueError, match='shape'):
    predictor.predict_proba(images[:, :100])


def test_bfloat16_scores_stay_near_float32_and_say_so(run_dir):
  """--precision=bfloat16: the convolutions in bfloat16 where the run uses
  oneDNN (the scores move a little), float32 otherwise (identical)."""
  images = np.random.default_rng(3).integers(0, 256, (6, 110, 230, 3), dtype=np.uint8)
  want = inference.Predictor(run_dir, batch_size=4).predict_proba(images)
  predictor = inference.Predictor(run_dir, batch_size=4, precision='bfloat16')
  got = predictor.predict_proba(images)
  np.testing.assert_allclose(got, want, atol=2e-2)
  packed = bool(predictor._score_model.packed)  # pylint: disable=protected-access
  assert ('scored in bfloat16' in predictor.describe()) == packed
  assert ('precision bfloat16 not available here' in predictor.describe()) != packed
  with pytest.raises(ValueError, match="precision='float16'"):
    inference.Predictor(run_dir, precision='float16')


def test_precision_flag_reaches_the_scores(run_dir, frames, tmp_path, capsys):
  out = tmp_path / 'preds_bf16.csv'
  assert predict.main([f'--workdir={run_dir}', f'--input={frames[1][0]}', f'--output={out}',
                       '--precision=bfloat16']) == 0
  printed = capsys.readouterr().out
  assert 'bfloat16' in printed.splitlines()[0]  # The model line says how it scores.
  [row] = _rows(out)
  want = _direct_probs(run_dir, [_direct_roi(frames[1][0])[0]])[0]
  assert float(row['prob_defective']) == pytest.approx(want, abs=2e-2)


def test_resolve_run_errors_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist'):
    inference.resolve_run(str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match=f'{tmp_path}.* is empty'):
    inference.resolve_run(str(tmp_path))
  assert inference.FIXED_STATS == input_pipeline.FIXED_STATS


def test_huge_images_are_refused_from_the_header(frames, tmp_path, monkeypatch):
  data = pathlib.Path(frames[1][0]).read_bytes()
  bomb = tmp_path / 'bomb.jpg'
  bomb.write_bytes(_jpeg_with_size(data, 20000, 20000))  # 1.2 GB if decoded.
  ok, png = cv2.imencode('.png', np.zeros((10, 10, 3), np.uint8))
  png = bytearray(png.tobytes())
  struct.pack_into('>II', png, 16, 30000, 30000)
  (tmp_path / 'bomb.png').write_bytes(bytes(png))
  cv2.imwrite(str(tmp_path / 'small.bmp'), np.zeros((20, 30, 3), np.uint8))
  assert preprocess.image_header(pathlib.Path(frames[1][0]).read_bytes()) == ('jpeg', 480, 270)
  assert preprocess.image_header((tmp_path / "small.bmp").read_bytes()) == ('bmp', 30, 20)

  def no_decoding(*args, **kwargs):
    raise AssertionError('decoded a refused image')
  monkeypatch.setattr(inference.cv2, 'imdecode', no_decoding)
  for name, fmt in (('bomb.jpg', 'JPEG'), ('bomb.png', 'PNG')):
    with pytest.raises(inference.FrameError, match=f'too large.*from the {fmt} header'):
      inference.read_image(str(tmp_path / name))


def test_truncation_checks_accept_whole_files():
  image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
  for params in ([], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]):
    data = cv2.imencode('.jpg', image, params)[1].tobytes()
    assert preprocess._jpeg_complete(data)  # pylint: disable=protected-access
    for cut in (len(data) - 1, len(data) // 2, 700):
      assert not preprocess._jpeg_complete(data[:cut])  # pylint: disable=protected-access
  data = cv2.imencode('.png', image)[1].tobytes()
  assert preprocess._png_complete(data)  # pylint: disable=protected-access
  assert not preprocess._png_complete(data[:-5])  # pylint: disable=protected-access


# ------------------------------------------------------------------ real frames


def test_predict_on_real_frames(run_dir, shared_data, tmp_path):
  screens = shared_data / 'msd_screens'
  if not screens.is_dir():
    pytest.skip(f'{screens} not found')
  picked = (sorted((screens / 'good').glob('*.jpg'))[:5] +
            sorted((screens / 'defective').glob('*.jpg'))[:5])
  src = tmp_path / 'real'
  src.mkdir()
  for p in picked:
    os.symlink(p, src / p.name)
  data = picked[0].read_bytes()
  (src / 'zz_corrupted.jpg').write_bytes(data[:len(data) // 3])
  out = tmp_path / 'preds.csv'
  rc = predict.main([f'--workdir={run_dir}', f'--input={src}', f'--output={out}'])
  rows = {pathlib.Path(r['file']).name: r for r in _rows(out)}
  assert len(rows) == 11
  assert 'truncated JPEG' in rows['zz_corrupted.jpg']['error']
  assert rc == 1
  for p in picked:
    r = rows[p.name]
    # A frame is scored, or its screen was not found; nothing else may fail.
    assert (r['error'] == '' and 0 <= float(r['prob_defective']) <= 1) or \
        r['error'].startswith('no screen found'), r


def test_checkpoint_of_another_model_is_a_usage_error(run_dir, frames, tmp_path, capsys):
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir)
  info = json.loads((workdir / 'config.json').read_text())
  info['config']['model']['width_mult'] = 1 / 8
  (workdir / 'config.json').write_text(json.dumps(info))
  assert predict.main([f'--workdir={workdir}', f'--input={frames[0]}',
                       f'--output={tmp_path / "p.csv"}']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: checkpoint ') and 'does not match' in err
  assert err.count('\n') == 1


# ------------------------------------------------------------------ nothing overwritten


def _truncate_largest_data_file(step_dir):
  files = [p for p in pathlib.Path(step_dir).rglob('*') if p.parent.name == 'd']
  data = max(files, key=lambda p: p.stat().st_size)
  os.truncate(data, data.stat().st_size // 2)


def test_an_unreadable_checkpoint_leaves_the_output_as_it_was(run_dir, frames, tmp_path,
                                                              capsys):
  workdir = tmp_path / 'run'
  shutil.copytree(run_dir, workdir)
  _truncate_largest_data_file(workdir / 'checkpoints_best' / '2')
  out = tmp_path / 'preds.csv'
  out.write_text('file,prob_defective\nold.jpg,0.25\n')
  before = out.read_bytes()
  args = [f'--workdir={workdir}', f'--input={frames[0]}', f'--output={out}']
  assert predict.main(args) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: checkpoint {workdir / "checkpoints_best" / "2"} is '
                        'unreadable: ') and err.count('\n') == 1, err
  assert 'choose another with --step=N: steps [1, 2]' in err  # Periodic 2 is whole.
  assert out.read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ['preds.csv', 'run']  # No temporary left.
  assert predict.main(args + ['--step=1']) == 0  # The way out; a whole new file.
  rows = _rows(out)
  assert len(rows) == 6 and all(r['runs'] == f'{workdir}@1' for r in rows)
  assert sorted(os.listdir(tmp_path)) == ['preds.csv', 'run']
  (workdir / 'checkpoints_best' / '2' / 'default' / '_METADATA').write_text('')
  with pytest.raises(ValueError, match=r'checkpoints_best/2 is unreadable: '
                                       r'default/_METADATA is empty; choose another'):
    inference.Predictor(str(workdir))


def test_an_output_that_cannot_take_the_rows_is_a_usage_error(run_dir, frames, capsys):
  if not os.path.exists('/dev/full'):
    pytest.skip('no /dev/full here')
  assert predict.main([f'--workdir={run_dir}', f'--input={frames[1][0]}',
                       '--output=/dev/full']) == 2
  err = capsys.readouterr().err
  err = ''.join(line for line in err.splitlines(True)  # The tiny run's health warning.
                if not line.startswith('warning: run '))
  assert err == 'error: cannot write --output /dev/full: No space left on device\n'
  assert stat.S_ISCHR(os.stat('/dev/full').st_mode)  # Written to, never replaced.


# ------------------------------------------------------------------ flips and ensembles


def test_tta_flips_averages_the_image_and_its_flips_in_one_batch(run_dir):
  predictor = inference.Predictor(run_dir, batch_size=4, tta='flips')
  images = np.random.default_rng(1).integers(0, 256, (5, 110, 230, 3), dtype=np.uint8)
  got = predictor.predict_proba(images)
  assert predictor.traces == 1  # Three views of each batch, one compiled call.
  views = [images, images[:, :, ::-1], images[:, ::-1]]
  direct = [_direct_probs(run_dir, list(v)) for v in views]
  np.testing.assert_allclose(got, np.mean(direct, axis=0), atol=1e-5)
  assert np.abs(direct[0] - got).max() > 1e-6  # The flips count.
  with pytest.raises(ValueError, match="tta='rot'"):
    inference.Predictor(run_dir, tta='rot')


def _run_at_step_1(run_dir, path, threshold):
  """Another run: the same one's periodic step 1 alone, its own threshold."""
  shutil.copytree(run_dir, path, ignore=shutil.ignore_patterns('checkpoints_best',
                                                               'best.json'))
  shutil.rmtree(path / 'checkpoints' / '2')
  (path / 'threshold.json').write_text(json.dumps({'threshold': threshold}))
  return str(path)


def test_an_ensemble_averages_the_runs_and_their_thresholds(run_dir, frames, tmp_path,
                                                           capsys):
  other = _run_at_step_1(run_dir, tmp_path / 'other', 0.6)
  images = np.random.default_rng(2).integers(0, 256, (3, 110, 230, 3), dtype=np.uint8)
  want = (_direct_probs(run_dir, list(images)) +
          _direct_probs(run_dir, list(images), 'checkpoints', 1)) / 2
  np.testing.assert_allclose(inference.ensemble_probabilities([run_dir, other], images),
                             want, atol=1e-5)
  out = tmp_path / 'preds.csv'
  assert predict.main([f'--workdir={run_dir},{other}', f'--input={frames[1][0]}',
                       f'--output={out}', '--tta=flips']) == 0
  printed = capsys.readouterr().out
  assert 'ensemble of 2 runs' in printed
  assert "threshold: 0.55 (mean of the runs' thresholds 0.5, 0.6)" in printed
  [row] = _rows(out)
  assert (row['threshold'], row['tta']) == ('0.55', 'flips')
  assert row['runs'] == f'{run_dir}@2;{other}@1'
  roi_flips = [_direct_roi(frames[1][0])[0]]
  roi_flips += [roi_flips[0][:, ::-1], roi_flips[0][::-1]]
  want = np.mean([_direct_probs(run_dir, roi_flips),
                  _direct_probs(run_dir, roi_flips, 'checkpoints', 1)])
  assert float(row['prob_defective']) == pytest.approx(want, abs=1e-5)
  assert row['decision'] == ('defective' if want >= 0.55 else 'good')
  assert 'mean of their thresholds' in ' '.join(predict._parser().format_help().split())


def test_an_ensemble_of_runs_preprocessing_differently_is_refused(run_dir, frames, tmp_path,
                                                                 capsys):
  gray = tmp_path / 'gray'
  shutil.copytree(run_dir, gray)
  spec = json.loads((gray / 'preprocessing.json').read_text())
  (gray / 'preprocessing.json').write_text(json.dumps({**spec, 'channels': 'gray'}))
  out = tmp_path / 'preds.csv'
  for extra in ([], ['--step=1']):
    assert predict.main([f'--workdir={run_dir}', f'--workdir={gray}', *extra,
                         f'--input={frames[0]}', f'--output={out}']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and not out.exists()
  assert err.startswith('error: --step=1 applies to one run')
  assert predict.main([f'--workdir={run_dir}', f'--workdir={gray}',
                       f'--input={frames[0]}', f'--output={out}']) == 2
  assert capsys.readouterr().err == (
      f'error: runs {run_dir} and {gray} cannot form an ensemble: channels rgb vs gray '
      '(their inputs differ)\n')
