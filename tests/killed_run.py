"""Runs a launch script that kills itself with SIGKILL at a named point (tests/test_experiment.py,
tests/test_batch.py).

  CAC_JAX_KILL_AT=POINT python tests/killed_run.py launch.reproduce ARGS...

POINT is one of
  log:TEXT#N    right after the N-th log record of the cac_jax loggers containing TEXT is emitted
  save:N        right after the N-th training checkpoint (`checkpoints.save`) is written
  write:NAME    right after the first atomic write of a file named NAME (`atomic.write_with`)
  replace:N     right after the N-th `os.replace` of the process: every file of the outputs
                reaches its name by one (`atomic.write_with`, and each move of `atomic.write_set`),
                so these points cover each state of the files under their final names
  count         no kill; at exit, prints "killed_run: K os.replace calls" to stderr
and without CAC_JAX_KILL_AT the script runs as `python -m MODULE ARGS...` would. The kill is
synchronous, at exactly that point of the program, so a sequence of runs killed at a list of
points replays the same way each time.
"""

import atexit
import logging
import os
import runpy
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _die() -> None:
  logging.shutdown()
  sys.stdout.flush()
  sys.stderr.flush()
  os.kill(os.getpid(), signal.SIGKILL)


class _KillOnRecord(logging.Handler):
  def __init__(self, text: str, n: int):
    super().__init__()
    self.text, self.left = text, n

  def emit(self, record: logging.LogRecord) -> None:
    if self.text in record.getMessage():
      self.left -= 1
      if self.left == 0:
        _die()


def _arm(point: str) -> None:
  kind, _, what = point.partition(":")
  if kind == "log":
    text, _, n = what.rpartition("#")
    logging.getLogger("cac_jax").addHandler(_KillOnRecord(text, int(n)))
  elif kind == "save":
    from cac_jax import checkpoints  # pylint: disable=import-outside-toplevel

    real, left = checkpoints.save, [int(what)]

    def save(*args, **kwargs):
      out = real(*args, **kwargs)
      left[0] -= 1
      if left[0] == 0:
        _die()
      return out

    checkpoints.save = save
  elif kind == "write":
    from cac_jax import atomic  # pylint: disable=import-outside-toplevel

    real_write = atomic.write_with

    def write_with(path, *args, **kwargs):
      out = real_write(path, *args, **kwargs)
      if os.path.basename(os.fspath(path)) == what:
        _die()
      return out

    atomic.write_with = write_with
  elif kind in ("replace", "count"):
    real_replace, calls = os.replace, [0]

    def replace(*args, **kwargs):
      real_replace(*args, **kwargs)
      calls[0] += 1
      if kind == "replace" and calls[0] == int(what):
        _die()

    os.replace = replace
    if kind == "count":
      atexit.register(lambda: print(f"killed_run: {calls[0]} os.replace calls", file=sys.stderr))
  else:
    raise SystemExit(f"killed_run: unknown kill point {point!r}")


def main() -> None:
  module = sys.argv[1]
  point = os.environ.get("CAC_JAX_KILL_AT")
  if point:
    _arm(point)
  sys.argv = [module.rsplit(".", 1)[-1], *sys.argv[2:]]
  runpy.run_module(module, run_name="__main__")


if __name__ == "__main__":
  main()
