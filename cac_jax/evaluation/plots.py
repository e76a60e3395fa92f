"""Figures for evaluation: the Bland-Altman plot and the risk-category confusion table
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
from matplotlib import figure as mfigure  # noqa: E402  (after selecting the backend)
from matplotlib import patches as mpatches  # noqa: E402
import numpy as np  # noqa: E402

from cac_jax.evaluation import metrics  # noqa: E402
from cac_jax.scoring import overlay  # noqa: E402


def bland_altman_plot(
  ref: Sequence[float], pred: Sequence[float], path: str, title: str = "", units: str = "mm³"
) -> str:
  """Bland-Altman plot: mean vs difference (pred − ref), bias and 95 % limits (heteroskedastic,
  or constant with a note when `metrics.bland_altman` falls back).

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
  """A confusion table as a figure: (k, k) counts (rows `row_label`, columns `col_label`),
  each cell's count written in it, the diagonal outlined. Returns path."""
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
