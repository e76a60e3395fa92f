"""Per-scan domain check: is this scan like the CCTA the network was adapted to?

An adapted export carries, in `EXPORT/domain_check/`, what the check needs:
  critic.msgpack    the adaptation's critic D (Flax params, msgpack)
  reference.json    statistics of G's candidate features over the adaptation's target scans
                    (per-channel mean and covariance) and, per statistic, quantiles of its
                    per-scan value over the adaptation's source and target scans

Two per-scan statistics over `CANDIDATES_PER_SCAN` candidate voxels (those scoring classifies:
HU >= the scan's threshold inside the dilated heart region), sampled evenly in `np.argwhere`
order so a scan always gives the same value:
  "mahalanobis"  (m - mu)^T S^-1 (m - mu) / C, m the mean over the candidates of G's (C,)
                 centre features (what C classifies), mu and S (shrunk towards a scaled
                 identity) the mean and covariance of the target's candidate features: a
                 shift of the scan's features in any channel. A distance: only its upper tail
                 warns. (The mean over candidates of each candidate's own distance separated
                 the phantom sets worse: within-scan spread dominates it; docs/scoring.md.)
  "critic"       mean critic score of the candidates' (o, o, C) feature maps, scored as one
                 batch. The reference critic normalises each call by that call's own batch
                 statistics, so it cannot see a per-channel shift of a whole scan's features.
`reference.json` names the statistic the report leads with: the one whose per-scan values
separate the export's own source and target scans better (AUC), Mahalanobis on a tie.

A scan whose value lies outside the target's central 98 % is flagged with `WARNING`: above the
99 % quantile for the distance, below the 1 % or above the 99 % quantile for the critic. A
source export says `NOT_ADAPTED`.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import math
import os
from typing import Any

from flax import serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cac_jax import atomic, checkpoints, models
from cac_jax.data import preprocess
from cac_jax.data.patches import PatchExtractor
from cac_jax.data.scan import Scan

FOLDER = "domain_check"
CRITIC_FILE = "critic.msgpack"
REFERENCE_FILE = "reference.json"
FORMAT = "cac_jax.domain_check"
STATISTICS = ("mahalanobis", "critic")
CANDIDATES_PER_SCAN = 64
# Quantile levels (%) stored per statistic and domain; 1 and 99 bound the central 98 %.
LEVELS = (0.0, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 97.5, 99.0, 100.0)
CENTRAL = (1.0, 99.0)
SHRINK = 0.1  # covariance shrinkage towards tr(S)/C * I
WARNING = (
  "this scan's features are unlike the CCTA this network was adapted to; scores may be wrong "
  "(under-estimated)"
)
NOT_ADAPTED = "no domain check (not adapted)"
NO_REFERENCE = (
  "no domain check (adapted export without a domain_check reference: adapt with "
  "--source_manifest and --target_manifest to write one)"
)
IN_DOMAIN = "in domain: within the central 98 % of the adaptation's target scans"


class DomainCheckError(checkpoints.CheckpointError):
  """A domain_check folder is missing a file, unreadable or does not match the export."""


@dataclasses.dataclass(frozen=True)
class Reference:
  """Stored feature statistics and per-scan quantiles of an adapted export.

  mean: (C,) target centre-feature mean; covariance: (C, C); statistic: the one reported first;
  quantiles: {statistic: {"source" | "target": values at `LEVELS`}}; candidates: per scan;
  scans: {"source": n, "target": n} the quantiles come from; separation_auc: {statistic: AUC of
  source vs target scans at export}.
  """

  mean: np.ndarray
  covariance: np.ndarray
  statistic: str
  quantiles: dict
  candidates: int = CANDIDATES_PER_SCAN
  scans: dict = dataclasses.field(default_factory=dict)
  separation_auc: dict = dataclasses.field(default_factory=dict)

  @property
  def precision(self) -> np.ndarray:
    return shrunk_precision(self.covariance)

  def to_json(self) -> dict:
    return {
      "format": FORMAT,
      "version": 1,
      "statistic": self.statistic,
      "candidates_per_scan": int(self.candidates),
      "levels_percent": list(LEVELS),
      "quantiles": self.quantiles,
      "scans": self.scans,
      "separation_auc": self.separation_auc,
      "mean": np.asarray(self.mean, np.float64).tolist(),
      "covariance": np.asarray(self.covariance, np.float64).tolist(),
    }

  @classmethod
  def from_json(cls, d: dict) -> Reference:
    if d.get("format") != FORMAT or list(d.get("levels_percent", [])) != list(LEVELS):
      raise ValueError(f"{REFERENCE_FILE} is not a {FORMAT} reference with levels {LEVELS}")
    return cls(
      mean=np.asarray(d["mean"], np.float64),
      covariance=np.asarray(d["covariance"], np.float64),
      statistic=d["statistic"],
      quantiles={
        s: {k: list(map(float, v)) for k, v in q.items()} for s, q in d["quantiles"].items()
      },
      candidates=int(d["candidates_per_scan"]),
      scans=dict(d.get("scans", {})),
      separation_auc=dict(d.get("separation_auc", {})),
    )


@dataclasses.dataclass(frozen=True)
class DomainModel:
  """What scoring needs for the check: the critic params and the `Reference`."""

  critic: Any
  reference: Reference


@dataclasses.dataclass(frozen=True)
class NoCheck:
  """An export without a domain check, and why (`NOT_ADAPTED` or `NO_REFERENCE`)."""

  reason: str


# ------------------------------------------------------------------------------ statistics
def shrunk_precision(covariance: np.ndarray, shrink: float = SHRINK) -> np.ndarray:
  """Inverse of (1 - shrink) S + shrink tr(S)/C I: (C, C); finite for any sample covariance."""
  s = np.asarray(covariance, np.float64)
  c = s.shape[0]
  target = max(float(np.trace(s)) / c, 1e-12)
  return np.linalg.inv((1.0 - shrink) * s + shrink * target * np.eye(c))


def mahalanobis(features: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> float:
  """(m - mean)^T precision (m - mean) / C for m the mean of (K, C) features.

  About 1/K for a scan drawn like the reference, larger when the scan's features are shifted
  (or scaled)."""
  d = np.asarray(features, np.float64).mean(axis=0) - np.asarray(mean, np.float64)
  return float(d @ precision @ d / d.size)


def sample_candidates(candidates: np.ndarray, n: int = CANDIDATES_PER_SCAN) -> np.ndarray:
  """(min(n, N), 3) int voxel indices (z, y, x) spread evenly over the candidates.

  Spread over the candidates' argwhere order (deterministic: the same scan always gives the
  same sample)."""
  coords = np.argwhere(np.asarray(candidates, bool))
  if len(coords) <= n:
    return coords
  return coords[np.linspace(0, len(coords) - 1, n).round().astype(int)]


_FNS: dict = {}


def _feature_fns(config: ml_collections.ConfigDict):
  """Jitted (G features of views) and (critic scores of feature maps), one pair per model config."""
  key = config.model.to_json()
  if key not in _FNS:
    nets = models.build(config)
    g, d = nets.generator, nets.critic

    def maps(g_params, views):
      return models.features_no_grad(g, g_params, views)

    def critic(d_params, feats):
      return d.apply({"params": d_params}, feats)

    _FNS[key] = (jax.jit(maps), jax.jit(critic))
  return _FNS[key]


def candidate_features(
  generator_params, config: ml_collections.ConfigDict, hu: np.ndarray, coords: np.ndarray
) -> np.ndarray:
  """G's feature maps around candidate voxels: (K, o, o, 3F) float32.

  From (z, y, x) HU at the working spacing and (K, 3) voxel indices."""
  views = PatchExtractor(config).views([hu], np.zeros(len(coords), int), coords)
  maps_fn, _ = _feature_fns(config)
  return np.asarray(maps_fn(generator_params, jnp.asarray(views)))


def centre(maps: np.ndarray) -> np.ndarray:
  """(K, o, o, C) feature maps -> (K, C) features at the centre voxel (what C classifies)."""
  o = maps.shape[1]
  return maps[:, o // 2, o // 2, :]


def critic_score(critic_params, config: ml_collections.ConfigDict, maps: np.ndarray) -> float:
  """Mean critic score (source high) of (K, o, o, C) feature maps scored as one batch."""
  _, critic_fn = _feature_fns(config)
  return float(np.mean(np.asarray(critic_fn(critic_params, jnp.asarray(maps)))))


def scan_candidates(scan: Scan, threshold_hu: float, region: np.ndarray | None, config) -> tuple:
  """(HU at the working spacing, bool candidate mask on it), as scoring selects them.

  Candidates: HU >= threshold inside `region` (bool on the scan's grid, or None)."""
  working = preprocess.resample(scan, tuple(config.data.working_spacing), order=1)
  cand = working.hu >= threshold_hu
  if region is not None:
    if working.shape != scan.shape:
      region = preprocess.resample_labels(region.astype(np.uint8), scan, working) > 0
    cand &= region
  return working.hu, cand


def statistics(
  generator_params,
  critic_params,
  config: ml_collections.ConfigDict,
  hu: np.ndarray,
  candidates: np.ndarray,
  mean: np.ndarray | None,
  precision: np.ndarray | None,
  n: int = CANDIDATES_PER_SCAN,
) -> tuple[dict, np.ndarray]:
  """({"mahalanobis", "critic"}, (K, C) centre features) of one scan's candidates.

  "mahalanobis" is NaN without mean/precision; both are NaN without candidates."""
  coords = sample_candidates(candidates, n)
  if len(coords) == 0:
    return {s: math.nan for s in STATISTICS}, np.zeros((0, 0), np.float32)
  maps = candidate_features(generator_params, config, hu, coords)
  feats = centre(maps)
  out = {
    "mahalanobis": math.nan if mean is None else mahalanobis(feats, mean, precision),
    "critic": critic_score(critic_params, config, maps),
  }
  return out, feats


# ------------------------------------------------------------------------------ quantiles
def quantiles(values: Sequence[float]) -> list[float]:
  """Values of the finite `values` at `LEVELS` (%): a list of len(LEVELS) floats."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if v.size == 0:
    raise ValueError("no finite per-scan statistic to take quantiles of")
  return [float(x) for x in np.percentile(v, LEVELS)]


def percentile_in(value: float, q: Sequence[float]) -> float:
  """Percentile (0..100) of `value` within a distribution given by its quantiles at `LEVELS`.

  Linear between the stored quantiles (0 below the minimum, 100 above the maximum)."""
  q = np.asarray(q, np.float64)
  if value <= q[0]:
    return 0.0
  if value >= q[-1]:
    return 100.0
  # np.interp needs increasing x: equal quantiles (ties) take the highest level among them.
  return float(np.interp(value, q, LEVELS))


ONE_SIDED = ("mahalanobis",)  # distances: only large values are unlike the target


def outside_central(value: float, q: Sequence[float], statistic: str = "critic") -> bool:
  """True when `value` lies outside the central 98 % of `q` (at `LEVELS`).

  That is above the 99 % quantile, or (two-sided statistics) below the 1 % quantile."""
  lo, hi = (q[LEVELS.index(p)] for p in CENTRAL)
  return bool(value > hi or (statistic not in ONE_SIDED and value < lo))


def outlyingness(value: float, q: Sequence[float], statistic: str = "critic") -> float:
  """A score for ranking scans by how unlike the target they are, 1 at the warning's edge.

  (value - median) / (99 % quantile - median) for a distance, |value - median| / half the
  1..99 % range for a two-sided statistic."""
  med = q[LEVELS.index(50.0)]
  lo, hi = (q[LEVELS.index(p)] for p in CENTRAL)
  if statistic in ONE_SIDED:
    return float((value - med) / max(hi - med, 1e-12))
  return float(abs(value - med) / max((hi - lo) / 2.0, 1e-12))


def separation_auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
  """P(positive > negative) + 0.5 P(tie) over all pairs (Mann-Whitney AUC).

  NaN if a side is empty. Positives: scans that are not in the target domain."""
  p = np.asarray(positives, np.float64)[:, None]
  n = np.asarray(negatives, np.float64)[None, :]
  if p.size == 0 or n.size == 0:
    return math.nan
  return float(np.mean((p > n) + 0.5 * (p == n)))


# ------------------------------------------------------------------------------ reference
def build_reference(
  generator_params,
  critic_params,
  config: ml_collections.ConfigDict,
  source_items: Sequence[tuple[np.ndarray, np.ndarray]],
  target_items: Sequence[tuple[np.ndarray, np.ndarray]],
  n: int = CANDIDATES_PER_SCAN,
) -> Reference:
  """The `Reference` of an adapted G and critic from the adaptation's own scans.

  Args:
    source_items, target_items: per scan (HU (z, y, x) at the working spacing, bool candidate
      mask), e.g. from `scan_candidates`. Target features give the mean and covariance; the
      per-scan statistics of both domains give the quantiles.
  """
  target = [
    statistics(generator_params, critic_params, config, h, c, None, None, n)
    for h, c in target_items
  ]
  feats = np.concatenate([f for _, f in target if f.size], axis=0).astype(np.float64)
  if len(feats) < 2:
    raise ValueError("the target scans have fewer than 2 candidate voxels: no domain reference")
  mean, cov = feats.mean(axis=0), np.cov(feats, rowvar=False)
  precision = shrunk_precision(cov)
  per_scan = {
    "target": [dict(s, mahalanobis=mahalanobis(f, mean, precision)) for s, f in target if f.size],
    "source": [
      statistics(generator_params, critic_params, config, h, c, mean, precision, n)[0]
      for h, c in source_items
    ],
  }
  per_scan["source"] = [s for s in per_scan["source"] if np.isfinite(s["critic"])]
  q = {
    stat: {dom: quantiles([s[stat] for s in per_scan[dom]]) for dom in ("source", "target")}
    for stat in STATISTICS
  }
  aucs = {}
  for stat in STATISTICS:
    tq = q[stat]["target"]
    aucs[stat] = separation_auc(
      [outlyingness(s[stat], tq, stat) for s in per_scan["source"]],
      [outlyingness(s[stat], tq, stat) for s in per_scan["target"]],
    )
  best = "critic" if aucs["critic"] > aucs["mahalanobis"] else "mahalanobis"
  return Reference(
    mean=mean,
    covariance=cov,
    statistic=best,
    quantiles=q,
    candidates=n,
    scans={d: len(per_scan[d]) for d in per_scan},
    separation_auc=aucs,
  )


def reference_from_cases(params: dict, config, source_cases, target_cases) -> Reference:
  """`build_reference` over `Case`s (at the working spacing), candidates chosen as scoring does.

  The candidates come from `pipeline.prepare` with the case's masks (CCTA cases scored as
  CCTA).

  params: {"generator", "critic"}.
  """
  from cac_jax.scoring import pipeline, postprocess  # pipeline imports this module

  settings = postprocess.FPReductionSettings.from_config(config.scoring)

  def items(cases):
    out = []
    for case in cases:
      setup = pipeline.prepare_case(case, config, settings)
      if not setup.skip_reason:
        out.append(scan_candidates(case.scan, setup.threshold_hu, setup.region, config))
    return out

  return build_reference(
    params["generator"], params["critic"], config, items(source_cases), items(target_cases)
  )


def write_for_manifests(
  export_dir: str,
  params: dict,
  config,
  source_manifest: str,
  target_manifest: str,
  split: str | None = "train",
) -> Reference:
  """Build the reference from the adaptation's manifests and `write` it.

  The NCCT rows of the source and CCTA rows of the target, of `split`, as
  `train.data.manifest_streams` reads them.

  params: the adapted {"generator", "critic"}.
  """
  from cac_jax.data import manifest

  source = manifest.load_cases(source_manifest, config, split=split, domain="ncct")
  target = manifest.load_cases(target_manifest, config, split=split, domain="ccta")
  reference = reference_from_cases(params, config, source, target)
  write(export_dir, params["critic"], reference)
  return reference


def write(export_dir: str, critic_params, reference: Reference) -> str:
  """Write `export_dir/domain_check/` (critic.msgpack, reference.json last), all or nothing."""
  folder = os.path.join(os.fspath(export_dir), FOLDER)
  os.makedirs(folder, exist_ok=True)
  blob = serialization.msgpack_serialize(jax.device_get(critic_params))

  def write_critic(path):
    with open(path, "wb") as f:
      f.write(blob)

  atomic.write_set(
    folder,
    {
      CRITIC_FILE: write_critic,
      REFERENCE_FILE: lambda p: atomic.write_text(p, json.dumps(reference.to_json(), indent=1)),
    },
    last=REFERENCE_FILE,
  )
  return folder


def _stage(export_dir: str) -> str | None:
  """The export's provenance "stage" ("source", "adapted"), None when not recorded."""
  path = os.path.join(os.fspath(export_dir), checkpoints.PROVENANCE)
  try:
    with open(path, encoding="utf-8") as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  return meta.get("stage") if isinstance(meta, dict) else None


def load(export_dir: str, config: ml_collections.ConfigDict) -> DomainModel | NoCheck:
  """The export's `DomainModel`, or `NoCheck` saying why there is none.

  Raises DomainCheckError when the folder exists but is incomplete or does not match `config`.
  """
  folder = os.path.join(os.fspath(export_dir), FOLDER)
  ref_path = os.path.join(folder, REFERENCE_FILE)
  if not os.path.isfile(ref_path):
    return NoCheck(NO_REFERENCE if _stage(export_dir) == "adapted" else NOT_ADAPTED)
  try:
    with open(ref_path, encoding="utf-8") as f:
      reference = Reference.from_json(json.load(f))
    with open(os.path.join(folder, CRITIC_FILE), "rb") as f:
      critic = serialization.msgpack_restore(f.read())
  except (OSError, ValueError, KeyError) as e:
    raise DomainCheckError(folder, f"unreadable domain check ({type(e).__name__}: {e})") from e
  like = jax.eval_shape(lambda: models.init_params(config, jax.random.PRNGKey(0)))["critic"]
  got = jax.tree.map(np.shape, critic)
  want = jax.tree.map(lambda x: tuple(x.shape), like)
  if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
    raise DomainCheckError(folder, "the stored critic does not match the export's config")
  if reference.mean.shape != (3 * config.model.tower_features,):
    raise DomainCheckError(folder, "the reference's feature size does not match the config")
  return DomainModel(critic, reference)


def attach(params: dict, export_dir: str, config) -> dict:
  """`params` with the export's domain check (`load`) under "domain_check" (kept if present)."""
  if "domain_check" in params:
    return params
  return dict(params, domain_check=load(export_dir, config))


# ------------------------------------------------------------------------------ report
def verdict(model: DomainModel, values: dict) -> dict:
  """The report's `domain_check` entry from per-scan statistic `values`."""
  ref = model.reference
  stat = ref.statistic
  value = values[stat]
  entry = {
    "statistic": stat,
    "value": value,
    "source_quantiles": ref.quantiles[stat]["source"],
    "target_quantiles": ref.quantiles[stat]["target"],
    "quantile_levels_percent": list(LEVELS),
    "candidates": ref.candidates,
  }
  if not np.isfinite(value):
    return dict(
      entry, value=None, percentile_in_target=None, verdict="no domain check (no candidates)"
    )
  tq = ref.quantiles[stat]["target"]
  entry["percentile_in_target"] = percentile_in(value, tq)
  entry["verdict"] = WARNING if outside_central(value, tq, stat) else IN_DOMAIN
  entry["other_statistics"] = {
    s: {
      "value": values[s],
      "percentile_in_target": percentile_in(values[s], ref.quantiles[s]["target"]),
    }
    for s in STATISTICS
    if s != stat and np.isfinite(values[s])
  }
  return entry


def for_setup(model: DomainModel | NoCheck, params: dict, config, scan: Scan, setup) -> dict:
  """`check` of a scan with its `pipeline.Setup` (nothing scored: no check, saying why)."""
  if setup.skip_reason and not isinstance(model, NoCheck):
    return {
      "statistic": model.reference.statistic,
      "verdict": f"no domain check ({setup.skip_reason})",
    }
  return check(model, params["generator"], config, scan, setup.threshold_hu, setup.region)


def check(
  model: DomainModel | NoCheck,
  generator_params,
  config,
  scan: Scan,
  threshold_hu: float,
  region: np.ndarray | None,
) -> dict:
  """The `domain_check` entry of one scan's report (scores.json), from its candidates.

  Candidates: HU >= `threshold_hu` in `region`, as scoring selects them."""
  if isinstance(model, NoCheck):
    return {"statistic": None, "verdict": model.reason}
  if not np.isfinite(threshold_hu):
    return {"statistic": model.reference.statistic, "verdict": "no domain check (no threshold)"}
  hu, cand = scan_candidates(scan, threshold_hu, region, config)
  ref = model.reference
  values, _ = statistics(
    generator_params, model.critic, config, hu, cand, ref.mean, ref.precision, ref.candidates
  )
  return verdict(model, values)
