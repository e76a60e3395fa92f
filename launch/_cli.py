"""Top-level error handling shared by every launch script.

  from launch import _cli
  ...
  if __name__ == "__main__":
    _cli.run(main)

A failure the user can fix (a bad input file, checkpoint or manifest, an unusable output
folder, a full disk, a scan that is not CT) ends as one line on stderr,
`<prog>: error: <what, which file, what to do>`, with exit status 2 and no traceback;
`--debug` re-raises it with the traceback. Anything else (a bug) keeps its traceback.
Library exceptions name files and problems; `flag_paths` lets the message also name the
command-line flag a path came from.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable, Mapping, Optional

from absl import app
from absl import flags

DEBUG = flags.DEFINE_bool("debug", False, "On an error, show the Python traceback instead of one line.")
EXIT_ERROR = 2

# The project's "you can fix this" errors: bad files (ScanReadError, ManifestError and
# checkpoint/argument problems are ValueErrors or CheckpointError), OS errors (missing files,
# permissions, full disk, output folder in use) and memory exhaustion.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, MemoryError, app.UsageError)


def _user_errors() -> tuple[type[BaseException], ...]:
  from cac_jax import checkpoints  # pylint: disable=g-import-not-at-top (jax import deferred)
  return _USER_ERRORS + (checkpoints.CheckpointError,)


def one_line(e: BaseException, flag_paths: Optional[Mapping[str, Optional[str]]] = None) -> str:
  """The message of `e` on one line, with the flag its file came from where one is named."""
  if isinstance(e, MemoryError):
    text = ("out of memory; the scan or data set is too large for this machine (crop it, or "
            "use a machine with more memory)")
  elif getattr(e, "errors", None) and hasattr(e, "csv_path"):  # ManifestError: list them all
    errors = list(e.errors)
    shown = "; ".join(errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
    text = f"manifest {e.csv_path}: {len(errors)} problem(s): {shown}"
  elif isinstance(e, OSError) and e.strerror and not isinstance(e, FileExistsError) and e.args[1:]:
    text = e.strerror if e.filename is None else f"{e.filename}: {e.strerror}"
    if e.errno == errno.ENOSPC:
      text += "; free some space or write elsewhere (nothing was left half-written)"
  else:
    text = str(e) or type(e).__name__
  text = " ".join(part.strip() for part in text.splitlines() if part.strip())
  for flag, path in (flag_paths or {}).items():
    if path and (path in text or os.path.abspath(path) in text) and flag not in text:
      text = f"{flag}: {text}"
      break
  return text


def report_errors(main: Callable, prog: Optional[str] = None,
                  flag_paths: Optional[Callable[[], Mapping[str, Optional[str]]]] = None) -> Callable:
  """`main` wrapped so that user errors print one line and exit 2 (see the module docstring)."""
  def wrapped(argv):
    try:
      return main(argv)
    except _user_errors() as e:  # pylint: disable=catching-non-exception
      if DEBUG.value:
        raise
      name = prog or os.path.basename(sys.argv[0]).removesuffix(".py")
      print(f"{name}: error: {one_line(e, flag_paths() if flag_paths else None)}", file=sys.stderr)
      sys.stderr.flush()
      raise SystemExit(EXIT_ERROR) from None
  return wrapped


def parse_flags(prog: str) -> Callable:
  """absl's flags parser, with a bad or missing flag reported as one line (exit 2)."""
  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f"{prog}: error: {e} (--help lists the flags)", file=sys.stderr)
      raise SystemExit(EXIT_ERROR) from None
  return parse


def run(main: Callable, prog: Optional[str] = None,
        flag_paths: Optional[Callable[[], Mapping[str, Optional[str]]]] = None) -> None:
  """`absl.app.run(main)` with `report_errors`; `prog` defaults to the module's short name."""
  if prog is None:
    module = sys.modules.get("__main__")
    spec = getattr(module, "__spec__", None)
    prog = (spec.name.rsplit(".", 1)[-1] if spec and spec.name else
            os.path.basename(sys.argv[0]).removesuffix(".py"))
  app.run(report_errors(main, prog, flag_paths), flags_parser=parse_flags(prog))
