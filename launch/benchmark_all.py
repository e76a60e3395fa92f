r"""Every figure of `launch.benchmark` and `launch.benchmark_infer` in one go.

  cac-benchmark-all                              # paper config (meant for a GPU machine)
  python -m launch.benchmark_all --quick         # tiny config: checks the whole chain on a CPU
  python -m launch.benchmark_all --anchor=benchmarks/torch_anchor.py \
      --anchor_python=../torch-venv/bin/python   # also the PyTorch ratios (launch.benchmark)
  python -m launch.benchmark_all --step_iters=20 --step_peak_gflops=67000 \
      --anchor=torch_anchor.py --anchor_device=cuda   # a GPU machine with PyTorch beside JAX

Runs, one after the other, each in its own process: the training steps
(`launch.benchmark --configs=<config>`) and whole-scan inference on the synthetic
80x310x310 CCTA at working spacing (`launch.benchmark_infer --configs=<config> --nophantom`:
cold with an empty compilation cache, cold with a filled one, warm, the naive reference on
--naive_slices slices per view, extrapolated) and `cac-score` end to end with its stage table
(`launch.benchmark_score`: a 512 x 512 x 600 CCTA file from the shared real CT, or a
full-resolution CCTA phantom where that is absent). First it prints the date, the machine's
devices and load, so the output can be pasted into docs/performance.md as it is. A failing
benchmark does not stop the other (a device call is too short to lose); the exit status
is then non-zero.
"""

import datetime
import os
import subprocess
import sys
import time

from absl import flags

from . import _cli

_QUICK = flags.DEFINE_bool(
  "quick", False, "The tiny config, one timed call, 4 naive slices (a CPU check)."
)
_NAIVE_SLICES = flags.DEFINE_integer(
  "naive_slices", 8, "Naive inference: slices per view, extrapolated (0: all)."
)
# Named apart from launch.benchmark's own flags (both modules may share one process, as in tests).
_ITERS = flags.DEFINE_integer(
  "step_iters", 3, "Timed calls per training step (launch.benchmark --iters)."
)
_TORCH = flags.DEFINE_string(
  "anchor", "", "PyTorch anchor script (launch.benchmark --torch_anchor)."
)
_TORCH_PYTHON = flags.DEFINE_string(
  "anchor_python", "python3", "Its interpreter (launch.benchmark --torch_python)."
)
_TORCH_DEVICE = flags.DEFINE_enum(
  "anchor_device", "cpu", ["cpu", "cuda"], "Its device (launch.benchmark --torch_device)."
)
_PEAK = flags.DEFINE_float(
  "step_peak_gflops", 0.0, "fp32 peak for the steps' '% peak' (0: launch.benchmark's default)."
)


def commands(
  quick: bool,
  iters: int,
  naive_slices: int,
  torch_anchor: str = "",
  torch_python: str = "python3",
  package: str = "launch",
  torch_device: str = "cpu",
  peak_gflops: float = 0.0,
) -> list[list[str]]:
  """The three benchmark command lines (argument lists after `python -m`).

  `package` is where the launch scripts live (`launch` in a checkout, `cac_jax.launch`
  installed)."""
  config = "tiny" if quick else "paper"
  train = [f"{package}.benchmark", f"--configs={config}", f"--iters={1 if quick else iters}"]
  if torch_anchor:
    train += [f"--torch_anchor={torch_anchor}", f"--torch_python={torch_python}"]
    if torch_device != "cpu":
      train.append(f"--torch_device={torch_device}")
  if peak_gflops:
    train.append(f"--peak_gflops={peak_gflops:g}")
  infer = [
    f"{package}.benchmark_infer",
    f"--configs={config}",
    "--nophantom",
    f"--naive_slices={4 if quick else naive_slices}",
  ]
  score = [
    f"{package}.benchmark_score",
    f"--e2e_configs={config}",
    f"--e2e_slices={300 if quick else 600}",
    f"--e2e_scans={1 if quick else 2}",
  ]
  return [train, infer, score]


def _header() -> str:
  import jax  # pylint: disable=g-import-not-at-top  (after flag parsing: --help stays fast)

  devices = jax.devices()
  return (
    f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, jax {jax.__version__}, "
    f"{len(devices)} x {devices[0].device_kind} ({devices[0].platform}), {os.cpu_count()} CPUs, "
    f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
  )


def main(argv):
  del argv
  print(_header(), flush=True)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  start, failed = time.perf_counter(), []
  for args in commands(
    _QUICK.value,
    _ITERS.value,
    _NAIVE_SLICES.value,
    _TORCH.value,
    _TORCH_PYTHON.value,
    __spec__.parent,
    _TORCH_DEVICE.value,
    _PEAK.value,
  ):
    print(f"\n$ python -m {' '.join(args)}", flush=True)
    t = time.perf_counter()
    code = subprocess.run([sys.executable, "-m", *args], cwd=root, env=env, check=False).returncode
    print(f"({time.perf_counter() - t:.0f} s{f', exit {code}' if code else ''})", flush=True)
    if code:
      failed.append(args[0])
  print(f"\nall benchmarks: {time.perf_counter() - start:.0f} s", flush=True)
  if failed:
    raise SystemExit(f"failed: {', '.join(failed)}")


def run() -> None:  # console script cac-benchmark-all
  _cli.run(main)


if __name__ == "__main__":
  run()
