"""CCTA scores against the same patient's non-contrast scan: risk-category agreement.

A paired manifest is a data-set manifest (`cac_jax.data.manifest`) with one more column,
`patient`: each patient has one "ncct" row and one "ccta" row. The NCCT side is the patient's
NCCT Agatston (from its reference labels, or from its prediction where the row has no label);
the CCTA side is the CCTA scan's prediction (`predictions_dir/<ccta id>/calcium_labels.nii.gz`,
Agatston on the CCTA image, as `cac-score` reports it). `agreement` gives:
  - the Agatston risk categories (0, 1-10, 11-100, 101-400, > 400) of both, their confusion
    table (rows NCCT, columns CCTA) and linearly weighted kappa with a 95 % percentile
    bootstrap interval over patients;
  - Spearman's rho and Bland-Altman (heteroskedastic limits) of total coronary volume (mm³);
  - the share of patients whose category moves (and how many up, down).
Published NCCT tools reach kappa 0.85-0.95 against manual NCCT scoring (de Vos 2019, Takx
2014): the ceiling a CCTA score is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
import csv
import dataclasses
import math
import os

import numpy as np

from cac_jax import atomic
from cac_jax import labels as labels_lib
from cac_jax.data import manifest as manifest_lib
from cac_jax.data import volume_io
from cac_jax.evaluation import gates, metrics, plots
from cac_jax.scoring import scores

PATIENT_COLUMN = "patient"
PREDICTION_FILE = "calcium_labels.nii.gz"
N_CATEGORIES = len(metrics.AGATSTON_CATEGORY_NAMES)
KAPPA_CEILING = (
  "published NCCT tools reach κ 0.85-0.95 against manual NCCT scoring (de Vos 2019; Takx 2014)"
)


@dataclasses.dataclass(frozen=True)
class Pair:
  """One patient's NCCT and CCTA manifest rows."""

  patient: str
  ncct: manifest_lib.ManifestRow
  ccta: manifest_lib.ManifestRow


@dataclasses.dataclass(frozen=True)
class Agreement:
  """How CCTA scores agree with the same patients' NCCT Agatston (see the module docstring).

  patients: ids; ncct_agatston, ccta_agatston, ncct_volume_mm3, ccta_volume_mm3: (n,) per
  patient; ncct_category, ccta_category: (n,) 0..4; kappa: linearly weighted, with bootstrap
  interval; confusion: (5, 5) rows NCCT, columns CCTA; spearman: of total volume;
  bland_altman: of total volume (None with `bland_altman_note` below 3 patients); moved: share
  of patients whose category differs, moved_up / moved_down: counts.
  """

  patients: list[str]
  ncct_agatston: np.ndarray
  ccta_agatston: np.ndarray
  ncct_volume_mm3: np.ndarray
  ccta_volume_mm3: np.ndarray
  ncct_category: np.ndarray
  ccta_category: np.ndarray
  kappa: gates.Estimate
  kappa_note: str
  confusion: np.ndarray
  spearman: metrics.SpearmanResult
  bland_altman: metrics.BlandAltman | None
  bland_altman_note: str
  moved: float
  moved_up: int
  moved_down: int


def _kappa(scan_set) -> float:
  ((ref, pred),) = scan_set
  return metrics.weighted_kappa(ref, pred, N_CATEGORIES).kappa


def agreement(
  patients: Sequence[str],
  ncct_agatston: Sequence[float],
  ccta_agatston: Sequence[float],
  ncct_volume_mm3: Sequence[float],
  ccta_volume_mm3: Sequence[float],
  n_resamples: int = gates.N_RESAMPLES,
  seed: int = 0,
) -> Agreement:
  """The `Agreement` of paired per-patient scores.

  The one computation: `evaluate_paired` and the experiment feed it."""
  a_ref = np.asarray(ncct_agatston, float)
  a_pred = np.asarray(ccta_agatston, float)
  v_ref = np.asarray(ncct_volume_mm3, float)
  v_pred = np.asarray(ccta_volume_mm3, float)
  if not (len(patients) == a_ref.size == a_pred.size == v_ref.size == v_pred.size):
    raise ValueError("paired agreement needs one value of each kind per patient")
  if not patients:
    raise ValueError("paired agreement needs at least one patient")
  c_ref, c_pred = metrics.agatston_category(a_ref), metrics.agatston_category(a_pred)
  k = metrics.weighted_kappa(c_ref, c_pred, N_CATEGORIES)
  kappa = gates.bootstrap(_kappa, [(c_ref, c_pred)], n_resamples=n_resamples, seed=seed)
  ba, ba_note = None, ""
  try:
    ba = metrics.bland_altman(v_ref, v_pred)
  except ValueError as e:
    ba_note = str(e)
  return Agreement(
    patients=list(patients),
    ncct_agatston=a_ref,
    ccta_agatston=a_pred,
    ncct_volume_mm3=v_ref,
    ccta_volume_mm3=v_pred,
    ncct_category=c_ref,
    ccta_category=c_pred,
    kappa=kappa,
    kappa_note=k.note,
    confusion=k.confusion,
    spearman=metrics.spearman(v_ref, v_pred),
    bland_altman=ba,
    bland_altman_note=ba_note,
    moved=float(np.mean(c_ref != c_pred)),
    moved_up=int(np.sum(c_pred > c_ref)),
    moved_down=int(np.sum(c_pred < c_ref)),
  )


def read_pairs(csv_path: str, split: str | None = None) -> list[Pair]:
  """The manifest's patients (validated by `manifest.read_manifest`), in file order.

  Raises ValueError listing every problem: no `patient` column, a patient without exactly one
  NCCT and one CCTA row, a row without a patient.
  """
  rows = manifest_lib.read_manifest(csv_path, split=split)
  with open(csv_path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    if PATIENT_COLUMN not in (reader.fieldnames or []):
      raise ValueError(
        f"{csv_path}: a paired manifest needs a {PATIENT_COLUMN!r} column linking each "
        "patient's ncct and ccta rows"
      )
    patient_of = {r["id"].strip(): (r.get(PATIENT_COLUMN) or "").strip() for r in reader}
  by_patient: dict[str, dict[str, list]] = {}
  errors = []
  for r in rows:
    p = patient_of.get(r.id, "")
    if not p:
      errors.append(f"row {r.id!r} (line {r.line}) has no patient")
      continue
    by_patient.setdefault(p, {"ncct": [], "ccta": []})[r.domain].append(r)
  pairs = []
  for p, d in by_patient.items():
    if len(d["ncct"]) != 1 or len(d["ccta"]) != 1:
      errors.append(
        f"patient {p!r} has {len(d['ncct'])} ncct and {len(d['ccta'])} ccta rows (need 1 and 1)"
      )
      continue
    pairs.append(Pair(p, d["ncct"][0], d["ccta"][0]))
  if errors:
    raise ValueError(f"{csv_path}: {len(errors)} problem(s): " + "; ".join(errors))
  if not pairs:
    raise ValueError(f"{csv_path}: no patient with an ncct and a ccta row")
  return pairs


def _scores_of(image: str, labels_path: str, reference: bool) -> tuple[float, float]:
  """(total coronary Agatston, volume mm³) of a label file on its image's grid."""
  try:
    scan = volume_io.read_scan(image)
    if reference:
      classes, _ = volume_io.read_reference(labels_path, scan, resample=False)
    else:
      classes = volume_io.read_labels(labels_path, scan, resample=False)
  except volume_io.ScanReadError as e:
    raise ValueError(f"{labels_path}: {e}") from None
  return coronary_scores(classes, scan)


def coronary_scores(classes: np.ndarray, scan) -> tuple[float, float]:
  """(total coronary Agatston, volume mm³) of a (z, y, x) class map on `scan`'s grid.

  `scan` is a `cac_jax.data.scan.Scan`: its HU weight the lesions, its spacing sizes them."""
  coronary = np.isin(classes, np.asarray(labels_lib.CORONARY_CLASSES))
  ag = float(scores.agatston(coronary, scan.hu, scan.spacing))
  return ag, float(coronary.sum() * scan.voxel_volume_mm3)


def evaluate_paired(
  predictions_dir: str, manifest_csv: str, split: str | None = None
) -> tuple[Agreement, dict[str, str]]:
  """`agreement` of every patient of a paired manifest, and where each NCCT side came from.

  Returns (agreement, {patient: "label" | "prediction"}).

  Raises ValueError naming every missing CCTA prediction (and NCCT rows with neither a label
  nor a prediction).
  """
  pairs = read_pairs(manifest_csv, split=split)

  def pred(row):
    return os.path.join(predictions_dir, row.id, PREDICTION_FILE)

  missing = [p.ccta.id for p in pairs if not os.path.isfile(pred(p.ccta))]
  missing += [p.ncct.id for p in pairs if not p.ncct.label and not os.path.isfile(pred(p.ncct))]
  if missing:
    raise ValueError(
      f"missing prediction(s) for {len(missing)} case(s): {', '.join(missing)} "
      f"(expected {os.path.join(predictions_dir, '<id>', PREDICTION_FILE)})"
    )
  rows, source = [], {}
  for p in pairs:
    if p.ncct.label:
      ref = _scores_of(p.ncct.image, p.ncct.label, reference=True)
    else:
      ref = _scores_of(p.ncct.image, pred(p.ncct), reference=False)
    source[p.patient] = "label" if p.ncct.label else "prediction"
    rows.append((p.patient, ref, _scores_of(p.ccta.image, pred(p.ccta), reference=False)))
  return (
    agreement(
      [r[0] for r in rows],
      [r[1][0] for r in rows],
      [r[2][0] for r in rows],
      [r[1][1] for r in rows],
      [r[2][1] for r in rows],
    ),
    source,
  )


def _f(x: float, digits: int = 3) -> str:
  return "nan" if not math.isfinite(x) else f"{x:.{digits}g}"


def markdown(
  a: Agreement,
  title: str = "CCTA against the same patient's NCCT",
  sides: tuple[str, str] = ("NCCT", "CCTA"),
) -> str:
  """The paired table: kappa, confusion table, Spearman, Bland-Altman, category moves.

  Kappa with its interval, the confusion table, Spearman, Bland-Altman, the share of patients
  whose category moves. `sides`: what the reference (rows) and the compared score (columns)
  are called."""
  ref, other = sides
  names = metrics.AGATSTON_CATEGORY_NAMES
  kappa = a.kappa.format(3) + (f" ({a.kappa_note})" if a.kappa_note else "")
  lines = [
    f"### {title}",
    "",
    f"{len(a.patients)} patients. Agatston risk categories, linearly weighted κ "
    f"(95 % bootstrap interval over patients): {kappa}; {KAPPA_CEILING}.",
    f"Category moves for {a.moved:.0%} of patients ({a.moved_up} up, {a.moved_down} down).",
    "",
    f"| {ref} \\ {other} | " + " | ".join(names) + " |",
    "|---|" + "---|" * len(names),
  ]
  for i, n in enumerate(names):
    lines.append(f"| {n} | " + " | ".join(str(int(v)) for v in a.confusion[i]) + " |")
  s = a.spearman
  lines += [
    "",
    f"Total volume: Spearman ρ {_f(s.rho)} (p {_f(s.pvalue, 2)}{', ' + s.note if s.note else ''}); "
    + (
      f"Bland-Altman ({other} − {ref}, mm³) {a.bland_altman.formula()}"
      + (f" ({a.bland_altman.note})" if a.bland_altman.note else "")
      if a.bland_altman is not None
      else f"no Bland-Altman ({a.bland_altman_note})"
    )
    + ".",
  ]
  return "\n".join(lines) + "\n"


PATIENT_FIELDS = (
  "patient",
  "ncct_agatston",
  "ccta_agatston",
  "ncct_category",
  "ccta_category",
  "ncct_volume_mm3",
  "ccta_volume_mm3",
)


def patient_rows(a: Agreement) -> list[dict]:
  """One row per patient (`PATIENT_FIELDS`), categories by name."""
  names = metrics.AGATSTON_CATEGORY_NAMES
  return [
    {
      "patient": p,
      "ncct_agatston": round(float(a.ncct_agatston[i]), 2),
      "ccta_agatston": round(float(a.ccta_agatston[i]), 2),
      "ncct_category": names[a.ncct_category[i]],
      "ccta_category": names[a.ccta_category[i]],
      "ncct_volume_mm3": round(float(a.ncct_volume_mm3[i]), 2),
      "ccta_volume_mm3": round(float(a.ccta_volume_mm3[i]), 2),
    }
    for i, p in enumerate(a.patients)
  ]


def write_report(a: Agreement, output_dir: str, title: str | None = None) -> str:
  """Write paired.md, paired.csv and the two paired figures into output_dir, all or nothing.

  The files: paired.md, paired.csv (per patient), paired_confusion.png and
  paired_bland_altman.png. Returns the markdown."""
  os.makedirs(output_dir, exist_ok=True)
  text = markdown(a) if title is None else markdown(a, title)
  return (
    atomic.write_set(
      output_dir,
      {
        "paired_confusion.png": lambda p: plots.confusion_plot(
          a.confusion,
          p,
          title="Risk category: NCCT (rows) vs CCTA (columns)",
          row_label="NCCT",
          col_label="CCTA",
        ),
        "paired_bland_altman.png": lambda p: plots.bland_altman_plot(
          a.ncct_volume_mm3, a.ccta_volume_mm3, p, "Total coronary volume, CCTA − NCCT"
        ),
        "paired.csv": lambda p: atomic.write_csv(p, PATIENT_FIELDS, patient_rows(a)),
        "paired.md": lambda p: atomic.write_text(p, text),
      },
    )
    and text
  )
