"""Data-set manifests: one CSV row per case, validated up front, loaded at working spacing.

CSV columns (header required, any order, extra columns ignored):
  id          unique case identifier
  image       CT volume (file or DICOM folder), HU
  label       reference-encoded label map (see `cac_jax.labels`) on the image's voxel grid;
              empty = unlabelled
  heart_mask  heart mask (0/1), any grid (resampled by physical coordinates); may be empty
  aorta_mask  aorta mask (0/1), any grid; may be empty
  domain      "ncct" or "ccta"
  split       free text, e.g. "train", "val", "test"
Paths are relative to the folder holding the manifest (absolute paths are kept).

`read_manifest` checks every row (files exist, domain known, ids unique, label maps on the
image's grid by reading headers only) and raises one `ManifestError` listing every problem.
"""

from __future__ import annotations

import csv
import dataclasses
import os

from cac_jax.data import preprocess, volume_io
from cac_jax.data.scan import Case

COLUMNS = ("id", "image", "label", "heart_mask", "aorta_mask", "domain", "split")
DOMAINS = ("ncct", "ccta")


class ManifestError(ValueError):
  """A manifest is invalid. `errors` lists every problem found (one string each)."""

  def __init__(self, csv_path: str, errors: list[str]):
    self.csv_path = csv_path
    self.errors = list(errors)
    super().__init__(f"{csv_path}: {len(self.errors)} problem(s):\n  " + "\n  ".join(self.errors))


@dataclasses.dataclass(frozen=True)
class ManifestRow:
  """One case of a manifest; paths are absolute, optional ones None when empty."""

  id: str
  image: str
  label: str | None
  heart_mask: str | None
  aorta_mask: str | None
  domain: str
  split: str
  line: int = 0  # line number in the CSV (header = 1)

  @property
  def labelled(self) -> bool:
    return self.label is not None


def _resolve(folder: str, value: str) -> str | None:
  value = (value or "").strip()
  if not value:
    return None
  return os.path.normpath(value if os.path.isabs(value) else os.path.join(folder, value))


def read_manifest(
  csv_path, check_geometry: bool = True, split: str | None = None
) -> list[ManifestRow]:
  """Reads and validates a manifest (the one validator every command uses).

  Args:
    csv_path: path of the CSV file.
    check_geometry: read image and label headers (not voxel data) to check that each label map
      is on its image's voxel grid and that masks are readable 3D images.
    split: return only rows of this split; rows of other splits are still checked (ids,
      domain) but their files are not looked at.

  Returns:
    The (selected) rows in file order.

  Raises:
    FileNotFoundError: the manifest itself does not exist.
    ManifestError: listing every bad row (missing columns, empty/duplicate id, missing files,
      unknown domain, unreadable headers, label/image grid mismatch).
  """
  csv_path = os.fspath(csv_path)
  if not os.path.isfile(csv_path):
    raise FileNotFoundError(f"manifest not found: {csv_path}")
  folder = os.path.dirname(os.path.abspath(csv_path))
  try:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      header = [h.strip() for h in (reader.fieldnames or [])]
      missing = [c for c in COLUMNS if c not in header]
      if missing:
        raise ManifestError(
          csv_path, [f"missing column(s) {missing}; header is {header}, expected {list(COLUMNS)}"]
        )
      raw_rows = []
      for record in reader:
        raw_rows.append(
          (
            reader.line_num,
            {(k or "").strip(): (v or "").strip() for k, v in record.items() if k is not None},
          )
        )
  except (UnicodeDecodeError, csv.Error) as e:
    raise ManifestError(csv_path, [f"not a UTF-8 CSV text file ({e})"]) from None

  errors: list[str] = []
  rows: list[ManifestRow] = []
  seen: dict[str, int] = {}
  for line, rec in raw_rows:
    if not any(rec.values()):
      continue  # blank line
    case_id = rec["id"]
    where = f"line {line} (id {case_id!r})"
    row_errors = []
    if not case_id:
      row_errors.append(f"line {line}: empty id")
    elif case_id in seen:
      row_errors.append(f"{where}: duplicate id (first on line {seen[case_id]})")
    else:
      seen[case_id] = line
    domain = rec["domain"].lower()
    if domain not in DOMAINS:
      row_errors.append(f"{where}: unknown domain {rec['domain']!r}; expected one of {DOMAINS}")
    paths = {c: _resolve(folder, rec[c]) for c in ("image", "label", "heart_mask", "aorta_mask")}
    if split is not None and rec["split"] != split:
      errors.extend(row_errors)
      continue
    if paths["image"] is None:
      row_errors.append(f"{where}: empty image path")
    for column, p in paths.items():
      if p is not None and not os.path.exists(p):
        row_errors.append(f"{where}: {column} file not found: {rec[column]} ({p})")
    if check_geometry and not row_errors:
      row_errors.extend(_check_headers(where, paths))
    errors.extend(row_errors)
    rows.append(
      ManifestRow(
        id=case_id,
        image=paths["image"] or "",
        label=paths["label"],
        heart_mask=paths["heart_mask"],
        aorta_mask=paths["aorta_mask"],
        domain=domain,
        split=rec["split"],
        line=line,
      )
    )
  if errors:
    raise ManifestError(csv_path, errors)
  return rows


def _check_headers(where: str, paths: dict) -> list[str]:
  errors = []
  infos = {}
  for column, p in paths.items():
    if p is None:
      continue
    try:
      infos[column] = volume_io.image_info(p)
    except (OSError, ValueError) as e:
      errors.append(f"{where}: {column}: {e}")
  image = infos.get("image")
  if image is not None and "label" in infos:
    label = infos["label"]
    if not volume_io.same_physical_grid(image, label):
      fmt = volume_io.format_numbers
      errors.append(
        f"{where}: label map is not on the image's voxel grid (image size {image['size_xyz']} "
        f"spacing {fmt(image['spacing_xyz'])} origin {fmt(image['origin_xyz'])}; label size "
        f"{label['size_xyz']} spacing {fmt(label['spacing_xyz'])} origin "
        f"{fmt(label['origin_xyz'])})"
      )
  return errors


def load_case(row: ManifestRow, config=None) -> Case:
  """Loads one row: scan (canonical LPS, HU), classes, bool masks.

  At working spacing if `config` is given (else on the image's own grid)."""
  scan = volume_io.read_scan(row.image)
  scan = dataclasses.replace(
    scan, meta={**scan.meta, "case_id": row.id, "domain": row.domain, "split": row.split}
  )
  labels, left_main = volume_io.read_reference(row.label, scan) if row.label else (None, None)
  heart = volume_io.read_mask(row.heart_mask, scan) > 0 if row.heart_mask else None
  aorta = volume_io.read_mask(row.aorta_mask, scan) > 0 if row.aorta_mask else None
  case = Case(
    case_id=row.id,
    scan=scan,
    domain=row.domain,
    labels=labels,
    heart_mask=heart,
    aorta_mask=aorta,
    left_main=left_main,
  )
  if config is None:
    return case
  data = config.data
  order = int(data.get("interp_order", 1)) if hasattr(data, "get") else 1
  increment = float(data.get("thick_increment_mm", 1.5))
  if (
    row.domain == "ncct"
    and bool(data.get("thick_slice", False))
    and case.scan.spacing[0] < increment - 1e-6
  ):  # only thin-slice scans
    case = _thick_case(case, float(data.get("thick_slice_mm", 3.0)), increment)
  return preprocess.resample_case(case, tuple(data.working_spacing), order=order)


def _thick_case(case: Case, thickness: float, increment: float) -> Case:
  thick = preprocess.thick_slices(case.scan, thickness, increment)

  def _labels(a):
    return None if a is None else preprocess.resample_labels(a, case.scan, thick, extrapolate=True)

  return dataclasses.replace(
    case,
    scan=thick,
    labels=_labels(case.labels),
    heart_mask=_labels(case.heart_mask),
    aorta_mask=_labels(case.aorta_mask),
    left_main=_labels(case.left_main),
  )


def load_cases(csv_path, config, split: str | None = None, domain: str | None = None) -> list[Case]:
  """Validates a manifest and loads its cases at `config.data.working_spacing`.

  Images are resampled linearly (`config.data.interp_order`, default 1; 3 = cubic), labels and
  masks by nearest neighbour onto the resampled image grid. NCCT cases are first turned into
  3 mm / 1.5 mm thick slices by averaging when `config.data.thick_slice` is set and their slice
  spacing is below the 1.5 mm increment (scans already at >= 1.5 mm are left as they are).

  Args:
    csv_path: manifest path.
    config: config with a `data` block (see configs/paper.py).
    split: keep only rows with this split (None: all).
    domain: keep only rows with this domain (None: all).

  Returns:
    `Case`s in manifest order; labels int32 classes 0..6 (None if unlabelled), masks bool.
  """
  if domain is not None and domain not in DOMAINS:
    raise ValueError(f"domain must be one of {DOMAINS} or None; got {domain!r}")
  rows = read_manifest(csv_path)
  rows = [
    r
    for r in rows
    if (split is None or r.split == split) and (domain is None or r.domain == domain)
  ]
  return [load_case(r, config) for r in rows]
