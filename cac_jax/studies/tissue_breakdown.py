"""Where a network's calcium calls land on phantoms: predicted-class volume by true tissue.

On a phantom every voxel's tissue is known (`cac_jax.phantoms.generate.simulate(...,
track_tissue=True)`), so each voxel the scoring looked at can be attributed: reference calcium
of a class ("reference LAD", ...) or the non-calcium tissue under it ("coronary_lumen",
"cortical_bone", "venous_contrast", ...). The table crosses that with the class the network
gave the voxel, in mm³ per scan: e.g. how much coronary lumen a CCTA network calls LAD
calcium, and whether adaptation changes it.

Counted voxels: the scoring's candidates (HU >= the scan's threshold, inside the dilated heart
when inference is restricted to it) plus any voxel the result calls calcium (region growing
may add voxels below the threshold).
"""

from __future__ import annotations

from collections.abc import Sequence
import csv
import dataclasses
import io

import numpy as np

from cac_jax import atomic
from cac_jax import labels as labels_lib
from cac_jax.phantoms import anatomy, generate
from cac_jax.scoring import pipeline
from cac_jax.studies import experiment

CLASS_NAMES = labels_lib.CLASS_NAMES


def row_name(tissue_names: Sequence[str], tissue_id: int, reference_class: int) -> str:
  """ "reference <class>" for labelled calcium, else the tissue's name."""
  if reference_class > 0:
    return f"reference {CLASS_NAMES[reference_class]}"
  return tissue_names[tissue_id] if 0 <= tissue_id < len(tissue_names) else f"tissue {tissue_id}"


def breakdown(
  tissue: np.ndarray,
  reference: np.ndarray,
  predicted: np.ndarray,
  counted: np.ndarray,
  spacing_zyx_mm: Sequence[float],
  tissue_names: Sequence[str],
) -> dict[str, np.ndarray]:
  """Volume of the counted voxels by row (tissue or reference class) and predicted class.

  Args:
    tissue: int (z, y, x) tissue ids (indices into `tissue_names`).
    reference: int (z, y, x) reference classes 0..6.
    predicted: int (z, y, x) predicted classes 0..6.
    counted: bool (z, y, x): the voxels to attribute.
    spacing_zyx_mm: voxel spacing (mm).
    tissue_names: names of the tissue ids.
  Returns:
    {row name: float64 (7,) mm³ per predicted class}; rows with no counted voxel are absent.
  """
  shape = np.shape(counted)
  for name, a in (("tissue", tissue), ("reference", reference), ("predicted", predicted)):
    if np.shape(a) != shape:
      raise ValueError(f"{name} shape {np.shape(a)} != counted shape {shape}")
  n_cls = len(CLASS_NAMES)
  sel = np.asarray(counted, bool)
  t = np.asarray(tissue)[sel].astype(np.int64)
  r = np.asarray(reference)[sel].astype(np.int64)
  p = np.asarray(predicted)[sel].astype(np.int64)
  if p.size and (p.min() < 0 or p.max() >= n_cls or r.min() < 0 or r.max() >= n_cls):
    raise ValueError(f"classes must be in 0..{n_cls - 1}")
  # One key per (row, predicted class): reference rows first (by class), then tissues.
  n_tissue = max(len(tissue_names), int(t.max()) + 1 if t.size else 0)
  row = np.where(r > 0, r - 1, n_cls - 1 + t)
  counts = np.bincount(row * n_cls + p, minlength=(n_cls - 1 + n_tissue) * n_cls).reshape(-1, n_cls)
  vox = float(np.prod(spacing_zyx_mm))
  out = {}
  for k in np.flatnonzero(counts.sum(axis=1)):
    name = (
      row_name(tissue_names, 0, int(k) + 1)
      if k < n_cls - 1
      else row_name(tissue_names, int(k) - (n_cls - 1), 0)
    )
    out[name] = counts[k] * vox
  return out


@dataclasses.dataclass
class Breakdown:
  """Summed volumes over `num_scans` scans; `per_scan()` gives the means."""

  totals: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  num_scans: int = 0

  def add(self, rows: dict[str, np.ndarray]) -> None:
    for name, v in rows.items():
      self.totals[name] = self.totals.get(name, np.zeros(len(CLASS_NAMES))) + v
    self.num_scans += 1

  def per_scan(self) -> dict[str, np.ndarray]:
    n = max(self.num_scans, 1)
    return {k: v / n for k, v in sorted(self.totals.items(), key=lambda kv: (-kv[1].sum(), kv[0]))}


def markdown(b: Breakdown, title: str | None = None) -> str:
  """Markdown table: rows by counted volume, columns predicted class, mm³ per scan."""
  head = "| true tissue | " + " | ".join(CLASS_NAMES) + " | called calcium |"
  lines = ([f"{title} ({b.num_scans} scans, mm³ per scan)", ""] if title else []) + [
    head,
    "|" + "---|" * (len(CLASS_NAMES) + 2),
  ]
  for name, v in b.per_scan().items():
    lines.append(f"| {name} | " + " | ".join(f"{x:.1f}" for x in v) + f" | {v[1:].sum():.1f} |")
  return "\n".join(lines) + "\n"


def write_csv(b: Breakdown, path: str) -> None:
  """CSV (atomic): row, then mm³ per scan for each predicted class."""
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["row", *CLASS_NAMES])
  for name, v in b.per_scan().items():
    w.writerow([name, *(f"{x:.3f}" for x in v)])
  atomic.write_text(path, buf.getvalue())


def phantom_breakdown(
  params_by_model: dict,
  config,
  domain: str,
  seeds: Sequence[int],
  fp_settings=None,
  whole_scan: bool = False,
) -> dict[str, Breakdown]:
  """Simulate phantoms `seeds` of `domain` once, score them with every model, attribute counted voxels.

  Args:
    params_by_model: {name: {"generator", "classifier"} inference params}.
    config: the config the params and phantoms belong to.
    domain: phantom domain ("ccta", "cardiac_ncct", "chest_ncct").
    seeds: phantom case seeds (an experiment's role r uses `experiment.first_case_seed(r, seed)` + k).
    fp_settings: `postprocess.FPReductionSettings` to apply; None: the raw calls of scoring with
      config.scoring's settings (`experiment.predict_raw`: inside the dilated heart).
    whole_scan: instead, the calls of Table 2's columns without FP reduction (every voxel >=
      130 HU of the whole scan, CCTA contrast lumen included; `fp_settings` must be None).
  Returns:
    {name: Breakdown}.
  """
  if whole_scan and fp_settings is not None:
    raise ValueError("whole_scan is the column without FP reduction: give no fp_settings")
  out = {m: Breakdown() for m in params_by_model}
  for seed in seeds:
    sim = generate.simulate(domain, int(seed), config, track_tissue=True)
    c = sim.case
    raw = experiment.predict_raw(params_by_model, config, [c], not whole_scan)
    reference = c.labels if c.labels is not None else np.zeros(c.scan.shape, np.int32)
    for m, [(classes, setup)] in raw.items():
      if fp_settings is not None:
        classes, _ = pipeline.reduced_classes(setup, c.scan, classes, fp_settings)
      counted = (classes > 0) | pipeline.candidate_mask(c.scan.hu, setup.threshold_hu, setup.region)
      out[m].add(
        breakdown(sim.tissue, reference, classes, counted, c.scan.spacing, anatomy.TISSUES)
      )
  return out
