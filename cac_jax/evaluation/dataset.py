"""Data-set evaluation: predictions against manifest reference labels, and the written report.

`evaluate_dataset(predictions_dir, manifest_csv, split=None)` reads, for every labelled manifest
row (optionally of one split), the reference label map (manifest `label` column, reference
encoding 8/9/10/15/53/58, paths relative to the manifest) and the prediction
`predictions_dir/<id>/calcium_labels.nii.gz` (same encoding, on the input image's grid), and
computes `cac_jax.evaluation.metrics` per scan and aggregated. Rows without a label are skipped and listed.
A case whose prediction is missing, or cannot be read (truncated, not a label map, another
grid), is left out of the metrics and listed with its one-line reason (`EvaluationResults.
left_out`), as a batch of `launch.score` goes past a failing scan; the caller decides whether
that is an error (`EvaluationResults.problems`: missing ones are allowed with `allow_missing`).

Files are read by `cac_jax.data.volume_io` (the image validated as CT in HU, canonical LPS
orientation); reference and prediction must lie on the image's voxel grid (checked; no
resampling here). Agatston scores (for the risk-category kappa) use `cac_jax.scoring.scores.agatston`
on the manifest's image.

`write_report(results, output_dir)` writes results.md (markdown tables), results.csv (one row per
scan; undefined values written as "nan"), bland_altman.png (total coronary volume, mm³) and
report.html (all of it, with the cases' overlays; opens from disk), and returns the markdown text.
"""

from __future__ import annotations

from collections.abc import Sequence
import csv
import dataclasses
import io
import math
import os

import numpy as np

from cac_jax import atomic
from cac_jax import labels as labels_lib
from cac_jax.data import manifest as manifest_lib
from cac_jax.data import volume_io
from cac_jax.evaluation import html_report, metrics, plots
from cac_jax.scoring import scores

PREDICTION_FILE = "calcium_labels.nii.gz"
_CSV_FIELDS = tuple(f.name for f in dataclasses.fields(metrics.StructureMetrics))


@dataclasses.dataclass(frozen=True)
class CaseResult:
  """Per-scan result: metrics per structure, spacing (z, y, x) mm, Agatston (None if unavailable).

  The network's LAD class includes the left main; where the reference labels separate it
  (value 11, `labels.left_main_mask`), the reference's left-main volume (mm³) and Agatston are
  kept on their own (None where they do not).
  """

  case_id: str
  spacing: tuple[float, float, float]
  metrics: dict[str, metrics.StructureMetrics]
  agatston_ref: float | None = None
  agatston_pred: float | None = None
  left_main_ref_mm3: float | None = None
  left_main_ref_agatston: float | None = None
  left_main_found_as_lad: float | None = None  # share of the reference left-main volume


@dataclasses.dataclass(frozen=True)
class EvaluationResults:
  """Everything `write_report` needs.

  summary: per structure aggregate (`metrics.aggregate`).
  spearman: {"<structure> volume" | "<structure> lesions" | "total Agatston": SpearmanResult}.
  bland_altman: total coronary volume (mm³), or None with `bland_altman_note` (< 3 scans).
  kappa: Agatston risk-category kappa, or None with `kappa_note`.
  missing: case ids without prediction; broken: {case id: why its prediction could not be
  read}; both left out of every metric. unlabelled: ids skipped. allow_missing: missing
  predictions are expected (not a problem).
  """

  cases: list[CaseResult]
  summary: dict[str, metrics.StructureSummary]
  spearman: dict[str, metrics.SpearmanResult]
  bland_altman: metrics.BlandAltman | None
  bland_altman_note: str
  kappa: metrics.KappaResult | None
  kappa_note: str
  split: str | None = None
  missing: list[str] = dataclasses.field(default_factory=list)
  unlabelled: list[str] = dataclasses.field(default_factory=list)
  reference_min_voxels: int = 0
  broken: dict[str, str] = dataclasses.field(default_factory=dict)
  allow_missing: bool = False

  @property
  def left_out(self) -> dict[str, str]:
    """{case id: reason} of every labelled case left out of the metrics."""
    out = {i: f"no prediction file ({PREDICTION_FILE})" for i in self.missing}
    return {**out, **self.broken}

  def problems(self) -> str | None:
    """One line naming the left-out cases that make the evaluation incomplete, or None.

    None: no case is left out, or only missing predictions with `allow_missing`."""
    bad = self.broken if self.allow_missing else self.left_out
    if not bad:
      return None
    total = len(self.cases) + len(self.left_out)
    return (
      f"{len(bad)} of {total} case(s) left out of the metrics: "
      + "; ".join(f"{k}: {v}" for k, v in bad.items())
      + (" (pass --allow_missing to accept missing predictions)" if self.missing else "")
    )


class PredictionError(ValueError):
  """A case's prediction file cannot be used (unreadable, truncated, another grid)."""


def _evaluate_case(
  row: manifest_lib.ManifestRow, pred_path: str, reference_min_voxels: int = 0
) -> CaseResult:
  """Metrics and Agatston scores of one case; the prediction must lie on the image's grid.

  Reference components of at most `reference_min_voxels` voxels are left out
  (`metrics.drop_small_components`)."""
  try:
    scan = volume_io.read_scan(row.image)
    ref, left_main = volume_io.read_reference(row.label, scan, resample=False)
  except volume_io.ScanReadError as e:
    raise ValueError(f"case {row.id!r}: {e}") from None
  try:
    pred = volume_io.read_labels(pred_path, scan, resample=False)
  except (ValueError, OSError) as e:  # ScanReadError is a ValueError
    text = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
    raise PredictionError(f"case {row.id!r}: {text or type(e).__name__}") from None
  ref = metrics.drop_small_components(ref, reference_min_voxels)
  result = metrics.scan_metrics(ref, pred, scan.spacing)
  coronary = np.asarray(labels_lib.CORONARY_CLASSES)
  ag_ref = float(scores.agatston(np.isin(ref, coronary), scan.hu, scan.spacing))
  ag_pred = float(scores.agatston(np.isin(pred, coronary), scan.hu, scan.spacing))
  lm_mm3 = lm_agatston = lm_found = None
  if left_main is not None:
    lm_mm3 = float(left_main.sum() * scan.voxel_volume_mm3)
    lm_agatston = float(scores.agatston(left_main, scan.hu, scan.spacing))
    lm_found = float(np.mean(pred[left_main] == labels_lib.LAD))
  return CaseResult(row.id, scan.spacing, result, ag_ref, ag_pred, lm_mm3, lm_agatston, lm_found)


def evaluate_dataset(
  predictions_dir: str,
  manifest_csv: str,
  split: str | None = None,
  allow_missing: bool = False,
  reference_min_voxels: int = 0,
) -> EvaluationResults:
  """Evaluate predictions of every labelled manifest case (of `split`, if given).

  The references are taken without their components of at most `reference_min_voxels` voxels
  (0: as labelled; 2: the authors' evaluation reference).

  A case whose prediction is missing or unusable is left out and listed (`missing`,
  `broken`); `allow_missing` only records that missing ones are expected.

  Raises:
    ValueError: no case is left to evaluate (every left-out case named), or a manifest image
      or reference cannot be read (named).
  """
  rows = manifest_lib.read_manifest(manifest_csv, split=split)  # the one validator every CLI uses
  unlabelled = [r.id for r in rows if not r.label]
  rows = [r for r in rows if r.label]
  pred_paths = {r.id: os.path.join(predictions_dir, r.id, PREDICTION_FILE) for r in rows}
  missing = [i for i, p in pred_paths.items() if not os.path.isfile(p)]
  cases, broken = [], {}
  for row in rows:
    if row.id in missing:
      continue
    try:
      cases.append(_evaluate_case(row, pred_paths[row.id], reference_min_voxels))
    except PredictionError as e:
      broken[row.id] = str(e).removeprefix(f"case {row.id!r}: ")
  if not cases:
    left = {i: "no prediction file" for i in missing} | broken
    raise ValueError(
      f"no labelled case with a usable prediction to evaluate in {manifest_csv}"
      + (f" (split {split!r})" if split else "")
      + (": " + "; ".join(f"{k}: {v}" for k, v in left.items()) if left else "")
      + (f" (expected {os.path.join(predictions_dir, '<id>', PREDICTION_FILE)})" if missing else "")
    )
  return dataclasses.replace(
    _summarise(cases, split, missing, unlabelled),
    reference_min_voxels=reference_min_voxels,
    broken=broken,
    allow_missing=allow_missing,
  )


def _summarise(cases: Sequence[CaseResult], split, missing, unlabelled) -> EvaluationResults:
  per_scan = [c.metrics for c in cases]
  summary = metrics.aggregate(per_scan)
  corr = {}
  for name in metrics.STRUCTURES:
    corr[f"{name} volume"] = metrics.spearman(
      [m[name].ref_mm3 for m in per_scan], [m[name].pred_mm3 for m in per_scan]
    )
    corr[f"{name} lesions"] = metrics.spearman(
      [m[name].ref_lesions for m in per_scan], [m[name].pred_lesions for m in per_scan]
    )
  ref_vol = [m["total"].ref_mm3 for m in per_scan]
  pred_vol = [m["total"].pred_mm3 for m in per_scan]
  try:
    ba, ba_note = metrics.bland_altman(ref_vol, pred_vol), ""
  except ValueError as e:
    ba, ba_note = None, str(e)
  ag_ref = [c.agatston_ref for c in cases]
  ag_pred = [c.agatston_pred for c in cases]
  corr["total Agatston"] = metrics.spearman(ag_ref, ag_pred)
  kappa = metrics.agatston_kappa(ag_ref, ag_pred)
  kappa_note = kappa.note
  return EvaluationResults(
    list(cases),
    summary,
    corr,
    ba,
    ba_note,
    kappa,
    kappa_note,
    split,
    list(missing),
    list(unlabelled),
  )


def _fmt(x: float, digits: int = 3) -> str:
  return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def _left_main_lines(cases: Sequence[CaseResult]) -> list[str]:
  """Markdown on the reference's left main, for scans whose labels separate it (else none)."""
  lm = [c for c in cases if c.left_main_ref_mm3 is not None]
  if not lm:
    return []
  vols = np.array([c.left_main_ref_mm3 for c in lm])
  found = np.array([c.left_main_found_as_lad for c in lm])
  return [
    "",
    "## Left main (reference labels separate it)",
    "",
    f"{len(lm)} of {len(cases)} scans have left-main calcium in the reference: {vols.mean():.1f} "
    f"({vols.std():.1f}) mm³ per such scan; share of it predicted as LAD (the network's LAD "
    f"class includes the left main): {found.mean():.2f} ({found.std():.2f}).",
  ]


def results_markdown(results: EvaluationResults) -> str:
  """The report as markdown (the main table: mean (SD) per structure, then details)."""
  n = len(results.cases)
  title = "# CAC evaluation" + (f" (split {results.split})" if results.split else "")
  lines = [
    title,
    "",
    f"{n} scans evaluated"
    + (f" ({len(results.left_out)} left out: listed at the end)" if results.left_out else "")
    + ". Cells are mean (SD) over scans; sensitivity only over "
    "scans with reference calcium of the structure (n ref), F1 over scans where it is defined "
    "(n given when fewer than all scans). "
    + (
      f"References without their 26-connected components of at most "
      f"{results.reference_min_voxels} voxels (--reference_min_voxels)."
      if results.reference_min_voxels > 0
      else "References as labelled (--reference_min_voxels 0)."
    ),
    "",
    "| structure | n ref | volume sensitivity | FP volume (mm³) | F1 | lesion sensitivity | "
    "FP lesions/scan | lesion F1 |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for name in metrics.STRUCTURES:
    s = results.summary[name]
    cells = []
    for field in ("sensitivity", "fp_mm3", "f1", "lesion_sensitivity", "fp_lesions", "lesion_f1"):
      summ = s.per_scan[field]
      text = summ.format()
      if summ.n < s.n_scans and summ.n > 0:
        text += f" n={summ.n}"
      cells.append(text)
    lines.append(f"| {name} | {s.n_with_reference} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "## Pooled over scans",
    "",
    "| structure | volume sensitivity | F1 | lesion sensitivity | lesion F1 | FP lesions (sum) |",
    "|---|---|---|---|---|---|",
  ]
  for name in metrics.STRUCTURES:
    s = results.summary[name]
    lines.append(
      f"| {name} | {_fmt(s.pooled_sensitivity)} | {_fmt(s.pooled_f1)} | "
      f"{_fmt(s.pooled_lesion_sensitivity)} | {_fmt(s.pooled_lesion_f1)} | {s.fp_lesions_total} |"
    )
  lines += _left_main_lines(results.cases)
  lines += [
    "",
    "## Spearman correlation (reference vs prediction)",
    "",
    "| quantity | rho | p | n | note |",
    "|---|---|---|---|---|",
  ]
  for key, r in results.spearman.items():
    lines.append(
      f"| {key} | {_fmt(r.rho)} | {_fmt(r.pvalue)} | {r.n} | {r.note or r.p_method + ' p'} |"
    )
  lines += ["", "## Bland-Altman, total coronary calcium volume (mm³)", ""]
  ba = results.bland_altman
  if ba is None:
    lines.append(f"Not computed: {results.bland_altman_note}")
  else:
    lines.append(
      f"bias {_fmt(ba.bias)} mm³; 95% limits = {ba.formula()} (m = mean volume in mm³, "
      f"n={ba.n}); see bland_altman.png"
      + (f". {ba.note[0].upper()}{ba.note[1:]}" if ba.note else "")
    )
  lines += ["", "## Agatston risk categories (linearly weighted kappa)", ""]
  k = results.kappa
  if k is None:
    lines.append(results.kappa_note)
  else:
    lines.append(f"kappa {_fmt(k.kappa)}" + (f" ({k.note})" if k.note else ""))
    lines += [
      "",
      "| reference \\ prediction | " + " | ".join(metrics.AGATSTON_CATEGORY_NAMES) + " |",
      "|---" * (len(metrics.AGATSTON_CATEGORY_NAMES) + 1) + "|",
    ]
    for name, row in zip(metrics.AGATSTON_CATEGORY_NAMES, k.confusion):
      lines.append(f"| {name} | " + " | ".join(str(int(v)) for v in row) + " |")
  if results.left_out:
    lines += ["", "## Left out of the metrics", ""]
    lines += [f"- {k}: {v}" for k, v in results.left_out.items()]
  if results.unlabelled:
    lines += ["", f"Unlabelled cases (skipped): {', '.join(results.unlabelled)}"]
  return "\n".join(lines) + "\n"


def results_csv_text(results: EvaluationResults) -> str:
  """Per-scan CSV: case_id, spacing, <structure>_<metric> columns, Agatston; NaN as "nan"."""
  buf = io.StringIO()
  header = ["case_id", "spacing_z", "spacing_y", "spacing_x"]
  header += [f"{s}_{f}" for s in metrics.STRUCTURES for f in _CSV_FIELDS]
  header += [
    "agatston_ref",
    "agatston_pred",
    "left_main_ref_mm3",
    "left_main_ref_agatston",
    "left_main_found_as_lad",
  ]
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header)
  for c in results.cases:
    row = [c.case_id, *c.spacing]
    row += [getattr(c.metrics[s], f) for s in metrics.STRUCTURES for f in _CSV_FIELDS]
    row += [
      "" if c.agatston_ref is None else c.agatston_ref,
      "" if c.agatston_pred is None else c.agatston_pred,
    ]
    row += [
      "" if v is None else v
      for v in (c.left_main_ref_mm3, c.left_main_ref_agatston, c.left_main_found_as_lad)
    ]
    w.writerow(["nan" if isinstance(v, float) and math.isnan(v) else v for v in row])
  return buf.getvalue()


def write_report(
  results: EvaluationResults, output_dir: str, predictions_dir: str | None = None
) -> str:
  """Write results.md, results.csv, bland_altman.png and report.html into output_dir.

  Returns the markdown. report.html (`cac_jax.evaluation.html_report`) holds the tables, a
  per-scan table, the Bland-Altman plot and, when `predictions_dir` is given, each case's
  overlay.png from `launch.score` (linked, not copied)."""
  os.makedirs(output_dir, exist_ok=True)
  text = results_markdown(results)
  atomic.write_text(os.path.join(output_dir, "results.md"), text)
  atomic.write_text(os.path.join(output_dir, "results.csv"), results_csv_text(results))
  ba_png = plots.bland_altman_plot(
    [c.metrics["total"].ref_mm3 for c in results.cases],
    [c.metrics["total"].pred_mm3 for c in results.cases],
    os.path.join(output_dir, "bland_altman.png"),
    "Total coronary calcium volume",
  )
  html_path = os.path.join(output_dir, "report.html")
  rows = [
    [
      c.case_id,
      c.metrics["total"].ref_mm3,
      c.metrics["total"].pred_mm3,
      c.metrics["total"].sensitivity,
      c.metrics["total"].f1,
      c.metrics["total"].fp_lesions,
      "" if c.agatston_ref is None else c.agatston_ref,
      "" if c.agatston_pred is None else c.agatston_pred,
    ]
    for c in results.cases
  ]
  parts = [
    html_report.markdown_to_html(text),
    "<h2>Per scan (total coronary calcium)</h2>",
    html_report.table_html(
      [
        "scan",
        "reference mm³",
        "predicted mm³",
        "sensitivity",
        "F1",
        "FP lesions",
        "Agatston reference",
        "Agatston predicted",
      ],
      rows,
    ),
    "<h2>Figures</h2>",
    html_report.figure_html(ba_png, html_path, "Bland-Altman, total coronary calcium volume"),
  ]
  for c in results.cases:
    overlay = os.path.join(predictions_dir, c.case_id, "overlay.png") if predictions_dir else None
    if overlay and os.path.isfile(overlay):
      parts.append(html_report.figure_html(overlay, html_path, f"{c.case_id}: prediction overlay"))
  html_report.write_html(html_path, "Calcium scoring evaluation", parts)
  return text
