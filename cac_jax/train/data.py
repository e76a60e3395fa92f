"""The data interface of the training loops: step-indexed streams of batches.

A stream is a callable `stream(step) -> batch` (dict of numpy arrays, layouts in
`docs/architecture.md`). Loops call it with consecutive steps, starting at the step a restored
state resumes from, so a stream that is a pure function of (seed, step) — like
`cac_jax.data.synthetic.SyntheticData` — makes `--resume` exact.

`Streams` groups what the loops use:
  source          labelled source batches {"views", "labels"} (source training; the
                  classification term of the generator step)
  source_critic   unlabelled source batches {"views"} for the critic
  target_critic   target batches {"views"} for the critic
  target_generator target batches {"views"} for the generator step

`sampler_streams` builds them over `cac_jax.data.sampling.PatchSampler` for every caller (the
experiment and `launch.train_source`/`launch.adapt` alike; batch i of a sampler stream is a
pure function of (seed, i), so resuming is exact there too). Plain iterators are adapted by
`as_stream`; they ignore the step, so a run resumed on them sees other batches than the
uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses
import hashlib
import os
from typing import Any

import numpy as np

from cac_jax.data import manifest, sampling
from cac_jax.data.prefetch import Prefetched
from cac_jax.phantoms import writer

Batch = dict[str, np.ndarray]
Stream = Callable[[int], Batch]


@dataclasses.dataclass(frozen=True)
class Streams:
  """The loops' streams, plus `provenance`: what the batches come from; not a stream.

  `provenance` is written into the export's provenance.json by `describe_training_data`."""

  source: Stream | None = None
  source_critic: Stream | None = None
  target_critic: Stream | None = None
  target_generator: Stream | None = None
  provenance: dict | None = None


STREAM_NAMES = ("source", "source_critic", "target_critic", "target_generator")


def _members(streams: Any) -> list:
  return [getattr(streams, n, None) for n in STREAM_NAMES]  # no deep copy


def as_stream(x: Any) -> Stream:
  """`stream(step)` of a step-callable (returned as is) or an iterator (its next batch).

  An iterator gives its next batch whatever the step: a run resumed on it sees other batches
  than the uninterrupted one."""
  if isinstance(x, Iterator):
    return lambda step: next(x)
  if callable(x):
    return x
  raise TypeError(f"not a batch stream (a callable stream(step) or an iterator): {x!r}")


def as_streams(data: Any) -> Streams:
  """`Streams` from a Streams, or an object with source/source_critic/... attributes."""
  return Streams(
    *(None if s is None else as_stream(s) for s in _members(data)),
    provenance=getattr(data, "provenance", None),
  )


def prefetched(streams: Streams, depth: int) -> Streams:
  """Every stream of `streams` prefetched (`cac_jax.data.prefetch.Prefetched`): the same batches."""
  return Streams(
    *(None if s is None else Prefetched(s, depth) for s in _members(streams)),
    provenance=streams.provenance,
  )


def close(streams: Streams) -> None:
  """Close every stream that has a `close` (prefetching threads)."""
  for s in _members(streams):
    if hasattr(s, "close"):
      s.close()


def adapt_bright_in_heart(config, target_cases) -> bool | None:
  """Where adaptation streams (target cases given) draw the critic's bright patches.

  `config.adapt.bright_in_heart`; None (the sampler's `config.sampling` default) for source-only
  streams. The labelled source batches of adaptation always follow `config.sampling` (as in
  source training), so the network keeps seeing bone as background."""
  if target_cases is None:
    return None
  return bool(config.adapt.get("bright_in_heart", False))


def sampler_streams(
  source_cases, target_cases, config, seed: int, provenance: dict | None = None
) -> Streams:
  """The one builder of training batches over `cac_jax.data.sampling.PatchSampler`s (imported lazily).

  Samplers: the source cases with `seed`; with target cases, one with `seed + 1` for the
  critic's target batches and one with `seed + 2` for the generator's. Source batch j, source
  critic batch i, target critic batch i and the generator's target batch j are batches j / i of
  their sampler stream (pure functions of (seed, index): resuming is exact), prefetched
  `config.sampling.prefetch` deep. Bright-patch placement follows `adapt_bright_in_heart`:
  the target samplers and the source sampler's critic batches use it, the source sampler's
  labelled batches keep `config.sampling`'s.

  Args:
    source_cases: labelled source-domain cases (`cac_jax.data.manifest.load_cases`).
    target_cases: target-domain cases, or None for source training only.
    provenance: what the cases are, for the exports (`manifest_provenance`).
  """

  bright = adapt_bright_in_heart(config, target_cases)
  src = sampling.PatchSampler(source_cases, config, seed, critic_bright_in_heart=bright)
  streams = dict(source=src.make_source_batch, source_critic=src.make_critic_batch)
  if target_cases is not None:
    critic, generator = (
      sampling.PatchSampler(target_cases, config, seed + k, bright_in_heart=bright) for k in (1, 2)
    )
    streams.update(
      target_critic=critic.make_critic_batch, target_generator=generator.make_critic_batch
    )
  return prefetched(Streams(**streams, provenance=provenance), int(config.sampling.prefetch))


def manifest_streams(
  config,
  source_manifest: str,
  target_manifest: str | None = None,
  *,
  split: str | None = "train",
  source_domain: str | None = "ncct",
  target_domain: str | None = "ccta",
  seed: int | None = None,
) -> Streams:
  """`sampler_streams` over the cases of data-set manifests (`cac_jax.data.manifest.load_cases`).

  Args:
    config: full config.
    source_manifest: CSV of the labelled source domain.
    target_manifest: CSV of the target domain (adaptation only).
    split: keep rows of this split (None: all).
    source_domain, target_domain: keep rows of this domain (None: all).
    seed: default `config.seed`.
  """

  source_cases = manifest.load_cases(source_manifest, config, split=split, domain=source_domain)
  if not source_cases:
    raise ValueError(f"{source_manifest}: no cases with split={split!r}, domain={source_domain!r}")
  target_cases = None
  if target_manifest is not None:
    target_cases = manifest.load_cases(target_manifest, config, split=split, domain=target_domain)
    if not target_cases:
      raise ValueError(
        f"{target_manifest}: no cases with split={split!r}, domain={target_domain!r}"
      )
  manifests = [m for m in (source_manifest, target_manifest) if m is not None]
  return sampler_streams(
    source_cases,
    target_cases,
    config,
    config.seed if seed is None else seed,
    manifest_provenance(manifests, split),
  )


def manifest_provenance(manifests: list[str], split: str | None = None) -> dict:
  """Provenance of batches drawn from data-set manifests: their paths and SHA-256.

  Also phantoms_only when every manifest's folder carries the phantom writer's marker."""
  phantoms = all(
    os.path.isfile(os.path.join(os.path.dirname(os.path.abspath(m)), writer.PHANTOM_MARKER))
    for m in manifests
  )
  return {
    "description": ("phantom data set " if phantoms else "manifest ")
    + ", ".join(manifests)
    + (f" (split {split})" if split else ""),
    "manifest_sha256": [_file_sha256(m) for m in manifests],
    "phantoms_only": True if phantoms else None,
  }


def _file_sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def describe_training_data(data: Any, config) -> dict:
  """What a training run learned from, for the export's provenance.json.

  None (the loops' default) is `cac_jax.data.synthetic` phantom patches with `config.seed`;
  `manifest_streams` tag their streams with the manifests and their SHA-256; anything else
  is "not recorded".
  """
  if data is None:
    return {
      "description": f"phantoms (cac_jax.data.synthetic), seed {int(config.seed)}",
      "phantoms_only": True,
    }
  return dict(
    getattr(data, "provenance", None) or {"description": "not recorded", "phantoms_only": None}
  )
