"""Source training across 2 processes (`jax.distributed`, CPU) equals one process.

Two subprocesses join a local coordinator, each with one CPU device, and run source steps
data-parallel: each passes its half of the global batch (`sharding.shard_batch`), XLA's
gradient all-reduce crosses processes (gloo, JAX's default CPU collectives). This process runs
the same steps on one device with the whole batch meanwhile.
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np

from cac_jax.data import synthetic
from cac_jax.train import loop, sharding, source
from cac_jax.train import state as state_lib
from configs import tiny

ROOT = pathlib.Path(__file__).resolve().parent.parent
STEPS = 2

SCRIPT = r"""
import sys
import jax
port, pid, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(
  coordinator_address=f"localhost:{port}", num_processes=2, process_id=pid,
  initialization_timeout=300,
)
assert jax.process_count() == 2 and jax.device_count() == 2, jax.devices()
import numpy as np
from tests import test_multiprocess as t
out = t.run_steps(t.sharding.data_mesh())
if pid == 0:
  np.savez(path, **out)
jax.distributed.shutdown()
"""


def _local_half(batch: dict) -> dict:
  """This process's part of a (3, B, ...) batch: B split in process order."""
  n, i = jax.process_count(), jax.process_index()
  return jax.tree.map(lambda x: np.split(np.asarray(x), n, axis=1)[i], batch)


def run_steps(mesh) -> dict:
  """`STEPS` source steps of the tiny config on `mesh` -> {leaf index: params/opt state}."""
  config = tiny.get_config()
  data = synthetic.SyntheticData(config, seed=7)
  state = sharding.replicate(state_lib.init_source_state(config), mesh)
  step = loop.cached_step(source.make_source_step, source.STEP_READS, config, mesh)
  for i in range(STEPS):
    state, _ = step(state, sharding.shard_batch(_local_half(data.source(i)), mesh))
  leaves = jax.tree.leaves(state)  # replicated: this process's copy is the whole value
  return {str(k): np.asarray(x.addressable_shards[0].data) for k, x in enumerate(leaves)}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  path = str(tmp_path / "two.npz")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device each
  env["JAX_PLATFORMS"] = "cpu"
  port = str(_free_port())
  procs = [
    subprocess.Popen(
      [sys.executable, "-c", SCRIPT, port, str(i), path],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  one = run_steps(sharding.data_mesh(jax.devices()[:1]))
  logs = [p.communicate(timeout=900)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], [log[-3000:] for log in logs]
  two = dict(np.load(path))
  assert sorted(two) == sorted(one)
  for k in sorted(one):
    if one[k].dtype.kind in "iu":
      np.testing.assert_array_equal(two[k], one[k], err_msg=k)  # step counts
    else:
      # The all-reduce sums the two halves' gradients in another order than one device's
      # batch sum; as in tests/test_sharding.py (4 devices), RMSProp's root of tiny second
      # moments can move a near-zero entry by a few 1e-6: atol 1e-5 is 1 % of one update.
      np.testing.assert_allclose(two[k], one[k], rtol=2e-5, atol=1e-5, err_msg=k)
