"""Metric files: metrics.jsonl and a TensorBoard event file that TensorBoard's format reads."""

import json
import struct

from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from cac_jax.train import writers


def _records(path):
  """Payloads of a TFRecord file (TensorBoard's event file framing), both CRCs checked."""
  out = []
  with open(path, "rb") as f:
    while header := f.read(12):
      (length,) = struct.unpack("<Q", header[:8])
      assert struct.unpack("<I", header[8:])[0] == masked_crc32c(header[:8])
      data, footer = f.read(length), f.read(4)
      assert struct.unpack("<I", footer)[0] == masked_crc32c(data)
      out.append(event_pb2.Event.FromString(data))
  return out


def test_event_file_and_jsonl_hold_the_scalars(tmp_path):
  with writers.MetricWriter(str(tmp_path)) as w:
    w.write(1, {"loss": 0.5, "accuracy": 0.25})
    w.write(300, {"loss": -1.75})
  events = _records(w.events_path)
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value]
  assert scalars == [(1, "loss", 0.5), (1, "accuracy", 0.25), (300, "loss", -1.75)]
  assert all(e.wall_time > 1e9 for e in events)
  lines = [json.loads(l) for l in open(tmp_path / "metrics.jsonl", encoding="utf-8")]
  assert [l["step"] for l in lines] == [1, 300] and lines[1]["loss"] == -1.75
  assert lines[0]["accuracy"] == 0.25


def test_resumed_writer_adds_its_own_event_file(tmp_path):
  with writers.MetricWriter(str(tmp_path)) as first:
    first.write(1, {"loss": 1.0})
  with writers.MetricWriter(str(tmp_path), keep=lambda r: r["step"] <= 1) as second:
    second.write(2, {"loss": 2.0})
  assert first.events_path != second.events_path
  assert [v.simple_value for e in _records(second.events_path) for v in e.summary.value] == [2.0]


def test_disabled_writer_writes_nothing(tmp_path):
  with writers.MetricWriter(str(tmp_path / "w"), enabled=False) as w:
    w.write(1, {"loss": 1.0})
  assert not (tmp_path / "w").exists() and w.events_path is None
