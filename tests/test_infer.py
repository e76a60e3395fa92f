"""Tests for cac_jax.scoring.infer: dense ROI inference equals the patch-wise network and the naive reference."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cac_jax import models
from cac_jax.scoring import infer, roi_plan
from configs import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup():
  config = tiny.get_config()
  params = models.init_params(config, jax.random.PRNGKey(0))
  rng = np.random.RandomState(0)
  hu = rng.normal(100.0, 400.0, (24, 40, 40)).astype(np.float32)
  hu[8:14, 15:25, 12:30] += 600.0  # a bright blob
  return config, params, hu


def _patchwise_logits(config, params, hu, coords):
  """Logits of the patch-wise network (Generator + centre_logits) at (K, 3) voxels."""
  p = models.patch_size(config)
  r = p // 2
  vol = infer._normalize(hu, config)
  padded = np.pad(vol, r, constant_values=infer.pad_value(config))
  views = []
  for z, y, x in coords:  # padded index of voxel v is v + r
    views.append(
      np.stack(
        [
          padded[z + r, y : y + p, x : x + p],
          padded[z : z + p, y + r, x : x + p],
          padded[z : z + p, y : y + p, x + r],
        ]
      )
    )
  views = np.stack(views, axis=1)[..., None]  # (3, K, P, P, 1)
  nets = models.build(config)
  g, c = nets.generator, nets.classifier
  feats = g.apply({"params": params["generator"]}, jnp.asarray(views))
  return np.asarray(models.centre_logits(c, params["classifier"], feats))


@pytest.mark.parametrize("conv_impl", ["xla", "shift3"])
def test_dense_equals_patchwise_including_border(setup, conv_impl):
  config, params, hu = setup
  rng = np.random.RandomState(1)
  coords = np.stack([rng.randint(0, s, 20) for s in hu.shape], axis=1)
  border = np.array([[0, 0, 0], [23, 39, 39], [0, 39, 17], [23, 0, 5], [11, 0, 39], [5, 20, 0]])
  coords = np.unique(np.vstack([coords, border]), axis=0)
  cand = np.zeros(hu.shape, bool)
  cand[tuple(coords.T)] = True
  pred = infer.predict_candidates(params, config, hu, cand, conv_impl=conv_impl)
  np.testing.assert_array_equal(pred.coords, coords)  # argwhere order == np.unique order
  want = _patchwise_logits(config, params, hu, coords)
  np.testing.assert_allclose(pred.logits, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  np.testing.assert_allclose(pred.probabilities.sum(-1), 1.0, rtol=1e-5)
  vol = pred.class_volume()
  np.testing.assert_array_equal(vol[cand], np.argmax(want, -1))
  assert (vol[~cand] == 0).all()


def test_classes_equal_naive(setup):
  config, params, hu = setup
  rng = np.random.RandomState(2)
  cand = (rng.rand(*hu.shape) < 0.01) | (hu > 900)
  got = infer.predict_classes(params, config, hu, cand)
  want = infer.predict_naive(params, config, hu, cand)
  assert got.dtype == np.int32 and got.shape == hu.shape
  np.testing.assert_array_equal(got, want)
  assert (got[~cand] == 0).all()
  assert len(np.unique(got[cand])) > 1  # not a degenerate all-one-class comparison


def test_no_candidates(setup):
  config, params, hu = setup
  cand = np.zeros(hu.shape, bool)
  out = infer.predict_classes(params, config, hu, cand)
  assert out.shape == hu.shape and out.dtype == np.int32 and not out.any()
  coords, probs = infer.predict_probabilities(params, config, hu, cand)
  assert coords.shape == (0, 3) and probs.shape == (0, config.model.num_classes)


def test_bad_inputs(setup):
  config, params, hu = setup
  with pytest.raises(ValueError):
    infer.predict_classes(params, config, hu, np.zeros((2, 2, 2), bool))


def test_choose_shapes_cover_and_bound():
  rng = np.random.RandomState(0)
  needs = rng.randint(1, 200, (300, 2))
  shapes, assign = roi_plan.choose_shapes(needs, 130, bucket=16, max_shapes=4)
  assert 1 <= len(shapes) <= 4
  assert (shapes[assign] >= needs).all()
  assert (shapes % 16 == 0).all()


def test_split_boxes():
  rows = np.array([0, 1, 2, 200, 201, 5])
  cols = np.array([0, 2, 1, 250, 251, 3])
  boxes = roi_plan.split_boxes(rows, cols, 130)
  assert sorted(np.concatenate(boxes).tolist()) == list(range(6))
  assert len(boxes) == 2  # two clusters far apart (> margin): separate boxes are cheaper
  assert len(roi_plan.split_boxes(rows, cols, 1000)) == 1  # huge margin: one bounding box


def _greedy_boxes_by_recomputation(rows, cols, margin):
  """split_boxes's merge rule, recomputing every live pair's saving at each merge (the spec)."""
  cell = max(4, margin // 4)
  while True:
    uniq, inv = np.unique((rows // cell) * (1 << 20) + cols // cell, return_inverse=True)
    if len(uniq) <= roi_plan.MAX_CELLS:
      break
    cell *= 2
  inv = inv.reshape(-1)
  boxes = {
    u: [rows[inv == u].min(), rows[inv == u].max(), cols[inv == u].min(), cols[inv == u].max()]
    for u in range(len(uniq))
  }
  members = {u: [u] for u in boxes}
  area = lambda b: (b[1] - b[0] + 1 + margin) * (b[3] - b[2] + 1 + margin)  # noqa: E731
  while len(boxes) > 1:
    best = None
    for a in sorted(boxes):
      for b in sorted(boxes):
        if a == b:
          continue
        x, y = boxes[a], boxes[b]
        union = [min(x[0], y[0]), max(x[1], y[1]), min(x[2], y[2]), max(x[3], y[3])]
        save = area(x) + area(y) - area(union)
        if best is None or save > best[0]:
          best = (save, a, b, union)
    if best[0] < 0:
      break
    _, a, b, union = best
    boxes[a] = union
    members[a] += members.pop(b)
    del boxes[b]
  return sorted(sorted(np.flatnonzero(np.isin(inv, m)).tolist()) for m in members.values())


def test_split_boxes_merges_as_the_full_recomputation_would():
  """The incremental saving matrix picks the same merges as recomputing all pairs each time."""
  rng = np.random.RandomState(7)
  for trial in range(60):
    n = rng.randint(2, 400)
    centres = rng.randint(0, 250, (rng.randint(1, 6), 2))
    pick = centres[rng.randint(0, len(centres), n)] + rng.randint(-25, 26, (n, 2))
    rows, cols = np.clip(pick[:, 0], 0, 299), np.clip(pick[:, 1], 0, 299)
    margin = int(rng.choice([16, 34, 66, 130]))
    got = sorted(sorted(b.tolist()) for b in roi_plan.split_boxes(rows, cols, margin))
    assert got == _greedy_boxes_by_recomputation(rows, cols, margin), trial


def test_single_bounding_box_mode_matches(setup):
  config, params, hu = setup
  rng = np.random.RandomState(4)
  cand = rng.rand(*hu.shape) < 0.01
  a = infer.predict_candidates(params, config, hu, cand, split=False)
  b = infer.predict_candidates(params, config, hu, cand, split=True)
  np.testing.assert_allclose(a.logits, b.logits, rtol=1e-4, atol=1e-5)


def test_many_models_equal_each_alone(setup):
  """`predict_candidates_many` gives each model the logits it gets alone, bit for bit."""
  config, params, hu = setup
  other = models.init_params(config, jax.random.PRNGKey(7))
  cand = np.random.RandomState(5).rand(*hu.shape) < 0.02
  both = infer.predict_candidates_many([params, other], config, hu, cand)
  for p, got in zip((params, other), both):
    np.testing.assert_array_equal(got.logits, infer.predict_candidates(p, config, hu, cand).logits)
  assert not np.array_equal(both[0].logits, both[1].logits)


@pytest.mark.cpu_bits
def test_outputs_do_not_depend_on_the_roi_plan(setup):
  """A voxel's logits are the same bits whatever the other candidates and the ROI shapes (the
  experiment restricts whole-scan outputs to the heart region instead of rerunning the network
  there, and plans ROIs with more shapes than `launch.score`)."""
  config, params, hu = setup
  rng = np.random.RandomState(6)
  cand = rng.rand(*hu.shape) < 0.03
  sub = cand & (rng.rand(*hu.shape) < 0.3)
  full = infer.predict_candidates(params, config, hu, cand)
  part = infer.predict_candidates(params, config, hu, sub, max_shapes=1)
  assert part.stats["shapes"] != full.stats["shapes"]
  np.testing.assert_array_equal(part.logits, full.logits[sub[tuple(full.coords.T)]])


def test_compile_count_bounded_for_varied_volumes(setup):
  config, params, _ = setup
  rng = np.random.RandomState(3)
  cache = infer.InferenceCache()
  counts = cache.trace_counts
  max_shapes = 3
  for shape in [(20, 36, 44), (28, 40, 32), (16, 48, 40), (24, 40, 40)]:
    hu = rng.normal(0, 300, shape).astype(np.float32)
    cand = rng.rand(*shape) < 0.005
    before = counts["tower"]
    infer.predict_classes(params, config, hu, cand, slab=1, max_shapes=max_shapes, cache=cache)
    assert counts["tower"] - before <= max_shapes
    again = dict(counts)
    infer.predict_classes(params, config, hu, cand, slab=1, max_shapes=max_shapes, cache=cache)
    assert counts == again  # same scan: everything cached
  assert 1 <= counts["tower"] <= 4 * max_shapes
  assert counts["classifier"] >= 1


def test_caches_are_per_owner(setup):
  """Two caches share nothing: a fresh one traces again; the default one is untouched."""
  config, params, hu = setup
  cand = hu > 900
  a, b = infer.InferenceCache(), infer.InferenceCache()
  default_before = dict(infer.DEFAULT_CACHE.trace_counts)
  pa = infer.predict_candidates(params, config, hu, cand, cache=a)
  pb = infer.predict_candidates(params, config, hu, cand, cache=b)
  assert a.trace_counts["tower"] >= 1 and b.trace_counts == a.trace_counts
  assert a.plan_key == b.plan_key and a.plan is not b.plan
  assert infer.DEFAULT_CACHE.trace_counts == default_before
  np.testing.assert_array_equal(pa.logits, pb.logits)
  a.clear()
  assert not a.jitted and a.plan is None


def test_multi_device_equals_single_device():
  script = textwrap.dedent("""
      import jax, numpy as np
      from cac_jax import models
      from cac_jax.scoring import infer
      from configs import tiny
      assert len(jax.devices()) == 4, jax.devices()
      config = tiny.get_config()
      params = models.init_params(config, jax.random.PRNGKey(0))
      rng = np.random.RandomState(0)
      hu = rng.normal(100.0, 400.0, (24, 40, 40)).astype(np.float32)
      cand = rng.rand(*hu.shape) < 0.01
      one = infer.predict_candidates(params, config, hu, cand, devices=jax.devices()[:1])
      four = infer.predict_candidates(params, config, hu, cand, devices=jax.devices())
      np.testing.assert_allclose(four.logits, one.logits, rtol=1e-5, atol=1e-6)
      np.testing.assert_array_equal(four.class_volume(), one.class_volume())
      assert four.stats["tower_calls"] < one.stats["tower_calls"]  # batches of 4 slices
      print("OK")
  """)
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=4",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
  )
  res = subprocess.run(
    [sys.executable, "-c", script],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=600,
  )
  assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_auto_conv_impl_follows_the_compiler_options(monkeypatch):
  config = tiny.get_config()
  config.model.tower_width = 32
  monkeypatch.delenv("CAC_JAX_XLA_DEFAULTS", raising=False)
  assert infer.resolve_conv_impl(config, "auto", "cpu") == "xla"
  assert infer.resolve_conv_impl(config, "auto", "gpu") == "xla"
  monkeypatch.setenv("CAC_JAX_XLA_DEFAULTS", "1")
  assert infer.resolve_conv_impl(config, "auto", "cpu") == "shift3"
  assert infer.resolve_conv_impl(config, "im2col", "cpu") == "im2col"
  with pytest.raises(ValueError):
    infer.resolve_conv_impl(config, "winograd")
