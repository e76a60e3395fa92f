"""How well the domain check tells the adaptation's target CCTA from held-apart acquisitions.

For each held-apart phantom set (`cac_jax.phantoms.variants`), every case is scored as CCTA
(candidates as scoring selects them: the phantom's heart and aorta masks, the aortic-lumen
threshold), both statistics of `cac_jax.scoring.domain_check` are computed, and per set and
statistic the study gives:
  auc     P(a set's scan is more outlying than an in-domain scan) + 0.5 P(tie), by
          `domain_check.outlyingness` (one-sided for the distance, two-sided for the critic,
          as the verdict); the in-domain set itself gets no AUC
  warned  the share of the set's scans outside the target's central 98 % (the warning)
The in-domain set is fresh CCTA drawn as the adaptation's target was ("ccta"), at seeds the
experiment roles never use.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import dataclasses
import math

import numpy as np

from cac_jax.phantoms import variants
from cac_jax.scoring import domain_check as dc
from cac_jax.scoring import pipeline, postprocess

IN_DOMAIN = "ccta"
DEFAULT_SETS = ("ccta", "ccta_70kvp", "ccta_120kvp", "cardiac_ncct", "chest_venous")
DEFAULT_SEED = 900_000  # far above the experiment roles' seeds


@dataclasses.dataclass(frozen=True)
class SetResult:
  """One held-apart set: per statistic the per-scan values, AUC vs in-domain and warned share."""

  name: str
  values: dict[str, list[float]]
  auc: dict[str, float]
  warned: dict[str, float]


def case_values(model: dc.DomainModel, params: dict, config, case) -> dict[str, float]:
  """Both statistics of one case scored as CCTA with its own heart and aorta masks."""
  settings = postprocess.FPReductionSettings.from_config(config.scoring)
  setup = pipeline.prepare_case(case, config, settings, domain="ccta")
  if setup.skip_reason:
    return {s: float("nan") for s in dc.STATISTICS}
  hu, cand = dc.scan_candidates(case.scan, setup.threshold_hu, setup.region, config)
  ref = model.reference
  values, _ = dc.statistics(
    params["generator"], model.critic, config, hu, cand, ref.mean, ref.precision, ref.candidates
  )
  return values


def measure(
  model: dc.DomainModel,
  params: dict,
  config,
  sets: Sequence[str] = DEFAULT_SETS,
  num_cases: int = 8,
  seed: int = DEFAULT_SEED,
  log: Callable[[str], None] = lambda s: None,
) -> list[SetResult]:
  """`SetResult` per set (the in-domain set first), `num_cases` cases each.

  The cases of each set are at seeds seed..seed+num_cases-1 (the same patients in every set)."""
  names = [IN_DOMAIN] + [s for s in sets if s != IN_DOMAIN]
  raw = {}
  for name in names:
    raw[name] = [
      case_values(model, params, config, variants.held_apart_case(name, seed + k, config))
      for k in range(num_cases)
    ]
    log(f"{name}: {num_cases} cases")
  out = []
  for name in names:
    values = {s: [v[s] for v in raw[name]] for s in dc.STATISTICS}
    auc, warned = {}, {}
    for s in dc.STATISTICS:
      tq = model.reference.quantiles[s]["target"]
      mine = [dc.outlyingness(v, tq, s) for v in values[s] if np.isfinite(v)]
      ref = [dc.outlyingness(v[s], tq, s) for v in raw[IN_DOMAIN] if np.isfinite(v[s])]
      auc[s] = float("nan") if name == IN_DOMAIN else dc.separation_auc(mine, ref)
      fin = [v for v in values[s] if np.isfinite(v)]
      warned[s] = float(np.mean([dc.outside_central(v, tq, s) for v in fin])) if fin else math.nan
    out.append(SetResult(name, values, auc, warned))
  return out


def markdown(results: Sequence[SetResult], model: dc.DomainModel) -> str:
  """The table: per set, AUC vs in-domain CCTA and share warned, for both statistics."""
  ref = model.reference
  lines = [
    f"Reported statistic: {ref.statistic} (export-time source-vs-target AUC: "
    + ", ".join(f"{s} {a:.2f}" for s, a in ref.separation_auc.items())
    + f"; reference from {ref.scans.get('source')} source and {ref.scans.get('target')} target "
    f"scans, {ref.candidates} candidates per scan)",
    "",
    "| set | scans | AUC Mahalanobis | warned Mahalanobis | AUC critic | warned critic |",
    "|---|---|---|---|---|---|",
  ]

  def f(x):
    return "–" if not np.isfinite(x) else f"{x:.2f}"

  for r in results:
    n = sum(np.isfinite(v) for v in r.values["mahalanobis"])
    lines.append(
      f"| {r.name}{' (in domain)' if r.name == IN_DOMAIN else ''} | {n} | "
      f"{f(r.auc['mahalanobis'])} | {f(r.warned['mahalanobis'])} | {f(r.auc['critic'])} | "
      f"{f(r.warned['critic'])} |"
    )
  return "\n".join(lines) + "\n"


def csv_rows(results: Sequence[SetResult]) -> list[dict]:
  """One row per set and statistic: set, statistic, scans, auc, warned, median value."""
  rows = []
  for r in results:
    for s in dc.STATISTICS:
      v = np.asarray(r.values[s], float)
      rows.append(
        {
          "set": r.name,
          "statistic": s,
          "scans": int(np.isfinite(v).sum()),
          "auc": r.auc[s],
          "warned": r.warned[s],
          "median_value": float(np.nanmedian(v)) if np.isfinite(v).any() else float("nan"),
        }
      )
  return rows
