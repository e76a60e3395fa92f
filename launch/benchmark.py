r"""Throughput of the training steps on this machine, and FLOPs per patch.

  python -m launch.benchmark [--configs=tiny,paper] [--iters=3] [--critic_n=2] [--tower_conv=xla]
  python -m launch.benchmark --configs=paper \
      --torch_anchor=benchmarks/torch_anchor.py --torch_python=../torch-venv/bin/python

For each config: patches/s of the source step (B source patches), the critic scan (n
updates of Bc source + Bc target patches each) and the generator step (B source + Bc
target patches), timed over --iters calls after one warm-up call (block_until_ready).
FLOPs: XLA's compiled cost_analysis of each step (a rolled loop body counts once: the critic
scan's rolled scan is multiplied by n, but the critic update's per-patch G forward
(`models.features_no_grad`) stays counted once), and an analytic count (multiply-add = 2
FLOPs; training ~ 3x forward). GFLOP/s and "% peak" use the analytic count, against the
machine's fp32 peak: --peak_gflops, or by default the best of five 2048 x 2048 float32 matmuls
measured first (`matmul_peak_gflops`).

With --torch_anchor (a plain PyTorch version of the paper-size network and its three
steps, kept outside this project; PyTorch is not a dependency), that script runs first in
its own interpreter (--torch_python, e.g. a separate venv) with --torch_threads threads,
then this project's steps, and a last table prints per step the ratio of patches/s
(this project / PyTorch; > 1: this project is faster) for the paper config. The critic
row compares one critic update (the scan's time / n) with PyTorch's one update.
--torch_device=cuda runs the same anchor on the GPU: its tensors and modules are made there
(`torch.set_default_device`) and each timed loop ends with `torch.cuda.synchronize()`, as
block_until_ready ends this project's.
"""

import os
import re
import subprocess
import time

from absl import flags
import jax
import numpy as np

from cac_jax import dilated_conv, models, xla_options
from cac_jax.configs import demo, paper, tiny
from cac_jax.data import synthetic
from cac_jax.train import adversarial, sharding, source
from cac_jax.train import state as state_lib

from . import _cli

_CONFIGS = flags.DEFINE_list(
  "configs", ["tiny", "paper"], "Configs to benchmark (tiny, demo, paper)."
)
_ITERS = flags.DEFINE_integer("iters", 3, "Timed calls per step after one warm-up call.")
_CRITIC_N = flags.DEFINE_integer("critic_n", 2, "Critic updates per timed critic scan.")
_PEAK = flags.DEFINE_float(
  "peak_gflops",
  0.0,
  "Machine's fp32 peak (GFLOP/s) for '% peak'; 0: measure it (matmul_peak_gflops).",
)
_TOWER_CONV = flags.DEFINE_enum(
  "tower_conv",
  "",
  ["", *dilated_conv.TOWER_CONVS],
  "Override the configs' model.tower_conv (cac_jax.dilated_conv); empty: the config's.",
)
_TORCH = flags.DEFINE_string(
  "torch_anchor",
  "",
  "PyTorch anchor script (benchmarks/torch_anchor.py) to run first and compare with; "
  "empty: no comparison.",
)
_TORCH_PYTHON = flags.DEFINE_string(
  "torch_python", "python3", "Interpreter with PyTorch for --torch_anchor."
)
_TORCH_THREADS = flags.DEFINE_integer(
  "torch_threads", 0, "PyTorch threads (0: the CPUs this process may use)."
)
_TORCH_DEVICE = flags.DEFINE_enum(
  "torch_device", "cpu", ["cpu", "cuda"], "Where the PyTorch anchor runs (cuda: a GPU machine)."
)

# Runs the anchor script (argv[1]) on a CUDA device: every tensor and module it makes goes
# there, and its `timed` helper waits for the device before reading the clock.
_CUDA_WRAPPER = """
import importlib.util, sys, time, torch
torch.set_default_device("cuda")
spec = importlib.util.spec_from_file_location("torch_anchor", sys.argv[1])
anchor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(anchor)
def timed(fn, iters):
  fn(); torch.cuda.synchronize()
  t = time.perf_counter()
  for _ in range(iters):
    fn()
  torch.cuda.synchronize()
  return (time.perf_counter() - t) / iters
anchor.timed = timed
sys.argv = [sys.argv[1]] + sys.argv[2:]
print("device", torch.cuda.get_device_name())
anchor.main()
"""

# The anchor's step names, also the keys of `bench`'s result (its critic row is per update).
_TORCH_STEPS = ("source step", "critic update", "generator step")


def _conv_flops(
  h: int, w: int, k: int, cin: int, cout: int, dilation: int = 1
) -> tuple[int, int, int]:
  """(FLOPs, out_h, out_w) of a VALID k x k conv."""
  span = dilation * (k - 1)
  oh, ow = h - span, w - span
  return 2 * k * k * cin * cout * oh * ow, oh, ow


def analytic_flops(config) -> dict[str, float]:
  """Forward FLOPs per patch: G (three towers), C at the centre, heads, critic D."""
  m = config.model
  tower, h = _tower_flops(m, models.patch_size(config))
  centre, _ = _tower_flops(m, models.receptive_field(m.dilations))
  feats = 3 * m.tower_features
  classifier = 2 * (feats * m.classifier_hidden + m.classifier_hidden * m.num_classes)
  heads = 2 * h * h * feats * m.num_classes
  critic, ch, cin = 0, h, feats
  for c in m.critic_channels:
    f, ch, _ = _conv_flops(ch, ch, 3, cin, c)
    critic, cin = critic + f, c
  critic += 2 * ch * ch * cin
  return {
    "generator": 3 * tower,
    "generator_centre": 3 * centre,  # G on the centre window only (`models.centre_window`)
    "classifier": classifier,
    "heads": heads,
    "critic": critic,
  }


def _tower_flops(m, side: int) -> tuple[int, int]:
  """(FLOPs, output side) of one view tower of model config `m` on a (side, side) input."""
  tower, h, cin = 0, side, 1
  for d in m.dilations:
    f, h, _ = _conv_flops(h, h, 3, cin, m.tower_width, d)
    tower, cin = tower + f, m.tower_width
  f, h, _ = _conv_flops(h, h, 3, cin, m.tower_width)
  tower += f
  f, h, _ = _conv_flops(h, h, 1, m.tower_width, m.tower_features)
  return tower + f, h


def _compile(jitted, *args):
  """-> (compiled step, XLA's FLOPs per call, compile seconds)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  seconds = time.perf_counter() - t0
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
  except Exception:  # pylint: disable=broad-except
    flops = float("nan")
  return compiled, flops, seconds


def _time(fn, state, batch, iters: int):
  state, m = fn(state, batch)  # warm-up
  jax.block_until_ready((state, m))
  t0 = time.perf_counter()
  for _ in range(iters):
    state, m = fn(state, batch)
  jax.block_until_ready((state, m))
  return state, (time.perf_counter() - t0) / iters


def matmul_peak_gflops(n: int = 2048, tries: int = 5) -> float:
  """The best GFLOP/s of `tries` (n, n) x (n, n) float32 matmuls on the default device.

  Jitted with this project's compiler options: the fp32 rate the steps' '% peak' is read
  against."""
  a = jax.numpy.ones((n, n), jax.numpy.float32)
  f = xla_options.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(tries):
    t0 = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n**3 / best / 1e9


class _Rows(list):
  """Rows printed as soon as they are appended.

  The caller fills in the analytic counts (FLOPs per patch) and the peak (GFLOP/s)."""

  analytic: dict = {}
  peak: float = float("nan")

  def append(self, row):
    super().append(row)
    label, n, dt, flops, comp = row
    analytic = self.analytic.get(label, float("nan"))
    rate = analytic * n / dt / 1e9
    print(
      f"{label:24s} {n:7d} {dt:8.3f} {n / dt:10.1f} {flops / n / 1e9:16.4f} "
      f"{analytic / 1e9:21.4f} {rate:14.1f} {100 * rate / self.peak:6.1f}% "
      f"{comp:9.1f}",
      flush=True,
    )


def bench(name: str, config, iters: int, critic_n: int, peak_gflops: float) -> None:
  mesh = sharding.data_mesh()
  data = synthetic.SyntheticData(config, 0)
  b = (
    config.sampling.source_threshold
    + config.sampling.source_uniform
    + config.sampling.source_labelled
  )
  bc = config.sampling.critic_batch
  fl = analytic_flops(config)
  print(
    f"\n== {name}: patch {models.patch_size(config)}, output {config.data.output_size}, "
    f"source batch {b}, critic batch {bc} per domain, devices {mesh.size} ({jax.devices()[0].platform}), "
    f"tower conv {models.tower_conv(config)}"
  )
  print("analytic forward GFLOP/patch: " + ", ".join(f"{k} {v / 1e9:.4f}" for k, v in fl.items()))

  print(
    f"{'step':24s} {'patches':>7s} {'s/call':>8s} {'patches/s':>10s} {'XLA GFLOP/patch':>16s} "
    f"{'analytic GFLOP/patch':>21s} {'GFLOP/s':>14s} {'% peak':>7s} {'compile s':>9s}",
    flush=True,
  )
  rows = _Rows()
  rows.peak = peak_gflops
  # Analytic training FLOPs/patch ~ 3 x forward (backward = 2 x forward); the critic scan
  # runs G forward only; the generator step backpropagates through D into G on the target
  # patches and through C into G's centre window on the source patches.
  rows.analytic = {
    "source step": 3 * (fl["generator"] + fl["heads"] + fl["classifier"]),
    f"critic scan (n={critic_n})": fl["generator"] + 3 * fl["critic"],
    "generator step": (
      b * 3 * (fl["generator_centre"] + fl["classifier"])
      + bc * 3 * (fl["generator"] + fl["critic"])
    )
    / (b + bc),
  }
  state = sharding.replicate(state_lib.init_source_state(config), mesh)
  batch = sharding.shard_batch(data.source(0), mesh)
  fn = source.jit_step(source.make_source_step(config), mesh)
  fn, flops, comp = _compile(fn, state, batch)
  state, dt = _time(fn, state, batch, iters)
  rows.append(("source step", b, dt, flops, comp))

  a = sharding.replicate(state_lib.init_adapt_state(config, state_lib.init_params(config, 0)), mesh)
  cb = {
    "source_views": np.stack([data.source_critic(i)["views"] for i in range(critic_n)]),
    "target_views": np.stack([data.target_critic(i)["views"] for i in range(critic_n)]),
  }
  cb = sharding.shard_batch(cb, mesh, batch_axis=2)
  fn = source.jit_step(adversarial.make_critic_steps(config), mesh, batch_axis=2)
  fn, flops, comp = _compile(fn, a, cb)
  if not config.adapt.get("unroll_critic_scan", True):
    flops *= critic_n  # XLA's cost analysis counts a rolled scan (while loop) body once
  a, dt = _time(fn, a, cb, iters)
  rows.append((f"critic scan (n={critic_n})", critic_n * 2 * bc, dt, flops, comp))

  s = data.source(0)
  gb = sharding.shard_batch(
    {
      "source_views": s["views"],
      "source_labels": s["labels"],
      "target_views": data.target_generator(0)["views"],
    },
    mesh,
  )
  fn = source.jit_step(adversarial.make_generator_step(config), mesh)
  fn, flops, comp = _compile(fn, a, gb)
  a, dt = _time(fn, a, gb, iters)
  rows.append(("generator step", b + bc, dt, flops, comp))
  return {
    "source step": (b, rows[0][2]),
    "critic update": (2 * bc, rows[1][2] / critic_n),
    "generator step": (b + bc, rows[2][2]),
  }


def parse_torch(text: str) -> dict[str, tuple[int, float]]:
  """{step: (patches, seconds per call)} from the anchor's output.

  Its lines: `<step>  <n> patches  <s> s  <rate> patches/s`."""
  out = {}
  for line in text.splitlines():
    m = re.match(
      r"\s*(source step|critic update|generator step)\s+(\d+) patches\s+([0-9.]+) s", line
    )
    if m:
      out[m.group(1)] = (int(m.group(2)), float(m.group(3)))
  return out


def torch_command(script: str, python: str, threads: int, iters: int, device: str) -> list[str]:
  """The anchor's command line: the script itself on CPU, through `_CUDA_WRAPPER` on cuda."""
  args = ["--threads", str(threads), "--iters", str(iters)]
  if device == "cuda":
    return [python, "-c", _CUDA_WRAPPER, script, *args]
  return [python, script, *args]


def run_torch(
  script: str, python: str, threads: int, iters: int, device: str = "cpu"
) -> dict[str, tuple[int, float]]:
  """Run the PyTorch anchor in its own interpreter, echo its output, return `parse_torch` of it."""
  if not os.path.isfile(script):
    raise ValueError(f"--torch_anchor {script} does not exist")
  threads = threads or len(os.sched_getaffinity(0))
  cmd = torch_command(script, python, threads, iters, device)
  print("$ " + " ".join(a if a != _CUDA_WRAPPER else "<cuda wrapper>" for a in cmd), flush=True)
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  except OSError as e:
    raise ValueError(f"--torch_python {python}: cannot run it ({e.strerror})") from None
  print(proc.stdout, end="", flush=True)
  steps = parse_torch(proc.stdout)
  if proc.returncode != 0 or len(steps) != len(_TORCH_STEPS):
    raise ValueError(
      f"the PyTorch anchor failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"
    )
  return steps


def ratio_table(ours: dict[str, tuple[int, float]], torch: dict[str, tuple[int, float]]) -> str:
  """Markdown table: per step PyTorch s/call, ours s/call, ratio of patches/s (ours / PyTorch)."""
  lines = [
    "| step | PyTorch | cac-jax | ratio (patches/s, cac-jax / PyTorch) |",
    "|---|---|---|---|",
  ]
  for step in _TORCH_STEPS:
    (nt, tt), (no, to) = torch[step], ours[step]
    lines.append(
      f"| {step}, {nt} / {no} patches | {tt:.3f} s | {to:.3f} s | {(no / to) / (nt / tt):.2f}x |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  configs = {"tiny": tiny.get_config, "demo": demo.get_config, "paper": paper.get_config}
  unknown = [n for n in _CONFIGS.value if n not in configs]
  if unknown:
    raise ValueError(f"unknown --configs {unknown}; choose from {sorted(configs)}")
  torch = (
    run_torch(
      _TORCH.value, _TORCH_PYTHON.value, _TORCH_THREADS.value, _ITERS.value, _TORCH_DEVICE.value
    )
    if _TORCH.value
    else None
  )
  peak = _PEAK.value
  if not peak:
    peak = matmul_peak_gflops()
    print(f"fp32 matmul peak here (2048 x 2048, best of 5): {peak:.0f} GFLOP/s", flush=True)
  for name in _CONFIGS.value:
    config = configs[name]()
    if _TOWER_CONV.value:
      config.model.tower_conv = _TOWER_CONV.value
    ours = bench(name, config, _ITERS.value, _CRITIC_N.value, peak)
    if torch and name == "paper":
      print(
        f"\npaper config vs PyTorch on {_TORCH_DEVICE.value} ({os.cpu_count()} CPUs, load average now "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}):\n" + ratio_table(ours, torch),
        flush=True,
      )


def run() -> None:  # console script cac-benchmark
  _cli.run(main)


if __name__ == "__main__":
  run()
