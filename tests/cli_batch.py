"""Runs many command lines of one launch script in one process (for tests/test_bad_inputs.py).

  python tests/cli_batch.py launch.score CASES.json RESULTS.json

CASES.json: {case id: [arg, ...]}. Each case parses its flags afresh and runs the script's
`main` through `launch._cli.report_errors`, as `python -m launch.score ARGS` would, but
imports JAX and the script once. RESULTS.json: {case id: {"rc", "stdout", "stderr", "seconds"}}; an
exception the CLI does not turn into one line is recorded with its traceback and rc 1.
"""

import contextlib
import importlib
import io
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

from launch import _cli  # noqa: E402


def main():
  module_name, cases_path, results_path = sys.argv[1:4]
  module = importlib.import_module(module_name)
  prog = module_name.rsplit(".", 1)[-1]
  with open(cases_path, encoding="utf-8") as f:
    cases = json.load(f)
  results = {}
  for case_id, args in cases.items():
    out, err = io.StringIO(), io.StringIO()
    rc, start = 0, time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        flags.FLAGS.unparse_flags()
        argv = _cli.parse_flags(prog)([prog, *args])
        _cli.report_errors(module.main, prog, getattr(module, "flag_paths", None))(argv)
      except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
          print(e.code, file=sys.stderr)
      except BaseException:  # pylint: disable=broad-except
        rc = 1
        traceback.print_exc()
    results[case_id] = {
      "rc": rc,
      "stdout": out.getvalue(),
      "stderr": err.getvalue(),
      "seconds": time.perf_counter() - start,
    }
  with open(results_path, "w", encoding="utf-8") as f:
    json.dump(results, f)


if __name__ == "__main__":
  main()
