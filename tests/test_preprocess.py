"""Tests for cac_jax.data.preprocess: resampling, thick slices, HU normalisation."""

import jax.numpy as jnp
import numpy as np
import pytest

from cac_jax.data import preprocess
from cac_jax.data.scan import Case, Scan
from configs import paper


def _scan(
  shape=(10, 24, 20),
  spacing=(2.0, 0.8, 0.7),
  origin=(-5.0, 10.0, 100.0),
  direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
  seed=0,
):
  rng = np.random.default_rng(seed)
  hu = rng.normal(40, 100, shape).astype(np.float32)
  return Scan(hu=hu, spacing=spacing, origin=origin, direction=tuple(float(d) for d in direction))


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_shape_extent_origin(order):
  s = _scan()
  r = preprocess.resample(s, (1.5, 0.66, 0.66), order=order)
  assert r.shape == (13, 29, 21)
  assert r.spacing == (1.5, 0.66, 0.66) and r.origin == s.origin and r.direction == s.direction
  ext_in = np.asarray(s.shape) * s.spacing
  ext_out = np.asarray(r.shape) * r.spacing
  assert np.all(np.abs(ext_out - ext_in) <= np.asarray(r.spacing) / 2 + 1e-9)
  assert r.hu.dtype == np.float32


def test_resample_linear_reproduces_linear_field():
  z, y, x = np.meshgrid(np.arange(10), np.arange(24), np.arange(20), indexing="ij")
  s = Scan(
    hu=(3 * z * 2.0 + 2 * y * 0.8 - x * 0.7).astype(np.float32),
    spacing=(2.0, 0.8, 0.7),
    origin=(1.0, 2.0, 3.0),
    direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1),
  )
  r = preprocess.resample(s, (1.0, 0.5, 0.5), order=1)
  zz, yy, xx = np.meshgrid(*(np.arange(n) * sp for n, sp in zip(r.shape, r.spacing)), indexing="ij")
  expect = 3 * zz + 2 * yy - xx
  inside = (zz <= 18) & (yy <= 23 * 0.8) & (xx <= 19 * 0.7)  # within the input's voxel centres
  np.testing.assert_allclose(r.hu[inside], expect[inside], atol=1e-3)


def test_resample_same_spacing_is_identity():
  s = _scan()
  assert preprocess.resample(s, s.spacing) is s


def test_resample_labels_nearest_preserves_values():
  s = _scan()
  lab = np.random.default_rng(1).choice([0, 1, 2, 3, 4, 5, 6], size=s.shape).astype(np.int32)
  r = preprocess.resample(s, (1.0, 0.4, 0.35))  # exact halvings
  out = preprocess.resample_labels(lab, s, r)
  assert out.shape == r.shape and out.dtype == np.int32
  assert set(np.unique(out)) <= set(np.unique(lab))
  # Output voxels at the input's voxel centres carry exactly the input values.
  np.testing.assert_array_equal(out[::2, ::2, ::2], lab)
  back = preprocess.resample_labels(out, r, s)
  np.testing.assert_array_equal(back, lab)
  mask = lab == 3
  outb = preprocess.resample_labels(mask, s, r)
  assert outb.dtype == np.bool_
  np.testing.assert_array_equal(outb, out == 3)
  # Upsampling by 3 (no ties): every interior voxel becomes a 3x3x3 block.
  r3 = preprocess.resample(s, tuple(sp / 3 for sp in s.spacing), order=0)
  out3 = preprocess.resample_labels(lab, s, r3)
  # new voxel j sits at old index j / 3, so old voxel i owns new voxels 3i - 1, 3i, 3i + 1.
  np.testing.assert_array_equal(out3[0::3, 0::3, 0::3], lab)
  np.testing.assert_array_equal(out3[1::3, 2:-3:3, 1::3], lab[:, 1:, :])


def test_resample_case():
  s = _scan()
  lab = np.zeros(s.shape, np.int32)
  lab[4, 10:12, 8:10] = 2
  heart = np.zeros(s.shape, bool)
  heart[2:8, 5:20, 5:15] = True
  case = Case("c1", s, "ncct", labels=lab, heart_mask=heart)
  out = preprocess.resample_case(case, (2.0 / 3, 0.8 / 3, 0.7 / 3))  # no nearest-neighbour ties
  assert out.scan.shape == out.labels.shape == out.heart_mask.shape == (30, 72, 60)
  assert out.aorta_mask is None and out.case_id == "c1" and out.domain == "ncct"
  vol_in = (lab == 2).sum() * s.voxel_volume_mm3
  vol_out = (out.labels == 2).sum() * out.scan.voxel_volume_mm3
  assert vol_out == pytest.approx(vol_in)
  assert out.heart_mask.dtype == np.bool_
  assert out.heart_mask.sum() * out.scan.voxel_volume_mm3 == pytest.approx(
    heart.sum() * s.voxel_volume_mm3
  )


def test_thick_slices_ramp():
  # hu = z (mm) on 1 mm slices: each 3 mm window's mean equals its centre position.
  n = 20
  hu = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], (n, 3, 4)).copy()
  s = Scan(hu=hu, spacing=(1.0, 0.5, 0.5), origin=(0.0, 0.0, 10.0))
  t = preprocess.thick_slices(s, thickness_mm=3.0, increment_mm=1.5)
  assert t.spacing == (1.5, 0.5, 0.5)
  # windows [-0.5, 2.5], [1, 4], ... up to a window ending at <= 19.5 mm
  expected = 1.0 + 1.5 * np.arange(12)
  assert t.shape == (12, 3, 4)
  np.testing.assert_allclose(t.hu[:, 0, 0], expected, atol=1e-5)
  # The origin is the first window's centre (1 mm below voxel 0 along +z).
  assert t.origin == pytest.approx((0.0, 0.0, 11.0))
  # Window centre physical z equals the averaged value everywhere.
  np.testing.assert_allclose(
    t.index_to_physical(np.array([[k, 0, 0] for k in range(12)]))[:, 2] - 10,
    t.hu[:, 0, 0],
    atol=1e-5,
  )


def test_thick_slices_uniform_and_flipped_direction():
  s = Scan(
    hu=np.full((9, 2, 2), 77.0, np.float32),
    spacing=(0.6, 1.0, 1.0),
    origin=(0.0, 0.0, 0.0),
    direction=(1, 0, 0, 0, 1, 0, 0, 0, -1),
  )
  t = preprocess.thick_slices(s)
  np.testing.assert_allclose(t.hu, 77.0)
  assert t.origin[2] == pytest.approx(-(3.0 / 2 - 0.3))  # moved along -z (the scan's z axis)
  short = preprocess.thick_slices(
    Scan(
      hu=np.arange(2, dtype=np.float32).reshape(2, 1, 1) * np.ones((2, 2, 2), np.float32),
      spacing=(1.0, 1.0, 1.0),
    )
  )
  assert short.shape[0] == 1 and short.hu[0, 0, 0] == pytest.approx(0.5)


def test_normalize_hu_values():
  data = paper.get_config().data
  out = preprocess.normalize_hu(np.array([-3000.0, -1000.0, 130.0, 3000.0, 5000.0]), data)
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [-1.0, -1.0, 0.0, 2870.0 / 1130.0, 2870.0 / 1130.0], rtol=1e-6)
  j = preprocess.normalize_hu(jnp.array([-1000.0, 130.0, 3000.0]), data)
  np.testing.assert_allclose(np.asarray(j), [-1.0, 0.0, 2870.0 / 1130.0], rtol=1e-6)
