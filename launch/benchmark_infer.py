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
per model, against the scoring per column as it was before (each (test set, FP reduction)
scored on its own, every model on its own ROI plan), alternating the two in one process:

  python -m launch.benchmark_infer --test_sets --configs=demo --repeats=2
"""

import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from absl import flags

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
_WORKER = flags.DEFINE_string(
  "worker", "", "Internal: run one method ('roi' or 'naive') and print JSON."
)
_CONFIG = flags.DEFINE_string("config", "tiny", "Internal: config of the worker.")
_OUT = flags.DEFINE_string("out", "", "Internal: .npy path for the worker's labels at candidates.")
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
_VOLUME = flags.DEFINE_string("volume", "", "Internal: .npz with the worker's input volume.")
_TEST_SETS = flags.DEFINE_bool(
  "test_sets",
  False,
  "Instead: time the experiment's scoring of the test sets (Table 2) of each config, now "
  "vs per column as before.",
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


def _worker():
  import importlib  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from cac_jax import models  # pylint: disable=g-import-not-at-top
  from cac_jax.data import synthetic
  from cac_jax.scoring import infer

  config = importlib.import_module(f"cac_jax.configs.{_CONFIG.value}").get_config()
  if _VOLUME.value:  # made once by the parent, so the phantom's own memory is not in the peak
    with np.load(_VOLUME.value) as f:
      hu, cand, full_shape = f["hu"], f["cand"], tuple(int(v) for v in f["full_shape"])
    shape = hu.shape
  else:
    shape = tuple(int(s) for s in _SHAPE.value)
    hu, cand = synthetic.ccta_volume(shape, seed=_SEED.value)
    full_shape = None
  params = models.init_params(config, jax.random.PRNGKey(_SEED.value))
  params = {"generator": params["generator"], "classifier": params["classifier"]}
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  res = {
    "candidates": int(cand.sum()),
    "shape": shape,
    "full_resolution_shape": full_shape,
    "rss_before_mb": rss0,
  }
  coords = np.argwhere(cand)
  if _WORKER.value == "roi":
    kw = {"conv_impl": _CONV_IMPL.value}
    if _SLAB.value:
      kw["slab"] = _SLAB.value
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
    if _NAIVE_SLICES.value > 0:
      rng = np.random.RandomState(_SEED.value)
      pick = coords[rng.choice(len(coords), min(len(coords), _NAIVE_SLICES.value), replace=False)]
      slices = {v: np.unique(pick[:, a]) for a, v in enumerate(models.VIEWS)}
    t = time.perf_counter()
    vol, st = infer.predict_naive(
      params,
      config,
      hu,
      cand,
      slices=slices,
      return_stats=True,
      feature_dtype=np.dtype(_NAIVE_DTYPE.value),
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
  np.save(_OUT.value, np.where(valid, labels, -1).astype(np.int32))
  res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  res["device_peak_mb"] = _device_peak_mb(jax.devices()[0])
  print("RESULT " + json.dumps(res, default=str))


def _device_peak_mb(device) -> float | None:
  """Peak bytes the accelerator's allocator held in this process (MB); None on CPU, where the
  peak RSS is the figure, or where the backend keeps no statistics."""
  if device.platform == "cpu":
    return None
  stats = device.memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**20


_VOLUME_PATH = None


def _run(method, config, out, jax_cache="off"):
  """One worker in a fresh process, with its persistent compilation cache in `jax_cache`."""
  args = [
    sys.executable,
    "-m",
    __spec__.name,
    f"--worker={method}",
    f"--config={config}",
    f"--out={out}",
    f"--shape={','.join(_SHAPE.value)}",
    f"--seed={_SEED.value}",
    f"--volume={_VOLUME_PATH or ''}",
    f"--naive_slices={_NAIVE_SLICES.value}",
    f"--conv_impl={_CONV_IMPL.value}",
    f"--slab={_SLAB.value}",
    f"--naive_feature_dtype={_NAIVE_DTYPE.value}",
  ]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(
    os.environ,
    PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
    CAC_JAX_COMPILATION_CACHE=jax_cache,
  )
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  proc = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"{method}/{config} failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT ") :])


def _score_per_column(config, cols, tests, params):
  """Table 2's per-scan results as the experiment computed them before `predict_columns`: each
  (test set, FP reduction) scored on its own, the network once per model on each case."""
  from cac_jax.scoring import pipeline  # pylint: disable=g-import-not-at-top
  from cac_jax.studies import experiment  # pylint: disable=g-import-not-at-top

  raw = {}
  for role, cases in tests.items():
    for fp in (False, True):
      names = sorted({c.model for c in cols if c.role == role and c.fp_reduction == fp})
      settings = experiment.column_settings(config, fp)
      for case in cases:
        setup = pipeline.prepare(
          case.scan,
          config,
          settings,
          domain=case.domain,
          heart_mask=case.heart_mask,
          aorta_mask=case.aorta_mask,
        )
        for m in names:
          got = pipeline.raw_classes(setup, case.scan, params[m], config)
          raw.setdefault((m, role, fp), []).append((got, setup))
  return {
    c.name: experiment.evaluate_predictions(
      config, tests[c.role], raw[(c.model, c.role, c.fp_reduction)], c.fp_reduction
    )
    for c in cols
  }


def _test_sets(config_name: str, tmp: str) -> None:
  """Time the scoring of one config's test sets both ways (`--test_sets`), interleaved."""
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
  ways = {
    "before (per column)": lambda: _score_per_column(config, cols, tests, params),
    "now (experiment.score_tests)": lambda: experiment.score_tests(config, cols, tests, params)[1],
  }
  times = {k: [] for k in ways}
  results = {}
  for rep in range(_REPEATS.value):
    for k, fn in ways.items():
      t = time.perf_counter()
      results[k] = fn()
      times[k].append(time.perf_counter() - t)
      print(f"  run {rep + 1} {k}: {times[k][-1]:.1f} s (load {os.getloadavg()[0]:.1f})")
      sys.stdout.flush()
  a, b = results.values()
  same = all(x["classes"] == y["classes"] for c in a for x, y in zip(a[c], b[c]))
  first = [v[0] for v in times.values()]
  best = [min(v) for v in times.values()]
  print(
    f"  first run (compiles) {first[0]:.1f} -> {first[1]:.1f} s, min of {_REPEATS.value} "
    f"{best[0]:.1f} -> {best[1]:.1f} s ({best[0] / best[1]:.2f}x); labels of every column "
    f"{'identical' if same else 'DIFFERENT'}"
  )


def _device_peak(res: dict) -> str:
  peak = res.get("device_peak_mb")
  return "" if peak is None else f", accelerator peak {peak:.0f} MB"


def main(argv):
  del argv
  if _WORKER.value:
    _worker()
    return
  if _TEST_SETS.value:
    with tempfile.TemporaryDirectory() as tmp:
      for config in _CONFIGS.value:
        _test_sets(config, tmp)
    return
  import numpy as np  # pylint: disable=g-import-not-at-top

  global _VOLUME_PATH
  with tempfile.TemporaryDirectory() as tmp:
    if _PHANTOM.value:
      t = time.perf_counter()
      hu, cand, full_shape = _phantom_volume(_SEED.value)
      _VOLUME_PATH = os.path.join(tmp, "volume.npz")
      np.savez(_VOLUME_PATH, hu=hu, cand=cand, full_shape=np.asarray(full_shape))
      print(
        f"CCTA phantom {full_shape} at full resolution -> {hu.shape} at 1.5x0.66x0.66 mm "
        f"({time.perf_counter() - t:.1f} s to generate and resample)"
      )
    for config in _CONFIGS.value:
      jax_cache = os.path.join(
        tmp, f"jax_cache_{config}"
      )  # empty: the first run compiles everything
      roi = _run("roi", config, os.path.join(tmp, "roi.npy"), jax_cache)
      cached = (
        _run("roi", config, os.path.join(tmp, "roi.npy"), jax_cache) if _CACHED.value else None
      )
      naive = _run("naive", config, os.path.join(tmp, "naive.npy"))
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
