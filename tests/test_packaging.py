"""Packaging: no top-level `launch`/`configs` installed, console scripts, configs by name.

The subprocess tests need the package installed from this checkout (`pip install -e .`, as
.ci/run does): they run the installed program from a folder outside the checkout.
"""

import configparser
import glob
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def options():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, "setup.cfg"), encoding="utf-8")
  return cfg


def _lines(value: str) -> list[str]:
  return [l.strip() for l in value.strip().splitlines() if l.strip()]


def test_setup_cfg_installs_launch_and_configs_under_cac_jax(options):
  packages = _lines(options["options"]["packages"])
  assert all(p == "cac_jax" or p.startswith("cac_jax.") for p in packages), packages
  package_dir = dict(re.split(r"\s*=\s*", l) for l in _lines(options["options"]["package_dir"]))
  assert package_dir == {"cac_jax.launch": "launch", "cac_jax.configs": "configs"}
  folders = {
    os.path.relpath(os.path.dirname(p), REPO).replace(os.sep, ".")
    for p in glob.glob(os.path.join(REPO, "cac_jax", "**", "__init__.py"), recursive=True)
  }
  assert set(packages) == folders | set(package_dir), "every package folder listed, no other"


def test_every_launch_script_has_a_console_script(options):
  scripts = dict(
    re.split(r"\s*=\s*", l) for l in _lines(options["options.entry_points"]["console_scripts"])
  )
  targets = {
    t.split(":")[0].removeprefix("cac_jax.launch."): t.split(":")[1] for t in scripts.values()
  }
  modules = {
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(REPO, "launch", "*.py"))
    if '\nif __name__ == "__main__":' in open(p, encoding="utf-8").read()
  }
  assert set(targets) == modules and set(targets.values()) == {"run"}
  assert all(name.startswith("cac-") for name in scripts)


def _run(args, cwd):
  return subprocess.run(
    args, cwd=cwd, capture_output=True, text=True, encoding="utf-8", timeout=300
  )


def test_config_by_name_from_another_folder(tmp_path):
  script = os.path.join(os.path.dirname(sys.executable), "cac-phantoms")
  assert os.path.isfile(script), "install the checkout: pip install -e ."
  r = _run(
    [script, "--config", "demo", "--num_cases", "1", "--output_dir", str(tmp_path / "d")],
    cwd=tmp_path,
  )
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "d" / "manifest.csv").is_file()
  bad = _run([script, "--config=nosuch", "--output_dir", str(tmp_path / "e")], cwd=tmp_path)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert bad.stderr.strip() == (
    "cac-phantoms: error: --config nosuch: neither a config name "
    "(benchmark, demo, paper, tiny) nor a file (--help lists the flags)"
  )
  found = _run(
    [
      sys.executable,
      "-c",
      "import importlib.util as u; "
      "print(u.find_spec('launch'), u.find_spec('configs'), u.find_spec('cac_jax.launch') is not None)",
    ],
    cwd=tmp_path,
  )
  assert found.stdout.split() == ["None", "None", "True"], found.stdout + found.stderr


def test_config_path_from_the_checkout(tmp_path):
  r = _run(
    [
      sys.executable,
      "-m",
      "launch.make_phantoms",
      "--config",
      "configs/tiny.py",
      "--num_cases",
      "1",
      "--output_dir",
      str(tmp_path / "d"),
    ],
    cwd=REPO,
  )
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "d" / "manifest.csv").is_file()
