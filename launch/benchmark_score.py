r"""Benchmark `cac-score` end to end: a clinical-size scan file in, every output written.

Builds 512 x 512 x N cases from a real CT (--e2e_source) by resampling (`build_case`: the CT
keeps its physical extent; linear interpolation, int16 HU, -1024 outside), or takes
scan files (--e2e_images). For each config (an export of its architecture with random weights:
timing only, the labels mean nothing), each case is scored in a fresh process by
`cac_jax.scoring.score_files.score_file`, the code `cac-score --image` runs, with the default
flags (automatic domain and heart region), --e2e_scans times in a row (the first compiles, or
reads the persistent compilation cache; later ones show what each further scan of a manifest
costs). Prints each stage's seconds (nested stages indented, inclusive), the peak RSS and the
total, the I/O floor (the gzip decompression of the input file and the compression of a
label map of its size) and the written label map rewritten at gzip levels 1, 6 and 9 (write
seconds, size, read-back seconds). Without the real CT, the case is a full-resolution CCTA
phantom of configs/paper.py.

  python -m launch.benchmark_score --e2e_slices=600,300 --e2e_configs=demo,paper

--e2e_code=DIR1,DIR2 runs the workers from other checkouts (each holding this file's
`score_in_a_row`, run by `cac_jax.fresh_process`), the cases alternating between them in one
command, so before/after ratios are measured under the same load.
"""

import functools
import gzip
import importlib
import os
import resource
import sys
import tempfile
import time

from absl import flags, logging

from cac_jax import fresh_process

from . import _cli

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SLICES = flags.DEFINE_list(
  "e2e_slices", ["600", "300"], "Cases to build: slices of 512 x 512 each (from --e2e_source)."
)
_SOURCE = flags.DEFINE_string(
  "e2e_source",
  os.path.join(_ROOT, "..", "shared", "realdata", "contrast_chest_ct_1.nii.gz"),
  "The real CT the cases are resampled from.",
)
_INPLANE = flags.DEFINE_integer("e2e_inplane", 512, "Voxels along x and y of a built case.")
_IMAGES = flags.DEFINE_list("e2e_images", [], "Scan files to score instead of built cases.")
_CONFIGS = flags.DEFINE_list(
  "e2e_configs", ["demo", "paper"], "Architectures of the random-weight exports (configs/)."
)
_EXPORTS = flags.DEFINE_list(
  "e2e_exports",
  [],
  "Trained inference exports to score with as well (e.g. runs/demo/adv_cls/export): a trained "
  "network's few lesions, where random weights call calcium all over the heart.",
)
_SCANS = flags.DEFINE_integer("e2e_scans", 2, "Scans scored in a row in one process.")
_CODE = flags.DEFINE_list(
  "e2e_code", [], "Checkouts to run the workers from (default: this one), alternating."
)
_SEED = flags.DEFINE_integer("e2e_seed", 0, "Seed of the random weights.")

# (module, attribute, stage): the functions timed, found at run time (a checkout lacking one
# skips it). Nested calls are reported inside their caller. `detect_many` and `reduce` are the
# older names of `raw_classes_many` and `reduced_classes` (for `--e2e_code` checkouts).
STAGES = (
  ("cac_jax.data.volume_io", "read_scan", "read input"),
  ("cac_jax.data.threshold", "choose_threshold", "domain + threshold"),
  ("cac_jax.data.threshold", "find_ascending_aorta", "aorta search"),
  ("cac_jax.data.threshold", "find_ascending_aorta_coarse", "aorta search"),
  ("cac_jax.scoring.heart_region", "find_heart", "heart region (find)"),
  ("cac_jax.scoring.postprocess", "heart_region", "heart dilation"),
  ("cac_jax.scoring.pipeline", "raw_classes_many", "detect"),
  ("cac_jax.scoring.pipeline", "detect_many", "detect"),
  ("cac_jax.data.preprocess", "resample", "resample"),
  ("cac_jax.scoring.infer", "predict_candidates_many", "network"),
  ("cac_jax.scoring.pipeline", "reduced_classes", "FP reduction"),
  ("cac_jax.scoring.pipeline", "reduce", "FP reduction"),
  ("cac_jax.scoring.scores", "compute_scores", "scores"),
  ("cac_jax.scoring.pipeline", "plausibility_warnings", "plausibility checks"),
  ("cac_jax.scoring.pipeline", "write_outputs", "write outputs"),
  ("cac_jax.scoring.outputs", "write_outputs", "write outputs"),
  ("cac_jax.data.volume_io", "write_like", "labels .nii.gz"),
  ("cac_jax.scoring.scores", "lesion_table", "lesions.csv"),
  ("cac_jax.scoring.overlay", "overlay_png", "overlay.png"),
)


class StageTimer:
  """Wraps module functions so each call adds its wall seconds to a stage (inclusive)."""

  def __init__(self):
    self.seconds: dict[str, float] = {}
    self.depth: dict[str, int] = {}
    self.order: list[str] = []
    self._stack: list[str] = []

  def wrap(self, fn, stage):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
      if stage in self._stack:  # a stage calling itself (or a twin) is counted once
        return fn(*args, **kwargs)
      if stage not in self.seconds:
        self.seconds[stage] = 0.0
        self.depth[stage] = len(self._stack)
        self.order.append(stage)
      self._stack.append(stage)
      t = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        self.seconds[stage] += time.perf_counter() - t
        self._stack.pop()

    return timed

  def install(self, stages=STAGES) -> None:
    for module, attr, stage in stages:
      mod = importlib.import_module(module)
      if hasattr(mod, attr):
        setattr(mod, attr, self.wrap(getattr(mod, attr), stage))

  def reset(self) -> None:
    self.seconds, self.depth, self.order = {}, {}, []


def build_case(source: str, out: str, inplane: int, slices: int) -> str:
  """Write `source` resampled to inplane x inplane x `slices` voxels to `out` (.nii.gz).

  Over its own physical extent (linear, int16 HU, -1024 outside); returns a description."""
  import SimpleITK as sitk  # pylint: disable=g-import-not-at-top

  im = sitk.ReadImage(source)
  ext = [s * n for s, n in zip(im.GetSpacing(), im.GetSize())]
  size = [inplane, inplane, slices]
  spacing = [e / n for e, n in zip(ext, size)]
  res = sitk.Resample(
    im,
    size,
    sitk.Transform(),
    sitk.sitkLinear,
    im.GetOrigin(),
    spacing,
    im.GetDirection(),
    -1024,
    sitk.sitkInt16,
  )
  sitk.WriteImage(res, out, True)
  return (
    f"{size[0]} x {size[1]} x {size[2]} (x, y, z), spacing "
    f"{' x '.join(f'{s:.3f}' for s in spacing)} mm, {os.path.getsize(out) / 1e6:.0f} MB"
  )


def export_random(config_name: str, out: str, seed: int) -> str:
  """An inference export of `config_name`'s architecture with random weights (timing only)."""
  import jax  # pylint: disable=g-import-not-at-top

  from cac_jax import checkpoints, models  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f"cac_jax.configs.{config_name}").get_config()
  p = models.init_params(config, jax.random.key(seed))
  return checkpoints.export_inference(out, {k: p[k] for k in checkpoints.INFERENCE_KEYS}, config)


def io_floor(path: str) -> dict[str, float]:
  """Seconds to gunzip `path` and to gzip a uint8 label map of its voxel count.

  gzip at SimpleITK's default level: the part of scoring no analysis can remove."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import SimpleITK as sitk  # pylint: disable=g-import-not-at-top

  t = time.perf_counter()
  with gzip.open(path, "rb") as f:
    while f.read(1 << 24):
      pass
  gunzip = time.perf_counter() - t
  reader = sitk.ImageFileReader()
  reader.SetFileName(path)
  reader.ReadImageInformation()
  labels = np.zeros(reader.GetSize()[::-1], np.uint8)
  labels[::50, ::50, ::50] = 2
  with tempfile.TemporaryDirectory() as tmp:
    t = time.perf_counter()
    sitk.WriteImage(sitk.GetImageFromArray(labels), os.path.join(tmp, "l.nii.gz"), True)
    gzip_labels = time.perf_counter() - t
  return {"gunzip_input_s": gunzip, "gzip_labels_s": gzip_labels}


def label_compression(path: str, levels=(1, 6, 9)) -> list[tuple[int, float, float, float]]:
  """(level, write s, MB, read-back s) of the label map `path` rewritten at each gzip level."""
  import SimpleITK as sitk  # pylint: disable=g-import-not-at-top

  img = sitk.ReadImage(path)
  out = []
  with tempfile.TemporaryDirectory() as tmp:
    for level in levels:
      dst = os.path.join(tmp, f"l{level}.nii.gz")
      t = time.perf_counter()
      sitk.WriteImage(img, dst, True, level)
      written = time.perf_counter() - t
      t = time.perf_counter()
      sitk.ReadImage(dst)
      out.append((level, written, os.path.getsize(dst) / 1e6, time.perf_counter() - t))
  return out


def phantom_case(out: str, seed: int) -> str:
  """Write a full-resolution CCTA phantom of configs/paper.py to `out`; returns a description.

  The case when the real CT is absent (`cac_jax.phantoms`)."""
  from cac_jax import phantoms  # pylint: disable=g-import-not-at-top
  from cac_jax.configs import paper  # pylint: disable=g-import-not-at-top
  from cac_jax.data import volume_io  # pylint: disable=g-import-not-at-top

  scan = phantoms.generate_case("ccta", seed, paper.get_config()).scan
  volume_io.write_scan(scan, out)
  z, y, x = scan.shape
  return (
    f"CCTA phantom (configs/paper.py, seed {seed}) {x} x {y} x {z} (x, y, z), spacing "
    f"{' x '.join(f'{v:.3f}' for v in scan.spacing[::-1])} mm, {os.path.getsize(out) / 1e6:.0f} MB"
  )


def score_in_a_row(case: str, export: str, out: str, scans: int) -> dict:
  """Score `case` `scans` times with one loaded export, each stage timed (`STAGES`).

  `_run_worker` runs it in a fresh process.
  """
  from cac_jax.scoring import score_files  # pylint: disable=g-import-not-at-top

  timer = StageTimer()
  timer.install()
  loaded = score_files.load_model(export)
  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  runs = []
  for i in range(scans):
    timer.reset()
    out_i = os.path.join(out, f"scan{i}")
    t = time.perf_counter()
    report = score_files.score_file(case, export, out_i, loaded=loaded, overwrite=True)
    total = time.perf_counter() - t
    runs.append(
      {
        "total_s": total,
        "stages": [(s, timer.depth[s], timer.seconds[s]) for s in timer.order],
        "threshold_hu": report.get("threshold", {}).get("threshold_hu"),
        "agatston": report["scores"]["total"]["agatston"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      }
    )
  return {"rss_after_load_mb": rss0, "runs": runs}


def _run_worker(code: str, case: str, export: str, out: str, cache: str) -> dict:
  """`score_in_a_row` in a fresh process of checkout `code`, its compilation cache in `cache`."""
  module = __spec__.name if code == _ROOT else "launch.benchmark_score"
  env = dict(os.environ, CAC_JAX_COMPILATION_CACHE=cache)
  kwargs = dict(case=case, export=export, out=out, scans=_SCANS.value)
  return fresh_process.call(f"{module}:score_in_a_row", kwargs, cwd=code, env=env)


def stage_table(columns: dict[str, dict]) -> str:
  """A markdown table of stage seconds: one column per {name: worker run}."""
  names = list(columns)
  rows: list[tuple[str, int]] = []
  for run in columns.values():
    for stage, depth, _ in run["stages"]:
      if (stage, depth) not in rows:
        rows.append((stage, depth))
  lines = ["| stage | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for stage, depth in rows:
    cells = []
    for run in columns.values():
      got = [s for st, d, s in run["stages"] if st == stage and d == depth]
      cells.append(f"{got[0]:.2f}" if got else "")
    lines.append(f"| {'  ' * depth}{'└ ' if depth else ''}{stage} | " + " | ".join(cells) + " |")
  for label, key, fmt in (
    ("total s", "total_s", "{:.1f}"),
    ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
  ):
    lines.append(
      f"| **{label}** | " + " | ".join(fmt.format(r[key]) for r in columns.values()) + " |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax's export messages
  codes = [os.path.abspath(c) for c in _CODE.value] or [_ROOT]
  with tempfile.TemporaryDirectory() as tmp:
    cases = list(_IMAGES.value)
    if not cases and not os.path.isfile(_SOURCE.value):
      path = os.path.join(tmp, "ccta_phantom.nii.gz")
      print(f"{_SOURCE.value} absent: case {phantom_case(path, _SEED.value)}")
      cases.append(path)
    for n in (int(s) for s in ([] if cases else _SLICES.value)):
      path = os.path.join(tmp, f"ccta_{_INPLANE.value}x{_INPLANE.value}x{n}.nii.gz")
      t = time.perf_counter()
      desc = build_case(_SOURCE.value, path, _INPLANE.value, n)
      print(f"case {os.path.basename(path)}: {desc} ({time.perf_counter() - t:.0f} s to build)")
      cases.append(path)
    for case in cases:
      floor = io_floor(case)
      print(
        f"I/O floor of {os.path.basename(case)}: gunzip of the input {floor['gunzip_input_s']:.1f} s, "
        f"gzip of a uint8 label map of its size {floor['gzip_labels_s']:.1f} s"
      )
    sys.stdout.flush()
    networks = [
      (
        f"{c} architecture, random weights",
        export_random(c, os.path.join(tmp, f"export_{c}"), _SEED.value),
      )
      for c in _CONFIGS.value
    ] + [(f"trained export {e}", os.path.abspath(e)) for e in _EXPORTS.value]
    for k, (network, export) in enumerate(networks):
      for case in cases:
        columns = {}
        for code in codes:
          cache = os.path.join(tmp, f"jax_cache_{k}_{len(columns)}")
          res = _run_worker(code, case, export, os.path.join(tmp, "out"), cache)
          tag = os.path.basename(code) if len(codes) > 1 else ""
          for i, run in enumerate(res["runs"]):
            columns[f"{tag} scan {i + 1}".strip()] = run
        print(
          f"\n== {network}; {os.path.basename(case)}; load average "
          f"{os.getloadavg()[0]:.1f}; scan 1 compiles (empty compilation cache), later scans "
          "are warm"
        )
        print(stage_table(columns))
        written = os.path.join(tmp, "out", "scan0", "calcium_labels.nii.gz")
        print(
          "labels .nii.gz rewritten at gzip level (write s, MB, read-back s): "
          + ", ".join(
            f"{lv}: {w:.2f} s, {mb:.1f} MB, {r:.2f} s"
            for lv, w, mb, r in label_compression(written)
          )
        )
        sys.stdout.flush()


def run() -> None:  # console script cac-benchmark-score
  _cli.run(main)


if __name__ == "__main__":
  run()
