"""Preview figure: axial and coronal slices of phantom cases with calcium labels overlaid."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cac_jax import atomic
from cac_jax.data.scan import Case

CLASS_COLOURS = (
  (0, 0, 0),
  (1.0, 0.15, 0.15),
  (0.1, 0.9, 0.1),
  (0.2, 0.5, 1.0),
  (1.0, 0.9, 0.0),
  (1.0, 0.2, 1.0),
  (0.0, 1.0, 1.0),
)
WINDOW = (-200.0, 800.0)


def _venous_contrast_y(case: Case, lab: np.ndarray):
  """Coronal index through dense venous contrast (>= 800 HU, unlabelled) beside the ascending aorta."""
  from scipy import ndimage

  aorta = case.aorta_mask
  if aorta is None or not aorta.any():
    return None
  ys = np.nonzero(aorta)[1]
  asc = aorta.copy()
  asc[:, int(np.median(ys)) :, :] = False  # the anterior half: ascending aorta, not the descending
  if not asc.any():
    return None
  near = ndimage.distance_transform_edt(~asc, sampling=case.scan.spacing) <= 15.0
  dense = (case.scan.hu >= 800.0) & (lab == 0) & near & ~aorta
  if dense.sum() < 20:
    return None
  return int(np.argmax(dense.sum(axis=(0, 2))))


def _pick_slices(case: Case) -> tuple[int, int]:
  """(axial z index, coronal y index): through the most coronary label, else the heart centre.

  CCTA: the coronal slice goes through dense venous (SVC) contrast where there is some.
  """
  lab = case.labels if case.labels is not None else np.zeros(case.scan.shape, np.int32)
  cor = (lab >= 1) & (lab <= 3)
  src = cor if cor.any() else (lab > 0 if lab.any() else case.heart_mask)
  if src is None or not src.any():
    return case.scan.shape[0] // 2, case.scan.shape[1] // 2
  z = int(np.argmax(src.sum(axis=(1, 2))))
  y = int(np.argmax(src.sum(axis=(0, 2))))
  if case.domain == "ccta":
    yv = _venous_contrast_y(case, lab)
    if yv is not None:
      y = yv
  return z, y


def _overlay(img: np.ndarray, lab: np.ndarray) -> np.ndarray:
  g = np.clip((img - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0.0, 1.0)
  rgb = np.repeat(g[..., None], 3, axis=-1)
  for k in range(1, len(CLASS_COLOURS)):
    m = lab == k
    if m.any():
      rgb[m] = 0.35 * rgb[m] + 0.65 * np.asarray(CLASS_COLOURS[k])
  return rgb


def plots_preview(cases: Sequence[Case], png_path: str, dpi: int = 80) -> str:
  """Writes a PNG: one row per case, axial and coronal slices, window [-200, 800] HU, labels coloured.

  Coronal slices are drawn with the correct physical aspect (z spacing vs x spacing), superior up.
  """
  import matplotlib

  matplotlib.use("Agg")
  from matplotlib.patches import Patch
  import matplotlib.pyplot as plt

  n = len(cases)
  fig, axes = plt.subplots(n, 2, figsize=(9, 4.4 * n), squeeze=False)
  for row, case in enumerate(cases):
    hu = case.scan.hu
    lab = case.labels if case.labels is not None else np.zeros(hu.shape, np.int32)
    z, y = _pick_slices(case)
    sz, sy, sx = case.scan.spacing
    ax_img = _overlay(hu[z], lab[z])
    cor_img = _overlay(hu[:, y, :][::-1], lab[:, y, :][::-1])
    meta = case.scan.meta
    title = f"{meta.get('phantom_domain', case.domain)} {case.case_id} kVp {meta.get('kvp')}"
    axes[row, 0].imshow(ax_img, aspect=sy / sx, interpolation="nearest")
    axes[row, 0].set_title(f"{title}\naxial z={z}", fontsize=8)
    axes[row, 1].imshow(cor_img, aspect=sz / sx, interpolation="nearest")
    thr = meta.get("calcium_threshold_hu", float("nan"))
    axes[row, 1].set_title(f"coronal y={y}  threshold {thr:.0f} HU", fontsize=8)
    for a in axes[row]:
      a.set_xticks([])
      a.set_yticks([])
  names = ("LAD", "LCX", "RCA", "aorta", "aortic valve", "mitral valve")
  fig.legend(
    handles=[Patch(color=CLASS_COLOURS[k + 1], label=nm) for k, nm in enumerate(names)],
    loc="lower center",
    ncol=6,
    fontsize=8,
  )
  fig.tight_layout(rect=(0, 0.03, 1, 1))
  try:
    return atomic.write_png(png_path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
  finally:
    plt.close(fig)
