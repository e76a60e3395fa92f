"""Calling a function in a fresh Python process, for measurements one process cannot repeat.

A benchmark that reports a cold start (every compile), a run from a filled compilation cache
or a peak RSS needs a new interpreter per measurement. `call("pkg.module:function", kwargs)`
runs `function(**kwargs)` in one (`sys.executable`) and returns its JSON-serialisable result.
The child turns JAX's compilation cache on first, as a console script does
(`jax_cache.enable_default`, so `CAC_JAX_COMPILATION_CACHE` in `env` chooses its folder), then
imports the module, with `cwd` (a checkout) first on its path: another checkout's code can be
timed under the same load.
"""

from __future__ import annotations

from collections.abc import Mapping
import json
import os
import subprocess
import sys
from typing import Any

_MARK = "FRESH_PROCESS_RESULT "
_CHILD = f"""
import importlib, json, sys
from cac_jax import jax_cache
jax_cache.enable_default()
module, name = sys.argv[1].split(":")
result = getattr(importlib.import_module(module), name)(**json.loads(sys.argv[2]))
print("\\n{_MARK}" + json.dumps(result, default=str))
"""


def call(
  target: str,
  kwargs: Mapping[str, Any],
  *,
  cwd: str | None = None,
  env: Mapping[str, str] | None = None,
) -> Any:
  """`module:function`(**kwargs) in a fresh process -> its result (through JSON).

  `env`: the child's environment (default this one's); `cwd` is also put first on its
  PYTHONPATH. Raises RuntimeError with the end of the child's stderr when it fails.
  """
  env = dict(os.environ if env is None else env)
  if cwd:
    env["PYTHONPATH"] = cwd + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run(
    [sys.executable, "-c", _CHILD, target, json.dumps(dict(kwargs))],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    check=False,
  )
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
  if proc.returncode != 0 or not lines:
    raise RuntimeError(f"{target} failed in a fresh process:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len(_MARK) :])
