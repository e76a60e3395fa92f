"""Metric writers: JSON lines and TensorBoard event files (tensorboardX, no TensorFlow).

`MetricWriter(workdir)` appends `{"step": ..., "time": ..., name: value, ...}` lines to
`workdir/metrics.jsonl` (what the tests and reports read) and the same scalars to a
TensorBoard event file `workdir/events.out.tfevents.*` written by `tensorboardX.SummaryWriter`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import glob
import json
import os
import time
import uuid

import tensorboardX
from tqdm import tqdm

from cac_jax import atomic


def truncate_jsonl(path: str, keep: Callable[[dict], bool]) -> int:
  """Rewrite a JSON-lines file (atomically) with only the records `keep` accepts.

  Unparseable lines (a line cut short by a kill) are dropped. Returns the records dropped.
  """
  kept, dropped = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        dropped += 1
        continue
      if isinstance(record, dict) and keep(record):
        kept.append(line if line.endswith("\n") else line + "\n")
      else:
        dropped += 1
  if dropped:
    atomic.write_text(path, "".join(kept))
  return dropped


def resumed_adaptation(state) -> Callable[[dict], bool]:
  """`keep` for adaptation, by the state's two step counters.

  Critic pre-training records up to the state's critic step, the others up to its generator
  step."""
  step, critic_step = int(state.step), int(state.critic_step)

  def keep(record: dict) -> bool:
    pretrain = any(k.startswith("pretrain/") for k in record)
    return record.get("step", 0) <= (critic_step if pretrain else step)

  return keep


class MetricWriter:
  """Append scalars to `workdir/metrics.jsonl` and a TensorBoard event file in `workdir`.

  Only process 0 should write in multi-host runs (pass `enabled=False` elsewhere).
  `keep(record) -> bool` (resumed runs): before appending, metrics.jsonl keeps only the
  records `keep` accepts, e.g. those up to the restored step, so a resumed run does not repeat
  the steps logged after its last checkpoint (a line cut short by a kill is dropped too).
  """

  def __init__(
    self, workdir: str, enabled: bool = True, keep: Callable[[dict], bool] | None = None
  ):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.events_path = None  # the event file, once written
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if keep is not None and os.path.exists(self.jsonl_path):
        truncate_jsonl(self.jsonl_path, keep)
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
      # A unique suffix finds this run's file among those of earlier (resumed) runs.
      suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
      self._events = tensorboardX.SummaryWriter(workdir, filename_suffix=suffix)
      (self.events_path,) = glob.glob(
        os.path.join(glob.escape(workdir), f"events.out.tfevents.*{suffix}")
      )

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    now = time.time()
    self._jsonl.write(json.dumps({"step": int(step), "time": now, **scalars}) + "\n")
    self._jsonl.flush()
    for tag, value in scalars.items():
      self._events.add_scalar(tag, value, int(step), walltime=now)
    self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress(steps: range, desc: str, total: int, enabled: bool = True):
  """`steps` wrapped in a tqdm bar (count, rate, ETA) over `total` steps.

  Shown from `steps`' first step (so a resumed run shows its true position); on stderr, and
  only on a terminal (tqdm's `disable=None`), so logs and tests are not flooded.
  """
  return tqdm(
    steps,
    desc=desc,
    total=total,
    initial=steps.start,
    unit="step",
    disable=None if enabled else True,
    dynamic_ncols=True,
  )
