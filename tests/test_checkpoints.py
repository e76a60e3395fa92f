"""Inference export/load round trip, training checkpoint round trip, clear errors."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cac_jax import checkpoints
from cac_jax.train import state as state_lib
from configs import tiny


@pytest.fixture(scope="module")
def config():
  return tiny.get_config()


@pytest.fixture(scope="module")
def params(config):
  return state_lib.init_params(config, 0)  # host draw: no PRNG compile


@pytest.fixture(scope="module")
def exported(config, params, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("ckpt") / "export")
  checkpoints.export_inference(path, params, config)
  return path


def _equal(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
    np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


def test_export_round_trip(config, params, exported):
  loaded, cfg = checkpoints.load_inference(exported)
  assert _equal(loaded, {"generator": params["generator"], "classifier": params["classifier"]})
  assert tuple(cfg.model.dilations) == tuple(config.model.dilations)
  assert cfg.data.output_size == config.data.output_size
  # Overwriting an export replaces it.
  checkpoints.export_inference(exported, params, config)
  assert _equal(checkpoints.load_inference(exported)[0], loaded)


def test_provenance_names_the_config(exported):
  loaded_cfg = checkpoints.load_inference(exported)[1]
  prov = checkpoints.provenance(exported, loaded_cfg)
  assert prov["config_name"] == "tiny" and len(prov["checkpoint_sha256"]) == 64


def test_export_needs_both_networks(config, params, tmp_path):
  with pytest.raises(ValueError, match="classifier"):
    checkpoints.export_inference(str(tmp_path / "x"), {"generator": params["generator"]}, config)


def _copy(exported, tmp_path):
  dst = str(tmp_path / "copy")
  shutil.copytree(exported, dst)
  return dst


def test_missing_directory(tmp_path):
  path = str(tmp_path / "nope")
  with pytest.raises(checkpoints.CheckpointError, match="does not exist") as e:
    checkpoints.load_inference(path)
  assert path in str(e.value)


def test_directory_with_garbage(tmp_path):
  (tmp_path / "g").mkdir()
  (tmp_path / "g" / "weights.bin").write_bytes(os.urandom(64))
  with pytest.raises(checkpoints.CheckpointError, match="marker") as e:
    checkpoints.load_inference(str(tmp_path / "g"))
  assert str(tmp_path / "g") in str(e.value)
  (tmp_path / "g" / checkpoints.MARKER).write_bytes(b"\x00garbage")
  with pytest.raises(checkpoints.CheckpointError, match="not valid JSON"):
    checkpoints.load_inference(str(tmp_path / "g"))


def test_foreign_checkpoint(exported, tmp_path):
  path = _copy(exported, tmp_path)
  with open(os.path.join(path, checkpoints.MARKER), "w") as f:
    f.write('{"format": "someone.else", "version": 1}')
  with pytest.raises(checkpoints.CheckpointError, match="does not describe"):
    checkpoints.load_inference(path)


@pytest.mark.parametrize(
  "victim", ["params/_METADATA", "params/manifest.ocdbt", "params/d", "params", "config.json"]
)
def test_checkpoint_with_missing_files(exported, tmp_path, victim):
  path = _copy(exported, tmp_path)
  target = os.path.join(path, victim)
  shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints.load_inference(path)
  assert path in str(e.value)


def test_truncated_array_data(exported, tmp_path):
  path = _copy(exported, tmp_path)
  d = os.path.join(path, "params", "d")
  for name in os.listdir(d):
    with open(os.path.join(d, name), "r+b") as f:
      f.truncate(10)
  with pytest.raises(checkpoints.CheckpointError, match="cannot restore params"):
    checkpoints.load_inference(path)


def test_training_state_round_trip(config, params, tmp_path):
  state = state_lib.SourceState(
    step=jnp.asarray(7, jnp.int32),
    params={k: params[k] for k in ("generator", "classifier", "heads")},
    opt_state=None,
    rng=jax.random.PRNGKey(5),
  )
  state = state.replace(opt_state=state_lib.source_optimizer(config).init(state.params))
  mgr = checkpoints.manager(str(tmp_path / "ckpts"))
  assert checkpoints.restore_latest(mgr, state) is None
  checkpoints.save(mgr, 7, state)
  fresh = jax.tree.map(jnp.zeros_like, state)
  restored = checkpoints.restore_latest(mgr, fresh)
  assert type(restored) is state_lib.SourceState
  assert _equal(jax.device_get(restored), jax.device_get(state))
  mgr.close()


def test_corrupt_training_checkpoint(config, params, tmp_path):
  state = {"w": jnp.ones((3,)), "step": jnp.asarray(1)}
  mgr = checkpoints.manager(str(tmp_path / "ckpts"))
  checkpoints.save(mgr, 1, state)
  mgr.close()
  shutil.rmtree(tmp_path / "ckpts" / "1" / "default" / "d")
  mgr = checkpoints.manager(str(tmp_path / "ckpts"))
  with pytest.raises(checkpoints.CheckpointError, match="cannot restore training state") as e:
    checkpoints.restore_latest(mgr, state)
  assert str(tmp_path / "ckpts" / "1") in str(e.value)


def test_export_replaces_atomically(config, params, tmp_path):
  d = tmp_path / "export"
  checkpoints.export_inference(d, params, config)
  assert checkpoints.is_exported(d)
  # A stale partial folder from a crashed export does not disturb the next one.
  (tmp_path / "export.partial").mkdir()
  (tmp_path / "export.partial" / "junk").write_text("x")
  other = jax.tree.map(lambda a: a + 1, params)
  checkpoints.export_inference(d, other, config)
  restored, _ = checkpoints.load_inference(d)
  assert _equal(restored, {k: other[k] for k in checkpoints.INFERENCE_KEYS})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
