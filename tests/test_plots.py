"""cac_jax.evaluation.plots writes valid, non-trivial PNGs and never crashes on degenerate inputs."""

import os

from matplotlib import image as mimage
import numpy as np
import pytest

from cac_jax.evaluation import plots
from cac_jax.scoring import overlay


def _check_png(path):
  assert os.path.isfile(path)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  img = mimage.imread(path)
  assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
  assert float(img[..., :3].std()) > 0.01  # not a blank canvas
  # no temporary files left behind by the atomic write
  assert not [n for n in os.listdir(os.path.dirname(path)) if n.startswith(".tmp_")]
  return img


def test_bland_altman_plot(tmp_path):
  ref = np.array([0.0, 10.0, 50.0, 120.0, 300.0])
  pred = np.array([2.0, 8.0, 60.0, 110.0, 330.0])
  path = plots.bland_altman_plot(ref, pred, str(tmp_path / "ba.png"), "total volume")
  _check_png(path)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_bland_altman_plot_too_few_scans(tmp_path, n):
  # fewer than 3 scans: a figure with a message, not an exception.
  path = plots.bland_altman_plot(
    np.arange(n, dtype=float), np.arange(n, dtype=float) + 1, str(tmp_path / "sub" / "ba.png")
  )
  _check_png(path)


def test_bland_altman_plot_unpaired_raises(tmp_path):
  with pytest.raises(ValueError):
    plots.bland_altman_plot([1, 2, 3], [1, 2], str(tmp_path / "x.png"))


def test_overlay_png(tmp_path):
  rng = np.random.default_rng(0)
  hu = rng.normal(0, 50, size=(6, 40, 60)).astype(np.float32)
  classes = np.zeros(hu.shape, np.int32)
  for c, (z, y, x) in enumerate(
    [(1, 5, 5), (1, 10, 30), (2, 20, 10), (3, 30, 40), (4, 15, 50), (4, 25, 25)], start=1
  ):
    classes[z, y : y + 3, x : x + 3] = c
    hu[z, y : y + 3, x : x + 3] = 600
  path = overlay.overlay_png(hu, classes, str(tmp_path / "ov.png"), spacing=(3.0, 0.5, 0.8))
  img = _check_png(path)
  # the LAD colour (#e41a1c) is drawn somewhere
  rgb = img[..., :3]
  lad = np.array([0xE4, 0x1A, 0x1C]) / 255.0
  assert np.any(np.all(np.abs(rgb - lad) < 0.08, axis=-1))


def test_overlay_png_no_lesions(tmp_path):
  hu = np.linspace(-300, 900, 4 * 20 * 20, dtype=np.float32).reshape(4, 20, 20)
  path = overlay.overlay_png(
    hu,
    np.zeros(hu.shape, np.int32),
    str(tmp_path / "empty.png"),
    spacing=(1.0, 1.0, 1.0),
    title="no calcium",
  )
  _check_png(path)


def test_overlay_png_bad_input(tmp_path):
  with pytest.raises(ValueError):
    overlay.overlay_png(np.zeros((2, 4, 4)), np.zeros((2, 4, 5), np.int32), str(tmp_path / "x.png"))
  with pytest.raises(ValueError):
    overlay.overlay_png(np.zeros((2, 4, 4)), np.full((2, 4, 4), 9), str(tmp_path / "x.png"))


def test_overlay_slices_show_distinct_lesions():
  classes = np.zeros((8, 10, 10), np.int32)
  classes[1:5, 2:6, 2:6] = 1  # big lesion over slices 1-4, most voxels on each: 16
  classes[3, 2:4, 2:4] = 0  # ... fewer on slice 3
  classes[6, 8, 8] = 3  # a one-voxel lesion on slice 6
  # One slice per lesion (not three adjacent slices of the big one).
  assert overlay._pick_slices(classes, 3) == [1, 6]
  reference = np.zeros_like(classes)
  reference[0, 0, 0] = 2  # reference-only lesion: its slice is shown too
  assert overlay._pick_slices(classes, 3, reference) == [0, 1, 6]
  assert overlay._pick_slices(np.zeros_like(classes), 3) == [4]


def test_overlay_with_reference_region_and_positions(tmp_path):
  rng = np.random.default_rng(1)
  hu = rng.normal(0, 50, size=(5, 60, 60)).astype(np.float32)
  pred = np.zeros(hu.shape, np.int32)
  pred[2, 20:24, 20:24] = 1
  ref = np.zeros(hu.shape, np.int32)
  ref[2, 30:33, 30:33] = 3
  region = np.zeros(hu.shape, bool)
  region[:, 15:40, 15:40] = True
  full = _check_png(
    overlay.overlay_png(hu, pred, str(tmp_path / "a.png"), (2.0, 1.0, 1.0), title="t")
  )
  both = _check_png(
    overlay.overlay_png(
      hu,
      pred,
      str(tmp_path / "b.png"),
      (2.0, 1.0, 1.0),
      title="t",
      reference=ref,
      z_positions_mm=100.0 + 2.0 * np.arange(5),
      region=region,
    )
  )
  assert both.shape[0] > 1.5 * full.shape[0]  # a second (reference) row
  rca = np.array([0x37, 0x7E, 0xB8]) / 255.0
  assert np.any(np.all(np.abs(both[..., :3] - rca) < 0.08, axis=-1))  # the reference RCA is drawn
  with pytest.raises(ValueError):
    overlay.overlay_png(hu, pred, str(tmp_path / "c.png"), reference=ref[:2])
