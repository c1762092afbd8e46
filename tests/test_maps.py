"""Maps of where the network looked (smsdd_jax/maps.py): Grad-CAM against a
reference computed by hand, the batch/jit path, occlusion on a score whose
answer is known, the pixel metrics on hand-made masks, and predict --maps."""
import csv
import pathlib

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from smsdd_jax import inference, maps, models, predict
from smsdd_jax.datasets import synthetic_screens


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
  out = tmp_path_factory.mktemp('frames')
  synthetic_screens.write_sample_frames(str(out), 4, frame_size=(270, 480))
  return out


@pytest.fixture(scope='module')
def predictor(trained_run):
  return inference.Predictor(trained_run, batch_size=4)


def _rois(predictor, n, seed=0):
  h, w = predictor.image_size
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _gradcam_by_hand(run, images):
  """Grad-CAM at block5 without the taps: block5's output read by Flax's
  capture of intermediates is differentiated through what follows it in this
  model (no batch norm: the last max-pool, the flatten head, the logits)."""
  x = inference.normalize(images, run.mean, run.std)
  _, state = run.model.apply({'params': run.params}, x, mutable=['intermediates'])
  block5 = state['intermediates']['block5'][0]
  head = run.params[models.HEAD_NAME]

  def score(a):
    pooled = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                   'VALID')
    logits = pooled.reshape(len(a), -1) @ head['kernel'] + head['bias']
    return maps.defect_score(logits).sum()

  grad = jax.grad(score)(block5)
  cam = jax.nn.relu((grad.mean(axis=(1, 2), keepdims=True) * block5).sum(-1))
  h, w = block5.shape[1:3]  # 16 input pixels a cell; the uncovered edge repeats.
  cam = jax.image.resize(cam, (len(images), 16 * h, 16 * w), 'bilinear')
  cam = jnp.pad(cam, ((0, 0), (0, images.shape[1] - 16 * h), (0, images.shape[2] - 16 * w)),
                mode='edge')
  peak = cam.max(axis=(1, 2), keepdims=True)
  return np.asarray(jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1), 0))


def test_gradcam_matches_a_reference_by_hand(trained_run, predictor):
  run = inference.load_run(trained_run)
  assert not run.config.model.batch_norm and run.config.model.head == 'flatten'
  images = _rois(predictor, 3)
  heat = predictor.maps(images)
  assert heat.shape == (3, *predictor.image_size) and heat.dtype == np.float32
  assert heat.min() >= 0 and heat.max() <= 1
  np.testing.assert_allclose(heat, _gradcam_by_hand(run, images), atol=1e-4)


def test_gradcam_per_image_is_independent_of_its_batch_and_compiles_once(predictor):
  images = _rois(predictor, 6, seed=1)  # 6 with batch 4: a padded second batch.
  together = predictor.maps(images)
  alone = np.concatenate([predictor.maps(images[i:i + 1]) for i in range(6)])
  np.testing.assert_allclose(together, alone, atol=1e-5)
  assert predictor._gradcam['block5']._cache_size() == 1  # pylint: disable=protected-access
  with pytest.raises(ValueError, match='expected uint8 images'):
    predictor.maps(images[..., :2])
  with pytest.raises(ValueError, match="layer='block9'"):
    predictor.maps(images, layer='block9')
  with pytest.raises(ValueError, match="method='saliency'"):
    predictor.maps(images, 'saliency')


def test_the_taps_change_no_score_and_add_nothing_to_the_state():
  config = default.get_config('quick')
  model = models.create(config.model)
  params, state = models.init(model, jax.random.PRNGKey(0), (32, 64, 3))
  assert state == {}  # No batch norm: nothing but parameters, no tap collections.
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 64, 3))
  plain, _ = models.forward(params, x, model=model)
  (tapped, _), taps = model.apply({'params': params}, x, mutable=['intermediates'])
  np.testing.assert_array_equal(plain, tapped)
  assert sorted(taps['intermediates']) == list(models.TAPS)


@pytest.mark.parametrize('head', ['gap', 'gmp'])
def test_global_heads_read_one_vector_per_image(head):
  config = default.get_config('quick')
  config.model.head = head
  model = models.create(config.model)
  params, _ = models.init(model, jax.random.PRNGKey(0), (32, 64, 3))
  channels = models.channels(config.model.width_mult)[-2]
  assert params[models.HEAD_NAME]['kernel'].shape == (channels, 2)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 64, 3))
  (logits, _), taps = model.apply({'params': params}, x, mutable=['intermediates'])
  # By hand: the last pool of block5's output, its global mean / max, the Dense layer.
  block5 = taps['intermediates']['block5'][0]
  last = jax.lax.reduce_window(block5, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                               'VALID')
  pooled = last.mean(axis=(1, 2)) if head == 'gap' else last.max(axis=(1, 2))
  dense = params[models.HEAD_NAME]
  np.testing.assert_allclose(logits, pooled @ dense['kernel'] + dense['bias'], atol=1e-5)
  assert logits.shape == (2, 2)


def test_an_unknown_head_is_refused_by_name():
  config = default.get_config('quick')
  config.model.head = 'mlp'
  with pytest.raises(ValueError, match=r"config.model.head='mlp'"):
    models.create(config.model)


def test_a_cell_lands_on_the_input_pixels_it_covers():
  cam = jnp.zeros((1, 6, 14)).at[0, 2, 5].set(1.0)  # Rows 32-47, columns 80-95 at stride 16.
  grid = np.asarray(maps.to_input_grid(cam, (110, 230), 16))[0]
  assert grid.shape == (110, 230)
  y, x = np.unravel_index(np.argmax(grid), grid.shape)
  assert 32 <= y < 48 and 80 <= x < 96
  assert (grid[96:] == grid[95]).all() and (grid[:, 224:] == grid[:, 223:224]).all()


def test_occlusion_finds_the_only_region_the_score_reads():
  h, w = 24, 40
  region = np.zeros((h, w), bool)
  region[4:10, 28:36] = True
  score = jax.jit(lambda x: jnp.sum(x[..., 0] * jnp.asarray(region), axis=(1, 2)))
  windows = maps.occlusion_windows((h, w), patch=6, stride=3)
  assert windows.any(axis=0).all()  # Every pixel is covered.
  heat = maps.occlusion(score, np.ones((h, w, 3), np.float32), windows, chunk=16)
  assert heat.shape == (h, w) and heat.max() == pytest.approx(1.0)
  assert maps.pixel_auroc(heat, region) > 0.95
  assert maps.pointing_hit(heat, region) == 1.0
  with pytest.raises(ValueError, match='larger than the image'):
    maps.occlusion_windows((h, w), patch=30, stride=3)


def test_predictor_occlusion_runs_on_a_trained_run(predictor):
  heat = predictor.maps(_rois(predictor, 1), 'occlusion', patch=32, stride=32)
  assert heat.shape == (1, *predictor.image_size) and 0 <= heat.min() <= heat.max() <= 1


def test_pixel_metrics_on_hand_made_masks():
  mask = np.zeros((10, 20), np.uint8)
  mask[2:5, 3:8] = 255
  perfect = (mask > 0).astype(np.float32)
  assert maps.pixel_auroc(perfect, mask) == 1.0
  assert maps.pointing_hit(perfect, mask) == 1.0
  assert maps.pixel_auroc(1 - perfect, mask) == 0.0
  assert maps.pointing_hit(1 - perfect, mask) == 0.0
  assert maps.pixel_auroc(np.full((10, 20), 0.3), mask) == 0.5  # Ties: chance.
  # Half of the map's peak pixels inside the mask: half a hit.
  half = np.zeros((10, 20), np.float32)
  half[3, 4] = half[8, 15] = 1.0
  assert maps.pointing_hit(half, mask[..., None]) == 0.5
  empty = np.zeros_like(mask)
  assert np.isnan(maps.pixel_auroc(perfect, empty))
  assert np.isnan(maps.pointing_hit(perfect, empty))
  with pytest.raises(ValueError, match='differ in size'):
    maps.pixel_auroc(perfect[:5], mask)


def test_the_residual_floor_finds_a_dark_spot_on_a_flat_tile():
  tile = np.full((60, 120, 3), 150, np.uint8)
  tile[20:24, 70:74] = 40
  mask = np.zeros((60, 120), bool)
  mask[20:24, 70:74] = True
  heat = maps.residual_map(tile)
  assert heat.max() == 1.0 and maps.pointing_hit(heat, mask) == 1.0
  rng = np.random.default_rng(0)
  assert abs(maps.pixel_auroc(maps.random_map(rng, (60, 120)), mask) - 0.5) < 0.2


def test_overlay_keeps_the_roi_where_the_map_is_cold():
  roi = np.full((20, 30, 3), 200, np.uint8)
  out = maps.overlay(roi, np.zeros((20, 30)))
  assert out.shape == roi.shape and out.dtype == np.uint8
  hot = maps.overlay(roi, np.ones((20, 30)))
  assert hot[..., 0].mean() > out[..., 0].mean()  # Red rises where the map is hot.
  with pytest.raises(ValueError, match='differ in size'):
    maps.overlay(roi, np.zeros((10, 30)))


def test_predict_maps_writes_one_overlay_per_scored_frame(trained_run, frames, tmp_path, capsys):
  out, maps_dir, sheet = tmp_path / 'p.csv', tmp_path / 'maps', tmp_path / 'sheet.png'
  bad = tmp_path / 'in' / 'broken.jpg'
  bad.parent.mkdir()
  bad.write_bytes(b'junk')
  for f in sorted(pathlib.Path(frames).rglob('*.jpg')):
    (bad.parent / f.name).symlink_to(f)
  rc = predict.main([f'--workdir={trained_run}', f'--input={bad.parent}', f'--output={out}',
                     f'--maps={maps_dir}', f'--sheet={sheet}', '--batch_size=2',
                     f'--save_rois={tmp_path / "rois"}'])
  assert rc == 1  # The broken file is a row with an error, not a map.
  assert f'maps: {maps_dir} (gradcam)' in capsys.readouterr().out
  with open(out) as f:
    rows = list(csv.DictReader(f))
  scored = [r for r in rows if not r['error']]
  written = sorted(p.name for p in maps_dir.rglob('*.png'))
  assert written == sorted(pathlib.Path(r['file']).with_suffix('.png').name for r in scored)
  assert len(written) == 4
  predictor = inference.Predictor(trained_run, batch_size=2)
  name = written[0]
  roi = cv2.cvtColor(cv2.imread(str(tmp_path / 'rois' / name)), cv2.COLOR_BGR2RGB)
  expected = maps.overlay(roi, predictor.maps(roi[None])[0])
  got = cv2.cvtColor(cv2.imread(str(maps_dir / name)), cv2.COLOR_BGR2RGB)
  assert np.abs(got.astype(int) - expected).max() <= 2
  assert cv2.imread(str(sheet)) is not None


def test_report_draws_test_decisions_with_their_maps_from_an_export(trained_run, tmp_path):
  from smsdd_jax import dataset_export, input_pipeline, report, rundir  # pylint: disable=import-outside-toplevel
  config = rundir.run_config(rundir.read_config(trained_run))
  export = tmp_path / 'build.npz'
  dataset_export.write(input_pipeline.prepare(config.data), config.data, str(export))
  out = tmp_path / 'figures'
  assert report.main([f'--sweep={trained_run}', f'--out={out}', f'--export={export}']) == 0
  sheet = cv2.imread(str(out / 'maps.png'))
  assert sheet is not None and sheet.shape[1] == 2 * config.data.image_size[1]
  assert report.main([f'--sweep={trained_run}', f'--out={tmp_path / "none"}',
                      f'--export={tmp_path / "missing.npz"}']) == 2
