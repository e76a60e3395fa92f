"""The training loop: the one frame around source training and adversarial adaptation.

Both runs share it: default data (`cac_jax.data.synthetic`), the checkpoint manager and its resume
guard, the metric writer, the logging and checkpoint cadence, stream closing and the inference
export. `source.py` and `adversarial.py` hold only the losses and the pure steps.

Compiled steps are cached per process (tests and the experiment run several loops): a step
sees only the config fields it reads (`step_config` of the `STEP_READS` beside its maker), so
the cache key is exactly what the step closes over: a new loop field never recompiles, and a
step reading a field it does not declare fails loudly instead of reusing a stale compilation.
Each run builds its optimisers once and hands them to both the state and the step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import logging
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from cac_jax import checkpoints
from cac_jax.train import adversarial, sharding, writers
from cac_jax.train import data as data_lib
from cac_jax.train import source as source_lib
from cac_jax.train import state as state_lib

logger = logging.getLogger(__name__)
# Below this median ratio |grad L_adv| / |alpha grad L_cls|, `adapt` warns that L_adv barely acted.
WEAK_ADVERSARIAL_RATIO = 0.01
_COMPILED: dict = {}


def step_config(
  config: ml_collections.ConfigDict, reads: Sequence[str]
) -> ml_collections.ConfigDict:
  """The part of `config` a step reads: whole sections ("model") or fields ("adapt.alpha").

  Optional fields absent from `config` stay absent (the step's `.get` default applies)."""
  full, out = config.to_dict(), {}
  for path in reads:
    section, _, field = path.partition(".")
    if not field:
      out[section] = full[section]
    elif field in full.get(section, {}):
      out.setdefault(section, {})[field] = full[section][field]
  return ml_collections.ConfigDict(out)


def cached_step(
  make: Callable,
  reads: Sequence[str],
  config: ml_collections.ConfigDict,
  mesh: jax.sharding.Mesh,
  batch_axis: int = 1,
  **optimizers,
) -> Callable:
  """A jitted step, reused for the same maker, step config, mesh and axis.

  `source.jit_step(make(step_config(config, reads), **optimizers), mesh, batch_axis)`;
  `optimizers` are built from the same fields.
  """
  cfg = step_config(config, reads)
  key = (f"{make.__module__}.{make.__qualname__}", cfg.to_json(), mesh, batch_axis)
  if key not in _COMPILED:
    _COMPILED[key] = source_lib.jit_step(make(cfg, **optimizers), mesh, batch_axis)
  return _COMPILED[key]


class Rate:
  """Steps per second between log lines."""

  def __init__(self, step: int):
    self.step, self.time = step, time.perf_counter()

  def __call__(self, step: int) -> float:
    now = time.perf_counter()
    rate = (step - self.step) / max(now - self.time, 1e-9)
    self.step, self.time = step, now
    return rate


def mean_metrics(history: list[dict]) -> dict[str, float]:
  """Mean of each metric over the steps of `history` that report it (on the host).

  With the blocked adaptation schedule only a block's first generator step reports critic
  metrics."""
  host = jax.device_get(history)
  keys = dict.fromkeys(k for m in host for k in m)
  return {k: float(np.mean([float(m[k]) for m in host if k in m])) for k in keys}


def _streams(data: Any, config: ml_collections.ConfigDict) -> tuple[data_lib.Streams, dict]:
  """(the loop's streams, their provenance); `data` None is `cac_jax.data.synthetic` phantom patches."""
  training_data = data_lib.describe_training_data(data, config)
  if data is None:
    from cac_jax.data import synthetic  # pylint: disable=g-import-not-at-top

    data = data_lib.prefetched(
      data_lib.as_streams(synthetic.SyntheticData(config, config.seed)), config.sampling.prefetch
    )
  return data_lib.as_streams(data), training_data


def _restore(mgr, state, mesh, workdir: str, resume: bool, what: str):
  """`state`, or the latest checkpoint's with `resume`; a workdir with checkpoints needs `resume`."""
  latest = mgr.latest_step()
  if latest is None:
    return state
  if not resume:
    raise ValueError(
      f"{workdir} already holds {what} checkpoints (latest step {latest}); "
      "pass --resume (resume=True) to continue, or use a fresh --workdir"
    )
  return checkpoints.restore_latest(mgr, state, sharding.replicated(mesh))


def _run(
  state,
  steps: range,
  body: Callable,
  *,
  what: str,
  section,
  mgr,
  writer,
  rate_key: str,
  on_log: Callable[[int, dict], None],
  after_step: Callable[[int, Any], None] | None = None,
):
  """Run `steps` steps of `body(state, step) -> (state, metrics)`.

  Mean metrics and the rate every `section.log_every` steps and at the last (`on_log`),
  checkpoints every `section.checkpoint_every` and at the last, after `after_step(done,
  state)` (an adaptation snapshot), so that a run killed between the two and resumed from its
  last checkpoint has every snapshot up to it.
  """
  total = steps.stop
  rate, history = Rate(steps.start), []
  for step in writers.progress(steps, what, total, jax.process_index() == 0):
    state, metrics = body(state, step)
    history.append(metrics)
    done = step + 1
    if done % section.log_every == 0 or done == total:
      m = mean_metrics(history)
      m[rate_key] = rate(done)
      writer.write(done, m)
      history = []
      on_log(done, m)
    if after_step is not None:  # before the checkpoint: a run resumed from it has done this too
      after_step(done, state)
    if done % section.checkpoint_every == 0 or done == total:
      checkpoints.save(mgr, done, state)
  return state


def _finish(
  writer, mgr, streams: data_lib.Streams, workdir: str, params: dict, config, info: dict
) -> None:
  writer.close()
  mgr.close()
  data_lib.close(streams)
  checkpoints.export_inference(
    os.path.join(workdir, "export"), jax.device_get(params), config, info
  )


def init_seed(config: ml_collections.ConfigDict) -> int:
  """Seed of the source network's initial parameters.

  config.source.init_seed, or config.seed when it is negative (two trainings on the same
  batches can differ only in initialisation)."""
  seed = int(config.source.get("init_seed", -1))
  return int(config.seed) if seed < 0 else seed


def train_source(
  config: ml_collections.ConfigDict,
  workdir: str,
  data: Any = None,
  resume: bool = False,
  mesh: jax.sharding.Mesh | None = None,
) -> state_lib.SourceState:
  """Train G, C and heads for `config.source.num_steps` steps; export `workdir/export`.

  Args:
    config: full config (sections model, data, sampling, source).
    workdir: checkpoints in `workdir/checkpoints`, metrics in `workdir/metrics.jsonl` and
      TensorBoard events; the inference export in `workdir/export`.
    data: labelled batches: a `Streams`/object with `.source`, a `stream(step)` callable or
      an iterator; default `cac_jax.data.synthetic.SyntheticData(config, config.seed)`.
    resume: continue from the latest checkpoint in `workdir` (exact for step-indexed data).
      Without it, a workdir that already holds checkpoints is an error.
    mesh: device mesh (default: all devices).
  Returns:
    The final state.
  """
  mesh = mesh or sharding.data_mesh()
  if data is not None and not hasattr(data, "source"):
    data = data_lib.Streams(source=data)
  streams, training_data = _streams(data, config)
  if streams.source is None:
    raise ValueError("train_source needs a labelled source stream (data.source)")
  cfg = config.source
  tx = state_lib.source_optimizer(config)
  mgr = checkpoints.manager(os.path.join(workdir, "checkpoints"))
  state = _restore(
    mgr,
    sharding.replicate(state_lib.init_source_state(config, init_seed(config), tx=tx), mesh),
    mesh,
    workdir,
    resume,
    "source",
  )
  start = int(state.step)
  if start:
    logger.info("resumed source training at step %d", start)
  step_fn = cached_step(source_lib.make_source_step, source_lib.STEP_READS, config, mesh, tx=tx)
  writer = writers.MetricWriter(
    workdir, enabled=jax.process_index() == 0, keep=lambda r: r.get("step", 0) <= start
  )

  def log(done, m):
    logger.info(
      "source step %d/%d: loss %.4f acc %.3f (%.2f steps/s, %s)",
      done,
      cfg.num_steps,
      m["loss"],
      m["accuracy"],
      m["steps_per_second"],
      eta(cfg.num_steps - done, m["steps_per_second"]),
    )

  logger.info("compiling the source training step (the first step waits for XLA)…")
  state = _run(
    state,
    range(start, cfg.num_steps),
    lambda s, step: step_fn(s, sharding.shard_batch(streams.source(step), mesh)),
    what="source",
    section=cfg,
    mgr=mgr,
    writer=writer,
    rate_key="steps_per_second",
    on_log=log,
  )
  _finish(
    writer,
    mgr,
    streams,
    workdir,
    state.params,
    config,
    {"stage": "source", "steps": int(state.step), "training_data": training_data},
  )
  return state


def eta(remaining: float, rate: float) -> str:
  """'ETA 3 min 20 s' for `remaining` units at `rate` units per second ('ETA n/a': no rate)."""
  if not (rate > 0 and np.isfinite(rate)):
    return "ETA n/a"
  minutes, seconds = divmod(int(round(remaining / rate)), 60)
  return f"ETA {minutes} min {seconds:02d} s" if minutes else f"ETA {seconds} s"


def critic_steps_at(config: ml_collections.ConfigDict, generator_step: int) -> int:
  """Critic updates per generator update at generator update `generator_step` (0-based)."""
  a = config.adapt
  if a.critic_steps_later > 0 and generator_step >= a.change_at:
    return a.critic_steps_later
  return a.critic_steps


SCHEDULES = ("interleaved", "blocked")


def critic_updates_before(config: ml_collections.ConfigDict, generator_step: int) -> int:
  """Critic updates run just before generator update `generator_step` (0-based).

  "interleaved": `critic_steps_at` before every generator update. "blocked" (the reference's
  loop, trainGAN_adv_cls_MMD.py:203-261): blocks of `adapt.block` generator updates, each
  after `critic_steps_at x block` critic updates, so that G takes `block` steps against a
  fixed critic (the reference: d_iters 20 x batch_size 10 = 200 critic, then 10 G updates).
  Both give the same number of critic updates over whole blocks.
  """
  a = config.adapt
  schedule = a.get("schedule", "interleaved")
  if schedule not in SCHEDULES:
    raise ValueError(f"adapt.schedule {schedule!r}: expected one of {SCHEDULES}")
  if schedule == "interleaved":
    return critic_steps_at(config, generator_step)
  block = int(a.block)
  if block < 1:
    raise ValueError(f"adapt.block must be >= 1 for the blocked schedule; got {block}")
  return critic_steps_at(config, generator_step) * block if generator_step % block == 0 else 0


def snapshot_due(config: ml_collections.ConfigDict, generator_steps_done: int) -> bool:
  """Whether G is exported as a snapshot after this many generator steps.

  Every `adapt.snapshot_every` steps (0: never) and after the last one."""
  every = int(config.adapt.get("snapshot_every", 0))
  n = int(config.adapt.num_generator_steps)
  return every > 0 and (generator_steps_done % every == 0 or generator_steps_done == n)


def snapshot_dir(workdir: str, generator_steps_done: int) -> str:
  """`workdir/snapshots/step_NNNNNN`: an inference export of G (and the frozen C) after that step."""
  return os.path.join(workdir, "snapshots", f"step_{int(generator_steps_done):06d}")


def snapshots(workdir: str) -> dict[int, str]:
  """{generator steps done: export dir} of the complete snapshots in `workdir`, by step."""
  root = os.path.join(workdir, "snapshots")
  if not os.path.isdir(root):
    return {}
  out = {}
  for name in sorted(os.listdir(root)):
    if (
      name.startswith("step_")
      and name[5:].isdigit()
      and checkpoints.is_exported(os.path.join(root, name))
    ):
      out[int(name[5:])] = os.path.join(root, name)
  return out


def adapt(
  config: ml_collections.ConfigDict,
  workdir: str,
  source_params: dict,
  data: Any = None,
  resume: bool = False,
  mesh: jax.sharding.Mesh | None = None,
) -> state_lib.AdaptState:
  """Adapt G to the target domain; export {"generator", "classifier"} to `workdir/export`.

  Args:
    config: full config (section adapt for the schedule).
    workdir: checkpoints, metrics.jsonl, TensorBoard events, the export and, with
      `adapt.snapshot_every`, inference snapshots of G (`snapshots`) for checkpoint selection.
    source_params: {"generator", "classifier"} of the source model (`load_inference`).
    data: `Streams` (or an object with source, source_critic, target_critic and
      target_generator streams); default `cac_jax.data.synthetic.SyntheticData(config, seed)`.
      Critic update i uses source_critic(i), target_critic(i); generator update j uses
      source(j) and target_generator(j).
    resume: continue from the latest checkpoint in `workdir/checkpoints`.
    mesh: device mesh (default: all devices).
  """
  a = config.adapt
  mesh = mesh or sharding.data_mesh()
  streams, training_data = _streams(data, config)
  missing = [k for k in data_lib.STREAM_NAMES if getattr(streams, k) is None]
  if missing:
    raise ValueError(f"adapt needs data streams {missing}")
  critic_tx, generator_tx = (
    state_lib.critic_optimizer(config),
    state_lib.generator_optimizer(config),
  )
  mgr = checkpoints.manager(os.path.join(workdir, "checkpoints"))
  state = sharding.replicate(
    state_lib.init_adapt_state(
      config, source_params, critic_tx=critic_tx, generator_tx=generator_tx
    ),
    mesh,
  )
  state = _restore(mgr, state, mesh, workdir, resume, "adaptation")
  if int(state.step) or int(state.critic_step):
    logger.info(
      "resumed adaptation at generator step %d (critic step %d)",
      int(state.step),
      int(state.critic_step),
    )
  critic_fn = cached_step(
    adversarial.make_critic_steps,
    adversarial.CRITIC_STEP_READS,
    config,
    mesh,
    batch_axis=2,
    tx=critic_tx,
  )
  generator_fn = cached_step(
    adversarial.make_generator_step, adversarial.GENERATOR_STEP_READS, config, mesh, tx=generator_tx
  )
  writer = writers.MetricWriter(
    workdir, enabled=jax.process_index() == 0, keep=writers.resumed_adaptation(state)
  )

  def critic_round(state, n):
    first = int(state.critic_step)
    src = [streams.source_critic(first + i)["views"] for i in range(n)]
    tgt = [streams.target_critic(first + i)["views"] for i in range(n)]
    batches = {"source_views": np.stack(src), "target_views": np.stack(tgt)}
    return critic_fn(state, sharding.shard_batch(batches, mesh, batch_axis=2))

  # Critic pre-training, in chunks of `critic_steps` so the compiled scan is reused.
  if int(state.step) == 0 and int(state.critic_step) < a.critic_pretrain_steps:
    logger.info(
      "compiling the critic step, then %d critic pre-training steps…", a.critic_pretrain_steps
    )
    chunk = max(a.critic_steps, 1)
    rate, next_log = Rate(int(state.critic_step)), int(state.critic_step) + a.log_every * chunk
    while (done := int(state.critic_step)) < a.critic_pretrain_steps:
      state, m = critic_round(state, min(chunk, a.critic_pretrain_steps - done))
      m = {f"pretrain/{k}": v for k, v in jax.device_get(m).items()}
      writer.write(int(state.critic_step), m)
      if int(state.critic_step) >= next_log:
        next_log += a.log_every * chunk
        per_s = rate(int(state.critic_step))
        logger.info(
          "critic pre-training step %d/%d: W %.4f (%.1f critic steps/s, %s)",
          int(state.critic_step),
          a.critic_pretrain_steps,
          m["pretrain/wasserstein"],
          per_s,
          eta(a.critic_pretrain_steps - int(state.critic_step), per_s),
        )
    logger.info("critic pre-training done: W %.4f", m["pretrain/wasserstein"])
    checkpoints.save(mgr, 0, state)

  def body(state, j):
    n, per_round = critic_updates_before(config, j), critic_steps_at(config, j)
    metrics = {}
    while n > 0:  # in rounds of `critic_steps_at`, so that one compiled scan serves both schedules
      state, metrics = critic_round(state, min(n, per_round))
      n -= per_round
    src, tgt = streams.source(j), streams.target_generator(j)
    batch = {
      "source_views": src["views"],
      "source_labels": src["labels"],
      "target_views": tgt["views"],
    }
    state, gm = generator_fn(state, sharding.shard_batch(batch, mesh))
    return state, {**metrics, **gm}

  grad_ratio = []  # |grad L_adv| / |alpha grad L_cls| per log interval

  def log(done, m):
    if m["grad_norm_classification"] > 0:
      grad_ratio.append(m["grad_norm_adversarial"] / m["grad_norm_classification"])
    logger.info(
      "adapt step %d/%d: W %.4f, L_G adv %.4f, source CE %.4f, |grad| adv %.2g / alpha*cls %.2g "
      "(%.2f G steps/s, %s)",
      done,
      a.num_generator_steps,
      m.get("wasserstein", float("nan")),
      m["generator_adversarial_loss"],
      m["source_ce"],
      m["grad_norm_adversarial"],
      m["grad_norm_classification"],
      m["generator_steps_per_second"],
      eta(a.num_generator_steps - done, m["generator_steps_per_second"]),
    )

  def snapshot(done, state):
    if snapshot_due(config, done):
      checkpoints.export_inference(
        snapshot_dir(workdir, done),
        jax.device_get({"generator": state.generator, "classifier": state.classifier}),
        config,
        {"stage": "adapted", "steps": done, "training_data": training_data},
      )

  logger.info("compiling the generator step (the first step waits for XLA)…")
  state = _run(
    state,
    range(int(state.step), a.num_generator_steps),
    body,
    what="adapt",
    section=a,
    mgr=mgr,
    writer=writer,
    rate_key="generator_steps_per_second",
    on_log=log,
    after_step=snapshot,
  )
  if grad_ratio and float(np.median(grad_ratio)) < WEAK_ADVERSARIAL_RATIO:
    logger.warning(
      "L_adv barely moved G: its gradient norm was %.2g x that of alpha * L_cls (median over "
      "the run, alpha = %g), so this adaptation was mostly fine-tuning on the labelled source. "
      "The balance depends on the critic's output scale (clip, architecture); a smaller alpha "
      "gives L_adv more weight.",
      float(np.median(grad_ratio)),
      float(a.alpha),
    )
  _finish(
    writer,
    mgr,
    streams,
    workdir,
    {"generator": state.generator, "classifier": state.classifier},
    config,
    {"stage": "adapted", "steps": int(state.step), "training_data": training_data},
  )
  return state
