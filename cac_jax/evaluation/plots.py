"""Figures for evaluation: Bland-Altman, risk-category confusion, intervals, overlay rows.

The Bland-Altman plot, the risk-category confusion table, values with their intervals
(`interval_plot`) and one slice under several label maps side by side (`overlay_row`)
(matplotlib, Agg backend). The lesion overlay written with every scored scan is
`cac_jax.scoring.overlay`.

The figure is written atomically (`overlay.save_figure`), so a reader never sees a half-written
PNG. Degenerate inputs never crash a report: with fewer than 3 scans the plot still states why
it has no limits.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib import colors as mcolors  # noqa: E402  (after selecting the backend)
from matplotlib import figure as mfigure  # noqa: E402
from matplotlib import patches as mpatches  # noqa: E402
import numpy as np  # noqa: E402

from cac_jax import labels as labels_lib  # noqa: E402
from cac_jax.evaluation import metrics  # noqa: E402
from cac_jax.scoring import overlay  # noqa: E402


def bland_altman_plot(
  ref: Sequence[float], pred: Sequence[float], path: str, title: str = "", units: str = "mm³"
) -> str:
  """Bland-Altman plot: mean vs difference (pred − ref), bias and 95 % limits.

  The limits are heteroskedastic, or constant with a note when `metrics.bland_altman` falls
  back.

  Args:
    ref, pred: paired per-scan values (e.g. calcium volume in mm³), non-negative.
    path: PNG file to write.
    title: figure title.
    units: unit of the values, for the axis labels.

  Returns:
    path. With fewer than 3 scans (or values `metrics.bland_altman` rejects) the figure shows the
    points that exist and a message explaining why no limits are drawn, instead of raising.
  """
  ref = np.asarray(ref, dtype=np.float64).ravel()
  pred = np.asarray(pred, dtype=np.float64).ravel()
  if ref.shape != pred.shape:
    raise ValueError(f"bland_altman_plot needs paired values; got {ref.size} and {pred.size}")
  fig = mfigure.Figure(figsize=(6.4, 4.8))
  ax = fig.add_subplot(1, 1, 1)
  m = (ref + pred) / 2.0
  d = pred - ref
  try:
    ba = metrics.bland_altman(ref, pred)
  except ValueError as e:
    ba = None
    ax.scatter(m, d, s=18, color="k", alpha=0.7)
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.text(
      0.5,
      0.5,
      f"No Bland-Altman limits:\n{e}",
      transform=ax.transAxes,
      ha="center",
      va="center",
      fontsize=11,
      color="tab:red",
      bbox=dict(boxstyle="round", facecolor="white", edgecolor="tab:red"),
    )
  if ba is not None:
    ax.scatter(ba.mean, ba.diff, s=18, color="k", alpha=0.7, label=f"scans (n={ba.n})")
    ax.axhline(0.0, color="0.6", lw=0.8)
    ax.axhline(ba.bias, color="tab:blue", lw=1.5, label=f"bias {ba.bias:.3g} {units}")
    grid = np.linspace(0.0, max(float(ba.mean.max()), 1e-9) * 1.05, 200)
    lo, hi = ba.limits(grid)
    ax.plot(grid, hi, color="tab:red", ls="--", lw=1.2, label=f"95% limits: {ba.formula()}")
    ax.plot(grid, lo, color="tab:red", ls="--", lw=1.2)
    ax.legend(loc="best", fontsize=8)
    if ba.note:  # constant limits instead of the heteroskedastic fit: say so on the figure
      ax.text(0.01, 0.01, ba.note, transform=ax.transAxes, fontsize=7, color="0.3", va="bottom")
  ax.set_xlabel(f"mean of reference and prediction ({units})")
  ax.set_ylabel(f"prediction − reference ({units})")
  ax.set_title(title or "Bland-Altman")
  ax.grid(True, alpha=0.3)
  fig.tight_layout()
  return overlay.save_figure(fig, path)


def confusion_plot(
  confusion: np.ndarray,
  path: str,
  names: Sequence[str] = metrics.AGATSTON_CATEGORY_NAMES,
  title: str = "",
  row_label: str = "reference",
  col_label: str = "prediction",
) -> str:
  """A confusion table as a figure, each cell's count written in it; returns path.

  (k, k) counts (rows `row_label`, columns `col_label`), the diagonal outlined."""
  cm = np.asarray(confusion)
  k = cm.shape[0]
  fig = mfigure.Figure(figsize=(1.2 * k + 1.6, 1.0 * k + 1.4))
  ax = fig.add_subplot(1, 1, 1)
  ax.imshow(cm, cmap="Blues", vmin=0, vmax=max(int(cm.max()), 1))
  for i in range(k):
    for j in range(k):
      dark = cm[i, j] > 0.6 * max(int(cm.max()), 1)
      ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", color="w" if dark else "k")
    ax.add_patch(mpatches.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="tab:orange", lw=1.5))
  ax.set_xticks(range(k), names)
  ax.set_yticks(range(k), names)
  ax.set_xlabel(col_label)
  ax.set_ylabel(row_label)
  ax.set_title(title or "Agatston risk categories")
  fig.tight_layout()
  return overlay.save_figure(fig, path)


def interval_plot(
  estimates: dict[str, tuple[float, float, float]],
  path: str,
  title: str = "",
  xlabel: str = "F1 (dot: mean; bar: 95 % interval)",
) -> str:
  """One row per entry of `estimates` ({label: (value, low, high)}): a dot and its interval bar.

  The value as a dot and its 95 % interval as a bar, top to bottom in the given order, on a
  0..1 axis. A NaN value is written as "n/a"; a NaN interval draws the dot alone."""
  labels = list(estimates)
  fig = mfigure.Figure(figsize=(6.0, 0.42 * len(labels) + 1.1))
  ax = fig.add_subplot(1, 1, 1)
  for row, label in enumerate(labels):
    value, low, high = (float(v) for v in estimates[label])
    if not np.isfinite(value):
      ax.text(0.02, row, "n/a", va="center", fontsize=9, color="0.4")
      continue
    if np.isfinite(low) and np.isfinite(high):
      ax.plot([low, high], [row, row], color="tab:blue", lw=2.5, solid_capstyle="butt")
    ax.plot([value], [row], "o", color="k", ms=6)
    ax.text(min(value, 0.85) + 0.03, row + 0.28, f"{value:.2f}", fontsize=8, color="0.2")
  ax.set_yticks(range(len(labels)), labels, fontsize=9)
  ax.set_ylim(len(labels) - 0.5, -0.5)
  ax.set_xlim(0.0, 1.0)
  ax.set_xlabel(xlabel, fontsize=9)
  ax.set_title(title, fontsize=10)
  ax.grid(True, axis="x", alpha=0.3)
  fig.tight_layout()
  return overlay.save_figure(fig, path)


def calcium_slice(
  reference: np.ndarray, classes: Sequence[int] = labels_lib.CORONARY_CLASSES
) -> int:
  """The axial slice with the most reference voxels of `classes` (default the coronaries).

  The middle slice when there are none."""
  per_slice = np.count_nonzero(np.isin(np.asarray(reference), classes), axis=(1, 2))
  return int(np.argmax(per_slice)) if per_slice.any() else reference.shape[0] // 2


def overlay_row(
  hu: np.ndarray,
  panels: dict[str, np.ndarray],
  z: int,
  path: str,
  spacing: Sequence[float] = (1.0, 1.0, 1.0),
  title: str = "",
  margin_mm: float = 25.0,
) -> str:
  """Axial slice `z` of `hu` once per entry of `panels`, side by side, zoomed on the calcium.

  `panels`: {name: int (z, y, x) classes 0..6}; calcium in `overlay.CLASS_COLOURS`, zoomed on
  the calcium of every panel on that slice (`margin_mm` around it; the whole slice without
  any)."""
  hu = np.asarray(hu, dtype=np.float32)
  sy, sx = float(spacing[1]), float(spacing[2])
  ny, nx = hu.shape[1:]
  extent = (0.0, nx * sx, ny * sy, 0.0)
  calcium = np.any([np.asarray(c)[z] > 0 for c in panels.values()], axis=0)
  cmap = mcolors.ListedColormap(
    ["none"] + [overlay.CLASS_COLOURS[c] for c in range(1, labels_lib.NUM_CLASSES)]
  )
  norm = mcolors.BoundaryNorm(np.arange(-0.5, labels_lib.NUM_CLASSES), cmap.N)
  fig = mfigure.Figure(figsize=(3.4 * len(panels) + 1.6, 3.7))
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (name, cls) in zip(axes, panels.items()):
    ax.imshow(
      hu[z], cmap="gray", vmin=overlay.HU_WINDOW[0], vmax=overlay.HU_WINDOW[1], extent=extent
    )
    lab = np.ma.masked_equal(np.asarray(cls)[z].astype(np.int32), 0)
    ax.imshow(lab, cmap=cmap, norm=norm, extent=extent, interpolation="nearest", alpha=0.85)
    if calcium.any():
      ys, xs = np.nonzero(calcium)
      ax.set_xlim(
        max(0.0, xs.min() * sx - margin_mm), min(nx * sx, (xs.max() + 1) * sx + margin_mm)
      )
      ax.set_ylim(
        min(ny * sy, (ys.max() + 1) * sy + margin_mm), max(0.0, ys.min() * sy - margin_mm)
      )
    n_vox = int(np.count_nonzero(np.asarray(cls)[z] > 0))
    ax.set_title(f"{name} ({n_vox} calcium voxels)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  handles = [
    mpatches.Patch(color=overlay.CLASS_COLOURS[c], label=overlay.CLASS_LABELS[c])
    for c in range(1, labels_lib.NUM_CLASSES)
  ]
  fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout(rect=(0, 0, 1 - 1.5 / (3.4 * len(panels) + 1.6), 1))
  return overlay.save_figure(fig, path)
