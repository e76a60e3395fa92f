"""The measurements of the automatic heart region reported in docs/scoring.md.

Per phantom domain: the share of reference coronary calcium voxels inside the dilated
automatic region (pooled over the cases, and the worst case), the region's volume relative
to the dilated true heart (both dilated as scoring dilates them), Dice of the undilated region
against the true heart, bone (phantom tissue map) inside the dilated automatic and true
regions, and how often a heart was found. Per real scan: the same against its
heart mask (no calcium reference). `launch.heart_region_check` prints the table.
"""

from __future__ import annotations

import os

import numpy as np

from cac_jax import phantoms
from cac_jax.data import volume_io
from cac_jax.labels import CORONARY_CLASSES
from cac_jax.phantoms.anatomy import TISSUE
from cac_jax.scoring import heart_region


def run(config, n: int, first_seed: int, real_pairs=()) -> list[dict]:
  """Rows {"data", "n", "found", "share_pooled", "share_min", "volume_ratio", "dice"}.

  Means over cases for volume_ratio and dice; shares over cases with coronary calcium."""
  dilation = float(config.scoring.heart_dilation_mm)
  rows = []
  for domain in phantoms.DOMAINS:
    ms = []
    for seed in range(first_seed, first_seed + n):
      sim = phantoms.simulate(domain, seed, config, track_tissue=True)
      case = sim.case
      bone = np.isin(sim.tissue, [TISSUE["cortical_bone"], TISSUE["trabecular_bone"]])
      ms.append(
        heart_region.measure(
          case.scan, case.heart_mask, np.isin(case.labels, CORONARY_CLASSES), dilation, bone
        )
      )
    rows.append(_summary(f"phantoms {domain}", ms))
  for image, mask in real_pairs:
    scan = volume_io.read_scan(image)
    ms = [heart_region.measure(scan, volume_io.read_mask(mask, scan) > 0, None, dilation)]
    rows.append(_summary(f"real {os.path.basename(image)}", ms))
  return rows


def _summary(name: str, ms: list[dict]) -> dict:
  with_calcium = [m for m in ms if m.get("coronary_voxels")]
  inside = sum(m["coronary_inside"] for m in with_calcium)
  total = sum(m["coronary_voxels"] for m in with_calcium)
  return {
    "data": name,
    "n": len(ms),
    "found": sum(m["found"] for m in ms),
    "share_pooled": inside / total if total else None,
    "share_min": min(
      (m["coronary_inside"] / m["coronary_voxels"] for m in with_calcium), default=None
    ),
    "volume_ratio": float(np.mean([m["volume_ratio"] for m in ms])),
    "volume_ratio_max": float(np.max([m["volume_ratio"] for m in ms])),
    "dice": float(np.mean([m["dice"] for m in ms])),
    "bone_ml": float(np.mean([m["bone_ml"] for m in ms])) if "bone_ml" in ms[0] else None,
    "bone_ml_reference": float(np.mean([m["bone_ml_reference"] for m in ms]))
    if "bone_ml" in ms[0]
    else None,
  }


def markdown(rows: list[dict]) -> str:
  """The rows as a markdown table."""

  def f(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"

  lines = [
    "| data | scans | heart found | coronary calcium inside (pooled / worst scan) | "
    "region volume / true heart region (mean / max) | Dice vs heart mask | bone inside, mL (auto / true) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for r in rows:
    lines.append(
      f"| {r['data']} | {r['n']} | {r['found']} | {f(r['share_pooled'])} / {f(r['share_min'])} | "
      f"{f(r['volume_ratio'], 2)} / {f(r['volume_ratio_max'], 2)} | {f(r['dice'], 2)} | "
      f"{f(r['bone_ml'], 1)} / {f(r['bone_ml_reference'], 1)} |"
    )
  return "\n".join(lines)
