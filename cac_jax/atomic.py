"""Atomic file writes: write a temp file beside the target, then `os.replace` it.

A reader (or a crash) never sees a half-written output, and an existing file is only
replaced by a complete one.
"""

from __future__ import annotations

import os
import tempfile
from typing import Callable


def write_with(path: str | os.PathLike, write: Callable[[str], None], suffix: str = "") -> None:
  """Call `write(tmp_path)` on a temp path in the target's folder, then rename it to `path`.

  `suffix` keeps the extension writers look at (e.g. ".nii.gz" for SimpleITK).
  """
  path = os.fspath(path)
  fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
  os.close(fd)
  try:
    write(tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str | os.PathLike, text: str) -> None:
  """Write `text` (UTF-8) to `path` atomically."""
  def _write(tmp: str) -> None:
    with open(tmp, "w", encoding="utf-8", newline="") as f:
      f.write(text)
  write_with(path, _write)


def write_csv(path: str | os.PathLike, fieldnames, rows) -> None:
  """Write dict `rows` as CSV with a header (UTF-8, '\\n' line ends) atomically."""
  import csv  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  write_text(path, buf.getvalue())
