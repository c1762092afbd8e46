"""A researcher's API on a real (tiny) run: embeddings, loading a run, the
loss under jax.grad exactly as README shows it."""
import csv
import os
import pathlib
import re

import cv2
import jax
import numpy as np
import pytest

from smsdd_jax import inference
from smsdd_jax import input_pipeline
from smsdd_jax import models
from smsdd_jax import predict
from smsdd_jax.datasets import synthetic_screens

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
  out = tmp_path_factory.mktemp('frames')
  synthetic_screens.write_sample_frames(str(out), 5, frame_size=(270, 480))
  return out


def _direct_embeddings(run, rois):
  """models.forward on normalize_np's input: the embedding by hand."""
  x = input_pipeline.normalize_np(rois, {'mean': run.mean.tolist(), 'std': run.std.tolist()})
  _, out = models.forward(run.params, x, model=run.model, model_state=run.model_state)
  return np.asarray(out['embedding'])


def test_embed_is_the_models_embedding_batched_and_compiled_once(trained_run):
  predictor = inference.Predictor(trained_run, batch_size=4)
  rois = np.random.default_rng(0).integers(0, 256, (9, 110, 230, 3), dtype=np.uint8)
  emb = predictor.embed(rois)
  h, w, c = models.feature_shape((110, 230, 3), predictor.config.model.width_mult)
  assert emb.shape == (9, h * w * c) and emb.dtype == np.float32
  assert predictor.config.model.embedding == 'flatten_l2'
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  run = inference.load_run(trained_run)
  np.testing.assert_allclose(emb, _direct_embeddings(run, rois), atol=1e-5)
  np.testing.assert_allclose(predictor.embed(rois[:3]), emb[:3], atol=1e-6)
  assert predictor.embed(rois[:0]).shape == (0, h * w * c)
  assert predictor._embed._cache_size() == 1  # One padded shape, one compile.
  with pytest.raises(ValueError, match='shape'):
    predictor.embed(rois[:, :100])


def test_load_run_restores_the_best_checkpoint_from_the_workdir(trained_run):
  run = inference.load_run(trained_run)
  assert run.step == 2 and run.files.source == 'best'
  assert run.config.model.embedding == 'flatten_l2'
  assert isinstance(run.model, models.SiameseVGG16)
  assert models.count_params(run.params) > 0
  first = inference.load_run(trained_run, step=1)
  assert first.step == 1
  leaves = zip(jax.tree.leaves(first.params), jax.tree.leaves(run.params))
  assert any(not np.array_equal(a, b) for a, b in leaves)  # Another checkpoint.


def test_predict_writes_embeddings_beside_the_csv(trained_run, frames, tmp_path, capsys):
  out, npz = tmp_path / 'p.csv', tmp_path / 'emb.npz'
  npz.write_bytes(b'old')
  bad = tmp_path / 'not_an_image.jpg'
  bad.write_bytes(b'junk')
  rc = predict.main([f'--workdir={trained_run}', f'--input={frames}', f'--output={out}',
                     f'--embeddings={npz}', f'--save_rois={tmp_path / "rois"}',
                     '--batch_size=2'])
  assert rc == 0, capsys.readouterr()
  assert 'embeddings: ' in capsys.readouterr().out
  rows = predict_rows(out)
  with np.load(npz) as data:
    files, emb, probs = data['files'], data['embeddings'], data['probabilities']
  assert list(files) == [r['file'] for r in rows] and len(files) == 5
  np.testing.assert_allclose(probs, [float(r['prob_defective']) for r in rows], atol=1e-6)
  predictor = inference.Predictor(trained_run)
  rois = np.stack([_rgb(tmp_path / 'rois' / pathlib.Path(f).relative_to(frames)
                        .with_suffix('.png')) for f in files])
  np.testing.assert_allclose(emb, predictor.embed(rois), atol=1e-5)
  # A failed row has no embedding; the scored ones keep theirs.
  both = tmp_path / 'both'
  both.mkdir()
  for f in files[:2]:
    os.symlink(f, both / pathlib.Path(f).name)
  os.symlink(bad, both / bad.name)
  assert predict.main([f'--workdir={trained_run}', f'--input={both}',
                       f'--output={out}', f'--embeddings={npz}']) == 1
  with np.load(npz) as data:
    assert sorted(map(os.path.basename, data['files'])) == sorted(
        os.path.basename(f) for f in files[:2])


def test_embeddings_are_written_only_after_the_model_loaded(trained_run, frames, tmp_path,
                                                            capsys):
  npz = tmp_path / 'emb.npz'
  npz.write_bytes(b'old')
  assert predict.main([f'--workdir={trained_run}', f'--input={frames}',
                       f'--output={tmp_path / "p.csv"}', f'--embeddings={npz}',
                       '--step=7']) == 2
  assert 'step 7' in capsys.readouterr().err
  assert npz.read_bytes() == b'old' and os.listdir(tmp_path) == ['emb.npz']
  assert predict.main([f'--workdir={trained_run},{trained_run}', f'--input={frames}',
                       f'--output={tmp_path / "p.csv"}', f'--embeddings={npz}']) == 2
  assert capsys.readouterr().err.startswith('error: --embeddings applies to one run')
  assert predict.main([f'--workdir={trained_run}', f'--input={frames}',
                       f'--output={tmp_path / "p.csv"}', f'--embeddings={tmp_path}']) == 2
  assert 'cannot write --embeddings' in capsys.readouterr().err


def predict_rows(path):
  with open(path, newline='', encoding='utf-8') as f:
    return list(csv.DictReader(f))


def _rgb(path):
  return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _doc_pages() -> list[pathlib.Path]:
  """The README and the docs pages it sends readers to (docs/*.md)."""
  return [REPO / 'README.md', *sorted((REPO / 'docs').glob('*.md'))]


def _readme_notebook_block() -> tuple[str, str]:
  """The one python block with load_run, in the README or a docs page."""
  blocks = [(page.name, b) for page in _doc_pages()
            for b in re.findall(r'```python\n(.*?)```', page.read_text(encoding='utf-8'), re.S)
            if 'inference.load_run(' in b]
  assert len(blocks) == 1, f'README and docs show {len(blocks)} notebook blocks with load_run'
  return blocks[0]


def test_readme_notebook_block_runs_and_differentiates_the_loss(trained_run):
  name, code = _readme_notebook_block()
  code = code.replace("'runs/beta_c_quick'", repr(trained_run))
  assert repr(trained_run) in code
  scope = {}
  exec(compile(code, name, 'exec'), scope)  # pylint: disable=exec-used
  run, grads = scope['run'], scope['grads']
  assert jax.tree.structure(grads) == jax.tree.structure(run.params)
  norms = [float(np.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and sum(norms) > 0
  assert scope['emb'].shape[0] == 4 and scope['probs'].shape == (4,)
  np.testing.assert_allclose(scope['probs'], scope['predictor'].predict_proba(
      scope['rois']), atol=1e-6)


def test_readme_orbax_restore_reads_what_load_run_restores(trained_run):
  """README's plain-Orbax line, on the best checkpoint, gives load_run's params."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  readme = (REPO / 'README.md').read_text(encoding='utf-8')
  line = ('state = ocp.CheckpointManager(path, item_handlers=ocp.StandardCheckpointHandler()'
          ').restore(step)')
  assert line in readme
  run = inference.load_run(trained_run)
  scope = {'ocp': ocp, 'path': os.path.join(trained_run, 'checkpoints_best'), 'step': run.step}
  exec(line, scope)  # pylint: disable=exec-used
  leaves = zip(jax.tree.leaves(scope['state']['params']), jax.tree.leaves(run.params),
               strict=True)
  assert all(np.array_equal(a, b) for a, b in leaves)


def test_readme_first_two_commands_are_what_ci_runs():
  """The README's install and test commands are .ci/run's (which adds -q)."""
  readme = (REPO / 'README.md').read_text(encoding='utf-8')
  block = re.findall(r'```bash\n(.*?)```', readme, re.S)[0].splitlines()
  ci = (REPO / '.ci' / 'run').read_text(encoding='utf-8')
  for line in block[:2]:
    command = line.split('#')[0].strip().replace("pip install -e", "pip install -q -e")
    assert command in ci, f'README command not in .ci/run: {command}'
  assert 'smsdd_jax.main --config=configs/beta_c.py:quick' in block[2]


def test_readme_and_docs_link_only_to_files_that_exist():
  missing = [f'{page.name}: {target}' for page in _doc_pages()
             for target in re.findall(r'\]\(([^)#:]+)\)', page.read_text(encoding='utf-8'))
             if not (page.parent / target).exists()]
  assert not missing, missing
