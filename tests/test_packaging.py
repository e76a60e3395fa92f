"""Packaging: no top-level `launch`/`configs` installed, console scripts, configs by name.

The subprocess tests need the package installed from this checkout (`pip install -e .`, as
.ci/run does): they run the installed program from a folder outside the checkout.
"""

import ast
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


# The stages of `cac_jax` in flow order (docs/architecture.md): a module may import its own
# stage, an earlier one, or the shared top-level modules; train and scoring are siblings (neither
# imports the other).
STAGES = {"": 0, "data": 1, "phantoms": 2, "train": 3, "scoring": 3, "evaluation": 4, "studies": 5}


def _stage_of(module: str) -> str:
  """ "cac_jax.scoring.infer" -> "scoring"; a top-level module ("cac_jax.models") -> ""."""
  parts = module.split(".")
  return parts[1] if len(parts) > 2 and parts[1] in STAGES else ""


def _cac_jax_imports(path: str) -> set[str]:
  """Every `cac_jax...` module a file imports (function-level imports included)."""
  import ast  # pylint: disable=import-outside-toplevel

  found = set()
  for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cac_jax"):
      found |= {f"{node.module}.{a.name}" for a in node.names}
    elif isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("cac_jax")}
  return found


def test_imports_point_down_the_flow():
  bad = []
  for path in glob.glob(os.path.join(REPO, "cac_jax", "**", "*.py"), recursive=True):
    rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
    here = _stage_of(rel if "." in rel.removeprefix("cac_jax.") else rel + ".x")
    for imported in _cac_jax_imports(path):
      there = _stage_of(imported)
      if imported.startswith(("cac_jax.launch", "cac_jax.configs")):
        bad.append(f"{rel} imports the entry point / config {imported}")
      elif there == here or STAGES[there] < STAGES[here]:  # train and scoring: siblings
        continue
      else:
        bad.append(f"{rel} ({here or 'shared'}) imports {imported} ({there or 'shared'})")
  assert not bad, "\n".join(sorted(bad))


def test_stage_rule_catches_an_upward_import():
  assert STAGES[_stage_of("cac_jax.studies.experiment")] > STAGES[_stage_of("cac_jax.scoring.x")]
  assert STAGES[_stage_of("cac_jax.data.scan")] < STAGES[_stage_of("cac_jax.phantoms.generate")]
  assert STAGES[_stage_of("cac_jax.train.loop")] == STAGES[_stage_of("cac_jax.scoring.infer")]
  assert _stage_of("cac_jax.models") == "" and _stage_of("cac_jax.data.scan.Scan") == "data"


def test_scoring_settings_have_one_default_in_the_config():
  """The scoring limits have one default, the config's: the help and README name it.

  The lesion limits, the heart dilation and the aorta ROI are arguments of the library
  functions, without defaults of their own.
  """
  import dataclasses  # pylint: disable=import-outside-toplevel
  import inspect  # pylint: disable=import-outside-toplevel

  from absl import flags  # pylint: disable=import-outside-toplevel

  from cac_jax.data import threshold  # pylint: disable=import-outside-toplevel
  from cac_jax.scoring import heart_region, postprocess  # pylint: disable=import-outside-toplevel
  from configs import paper  # pylint: disable=import-outside-toplevel
  from launch import score  # pylint: disable=import-outside-toplevel

  sc = paper.get_config().scoring
  fields = {f.name: f for f in dataclasses.fields(postprocess.FPReductionSettings)}
  for name in ("min_mm3", "max_mm3", "dilation_mm", "heart_filter_mode"):
    assert fields[name].default is dataclasses.MISSING, name
  for fn, names in (
    (postprocess.size_filter, ("min_mm3", "max_mm3")),
    (postprocess.heart_region, ("dilation_mm",)),
    (postprocess.heart_filter, ("dilation_mm",)),
    (heart_region.find_heart, ("dilation_mm",)),
    (heart_region.measure, ("dilation_mm",)),
    (threshold.ccta_threshold, ("roi_size_mm",)),
  ):
    params = inspect.signature(fn).parameters
    assert all(params[n].default is inspect.Parameter.empty for n in names), fn.__name__
  s = postprocess.FPReductionSettings.from_config(sc)
  assert (s.min_mm3, s.max_mm3, s.dilation_mm) == (
    sc.min_lesion_mm3,
    sc.max_lesion_mm3,
    sc.heart_dilation_mm,
  )
  limits = f"{sc.min_lesion_mm3:g} mm³ or >{sc.max_lesion_mm3:g} mm³"
  assert limits in flags.FLAGS["size_limits"].help
  for flag in score.OVERRIDES:
    assert f"the paper's config: {sc[flag]:g})" in flags.FLAGS[flag].help
  readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
  assert f"{sc.min_lesion_mm3:g}–{sc.max_lesion_mm3:g} mm³" in readme
  assert f"heart dilated by {sc.heart_dilation_mm:g} mm" in readme


_LESION_LIMIT = re.compile(r"^(min|max)_(lesion_)?mm3$")


def _lesion_limit_literals(tree: ast.AST) -> list[tuple[str, float, int]]:
  """(name, value, line) wherever a number is bound to a lesion-limit name: assigned
  (`c.scoring.max_lesion_mm3 = 500.0`, a dataclass field), a parameter's default or a
  keyword argument (`size_filter(..., max_mm3=500)`)."""
  found = []

  def number(node):
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)

  def name_of(target):
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)

  for node in ast.walk(tree):
    pairs = []
    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
      targets = node.targets if isinstance(node, ast.Assign) else [node.target]
      pairs = [(name_of(t), node.value) for t in targets]
    elif isinstance(node, ast.keyword):
      pairs = [(node.arg, node.value)]
    elif isinstance(node, ast.arguments):
      args = node.posonlyargs + node.args
      pairs = list(zip([a.arg for a in args[len(args) - len(node.defaults) :]], node.defaults))
      pairs += [(a.arg, d) for a, d in zip(node.kwonlyargs, node.kw_defaults) if d is not None]
    for name, value in pairs:
      if name and _LESION_LIMIT.match(name) and number(value):
        found.append((name, value.value, value.lineno))
  return found


def _code_trees():
  """(path relative to the repository, `ast` module) of every Python file of the package, the
  configs, the launch scripts, tools and benchmarks."""
  for top in ("cac_jax", "configs", "launch", "tools", "benchmarks"):
    for folder, _, files in os.walk(os.path.join(REPO, top)):
      for name in sorted(f for f in files if f.endswith(".py")):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
          yield os.path.relpath(path, REPO), ast.parse(f.read(), path)


def test_lesion_limits_have_one_literal_default():
  """The lesion limits (1 and 500 mm³) are written once, in configs/paper.py; every other
  default, help text and document reads them from there (the test above)."""
  found = [(rel, *hit) for rel, tree in _code_trees() for hit in _lesion_limit_literals(tree)]
  assert sorted((f, n, v) for f, n, v, _ in found) == [
    ("configs/paper.py", "max_lesion_mm3", 500.0),
    ("configs/paper.py", "min_lesion_mm3", 1.0),
  ], found


def test_lesion_limit_scan_sees_each_way_of_writing_a_default():
  code = (
    "c.scoring.max_lesion_mm3 = 500.0\n"
    "def f(x, min_mm3=1.0, *, max_mm3=500): pass\n"
    "class S:\n  max_mm3: float = 500.0\n"
    "size_filter(x, max_mm3=400)\n"
    "max_mm3 = limit  # not a literal\n"
  )
  names = [n for n, _, _ in _lesion_limit_literals(ast.parse(code))]
  assert sorted(names) == ["max_lesion_mm3", "max_mm3", "max_mm3", "max_mm3", "min_mm3"]


def _docstrings_without_a_summary_line(tree: ast.AST) -> list[int]:
  """Lines of the docstrings (module, class, function) whose first line does not stand alone.

  A docstring's first line is its one-line summary: the end of the docstring or a blank line
  follows it (PEP 257).
  """
  kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
  out = []
  for node in ast.walk(tree):
    if isinstance(node, kinds) and ast.get_docstring(node, clean=False) is not None:
      lines = ast.get_docstring(node, clean=False).split("\n")
      if len(lines) > 1 and lines[1].strip():
        out.append(node.body[0].lineno)
  return sorted(out)


def test_every_docstring_has_a_one_line_summary():
  """Every docstring of the package, the scripts and the configs opens with a one-line summary."""
  found = [
    f"{rel}:{line}"
    for rel, tree in _code_trees()
    for line in _docstrings_without_a_summary_line(tree)
  ]
  assert not found, "first line runs on (add a blank line after a one-line summary): " + ", ".join(
    found
  )


def test_summary_line_check_sees_each_kind_of_docstring():
  code = (
    '"""Module summary that runs\non."""\n'
    'class C:\n  """Class summary.\n\n  Body."""\n'
    '  def f(self):\n    """Method summary that runs\n    on."""\n'
    'async def g():\n  """One line."""\n'
    'def h():\n  """Summary that runs\n  on.\n\n  Body."""\n'
    'def k():\n  x = """not a docstring\n  at all"""\n'
  )
  assert _docstrings_without_a_summary_line(ast.parse(code)) == [1, 8, 13]


_IMPORT_ONLY = """
import os, sys
env, path = dict(os.environ), list(sys.path)
import cac_jax
assert dict(os.environ) == env, set(os.environ.items()) ^ set(env.items())
assert sys.path == path and len(cac_jax.__path__) == 1, cac_jax.__path__
import jax
names = [n for n in dir(jax.config) if "cache" in n and n.startswith("jax_")]
conf = {n: getattr(jax.config, n) for n in names}
import importlib
importlib.reload(cac_jax)
assert {n: getattr(jax.config, n) for n in names} == conf and dict(os.environ) == env
print("OK")
"""


@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_import_changes_nothing_global(where, tmp_path):
  """`import cac_jax` leaves the environment, sys.path and JAX's cache settings alone.

  The subprocess has a cache folder that the console scripts would turn on
  (`CAC_JAX_COMPILATION_CACHE`) and none of JAX's own settings.
  """
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(CAC_JAX_COMPILATION_CACHE=str(tmp_path / "cache"), JAX_PLATFORMS="cpu")
  r = subprocess.run(
    [sys.executable, "-c", _IMPORT_ONLY],
    cwd=REPO if where == "checkout" else tmp_path,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert r.returncode == 0 and r.stdout.strip() == "OK", r.stderr[-3000:]


# A checkout used without an editable install: setuptools' editable finder taken away.
_NO_EDITABLE = """
import importlib.util, sys
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import cac_jax
assert importlib.util.find_spec("cac_jax.configs") is None
import {package}
from cac_jax.configs import demo
import cac_jax.launch._cli
print(demo.get_config().name, {package}.__file__.startswith(cac_jax.__path__[1]))
"""


@pytest.mark.parametrize("package", ["launch", "configs"])
def test_checkout_links_its_launch_and_configs_without_an_install(package):
  r = _run([sys.executable, "-c", _NO_EDITABLE.format(package=package)], cwd=REPO)
  assert r.returncode == 0 and r.stdout.split() == ["demo", "True"], r.stderr[-3000:]
