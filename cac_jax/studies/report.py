"""The phantom experiment's report: gates, Table 2, the other columns, figures and files.

The gates, Table 2 (+ oracle), the validation-selected and tested-step columns, the gap
shares, the same patients' CCTA against NCCT risk categories, figures, table2.md / table2.json
and report.html.

Everything here reads the results of `cac_jax.studies.experiment.run` (one dict per seed);
nothing here trains or scores.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import os

import ml_collections
import numpy as np

from cac_jax import atomic
from cac_jax.data import manifest
from cac_jax.evaluation import gates as gates_lib
from cac_jax.evaluation import html_report, paired, plots
from cac_jax.scoring import overlay
from cac_jax.studies.experiment import (
  AUTHORS_MEASURES,
  COLUMNS,
  DECIDING_GATES,
  GATE_SETS,
  MEASURES,
  PAIRED_COMPARISONS,
  ROWS,
  artery_f1,
  benchmark_gates,
  gap_shares,
  paired_agreements,
)


def gap_shares_markdown(shares: dict[str, dict[str, gates_lib.GapShare]], over: str) -> str:
  """The gap-share table: a row per adapted network, a column per structure (`ROWS`)."""
  rows = [r for r in ROWS if r in shares]
  labels = list(shares[rows[0]]) if rows else []
  lines = [
    "| adapted network | " + " | ".join(f"{r} [95 % CI]" for r in rows) + " |",
    "|---|" + "---|" * len(rows),
  ]
  lines += [
    f"| {lab} | " + " | ".join(shares[r][lab].format() for r in rows) + " |" for lab in labels
  ]
  lines.append(
    f"\n(F1_adapted - F1_source) / (F1_oracle - F1_source), F1 per scan over the test scans "
    f"with reference calcium of that structure (the gates' reading); mean over {over}; "
    "interval: bootstrap over test scans grouped by seed. val-selected = snapshot picked with "
    "labelled CCTA (uses target labels)."
  )
  return "\n".join(lines)


def artery_f1_markdown(f1: dict[str, dict[str, gates_lib.Estimate]]) -> str:
  """F1 per structure of the columns the gap shares read, with intervals."""
  lines = ["| column | " + " | ".join(ROWS) + " |", "|---|" + "---|" * len(ROWS)]
  lines += [f"| {c} | " + " | ".join(v[r].format() for r in ROWS) + " |" for c, v in f1.items()]
  return "\n".join(lines)


def combine_seeds(results: list[dict]) -> dict:
  """Mean and SD over seeds of each cell's per-seed mean: {column: {row: {measure: (mean, sd, n_seeds)}}}."""
  out = {}
  for name in results[0]["table"]:
    out[name] = {}
    for r in ROWS:
      out[name][r] = {}
      for m, _ in MEASURES + AUTHORS_MEASURES:
        vals = np.array([res["table"][name][r][m][0] for res in results], dtype=float)
        vals = vals[np.isfinite(vals)]
        sd = float(np.std(vals, ddof=1)) if vals.size > 1 else float("nan")
        out[name][r][m] = (float(vals.mean()) if vals.size else float("nan"), sd, int(vals.size))
  return out


def _mean_sd(mean: float, sd: float, digits: int) -> str:
  """ "mean (SD)", "mean" without an SD, "n/a" without a mean."""
  if not np.isfinite(mean):
    return "n/a"
  return f"{mean:.{digits}f} ({sd:.{digits}f})" if np.isfinite(sd) else f"{mean:.{digits}f}"


def table_markdown(table: dict, over: str = "scans", which: str = "main") -> str:
  """The paper's Table 2 layout: rows artery x measure, columns test set / method; mean (SD).

  `which`: "main" (the paper's columns and the oracle), "selected" (validation-selected
  snapshots) or "tested" (the reference's tested step); only the columns present in `table`.
  Empty string when there are none.
  """
  names = [c.name for c in COLUMNS if c.table == which and c.name in table]
  if not names:
    return ""
  lines = _measure_rows(table, names, MEASURES)
  lines.append(
    f"\nmean (SD) over {over}; sensitivity over the scans with reference calcium of that artery, F1 "
    "over the scans with reference or predicted calcium (predicted calcium without reference: "
    "F1 0), FP volume over all scans."
  )
  return "\n".join(lines)


def _measure_rows(table: dict, names: list[str], measures) -> list[str]:
  """A markdown table, a row per artery x measure, a column per name: mean (SD).

  FP volume (mm³) to 1 decimal, the rest to 2."""
  lines = ["| artery | measure | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
  for r in ROWS:
    for m, label in measures:
      cells = [_mean_sd(*table[n][r][m][:2], 1 if m == "fp_mm3" else 2) for n in names]
      lines.append(f"| {r} | {label} | " + " | ".join(cells) + " |")
  return lines


def reference_note(min_voxels: int) -> str:
  """Which reference every column is scored against (`reference_min_voxels`)."""
  if min_voxels <= 0:
    return "Reference: the phantoms' labels as drawn (evaluation.reference_min_voxels 0).\n"
  return (
    f"Reference: the phantoms' labels without 26-connected components of at most {min_voxels} "
    "voxels, as the authors' evaluation reference (evaluation.reference_min_voxels).\n"
  )


ROLE_NAMES = {"ncct_test": "NCCT test", "ccta_test": "CCTA test"}


def no_fp_note(results: list[dict]) -> str:
  """Which test scans the columns without FP reduction cover ('' when every scan)."""
  covered = results[0].get("no_fp_scans", {})
  parts = [
    f"the first {k} of {n} {ROLE_NAMES.get(r, r)} scans" for r, (k, n) in covered.items() if k < n
  ]
  if not parts:
    return ""
  return (
    "Columns and gates without FP reduction score " + " and ".join(parts) + " of each seed "
    "(experiment.n_no_fp_scans: they classify every voxel >= 130 HU, most of the scoring's cost); "
    "every other column scores every test scan.\n"
  )


def authors_table_markdown(table: dict, over: str = "scans") -> str:
  """Sensitivity and F1 of every column, total and per artery, as the authors' script averages.

  Averaged as the authors' evaluation script does (`AUTHORS_MEASURES`, utils/util.py:100-137
  per label too): the numbers to set beside the paper's Table 2."""
  names = [c.name for c in COLUMNS if c.name in table]
  lines = _measure_rows(table, names, AUTHORS_MEASURES)
  lines.append(
    f"\nmean (SD) over {over}; every test scan counts, for each artery too: a scan without "
    "reference calcium (of that artery) as sensitivity 1 and as F1 1 (nothing predicted) or 0 "
    "(calcium predicted)."
  )
  return "\n".join(lines)


def pooled_gates(results: list[dict]) -> dict[str, list[gates_lib.Gate]]:
  """Both gate sets over every seed of a multi-seed run ({} for one seed).

  A gate on 3 x 8 NCCT and 3 x 16 CCTA test scans instead of one seed's 8 and 16, each seed
  read with its own networks."""
  if len(results) < 2:
    return {}
  return {which: benchmark_gates([r["per_scan"] for r in results], which) for which in GATE_SETS}


# What each score of the paired test set is called in its tables (`experiment.score_paired`).
PAIRED_SIDES = {
  "ncct_label": "NCCT labels",
  "ncct_no_adaptation": "NCCT, NCCT network",
  "ccta_no_adaptation": "CCTA, NCCT network",
  "ccta_adv_cls": "CCTA, adapted",
  "ccta_label": "CCTA labels",
}
# The confusion figures: (comparison title, file tag), one per network on CCTA against the
# NCCT network's NCCT score.
PAIRED_FIGURES = (
  (PAIRED_COMPARISONS[0][0], "no_adaptation"),
  (PAIRED_COMPARISONS[1][0], "adapted"),
)


def paired_markdown(results: list[dict], agreements: dict | None = None) -> str:
  """The section "Same patient, NCCT and CCTA"; '' without a paired test set.

  Per comparison (`PAIRED_COMPARISONS`) κ with
  its interval, the confusion table, Spearman, Bland-Altman and the share of patients whose
  category moves (`paired.markdown`); '' without a paired test set. `agreements`:
  `paired_agreements(results)` where the caller has it."""
  agreements = paired_agreements(results) if agreements is None else agreements
  if not agreements:
    return ""
  seeds = [r["seed"] for r in results if r.get("paired")]
  over = f"seeds {seeds} pooled, each scored by its own networks" if len(seeds) > 1 else ""
  n = len(next(iter(agreements.values())).patients)
  parts = [
    "## Same patient, NCCT and CCTA\n",
    f"{n} phantom patients ({over + ', ' if over else ''}experiment.n_paired_test per seed), "
    "each acquired as cardiac NCCT (120 kVp, 3 mm) and as CCTA: does the CCTA score put the "
    "patient in the same Agatston risk category as the same patient's NCCT? The NCCT scan is "
    "scored by the NCCT network (what a clinician compares with) and, as a second reference, "
    "from its labels; every network with FP reduction, Agatston on the working grid. The last "
    "two tables are ceilings: the NCCT network on NCCT itself (the phantoms' counterpart of "
    f"the published one: {paired.KAPPA_CEILING}) and the CCTA labels (calcium above the lumen threshold, as CCTA "
    "is labelled: what a CCTA score that matched its reference would reach).\n",
  ]
  names = {title: (ref, other) for title, ref, other in PAIRED_COMPARISONS}
  for title, a in agreements.items():
    ref, other = names[title]
    parts.append(paired.markdown(a, title, (PAIRED_SIDES[ref], PAIRED_SIDES[other])))
  return "\n".join(parts)


def paired_json(agreements: dict[str, paired.Agreement]) -> dict:
  """table2.json's "paired": per comparison κ, confusion table, agreement and scores.

  κ (value, low, high), the confusion table (rows the reference), Spearman, Bland-Altman, the
  moves and the per-patient scores."""
  out = {}
  for title, a in agreements.items():
    ba = a.bland_altman
    out[title] = {
      "kappa": dataclasses.asdict(a.kappa),
      "kappa_note": a.kappa_note,
      "confusion": a.confusion.astype(int).tolist(),
      "spearman": dataclasses.asdict(a.spearman),
      "bland_altman": (
        {"bias_mm3": ba.bias, "formula": ba.formula(), "note": ba.note}
        if ba is not None
        else {"note": a.bland_altman_note}
      ),
      "moved": a.moved,
      "moved_up": a.moved_up,
      "moved_down": a.moved_down,
      "patients": paired.patient_rows(a),
    }
  return out


def write_paired_figures(agreements: dict[str, paired.Agreement], out_dir: str) -> dict[str, str]:
  """The paired confusion figures; {name: path}, {} without a paired test set.

  The confusion table of each network on CCTA against the NCCT network's NCCT risk category
  (`PAIRED_FIGURES`) as paired_confusion_<tag>.png."""
  paths = {}
  sides = {title: (ref, other) for title, ref, other in PAIRED_COMPARISONS}
  for title, tag in PAIRED_FIGURES:
    if title not in agreements:
      continue
    a, (ref, other) = agreements[title], sides[title]
    p = os.path.join(out_dir, f"paired_confusion_{tag}.png")
    plots.confusion_plot(
      a.confusion,
      p,
      title=f"{PAIRED_SIDES[other]}: {len(a.patients)} patients, κ {a.kappa.format(2)}",
      row_label=PAIRED_SIDES[ref],
      col_label=PAIRED_SIDES[other],
    )
    paths[f"paired_confusion_{tag}"] = p
  return paths


def report_markdown(
  results: list[dict],
  pooled: dict | None = None,
  shares: dict | None = None,
  agreements: dict | None = None,
) -> str:
  """Everything `launch.reproduce` prints.

  The gates per seed, Table 2 (+ oracle), the validation-selected columns with the chosen
  steps, the gap shares and, with a paired test set, the same patients' CCTA against NCCT
  categories (`paired_markdown`). `pooled`, `shares` and `agreements`: `pooled_gates(results)`,
  {row: `gap_shares(results, row)`} and `paired_agreements(results)` where the caller has them
  already (each bootstraps)."""
  pooled = pooled_gates(results) if pooled is None else pooled
  seeds = [r["seed"] for r in results]
  if len(results) == 1:
    table, over = results[0]["table"], "scans"
  else:
    table, over = combine_seeds(results), f"seeds {seeds} (per-seed means)"
  parts = ["## Benchmark gates (total coronary calcium, mean over test scans with calcium)"]
  for r in results:
    parts += [
      f"\nseed {r['seed']}, after FP reduction (the gates that decide):\n",
      gates_lib.gates_markdown(r["gates"]),
      f"\nseed {r['seed']}, without FP reduction (a reading; as the paper's source-only row "
      "was scored):\n",
      no_fp_note([r]) + gates_lib.gates_markdown(r["gates_no_fp"]),
    ]
  for which, gates in pooled.items():
    parts += [
      f"\nseeds {seeds} pooled, {which} (each value the mean over the seeds of each seed's mean; "
      "interval: bootstrap over every seed's test scans):\n",
      gates_lib.gates_markdown(gates),
    ]
  parts.append(
    "\nIn brackets: 95 % bootstrap interval over the test scans. Gate F1 is the per-scan total "
    "coronary F1 averaged over the test scans with reference calcium (Table 2's own reading); "
    "G1's FP volume is over all scans, and the last column says how the calcium-free scans fared. "
    "G2 and G3 pass when their difference is at least 0.25 and its interval lies above 0 (G3 "
    "paired by scan). The set without FP reduction, where every voxel >= 130 HU of the scan is "
    "classified (CCTA contrast lumen included) as the authors' test script scored the paper's "
    "source-only numbers (0.41 / 140 mm³ / 0.16), is printed as a reading and decides nothing."
  )
  parts += [
    "\n## Table 2 on phantoms (CCTA test set never used in training or selection)\n",
    reference_note(results[0].get("reference_min_voxels", 0)) + no_fp_note(results),
    table_markdown(table, over),
    "\n### Averaged as the authors' evaluation does, total and per artery (compare with the paper)\n",
    authors_table_markdown(table, over),
  ]
  selected = table_markdown(table, over, which="selected")
  if selected:
    steps = "; ".join(
      f"seed {r['seed']}: "
      + ", ".join(
        f"{m} step {v['step']} (val F1 {v['f1_by_step'][str(v['step'])]:.2f})"
        for m, v in r["selection"].items()
      )
      for r in results
    )
    parts += [
      "\n## Snapshots picked with labelled CCTA validation scans (model selection with target labels)\n",
      f"chosen: {steps}\n",
      selected,
    ]
  tested = table_markdown(table, over, which="tested")
  if tested:
    parts += [
      "\n## The snapshot at the reference's tested step (the authors' choice, G_15 = 750 of "
      "10,000 generator steps; no target labels read)\n",
      tested,
    ]
  shares = {r: gap_shares(results, r) for r in ROWS} if shares is None else shares
  if shares["total"]:
    parts += ["\n## Share of the oracle gap that adaptation closes\n"]
    if len(results) > 1:
      for r in results:
        one = {row: gap_shares([r], row) for row in ROWS}
        parts += [f"\nseed {r['seed']}:\n", gap_shares_markdown(one, "its test scans")]
      parts.append(f"\nseeds {seeds} pooled:\n")
    parts += [
      gap_shares_markdown(shares, over),
      "\nF1 of the columns the shares read (scans with reference calcium of each structure):\n",
      artery_f1_markdown(artery_f1(results)),
    ]
  same_patient = paired_markdown(results, agreements)
  if same_patient:
    parts += ["", same_patient]
  return "\n".join(parts)


# The overlays' columns: (column, file tag, caption in the summary).
OVERLAY_COLUMNS = (
  ("CCTA no adaptation+FP red.", "no_adaptation", "no adaptation"),
  ("CCTA Ladv+Lcls+FP red.", "adapted", "adapted"),
)


def showcase_scan(scans: Sequence[dict]) -> int:
  """Index of the test scan with the most reference coronary calcium (the first without any)."""
  return int(np.argmax([s["ref_mm3"] for s in scans]))


def write_figures(result: dict, config, out_dir: str) -> dict[str, str]:
  """Bland-Altman of total coronary volume and overlays of one CCTA test scan; {name: path}.

  Bland-Altman of total coronary volume (CCTA, adapted + FP reduction, and no adaptation)
  and overlays of the CCTA test scan with the most reference coronary calcium: one per column
  on the slices of its lesions and the reference's, the reference alone, and reference, no
  adaptation and adapted side by side on the slice with the most reference coronary calcium.
  Returns {name: path}."""
  os.makedirs(out_dir, exist_ok=True)
  paths = {}
  for col, tag, _ in reversed(OVERLAY_COLUMNS):
    scans = result["per_scan"][col]
    p = os.path.join(out_dir, f"bland_altman_ccta_{tag}.png")
    plots.bland_altman_plot(
      [s["ref_mm3"] for s in scans],
      [s["pred_mm3"] for s in scans],
      p,
      title=f"CCTA total coronary calcium volume: {col}",
    )
    paths[f"bland_altman_{tag}"] = p
  k = showcase_scan(result["per_scan"][OVERLAY_COLUMNS[1][0]])
  case = manifest.load_case(
    manifest.read_manifest(result["manifest"], split="ccta_test")[k], config
  )
  for col, tag, _ in reversed(OVERLAY_COLUMNS):
    p = os.path.join(out_dir, f"overlay_ccta_{tag}.png")
    overlay.overlay_png(
      case.scan.hu,
      result["per_scan"][col][k]["classes"].dense(),
      p,
      case.scan.spacing,
      title=f"{case.case_id}: {col}",
      reference=case.labels,
    )
    paths[f"overlay_{tag}"] = p
  p = os.path.join(out_dir, "overlay_ccta_reference.png")
  overlay.overlay_png(
    case.scan.hu, case.labels, p, case.scan.spacing, title=f"{case.case_id}: reference"
  )
  paths["overlay_reference"] = p
  panels = {"reference": case.labels} | {
    caption: result["per_scan"][col][k]["classes"].dense() for col, _, caption in OVERLAY_COLUMNS
  }
  z = plots.calcium_slice(case.labels)
  paths["overlay_side_by_side"] = plots.overlay_row(
    case.scan.hu,
    panels,
    z,
    os.path.join(out_dir, "overlay_ccta_side_by_side.png"),
    case.scan.spacing,
    title=f"{case.case_id}, slice {z} (FP reduction in both)",
  )
  return paths


# The summary figure's columns: (label, column); total coronary F1 with its interval.
SUMMARY_F1 = (
  ("NCCT at home", "NCCT test"),
  ("CCTA, no adaptation", "CCTA no adaptation"),
  ("CCTA, adapted (Ladv+Lcls)", "CCTA Ladv+Lcls"),
  ("CCTA, oracle", "CCTA oracle"),
  ("CCTA, adapted + FP reduction", "CCTA Ladv+Lcls+FP red."),
)

SUMMARY_SHARE = "Ladv+Lcls+FP red."  # the gap share the summary shows (the gates' set)


def summary_f1(results: list[dict], n_resamples: int = 2000) -> dict[str, gates_lib.Estimate]:
  """{label: total coronary F1 as the gates read it} for the `SUMMARY_F1` columns present.

  Mean over seeds with a 95 % bootstrap interval."""
  return {
    label: gates_lib.bootstrap(
      gates_lib.seed_mean,
      [(gates_lib.calcium_f1([s["metrics"] for s in r["per_scan"][col]]),) for r in results],
      n_resamples=n_resamples,
    )
    for label, col in SUMMARY_F1
    if col in results[0]["per_scan"]
  }


def summary_html(
  results: list[dict], pooled: dict, shares: dict, figures: dict[str, str], path: str
) -> tuple[str, str]:
  """(The report's opening summary (`html_report.summary_html`), the F1 figure's path).

  The summary: the deciding gates (pooled over seeds when there are several), the gap share of
  `SUMMARY_SHARE`, F1 per `SUMMARY_F1` column and the side-by-side overlay. The figure goes
  beside `path`."""
  seeds = [r["seed"] for r in results]
  gates = pooled.get(DECIDING_GATES) or results[0]["gates"]
  which = f"seeds {seeds} pooled" if pooled else f"seed {seeds[0]}"
  caption = (
    f"Benchmark gates {DECIDING_GATES} (the set that decides), {which}; in brackets the 95 % "
    "bootstrap interval over the test scans."
  )
  share = shares.get("total", {}).get(SUMMARY_SHARE)
  share_text = (
    f"Share of the oracle gap that adaptation closes ({SUMMARY_SHARE}, total coronary F1): "
    f"**{share.format()}** (0: no better than no adaptation; 1: as good as the oracle)."
    if share
    else "Share of the oracle gap: not available (no adapted or oracle column)."
  )
  f1 = summary_f1(results)
  fig = os.path.join(os.path.dirname(path), "f1_per_column.png")
  plots.interval_plot(
    {k: dataclasses.astuple(v) for k, v in f1.items()},
    fig,
    title=f"Total coronary F1, test scans with calcium ({which})",
  )
  f1_caption = (
    "Total coronary F1 per column (dot: mean; bar: 95 % interval); columns: "
    + "; ".join(f"{label}: {col}" for label, col in SUMMARY_F1 if label in f1)
  )
  overlays = (
    {"CCTA test scan: reference, no adaptation, adapted": figures["overlay_side_by_side"]}
    if "overlay_side_by_side" in figures
    else {}
  )
  return html_report.summary_html(
    path, gates, caption, share_text, (fig, f1_caption), overlays
  ), fig


def write_results(
  results: list[dict], config: ml_collections.ConfigDict, out_dir: str
) -> tuple[str, dict[str, str]]:
  """Write the figures, table2.md (`report_markdown`), table2.json and report.html into out_dir.

  Returns (the markdown report, {name: path} of every file a user opens).
  """
  figures = write_figures(results[0], config, out_dir)
  pooled = pooled_gates(results)
  shares = {row: gap_shares(results, row) for row in ROWS}
  agreements = paired_agreements(results)
  figures.update(write_paired_figures(agreements, out_dir))
  md = report_markdown(results, pooled, shares, agreements)
  paths = dict(figures, table=os.path.join(out_dir, "table2.md"))
  atomic.write_text(paths["table"], md + "\n")
  atomic.write_text(
    os.path.join(out_dir, "table2.json"),
    json.dumps(
      {
        "seeds": [r["seed"] for r in results],
        "tables": [r["table"] for r in results],
        "gates": [[dataclasses.asdict(g) for g in r["gates"]] for r in results],
        "gates_no_fp": [[dataclasses.asdict(g) for g in r["gates_no_fp"]] for r in results],
        "gates_pooled": {
          which: [dataclasses.asdict(g) for g in gates] for which, gates in pooled.items()
        },
        "gap_shares": {
          row: {k: dataclasses.asdict(v) for k, v in by_row.items()}
          for row, by_row in shares.items()
        },
        "selection": [r["selection"] for r in results],
      }
      | ({"paired": paired_json(agreements)} if agreements else {}),
      indent=1,
    )
    + "\n",
  )
  html_path = os.path.join(out_dir, "report.html")
  summary, paths["f1_per_column"] = summary_html(results, pooled, shares, figures, html_path)
  paths["html_report"] = html_report.reproduce_report(
    html_path, md, figures, results[0]["per_scan"], results[0]["columns"], summary=summary
  )
  return md, paths
