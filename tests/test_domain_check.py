"""The per-scan domain check: statistics, the stored reference, verdicts, scores.json."""

import json
import os

import jax
import numpy as np
import pytest

from cac_jax import checkpoints, models, phantoms
from cac_jax.data import preprocess
from cac_jax.data.patches import PAD_HU, extract_views
from cac_jax.data.scan import Scan
from cac_jax.scoring import domain_check as dc
from cac_jax.scoring import score_files


@pytest.fixture(scope="module")
def all_params(tiny_config):
  return models.init_params(tiny_config, jax.random.key(3))


def _scan(seed: int, shift_hu: float = 0.0, shape=(20, 40, 40)) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  hu = rng.normal(40.0, 30.0, shape).astype(np.float32) + shift_hu
  hu[5:15, 10:20, 10:20] += 400.0  # a bright block: the candidates
  return hu, hu >= 300.0


def _items(seeds, shift_hu=0.0):
  return [_scan(s, shift_hu) for s in seeds]


def test_statistics_equal_a_direct_computation(tiny_config, all_params):
  hu, cand = _scan(0)
  mean = np.linspace(-0.5, 0.5, 3 * tiny_config.model.tower_features)
  prec = dc.shrunk_precision(np.diag(np.linspace(0.5, 2.0, mean.size)))
  got, feats = dc.statistics(
    all_params["generator"], all_params["critic"], tiny_config, hu, cand, mean, prec, n=16
  )
  # Direct: the evenly spaced candidates, their three-view patches, G on the full patch, the
  # centre vector, the Mahalanobis sum written out; the critic on the same maps as one batch.
  coords = np.argwhere(cand)
  coords = coords[np.round(np.linspace(0, len(coords) - 1, 16)).astype(int)]
  views = preprocess.normalize_hu(
    extract_views(hu, coords, models.patch_size(tiny_config), PAD_HU), tiny_config.data
  )
  nets = models.build(tiny_config)
  g, d = nets.generator, nets.critic
  maps = np.asarray(g.apply({"params": all_params["generator"]}, views))
  o = maps.shape[1]
  f = maps[:, o // 2, o // 2, :].astype(np.float64)
  m = f.sum(axis=0) / len(f) - mean
  want = sum(m[i] * prec[i, j] * m[j] for i in range(m.size) for j in range(m.size)) / m.size
  critic = float(np.mean(d.apply({"params": all_params["critic"]}, maps)))
  np.testing.assert_allclose(feats, f, rtol=1e-5, atol=1e-6)
  assert got["mahalanobis"] == pytest.approx(want, rel=1e-4)
  assert got["critic"] == pytest.approx(critic, rel=1e-4, abs=1e-6)


def _adapted_export(tmp_path, tiny_config, all_params, stage="adapted"):
  params = {k: all_params[k] for k in checkpoints.INFERENCE_KEYS}
  return checkpoints.export_inference(
    tmp_path / f"export_{stage}", params, tiny_config, {"stage": stage, "steps": 1}
  )


def test_reference_round_trips_through_the_export(tmp_path, tiny_config, all_params):
  ref = dc.build_reference(
    all_params["generator"],
    all_params["critic"],
    tiny_config,
    _items([10, 11, 12], shift_hu=-200.0),
    _items([20, 21, 22]),
    n=8,
  )
  assert ref.scans == {"source": 3, "target": 3}
  assert set(ref.quantiles) == set(dc.STATISTICS)
  for q in ref.quantiles.values():
    for v in q.values():
      assert len(v) == len(dc.LEVELS) and np.all(np.diff(v) >= 0)
  export = _adapted_export(tmp_path, tiny_config, all_params)
  dc.write(export, all_params["critic"], ref)
  model = dc.load(export, tiny_config)
  assert isinstance(model, dc.DomainModel)
  assert model.reference.quantiles == ref.quantiles
  assert model.reference.statistic == ref.statistic
  np.testing.assert_array_equal(model.reference.mean, ref.mean)
  np.testing.assert_array_equal(model.reference.covariance, ref.covariance)
  for a, b in zip(jax.tree.leaves(model.critic), jax.tree.leaves(all_params["critic"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # A target scan used for the reference lies inside its quantile range.
  hu, cand = _scan(21)
  entry = dc.check(
    model, all_params["generator"], tiny_config, Scan(hu, (1.5, 1.0, 1.0)), 300.0, None
  )
  assert entry["statistic"] == ref.statistic
  assert 0.0 <= entry["percentile_in_target"] <= 100.0
  assert entry["target_quantiles"] == ref.quantiles[ref.statistic]["target"]


def test_verdict_flips_on_shifted_features():
  rng = np.random.default_rng(0)
  c = 6
  ref_feats = rng.normal(size=(2000, c))
  mean, cov = ref_feats.mean(0), np.cov(ref_feats, rowvar=False)
  prec = dc.shrunk_precision(cov)
  per_scan = [dc.mahalanobis(rng.normal(size=(64, c)), mean, prec) for _ in range(50)]
  q = dc.quantiles(per_scan)
  ref = dc.Reference(
    mean,
    cov,
    "mahalanobis",
    {"mahalanobis": {"source": q, "target": q}, "critic": {"source": q, "target": q}},
  )
  model = dc.DomainModel(critic=None, reference=ref)
  inside = dc.mahalanobis(rng.normal(size=(64, c)), mean, prec)
  shifted = dc.mahalanobis(rng.normal(size=(64, c)) + 1.5, mean, prec)
  scaled = dc.mahalanobis(3.0 * rng.normal(size=(64, c)), mean, prec)
  ok = dc.verdict(model, {"mahalanobis": inside, "critic": np.nan})
  assert ok["verdict"] == dc.IN_DOMAIN and 1.0 <= ok["percentile_in_target"] <= 99.0
  for value in (shifted, scaled):
    bad = dc.verdict(model, {"mahalanobis": value, "critic": np.nan})
    assert bad["verdict"] == dc.WARNING and bad["percentile_in_target"] == 100.0


def test_percentile_and_auc_by_hand():
  q = list(np.linspace(0.0, 12.0, len(dc.LEVELS)))  # quantile i at value i
  assert dc.percentile_in(q[6], q) == 50.0
  assert dc.percentile_in(-1.0, q) == 0.0 and dc.percentile_in(99.0, q) == 100.0
  assert dc.percentile_in(0.5, q) == pytest.approx(0.5)  # halfway between levels 0 and 1 %
  assert dc.outside_central(0.5, q) and not dc.outside_central(1.0, q)
  assert not dc.outside_central(0.5, q, "mahalanobis") and dc.outside_central(
    11.5, q, "mahalanobis"
  )
  assert dc.outlyingness(q[11], q, "mahalanobis") == pytest.approx(1.0)
  assert dc.separation_auc([3, 4], [1, 2]) == 1.0
  assert dc.separation_auc([1, 2], [1, 2]) == 0.5
  assert dc.separation_auc([2, 0], [1]) == 0.5


def test_source_export_says_not_adapted(tmp_path, tiny_config, all_params):
  src = _adapted_export(tmp_path, tiny_config, all_params, stage="source")
  model = dc.load(src, tiny_config)
  assert model == dc.NoCheck(dc.NOT_ADAPTED)
  assert dc.check(model, None, tiny_config, None, 300.0, None)["verdict"] == dc.NOT_ADAPTED
  adapted = _adapted_export(tmp_path, tiny_config, all_params)
  assert dc.load(adapted, tiny_config) == dc.NoCheck(dc.NO_REFERENCE)


def test_a_corrupt_reference_is_one_clear_error(tmp_path, tiny_config, all_params):
  export = _adapted_export(tmp_path, tiny_config, all_params)
  os.makedirs(os.path.join(export, dc.FOLDER))
  with open(os.path.join(export, dc.FOLDER, dc.REFERENCE_FILE), "w") as f:
    f.write("{not json")
  with pytest.raises(checkpoints.CheckpointError, match="unreadable domain check"):
    dc.load(export, tiny_config)


def test_scores_json_carries_the_domain_check(tmp_path, tiny_config, all_params):
  ccta = [phantoms.generate_case("ccta", s, tiny_config) for s in (1, 2)]
  ncct = [phantoms.generate_case("cardiac_ncct", s, tiny_config) for s in (1, 2)]
  export = _adapted_export(tmp_path, tiny_config, all_params)
  ref = dc.reference_from_cases(all_params, tiny_config, ncct, ccta)
  dc.write(export, all_params["critic"], ref)
  path = phantoms.write_dataset(str(tmp_path / "data"), "ccta", 1, 1, tiny_config, split="test")
  from cac_jax.data import manifest

  row = manifest.read_manifest(path)[0]
  report = score_files.score_file(
    row.image, export, str(tmp_path / "out"), heart_mask=row.heart_mask
  )
  saved = json.loads((tmp_path / "out" / "scores.json").read_text(encoding="utf-8"))
  entry = saved["domain_check"]
  assert entry == json.loads(json.dumps(report["domain_check"]))
  assert entry["statistic"] in dc.STATISTICS and entry["verdict"] in (dc.IN_DOMAIN, dc.WARNING)
  assert set(entry) >= {
    "statistic",
    "value",
    "source_quantiles",
    "target_quantiles",
    "percentile_in_target",
    "verdict",
  }
  src = _adapted_export(tmp_path, tiny_config, all_params, stage="source")
  out = score_files.score_file(row.image, src, str(tmp_path / "out_src"), heart_mask=row.heart_mask)
  assert out["domain_check"]["verdict"] == dc.NOT_ADAPTED
