"""Maps of where the network looked (smsdd_jax/maps.py): Grad-CAM, Grad-CAM++
and gradient x input against references computed by hand, the fine map from
its parts, the batch/jit path, occlusion on a score whose answer is known, the
pixel metrics on hand-made masks, and predict --maps."""
import csv
import pathlib
import types

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from smsdd_jax import backbones, conv, inference, maps, models, predict
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


def _block5_by_hand(run, images):
  """block5's output, read by Flax's capture of intermediates, and the
  gradient of the summed log-odds there, differentiated by hand through what
  follows it in this model (no batch norm: the last max-pool, the flatten
  head, the logits)."""
  x = inference.normalize(images, run.mean, run.std)
  _, state = run.model.apply({'params': run.params}, x, mutable=['intermediates'])
  block5 = state['intermediates']['block5'][0]
  head = run.params[models.HEAD_NAME]

  def score(a):
    pooled = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1),
                                   'VALID')
    logits = pooled.reshape(len(a), -1) @ head['kernel'] + head['bias']
    return maps.defect_score(logits).sum()

  return block5, jax.grad(score)(block5)


def _to_roi(cells, images):
  """Cells 16 input pixels apart -> the ROI's grid; the uncovered edge repeats."""
  h, w = cells.shape[1:3]
  up = jax.image.resize(cells, (len(images), 16 * h, 16 * w), 'bilinear')
  return np.asarray(jnp.pad(up, ((0, 0), (0, images.shape[1] - 16 * h),
                                 (0, images.shape[2] - 16 * w)), mode='edge'))


def _gradcam_cells_by_hand(run, images):
  block5, grad = _block5_by_hand(run, images)
  return jax.nn.relu((grad.mean(axis=(1, 2), keepdims=True) * block5).sum(-1))


def _gradcampp_by_hand(run, images):
  """Grad-CAM++ as its paper writes it: alpha = g^2 / (2 g^2 + sum_ab A_ab g^3)."""
  a, g = (np.asarray(v, np.float64) for v in _block5_by_hand(run, images))
  alpha = g ** 2 / np.where(2 * g ** 2 + a.sum(axis=(1, 2), keepdims=True) * g ** 3 == 0, 1,
                            2 * g ** 2 + a.sum(axis=(1, 2), keepdims=True) * g ** 3)
  weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2), keepdims=True)
  return _to_roi(jnp.asarray(np.maximum((weights * a).sum(-1), 0), jnp.float32), images)


def _gradxinput_by_hand(run, images, sigma):
  """relu(sum_c x_c d(score)/dx_c) of the normalised input, smoothed by
  OpenCV's Gaussian (its default border, reflect-101)."""
  x = inference.normalize(images, run.mean, run.std)
  grad = jax.grad(lambda v: maps.defect_score(models.forward(run.params, v, model=run.model)[0]
                                              ).sum())(x)
  gxi = np.maximum(np.asarray((grad * x).sum(-1)), 0)
  return np.stack([cv2.GaussianBlur(m, (0, 0), sigma) for m in gxi])


def test_gradcam_matches_a_reference_by_hand(trained_run, predictor):
  run = inference.load_run(trained_run)
  assert not run.config.model.batch_norm and run.config.model.head == 'flatten'
  images = _rois(predictor, 3)
  heat = predictor.maps(images, 'gradcam', scale='image')
  assert heat.shape == (3, *predictor.image_size) and heat.dtype == np.float32
  assert heat.min() >= 0 and heat.max() <= 1
  np.testing.assert_allclose(heat, maps.normalise(_to_roi(_gradcam_cells_by_hand(run, images),
                                                          images)), atol=1e-4)
  raw = predictor.maps(images, 'gradcam')  # Absolute: the by-hand values themselves.
  np.testing.assert_allclose(raw, _to_roi(_gradcam_cells_by_hand(run, images), images),
                             rtol=1e-4, atol=1e-7)


def test_gradcampp_and_gradient_x_input_match_references_by_hand(trained_run, predictor):
  run = inference.load_run(trained_run)
  images = _rois(predictor, 3, seed=2)
  got = predictor.maps(images, 'gradcampp', layer='block5')
  want = _gradcampp_by_hand(run, images)
  assert want.max() > 0
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6 * want.max())
  got = predictor.maps(images, 'gradxinput', sigma=1.5)
  want = _gradxinput_by_hand(run, images, 1.5)
  assert want.max() > 0
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * want.max())


def test_the_fine_map_is_its_parts_at_the_height_of_block5(trained_run, predictor):
  """fine = mean of the per-image-normalised Grad-CAM++ (block3) and
  gradient x input, times the peak of Grad-CAM's block5 cells."""
  run = inference.load_run(trained_run)
  images = _rois(predictor, 3, seed=3)
  parts = [maps.normalise(predictor.maps(images, m)) for m in ('gradcampp', 'gradxinput')]
  amount = np.asarray(_gradcam_cells_by_hand(run, images)).max(axis=(1, 2))
  want = 0.5 * (parts[0] + parts[1]) * amount[:, None, None]
  got = predictor.maps(images)  # The default method.
  assert maps.DEFAULT_METHOD == 'fine' and maps.fine_tap('vgg16') == 'block3'
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-6 * want.max())
  assert maps.fine_tap('resnet18') == 'layer1'


def test_gradient_x_activation_at_a_tap_matches_a_reference_by_hand(trained_run, predictor):
  """gradxinput@block5: relu(sum_c A_c d(score)/dA_c) on block5's cells, put
  on the ROI's pixels and smoothed by OpenCV's Gaussian."""
  run = inference.load_run(trained_run)
  images = _rois(predictor, 3, seed=4)
  a, g = _block5_by_hand(run, images)
  cells = jnp.asarray(np.maximum(np.asarray((a * g).sum(-1)), 0))
  want = np.stack([cv2.GaussianBlur(m, (0, 0), 1.5) for m in _to_roi(cells, images)])
  got = predictor.maps(images, 'gradxinput', layer='block5', sigma=1.5)
  assert want.max() > 0
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * want.max())


@pytest.mark.parametrize('shape', [(2, 9, 13, 5), (1, 8, 6, 3)])
def test_gradient_x_activation_from_the_pools_side_equals_through_its_backward(shape):
  """The pooled form gives what the pool's own backward gives, ties (ReLU
  zeros, repeated values: the first maximum takes the gradient) and the
  rows and columns no window covers included."""
  rng = np.random.default_rng(7)
  a = jnp.asarray(np.maximum(rng.integers(-2, 3, shape), 0), jnp.float32)  # Many ties.
  y, pool_vjp = jax.vjp(conv.max_pool2x2, a)
  dy = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  (g,) = pool_vjp(dy)
  want = maps.gradient_x_activation_cells(a, g)
  got = maps.pooled_gradient_x_activation_cells(a, y, dy)
  assert got.shape == want.shape == shape[:3] and float(want.max()) > 0
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_maps_read_from_the_pools_side_equal_the_taps_own(trained_run, predictor, monkeypatch):
  """fine_fast and gradxinput@block2 with the detail from the pool's side
  (VGG16's pooled_taps) equal them without it (through the pool's backward)."""
  run = inference.load_run(trained_run)
  x = inference.normalize(_rois(predictor, 3, seed=8), run.mean, run.std)
  calls = {m: (lambda m=m, layer=layer: np.asarray(jax.jit(
      lambda v: maps.network_maps(run.params, run.model_state, v, model=run.model, method=m,
                                  layer=layer))(x)))
           for m, layer in (('fine_fast', None), ('gradxinput', 'block2'))}
  pooled = {m: f() for m, f in calls.items()}
  monkeypatch.setattr(type(backbones.get(run.model.backbone)), 'pooled_taps', ())
  for m, f in calls.items():
    plain = f()
    assert plain.max() > 0
    np.testing.assert_allclose(pooled[m], plain, rtol=1e-5, atol=1e-6 * plain.max(), err_msg=m)


def test_fine_fast_reads_its_detail_at_the_tap_two_pixels_a_cell(trained_run, predictor):
  """fine_fast = fine with gradient x activation at block2 for the input's."""
  run = inference.load_run(trained_run)
  images = _rois(predictor, 3, seed=5)
  assert maps.detail_tap('vgg16') == 'block2' and maps.detail_tap('resnet18') == 'stem'
  parts = [maps.normalise(predictor.maps(images, 'gradcampp')),
           maps.normalise(predictor.maps(images, 'gradxinput', layer='block2'))]
  amount = np.asarray(_gradcam_cells_by_hand(run, images)).max(axis=(1, 2))
  want = 0.5 * (parts[0] + parts[1]) * amount[:, None, None]
  np.testing.assert_allclose(predictor.maps(images, 'fine_fast'), want, rtol=1e-3,
                             atol=1e-6 * want.max())
  assert predictor.map_params('fine_fast') == {
      'method': 'fine_fast', 'layer': 'block3', 'amount_layer': 'block5',
      'detail_layer': 'block2', 'sigma': maps.DEFAULT_SIGMA}


def test_network_maps_in_chunks_are_each_images_own(trained_run, predictor):
  """More ROIs than MAP_CHUNK, not a multiple of it: each map as if alone."""
  run = inference.load_run(trained_run)
  n = maps.MAP_CHUNK + 3
  x = inference.normalize(_rois(predictor, n, seed=6), run.mean, run.std)
  fn = jax.jit(lambda v: maps.network_maps(run.params, run.model_state, v, model=run.model))
  together = np.asarray(fn(x))
  alone = np.concatenate([np.asarray(fn(x[i:i + 1])) for i in (0, maps.MAP_CHUNK, n - 1)])
  assert together.shape == (n, *predictor.image_size)
  np.testing.assert_allclose(together[[0, maps.MAP_CHUNK, n - 1]], alone, rtol=1e-5,
                             atol=1e-6 * together.max())


def test_to_input_grid_is_a_bilinear_resize_then_a_blur():
  cam = jax.random.uniform(jax.random.PRNGKey(1), (2, 27, 57))
  up = jax.image.resize(cam, (2, 108, 228), 'bilinear')
  want = np.asarray(jnp.pad(up, ((0, 0), (0, 2), (0, 2)), mode='edge'))
  np.testing.assert_allclose(maps.to_input_grid(cam, (110, 230), 4), want, atol=1e-6)
  blurred = np.stack([cv2.GaussianBlur(m, (0, 0), 2.0) for m in want])
  np.testing.assert_allclose(maps.to_input_grid(cam, (110, 230), 4, sigma=2.0), blurred,
                             atol=1e-5)


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
  """(n, n): row i holds the weights output i takes from each input under
  OpenCV's Gaussian with its reflect-101 border, by the definition."""
  k = maps.gaussian_kernel(sigma)
  r, out = len(k) // 2, np.zeros((n, n))
  for i in range(n):
    for offset, weight in zip(range(-r, r + 1), k):
      j = i + offset
      while not 0 <= j < n:  # Reflect-101, repeated for a kernel wider than n.
        j = 0 if n == 1 else -j if j < 0 else 2 * (n - 1) - j
      out[i, j] += weight
  return out


def _grid_matrix(cells: int, pixels: int, stride: int, sigma: float) -> np.ndarray:
  """(pixels, cells): to_input_grid's rule along one axis as a dense matrix,
  from the cells' centres (what the stencils replaced)."""
  centre = np.clip((np.arange(min(pixels, cells * stride)) + 0.5) / stride - 0.5, 0, cells - 1)
  w = np.maximum(0.0, 1.0 - np.abs(centre[:, None] - np.arange(cells)[None, :]))
  w = np.concatenate([w, np.repeat(w[-1:], pixels - len(w), axis=0)])
  return _blur_matrix(pixels, sigma) @ w if sigma > 0 else w


@pytest.mark.parametrize('cells,size,stride,sigma', [
    ((55, 115), (110, 230), 2, 2.0),  # fine_fast's detail.
    ((27, 57), (110, 230), 4, 0.0),   # Grad-CAM++ at block3.
    ((6, 14), (110, 230), 16, 0.0),   # Grad-CAM at block5: 14 rows past the cells.
    ((4, 4), (7, 9), 2, 2.0),         # Kernel wider than the axis: reflected again.
    ((4, 8), (14, 30), 4, 1.0),       # Cells past the border (ResNet's ceil): cut off.
    ((1, 3), (1, 5), 2, 1.0)])        # One cell, one pixel.
def test_to_input_grid_equals_its_dense_matrices(cells, size, stride, sigma):
  cam = np.random.default_rng(3).random((2, *cells)).astype(np.float32)
  rows = _grid_matrix(cells[0], size[0], stride, sigma)
  cols = _grid_matrix(cells[1], size[1], stride, sigma)
  want = np.einsum('ph,nhw,qw->npq', rows, cam.astype(np.float64), cols)
  got = np.asarray(jax.jit(maps.to_input_grid, static_argnums=(1, 2, 3))(
      jnp.asarray(cam), size, stride, sigma))
  assert got.shape == (2, *size)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_maps_per_image_are_independent_of_their_batch_and_compile_once(predictor):
  images = _rois(predictor, 6, seed=1)  # 6 with batch 4: a padded second batch.
  for method in ('gradcam', 'fine'):
    together = predictor.maps(images, method)
    alone = np.concatenate([predictor.maps(images[i:i + 1], method) for i in range(6)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-6 * together.max())
  # pylint: disable=protected-access
  assert predictor._network_maps[('gradcam', 'block5', maps.DEFAULT_SIGMA)]._cache_size() == 1
  assert predictor._network_maps[('fine', 'block3', maps.DEFAULT_SIGMA)]._cache_size() == 1
  with pytest.raises(ValueError, match='expected uint8 images'):
    predictor.maps(images[..., :2])
  with pytest.raises(ValueError, match="layer='block9'"):
    predictor.maps(images, 'gradcam', layer='block9')
  with pytest.raises(ValueError, match="layer='block4': method 'occlusion' reads no tap"):
    predictor.maps(images, 'occlusion', layer='block4')
  with pytest.raises(ValueError, match="method='saliency'"):
    predictor.maps(images, 'saliency')
  with pytest.raises(ValueError, match="scale='norm'"):
    predictor.maps(images, scale='norm')


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
  # Absolute: a pixel inside the region drops the score by 1 per patch covering it.
  assert heat.shape == (h, w) and 0 < heat.max() <= region.sum()
  assert maps.pixel_auroc(heat, region) > 0.95
  assert maps.pointing_hit(heat, region) == 1.0
  with pytest.raises(ValueError, match='larger than the image'):
    maps.occlusion_windows((h, w), patch=30, stride=3)


def test_predictor_occlusion_runs_on_a_trained_run(predictor):
  heat = predictor.maps(_rois(predictor, 1), 'occlusion', patch=32, stride=32, scale='image')
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
  said = maps.overlay(roi, np.zeros((20, 30)), caption=[maps.decision_line(0.93, 0.5), 'fine'])
  assert said.shape == (20 + 2 * 14 + 4, 30, 3)
  np.testing.assert_array_equal(said[:20], out)  # The text goes below the ROI, never on it.
  assert said[20:].max() > 0
  assert maps.decision_line(0.931, 0.5) == 'p=0.931 DEFECTIVE (threshold 0.5)'
  assert maps.decision_line(0.2, 0.5) == 'p=0.200 good (threshold 0.5)'


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
  said = capsys.readouterr()
  assert f'maps: {maps_dir} (fine, PER-IMAGE scale (no calibration))' in said.out
  # Never silently: the run has no calibration, and stderr says so.
  assert 'warning: maps (fine) have no run scale: run' in said.err
  with open(out) as f:
    rows = list(csv.DictReader(f))
  scored = [r for r in rows if not r['error']]
  written = sorted(p.name for p in maps_dir.rglob('*.png'))
  assert written == sorted(pathlib.Path(r['file']).with_suffix('.png').name for r in scored)
  assert len(written) == 4
  predictor = inference.Predictor(trained_run, batch_size=2)
  name = written[0]
  row = next(r for r in scored if pathlib.Path(r['file']).with_suffix('.png').name == name)
  roi = cv2.cvtColor(cv2.imread(str(tmp_path / 'rois' / name)), cv2.COLOR_BGR2RGB)
  shown, scale = predictor.readable_maps(roi[None])
  assert scale.kind == 'image' and shown.max() == pytest.approx(1.0)
  caption = [maps.decision_line(float(row['prob_defective']), float(row['threshold'])),
             'fine map, PER-IMAGE scale (no calibration)']
  expected = maps.overlay(roi, shown[0], caption=caption)
  got = cv2.cvtColor(cv2.imread(str(maps_dir / name)), cv2.COLOR_BGR2RGB)
  assert got.shape == expected.shape == (roi.shape[0] + 32, roi.shape[1], 3)
  assert np.abs(got.astype(int) - expected).max() <= 2
  tiles = cv2.imread(str(sheet))  # 5 tiles (4 maps, 1 error) of one size, with the map's line.
  assert tiles.shape == (4 + (110 + 54 + 4), 4 + 5 * (230 + 8 + 4), 3)
  assert not list(tmp_path.glob('sheet.png.tmp*'))  # Written whole, by a rename.
  band = tiles[4 + 110 + 40:4 + 110 + 54]  # The tiles' third lines: text.
  assert (band > 120).any()
  lone = predict._tile(types.SimpleNamespace(error='', decision='good', prob=0.1, roi=roi,  # pylint: disable=protected-access
                                             heat=None, path='a.png'), 'fine map, x')
  assert lone.shape[0] == 110 + 54 and not (lone[110 + 40:] > 120).any()  # No map: no line.


def test_report_draws_test_decisions_with_their_maps_from_an_export(trained_run, tmp_path,
                                                                   capsys):
  from smsdd_jax import dataset_export, input_pipeline, report, rundir  # pylint: disable=import-outside-toplevel
  config = rundir.run_config(rundir.read_config(trained_run))
  export = tmp_path / 'build.npz'
  dataset_export.write(input_pipeline.prepare(config.data), config.data, str(export))
  out = tmp_path / 'figures'
  assert report.main([f'--sweep={trained_run}', f'--out={out}', f'--export={export}']) == 0
  # No calibration in the run: one is made from the export's validation split, and said.
  assert f'run {trained_run} has no map calibration of fine: made one' in capsys.readouterr().err
  assert not (pathlib.Path(trained_run) / 'map_scale.json').exists()  # Not saved.
  sheet = cv2.imread(str(out / 'maps.png'))
  assert sheet is not None and sheet.shape[1] == 2 * config.data.image_size[1]
  assert report.main([f'--sweep={trained_run}', f'--out={tmp_path / "none"}',
                      f'--export={tmp_path / "missing.npz"}']) == 2
  assert report.main([f'--sweep={trained_run}', f'--out={tmp_path / "other"}',
                      f'--export={export}', '--map_method=saliency']) == 2
  assert "method='saliency'" in capsys.readouterr().err


@pytest.mark.parametrize('shape,sigma', [((2, 110, 230), 2.0), ((1, 7, 5), 1.0), ((1, 3, 4), 2.0)])
def test_the_blur_is_opencvs_gaussian_with_its_default_border(shape, sigma):
  m = np.random.default_rng(0).random(shape).astype(np.float32)
  got = np.asarray(maps.gaussian_blur(jnp.asarray(m), sigma))
  want = np.stack([cv2.GaussianBlur(a, (0, 0), sigma) for a in m])
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_allclose(_blur_matrix(shape[1], sigma).sum(axis=1), 1.0, rtol=1e-12)
