r"""Benchmark whole-scan inference: ROI-restricted dense (cac_jax.scoring.infer) vs the naive reference.

A synthetic CCTA-like volume at working spacing (body, lungs, heart with contrast-filled
chambers, a bright aorta, spine, a few coronary calcifications; Gaussian noise), candidates =
voxels >= aorta mean + 3 SD inside the heart mask dilated by 10 mm. For each config, each
method runs in a fresh subprocess (clean peak RSS) on the same random weights; prints seconds
per scan, peak RSS and whether the labels at candidates are identical.

  python -m launch.benchmark_infer --configs=tiny,paper --naive_slices=12

--naive_slices=N (N > 0) runs the naive method's towers on only N slices per orientation
(the slices through N random candidates, so labels there can still be compared) and
extrapolates its tower time linearly to all slices (the classifier still runs on every
voxel, and the full float16 feature volume is still allocated, so its memory is real).

--test_sets times the experiment's scoring of Table 2 (`experiment.score_tests`: every column
of the config's test sets, network and FP reduction and metrics) on phantoms it writes (the
config's ccta_test and ncct_test roles, as `launch.reproduce` does) with one random network
per model, --repeats times in one process (the first run compiles):

  python -m launch.benchmark_infer --test_sets --configs=demo --repeats=2
"""

import os
import resource
import sys
import tempfile
import time

from absl import flags

from cac_jax import fresh_process

from . import _cli

_CONFIGS = flags.DEFINE_list(
  "configs", ["tiny", "paper"], "Configs to benchmark (configs/<name>.py)."
)
_SHAPE = flags.DEFINE_list("shape", ["80", "310", "310"], "Volume (z, y, x) at working spacing.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed for the volume and the random weights.")
_NAIVE_SLICES = flags.DEFINE_integer(
  "naive_slices", 0, "0: full naive run; N: N slices per view, extrapolated."
)
_CACHED = flags.DEFINE_bool(
  "cached_run",
  True,
  "Also time the ROI method in a second fresh process whose "
  "persistent compilation cache the first one filled (cac_jax.jax_cache).",
)
_CONV_IMPL = flags.DEFINE_string(
  "conv_impl", "auto", "cac_jax.scoring.infer conv formulation for the ROI method."
)
_SLAB = flags.DEFINE_integer(
  "slab", 0, "Slices per device call for the ROI method (0: library default)."
)
_PHANTOM = flags.DEFINE_bool(
  "phantom",
  True,
  "Input: a full-resolution CCTA phantom (cac_jax.phantoms, ~512x512x336 "
  "at 0.3-0.5 mm) resampled to the paper's working spacing; False: the synthetic --shape volume.",
)


_NAIVE_DTYPE = flags.DEFINE_enum(
  "naive_feature_dtype",
  "float32",
  ["float16", "float32"],
  "Feature volume dtype of the naive method (float16: the reference "
  "implementation's memory; float32: labels comparable exactly).",
)
_TEST_SETS = flags.DEFINE_bool(
  "test_sets",
  False,
  "Instead: time the experiment's scoring of the test sets (Table 2) of each config.",
)
_N_CCTA = flags.DEFINE_integer("n_ccta", -1, "--test_sets: CCTA test cases (-1: the config's).")
_N_NCCT = flags.DEFINE_integer("n_ncct", -1, "--test_sets: NCCT test cases (-1: the config's).")
_REPEATS = flags.DEFINE_integer("repeats", 2, "--test_sets: timed runs of each way.")


def _phantom_volume(seed, spacing=(1.5, 0.66, 0.66)):
  """Full-resolution CCTA phantom resampled to working spacing and its candidate mask.

  Candidates: HU >= the scan's aorta-ROI threshold (mean + 3 SD, from its aorta mask) inside
  the heart mask dilated by 10 mm, as `cac_jax.scoring.pipeline` computes them.
  """
  from cac_jax import phantoms  # pylint: disable=g-import-not-at-top
  from cac_jax.configs import paper  # pylint: disable=g-import-not-at-top
  from cac_jax.data import preprocess, threshold
  from cac_jax.scoring import postprocess

  cfg = paper.get_config()
  case = phantoms.generate_case("ccta", seed, cfg)
  scan = preprocess.resample(case.scan, spacing, order=1)
  heart = preprocess.resample_labels(case.heart_mask.astype("uint8"), case.scan, scan) > 0
  aorta = preprocess.resample_labels(case.aorta_mask.astype("uint8"), case.scan, scan) > 0
  thr = threshold.ccta_threshold(scan, aorta, roi_size_mm=cfg.scoring.roi_size_mm).threshold_hu
  return (
    scan.hu,
    (scan.hu >= thr) & postprocess.heart_region(heart, scan.spacing, cfg.scoring.heart_dilation_mm),
    case.scan.shape,
  )


def measure(
  method: str,
  config: str,
  out: str,
  shape: list,
  seed: int,
  volume: str,
  naive_slices: int,
  conv_impl: str,
  slab: int,
  naive_feature_dtype: str,
) -> dict:
  """Time one method ("roi" or "naive") on one config's random network (in a fresh process).

  Returns seconds, work counters and peak memory; `_run` calls it. The labels at the
  candidates go to `out` (.npy, -1 where the naive run skipped a candidate's slices).
  `volume`: an .npz made once by the parent (so the phantom's own memory is not in the
  peak), else the synthetic `shape`.
  """
  import importlib  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from cac_jax import models  # pylint: disable=g-import-not-at-top
  from cac_jax.data import synthetic
  from cac_jax.scoring import infer

  config = importlib.import_module(f"cac_jax.configs.{config}").get_config()
  if volume:
    with np.load(volume) as f:
      hu, cand, full_shape = f["hu"], f["cand"], tuple(int(v) for v in f["full_shape"])
    shape = hu.shape
  else:
    shape = tuple(int(s) for s in shape)
    hu, cand = synthetic.ccta_volume(shape, seed=seed)
    full_shape = None
  params = models.init_params(config, jax.random.PRNGKey(seed))
  params = {"generator": params["generator"], "classifier": params["classifier"]}
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  res = {
    "candidates": int(cand.sum()),
    "shape": shape,
    "full_resolution_shape": full_shape,
    "rss_before_mb": rss0,
  }
  coords = np.argwhere(cand)
  if method == "roi":
    kw = {"conv_impl": conv_impl}
    if slab:
      kw["slab"] = slab
    t = time.perf_counter()
    pred = infer.predict_candidates(params, config, hu, cand, **kw)
    res["cold_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pred = infer.predict_candidates(params, config, hu, cand, **kw)
    res["warm_s"] = time.perf_counter() - t
    res["stats"] = {k: v for k, v in pred.stats.items()}
    res["compiles"] = dict(infer.DEFAULT_CACHE.trace_counts)
    labels = pred.classes
    valid = np.ones(len(coords), bool)
  else:
    slices = None
    if naive_slices > 0:
      rng = np.random.RandomState(seed)
      pick = coords[rng.choice(len(coords), min(len(coords), naive_slices), replace=False)]
      slices = {v: np.unique(pick[:, a]) for a, v in enumerate(models.VIEWS)}
    t = time.perf_counter()
    vol, st = infer.predict_naive(
      params,
      config,
      hu,
      cand,
      slices=slices,
      return_stats=True,
      feature_dtype=np.dtype(naive_feature_dtype),
    )
    res["measured_s"] = time.perf_counter() - t
    towers_full = sum(
      st["view_s"][v] * st["slices_total"][v] / max(1, st["slices_computed"][v])
      for v in models.VIEWS
    )
    res["extrapolated_s"] = res["measured_s"] - st["towers_s"] + towers_full
    res["stats"] = st
    labels = vol[tuple(coords.T)]
    if slices is None:
      valid = np.ones(len(coords), bool)
    else:
      valid = np.all([np.isin(coords[:, a], slices[v]) for a, v in enumerate(models.VIEWS)], axis=0)
  np.save(out, np.where(valid, labels, -1).astype(np.int32))
  res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  res["device_peak_mb"] = _device_peak_mb(jax.devices()[0])
  return res


def _device_peak_mb(device) -> float | None:
  """Peak bytes the accelerator's allocator held in this process (MB).

  None on CPU, where the peak RSS is the figure, or where the backend keeps no statistics.
  """
  if device.platform == "cpu":
    return None
  stats = device.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


def _run(method, config, out, volume, jax_cache="off"):
  """`measure` in a fresh process, with its persistent compilation cache in `jax_cache`."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, CAC_JAX_COMPILATION_CACHE=jax_cache)
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  kwargs = dict(
    method=method,
    config=config,
    out=out,
    shape=_SHAPE.value,
    seed=_SEED.value,
    volume=volume or "",
    naive_slices=_NAIVE_SLICES.value,
    conv_impl=_CONV_IMPL.value,
    slab=_SLAB.value,
    naive_feature_dtype=_NAIVE_DTYPE.value,
  )
  return fresh_process.call(f"{__spec__.name}:measure", kwargs, cwd=root, env=env)


def _test_sets(config_name: str, tmp: str) -> None:
  """Time the scoring of one config's test sets (`--test_sets`), --repeats times."""
  import importlib  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from cac_jax import models  # pylint: disable=g-import-not-at-top
  from cac_jax.data import manifest  # pylint: disable=g-import-not-at-top
  from cac_jax.studies import experiment  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f"cac_jax.configs.{config_name}").get_config()
  cols = experiment.columns(config)
  only_tests = ml_collections.ConfigDict(config.to_dict())  # writes the test roles only
  for role, (_, _, field, _) in experiment.ROLES.items():
    n = {"ccta_test": _N_CCTA.value, "ncct_test": _N_NCCT.value}.get(role, 0)
    only_tests.experiment[field] = int(config.experiment.get(field, 0)) if n < 0 else n
  t = time.perf_counter()
  csv = experiment.make_data(only_tests, os.path.join(tmp, f"data_{config_name}"), _SEED.value)
  tests = {r: manifest.load_cases(csv, config, split=r) for r in sorted({c.role for c in cols})}
  names = sorted({c.model for c in cols})
  params = {m: models.init_params(config, jax.random.PRNGKey(i)) for i, m in enumerate(names)}
  print(
    f"== config {config_name}: {', '.join(f'{len(v)} {k}' for k, v in tests.items())} phantoms "
    f"({time.perf_counter() - t:.0f} s to write and read), {len(names)} random networks, "
    f"{len(cols)} columns; load average {os.getloadavg()[0]:.1f}"
  )
  times = []
  for rep in range(_REPEATS.value):
    t = time.perf_counter()
    experiment.score_tests(config, cols, tests, params)
    times.append(time.perf_counter() - t)
    print(f"  run {rep + 1}: {times[-1]:.1f} s (load {os.getloadavg()[0]:.1f})")
    sys.stdout.flush()
  print(f"  first run (compiles) {times[0]:.1f} s, min of {len(times)} {min(times):.1f} s")


def _device_peak(res: dict) -> str:
  peak = res.get("device_peak_mb")
  return "" if peak is None else f", accelerator peak {peak:.0f} MB"


def main(argv):
  del argv
  if _TEST_SETS.value:
    with tempfile.TemporaryDirectory() as tmp:
      for config in _CONFIGS.value:
        _test_sets(config, tmp)
    return
  import numpy as np  # pylint: disable=g-import-not-at-top

  with tempfile.TemporaryDirectory() as tmp:
    volume = None
    if _PHANTOM.value:
      t = time.perf_counter()
      hu, cand, full_shape = _phantom_volume(_SEED.value)
      volume = os.path.join(tmp, "volume.npz")
      np.savez(volume, hu=hu, cand=cand, full_shape=np.asarray(full_shape))
      print(
        f"CCTA phantom {full_shape} at full resolution -> {hu.shape} at 1.5x0.66x0.66 mm "
        f"({time.perf_counter() - t:.1f} s to generate and resample)"
      )
    for config in _CONFIGS.value:
      jax_cache = os.path.join(
        tmp, f"jax_cache_{config}"
      )  # empty: the first run compiles everything
      roi = _run("roi", config, os.path.join(tmp, "roi.npy"), volume, jax_cache)
      cached = (
        _run("roi", config, os.path.join(tmp, "roi.npy"), volume, jax_cache)
        if _CACHED.value
        else None
      )
      naive = _run("naive", config, os.path.join(tmp, "naive.npy"), volume)
      a, b = np.load(os.path.join(tmp, "roi.npy")), np.load(os.path.join(tmp, "naive.npy"))
      checked = b >= 0
      same = int((a[checked] == b[checked]).sum())
      naive_s = naive["extrapolated_s"]
      st = roi["stats"]
      print(f"== config {config}: volume {tuple(roi['shape'])}, {roi['candidates']} candidates")
      print(
        f"  ROI   : {roi['warm_s']:.2f} s/scan warm ({roi['cold_s']:.2f} s cold, empty compilation cache, incl. "
        f"{roi['compiles']['tower']} tower compiles), peak RSS {roi['peak_rss_mb']:.0f} MB "
        f"(after setup {roi['rss_before_mb']:.0f} MB){_device_peak(roi)}; "
        f"slices/view {st['slices']}, shapes {st['shapes']}, "
        f"tower calls {st['tower_calls']}, tower px {st['tower_pixels'] / 1e6:.1f} M"
      )
      if cached:
        print(
          f"  ROI cold with the compilation cache filled by that run (a fresh process, the default "
          f"from the second scoring process on): {cached['cold_s']:.2f} s first scan, "
          f"{cached['warm_s']:.2f} s second"
        )
      kind = (
        "measured"
        if _NAIVE_SLICES.value <= 0
        else f"EXTRAPOLATED from {naive['stats']['slices_computed']} of {naive['stats']['slices_total']} slices "
        f"(measured {naive['measured_s']:.1f} s)"
      )
      print(
        f"  naive : {naive_s:.1f} s/scan ({kind}), peak RSS {naive['peak_rss_mb']:.0f} MB"
        f"{_device_peak(naive)}"
      )
      print(
        f"  speed-up (naive / ROI warm): {naive_s / roi['warm_s']:.1f}x, (naive / ROI cold): "
        f"{naive_s / roi['cold_s']:.1f}x"
      )
      print(
        f"  labels identical at {same}/{int(checked.sum())} compared candidates "
        f"({'all' if checked.all() else 'those whose 3 slices the naive run computed'})"
      )
      sys.stdout.flush()


def run() -> None:  # console script cac-benchmark-infer
  _cli.run(main)


if __name__ == "__main__":
  run()
