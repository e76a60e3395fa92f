"""Top-level error handling and `--config` shared by every launch script.

  from . import _cli
  ...
  def run() -> None:  # the console script (setup.cfg), e.g. cac-score
    _cli.run(main)

  if __name__ == "__main__":
    run()

A failure the user can fix (a bad input file, checkpoint or manifest, an unusable output
folder, a full disk, a scan that is not CT) ends as one line on stderr,
`<prog>: error: <what, which file, what to do>`, with exit status 2 and no traceback;
`--debug` re-raises it with the traceback. Anything else (a bug) keeps its traceback.
Library exceptions name files and problems; `flag_paths` lets the message also name the
command-line flag a path came from.

`define_config` defines `--config` (an ml_collections config file, with `--config.a.b=value`
overrides) that also takes a config's name (`--config demo`), which works from any folder:
the names are the files of the configs folder beside this package's folder (configs/ in the
checkout, cac_jax/configs when installed).

The console (`plain_console`): progress and warnings of this project's code print as plain
lines (`warning: ...` for warnings), without absl's prefixes, and other libraries' INFO lines
(JAX's backend probing such as "Unable to initialize backend 'tpu'", Orbax's saves) are
hidden. absl's `--verbosity` (given on the command line) restores absl's own console: every
line at that level, with prefixes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import errno
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from cac_jax import jax_cache

DEBUG = flags.DEFINE_bool(
  "debug", False, "On an error, show the Python traceback instead of one line."
)
EXIT_ERROR = 2
# Flags this module defines from now on (`define_config`) belong to the script that asks for
# them: its --help lists them.
flags.disclaim_key_flags()
_PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(_PROJECT_DIR, "configs")
# Where this project's own log calls come from (launch/ and cac_jax/, siblings when installed).
_OWN_CODE = tuple(os.path.join(_PROJECT_DIR, d) + os.sep for d in ("launch", "cac_jax"))
_config_flag_defined = False  # whether this program's --config is `define_config`'s

# The project's "you can fix this" errors: bad files (ScanReadError, ManifestError and
# checkpoint/argument problems are ValueErrors or CheckpointError), OS errors (missing files,
# permissions, full disk, output folder in use) and memory exhaustion.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, MemoryError, app.UsageError)


def _user_errors() -> tuple[type[BaseException], ...]:
  from cac_jax import checkpoints  # pylint: disable=g-import-not-at-top (jax import deferred)

  return _USER_ERRORS + (checkpoints.CheckpointError,)


def one_line(e: BaseException, flag_paths: Mapping[str, str | None] | None = None) -> str:
  """The message of `e` on one line, with the flag its file came from where one is named."""
  if isinstance(e, MemoryError):
    text = (
      "out of memory; the scan or data set is too large for this machine (crop it, or "
      "use a machine with more memory)"
    )
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


def report_errors(
  main: Callable,
  prog: str | None = None,
  flag_paths: Callable[[], Mapping[str, str | None]] | None = None,
) -> Callable:
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


class _PlainFormatter(logging.Formatter):
  """The message alone; warnings and errors begin with their level ("warning: ...")."""

  def format(self, record: logging.LogRecord) -> str:
    text = record.getMessage()
    if record.levelno >= logging.WARNING:
      text = f"{record.levelname.lower()}: {text}"
    return text


def _own_or_warning(record: logging.LogRecord) -> bool:
  """Keep warnings and this project's own lines; drop other libraries' INFO.

  Own lines: its loggers, or absl's logger called from its code."""
  return (
    record.levelno >= logging.WARNING
    or record.name.split(".")[0] == "cac_jax"
    or os.path.abspath(record.pathname).startswith(_OWN_CODE)
  )


def plain_console() -> None:
  """absl's console handler prints plain lines (see the module docstring).

  Unless the command line gave --verbosity, which keeps absl's prefixed lines at that level."""
  if flags.FLAGS["verbosity"].present:
    return
  handler = absl_logging.get_absl_handler().python_handler
  handler.setFormatter(_PlainFormatter())
  handler.addFilter(_own_or_warning)
  absl_logging.set_verbosity(absl_logging.INFO)


def config_names() -> list[str]:
  """The configs addressable by name: tiny, demo, benchmark, paper."""
  return sorted(
    n.removesuffix(".py")
    for n in os.listdir(CONFIG_DIR)
    if n.endswith(".py") and not n.startswith("_")
  )


def config_file(value: str) -> str:
  """`--config`'s value as a file.

  A name from `config_names()` gives that config's file; anything else is a path as
  ml_collections reads it (`file.py`, or `file.py:argument`).

  Raises:
    flags.IllegalFlagValueError: neither a name nor an existing file.
  """
  if value in config_names():
    return os.path.join(CONFIG_DIR, f"{value}.py")
  if not os.path.isfile(value.split(":", 1)[0]):
    raise flags.IllegalFlagValueError(
      f"--config {value}: neither a config name ({', '.join(config_names())}) nor a file"
    )
  return value


def define_config(default: str | None, help_string: str):
  """Defines `--config` (see the module docstring); `default` is a name or None."""
  global _config_flag_defined
  _config_flag_defined = True
  return config_flags.DEFINE_config_file(
    "config",
    None if default is None else config_file(default),
    f"{help_string} A name ({', '.join(config_names())}) or a config file.",
  )


def _config_names_to_files(argv: list[str]) -> list[str]:
  """argv with `--config NAME` / `--config=NAME` replaced by the config's file."""
  out = list(argv)
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      out[i] = "--config=" + config_file(arg.removeprefix("--config="))
    elif arg == "--config" and i + 1 < len(argv):
      out[i + 1] = config_file(argv[i + 1])
  return out


def parse_flags(prog: str) -> Callable:
  """absl's flags parser, with a bad or missing flag reported as one line (exit 2)."""

  def parse(argv):
    try:
      if _config_flag_defined:
        argv = _config_names_to_files(argv)
      return flags.FLAGS(argv)
    except flags.Error as e:
      print(f"{prog}: error: {e} (--help lists the flags)", file=sys.stderr)
      raise SystemExit(EXIT_ERROR) from None

  return parse


def run(
  main: Callable,
  prog: str | None = None,
  flag_paths: Callable[[], Mapping[str, str | None]] | None = None,
) -> None:
  """`absl.app.run(main)` with `report_errors`.

  `prog` defaults to the module's short name (`python -m launch.score`: "score") or the
  console script's name ("cac-score"). JAX's persistent compilation cache is turned on first
  (`jax_cache.enable_default`).
  """
  jax_cache.enable_default()
  if prog is None:
    module = sys.modules.get("__main__")
    spec = getattr(module, "__spec__", None)
    prog = (
      spec.name.rsplit(".", 1)[-1]
      if spec and spec.name
      else os.path.basename(sys.argv[0]).removesuffix(".py")
    )
  _help_from(sys.modules[main.__module__])

  def plain_main(argv):
    plain_console()
    return main(argv)

  app.run(report_errors(plain_main, prog, flag_paths), flags_parser=parse_flags(prog))


def _help_from(script) -> None:
  """Make `--help` show `script`'s docstring and flags when it is not `__main__`.

  A console script's `__main__` is a generated wrapper; absl's help reads `__main__` and
  argv[0]."""
  main_module = sys.modules["__main__"]
  if script is main_module:
    return
  main_module.__doc__ = script.__doc__
  for flag in flags.FLAGS.get_flags_for_module(script.__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
