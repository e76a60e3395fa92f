"""Executes the notebooks in notebooks/ with tiny parameters (nbclient) and checks their outputs.

Each notebook's cell tagged "parameters" gets tiny settings appended; the kernel runs this
interpreter (a temporary kernelspec), with cwd = notebooks/ and CAC_JAX_NO_INSTALL=1 so the
setup cell never pip-installs. The real-sample test skips when ../shared/realdata is absent.
"""

import json
import pathlib
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
TINY_TRAINING = dict(CONFIG="tiny", SEED=0)
SCORE_KEYS = {
  "domain",
  "LAD",
  "LCX",
  "RCA",
  "total",
  "aorta",
  "aortic_valve",
  "mitral_valve",
  "risk_category",
  "cac_drs",
}
ARTERY_KEYS = {"volume_mm3", "lesions", "mean_hu", "mass", "agatston"}


@pytest.fixture()
def kernel_env(tmp_path, monkeypatch):
  """A kernelspec running this interpreter (the venv's), found first via JUPYTER_PATH."""
  spec = tmp_path / "jupyter" / "kernels" / "cac-jax-test"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(
    json.dumps(
      {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cac-jax test",
        "language": "python",
      }
    )
  )
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("CAC_JAX_NO_INSTALL", "1")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  return "cac-jax-test"


def _execute(name: str, params: dict, kernel_name: str, cwd: pathlib.Path = NOTEBOOKS):
  """Runs notebooks/<name> with `params` appended to its parameters cell; returns the notebook."""
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(cells) == 1, f"{name}: expected one cell tagged 'parameters', found {len(cells)}"
  cells[0].source += "\n# injected by tests/test_notebooks.py\n" + "".join(
    f"{k} = {v!r}\n" for k, v in params.items()
  )
  client = nbclient.NotebookClient(
    nb, timeout=600, kernel_name=kernel_name, resources={"metadata": {"path": str(cwd)}}
  )
  client.execute()  # raises CellExecutionError on any failing cell
  return nb


def _text_outputs(nb) -> str:
  out = []
  for c in nb.cells:
    for o in c.get("outputs", []):
      if o.get("output_type") == "stream":
        out.append(o.get("text", ""))
      elif "data" in o and "text/plain" in o["data"]:
        out.append(o["data"]["text/plain"])
  return "".join(out)


def _has_png_output(nb) -> bool:
  return any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


def _check_png(path) -> None:
  path = pathlib.Path(path)
  assert path.is_file(), f"missing {path}"
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"


def _check_scores(scores: dict) -> None:
  assert set(scores) >= SCORE_KEYS, f"scores lack {SCORE_KEYS - set(scores)}"
  for artery in ("LAD", "LCX", "RCA", "total"):
    assert set(scores[artery]) >= ARTERY_KEYS, f"{artery} lacks {ARTERY_KEYS - set(scores[artery])}"
    assert scores[artery]["volume_mm3"] >= 0


@pytest.mark.parametrize("name", ["quickstart.ipynb", "real_sample.ipynb"])
def test_notebooks_are_stored_without_outputs(name):
  nb = nbformat.read(NOTEBOOKS / name, as_version=4)
  nbformat.validate(nb)
  for c in nb.cells:
    if c.cell_type == "code":
      assert not c.outputs and c.execution_count is None, (
        f"{name}: clear the outputs before committing"
      )
      assert "!pip" not in c.source and "%pip" not in c.source, (
        f"{name}: use subprocess, not IPython magics"
      )


def test_quickstart(tmp_path, kernel_env):
  workdir = tmp_path / "quickstart"
  nb = _execute(
    "quickstart.ipynb",
    dict(
      WORKDIR=str(workdir),
      N_SOURCE_CASES=1,
      N_ADAPT_CASES=1,
      N_TEST_CASES=3,
      SOURCE_STEPS=20,
      CRITIC_PRETRAIN_STEPS=3,
      GENERATOR_STEPS=3,
      **TINY_TRAINING,
    ),
    kernel_env,
  )
  summary = json.loads((workdir / "summary.json").read_text())
  for key in ("source_export", "adapted_export"):
    assert (pathlib.Path(summary[key]) / "config.json").is_file()
  _check_png(summary["outputs"]["overlay.png"])
  _check_png(summary["bland_altman_png"])
  assert (pathlib.Path(summary["outputs"]["calcium_labels.nii.gz"])).is_file()
  scores = json.loads(pathlib.Path(summary["outputs"]["scores.json"]).read_text())
  _check_scores(scores["scores"])
  assert scores["domain"] == "ccta" and scores["threshold"]["threshold_hu"] > 130
  assert len(summary["per_scan"]) == 3
  assert all(r["ref_mm3"] >= 0 and r["pred_mm3"] >= 0 for r in summary["per_scan"])
  assert _has_png_output(nb), "no figure was displayed"


def test_real_sample(realdata, tmp_path, kernel_env):
  workdir = tmp_path / "real_sample"
  nb = _execute(
    "real_sample.ipynb",
    dict(WORKDIR=str(workdir), TOY_SOURCE_CASES=1, TOY_SOURCE_STEPS=20, **TINY_TRAINING),
    kernel_env,
  )
  text = _text_outputs(nb)
  assert "TOY" in text, "the notebook must say that the trained weights are a toy"
  out = workdir / "scores" / "contrast_chest_ct_1"
  _check_png(out / "overlay.png")
  report = json.loads((out / "scores.json").read_text())
  _check_scores(report["scores"])
  assert report["domain"] == "ccta"
  assert 200.0 <= report["threshold"]["threshold_hu"] <= 700.0, report["threshold"]
  assert report["threshold"]["method"].endswith("(auto)")
  assert (out / "calcium_labels.nii.gz").is_file()
  assert _has_png_output(nb), "no figure was displayed"


def test_real_sample_without_data_stops_gracefully(tmp_path, kernel_env):
  nb = _execute(
    "real_sample.ipynb",
    dict(WORKDIR=str(tmp_path / "real_sample"), REALDATA=str(tmp_path / "absent")),
    kernel_env,
    cwd=ROOT,
  )
  assert "real CT sample not found" in _text_outputs(nb)
  assert not (tmp_path / "real_sample" / "scores").exists()
