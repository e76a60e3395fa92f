"""The lesion overlay PNG written with every scored scan: one axial slice per lesion.

Classes in fixed colours, optionally the reference and the heart region (matplotlib, Agg
backend).

Written atomically (`atomic.write_png`); an overlay without lesions still states why it is
empty. Used by `scoring.pipeline` (overlay.png of `launch.score`) and the experiment's figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib import colors as mcolors  # noqa: E402  (after selecting the backend)
from matplotlib import figure as mfigure  # noqa: E402
from matplotlib import patches as mpatches  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from cac_jax import atomic  # noqa: E402
from cac_jax import labels as labels_lib  # noqa: E402
from cac_jax.data import scan as scan_lib  # noqa: E402

HU_WINDOW = (-200.0, 800.0)
# Fixed legend colours for classes 1..6 (LAD, LCX, RCA, aorta, aortic valve, mitral valve).
CLASS_COLOURS = labels_lib.CLASS_COLOURS
CLASS_LABELS = labels_lib.CLASS_DISPLAY_NAMES


def save_figure(fig: mfigure.Figure, path: str, dpi: int = 100) -> str:
  """Write `fig` as a PNG atomically; returns `path`."""
  return atomic.write_png(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))


def _pick_slices(
  classes: np.ndarray, n_slices: int, reference: np.ndarray | None = None
) -> list[int]:
  """Axial slices through distinct lesions (at most n_slices, sorted); middle if none.

  Lesions are 6-connected components of calcium (of `classes`, and of `reference` when given),
  largest first; each contributes the slice where it has the most voxels, so the figure shows
  several lesions rather than adjacent slices of the biggest one.
  """
  calcium = classes > 0 if reference is None else (classes > 0) | (reference > 0)
  z0 = 0
  if calcium.any():  # lesions lie in the box of the calcium voxels: label only that
    box = labels_lib.labelled_box(calcium)
    calcium, z0 = calcium[box], box[0].start
  lab, n = ndimage.label(calcium, structure=ndimage.generate_binary_structure(3, 1))
  if n == 0:
    return [classes.shape[0] // 2]
  sizes = np.bincount(lab.ravel(), minlength=n + 1)[1:]
  boxes = ndimage.find_objects(lab)
  picked: list[int] = []
  for i in np.argsort(-sizes, kind="stable"):
    box = boxes[i]
    per_slice = np.count_nonzero(lab[box] == i + 1, axis=(1, 2))
    z = int(z0 + box[0].start + np.argmax(per_slice))
    if z not in picked:
      picked.append(z)
    if len(picked) == n_slices:
      break
  return sorted(picked)


def _zoom_box(mask: np.ndarray | None, spacing, margin_mm: float = 15.0):
  """In-plane (x0, x1, y0, y1) in mm around `mask` (any slice) plus a margin; None if empty."""
  if mask is None or not np.any(mask):
    return None
  ys = np.nonzero(np.any(mask, axis=(0, 2)))[0]
  xs = np.nonzero(np.any(mask, axis=(0, 1)))[0]
  sy, sx = float(spacing[1]), float(spacing[2])
  ny, nx = mask.shape[1:]
  return (
    max(0.0, xs[0] * sx - margin_mm),
    min(nx * sx, (xs[-1] + 1) * sx + margin_mm),
    max(0.0, ys[0] * sy - margin_mm),
    min(ny * sy, (ys[-1] + 1) * sy + margin_mm),
  )


def overlay_png(
  hu: np.ndarray,
  classes: np.ndarray,
  path: str,
  spacing: Sequence[float] = (1.0, 1.0, 1.0),
  n_slices: int = 3,
  title: str | None = None,
  *,
  reference: np.ndarray | None = None,
  z_positions_mm: Sequence[float] | None = None,
  region: np.ndarray | None = None,
  window: tuple[float, float] = HU_WINDOW,
) -> str:
  """Axial slices through distinct lesions with calcium coloured by class.

  Args:
    hu: float (z, y, x) HU volume, shown in `window` (HU).
    classes: int (z, y, x) classes 0..6, same shape; classes 1..6 drawn in `CLASS_COLOURS`.
    path: PNG file to write.
    spacing: (z, y, x) voxel size in mm; slices are drawn in mm so the aspect is correct.
    n_slices: number of axial slices (one per lesion, largest lesions first).
    title: optional figure title (e.g. case, total Agatston, threshold, window).
    reference: optional reference classes (same shape): a second row on the same slices, and
      the slices are chosen from the lesions of both.
    z_positions_mm: scanner z position (mm) of each slice, for the panel titles (default:
      slice index x spacing).
    region: optional bool (z, y, x) heart region: its outline is drawn (dashed) and the panels
      zoom on it (15 mm margin).
    window: HU display window.

  Returns:
    path. Without lesions the middle slice is shown with a "no lesions" note.
  """
  hu = np.asarray(hu, dtype=np.float32)
  classes = np.asarray(classes)
  if hu.ndim != 3 or hu.shape != classes.shape:
    raise ValueError(
      f"hu {hu.shape} and classes {classes.shape} must be 3D (z, y, x) of the same shape"
    )
  if hu.size == 0:
    raise ValueError("overlay_png needs a non-empty volume")
  rows = (
    [("prediction", classes)]
    if reference is None
    else [("prediction", classes), ("reference", np.asarray(reference))]
  )
  for _, c in rows:
    if c.shape != hu.shape:
      raise ValueError(f"reference {c.shape} differs from hu {hu.shape}")
    bad = np.unique(c[(c < 0) | (c >= labels_lib.NUM_CLASSES)])
    if bad.size:
      raise ValueError(
        f"classes holds values {bad.tolist()} outside 0..{labels_lib.NUM_CLASSES - 1}"
      )
  scan_lib.voxel_volume_mm3(spacing)  # validates spacing
  sz, sy, sx = (float(s) for s in spacing)
  slices = _pick_slices(classes, max(1, int(n_slices)), reference)
  ny, nx = hu.shape[1:]
  extent = (0.0, nx * sx, ny * sy, 0.0)  # x right, y down, in mm
  box = _zoom_box(region, spacing)
  w_mm, h_mm = (box[1] - box[0], box[3] - box[2]) if box else (nx * sx, ny * sy)
  cmap = mcolors.ListedColormap(
    ["none"] + [CLASS_COLOURS[c] for c in range(1, labels_lib.NUM_CLASSES)]
  )
  norm = mcolors.BoundaryNorm(np.arange(-0.5, labels_lib.NUM_CLASSES), cmap.N)
  aspect_h = h_mm / max(w_mm, 1e-9)
  fig = mfigure.Figure(figsize=(3.6 * len(slices) + 1.8, (3.6 * aspect_h + 0.6) * len(rows) + 0.6))
  axes = fig.subplots(len(rows), len(slices), squeeze=False)
  for r, (name, cls) in enumerate(rows):
    any_lesion = bool(np.any(cls > 0))
    for ax, z in zip(axes[r], slices):
      ax.imshow(
        hu[z], cmap="gray", vmin=window[0], vmax=window[1], extent=extent, interpolation="nearest"
      )
      lab = np.ma.masked_equal(cls[z].astype(np.int32), 0)
      ax.imshow(lab, cmap=cmap, norm=norm, extent=extent, interpolation="nearest", alpha=0.85)
      if region is not None and np.any(region[z]):
        ax.contour(
          (np.arange(nx) + 0.5) * sx,
          (np.arange(ny) + 0.5) * sy,
          region[z].astype(np.float32),
          levels=[0.5],
          colors="white",
          linewidths=0.6,
          linestyles="dashed",
        )
      if box:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[3], box[2])
      ax.set_aspect("equal")
      pos = z * sz if z_positions_mm is None else float(z_positions_mm[z])
      ax.set_title(
        f"{name + ': ' if reference is not None else ''}z = {pos:.1f} mm (slice {z})", fontsize=9
      )
      ax.set_xlabel("x (mm)", fontsize=8)
      ax.set_ylabel("y (mm)", fontsize=8)
      ax.tick_params(labelsize=7)
      if not any_lesion:
        ax.text(
          0.5,
          0.5,
          "no lesions",
          transform=ax.transAxes,
          ha="center",
          va="center",
          color="yellow",
          fontsize=12,
        )
  handles = [
    mpatches.Patch(color=CLASS_COLOURS[c], label=CLASS_LABELS[c])
    for c in range(1, labels_lib.NUM_CLASSES)
  ]
  if region is not None:
    handles.append(
      mpatches.Patch(facecolor="none", edgecolor="0.4", linestyle="dashed", label="heart region")
    )
  fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
  if title:
    fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0, 1.0 - 1.6 / fig.get_figwidth(), 1))
  return save_figure(fig, path)
