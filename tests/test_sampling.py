"""Tests for cac_jax.data.sampling: view geometry, label windows, policies, seeds, prefetching."""

import dataclasses
import threading

import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from cac_jax import models
from cac_jax.data import patches, sampling
from cac_jax.data.scan import Case, Scan
from configs import paper, tiny


def _normalize(hu, data_config):
  """The contract of cac_jax.data.preprocess.normalize_hu, from the config values."""
  lo, hi = data_config.hu_clip
  return (np.clip(hu, lo, hi) - data_config.hu_center) / data_config.hu_scale


def _reference_views(vol, centre, p, pad):
  """Hand-indexed (3, P, P) views: axial (y, x) at z, coronal (z, x) at y, sagittal (z, y) at x."""
  z, y, x = centre
  h = p // 2
  out = np.full((3, p, p), pad, dtype=np.float64)

  def get(k, j, i):
    if 0 <= k < vol.shape[0] and 0 <= j < vol.shape[1] and 0 <= i < vol.shape[2]:
      return vol[k, j, i]
    return pad

  for r in range(p):
    for c in range(p):
      out[0, r, c] = get(z, y + r - h, x + c - h)
      out[1, r, c] = get(z + r - h, y, x + c - h)
      out[2, r, c] = get(z + r - h, y + c - h, x)
  return out


def _coded_volume(shape=(9, 11, 13)):
  z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
  return (z * 10000 + y * 100 + x + 1).astype(np.float32)


@pytest.mark.parametrize("p", [1, 5, 7, 8])
def test_extract_views_matches_hand_indexing_including_borders(p):
  vol = _coded_volume()
  centres = np.array([[4, 5, 6], [0, 0, 0], [8, 10, 12], [0, 10, 3], [8, 1, 12], [2, 5, 0]])
  got = patches.extract_views(vol, centres, p, -7.0)
  assert got.shape == (3, len(centres), p, p, 1) and got.dtype == np.float32
  for b, c in enumerate(centres):
    np.testing.assert_array_equal(got[:, b, :, :, 0], _reference_views(vol, c, p, -7.0))
    # the centre pixel of every view is the centre voxel
    np.testing.assert_array_equal(got[:, b, p // 2, p // 2, 0], vol[tuple(c)])


def test_extract_views_orientation_explicit():
  vol = _coded_volume()
  got = patches.extract_views(vol, np.array([[4, 5, 6]]), 3, -1.0)[:, 0, :, :, 0]
  # axial: row +1 moves y, col +1 moves x
  assert got[0, 2, 1] == vol[4, 6, 6] and got[0, 1, 2] == vol[4, 5, 7]
  # coronal: row +1 moves z, col +1 moves x
  assert got[1, 2, 1] == vol[5, 5, 6] and got[1, 1, 2] == vol[4, 5, 7]
  # sagittal: row +1 moves z, col +1 moves y
  assert got[2, 2, 1] == vol[5, 5, 6] and got[2, 1, 2] == vol[4, 6, 6]


def test_extract_views_padding_far_outside():
  vol = _coded_volume()
  got = patches.extract_views(vol, np.array([[0, 0, 0]]), 31, -1.0)[:, 0, :, :, 0]
  h = 15
  assert np.all(got[:, :h, :] == -1.0)  # rows before the volume start
  assert np.all(got[0, h:, :h] == -1.0)
  assert got[0, h, h] == vol[0, 0, 0]
  # rows beyond the last slice (z) are padding in coronal/sagittal
  assert np.all(got[1, h + vol.shape[0] :, :] == -1.0)


def test_extract_view_labels_contract():
  rng = np.random.default_rng(0)
  lab = rng.integers(0, 7, size=(9, 11, 13)).astype(np.int32)
  centres = np.array([[4, 5, 6], [0, 0, 0], [8, 10, 12], [1, 9, 2]])
  o = 5
  got = patches.extract_view_labels(lab, centres, o)
  assert got.shape == (3, 4, o, o) and got.dtype == np.int32
  for b, c in enumerate(centres):
    np.testing.assert_array_equal(got[:, b], _reference_views(lab, c, o, 0).astype(np.int32))
    assert np.all(got[:, b, o // 2, o // 2] == lab[tuple(c)])


def _make_case(
  case_id,
  shape=(16, 40, 40),
  seed=0,
  domain="ncct",
  labelled=True,
  bright=True,
  heart=True,
  calcium=True,
  meta=None,
):
  rng = np.random.default_rng(seed)
  hu = rng.normal(40.0, 20.0, size=shape).astype(np.float32)
  labels = np.zeros(shape, np.int32) if labelled else None
  if bright:
    hu[2:4, 5:8, 30:33] = 700.0  # "bone" (bright, unlabelled)
  if calcium:
    for cls, (z, y, x) in zip((1, 2, 3, 6), ((5, 12, 12), (8, 20, 22), (10, 25, 15), (12, 30, 30))):
      hu[z : z + 2, y : y + 2, x : x + 2] = 400.0 + 50 * cls
      if labelled:
        labels[z : z + 2, y : y + 2, x : x + 2] = cls
    if labelled:
      labels[5, 12, 12] = 1
  heart_mask = None
  if heart:
    heart_mask = np.zeros(shape, bool)
    heart_mask[4:13, 10:32, 10:32] = True
  scan = Scan(hu=hu, spacing=(1.5, 1.0, 1.0), meta=dict(meta or {}))
  return Case(case_id, scan, domain, labels=labels, heart_mask=heart_mask)


@pytest.fixture(scope="module")
def cfg():
  """tiny with the "scan_threshold" critic policy, whose bright/uniform/heart rules most tests
  below check; the reference policy (the default) has tests of its own."""
  c = tiny.get_config()
  c.adapt.critic_patches = "scan_threshold"
  c.sampling.fixed_threshold = False  # bright patches at each case's scoring threshold
  return c


@pytest.fixture(scope="module")
def cases():
  return [
    _make_case("a", seed=1),
    _make_case("b", seed=2, shape=(12, 36, 44)),
    _make_case("c", seed=3, calcium=False),
  ]


def test_source_batch_shapes_tiny(cfg, cases):
  s = sampling.PatchSampler(cases, cfg, seed=0)
  p, o = models.patch_size(cfg), cfg.data.output_size
  assert p == 41
  b = s.source_batch()
  n = cfg.sampling.source_threshold + cfg.sampling.source_uniform + cfg.sampling.source_labelled
  assert set(b) == {"views", "labels"}
  assert b["views"].shape == (3, n, p, p, 1) and b["views"].dtype == np.float32
  assert b["labels"].shape == (3, n, o, o) and b["labels"].dtype == np.int32
  c = s.critic_batch()
  assert set(c) == {"views"}
  assert c["views"].shape == (3, cfg.sampling.critic_batch, p, p, 1)


def test_shapes_paper(cases):
  cfg = paper.get_config()
  s = sampling.PatchSampler(cases, cfg, seed=0)
  p, o = models.patch_size(cfg), cfg.data.output_size
  assert p == 155
  b = s.source_batch()
  n = cfg.sampling.source_threshold + cfg.sampling.source_uniform + cfg.sampling.source_labelled
  assert b["views"].shape == (3, n, p, p, 1)
  assert b["labels"].shape == (3, n, o, o)
  assert s.critic_batch()["views"].shape == (3, cfg.sampling.critic_batch, p, p, 1)


def test_views_are_normalised_hu_and_labels_match(cfg, cases):
  s = sampling.PatchSampler(cases, cfg, seed=3)
  p, o = models.patch_size(cfg), cfg.data.output_size
  b = s.source_batch(with_info=True)
  for k, (i, c) in enumerate(zip(b["case_index"], b["centres"])):
    case = cases[i]
    ref = _normalize(_reference_views(case.scan.hu, c, p, -1000.0), cfg.data)
    np.testing.assert_allclose(b["views"][:, k, :, :, 0], ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(b["labels"][:, k], _reference_views(case.labels, c, o, 0))
    assert np.all(b["labels"][:, k, o // 2, o // 2] == case.labels[tuple(c)])
  # padding is normalised -1000 HU
  assert np.isclose(_normalize(-1000.0, cfg.data), -1.0)


def test_policy_counts(cfg, cases):
  s = sampling.PatchSampler(cases, cfg, seed=0)
  nt, nu, nl = (
    cfg.sampling.source_threshold,
    cfg.sampling.source_uniform,
    cfg.sampling.source_labelled,
  )
  seen_classes = set()
  for _ in range(20):
    b = s.source_batch(with_info=True)
    ci, cz = b["case_index"], b["centres"]
    for k in range(nt):
      assert cases[ci[k]].scan.hu[tuple(cz[k])] >= s.thresholds[ci[k]]
    for k in range(nt, nt + nu):  # uniform: inside the (dilated) heart region
      c = cases[ci[k]]
      region = sampling._dilate_box(c.heart_mask, c.scan.spacing, cfg.scoring.heart_dilation_mm)  # pylint: disable=protected-access
      assert region[tuple(cz[k])]
    for k in range(nt + nu, nt + nu + nl):
      cls = cases[ci[k]].labels[tuple(cz[k])]
      assert 1 <= cls <= 6
      seen_classes.add(int(cls))
      assert ci[k] != 2  # case "c" has no calcium
  assert seen_classes == {1, 2, 3, 6}  # class-balanced draw reaches every present class
  nc = cfg.sampling.critic_batch
  for _ in range(10):
    b = s.critic_batch(with_info=True)
    for k in range(nc // 2):
      assert (
        cases[b["case_index"][k]].scan.hu[tuple(b["centres"][k])]
        >= s.thresholds[b["case_index"][k]]
      )


def test_class_balanced_vs_uniform_policy(cfg):
  # class 1 has many voxels, class 3 a single one: class-balanced hits 3 about half the time.
  case = _make_case("x", calcium=False)
  case.labels[4:8, 10:20, 10:20] = 1
  case.labels[9, 20, 20] = 3
  n = 200
  bal = sampling.PatchSampler([case], cfg, seed=0, labelled_policy="class_balanced")
  uni = sampling.PatchSampler([case], cfg, seed=0, labelled_policy="uniform")

  def frac3(s):
    hits = total = 0
    for _ in range(n // cfg.sampling.source_labelled):
      b = s.source_batch(with_info=True)
      for c in b["centres"][-cfg.sampling.source_labelled :]:
        hits += case.labels[tuple(c)] == 3
        total += 1
    return hits / total

  assert 0.3 < frac3(bal) < 0.7
  assert frac3(uni) < 0.05


def test_uniform_restricted_to_dilated_heart(cfg):
  case = _make_case("h", shape=(20, 60, 60), calcium=False, bright=False)
  s = sampling.PatchSampler([case], cfg, seed=0, heart_dilation_mm=3.0)
  hm = case.heart_mask
  for _ in range(20):
    b = s.critic_batch(with_info=True)
    for z, y, x in b["centres"][cfg.sampling.critic_batch // 2 :]:  # the uniform half
      # heart box [4:13, 10:32, 10:32]; dilation 3 mm = 2 slices at 1.5 mm, 3 px in-plane
      assert 2 <= z < 15 and 7 <= y < 35 and 7 <= x < 35
  assert hm.any()
  free = sampling.PatchSampler([case], cfg, seed=0, uniform_in_heart=False)
  zs = np.concatenate(
    [
      free.critic_batch(with_info=True)["centres"][cfg.sampling.critic_batch // 2 :]
      for _ in range(50)
    ]
  )
  assert (zs[:, 1] < 7).any() or (zs[:, 1] >= 35).any()


def test_bright_in_heart(cfg):
  # Bright voxels: the "bone" block at [2:4, 5:8, 30:33] reaches outside the dilated heart box
  # (y < 7), the calcium blocks lie inside it.
  case = _make_case("h", shape=(20, 60, 60))
  half = cfg.sampling.critic_batch // 2

  def bright_centres(**kw):
    s = sampling.PatchSampler([case], cfg, seed=0, heart_dilation_mm=3.0, **kw)
    critic = [s.critic_batch(with_info=True)["centres"][:half] for _ in range(60)]
    src = [
      s.source_batch(with_info=True)["centres"][: cfg.sampling.source_threshold] for _ in range(60)
    ]
    return np.concatenate(critic + src)

  assert (bright_centres()[:, 1] < 7).any()  # default: bright voxels over the whole volume
  zyx = bright_centres(bright_in_heart=True)
  assert np.all(case.scan.hu[tuple(zyx.T)] >= 130.0)
  assert np.all((zyx[:, 0] >= 2) & (zyx[:, 0] < 15) & (zyx[:, 1] >= 7) & (zyx[:, 1] < 35))
  c2 = ml_collections.ConfigDict(cfg.to_dict())
  c2.sampling.bright_in_heart = True  # the config default
  s2 = sampling.PatchSampler([case], c2, seed=0, heart_dilation_mm=3.0)
  assert (
    s2.bright_in_heart
    and not sampling.PatchSampler([case], c2, seed=0, bright_in_heart=False).bright_in_heart
  )


def test_source_threshold_in_heart_splits_the_bright_patches(cfg):
  """`source_threshold_in_heart` = 1 of 2: the first bright patch of every source batch lies in
  the dilated heart, the second is drawn over the whole volume (it reaches the "bone" block)."""
  case = _make_case("h", shape=(20, 60, 60))
  c2 = ml_collections.ConfigDict(cfg.to_dict())
  c2.sampling.source_threshold = 2
  c2.sampling.source_threshold_in_heart = 1
  s = sampling.PatchSampler([case], c2, seed=0, heart_dilation_mm=3.0)
  got = np.stack([s.source_batch(with_info=True)["centres"][:2] for _ in range(80)])
  first, second = got[:, 0], got[:, 1]
  assert np.all(case.scan.hu[tuple(got.reshape(-1, 3).T)] >= 130.0)
  assert np.all((first[:, 0] >= 2) & (first[:, 0] < 15) & (first[:, 1] >= 7) & (first[:, 1] < 35))
  assert (second[:, 1] < 7).any()


def test_critic_bright_in_heart_leaves_source_batches_whole_volume(cfg):
  """Adaptation's setting: critic bright patches in the dilated heart, labelled source batches'
  bright negatives over the whole volume (bone included), as in source training."""
  case = _make_case("h", shape=(20, 60, 60))
  half = cfg.sampling.critic_batch // 2
  s = sampling.PatchSampler(
    [case], cfg, seed=0, heart_dilation_mm=3.0, bright_in_heart=False, critic_bright_in_heart=True
  )
  critic = np.concatenate([s.critic_batch(with_info=True)["centres"][:half] for _ in range(60)])
  src = np.concatenate(
    [s.source_batch(with_info=True)["centres"][: cfg.sampling.source_threshold] for _ in range(60)]
  )
  assert np.all((critic[:, 1] >= 7) & (critic[:, 1] < 35))
  assert (src[:, 1] < 7).any()
  assert np.all(case.scan.hu[tuple(src.T)] >= 130.0)
  assert sampling.PatchSampler([case], cfg, seed=0, bright_in_heart=True).critic_bright_in_heart


def test_adaptation_streams_restrict_only_critic_bright_patches(cfg):
  from cac_jax.train import data as data_lib

  build = data_lib.sampler_streams  # the one builder: launch.adapt and the experiment
  case = _make_case("h", shape=(20, 60, 60))
  c2 = ml_collections.ConfigDict(cfg.to_dict())
  c2.adapt.bright_in_heart = True
  c2.sampling.bright_in_heart = False
  made = []
  orig = sampling.PatchSampler.__init__

  def spy(self, *a, **kw):
    orig(self, *a, **kw)
    made.append(self)

  sampling.PatchSampler.__init__ = spy
  try:
    build([case], [case], c2, seed=0)
  finally:
    sampling.PatchSampler.__init__ = orig
  src, targets = made[0], made[1:]
  assert not src.bright_in_heart and src.critic_bright_in_heart
  assert targets and all(t.bright_in_heart and t.critic_bright_in_heart for t in targets)
  assert [s.seed for s in made] == [
    0,
    1,
    2,
  ]  # source seed, target critic seed + 1, target generator seed + 2


def test_sampler_streams_are_pure_functions_of_seed_and_step(cfg, cases):
  """The one builder's batches: stream(step) is batch `step` of its sampler (source at seed,
  target critic at seed + 1, target generator at seed + 2), in any order and after close."""
  from cac_jax.train import data as data_lib

  target = [_make_case("t", seed=4, labelled=False)]
  streams = data_lib.sampler_streams(cases, target, cfg, seed=5)
  want = {
    "source": sampling.PatchSampler(cases, cfg, seed=5).make_source_batch,
    "source_critic": sampling.PatchSampler(cases, cfg, seed=5).make_critic_batch,
    "target_critic": sampling.PatchSampler(target, cfg, seed=6).make_critic_batch,
    "target_generator": sampling.PatchSampler(target, cfg, seed=7).make_critic_batch,
  }
  for name, make in want.items():
    stream = getattr(streams, name)
    for step in (0, 1, 2, 7, 3):  # in order (prefetched), then out of order (resume)
      np.testing.assert_array_equal(
        stream(step)["views"], make(step)["views"], err_msg=f"{name} {step}"
      )
  data_lib.close(streams)
  np.testing.assert_array_equal(streams.source(4)["labels"], want["source"](4)["labels"])
  data_lib.close(streams)


def test_reproducible_by_seed(cfg, cases):
  a = sampling.PatchSampler(cases, cfg, seed=5)
  b = sampling.PatchSampler(cases, cfg, seed=5)
  c = sampling.PatchSampler(cases, cfg, seed=6)
  for _ in range(3):
    xa, xb, xc = a.source_batch(), b.source_batch(), c.source_batch()
    np.testing.assert_array_equal(xa["views"], xb["views"])
    np.testing.assert_array_equal(xa["labels"], xb["labels"])
    assert not np.array_equal(xa["views"], xc["views"])
    np.testing.assert_array_equal(a.critic_batch()["views"], b.critic_batch()["views"])
  # successive batches differ; explicit index reproduces
  assert not np.array_equal(a.source_batch(0)["views"], a.source_batch(1)["views"])
  np.testing.assert_array_equal(a.source_batch(7)["views"], b.source_batch(7)["views"])


def test_empty_candidates_do_not_crash(cfg):
  # No voxel >= threshold, no labels > 0, empty heart mask.
  case = _make_case("empty", bright=False, calcium=False)
  case.heart_mask[:] = False
  s = sampling.PatchSampler([case], cfg, seed=0)
  b = s.source_batch()
  assert b["views"].shape[1] == (
    cfg.sampling.source_threshold + cfg.sampling.source_uniform + cfg.sampling.source_labelled
  )
  assert np.all(b["labels"] == 0)
  assert s.critic_batch()["views"].shape[1] == cfg.sampling.critic_batch
  reasons = " ".join(s.fallbacks["empty"])
  assert "threshold" in reasons and "heart" in reasons and "labelled" in reasons


def test_unlabelled_cases(cfg):
  tgt = [_make_case("t", domain="ccta", labelled=False, meta={"calcium_threshold_hu": 500.0})]
  s = sampling.PatchSampler(tgt, cfg, seed=0)
  assert s.thresholds == [500.0]
  b = s.critic_batch(with_info=True)
  for k in range(cfg.sampling.critic_batch // 2):
    assert tgt[0].scan.hu[tuple(b["centres"][k])] >= 500.0
  with pytest.raises(ValueError, match="labels"):
    s.source_batch()


def test_case_threshold(cfg):
  ncct = _make_case("n")
  assert sampling.case_threshold(ncct, cfg) == 130.0
  ccta = _make_case("c", domain="ccta")  # no aorta mask, nothing aorta-like: 130 HU and a note
  assert sampling.threshold_and_note(ccta, cfg)[0] == 130.0
  assert "without an aorta ROI" in sampling.threshold_and_note(ccta, cfg)[1]
  s = sampling.PatchSampler([ccta], cfg, seed=0)
  assert any("without an aorta ROI" in n for n in s.fallbacks["c"])
  meta = _make_case("m", domain="ccta", meta={"calcium_threshold_hu": 321})
  assert sampling.case_threshold(meta, cfg) == 321.0


def test_ccta_bright_patches_use_the_scoring_threshold(cfg):
  """Training's bright CCTA patches are drawn at the threshold scoring uses (aorta ROI), not
  at a statistic of the whole aorta mask (which includes the wall and arch: far higher)."""
  from cac_jax import phantoms
  from cac_jax.data import threshold

  case = phantoms.generate_case("ccta", 3, cfg)
  case = dataclasses.replace(
    case, scan=dataclasses.replace(case.scan, meta={})
  )  # as read from files
  _, want, _, _ = threshold.choose_threshold(case.scan, "ccta", case.aorta_mask, cfg)
  assert sampling.threshold_and_note(case, cfg) == (want, None)
  whole = case.scan.hu[ndimage.binary_erosion(case.aorta_mask)]
  assert want < whole.mean() + 3 * whole.std()


def test_fixed_threshold_draws_supervised_ccta_patches_at_130_hu():
  """With `sampling.fixed_threshold` (the configs' default) a labelled CCTA case's bright source
  patches are drawn at 130 HU, not at its scoring threshold: lumen-like voxels between the two
  (here 150-450 HU) become centres, so an oracle learns them as background."""
  c = tiny.get_config()
  assert c.sampling.fixed_threshold
  case = _make_case("c", domain="ccta", bright=False, meta={"calcium_threshold_hu": 500.0})
  case.scan.hu[:, 35:, :] = 300.0  # "contrast lumen": above 130 HU, below the scan threshold
  fixed = sampling.PatchSampler([case], c, seed=0)
  c.sampling.fixed_threshold = False
  scan_thr = sampling.PatchSampler([case], c, seed=0)
  assert fixed.thresholds == [130.0] and scan_thr.thresholds == [500.0]
  n = c.sampling.source_threshold

  def bright_hu(s):
    centres = np.concatenate([s.source_batch(with_info=True)["centres"][:n] for _ in range(40)])
    return case.scan.hu[tuple(centres.T)]

  got_fixed, got_scan = bright_hu(fixed), bright_hu(scan_thr)
  assert got_fixed.min() >= 130.0 and (got_fixed < 500.0).mean() > 0.5
  assert got_scan.min() >= 500.0


def test_prefetch_matches_direct_calls(cfg, cases):
  direct = sampling.PatchSampler(cases, cfg, seed=11)
  pre = sampling.PatchSampler(cases, cfg, seed=11)
  want_s = [direct.source_batch() for _ in range(5)]
  want_c = [direct.critic_batch() for _ in range(5)]
  with pre:
    it_s, it_c = pre.source_batches(), pre.critic_batches()
    got_s = [next(it_s) for _ in range(5)]
    got_c = [next(it_c) for _ in range(5)]
  for w, g in zip(want_s, got_s):
    np.testing.assert_array_equal(w["views"], g["views"])
    np.testing.assert_array_equal(w["labels"], g["labels"])
  for w, g in zip(want_c, got_c):
    np.testing.assert_array_equal(w["views"], g["views"])
  assert not it_s.alive and not it_c.alive  # context manager closed them


def test_prefetch_bounded_stop_and_close(cfg, cases):
  s = sampling.PatchSampler(cases, cfg, seed=0)
  before = threading.active_count()
  with s.source_batches(start=3, stop=6) as it:
    got = list(it)
  assert len(got) == 3
  np.testing.assert_array_equal(got[0]["views"], s.source_batch(3)["views"])
  it = s.critic_batches()
  next(it)
  it.close()
  assert not it.alive
  with pytest.raises(StopIteration):
    next(it)
  s.close()
  assert threading.active_count() <= before


def test_prefetch_propagates_errors(cfg):
  s = sampling.PatchSampler([_make_case("t", labelled=False)], cfg, seed=0)
  it = s.source_batches()
  with pytest.raises(ValueError, match="labels"):
    next(it)
  assert not it.alive


def test_inplace_normalisation_equals_generic_path(cfg, cases):
  fast = sampling.PatchSampler(cases, cfg, seed=2)
  slow = sampling.PatchSampler(cases, cfg, seed=2)
  slow.patches._inplace = False  # pylint: disable=protected-access
  np.testing.assert_array_equal(fast.source_batch()["views"], slow.source_batch()["views"])
  np.testing.assert_array_equal(fast.critic_batch()["views"], slow.critic_batch()["views"])
  # a normaliser that differs from the in-place formula is detected and used as is
  odd = lambda hu, d: _normalize(hu, d).astype(np.float32) * np.float32(2.0)
  assert not patches._inplace_matches(odd, cfg.data)  # pylint: disable=protected-access


def test_reference_critic_policy_is_the_default_and_draws_like_the_authors():
  """Default critic policy: half the patches at voxels >= 130 HU of a random slice, also in
  CCTA (whose scoring threshold is higher), half uniform over that slice, air included; the
  heart mask plays no part."""
  c = tiny.get_config()
  c.sampling.fixed_threshold = False  # the scan threshold (600) differs from the critic's 130
  assert c.adapt.critic_patches == "reference"
  ccta = _make_case(
    "t", domain="ccta", labelled=False, shape=(20, 60, 60), meta={"calcium_threshold_hu": 600.0}
  )
  ccta.scan.hu[:, :, :5] = -1000.0  # air at the side: only the uniform half can land there
  s = sampling.PatchSampler([ccta], c, seed=0)
  assert s.critic_policy == "reference" and s.thresholds == [600.0]
  half = c.sampling.critic_batch // 2
  bright, uniform = [], []
  for _ in range(150):
    b = s.critic_batch(with_info=True)
    bright.append(b["centres"][:half])
    uniform.append(b["centres"][half:])
  bright, uniform = np.concatenate(bright), np.concatenate(uniform)
  hu = ccta.scan.hu
  has_bright = (hu >= 130).any(axis=(1, 2))
  in_bright_slice = has_bright[bright[:, 0]]
  assert in_bright_slice.any() and not in_bright_slice.all()
  assert np.all(hu[tuple(bright[in_bright_slice].T)] >= 130.0)
  b_hu = hu[tuple(bright[in_bright_slice].T)]
  assert (b_hu < 600.0).mean() > 0.2  # below the scan threshold: the fixed 130 HU, as the reference
  # Slices without a voxel >= 130 HU give uniform voxels of that slice (the bright blocks sit
  # in slices 2-3 and 5-13 of 20).
  assert not np.all(hu[tuple(uniform.T)] >= 130.0)
  assert (uniform[:, 2] < 5).any() and (uniform[:, 1] < 7).any()  # air and outside the heart
  assert set(np.unique(uniform[:, 0])) == set(range(20))
  # Slice-first draw: slices are uniform whatever they hold (a voxel-first draw would put every
  # bright patch in the bright slices).
  assert set(np.unique(bright[:, 0])) == set(range(20))


def test_reference_policy_draws_slices_over_all_cases_and_rejects_unknown_policies():
  c = tiny.get_config()
  small, large = _make_case("s", shape=(14, 40, 40)), _make_case("l", shape=(126, 40, 40))
  s = sampling.PatchSampler([small, large], c, seed=1)
  idx = np.concatenate([s.critic_batch(with_info=True)["case_index"] for _ in range(200)])
  assert 0.05 < (idx == 0).mean() < 0.2  # 14 of 140 slices, not half
  with pytest.raises(ValueError, match="critic_policy"):
    sampling.PatchSampler([small], c, seed=0, critic_policy="aorta")
