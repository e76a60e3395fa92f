"""Training checkpoints (Orbax `CheckpointManager`) and exported inference checkpoints.

Training: `manager(dir)` keeps the last few full states; `save(mgr, step, state)` and
`restore_latest(mgr, like)` round-trip any state pytree (arrays, PRNG key, optimizer state)
bit for bit.

Inference export layout (`export_inference`):
  DIR/cac_jax_inference.json   marker: {"format": "cac_jax.inference", "version": 1}
  DIR/config.json              the full ml_collections config as JSON
  DIR/params/                  Orbax checkpoint of {"generator", "classifier"} params
  DIR/provenance.json          optional: how the params were made (stage, steps, training data
                               with "phantoms_only"), read back by `provenance`

Every failure to read a checkpoint raises `CheckpointError` naming the path and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from cac_jax import models

MARKER = "cac_jax_inference.json"
FORMAT = "cac_jax.inference"
VERSION = 1
INFERENCE_KEYS = ("generator", "classifier")
PROVENANCE = "provenance.json"


def _brief(e: Exception, limit: int = 400) -> str:
  text = f"{type(e).__name__}: {e}"
  return text if len(text) <= limit else text[:limit] + " ..."


class CheckpointError(Exception):
  """A checkpoint directory is missing, truncated, corrupt or not one of ours."""

  def __init__(self, path: str | os.PathLike, problem: str):
    self.path = os.fspath(path)
    self.problem = problem
    super().__init__(f"checkpoint {self.path!r}: {problem}")


# ---------------------------------------------------------------------------------------
# Training checkpoints.


def manager(directory: str | os.PathLike, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """A synchronous Orbax CheckpointManager in `directory` (created if needed).

  Saves are synchronous: train steps donate the state's buffers, so a save must finish
  reading them before the next step runs.
  """
  directory = os.path.abspath(os.fspath(directory))
  opts = ocp.CheckpointManagerOptions(
    max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
  )
  return ocp.CheckpointManager(directory, options=opts)


def save(mgr: ocp.CheckpointManager, step: int, state: Any) -> None:
  """Save the full `state` pytree as checkpoint `step` (overwrites nothing: steps are unique)."""
  mgr.save(int(step), args=ocp.args.StandardSave(state), force=True)
  mgr.wait_until_finished()


def _abstract(like: Any, sharding: jax.sharding.Sharding | None) -> Any:
  def one(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or getattr(x, "sharding", None))

  return jax.tree.map(one, like)


def restore_latest(
  mgr: ocp.CheckpointManager, like: Any, sharding: jax.sharding.Sharding | None = None
) -> Any | None:
  """Restore the latest checkpoint into the structure of `like`; None if there is none.

  Args:
    mgr: from `manager`.
    like: a state with the right structure, shapes and dtypes (e.g. a fresh init).
    sharding: where to place every restored array (default: like's shardings).
  """
  step = mgr.latest_step()
  if step is None:
    return None
  return restore_step(mgr, step, like, sharding)


def restore_step(
  mgr: ocp.CheckpointManager, step: int, like: Any, sharding: jax.sharding.Sharding | None = None
) -> Any:
  """Restore checkpoint `step` (one of `mgr.all_steps()`) into the structure of `like`."""
  path = os.path.join(os.fspath(mgr.directory), str(step))
  try:
    return mgr.restore(step, args=ocp.args.StandardRestore(_abstract(like, sharding)))
  except Exception as e:  # orbax/tensorstore raise many types; name the path instead.
    raise CheckpointError(path, f"cannot restore training state ({_brief(e)})") from e


# ---------------------------------------------------------------------------------------
# Inference export.


def export_inference(
  directory: str | os.PathLike,
  params: dict,
  config: ml_collections.ConfigDict,
  metadata: dict | None = None,
) -> str:
  """Write {"generator", "classifier"} params and `config` to `directory` (replaced if present).

  `metadata` (JSON-serialisable, e.g. {"stage", "steps", "training_data"}) goes to
  provenance.json, so a scan's scores can say which model, trained on what, produced them.
  Call from every process of a multi-host run (Orbax coordinates the write). Returns the
  absolute directory path.
  """
  directory = os.path.abspath(os.fspath(directory))
  missing = [k for k in INFERENCE_KEYS if k not in params]
  if missing:
    raise ValueError(f"export_inference needs params {INFERENCE_KEYS}; missing {missing}")
  params = {k: jax.device_get(params[k]) for k in INFERENCE_KEYS}
  primary = jax.process_index() == 0  # multi-host: every process calls, one writes files
  # Written complete into a sibling folder, then swapped in: an existing export is never left
  # half-replaced, and a crash leaves at most a stale `.partial` folder.
  partial = directory + ".partial"
  if primary:
    if os.path.exists(partial):
      shutil.rmtree(partial)
    os.makedirs(partial)
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:  # synchronous
    ckptr.save(os.path.join(partial, "params"), args=ocp.args.StandardSave(params))
  if primary:
    with open(os.path.join(partial, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=2))
    if metadata is not None:
      with open(os.path.join(partial, PROVENANCE), "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
    with open(os.path.join(partial, MARKER), "w") as f:  # written last: marks completion
      json.dump({"format": FORMAT, "version": VERSION, "keys": list(INFERENCE_KEYS)}, f)
    old = directory + ".old"
    if os.path.exists(directory):
      if os.path.exists(old):
        shutil.rmtree(old)
      os.rename(directory, old)
    os.rename(partial, directory)
    if os.path.exists(old):
      shutil.rmtree(old)
  return directory


def is_exported(directory: str | os.PathLike) -> bool:
  """True when `directory` holds a complete inference export (its marker exists)."""
  return os.path.isfile(os.path.join(os.fspath(directory), MARKER))


def _read_json(path: str, directory: str, what: str) -> Any:
  if not os.path.isfile(path):
    raise CheckpointError(
      directory,
      f"missing {what} file {os.path.basename(path)!r} "
      "(not an exported cac_jax inference checkpoint, or truncated)",
    )
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(
      directory, f"{what} file {os.path.basename(path)!r} is not valid JSON ({e})"
    ) from e


def load_inference(directory: str | os.PathLike) -> tuple[dict, ml_collections.ConfigDict]:
  """Read an `export_inference` directory -> ({"generator", "classifier"} params, config).

  Raises:
    CheckpointError: the directory is missing, not ours, truncated or does not match its
      own config (shapes are checked against the networks the config builds).
  """
  directory = os.path.abspath(os.fspath(directory))
  if not os.path.exists(directory):
    raise CheckpointError(directory, "does not exist")
  if not os.path.isdir(directory):
    raise CheckpointError(directory, "is not a directory")
  marker = _read_json(os.path.join(directory, MARKER), directory, "marker")
  if not isinstance(marker, dict) or marker.get("format") != FORMAT:
    raise CheckpointError(
      directory, f"marker {MARKER!r} does not describe a {FORMAT} checkpoint: {marker!r}"
    )
  if marker.get("version") != VERSION:
    raise CheckpointError(
      directory, f"unsupported version {marker.get('version')!r} (expected {VERSION})"
    )
  config = ml_collections.ConfigDict(
    _read_json(os.path.join(directory, "config.json"), directory, "config")
  )
  params_dir = os.path.join(directory, "params")
  if not os.path.isdir(params_dir):
    raise CheckpointError(directory, "missing the 'params' directory")
  try:
    shapes = jax.eval_shape(lambda: models.init_params(config, jax.random.PRNGKey(0)))
  except Exception as e:
    raise CheckpointError(
      directory, f"config.json does not describe the networks ({_brief(e)})"
    ) from e
  like = {k: shapes[k] for k in INFERENCE_KEYS}
  try:
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as ckptr:
      params = ckptr.restore(params_dir, args=ocp.args.StandardRestore(like))
  except Exception as e:
    raise CheckpointError(params_dir, f"cannot restore params ({_brief(e)})") from e
  _check_shapes(directory, params, like)
  return params, config


def content_hash(directory: str | os.PathLike) -> str:
  """SHA-256 over the relative paths and bytes of every file under `directory` (sorted), hex.

  Two exports with the same hash hold the same params, config and provenance.
  """
  directory = os.fspath(directory)
  h = hashlib.sha256()
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(root, name)
      h.update(os.path.relpath(path, directory).encode("utf-8") + b"\0")
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
  return h.hexdigest()


def provenance(
  directory: str | os.PathLike, config: ml_collections.ConfigDict | None = None
) -> dict:
  """Where an export came from, for a scan report.

  Returns {"checkpoint": absolute path, "checkpoint_sha256", "config_name" (config.name, or
  None when the config has none), "config_sha256" (of config.json), plus the export's
  provenance.json fields ("stage", "steps", "training_data", ...) when present;
  "training_data" is {"description": "not recorded"} for exports written without it.
  """
  directory = os.path.abspath(os.fspath(directory))
  out: dict[str, Any] = {"checkpoint": directory, "checkpoint_sha256": content_hash(directory)}
  out["config_name"] = config.get("name") if config is not None else None
  cfg_path = os.path.join(directory, "config.json")
  if os.path.isfile(cfg_path):
    with open(cfg_path, "rb") as f:
      out["config_sha256"] = hashlib.sha256(f.read()).hexdigest()
  meta_path = os.path.join(directory, PROVENANCE)
  meta: dict = {}
  if os.path.isfile(meta_path):
    meta = _read_json(meta_path, directory, "provenance")
  out.update(meta if isinstance(meta, dict) else {})
  out.setdefault("training_data", {"description": "not recorded", "phantoms_only": None})
  return out


def _check_shapes(directory: str, params: Any, like: Any) -> None:
  """Raises CheckpointError at the first parameter whose stored shape differs from `like`'s.

  Orbax restores arrays with their stored shapes whatever the target says, so a config.json
  edited after export (e.g. another tower width) would otherwise load and score.
  """
  got = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  want = dict(jax.tree_util.tree_flatten_with_path(like)[0])
  for path in sorted(set(got) | set(want), key=jax.tree_util.keystr):
    name = jax.tree_util.keystr(path)
    if path not in got or path not in want:
      where = "config.json" if path in want else "the stored params"
      raise CheckpointError(
        directory,
        f"parameter {name} exists only in {where}: config.json does "
        "not match the stored parameters (edited after export?)",
      )
    if tuple(got[path].shape) != tuple(want[path].shape):
      raise CheckpointError(
        directory,
        f"parameter {name} has stored shape {tuple(got[path].shape)}, but config.json "
        f"implies {tuple(want[path].shape)}: config.json does not match the stored parameters "
        "(edited after export?); use the config.json it was exported with",
      )
