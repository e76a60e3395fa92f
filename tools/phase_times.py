#!/usr/bin/env python3
"""Minutes per phase of a `cac-reproduce` run, read from its absl log (stderr).

  cac-reproduce --config demo --workdir runs/demo --verbosity=0 2> reproduce.log
  python tools/phase_times.py reproduce.log

A phase starts at each "[seed N] ..." line the experiment logs (phantoms per role, each
training, snapshot selection, scoring) and ends at the next one; the last ends at the log's
last timestamped line. absl's prefixed lines (`--verbosity` given) carry the timestamps; the
plain console does not.
"""

from __future__ import annotations

import datetime
import re
import sys

# absl: "I1207 14:22:22.159370 140113700789120 reproduce.py:38] message"
_LINE = re.compile(r"^[IWEF](\d{4}) (\d\d:\d\d:\d\d\.\d+) +\d+ [^\]]+\] (.*)$")
_PHASE = re.compile(r"^\[seed (\d+)\] (.*)$")


def _time(mmdd: str, hms: str) -> datetime.datetime:
  return datetime.datetime.strptime(f"2000{mmdd} {hms}", "%Y%m%d %H:%M:%S.%f")


def phases(lines) -> list[tuple[str, float]]:
  """[(phase, minutes)] in log order; the phase text is "seed N: message"."""
  marks, last = [], None
  for line in lines:
    m = _LINE.match(line.rstrip("\n"))
    if not m:
      continue
    last = _time(m.group(1), m.group(2))
    p = _PHASE.match(m.group(3))
    if p:
      marks.append((f"seed {p.group(1)}: {p.group(2)[:70]}", last))
  out = []
  for (name, start), nxt in zip(marks, marks[1:] + [(None, last)]):
    out.append((name, (nxt[1] - start).total_seconds() / 60.0))
  return out


def main(argv: list[str]) -> int:
  if len(argv) != 2:
    print("usage: phase_times.py REPRODUCE_LOG", file=sys.stderr)
    return 2
  try:
    with open(argv[1], encoding="utf-8", errors="replace") as f:
      rows = phases(f)
  except OSError as e:
    print(f"phase_times.py: {argv[1]}: {e.strerror}", file=sys.stderr)
    return 2
  if not rows:
    print(f"phase_times.py: {argv[1]}: no timestamped '[seed N]' lines (run with --verbosity=0)")
    return 1
  for name, minutes in rows:
    print(f"{minutes:6.1f} min  {name}")
  print(f"{sum(m for _, m in rows):6.1f} min  in all")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
