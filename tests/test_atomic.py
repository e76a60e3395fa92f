"""The one atomic writer (`atomic.write_with`): every output is 0644, complete, in place."""

import os

import numpy as np
import pytest
import SimpleITK as sitk

from cac_jax import atomic
from cac_jax.data import volume_io
from cac_jax.data.scan import Case, Scan
from cac_jax.evaluation import plots
from cac_jax.phantoms import preview


@pytest.fixture
def strict_umask():
  """A umask that would make a plainly created file 0600: the writer must set 0644 itself."""
  old = os.umask(0o077)
  yield
  os.umask(old)


def _scan():
  hu = np.full((4, 8, 8), 40.0, np.float32)
  hu[0] = -1000.0
  return Scan(hu=hu, spacing=(2.0, 1.0, 1.0))


def _written(folder):
  """{name: permission bits} of everything in `folder` (no temporary leftovers allowed)."""
  names = sorted(os.listdir(folder))
  assert not [n for n in names if n.startswith(atomic.TMP_PREFIX)], names
  return {n: os.stat(os.path.join(folder, n)).st_mode & 0o777 for n in names}


def test_every_writer_makes_0644_files(tmp_path, strict_umask):
  del strict_umask
  scan = _scan()
  atomic.write_text(tmp_path / "a.txt", "x\n")
  atomic.write_csv(tmp_path / "b.csv", ["k"], [{"k": 1}])
  volume_io.write_like(np.ones(scan.shape, np.uint8), scan, tmp_path / "c.nii.gz")
  volume_io.write_scan(scan, tmp_path / "d.mhd")  # a header plus a companion (compressed: .zraw)
  plots.bland_altman_plot([1.0, 2.0, 3.0], [1.0, 2.5, 2.0], str(tmp_path / "e.png"))
  case = Case("p", scan, "ncct", labels=np.zeros(scan.shape, np.int32))
  preview.plots_preview([case], str(tmp_path / "f.png"))
  modes = _written(tmp_path)
  assert set(modes) == {"a.txt", "b.csv", "c.nii.gz", "d.mhd", "d.zraw", "e.png", "f.png"}
  assert set(modes.values()) == {0o644}, {n: oct(m) for n, m in modes.items()}
  assert volume_io.read_scan(tmp_path / "d.mhd").shape == scan.shape  # the .mhd names d.zraw
  assert (tmp_path / "f.png").read_bytes()[-8:-4] == b"IEND"


def test_failed_verify_leaves_the_old_file_and_names_the_target(tmp_path):
  target = tmp_path / "fig.png"
  target.write_bytes(b"old")
  with pytest.raises(OSError, match="incomplete PNG") as e:
    atomic.write_png(target, lambda p: open(p, "wb").write(b"\x89PNG cut short"))
  assert e.value.filename == str(target)
  assert target.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["fig.png"]


def test_writer_error_removes_the_temporary_folder(tmp_path, monkeypatch):
  def fail(img, path, *a):
    del img, a
    open(path, "wb").write(b"partial")
    raise RuntimeError("disk full")

  monkeypatch.setattr(sitk, "WriteImage", fail)
  with pytest.raises(OSError, match="cannot write the image"):
    volume_io.write_scan(_scan(), tmp_path / "x.nii.gz")
  assert os.listdir(tmp_path) == []
