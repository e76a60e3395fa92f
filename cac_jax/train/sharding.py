"""Data parallelism with `jax.sharding`: a 1-D mesh 'data'; params replicated, batches split.

Batch layouts: (3, B, ...) view stacks and (3, B, o, o) labels have the batch on axis 1;
stacked critic batches (n, 3, B, ...) on axis 2. Train steps are jitted with these
shardings, so XLA inserts the gradient all-reduce; results match a single-device step up
to the order of floating-point sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """1-D mesh named 'data' over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, batch_axis: int = 1) -> NamedSharding:
  """Split axis `batch_axis` over 'data' (1 for (3, B, ...), 2 for (n, 3, B, ...))."""
  return NamedSharding(mesh, P(*([None] * batch_axis), AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Place every leaf of `tree` on all devices of `mesh`."""
  return jax.device_put(tree, replicated(mesh))


def shard_batch(batch: Any, mesh: Mesh, batch_axis: int = 1) -> Any:
  """Place a (host-local) numpy batch pytree on `mesh`, split along `batch_axis`.

  Single process: the arrays are the global batch. Multi-process: each process passes its
  own part and the global batch is their concatenation along `batch_axis`.
  """
  sharding = batch_sharding(mesh, batch_axis)
  n_local = len(mesh.local_devices)

  def put(x):
    x = np.asarray(x)
    if x.shape[batch_axis] % n_local:
      raise ValueError(
        f"batch of {x.shape[batch_axis]} (axis {batch_axis} of {x.shape}) does not split "
        f"over {n_local} local devices"
      )
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)
