"""Batch scoring that survives: a failing case does not stop a manifest, a re-run resumes,
a different request is refused, and a run killed at any moment completes on the next one."""

import csv
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from cac_jax import phantoms
from cac_jax.data import volume_io
from cac_jax.scoring import pipeline, score_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def three(tmp_path_factory, tiny_config):
  """A manifest of three small CCTA phantoms."""
  return phantoms.write_dataset(
    str(tmp_path_factory.mktemp("phantoms")), "ccta", 3, 11, tiny_config, split="test"
  )


def _rows(csv_path) -> list[dict]:
  with open(csv_path, encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _image(manifest_csv: str, k: int) -> str:
  return os.path.join(os.path.dirname(manifest_csv), _rows(manifest_csv)[k]["image"])


@pytest.fixture(scope="module")
def reference(three, tiny_export, tmp_path_factory) -> list[dict]:
  """scores.csv of one uninterrupted run."""
  out = str(tmp_path_factory.mktemp("ref"))
  res = score_files.score_manifest(three, tiny_export, out)
  assert len(res.scored) == 3 and not res.failed and not res.skipped
  return _rows(res.csv_path)


def test_a_failing_case_is_recorded_and_the_rest_are_scored_then_resumed(
  three, tiny_export, reference, tmp_path
):
  data = tmp_path / "data"
  shutil.copytree(os.path.dirname(three), data)
  manifest_csv = str(data / "manifest.csv")
  second = _image(manifest_csv, 1)
  good = open(second, "rb").read()
  with open(second, "wb") as f:
    f.write(good[: len(good) // 2])  # a truncated .nii.gz
  out = str(tmp_path / "out")
  res = score_files.score_manifest(manifest_csv, tiny_export, out)
  ids = [r["id"] for r in reference]
  assert res.scored == [ids[0], ids[2]] and list(res.failed) == [ids[1]]
  assert "1 failed" in res.summary() and ids[1] in res.summary()
  rows = {r["id"]: r for r in _rows(res.csv_path)}
  assert rows[ids[1]]["status"] == "error" and rows[ids[1]]["error"]
  assert rows[ids[0]]["status"] == rows[ids[2]]["status"] == "ok"
  assert not os.path.exists(os.path.join(out, ids[1], "scores.json"))
  # Fixed, the same call scores only the failed case; scores.csv equals an uninterrupted run's.
  with open(second, "wb") as f:
    f.write(good)
  before = os.path.getmtime(os.path.join(out, ids[0], "scores.json"))
  res = score_files.score_manifest(manifest_csv, tiny_export, out)
  assert res.scored == [ids[1]] and res.skipped == [ids[0], ids[2]] and not res.failed
  assert os.path.getmtime(os.path.join(out, ids[0], "scores.json")) == before
  assert _rows(res.csv_path) == reference
  # --fail_fast stops at the first failure, as a batch used to.
  with open(second, "wb") as f:
    f.write(good[: len(good) // 2])
  with pytest.raises(volume_io.ScanReadError):
    score_files.score_manifest(manifest_csv, tiny_export, str(tmp_path / "ff"), fail_fast=True)


def test_a_resume_with_other_settings_is_refused_naming_the_difference(
  three, tiny_export, tmp_path
):
  out = str(tmp_path / "out")
  score_files.score_manifest(three, tiny_export, out)
  stamp = os.path.getmtime(os.path.join(out, "scores.csv"))
  with pytest.raises(pipeline.OutputExistsError, match="fp_reduction.*--overwrite"):
    score_files.score_manifest(three, tiny_export, out, fp={"size_limits": False})
  assert os.path.getmtime(os.path.join(out, "scores.csv")) == stamp  # nothing touched
  res = score_files.score_manifest(
    three, tiny_export, out, fp={"size_limits": False}, overwrite=True
  )
  assert len(res.scored) == 3


def test_a_limit_given_by_flag_overrides_the_export_and_is_recorded(three, tiny_export, tmp_path):
  import json  # pylint: disable=import-outside-toplevel

  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel

  from launch import score  # pylint: disable=import-outside-toplevel

  with flagsaver.flagsaver(max_lesion_mm3=300.0, heart_dilation_mm=None):
    fp = score.fp_options()
  assert fp["max_mm3"] == 300.0 and "dilation_mm" not in fp and "min_mm3" not in fp
  report = score_files.score_file(_image(three, 0), tiny_export, str(tmp_path / "o"), fp=fp)
  saved = json.load(open(tmp_path / "o" / "scores.json", encoding="utf-8"))
  for r in (report, saved):
    assert r["request"]["fp_reduction"]["max_mm3"] == 300.0 and r["settings"]["max_mm3"] == 300.0


def _score_cmd(manifest_csv, export, out) -> list[str]:
  return [
    sys.executable,
    "-m",
    "launch.score",
    "--manifest",
    manifest_csv,
    "--checkpoint",
    export,
    "--output_dir",
    out,
  ]


def test_a_batch_killed_at_random_moments_completes_with_each_case_scored_once(
  three, tiny_export, reference, tmp_path
):
  out = str(tmp_path / "out")
  rng = random.Random(7)
  for delay in sorted(rng.uniform(4.0, 14.0) for _ in range(2)):
    p = subprocess.Popen(
      _score_cmd(three, tiny_export, out),
      cwd=ROOT,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    if p.poll() is None:
      p.send_signal(signal.SIGKILL)
    p.wait()
  r = subprocess.run(_score_cmd(three, tiny_export, out), cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "0 failed" in r.stdout
  assert _rows(os.path.join(out, "scores.csv")) == reference
  for row in reference:  # every case complete, nothing left half-written beside it
    assert sorted(os.listdir(os.path.join(out, row["id"]))) == sorted(pipeline.OUTPUT_FILES)
