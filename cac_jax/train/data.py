"""The data interface of the training loops: step-indexed streams of batches.

A stream is a callable `stream(step) -> batch` (dict of numpy arrays, layouts in
`docs/CONTRACTS.md`). Loops call it with consecutive steps, starting at the step a restored
state resumes from, so a stream that is a pure function of (seed, step) — like
`cac_jax.synthetic.SyntheticData` — makes `--resume` exact.

`Streams` groups what the loops use:
  source          labelled source batches {"views", "labels"} (source training; the
                  classification term of the generator step)
  source_critic   unlabelled source batches {"views"} for the critic
  target_critic   target batches {"views"} for the critic
  target_generator target batches {"views"} for the generator step

Iterators (e.g. `PatchSampler.source_batches()`) and objects with argument-free methods
(`PatchSampler.source_batch`) are adapted by `as_stream`; such streams ignore the step, so
a resumed run is reproducible (the sampler is re-seeded from (seed, start step)) but not
identical to the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]
Stream = Callable[[int], Batch]


@dataclasses.dataclass(frozen=True)
class Streams:
  source: Stream | None = None
  source_critic: Stream | None = None
  target_critic: Stream | None = None
  target_generator: Stream | None = None


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
  if isinstance(data, Streams):
    return Streams(*(None if s is None else as_stream(s) for s in dataclasses.astuple(data)))
  fields = [f.name for f in dataclasses.fields(Streams)]
  return Streams(**{f: as_stream(getattr(data, f)) if getattr(data, f, None) is not None else None for f in fields})


class ReseedingSampler:
  """Step-stream over a sampler that only offers "next batch": re-created at the first step.

  Args:
    make: `make(seed) -> sampler` (e.g. `lambda s: PatchSampler(cases, config, s)`).
    method: name of the sampler's argument-free batch method ("source_batch", ...).
    seed: base seed; the sampler is built with seed + 1_000_003 * first_step, so a run
      resumed at step k is reproducible.
  """

  def __init__(self, make: Callable[[int], Any], method: str, seed: int):
    self._make, self._method, self._seed = make, method, seed
    self._sampler, self._next = None, None

  def __call__(self, step: int) -> Batch:
    if self._sampler is None or step != self._next:
      self._sampler = self._make(self._seed + 1_000_003 * int(step))
    self._next = int(step) + 1
    return getattr(self._sampler, self._method)()


def sampler_streams(source_cases, target_cases, config, seed: int) -> Streams:
  """Streams over `cac_jax.sampling.PatchSampler`s (imported lazily) for real data.

  Args:
    source_cases: labelled source-domain cases (`cac_jax.manifest.load_cases`).
    target_cases: target-domain cases, or None for source training only.
  """
  from cac_jax import sampling  # pylint: disable=g-import-not-at-top

  def make(cases):
    return lambda s: sampling.PatchSampler(cases, config, s)

  src = make(source_cases)
  streams = dict(source=ReseedingSampler(src, "source_batch", seed),
                 source_critic=ReseedingSampler(src, "critic_batch", seed + 1))
  if target_cases is not None:
    tgt = make(target_cases)
    streams.update(target_critic=ReseedingSampler(tgt, "critic_batch", seed + 2),
                   target_generator=ReseedingSampler(tgt, "critic_batch", seed + 3))
  return Streams(**streams)
