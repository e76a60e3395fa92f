"""A user command's console (`launch._cli.plain_console`): plain lines by default, absl's own
prefixed lines with --verbosity."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A command as the launch scripts are: `_cli.run(main)`, JAX's backend probing included.
SCRIPT = """
import logging
from absl import logging as absl_logging
from launch import _cli

def main(argv):
  import jax
  jax.devices()
  logging.getLogger("cac_jax.demo").info("progress line")
  logging.getLogger("cac_jax.demo").warning("check the input")
  absl_logging.info("library line")  # not this project's code: as Orbax's INFO
  print("result line")

_cli.run(main, prog="demo")
"""
ABSL_PREFIX = re.compile(r"^[IWEF]\d{4} ", re.M)


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="")  # JAX probes every backend, TPU included
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout + proc.stderr


def test_plain_lines_by_default():
  out = _run()
  lines = out.splitlines()
  assert "progress line" in lines and "warning: check the input" in lines, out
  assert "result line" in lines
  assert not ABSL_PREFIX.search(out), out
  assert "Unable to initialize backend" not in out and "library line" not in out, out


def test_verbosity_shows_absl_lines():
  out = _run("--verbosity=0")
  assert re.search(r"^I\d{4} .*\] progress line$", out, re.M), out
  assert re.search(r"^I\d{4} .*\] library line$", out, re.M), out
