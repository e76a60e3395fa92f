"""Faults while writing outputs (issue 16): kill -9 mid-write, a concurrent second run, and the
helpers that make outputs all-or-nothing (atomic.write_set, claim_dir, verified writes).

The kill tests run `launch.score` in a real process with a fault injected at the worst moment
(inside SimpleITK's write, or between the moves of the output set) and check what a later
reader and a later run see. Disk-full cases live in the corpus (tests/test_bad_inputs.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import SimpleITK as sitk

from cac_jax import atomic
from cac_jax.data import volume_io
from cac_jax.scoring import outputs, overlay, roi_plan
from cac_jax.train import writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_export):
  from tests import test_bad_inputs as corpus  # pylint: disable=import-outside-toplevel

  d = tmp_path_factory.mktemp("inputs")
  return {
    "image": corpus._write(d / "img.nii.gz"),
    "heart": corpus._write(d / "heart.nii.gz", corpus._heart()),
    "ckpt": tiny_export,
  }


# A launcher that injects a fault into `python -m launch.score`: FAULT=write makes SimpleITK
# write half a file, announce it (READY file) and wait to be killed; FAULT=move kills the
# process right after the first output was moved into place.
_LAUNCHER = r"""
import os, runpy, signal, sys, time
import SimpleITK as sitk
fault, ready = os.environ["FAULT"], os.environ["READY"]
if fault == "write":
  real = sitk.WriteImage
  def write(img, path, *a, **k):
    real(img, path, *a, **k)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    open(ready, "w").close()
    time.sleep(600)
  sitk.WriteImage = write
else:
  real_replace = os.replace
  def replace(src, dst, *a, **k):
    real_replace(src, dst, *a, **k)
    if os.path.basename(dst) == "calcium_labels.nii.gz" and ".tmp-" not in os.path.dirname(dst):
      os.kill(os.getpid(), signal.SIGKILL)
  os.replace = replace
sys.argv = ["score", *sys.argv[1:]]
runpy.run_module("launch.score", run_name="__main__")
"""


def _args(inputs, out, *extra):
  return [
    "--image",
    inputs["image"],
    "--heart_mask",
    inputs["heart"],
    "--checkpoint",
    inputs["ckpt"],
    "--output_dir",
    str(out),
    "--domain",
    "ncct",
    *extra,
  ]


def _score(inputs, out, *extra):
  return subprocess.run(
    [sys.executable, "-m", "launch.score", *_args(inputs, out, *extra)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=600,
  )


def _with_fault(inputs, out, fault, tmp_path):
  env = {**os.environ, "FAULT": fault, "READY": str(tmp_path / "ready"), "PYTHONPATH": ROOT}
  return subprocess.Popen(
    [sys.executable, "-c", _LAUNCHER, *_args(inputs, out)],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _complete_outputs(out):
  names = sorted(n for n in os.listdir(out) if not n.startswith("."))
  assert names == sorted(outputs.OUTPUT_FILES)
  assert json.loads((out / "scores.json").read_text(encoding="utf-8"))["scores"]
  volume_io.check_complete(out / "calcium_labels.nii.gz")


@pytest.mark.slow
def test_kill_during_write_and_concurrent_run(inputs, tmp_path):
  out = tmp_path / "out"
  first = _with_fault(inputs, out, "write", tmp_path)
  try:
    for _ in range(1200):  # until the first run is inside SimpleITK's write
      if (tmp_path / "ready").exists() or first.poll() is not None:
        break
      time.sleep(0.1)
    assert (tmp_path / "ready").exists(), first.communicate()[1][-3000:]
    # A second run on the same folder fails at once, clearly, and writes nothing.
    second = _score(inputs, out)
    assert second.returncode == 2 and "in use by another" in second.stderr.strip().splitlines()[-1]
    assert "Traceback" not in second.stderr
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  # No output under its final name; only temporary leftovers.
  assert not any((out / n).exists() for n in outputs.OUTPUT_FILES)
  assert any(n.startswith(".tmp-") for n in os.listdir(out))
  # The next run removes the leftovers and writes the complete set.
  rerun = _score(inputs, out)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert not [n for n in os.listdir(out) if n.startswith(".")]
  _complete_outputs(out)


@pytest.mark.slow
def test_kill_between_moves_of_the_set(inputs, tmp_path):
  out = tmp_path / "out"
  proc = _with_fault(inputs, out, "move", tmp_path)
  proc.communicate(timeout=600)
  assert proc.returncode == -signal.SIGKILL
  # Killed after moving calcium_labels.nii.gz: the file under its final name is complete, and
  # scores.json (moved last) is absent, so nothing claims the set is complete.
  assert (out / "calcium_labels.nii.gz").exists() and not (out / "scores.json").exists()
  volume_io.check_complete(out / "calcium_labels.nii.gz")
  rerun = _score(inputs, out)  # the remains are replaced without --overwrite
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert not [n for n in os.listdir(out) if n.startswith(".")]
  _complete_outputs(out)


def test_one_line_without_debug_traceback_with_it(inputs, tmp_path):
  bad = tmp_path / "bad.nii.gz"
  bad.write_bytes(open(inputs["image"], "rb").read()[:5000])
  args = [
    "--image",
    str(bad),
    "--checkpoint",
    inputs["ckpt"],
    "--output_dir",
    str(tmp_path / "out"),
  ]
  plain = subprocess.run(
    [sys.executable, "-m", "launch.score", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=600,
  )
  assert plain.returncode == 2
  assert plain.stderr.strip().splitlines() == [plain.stderr.strip()]  # exactly one line
  assert plain.stderr.startswith("score: error: --image: ") and "truncated" in plain.stderr
  debug = subprocess.run(
    [sys.executable, "-m", "launch.score", *args, "--debug"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    encoding="utf-8",
    timeout=600,
  )
  assert debug.returncode != 0 and "Traceback" in debug.stderr and "ScanReadError" in debug.stderr
  assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# The helpers.


def test_write_set_is_all_or_nothing(tmp_path):
  (tmp_path / "b.txt").write_text("old b")

  def fail(path):
    open(path, "w").write("partial")
    raise OSError(28, "No space left on device")

  with pytest.raises(OSError, match="No space left") as e:
    atomic.write_set(tmp_path, {"a.txt": lambda p: open(p, "w").write("a"), "b.txt": fail})
  assert e.value.filename == str(tmp_path / "b.txt")
  assert sorted(os.listdir(tmp_path)) == ["b.txt"] and (tmp_path / "b.txt").read_text() == "old b"
  atomic.write_set(
    tmp_path,
    {"a.txt": lambda p: open(p, "w").write("a"), "b.txt": lambda p: open(p, "w").write("b")},
  )
  assert (
    sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt"] and (tmp_path / "b.txt").read_text() == "b"
  )


def test_write_like_refuses_to_publish_a_short_file(tmp_path, monkeypatch):
  scan = volume_io.Scan(hu=np.zeros((4, 8, 8), np.float32), spacing=(1.0, 1.0, 1.0))
  real = sitk.WriteImage

  def short(img, path, *a):  # a full disk: SimpleITK stops early without an error
    real(img, path, *a)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])

  monkeypatch.setattr(sitk, "WriteImage", short)
  with pytest.raises(OSError, match="incomplete"):
    volume_io.write_like(np.ones((4, 8, 8), np.uint8), scan, tmp_path / "labels.nii.gz")
  assert os.listdir(tmp_path) == []


def test_overlay_and_outputs_are_world_readable(tmp_path):
  path = overlay.overlay_png(
    np.zeros((4, 8, 8), np.float32),
    np.zeros((4, 8, 8), np.int32),
    str(tmp_path / "o.png"),
    (1.0, 1.0, 1.0),
  )
  assert os.stat(path).st_mode & 0o777 == 0o644


def test_claim_dir(tmp_path):
  out = tmp_path / "new"
  with pytest.raises(RuntimeError), atomic.claim_dir(out):
    assert out.is_dir()
    raise RuntimeError("computation failed")
  assert not out.exists()  # created for the run, removed with it
  with (
    atomic.claim_dir(out),
    pytest.raises(atomic.OutputDirError, match="in use by another"),
    atomic.claim_dir(out),
  ):
    pass
  (tmp_path / "file").write_text("x")
  with pytest.raises(atomic.OutputDirError, match="is a file"), atomic.claim_dir(tmp_path / "file"):
    pass


def test_split_boxes_planning_is_bounded():
  rows, cols = np.nonzero(np.random.default_rng(0).random((512, 512)) < 0.3)
  boxes = roi_plan.split_boxes(rows, cols, margin=66, cell=4)  # 16,384 cells before coarsening
  assert 1 <= len(boxes) <= roi_plan.MAX_CELLS
  assert np.array_equal(np.sort(np.concatenate(boxes)), np.arange(len(rows)))  # a partition
  # Few clusters are planned as before: two far-apart blobs stay two boxes.
  r = np.array([0, 1, 0, 1, 300, 301, 300, 301])
  c = np.array([0, 0, 1, 1, 300, 300, 301, 301])
  assert sorted(len(b) for b in roi_plan.split_boxes(r, c, margin=16)) == [4, 4]


def test_metrics_jsonl_truncated_to_restored_step(tmp_path):
  with writers.MetricWriter(str(tmp_path)) as w:
    for step in (10, 20, 30, 40):
      w.write(step, {"loss": step / 10})
  with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
    f.write('{"step": 50, "lo')  # a line cut short by a kill
  with writers.MetricWriter(str(tmp_path), keep=lambda r: r["step"] <= 20) as w:
    w.write(30, {"loss": 3.5})
  steps = [
    json.loads(l)["step"]
    for l in (tmp_path / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
  ]
  assert steps == [10, 20, 30]


def test_claim_dir_shared_by_shards_but_not_with_a_whole_run(tmp_path):
  out = tmp_path / "out"
  with (
    atomic.claim_dir(out, shared=True),
    atomic.claim_dir(out, shared=True),
    pytest.raises(atomic.OutputDirError, match="in use by another"),
    atomic.claim_dir(out),
  ):
    pass
  with (
    atomic.claim_dir(out),
    pytest.raises(atomic.OutputDirError, match="in use by a whole"),
    atomic.claim_dir(out, shared=True),
  ):
    pass
  with atomic.lock_dir(out / "case") as first, atomic.lock_dir(out / "case") as second:
    assert first and not second
