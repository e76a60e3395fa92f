"""A corpus of malformed, odd and adversarial inputs to the launch scripts (issue 16).

Every case ends as expected: a correct result on the input's grid, or one clear line
`<prog>: error: ...` with exit status 2 and no files left behind. The command lines of one
script run in one process (`tests/cli_batch.py`: flags parsed afresh per case, the script's
`main` behind the same error handler as `python -m`), so JAX is imported once per script;
a few cases run as real subprocesses to check what a user sees (no traceback, `--debug`).
Inputs are tiny synthetic volumes (20 x 40 x 40 voxels) written into a temporary folder.
"""

from __future__ import annotations

from collections.abc import Callable
import csv
import dataclasses
import fcntl
import gzip
import json
import locale
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from cac_jax import checkpoints, labels
from cac_jax.scoring import outputs, score_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPACING_XYZ = (1.0, 1.0, 1.5)  # the tiny config's working spacing: no resampling
SHAPE = (20, 40, 40)  # (z, y, x)


# ---------------------------------------------------------------------------------------------
# Synthetic inputs.


def _volume() -> np.ndarray:
  """A CT-like int16 volume: air, a soft-tissue body, a 'spine' and three calcium spots (HU)."""
  z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
  rng = np.random.default_rng(0)
  hu = np.full(SHAPE, -1000.0) + rng.normal(0, 10, SHAPE)
  body = ((y - 20) / 17.0) ** 2 + ((x - 20) / 18.0) ** 2 <= 1
  hu[body] = 40 + rng.normal(0, 10, int(body.sum()))
  hu[(np.abs(y - 33) <= 2) & (np.abs(x - 20) <= 3)] = 700  # spine
  for cz, cy, cx in ((8, 18, 16), (10, 22, 24), (12, 15, 22)):
    hu[cz - 1 : cz + 2, cy - 1 : cy + 2, cx - 1 : cx + 2] = 450  # 27 voxels = 40.5 mm³ each
  return np.round(hu).astype(np.int16)


def _heart() -> np.ndarray:
  z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
  return ((((z - 10) * 1.5) ** 2 + (y - 19) ** 2 + (x - 20) ** 2) <= 81).astype(np.uint8)


def _image(array, spacing=SPACING_XYZ, origin=(-20.0, -20.0, 0.0), direction=None) -> sitk.Image:
  img = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=False)
  spacing, origin = tuple(spacing), tuple(origin)
  if img.GetDimension() == 4:
    spacing, origin = spacing + (1.0,), origin + (0.0,)
  elif img.GetDimension() == 2:
    spacing, origin = spacing[:2], origin[:2]
  img.SetSpacing(spacing)
  img.SetOrigin(origin)
  if direction is not None:
    img.SetDirection(direction)
  return img


def _write(path, array=None, **kw) -> str:
  path = str(path)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sitk.WriteImage(_image(_volume() if array is None else array, **kw), path)
  return path


def _truncate(path: str, keep: float) -> str:
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[: int(len(data) * keep)] if keep < 1 else data[:-10])
  return path


def _nifti_with_nan(path, value) -> str:
  arr = _volume().astype(np.float32)
  arr[10, 20, 20] = value
  return _write(path, arr)


def _nifti_rescaled_uint16(path) -> str:
  """Uncompressed NIfTI: uint16 stored values = HU + 1024, scl_slope 1, scl_inter -1024."""
  _write(path, np.clip(_volume().astype(np.int32) + 1024, 0, None).astype(np.uint16))
  with open(path, "r+b") as f:
    f.seek(112)
    f.write(struct.pack("<ff", 1.0, -1024.0))
  return path


def _dicom_series(
  folder, array, uid="1.2.826.0.1.3680043.2.1125.1", skip=(), z0=0.0, name="Doe^Jane"
) -> str:
  os.makedirs(folder, exist_ok=True)
  writer = sitk.ImageFileWriter()
  writer.KeepOriginalImageUIDOn()
  for z in range(array.shape[0]):
    if z in skip:
      continue
    sl = sitk.GetImageFromArray(array[z])
    sl.SetSpacing(SPACING_XYZ[:2])
    for tag, value in [
      ("0008|0060", "CT"),
      ("0010|0010", name),
      ("0020|000e", uid),
      ("0020|0013", str(z + 1)),
      ("0020|0032", f"-20\\-20\\{z0 + 1.5 * z}"),
      ("0020|0037", "1\\0\\0\\0\\1\\0"),
      ("0028|1052", "0"),
      ("0028|1053", "1"),
    ]:
      sl.SetMetaData(tag, value)
    writer.SetFileName(os.path.join(folder, f"{uid[-3:]}_{z:03d}.dcm"))
    writer.Execute(sl)
  return str(folder)


# ---------------------------------------------------------------------------------------------
# The corpus. A case builds its command line in a fresh folder `d` (inputs under d/in, outputs
# at d/out) and states its outcome.


@dataclasses.dataclass
class Case:
  id: str
  build: Callable  # (d, env) -> list of args
  error: tuple[str, ...] | None = None  # substrings of the error line; None: succeeds
  check: Callable | None = None  # (d, result, env) -> None, extra assertions
  script: str = "launch.score"


def _score(image, *extra, heart=None, out="out", domain="ncct"):
  def build(d, env):
    args = [
      "--image",
      image(d) if callable(image) else image,
      "--checkpoint",
      env["ckpt"],
      "--output_dir",
      str(d / out),
      "--domain",
      domain,
      *extra,
    ]
    if heart is not None:
      args += ["--heart_mask", heart(d)]
    return args

  return build


def _img(path_fn):
  return lambda d: path_fn(d / "in")


def _same_scores_as_clean(d, result, env):
  report = json.loads((d / "out" / "scores.json").read_text(encoding="utf-8"))
  assert report["scores"]["total"] == env["clean"]["scores"]["total"]


def _labels_on_input_grid(image_of):
  def check(d, result, env):
    src = sitk.ReadImage(image_of(d))
    if src.GetDimension() == 4:
      src = src[:, :, :, 0]
    lab = sitk.ReadImage(str(d / "out" / "calcium_labels.nii.gz"))
    assert lab.GetSize() == src.GetSize()
    np.testing.assert_allclose(lab.GetSpacing(), src.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(lab.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(lab.GetDirection(), src.GetDirection(), atol=1e-6)
    values = set(np.unique(sitk.GetArrayFromImage(lab)).tolist())
    assert values <= set(labels.CLASS_TO_REFERENCE)

  return check


def _warns(*needles):
  def check(d, result, env):
    report = json.loads((d / "out" / "scores.json").read_text(encoding="utf-8"))
    text = " ".join(report["warnings"])
    for n in needles:
      assert n in text, text

  return check


def _all(*checks):
  def check(d, result, env):
    for c in checks:
      c(d, result, env)

  return check


NII = lambda name: _img(lambda i: _write(i / name))  # noqa: E731


def _text_file(name, text="hello"):
  def make(i):
    os.makedirs(i, exist_ok=True)
    (i / name).write_text(text)
    return str(i / name)

  return _img(make)


def _mk(fn):
  """Image builder from fn(i) that writes into the input folder i and returns the path."""

  def make(i):
    os.makedirs(i, exist_ok=True)
    return fn(i)

  return _img(make)


def _heart_file(array_fn=lambda: _heart(), name="heart.nii.gz", **kw):
  return lambda d: _write(d / "in" / name, array_fn(), **kw)


def _two_series(i):
  a = _volume()
  _dicom_series(i / "dcm", a, uid="1.2.826.0.1.3680043.2.1125.111")
  _dicom_series(i / "dcm", a[:8], uid="1.2.826.0.1.3680043.2.1125.222", z0=100.0)
  return str(i / "dcm")


def _wrapped(n):
  def make(i):
    a = _volume().astype(np.int32)
    a[0, : n // 40 + 1, :] = 64500
    return _write(i / "wrapped.nii.gz", np.clip(a, None, 65000).astype(np.float32)[:, :, :])

  return make


def _oblique():
  a = np.deg2rad(12.0)
  return (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0)


SCORE_CASES = [
  # Images that cannot be scored.
  Case(
    "missing_image", _score(lambda d: str(d / "in" / "missing.nii.gz")), ("--image", "not found")
  ),
  Case("empty_file", _score(_text_file("empty.nii.gz", "")), ("--image", "empty.nii.gz")),
  Case("text_as_nifti", _score(_text_file("text.nii.gz")), ("--image", "text.nii.gz")),
  Case("text_file", _score(_text_file("notes.txt")), ("--image", "notes.txt")),
  Case("empty_folder", _score(_mk(lambda i: str(i))), ("no DICOM series",)),
  Case(
    "folder_of_text",
    _score(_mk(lambda i: (i / "a.txt").write_text("x") and str(i))),
    ("no DICOM series",),
  ),
  Case("2d_image", _score(_mk(lambda i: _write(i / "2d.nii.gz", _volume()[10]))), ("2D image",)),
  Case(
    "single_slice_3d",
    _score(_mk(lambda i: _write(i / "one.nii.gz", _volume()[10:11]))),
    ("single slice",),
  ),
  Case(
    "rgb_image",
    _score(
      _mk(
        lambda i: (
          sitk.WriteImage(
            sitk.Compose(*[_image(_volume()[10].astype(np.uint8))] * 3), str(i / "rgb.png")
          )
          or str(i / "rgb.png")
        )
      )
    ),
    ("components",),
  ),
  Case(
    "truncated_nii_gz_half",
    _score(_mk(lambda i: _truncate(_write(i / "t.nii.gz"), 0.5))),
    ("truncated",),
  ),
  Case(
    "truncated_nii_gz_tail",
    _score(_mk(lambda i: _truncate(_write(i / "t.nii.gz"), 1.0))),
    ("truncated",),
  ),
  Case("truncated_nii", _score(_mk(lambda i: _truncate(_write(i / "t.nii"), 0.7))), ("truncated",)),
  Case("truncated_mha", _score(_mk(lambda i: _truncate(_write(i / "t.mha"), 0.7))), ("t.mha",)),
  Case("nan_nifti", _score(_mk(lambda i: _nifti_with_nan(i / "nan.nii.gz", np.nan))), ("NaN",)),
  Case(
    "inf_nifti",
    _score(_mk(lambda i: _nifti_with_nan(i / "inf.nii.gz", np.inf))),
    ("NaN or infinite",),
  ),
  Case(
    "nan_nifti_uncompressed",
    _score(_mk(lambda i: _nifti_with_nan(i / "nan.nii", np.nan))),
    ("NaN",),
  ),
  Case("nan_mha", _score(_mk(lambda i: _nifti_with_nan(i / "nan.mha", np.nan))), ("NaN",)),
  Case("nan_nrrd", _score(_mk(lambda i: _nifti_with_nan(i / "nan.nrrd", np.nan))), ("NaN",)),
  Case(
    "all_air",
    _score(_mk(lambda i: _write(i / "air.nii.gz", np.full(SHAPE, -1000, np.int16)))),
    ("no tissue",),
  ),
  Case(
    "raw_uint16_no_rescale",
    _score(
      _mk(
        lambda i: _write(
          i / "raw.nii.gz",
          np.clip(_volume().astype(np.int32) + 1024, 0, None)[:, 3:37, 3:37].astype(np.uint16),
        )
      )
    ),
    ("does not look like CT",),
  ),
  Case(
    "raw_uint16_with_air",
    _score(
      _mk(
        lambda i: _write(
          i / "rawair.nii.gz", np.clip(_volume().astype(np.int32) + 1024, 0, None).astype(np.uint16)
        )
      )
    ),
    ("CT in HU",),
  ),
  Case(
    "mr_like_values",
    _score(
      _mk(
        lambda i: _write(
          i / "mr.nii.gz", np.random.default_rng(1).integers(200, 3000, SHAPE).astype(np.int16)
        )
      )
    ),
    ("does not look like CT",),
  ),
  Case(
    "all_3000_hu",
    _score(
      _mk(
        lambda i: _write(
          i / "bright.nii.gz", np.where(_volume() > -500, 3000, -1000).astype(np.int16)
        )
      )
    ),
    ("at or above the calcium threshold",),
  ),
  Case(
    "huge_values",
    _score(_mk(lambda i: _write(i / "huge.nii.gz", np.full(SHAPE, 30000, np.int16)))),
    ("does not look like CT",),
  ),
  Case(
    "wrong_spacing_100mm",
    _score(_mk(lambda i: _write(i / "sp.nii.gz", spacing=(100.0, 100.0, 100.0)))),
    ("grid", "spacing"),
  ),
  Case(
    "4d_two_frames",
    _score(_mk(lambda i: _write(i / "4d.nii.gz", np.stack([_volume()] * 2)))),
    ("4D",),
  ),
  Case(
    "dicom_single_slice",
    _score(_mk(lambda i: os.path.join(_dicom_series(i / "one", _volume()[10:11]), "5.1_000.dcm"))),
    ("2D",),
  ),
  Case(
    "dicom_missing_slices",
    _score(_mk(lambda i: _dicom_series(i / "gap", _volume(), skip=(5, 6, 12)))),
    ("not evenly spaced", "missing"),
  ),
  Case(
    "dicom_wrong_series_uid",
    _score(_mk(_two_series), "--series", "9.9.9"),
    ("9.9.9", "1.2.826.0.1.3680043.2.1125.111"),
  ),
  # Masks that cannot be used.
  Case(
    "heart_missing",
    _score(NII("img.nii.gz"), heart=lambda d: str(d / "in" / "nope.nii.gz")),
    ("--heart_mask", "not found"),
  ),
  Case(
    "heart_text",
    _score(NII("img.nii.gz"), heart=lambda d: _text_file("h.nii.gz")(d)),
    ("--heart_mask", "h.nii.gz"),
  ),
  Case(
    "heart_fractional",
    _score(NII("img.nii.gz"), heart=_heart_file(lambda: _heart() * 0.5)),
    ("non-integer",),
  ),
  Case(
    "heart_nan",
    _score(
      NII("img.nii.gz"),
      heart=_heart_file(lambda: np.where(_heart() > 0, np.nan, 0).astype(np.float32)),
    ),
    ("NaN",),
  ),
  Case(
    "heart_elsewhere",
    _score(NII("img.nii.gz"), heart=_heart_file(origin=(500.0, 500.0, 500.0))),
    ("does not overlap",),
  ),
  Case(
    "heart_truncated",
    _score(NII("img.nii.gz"), heart=lambda d: _truncate(_heart_file()(d), 0.5)),
    ("--heart_mask", "truncated"),
  ),
  Case(
    "aorta_truncated",
    lambda d, env: _score(
      NII("img.nii.gz"), "--aorta_mask", _truncate(_heart_file(name="ao.nii.gz")(d), 0.5)
    )(d, env),
    ("--aorta_mask", "truncated"),
  ),
  # Checkpoints that cannot be used.
  Case(
    "ckpt_missing",
    lambda d, env: _score(NII("img.nii.gz"))(d, {**env, "ckpt": str(d / "nockpt")}),
    ("--checkpoint", "does not exist"),
  ),
  Case(
    "ckpt_empty_dir",
    lambda d, env: (
      os.makedirs(d / "ck"),
      _score(NII("img.nii.gz"))(d, {**env, "ckpt": str(d / "ck")}),
    )[1],
    ("--checkpoint", "missing marker"),
  ),
  Case(
    "ckpt_is_file",
    lambda d, env: (
      os.makedirs(d),
      (d / "ck").write_text("x"),
      _score(NII("img.nii.gz"))(d, {**env, "ckpt": str(d / "ck")}),
    )[2],
    ("--checkpoint", "is not a directory"),
  ),
  Case(
    "ckpt_width_edited",
    lambda d, env: _score(NII("img.nii.gz"))(d, {**env, "ckpt": _edited_ckpt(env, d, "width")}),
    ("stored shape", "config.json"),
  ),
  Case(
    "ckpt_bad_json",
    lambda d, env: _score(NII("img.nii.gz"))(d, {**env, "ckpt": _edited_ckpt(env, d, "json")}),
    ("not valid JSON",),
  ),
  Case(
    "ckpt_no_marker",
    lambda d, env: _score(NII("img.nii.gz"))(d, {**env, "ckpt": _edited_ckpt(env, d, "marker")}),
    ("missing marker",),
  ),
  Case(
    "ckpt_no_params",
    lambda d, env: _score(NII("img.nii.gz"))(d, {**env, "ckpt": _edited_ckpt(env, d, "params")}),
    ("params",),
  ),
  Case(
    "ckpt_truncated_arrays",
    lambda d, env: _score(NII("img.nii.gz"))(d, {**env, "ckpt": _edited_ckpt(env, d, "truncate")}),
    ("cannot restore params",),
  ),
  Case(
    "ckpt_foreign_marker",
    lambda d, env: _score(NII("img.nii.gz"))(d, {**env, "ckpt": _edited_ckpt(env, d, "foreign")}),
    ("does not describe",),
  ),
  # Output folders that cannot be used.
  Case(
    "output_is_file",
    lambda d, env: (
      os.makedirs(d),
      (d / "out").write_text("keep"),
      _score(NII("img.nii.gz"))(d, env),
    )[2],
    ("--output_dir", "is a file"),
    check=lambda d, r, e: (d / "out").read_text() == "keep" or pytest.fail("file changed"),
  ),
  Case(
    "output_under_file",
    lambda d, env: (
      os.makedirs(d),
      (d / "f").write_text("keep"),
      _score(NII("img.nii.gz"), out="f/sub")(d, env),
    )[2],
    ("--output_dir", "which is a file"),
  ),
  Case(
    "outputs_exist",
    lambda d, env: (_existing_outputs(d), _score(NII("img.nii.gz"))(d, env))[1],
    ("--overwrite",),
    check=lambda d, r, e: (
      (d / "out" / "scores.json").read_text() == "{}" or pytest.fail("scores.json changed")
    ),
  ),
  Case(
    "output_locked",
    lambda d, env: (_lock(d / "out", env), _score(NII("img.nii.gz"))(d, env))[1],
    ("in use by another",),
    check=lambda d, r, e: sorted(os.listdir(d / "out")) == [] or pytest.fail("files written"),
  ),
  # Flags.
  Case(
    "no_image_no_manifest",
    lambda d, env: ["--checkpoint", env["ckpt"], "--output_dir", str(d / "out")],
    ("--image or --manifest",),
  ),
  Case(
    "image_and_manifest",
    lambda d, env: _score(NII("img.nii.gz"), "--manifest", "m.csv")(d, env),
    ("--image or --manifest",),
  ),
  Case("unknown_domain_flag", _score(NII("img.nii.gz"), domain="mri"), ("--domain", "--help")),
  Case("unknown_flag", _score(NII("img.nii.gz"), "--hear_mask", "x"), ("hear_mask",)),
  Case(
    "checkpoint_flag_missing",
    lambda d, env: ["--image", "x.nii.gz", "--output_dir", str(d / "out")],
    ("--checkpoint",),
  ),
  # Odd inputs that score correctly on the input grid.
  Case(
    "clean_nifti",
    _score(NII("img.nii.gz"), heart=_heart_file()),
    check=_all(
      _labels_on_input_grid(lambda d: str(d / "in" / "img.nii.gz")), _same_scores_as_clean
    ),
  ),
  Case("mha_int16", _score(NII("img.mha"), heart=_heart_file()), check=_same_scores_as_clean),
  Case("nrrd", _score(NII("img.nrrd"), heart=_heart_file()), check=_same_scores_as_clean),
  Case(
    "float64",
    _score(
      _mk(lambda i: _write(i / "f64.nii.gz", _volume().astype(np.float64))), heart=_heart_file()
    ),
    check=_same_scores_as_clean,
  ),
  Case(
    "uint16_rescaled",
    _score(_mk(lambda i: _nifti_rescaled_uint16(i / "u16.nii")), heart=_heart_file()),
    check=_same_scores_as_clean,
  ),
  Case(
    "fov_padding_3024",
    _score(
      _mk(
        lambda i: _write(
          i / "pad.nii.gz",
          np.where(np.arange(40)[None, None, :] < 2, -3024, _volume()).astype(np.int16),
        )
      ),
      heart=_heart_file(),
    ),
  ),
  Case(
    "flipped_ras",
    _score(
      _mk(
        lambda i: _write(
          i / "ras.nii.gz",
          _volume()[:, ::-1, ::-1],
          origin=(19.0, 19.0, 0.0),
          direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1),
        )
      ),
      heart=_heart_file(),
    ),
    check=_all(
      _same_scores_as_clean, _labels_on_input_grid(lambda d: str(d / "in" / "ras.nii.gz"))
    ),
  ),
  Case(
    "oblique",
    _score(
      _mk(lambda i: _write(i / "obl.nii.gz", direction=_oblique())),
      heart=_heart_file(direction=_oblique()),
    ),
    check=_labels_on_input_grid(lambda d: str(d / "in" / "obl.nii.gz")),
  ),
  Case(
    "4d_one_frame",
    _score(_mk(lambda i: _write(i / "4d.nii.gz", _volume()[None]))),
    check=_labels_on_input_grid(lambda d: str(d / "in" / "4d.nii.gz")),
  ),
  Case(
    "spacing_0p1mm",
    _score(_mk(lambda i: _write(i / "fine.nii.gz", spacing=(0.1, 0.1, 0.15)))),
    check=_all(
      _labels_on_input_grid(lambda d: str(d / "in" / "fine.nii.gz")),
      _warns("field of view is 4 x 4 mm"),
    ),
  ),
  Case(
    "constant_soft_tissue",
    _score(_mk(lambda i: _write(i / "flat.nii.gz", np.full(SHAPE, 40, np.int16)))),
    check=_warns("no candidate"),
  ),
  Case(
    "heart_other_grid",
    _score(
      NII("img.nii.gz"), heart=_heart_file(lambda: _heart()[::2, ::2, ::2], spacing=(2.0, 2.0, 3.0))
    ),
    check=_labels_on_input_grid(lambda d: str(d / "in" / "img.nii.gz")),
  ),
  Case(
    "heart_values_0_2",
    _score(NII("img.nii.gz"), heart=_heart_file(lambda: _heart() * 2)),
    check=_same_scores_as_clean,
  ),
  Case(
    "heart_float_0_1",
    _score(NII("img.nii.gz"), heart=_heart_file(lambda: _heart().astype(np.float32))),
    check=_same_scores_as_clean,
  ),
  Case(
    "heart_empty",
    _score(NII("img.nii.gz"), heart=_heart_file(lambda: np.zeros(SHAPE, np.uint8))),
    check=_warns("heart mask is empty"),
  ),
  Case(
    "low_values_warned",
    _score(
      _mk(
        lambda i: _write(
          i / "low.nii.gz",
          np.where(
            np.arange(40)[None, None, :] < 2,
            -3024,
            np.where(np.arange(40)[None, :, None] < 1, -1500, _volume()),
          ).astype(np.int16),
        )
      )
    ),
    check=_warns("below -1100 HU other than FOV padding"),
  ),
  Case(
    "wrapped_values_warned",
    _score(_mk(_wrapped(200)), heart=_heart_file()),
    check=_warns("above 4000 HU"),
  ),
  Case(
    "dicom_series",
    _score(_mk(lambda i: _dicom_series(i / "dcm", _volume())), heart=_heart_file()),
    check=lambda d, r, e: _no_phi(d) or _same_scores_as_clean(d, r, e),
  ),
  Case(
    "dicom_two_series",
    _score(_mk(_two_series), heart=_heart_file()),
    check=_all(
      _warns("holds 2 series", "--series"), _same_scores_as_clean, lambda d, r, e: _no_phi(d)
    ),
  ),
  Case(
    "dicom_series_chosen",
    _score(_mk(_two_series), "--series", "1.2.826.0.1.3680043.2.1125.222"),
    check=lambda d, r, e: (
      json.loads((d / "out" / "scores.json").read_text())["input"]["shape_zyx"] == [8, 40, 40]
      or pytest.fail("wrong series")
    ),
  ),
  Case(
    "patient_name_in_path",
    _score(_mk(lambda i: _write(i / "DOE^JANE_19450101" / "scan.nii.gz"))),
    check=lambda d, r, e: (
      "DOE" not in (d / "out" / "scores.json").read_text() or pytest.fail("path stored")
    ),
  ),
  Case(
    "record_input_path",
    _score(NII("img.nii.gz"), "--record_input_path"),
    check=lambda d, r, e: (
      json.loads((d / "out" / "scores.json").read_text())["input"]["image"]
      == str(d / "in" / "img.nii.gz")
      or pytest.fail("path not stored")
    ),
  ),
  Case(
    "overwrite",
    lambda d, env: (_existing_outputs(d), _score(NII("img.nii.gz"), "--overwrite")(d, env))[1],
    check=lambda d, r, e: (
      "scores" in json.loads((d / "out" / "scores.json").read_text()) or pytest.fail("not replaced")
    ),
  ),
  Case(
    "stale_tmp_leftovers",
    lambda d, env: (_stale(d / "out"), _score(NII("img.nii.gz"))(d, env))[1],
    check=lambda d, r, e: (
      sorted(os.listdir(d / "out")) == sorted(outputs.OUTPUT_FILES)
      or pytest.fail(str(os.listdir(d / "out")))
    ),
  ),
  Case(
    "interrupted_set_replaced",
    lambda d, env: (_interrupted_set(d / "out"), _score(NII("img.nii.gz"))(d, env))[1],
    check=lambda d, r, e: (
      sorted(os.listdir(d / "out")) == sorted(outputs.OUTPUT_FILES) or pytest.fail("not replaced")
    ),
  ),
]


def _no_phi(d):
  for name in os.listdir(d / "out"):
    data = (d / "out" / name).read_bytes()
    data = gzip.decompress(data) if name.endswith(".gz") else data
    assert b"Doe" not in data and b"Jane" not in data, name


def _edited_ckpt(env, d, how) -> str:
  ck = d / "ck"
  shutil.copytree(env["ckpt"], ck)
  if how == "width":
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["tower_width"] *= 2
    (ck / "config.json").write_text(json.dumps(cfg))
  elif how == "json":
    (ck / "config.json").write_text("{not json")
  elif how == "marker":
    os.remove(ck / checkpoints.MARKER)
  elif how == "params":
    shutil.rmtree(ck / "params")
  elif how == "foreign":
    (ck / checkpoints.MARKER).write_text(json.dumps({"format": "other"}))
  elif how == "truncate":
    for root, _, files in os.walk(ck / "params"):
      for f in files:
        p = os.path.join(root, f)
        if os.path.getsize(p) > 1000:
          _truncate(p, 0.3)
  return str(ck)


def _existing_outputs(d):
  os.makedirs(d / "out")
  for name in outputs.OUTPUT_FILES:
    (d / "out" / name).write_text("{}")


def _stale(out):
  os.makedirs(out / ".tmp-set-abc")
  (out / ".tmp-set-abc" / "calcium_labels.nii.gz").write_bytes(b"\x1f\x8b partial")
  (out / ".tmp-xyz.nii.gz").write_bytes(b"partial")


def _interrupted_set(out):
  """What a kill between the moves of a set leaves: outputs without scores.json."""
  os.makedirs(out)
  (out / "calcium_labels.nii.gz").write_bytes(b"old")


def _lock(out, env):
  os.makedirs(out)
  fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
  fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  env["held_locks"].append(fd)


# Manifest mode of launch.score, launch.evaluate and launch.train_source.


def _dataset(d, rows=None, header=None, raw=None) -> str:
  """A manifest with two NCCT cases (image, label, heart mask); rows/header override."""
  data = d / "data"
  os.makedirs(data, exist_ok=True)
  ref = np.zeros(SHAPE, np.uint8)
  ref[7:10, 17:20, 15:18] = 8
  for cid in ("a", "b"):
    _write(data / f"{cid}.nii.gz")
    _write(data / f"{cid}_label.nii.gz", ref)
    _write(data / f"{cid}_heart.nii.gz", _heart())
  header = header or ["id", "image", "label", "heart_mask", "aorta_mask", "domain", "split"]
  rows = (
    rows
    if rows is not None
    else [
      ["a", "a.nii.gz", "a_label.nii.gz", "a_heart.nii.gz", "", "ncct", "test"],
      ["b", "b.nii.gz", "b_label.nii.gz", "b_heart.nii.gz", "", "ncct", "test"],
    ]
  )
  path = data / "manifest.csv"
  if raw is not None:
    path.write_bytes(raw)
  else:
    with open(path, "w", newline="", encoding="utf-8") as f:
      w = csv.writer(f)
      w.writerow(header)
      w.writerows(rows)
  return str(path)


def _manifest_case(id, rows=None, error=None, header=None, raw=None, extra=(), check=None):
  def build(d, env):
    return [
      "--manifest",
      _dataset(d, rows, header, raw),
      "--checkpoint",
      env["ckpt"],
      "--output_dir",
      str(d / "out"),
      *extra,
    ]

  return Case(id, build, error, check)


_A = ["a", "a.nii.gz", "a_label.nii.gz", "a_heart.nii.gz", "", "ncct", "test"]
MANIFEST_ROWS = {
  "unknown_domain": ([_A[:5] + ["mri", "test"]], ("unknown domain",)),
  "duplicate_id": ([_A, _A], ("duplicate id",)),
  "empty_id": ([[""] + _A[1:]], ("empty id",)),
  "missing_image": ([["a", "nope.nii.gz"] + _A[2:]], ("image file not found",)),
  "missing_label": ([_A[:2] + ["nope.nii.gz"] + _A[3:]], ("label file not found",)),
  "label_other_grid": (
    [_A[:2] + ["a_heart_small.nii.gz"] + _A[3:]],
    ("not on the image's voxel grid",),
  ),
  "empty_image_path": ([["a", ""] + _A[2:]], ("empty image path",)),
}


def _truncated_second_case(d, env):
  args = _manifest_case("").build(d, env)
  _truncate(str(d / "data" / "b.nii.gz"), 0.5)
  return args


def _first_case_kept(d, result, env):
  """A bad case does not stop the manifest: the other cases are scored (each written all or
  nothing), scores.csv lists the bad one with status "error" and its folder holds only the
  one-line reason, and the exit status is 2."""
  out = d / "out"
  assert sorted(os.listdir(out)) == sorted(["a", "b", "scores.csv", score_files.SCORES_LOCK])
  assert sorted(os.listdir(out / "a")) == sorted(outputs.OUTPUT_FILES)
  assert os.listdir(out / "b") == [score_files.ERROR_FILE]
  assert "truncated" in (out / "b" / score_files.ERROR_FILE).read_text(encoding="utf-8")
  with open(d / "out" / "scores.csv", encoding="utf-8") as f:
    rows = {r["id"]: r for r in csv.DictReader(f)}
  assert rows["a"]["status"] == "ok" and rows["b"]["status"] == "error"
  assert "truncated" in rows["b"]["error"]


def _manifest_cases():
  cases = []
  for name, (rows, error) in MANIFEST_ROWS.items():
    cases.append(_manifest_case(f"manifest_{name}", rows, error))
  cases += [
    _manifest_case(
      "manifest_missing_columns",
      header=["id", "image"],
      rows=[["a", "a.nii.gz"]],
      error=("missing column",),
    ),
    _manifest_case("manifest_empty_file", raw=b"", error=("missing column",)),
    _manifest_case("manifest_binary", raw=b"\xff\xfe\x00\x01garbage\x00", error=("manifest",)),
    _manifest_case(
      "manifest_no_rows_in_split", extra=("--split", "val"), error=("no rows", "--split")
    ),
    Case(
      "manifest_missing",
      lambda d, env: [
        "--manifest",
        str(d / "none.csv"),
        "--checkpoint",
        env["ckpt"],
        "--output_dir",
        str(d / "out"),
      ],
      ("--manifest", "not found"),
    ),
    _manifest_case(  # the heart-mask default 'auto' names no file: not blamed for the row
      "manifest_domain_auto",
      [_A[:5] + ["auto", "test"]],
      ("--manifest", "unknown domain 'auto'"),
      check=lambda d, r, e: "--heart_mask" not in r["stderr"] or pytest.fail(r["stderr"]),
    ),
    _manifest_case(
      "manifest_ok",
      check=lambda d, r, e: (d / "out" / "scores.csv").is_file() or pytest.fail("no csv"),
    ),
    Case(
      "manifest_second_image_truncated",
      _truncated_second_case,
      ("b.nii.gz", "truncated"),
      check=_first_case_kept,
    ),
  ]
  return cases


SCORE_CASES += _manifest_cases()


def _small_heart(d):
  _write(d / "data" / "a_heart_small.nii.gz", _heart()[::2, ::2, ::2], spacing=(2.0, 2.0, 3.0))


def _evaluate(rows=None, pred=None, raw=None):
  def build(d, env):
    manifest = _dataset(d, rows, raw=raw)
    for cid in ("a", "b"):
      _write(d / "preds" / cid / "calcium_labels.nii.gz", np.zeros(SHAPE, np.uint8))
    if pred:
      pred(d / "preds")
    return [
      "--predictions",
      str(d / "preds"),
      "--manifest",
      manifest,
      "--output_dir",
      str(d / "out"),
    ]

  return build


def _left_out_in_report(case_id: str) -> Callable:
  """Check: the report on the other case was written and names `case_id` as left out."""

  def check(d, result, env):
    del result, env
    md = (d / "out" / "results.md").read_text(encoding="utf-8")
    assert "1 scans evaluated (1 left out" in md and f"- {case_id}: " in md, md

  return check


EVALUATE_CASES = [
  Case(
    "evaluate_unknown_domain",
    _evaluate([_A[:5] + ["CT-scan", "test"]]),
    ("unknown domain",),
    script="launch.evaluate",
  ),
  Case(
    "evaluate_truncated_prediction",
    _evaluate(pred=lambda p: _truncate(str(p / "a" / "calcium_labels.nii.gz"), 0.5)),
    ("1 of 2 case(s) left out", "a: ", "truncated"),
    check=_left_out_in_report("a"),
    script="launch.evaluate",
  ),
  Case(
    "evaluate_missing_prediction",
    _evaluate(pred=lambda p: os.remove(p / "b" / "calcium_labels.nii.gz")),
    ("b: no prediction file", "--allow_missing"),
    check=_left_out_in_report("b"),
    script="launch.evaluate",
  ),
  Case(
    "evaluate_prediction_other_grid",
    _evaluate(
      pred=lambda p: _write(p / "a" / "calcium_labels.nii.gz", np.zeros((10, 20, 20), np.uint8))
    ),
    ("a: ", "not on the same voxel grid"),
    check=_left_out_in_report("a"),
    script="launch.evaluate",
  ),
  Case(
    "evaluate_output_is_file",
    lambda d, env: (os.makedirs(d), (d / "out").write_text("x"), _evaluate()(d, env))[2],
    ("--output_dir", "is a file"),
    script="launch.evaluate",
  ),
  Case(
    "evaluate_ok",
    _evaluate(),
    script="launch.evaluate",
    check=lambda d, r, e: (d / "out" / "results.md").is_file() or pytest.fail("no report"),
  ),
]


def _train(extra=(), workdir="wd", setup=None):
  def build(d, env):
    os.makedirs(d, exist_ok=True)
    if setup:
      setup(d)
    return [
      "--config",
      os.path.join(ROOT, "configs", "tiny.py"),
      "--workdir",
      str(d / workdir),
      *extra,
    ]

  return build


def _fake_checkpoint(d):
  mgr = checkpoints.manager(d / "wd" / "checkpoints")
  checkpoints.save(mgr, 5, {"x": np.zeros(2, np.float32)})
  mgr.close()


TRAIN_CASES = [
  Case(
    "train_rerun_without_resume",
    _train(setup=_fake_checkpoint),
    ("already holds", "--resume"),
    script="launch.train_source",
  ),
  Case(
    "train_workdir_is_file",
    _train(setup=lambda d: (d / "wd").write_text("x")),
    ("--workdir", "is a file"),
    script="launch.train_source",
  ),
  Case(
    "train_manifest_missing",
    lambda d, env: _train(("--source_manifest", str(d / "none.csv")))(d, env),
    ("--source_manifest", "not found"),
    script="launch.train_source",
  ),
  Case(
    "train_manifest_bad_rows",
    lambda d, env: _train(
      ("--source_manifest", _dataset(d, [_A[:5] + ["xray", "train"], ["b", "zz.nii.gz"] + _A[2:]]))
    )(d, env),
    ("2 problem(s)", "unknown domain", "image file not found"),
    script="launch.train_source",
  ),
  Case(
    "train_manifest_truncated_image",
    lambda d, env: _train(
      ("--source_manifest", _truncated_dataset(d)),
    )(d, env),
    ("truncated",),
    script="launch.train_source",
  ),
]


ADAPT_CASES = [
  Case(
    "adapt_source_checkpoint_missing",
    lambda d, env: _train(("--source_checkpoint", str(d / "none")))(d, env),
    ("--source_checkpoint", "does not exist"),
    script="launch.adapt",
  ),
  Case(
    "adapt_workdir_under_file",
    lambda d, env: _train(
      ("--source_checkpoint", env["ckpt"]),
      workdir="f/wd",
      setup=lambda d: (d / "f").write_text("x"),
    )(d, env),
    ("--workdir", "which is a file"),
    script="launch.adapt",
  ),
  Case(
    "adapt_only_source_manifest",
    lambda d, env: _train(("--source_checkpoint", env["ckpt"], "--source_manifest", _dataset(d)))(
      d, env
    ),
    ("--target_manifest",),
    script="launch.adapt",
  ),
]


def _truncated_dataset(d):
  path = _dataset(d, [["a", "a.nii.gz", "a_label.nii.gz", "a_heart.nii.gz", "", "ncct", "train"]])
  _truncate(str(d / "data" / "a.nii.gz"), 0.6)
  return path


def _full_disk(free_pages):
  """Output folder on a 256 KiB tmpfs filled up to `free_pages` 4 KiB pages (None: the pages
  the clean run's outputs but scores.json need, so scores.json does not fit)."""

  def build(d, env):
    fs = d / "fs"
    os.makedirs(fs)
    if subprocess.run(
      ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(fs)], capture_output=True
    ).returncode:
      return None
    env["mounts"].append(fs)
    pages = free_pages
    if pages is None:
      pages = sum(
        -(-os.path.getsize(env["clean_dir"] / n) // 4096)
        for n in outputs.OUTPUT_FILES
        if n != "scores.json"
      )
    (fs / "filler").write_bytes(b"\0" * ((64 - pages) * 4096))
    return _score(NII("img.nii.gz"), heart=_heart_file(), out="fs/out")(d, env)

  return build


def _only_filler(d, result, env):
  assert os.listdir(d / "fs") == ["filler"], os.listdir(d / "fs")  # nothing left behind


FAULT_CASES = [
  Case(
    "disk_full_nothing_fits",
    _full_disk(0),
    ("calcium_labels.nii.gz", "disk full"),
    check=_only_filler,
  ),
  Case("disk_full_labels_fit", _full_disk(1), ("overlay.png", "No space left"), check=_only_filler),
  Case(
    "disk_full_json_does_not_fit",
    _full_disk(None),
    ("scores.json", "No space left"),
    check=_only_filler,
  ),
]

ALL_CASES = SCORE_CASES + EVALUATE_CASES + TRAIN_CASES + ADAPT_CASES + FAULT_CASES


# ---------------------------------------------------------------------------------------------
# Running the corpus: one batch process per script.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_export):
  """Builds every case's inputs, runs each script's cases in one batch; {id: (folder, result)}."""
  saved = locale.setlocale(locale.LC_CTYPE)  # GDCM's DICOM writer resets it to "C"
  root = tmp_path_factory.mktemp("corpus")
  env = {"ckpt": tiny_export, "held_locks": [], "mounts": []}
  clean = root / "clean"
  _run_batch(
    "launch.score", {"clean": _score(NII("img.nii.gz"), heart=_heart_file())(clean, env)}, root
  )
  env["clean"] = json.loads((clean / "out" / "scores.json").read_text(encoding="utf-8"))
  env["clean_dir"] = clean / "out"
  folders, by_script, results = {}, {}, {}
  try:
    for case in ALL_CASES:
      d = root / case.id
      if case.id == "manifest_label_other_grid":
        os.makedirs(d / "data", exist_ok=True)
        _small_heart(d)
      args = case.build(d, env)
      folders[case.id] = d
      if args is None:
        results[case.id] = None  # not possible on this machine (e.g. mounting a tmpfs)
        continue
      by_script.setdefault(case.script, {})[case.id] = [str(a) for a in args]
    locale.setlocale(locale.LC_CTYPE, saved)
    for script, cases in by_script.items():
      results.update(_run_batch(script, cases, root))
    yield {cid: (folders[cid], results[cid], env) for cid in results}
  finally:
    for fd in env["held_locks"]:
      os.close(fd)
    for fs in env["mounts"]:
      subprocess.run(["umount", str(fs)], capture_output=True)


def _run_batch(script, cases, root):
  cases_path, results_path = root / f"{script}.cases.json", root / f"{script}.results.json"
  cases_path.write_text(json.dumps(cases), encoding="utf-8")
  proc = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "tests", "cli_batch.py"),
      script,
      str(cases_path),
      str(results_path),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(results_path.read_text(encoding="utf-8"))


def _files_under(folder) -> list[str]:
  return (
    sorted(os.path.relpath(os.path.join(r, f), folder) for r, _, fs in os.walk(folder) for f in fs)
    if os.path.exists(folder)
    else []
  )


def test_corpus_size():
  assert len(ALL_CASES) >= 70 and len({c.id for c in ALL_CASES}) == len(ALL_CASES)


@pytest.mark.slow  # the corpus runs in one batch per script: about a minute in all
@pytest.mark.parametrize("case", ALL_CASES, ids=[c.id for c in ALL_CASES])
def test_case(corpus, case):
  d, result, env = corpus[case.id]
  if result is None:
    pytest.skip("mounting a tmpfs is not permitted here")
  prog = case.script.rsplit(".", 1)[-1]
  if case.error is None:
    assert result["rc"] == 0, result["stderr"][-3000:]
    if case.script == "launch.score" and not case.id.startswith("manifest"):
      assert sorted(f for f in os.listdir(d / "out")) == sorted(outputs.OUTPUT_FILES)
  else:
    lines = [l for l in result["stderr"].splitlines() if l.strip()]
    assert result["rc"] == 2, result["stderr"][-3000:]
    errors = [l for l in lines if l.startswith(f"{prog}: error: ")]
    assert len(errors) == 1 and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    for needle in case.error:
      assert needle in errors[0], errors[0]
    out = d / ("out" if case.script in ("launch.score", "launch.evaluate") else "wd")
    if case.id not in (
      "output_is_file",
      "outputs_exist",
      "output_locked",
      "train_workdir_is_file",
      "train_rerun_without_resume",
      "evaluate_output_is_file",
      "evaluate_truncated_prediction",  # the report on the other case is written
      "evaluate_missing_prediction",
      "evaluate_prediction_other_grid",
      "manifest_second_image_truncated",
    ):
      assert not out.exists(), _files_under(out)  # nothing left behind
  if case.check is not None:
    case.check(d, result, env)
