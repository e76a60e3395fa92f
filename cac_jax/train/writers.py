"""Metric writers: JSON lines and TensorBoard event files, without TensorFlow.

`MetricWriter(workdir)` appends `{"step": ..., name: value, ...}` lines to
`workdir/metrics.jsonl` and scalar summaries to `workdir/events.out.tfevents.*`.

Event file format (what TensorBoard reads): a sequence of TFRecords,
  uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)
(little endian), each `data` a serialized `tensorflow.Event` protobuf. The first record
carries `file_version = "brain.Event:2"`; the others `wall_time`, `step` and a `Summary` with
one `Value{tag, simple_value}` per scalar. The few protobuf fields needed are encoded by
hand below (wire types: 1 = fixed64, 0 = varint, 2 = length-delimited, 5 = fixed32).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Callable, Iterator, Mapping

# --- CRC-32C (Castagnoli), as TFRecord uses it --------------------------------------------

_CRC_TABLE = []
for _i in range(256):
  _c = _i
  for _ in range(8):
    _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
  _CRC_TABLE.append(_c)


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """Frame `data` as one TFRecord."""
  length = struct.pack("<Q", len(data))
  return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


def read_tfrecords(path: str) -> Iterator[bytes]:
  """Yield the payloads of a TFRecord file, checking both CRCs (ValueError if corrupt)."""
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f"{path}: truncated record header")
      (length,), (crc,) = struct.unpack("<Q", header[:8]), struct.unpack("<I", header[8:])
      if masked_crc32c(header[:8]) != crc:
        raise ValueError(f"{path}: bad length CRC")
      data, footer = f.read(length), f.read(4)
      if len(data) < length or len(footer) < 4 or struct.unpack("<I", footer)[0] != masked_crc32c(data):
        raise ValueError(f"{path}: truncated record or bad data CRC")
      yield data


# --- Minimal protobuf encoding ---------------------------------------------------------


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b, n = n & 0x7F, n >> 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _key(field: int, wire: int) -> bytes:
  return _varint(field << 3 | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
  return _key(field, 2) + _varint(len(data)) + data


def scalar_event(step: int, scalars: Mapping[str, float], wall_time: float | None = None) -> bytes:
  """Serialized Event{wall_time=1, step=2, summary=5{value=1{tag=1, simple_value=2}}}."""
  values = b"".join(
      _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(v)))
      for tag, v in scalars.items())
  wall = time.time() if wall_time is None else wall_time
  return (_key(1, 1) + struct.pack("<d", wall) + _key(2, 0) + _varint(int(step) & (2**64 - 1))
          + _bytes_field(5, values))


def version_event(wall_time: float | None = None) -> bytes:
  wall = time.time() if wall_time is None else wall_time
  return _key(1, 1) + struct.pack("<d", wall) + _bytes_field(3, b"brain.Event:2")


# --- Writer ------------------------------------------------------------------------------


def truncate_jsonl(path: str, keep: Callable[[dict], bool]) -> int:
  """Rewrite a JSON-lines file (atomically) with only the records `keep` accepts.

  Unparseable lines (a line cut short by a kill) are dropped. Returns the records dropped.
  """
  from cac_jax import atomic  # pylint: disable=g-import-not-at-top
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
  """`keep` for adaptation: critic pre-training records up to the state's critic step, the
  others up to its generator step."""
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

  def __init__(self, workdir: str, enabled: bool = True, keep: Callable[[dict], bool] | None = None):
    self.enabled = enabled
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.events_path = os.path.join(
        workdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}")
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if keep is not None and os.path.exists(self.jsonl_path):
        truncate_jsonl(self.jsonl_path, keep)
      self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
      self._events = open(self.events_path, "ab")
      self._events.write(tfrecord(version_event()))
      self._events.flush()

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **scalars}) + "\n")
    self._jsonl.flush()
    self._events.write(tfrecord(scalar_event(step, scalars)))
    self._events.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._events.close()

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress(steps: range, desc: str, total: int, enabled: bool = True):
  """`steps` wrapped in a tqdm bar (count, rate, ETA) over `total` steps, shown from `steps`'
  first step (so a resumed run shows its true position); on stderr, and only on a terminal
  (tqdm's `disable=None`), so logs and tests are not flooded."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(steps, desc=desc, total=total, initial=steps.start, unit="step", disable=None if enabled else True,
              dynamic_ncols=True)
