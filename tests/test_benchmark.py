"""The benchmark scripts' pure parts: the PyTorch anchor's output, the ratio table, the command list."""

import os

import numpy as np
import pytest

from launch import benchmark, benchmark_all

_ANCHOR = """torch 2.13.0+cpu, 2 threads
source step       16 patches     4.640 s      3.45 patches/s
critic update     32 patches     2.370 s     13.50 patches/s
generator step    32 patches     7.740 s      4.13 patches/s
"""


def test_parse_torch_reads_the_three_steps():
  steps = benchmark.parse_torch(_ANCHOR)
  assert steps == {
    "source step": (16, 4.64),
    "critic update": (32, 2.37),
    "generator step": (32, 7.74),
  }
  assert benchmark.parse_torch("torch 2.13.0+cpu, 2 threads\n") == {}


def test_ratio_is_patches_per_second_ours_over_torch():
  torch = benchmark.parse_torch(_ANCHOR)
  ours = {"source step": (16, 2.32), "critic update": (32, 4.74), "generator step": (32, 7.74)}
  table = benchmark.ratio_table(ours, torch).splitlines()
  assert len(table) == 5
  assert table[2].endswith("| 2.00x |")  # twice PyTorch's rate
  assert table[3].endswith("| 0.50x |")
  assert table[4].endswith("| 1.00x |")


def test_benchmark_all_commands():
  train, infer, score = benchmark_all.commands(quick=False, iters=3, naive_slices=8)
  assert train == ["launch.benchmark", "--configs=paper", "--iters=3"]
  assert infer == ["launch.benchmark_infer", "--configs=paper", "--nophantom", "--naive_slices=8"]
  assert score == [
    "launch.benchmark_score",
    "--e2e_configs=paper",
    "--e2e_slices=600",
    "--e2e_scans=2",
  ]
  train, infer, score = benchmark_all.commands(
    quick=True, iters=3, naive_slices=8, torch_anchor="a.py", torch_python="py"
  )
  assert train == [
    "launch.benchmark",
    "--configs=tiny",
    "--iters=1",
    "--torch_anchor=a.py",
    "--torch_python=py",
  ]
  assert "--configs=tiny" in infer and "--naive_slices=4" in infer
  assert "--e2e_configs=tiny" in score and "--e2e_scans=1" in score


def test_benchmark_all_forwards_the_gpu_options():
  train, _, _ = benchmark_all.commands(
    quick=False,
    iters=20,
    naive_slices=8,
    torch_anchor="a.py",
    torch_device="cuda",
    peak_gflops=67000.0,
  )
  assert "--torch_device=cuda" in train and "--peak_gflops=67000" in train
  train, _, _ = benchmark_all.commands(quick=False, iters=3, naive_slices=8)
  assert not any(a.startswith(("--torch_device", "--peak_gflops")) for a in train)


def test_torch_command_wraps_the_anchor_only_on_cuda():
  cpu = benchmark.torch_command("a.py", "py", 2, 3, "cpu")
  assert cpu == ["py", "a.py", "--threads", "2", "--iters", "3"]
  cuda = benchmark.torch_command("a.py", "py", 2, 3, "cuda")
  assert cuda[:2] == ["py", "-c"] and cuda[3:] == cpu[1:]
  assert 'set_default_device("cuda")' in cuda[2] and "synchronize" in cuda[2]


def test_rows_rate_uses_the_analytic_count_and_the_given_peak(capsys):
  """GFLOP/s = analytic FLOPs/patch x patches / s, whatever XLA's count (a rolled loop's body
  counts once there); % peak against rows.peak."""
  rows = benchmark._Rows()
  rows.analytic, rows.peak = {"step": 2e9}, 50.0
  rows.append(("step", 4, 0.08, 1e6, 0.1))  # XLA's count 1e6: ignored for the rate
  line = capsys.readouterr().out.split()
  assert line[-3] == "100.0" and line[-2] == "200.0%"


def test_matmul_peak_is_a_rate():
  peak = benchmark.matmul_peak_gflops(n=128, tries=2)
  assert np.isfinite(peak) and peak > 0


def test_stage_timer_nests_stages_and_the_table_lists_them():
  import types

  from launch import benchmark_score

  mod = types.SimpleNamespace()
  mod.inner = lambda: None
  mod.outer = lambda: [mod.inner(), mod.inner()]
  timer = benchmark_score.StageTimer()
  mod.inner = timer.wrap(mod.inner, "inner")
  mod.outer = timer.wrap(mod.outer, "outer")
  mod.outer()
  mod.inner()
  assert timer.order == ["outer", "inner"] and timer.depth == {"outer": 0, "inner": 1}
  assert timer.seconds["outer"] >= 0 and timer.seconds["inner"] >= 0
  run = {
    "stages": [("outer", 0, 2.0), ("inner", 1, 0.5)],
    "total_s": 3.0,
    "peak_rss_mb": 900.0,
  }
  table = benchmark_score.stage_table({"a": run, "b": dict(run, stages=[("outer", 0, 1.0)])})
  lines = table.splitlines()
  assert lines[0] == "| stage | a | b |"
  assert lines[2] == "| outer | 2.00 | 1.00 |"
  assert lines[3] == "|   └ inner | 0.50 |  |"
  assert lines[-2:] == ["| **total s** | 3.0 | 3.0 |", "| **peak RSS MB** | 900 | 900 |"]


def test_synthetic_scans_of_the_benchmarks_are_pure_functions_of_the_seed():
  from cac_jax.data import synthetic  # pylint: disable=import-outside-toplevel

  hu, cand = synthetic.ccta_volume((24, 64, 72), 1)
  again, cand_again = synthetic.ccta_volume((24, 64, 72), 1)
  assert hu.shape == (24, 64, 72) and cand.dtype == bool and cand.any()
  assert np.array_equal(hu, again) and np.array_equal(cand, cand_again)
  case = synthetic.labelled_case("c", (20, 48, 48), 2)
  assert case.domain == "ncct" and case.labels.max() <= 6 and (case.labels > 0).any()
  assert (case.labels > 0)[case.heart_mask].any() and case.heart_mask.shape == case.labels.shape


def test_fresh_process_returns_the_result_and_starts_like_a_console_script(tmp_path):
  from cac_jax import fresh_process  # pylint: disable=import-outside-toplevel

  assert fresh_process.call("os.path:basename", {"p": "/a/b.npz"}) == "b.npz"
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["CAC_JAX_COMPILATION_CACHE"] = str(tmp_path)  # the child turns the cache on first
  got = fresh_process.call("os:getenv", {"key": "JAX_COMPILATION_CACHE_DIR"}, env=env)
  assert got == str(tmp_path)
  with pytest.raises(RuntimeError, match="os.path:nope failed in a fresh process"):
    fresh_process.call("os.path:nope", {})
