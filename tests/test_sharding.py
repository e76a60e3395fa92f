"""Data-parallel steps on 4 (forced host) devices equal the single-device steps.

The 4-device run happens in a subprocess (XLA_FLAGS must be set before jax starts); this
process runs the same steps on one device, from the same deterministic inputs, meanwhile.
"""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np

from cac_jax.data import synthetic
from cac_jax.train import adversarial, loop, sharding, source
from cac_jax.train import state as state_lib
from configs import tiny

ROOT = pathlib.Path(__file__).resolve().parent.parent

SCRIPT = r"""
import sys
import jax
import numpy as np
assert jax.device_count() == 4, jax.devices()
from tests import test_sharding as t
mesh = t.sharding.data_mesh()
assert mesh.size == 4
np.savez(sys.argv[1], **t.run_steps(mesh))
"""


def run_steps(mesh) -> dict:
  """Source step, critic scan (3 updates) and generator step on `mesh` -> flat results."""
  config = tiny.get_config()
  data = synthetic.SyntheticData(config, seed=7)
  out = {}
  state = sharding.replicate(state_lib.init_source_state(config), mesh)
  step = loop.cached_step(source.make_source_step, source.STEP_READS, config, mesh)
  state, m = step(state, sharding.shard_batch(data.source(0), mesh))
  out.update(
    {
      f"source/{i}": np.asarray(x)
      for i, x in enumerate(jax.tree.leaves(jax.device_get((state, m))))
    }
  )

  adapt_state = sharding.replicate(
    state_lib.init_adapt_state(config, state_lib.init_params(config, 0)), mesh
  )
  critic = loop.cached_step(
    adversarial.make_critic_steps, adversarial.CRITIC_STEP_READS, config, mesh, batch_axis=2
  )
  batches = {
    "source_views": np.stack([data.source_critic(i)["views"] for i in range(3)]),
    "target_views": np.stack([data.target_critic(i)["views"] for i in range(3)]),
  }
  adapt_state, cm = critic(adapt_state, sharding.shard_batch(batches, mesh, batch_axis=2))
  generator = loop.cached_step(
    adversarial.make_generator_step, adversarial.GENERATOR_STEP_READS, config, mesh
  )
  s = data.source(0)
  batch = {
    "source_views": s["views"],
    "source_labels": s["labels"],
    "target_views": data.target_generator(0)["views"],
  }
  adapt_state, gm = generator(adapt_state, sharding.shard_batch(batch, mesh))
  leaves = jax.tree.leaves(jax.device_get((adapt_state, cm, gm)))
  out.update({f"adapt/{i}": np.asarray(x) for i, x in enumerate(leaves)})
  return out


def test_four_devices_match_one(tmp_path):
  path = str(tmp_path / "four.npz")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(
    [sys.executable, "-c", SCRIPT, path],
    cwd=ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  one = run_steps(sharding.data_mesh(jax.devices()[:1]))
  log, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, log[-3000:]
  four = dict(np.load(path))
  assert sorted(four) == sorted(one)
  for k in sorted(one):
    if one[k].dtype.kind in "iu":
      np.testing.assert_array_equal(four[k], one[k], err_msg=k)  # steps, rng keys
    else:
      # Sums over the batch run in another order on 4 devices. RMSProp divides by the root
      # of tiny second moments after 3 steps, so a near-zero gradient entry can move by a
      # few 1e-6 (a lr-5e-4 update is ~1e-3): atol 1e-5 is still 1% of one update.
      np.testing.assert_allclose(four[k], one[k], rtol=2e-5, atol=1e-5, err_msg=k)
