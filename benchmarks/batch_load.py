r"""Load of one long batch: a manifest of N phantoms scored in one process, as `cac-score --manifest`.

  python benchmarks/batch_load.py [--n 50] [--workdir /tmp/cac-batch-load] \
      [--checkpoint runs/demo/source/export] [--config tiny] [--domain ccta]

Writes N phantoms of --domain (the config's phantoms, seeds 0..N-1) into --workdir/data (reused
when there), scores them with `score_files.score_manifest` into a fresh --workdir/out and prints
the rate (scans/s over all scans, and over the scans after the first, which waits for XLA) and
the resident memory (RSS) after scans 10, 30 and 50 (every 10th for other N) and the peak over
the run, so that memory growing from scan to scan (a per-scan leak, a cache that grows) shows,
with the number of XLA programs built so far (a scan whose ROI shapes are new builds programs,
which stay in JAX's in-memory cache), the lowest and highest RSS after any scan from the
11th on, and the least-squares slope of RSS over those scans. --trim reads RSS after
`gc.collect()` and glibc's `malloc_trim(0)`, which hand freed memory back to the system: what is
left is memory still in use, so growth there would be a leak, while growth only without --trim
is memory the allocator keeps for reuse.
Without --checkpoint the network is the config's architecture with random weights (seed 0):
this measures the batch machinery, not a model's calls. A probe, not a package entry point.
"""

import ctypes
import gc
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
import jax  # noqa: E402
from jax import monitoring  # noqa: E402
import numpy as np  # noqa: E402

from cac_jax import checkpoints, models, phantoms  # noqa: E402
from cac_jax.launch import _cli  # noqa: E402
from cac_jax.scoring import score_files  # noqa: E402

FLAGS = flags.FLAGS
_cli.define_config("tiny", "Config of the phantoms and, without --checkpoint, of the network.")
_N = flags.DEFINE_integer("n", 50, "Phantoms in the manifest.", lower_bound=1)
_WORKDIR = flags.DEFINE_string(
  "workdir", "/tmp/cac-batch-load", "Folder of the phantoms (data/) and the outputs (out/)."
)
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "Inference export to score with (default: random weights of --config)."
)
_DOMAIN = flags.DEFINE_enum("domain", "ccta", list(phantoms.DOMAINS), "Phantom domain.")
_TRIM = flags.DEFINE_bool(
  "trim", False, "Read RSS after gc.collect() and malloc_trim(0) (memory still in use)."
)


def rss_mb() -> tuple[float, float]:
  """(resident, peak resident) memory of this process in MiB (/proc/self/status)."""
  fields = {}
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      key, _, value = line.partition(":")
      if key in ("VmRSS", "VmHWM"):
        fields[key] = int(value.split()[0]) / 1024
  return fields["VmRSS"], fields["VmHWM"]


def main(argv):
  del argv
  config, n = FLAGS.config, _N.value
  data_dir = os.path.join(_WORKDIR.value, "data")
  manifest_csv = os.path.join(data_dir, "manifest.csv")
  if not os.path.exists(manifest_csv):
    print(f"writing {n} {_DOMAIN.value} phantoms into {data_dir}", flush=True)
    phantoms.write_dataset(data_dir, _DOMAIN.value, n, 0, config, split="load")
  checkpoint = _CHECKPOINT.value
  if checkpoint is None:
    p = models.init_params(config, jax.random.key(0))
    checkpoint = checkpoints.export_inference(
      os.path.join(_WORKDIR.value, "random_export"),
      {k: p[k] for k in checkpoints.INFERENCE_KEYS},
      config,
    )
  out = os.path.join(_WORKDIR.value, "out")
  shutil.rmtree(out, ignore_errors=True)

  marks = {k for k in (10, 30, 50) if k <= n} if n >= 50 else set(range(10, n + 1, 10))
  marks.add(n)
  times, readings, built = [], [], [0]
  real_score_file = score_files.score_file

  def on_event(event: str, _duration: float, **_) -> None:
    if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":  # a program built
      built[0] += 1

  monitoring.register_event_duration_secs_listener(on_event)

  def score_file(*args, **kwargs):  # the batch's own call, timed and followed by a reading
    out_report = real_score_file(*args, **kwargs)
    times.append(time.perf_counter())
    if _TRIM.value:
      gc.collect()
      ctypes.CDLL("libc.so.6").malloc_trim(0)
    readings.append((rss_mb()[0], built[0]))
    if len(times) in marks:
      print(f"after scan {len(times)}: RSS {readings[-1][0]:.0f} MiB", flush=True)
    return out_report

  score_files.score_file = score_file
  rss0, _ = rss_mb()
  start = time.perf_counter()
  res = score_files.score_manifest(manifest_csv, checkpoint, out, split="load")
  score_files.score_file = real_score_file
  _, peak = rss_mb()
  total = times[-1] - start
  after_first = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
  print()
  print(res.summary())
  print(
    f"{len(times)} scans in {total:.1f} s: {len(times) / total:.2f} scans/s over all, "
    f"{after_first:.2f} scans/s after the first"
  )
  print(f"RSS before scoring {rss0:.0f} MiB; peak over the run {peak:.0f} MiB")
  print("| after scan | RSS (MiB) | XLA programs built so far |")
  print("|---|---|---|")
  for k in sorted(marks):
    print(f"| {k} | {readings[k - 1][0]:.0f} | {readings[k - 1][1]} |")
  later = [rss for rss, _ in readings[10:]]
  if len(later) > 1:
    slope = np.polyfit(np.arange(11, len(readings) + 1), later, 1)[0]
    print(
      f"RSS after scans 11-{len(readings)}{' (trimmed)' if _TRIM.value else ''}: "
      f"{min(later):.0f}-{max(later):.0f} MiB, slope {slope:+.2f} MiB/scan"
    )
  print("RSS after each scan (MiB):", " ".join(f"{rss:.0f}" for rss, _ in readings))
  if res.failed:
    raise ValueError(res.summary())


if __name__ == "__main__":
  _cli.run(main)
