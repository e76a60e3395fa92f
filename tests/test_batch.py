"""Batch scoring that survives: a failing case does not stop a manifest, a re-run resumes,
a different request is refused, and a run killed at any moment completes on the next one."""

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest

from cac_jax import phantoms
from cac_jax.data import volume_io
from cac_jax.scoring import outputs, score_files

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
  three, tiny_export, reference, tmp_path, capsys
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
  capsys.readouterr()
  res = score_files.score_manifest(manifest_csv, tiny_export, out, progress=True)
  assert res.scored == [ids[1]] and res.skipped == [ids[0], ids[2]] and not res.failed
  assert "2 skipped (already scored)" in capsys.readouterr().err  # the progress bar says so
  assert os.path.getmtime(os.path.join(out, ids[0], "scores.json")) == before
  assert _rows(res.csv_path) == reference
  # --fail_fast stops at the first failure, as a batch used to.
  with open(second, "wb") as f:
    f.write(good[: len(good) // 2])
  with pytest.raises(volume_io.ScanReadError):
    score_files.score_manifest(manifest_csv, tiny_export, str(tmp_path / "ff"), fail_fast=True)


def test_a_resume_with_other_settings_or_checkpoint_is_refused_naming_the_difference(
  three, tiny_export, tiny_config, tiny_params, tmp_path
):
  import jax  # pylint: disable=import-outside-toplevel

  from cac_jax import checkpoints  # pylint: disable=import-outside-toplevel

  out = str(tmp_path / "out")
  score_files.score_manifest(three, tiny_export, out)
  stamp = os.path.getmtime(os.path.join(out, "scores.csv"))
  listing = sorted(os.listdir(out))
  with pytest.raises(outputs.OutputExistsError, match="fp_reduction.*--overwrite"):
    score_files.score_manifest(three, tiny_export, out, fp={"size_limits": False})
  # Another checkpoint (the same architecture, other weights): refused, naming both hashes.
  other = checkpoints.export_inference(
    tmp_path / "other", jax.tree.map(lambda x: x + 1e-3, tiny_params), tiny_config
  )
  hashes = [checkpoints.content_hash(d) for d in (tiny_export, other)]
  assert hashes[0] != hashes[1]
  with pytest.raises(outputs.OutputExistsError) as refused:
    score_files.score_manifest(three, other, out)
  assert f"checkpoint_sha256 {hashes[0]!r} -> {hashes[1]!r}" in str(refused.value)
  assert "--overwrite" in str(refused.value)
  assert os.path.getmtime(os.path.join(out, "scores.csv")) == stamp  # nothing touched
  assert sorted(os.listdir(out)) == listing
  res = score_files.score_manifest(
    three, tiny_export, out, fp={"size_limits": False}, overwrite=True
  )
  assert len(res.scored) == 3


def test_a_limit_given_by_flag_overrides_the_export_and_is_recorded(three, tiny_export, tmp_path):
  import json  # pylint: disable=import-outside-toplevel

  from absl import flags  # pylint: disable=import-outside-toplevel
  from absl.testing import flagsaver  # pylint: disable=import-outside-toplevel

  from launch import score  # pylint: disable=import-outside-toplevel

  flags.FLAGS.mark_as_parsed()  # the script's flag holders read only parsed flags
  try:
    with flagsaver.flagsaver(max_lesion_mm3=300.0, heart_dilation_mm=None):
      fp = score.fp_options()
  finally:
    flags.FLAGS.unparse_flags()  # back to unparsed defaults, as before the test
  assert fp["max_mm3"] == 300.0 and "dilation_mm" not in fp and "min_mm3" not in fp
  report = score_files.score_file(_image(three, 0), tiny_export, str(tmp_path / "o"), fp=fp)
  saved = json.load(open(tmp_path / "o" / "scores.json", encoding="utf-8"))
  for r in (report, saved):
    assert r["request"]["fp_reduction"]["max_mm3"] == 300.0 and r["settings"]["max_mm3"] == 300.0


def _run_together(cmds: list[list[str]]) -> list[str]:
  """The commands run at once from the repository root; their outputs, each asserted to exit 0."""
  procs = [
    subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for cmd in cmds
  ]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0] * len(procs), outs
  return outs


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
  """kill -9 at seeded random points of the batch, then the same command: every output file
  reaches its name by an `os.replace`, so the runs are killed right after a random one of them
  (tests/killed_run.py): the points are spread over the whole batch, and each one is reached."""
  launcher = [sys.executable, os.path.join(ROOT, "tests", "killed_run.py"), "launch.score"]
  args = _score_cmd(three, tiny_export, str(tmp_path / "whole"))[3:]

  def score(point: str, out: str) -> subprocess.CompletedProcess:
    args[args.index("--output_dir") + 1] = out
    env = {**os.environ, "CAC_JAX_KILL_AT": point}
    return subprocess.run(
      [*launcher, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )

  counted = score("count", str(tmp_path / "whole"))  # an uninterrupted run's os.replace calls
  assert counted.returncode == 0, counted.stderr[-2000:]
  total = int(counted.stderr.rsplit("killed_run: ", 1)[1].split()[0])
  assert _rows(tmp_path / "whole" / "scores.csv") == reference
  # Kill points as cut points of the uninterrupted run's calls: a run killed after n calls has
  # finished at most n calls' worth of cases, so the next run makes more calls than its point.
  cuts = sorted(random.Random(7).sample(range(1, total), 3))
  out = str(tmp_path / "out")
  for n in (b - a for a, b in zip([0, *cuts], cuts)):
    r = score(f"replace:{n}", out)
    assert r.returncode == -signal.SIGKILL, (n, total, r.stderr[-2000:])
  r = score("", out)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "0 failed" in r.stdout
  assert _rows(os.path.join(out, "scores.csv")) == reference
  for row in reference:  # every case complete, nothing left half-written beside it
    assert sorted(os.listdir(os.path.join(out, row["id"]))) == sorted(outputs.OUTPUT_FILES)
    assert _case_files(out, row["id"]) == _case_files(str(tmp_path / "whole"), row["id"])


# Case ids that fall into both shards of 2 (score_files.shard_of: 2, 1, 2).
SHARD_IDS = ("p1", "p2", "p3")
# The FP-reduction settings cac-score passes by default (its request record names them).
CLI_FP = dict(region_growing=True, size_limits=True, heart_filter=True, aorta_threshold=True)


def _write_manifest(rows: list[dict], base: str, path: str) -> str:
  """`rows` written to `path` with their file columns made absolute under `base`."""
  for row in rows:
    for key in ("image", "label", "heart_mask", "aorta_mask"):
      if row.get(key):
        row[key] = os.path.join(base, row[key])
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  return path


def _renamed(manifest_csv: str, folder, ids) -> str:
  """A copy of a manifest whose cases have other ids (the images are read where they are)."""
  base = os.path.dirname(manifest_csv)
  rows = _rows(manifest_csv)
  for row, new in zip(rows, ids, strict=True):
    row["id"] = new
  return _write_manifest(rows, base, os.path.join(folder, "manifest.csv"))


def _case_files(out: str, case_id: str) -> dict[str, bytes]:
  folder = os.path.join(out, case_id)
  return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


def test_two_shards_fill_one_folder_as_one_unsharded_run(three, tiny_export, tmp_path):
  assert [score_files.shard_of(i, 2) for i in SHARD_IDS] == [2, 1, 2]
  manifest_csv = _renamed(three, tmp_path, SHARD_IDS)
  whole_dir = str(tmp_path / "whole")
  whole = score_files.score_manifest(manifest_csv, tiny_export, whole_dir, fp=CLI_FP)
  expected = open(whole.csv_path, encoding="utf-8").read()
  # One after the other, in this process: shard 1 writes a scores.csv of what is finished.
  seq = str(tmp_path / "seq")
  first = score_files.score_manifest(manifest_csv, tiny_export, seq, fp=CLI_FP, shard=(1, 2))
  assert first.scored == ["p2"] and first.summary().startswith("shard 1/2: 1 scored")
  assert [r["id"] for r in _rows(first.csv_path)] == ["p2"]
  second = score_files.score_manifest(manifest_csv, tiny_export, seq, fp=CLI_FP, shard=(2, 2))
  assert second.scored == ["p1", "p3"] and not second.skipped
  assert open(second.csv_path, encoding="utf-8").read() == expected
  # Both at once, as two commands sharing the folder; the last rebuild lists every case.
  together = str(tmp_path / "together")
  outs = _run_together(
    [[*_score_cmd(manifest_csv, tiny_export, together), "--shard", k] for k in ("1/2", "2/2")]
  )
  assert "shard 2/2: 2 scored" in outs[1]
  assert open(os.path.join(together, "scores.csv"), encoding="utf-8").read() == expected
  for case_id in SHARD_IDS:
    want = _case_files(whole_dir, case_id)
    assert _case_files(seq, case_id) == want
    assert _case_files(together, case_id) == want


def test_a_bad_shard_is_one_line(tmp_path):
  cases = {
    "zero": ["--shard", "0/2"],
    "above": ["--shard", "3/2"],
    "word": ["--shard", "half"],
    "image": ["--image", "x.nii.gz", "--shard", "1/2"],
  }
  common = ["--manifest", "m.csv", "--checkpoint", "ck", "--output_dir", str(tmp_path / "o")]
  cases = {k: (v if k == "image" else [*common, *v]) for k, v in cases.items()}
  cases["image"] += ["--checkpoint", "ck", "--output_dir", str(tmp_path / "o")]
  (tmp_path / "cases.json").write_text(json.dumps(cases), encoding="utf-8")
  subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "tests", "cli_batch.py"),
      "launch.score",
      str(tmp_path / "cases.json"),
      str(tmp_path / "results.json"),
    ],
    cwd=ROOT,
    check=True,
    timeout=600,
  )
  results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
  for case_id, r in results.items():
    lines = r["stderr"].strip().splitlines()
    assert r["rc"] != 0 and len(lines) == 1 and "--shard" in lines[0], (case_id, r)
  assert not (tmp_path / "o").exists()


def _first_rows(manifest_csv: str, folder, k: int) -> str:
  """A copy of a manifest with its first k rows (the images are read where they are)."""
  base = os.path.dirname(manifest_csv)
  return _write_manifest(_rows(manifest_csv)[:k], base, os.path.join(folder, "first.csv"))


def test_a_folder_in_use_is_refused_and_two_batches_on_two_folders_both_complete(
  three, tiny_export, reference, tmp_path
):
  from cac_jax import atomic  # pylint: disable=import-outside-toplevel

  one = _first_rows(three, tmp_path, 1)
  busy = tmp_path / "busy"
  with atomic.claim_dir(busy):  # held as a running cac-score holds its --output_dir
    r = subprocess.run(
      _score_cmd(one, tiny_export, str(busy)), cwd=ROOT, capture_output=True, text=True, timeout=600
    )
  assert r.returncode == 2 and "in use by another" in r.stderr.strip().splitlines()[-1], r.stderr
  assert "Traceback" not in r.stderr and not os.listdir(busy)
  _run_together([_score_cmd(one, tiny_export, str(tmp_path / name)) for name in ("a", "b")])
  for name in ("a", "b"):
    assert _rows(tmp_path / name / "scores.csv") == reference[:1]
    assert sorted(os.listdir(tmp_path / name / reference[0]["id"])) == sorted(outputs.OUTPUT_FILES)
