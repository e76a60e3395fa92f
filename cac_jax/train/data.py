"""The data interface of the training loops: step-indexed streams of batches.

A stream is a callable `stream(step) -> batch` (dict of numpy arrays, layouts in
`docs/architecture.md`). Loops call it with consecutive steps, starting at the step a restored
state resumes from, so a stream that is a pure function of (seed, step) — like
`cac_jax.synthetic.SyntheticData` — makes `--resume` exact.

`Streams` groups what the loops use:
  source          labelled source batches {"views", "labels"} (source training; the
                  classification term of the generator step)
  source_critic   unlabelled source batches {"views"} for the critic
  target_critic   target batches {"views"} for the critic
  target_generator target batches {"views"} for the generator step

`sampler_streams` builds them over `cac_jax.sampling.PatchSampler` (batch i of a sampler
stream is a pure function of (seed, i), so resuming is exact there too). Plain iterators and
argument-free callables are adapted by `as_stream`; those ignore the step, so a run resumed
on them sees other batches than the uninterrupted one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import os
from typing import Any, Callable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]
Stream = Callable[[int], Batch]


@dataclasses.dataclass(frozen=True)
class Streams:
  """The loops' streams, plus `provenance`: what the batches come from (written into the
  export's provenance.json by `describe_training_data`); not a stream."""

  source: Stream | None = None
  source_critic: Stream | None = None
  target_critic: Stream | None = None
  target_generator: Stream | None = None
  provenance: dict | None = None


STREAM_NAMES = ("source", "source_critic", "target_critic", "target_generator")


def _members(streams: Any) -> list:
  return [getattr(streams, n, None) for n in STREAM_NAMES]  # no deep copy


def as_stream(x: Any) -> Stream:
  """Adapt a step-callable, an iterator or an argument-free callable to `stream(step)`."""
  if isinstance(x, Iterator):
    return lambda step: next(x)
  if callable(x):
    try:
      n_params = len(inspect.signature(x).parameters)
    except (TypeError, ValueError):
      n_params = 1
    if n_params == 0:
      return lambda step: x()
    return x
  raise TypeError(f"not a batch stream (callable or iterator): {x!r}")


def as_streams(data: Any) -> Streams:
  """`Streams` from a Streams, or an object with source/source_critic/... attributes."""
  return Streams(*(None if s is None else as_stream(s) for s in _members(data)),
                 provenance=getattr(data, "provenance", None))


class IndexedStream:
  """`stream(step)` over an indexed batch source, prefetching while steps run in order.

  Args:
    batches: `batches(start) -> iterator` over batches start, start + 1, ... (e.g.
      `PatchSampler.source_batches`); a fresh iterator is started whenever the requested step
      is not the next one (first call, resume), the old one is closed.
    offset: index of step 0 (lets two streams share one sampler without sharing batches).
  Batch `step` is batch `offset + step` of the source: resuming is exact.
  """

  def __init__(self, batches: Callable[[int], Iterator[Batch]], offset: int = 0):
    self._batches, self._offset = batches, int(offset)
    self._it, self._next = None, None

  def __call__(self, step: int) -> Batch:
    if self._it is None or step != self._next:
      self.close()
      self._it = self._batches(self._offset + int(step))
    self._next = int(step) + 1
    return next(self._it)

  def close(self):
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


class Prefetched:
  """Compute `stream(step + 1 .. step + depth)` in a background thread while step runs.

  For host-side streams that are pure functions of the step (e.g. synthetic data); the
  batches are the same as without prefetching.
  """

  def __init__(self, stream: Stream, depth: int = 2):
    self._stream, self._depth = stream, max(int(depth), 1)
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cac_jax_prefetch")
    self._futures: dict[int, concurrent.futures.Future] = {}

  def __call__(self, step: int) -> Batch:
    step = int(step)
    future = self._futures.pop(step, None)
    for s in list(self._futures):
      if not step < s <= step + self._depth:
        self._futures.pop(s).cancel()
    for s in range(step + 1, step + 1 + self._depth):
      if s not in self._futures:
        self._futures[s] = self._pool.submit(self._stream, s)
    return future.result() if future is not None else self._stream(step)

  def close(self):
    for f in self._futures.values():
      f.cancel()
    self._futures = {}
    self._pool.shutdown(wait=False)


def prefetched(streams: Streams, depth: int) -> Streams:
  """Every stream of `streams` wrapped in `Prefetched`."""
  return Streams(*(None if s is None else Prefetched(s, depth) for s in _members(streams)),
                 provenance=streams.provenance)


TARGET_GENERATOR_OFFSET = 1 << 40  # generator steps read target batches far from the critic's


def adapt_bright_in_heart(config, target_cases) -> bool | None:
  """Where adaptation streams (target cases given) draw the critic's bright patches:
  `config.adapt.bright_in_heart`; None (the sampler's `config.sampling` default) for source-only
  streams. The labelled source batches of adaptation always follow `config.sampling` (as in
  source training), so the network keeps seeing bone as background."""
  if target_cases is None:
    return None
  return bool(config.adapt.get("bright_in_heart", False))


def adaptation_samplers(source_cases, target_cases, config, seed: int, n_target: int = 1):
  """(source sampler, [target samplers]) of `cac_jax.sampling.PatchSampler` (imported lazily).

  The source sampler has seed `seed`; target sampler k has seed `seed + 1 + k` (k < n_target;
  none when `target_cases` is None). Bright-patch placement follows `adapt_bright_in_heart`:
  the target samplers and the source sampler's critic batches use it, the source sampler's
  labelled batches keep `config.sampling`'s.
  """
  from cac_jax import sampling  # pylint: disable=g-import-not-at-top

  bright = adapt_bright_in_heart(config, target_cases)
  src = sampling.PatchSampler(source_cases, config, seed, critic_bright_in_heart=bright)
  if target_cases is None:
    return src, []
  return src, [sampling.PatchSampler(target_cases, config, seed + 1 + k, bright_in_heart=bright)
               for k in range(n_target)]


def sampler_streams(source_cases, target_cases, config, seed: int) -> Streams:
  """Streams over `cac_jax.sampling.PatchSampler`s (imported lazily) for real data.

  Source batch j, source critic batch i and target critic batch i are batches j / i of
  their sampler streams; the generator's target batch j is target critic batch 2**40 + j.

  Args:
    source_cases: labelled source-domain cases (`cac_jax.manifest.load_cases`).
    target_cases: target-domain cases, or None for source training only.
  """
  src, targets = adaptation_samplers(source_cases, target_cases, config, seed)
  streams = dict(source=IndexedStream(lambda i: src.source_batches(start=i)),
                 source_critic=IndexedStream(lambda i: src.critic_batches(start=i)))
  if targets:
    tgt = targets[0]
    streams.update(target_critic=IndexedStream(lambda i: tgt.critic_batches(start=i)),
                   target_generator=IndexedStream(lambda i: tgt.critic_batches(start=i),
                                                  offset=TARGET_GENERATOR_OFFSET))
  return Streams(**streams)


def manifest_streams(config, source_manifest: str, target_manifest: str | None = None, *, split: str | None = "train",
                     source_domain: str | None = "ncct", target_domain: str | None = "ccta",
                     seed: int | None = None) -> Streams:
  """`sampler_streams` over the cases of data-set manifests (`cac_jax.manifest.load_cases`).

  Args:
    config: full config.
    source_manifest: CSV of the labelled source domain.
    target_manifest: CSV of the target domain (adaptation only).
    split: keep rows of this split (None: all).
    source_domain, target_domain: keep rows of this domain (None: all).
    seed: default `config.seed`.
  """
  from cac_jax import manifest  # pylint: disable=g-import-not-at-top

  source_cases = manifest.load_cases(source_manifest, config, split=split, domain=source_domain)
  if not source_cases:
    raise ValueError(f"{source_manifest}: no cases with split={split!r}, domain={source_domain!r}")
  target_cases = None
  if target_manifest is not None:
    target_cases = manifest.load_cases(target_manifest, config, split=split, domain=target_domain)
    if not target_cases:
      raise ValueError(f"{target_manifest}: no cases with split={split!r}, domain={target_domain!r}")
  streams = sampler_streams(source_cases, target_cases, config, config.seed if seed is None else seed)
  manifests = [m for m in (source_manifest, target_manifest) if m is not None]
  return dataclasses.replace(streams, provenance=manifest_provenance(manifests, split))


def manifest_provenance(manifests: list[str], split: str | None = None) -> dict:
  """Provenance of batches drawn from data-set manifests: their paths and SHA-256, and
  phantoms_only when every manifest's folder carries the phantom writer's marker."""
  from cac_jax.phantoms import writer  # pylint: disable=g-import-not-at-top
  phantoms = all(os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(m)), writer.PHANTOM_MARKER))
                 for m in manifests)
  return {"description": ("phantom data set " if phantoms else "manifest ") + ", ".join(manifests)
                         + (f" (split {split})" if split else ""),
          "manifest_sha256": [_file_sha256(m) for m in manifests], "phantoms_only": True if phantoms else None}


def _file_sha256(path: str) -> str:
  import hashlib  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def describe_training_data(data: Any, config) -> dict:
  """What a training run learned from, for the export's provenance.json.

  None (the loops' default) is `cac_jax.synthetic` phantom patches with `config.seed`;
  `manifest_streams` tag their streams with the manifests and their SHA-256; anything else
  is "not recorded".
  """
  if data is None:
    return {"description": f"phantoms (cac_jax.synthetic), seed {int(config.seed)}", "phantoms_only": True}
  return dict(getattr(data, "provenance", None) or {"description": "not recorded", "phantoms_only": None})
