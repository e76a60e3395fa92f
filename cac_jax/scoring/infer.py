"""Fast whole-scan inference: dense view towers over candidate ROIs, classifier at candidates.

The network is fully convolutional per view: a voxel's axial features are the axial tower's
output at (y, x) of the axial slice z padded by RF//2 (RF = receptive field) with the pad
value (normalised -1000 HU); likewise coronal (z, x) at fixed y and sagittal (z, y) at fixed
x. The classifier C is a per-voxel MLP on the 96 concatenated features. So instead of one
(3, P, P) patch stack per voxel we:

  1. for each orientation, take only the slices that contain candidates, and in each such
     slice only the bounding box of its candidates plus the RF//2 margin;
  2. pad each box to a bucketed size (multiples of `bucket`) so jit compiles a bounded number
     of shapes, and batch slices of equal bucket into one call (batch sizes are powers of two,
     capped by `slab` slices and by a pixel budget so memory stays bounded);
  3. gather each view's features at the candidate voxels only -> an (N, 96) array;
  4. run C on the (N, 96) candidate features in fixed-size chunks.

Nothing volume-sized with feature channels is ever held: memory is the HU volume, one batch of
feature maps and the (N, 96) candidate features. With several local devices, each batch of
slices is sharded over a 1-D mesh (params replicated).

Compiled towers and the last ROI plan live in an `InferenceCache` that the caller may own
(`cache=`); without one, the module's `DEFAULT_CACHE` is used. docs/performance.md has the
measurements (launch/benchmark_infer.py).

`predict_naive` is the straightforward reference (all slices of all orientations, a float16
(z, y, x, 96) feature volume, C on every voxel, masked to candidates) for tests and the
benchmark (`launch/benchmark_infer.py`).

Shapes: volumes are (z, y, x) numpy arrays in HU; `candidates` is a bool (z, y, x) mask.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cac_jax import models, xla_options
from cac_jax.data import preprocess
from cac_jax.data.patches import PAD_HU
from cac_jax.scoring import roi_plan

CONV_IMPLS = ("auto", "xla", "im2col", "shift3")


@dataclasses.dataclass
class InferenceCache:
  """What scoring keeps between calls; one per caller that wants its own (tests, servers).

  Attributes:
    jitted: {key: jitted tower or classifier}, keyed by the config fields that shape it,
      the conv formulation and the devices. Each jitted function compiles once per input shape.
    trace_counts: {"tower", "classifier"}: times each kind of function was traced (= shapes
      compiled through this cache).
    plan_key, plan: the last `roi_plan.plan_rois` arguments and result (scoring one scan with several
      models plans it once).
  """

  jitted: dict = dataclasses.field(default_factory=dict)
  trace_counts: dict = dataclasses.field(default_factory=lambda: {"tower": 0, "classifier": 0})
  plan_key: tuple | None = None
  plan: tuple | None = None

  def clear(self) -> None:
    """Forget the jitted functions and the plan (trace counts keep counting)."""
    self.jitted.clear()
    self.plan_key = self.plan = None


DEFAULT_CACHE = InferenceCache()


# ----------------------------------------------------------------------------- helpers
def _normalize(hu: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """HU -> network input via `preprocess.normalize_hu` (the one place for it); float32."""
  return np.asarray(preprocess.normalize_hu(hu, config.data), dtype=np.float32)


def pad_value(config: ml_collections.ConfigDict) -> float:
  """Normalised value of -1000 HU (air), used to pad outside the volume."""
  return float(_normalize(np.array([PAD_HU], np.float32), config)[0])


def _tower_layers(config: ml_collections.ConfigDict) -> list[tuple[str, int]]:
  dil = tuple(config.model.dilations)
  return [(f"conv{i}_d{d}", d) for i, d in enumerate(dil)] + [(f"conv{len(dil)}", 1)]


def resolve_conv_impl(
  config: ml_collections.ConfigDict, impl: str = "auto", platform: str | None = None
) -> str:
  """The conv formulation `impl` names; "auto" picks one for the platform.

  "auto": "xla" (lax conv, as models.ViewTower), except on CPU with XLA's default options
  (`CAC_JAX_XLA_DEFAULTS=1`, YNNPACK convs), where "shift3" is faster for towers >= 16 wide.

  With `xla_options` (the default on CPU) XLA's own convolution is several times faster than
  the matmul formulations, which it lowers to slower dots (docs/performance.md).
  """
  if impl == "auto":
    if (
      xla_options.compiler_options(platform) is None
      and (platform or jax.default_backend()) == "cpu"
    ):
      return "shift3" if config.model.tower_width >= 16 else "xla"
    return "xla"
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv impl {impl!r}; expected one of {CONV_IMPLS}")
  return impl


def _tower_apply(config: ml_collections.ConfigDict, impl: str, tp, x: jax.Array) -> jax.Array:
  """One view tower on (B, H, W, 1) -> (B, H - RF + 1, W - RF + 1, F), same maths as ViewTower.

  impl: "xla" (flax ViewTower, lax conv), "im2col" (each 3x3 conv as one (., 9C) x (9C, C')
  matmul) or "shift3" (three (., 3C) x (3C, C') matmuls on column-shifted copies).
  """
  if impl == "xla":
    tower = models.ViewTower(
      config.model.tower_width, config.model.tower_features, tuple(config.model.dilations)
    )
    return tower.apply({"params": tp}, x)
  for name, d in _tower_layers(config):
    k, b = tp[name]["kernel"], tp[name]["bias"]  # (3, 3, Cin, Cout), (Cout,)
    _, h, w, c = x.shape
    ho, wo = h - 2 * d, w - 2 * d
    if impl == "im2col" or c == 1:
      cols = jnp.concatenate(
        [x[:, i * d : i * d + ho, j * d : j * d + wo, :] for i in range(3) for j in range(3)], -1
      )
      y = cols @ k.reshape(9 * c, -1)
    elif impl == "shift3":
      cols = jnp.concatenate(
        [x[:, :, j * d : j * d + wo, :] for j in range(3)], -1
      )  # (B, H, wo, 3C)
      y = sum(cols[:, i * d : i * d + ho] @ k[i].reshape(3 * c, -1) for i in range(3))
    else:
      raise ValueError(f"unknown conv impl {impl!r}; expected one of {CONV_IMPLS}")
    x = jax.nn.elu(y + b)
  k, b = tp["features"]["kernel"], tp["features"]["bias"]
  return jax.nn.elu(x @ k[0, 0] + b)


def _mesh(devices: Sequence[jax.Device] | None):
  if devices is None or len(devices) <= 1:
    return None
  return jax.sharding.Mesh(np.asarray(list(devices)), ("batch",))


def _platform(devices: Sequence[jax.Device] | None) -> str:
  return (devices or jax.devices())[0].platform


def _tower_fn(
  config: ml_collections.ConfigDict,
  impl: str,
  devices: Sequence[jax.Device] | None,
  cache: InferenceCache,
):
  """Jitted (tower params, (B, H, W, 1)) -> features; batch sharded over `devices` if several."""
  key = (
    "tower",
    tuple(config.model.dilations),
    config.model.tower_width,
    config.model.tower_features,
    impl,
    None if devices is None else tuple(devices),
  )
  if key not in cache.jitted:

    def fn(tp, x):
      cache.trace_counts["tower"] += 1
      return _tower_apply(config, impl, tp, x)

    mesh = _mesh(devices)
    if mesh is None:
      cache.jitted[key] = xla_options.jit(fn, _platform(devices))
    else:
      from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
      from jax.sharding import PartitionSpec as P

      batch = NamedSharding(mesh, P("batch"))
      cache.jitted[key] = xla_options.jit(
        fn, _platform(devices), in_shardings=(NamedSharding(mesh, P()), batch), out_shardings=batch
      )
  return cache.jitted[key]


def _classifier_fn(config: ml_collections.ConfigDict, cache: InferenceCache):
  m = config.model
  key = ("classifier", m.classifier_hidden, m.num_classes)
  if key not in cache.jitted:
    clf = models.Classifier(m.classifier_hidden, m.num_classes, m.dropout)

    def fn(cp, feats):
      cache.trace_counts["classifier"] += 1
      return clf.apply({"params": cp}, feats.astype(jnp.float32), deterministic=True)

    cache.jitted[key] = xla_options.jit(fn)
  return cache.jitted[key]


def _classify(params, config, feats: np.ndarray, chunk: int, cache: InferenceCache) -> np.ndarray:
  """C on (N, 96) features in chunks padded to a power-of-two size -> (N, num_classes) f32."""
  n = feats.shape[0]
  out = np.zeros((n, config.model.num_classes), np.float32)
  if n == 0:
    return out
  fn = _classifier_fn(config, cache)
  for s in range(0, n, chunk):
    part = feats[s : s + chunk]
    size = max(256, 1 << (part.shape[0] - 1).bit_length()) if part.shape[0] < chunk else chunk
    if size != part.shape[0]:
      part = np.concatenate([part, np.zeros((size - part.shape[0],) + part.shape[1:], part.dtype)])
    out[s : s + chunk] = np.asarray(fn(params["classifier"], part))[: min(chunk, n - s)]
  return out


def _crop(vol_t: np.ndarray, s: int, r0: int, c0: int, h: int, w: int, pad: float) -> np.ndarray:
  """Slice `s` of a (S, R, C) view, rows r0..r0+h-1, cols c0..c0+w-1; pad outside -> (h, w)."""
  out = np.full((h, w), pad, np.float32)
  _, nr, nc = vol_t.shape
  ra, rb = max(r0, 0), min(r0 + h, nr)
  ca, cb = max(c0, 0), min(c0 + w, nc)
  if ra < rb and ca < cb:
    out[ra - r0 : rb - r0, ca - c0 : cb - c0] = vol_t[s, ra:rb, ca:cb]
  return out


def _batch_sizes(n: int, max_batch: int, multiple: int) -> list[int]:
  """Split n slices into calls of size multiple * 2^k <= max_batch (last one padded)."""
  allowed = []
  b = multiple
  while b <= max(max_batch, multiple):
    allowed.append(b)
    b *= 2
  sizes = []
  while n > 0:
    fit = [a for a in allowed if a <= n]
    b = fit[-1] if fit else allowed[0]
    sizes.append(b)
    n -= b
  return sizes


# ----------------------------------------------------------------------------- ROI inference
@dataclasses.dataclass(frozen=True)
class CandidatePredictions:
  """Network outputs at candidate voxels.

  Attributes:
    coords: int (N, 3) candidate voxel indices (z, y, x), in `np.argwhere` (C) order.
    logits: float32 (N, num_classes).
    shape: (z, y, x) of the scan.
    stats: timings (s) and work counters of the run.
  """

  coords: np.ndarray
  logits: np.ndarray
  shape: tuple[int, int, int]
  stats: dict = dataclasses.field(default_factory=dict)

  @property
  def classes(self) -> np.ndarray:
    """int32 (N,) argmax classes."""
    return (
      np.argmax(self.logits, axis=-1).astype(np.int32)
      if len(self.logits)
      else np.zeros((0,), np.int32)
    )

  @property
  def probabilities(self) -> np.ndarray:
    """float32 (N, num_classes) softmax."""
    z = self.logits - self.logits.max(axis=-1, keepdims=True) if len(self.logits) else self.logits
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32) if len(e) else e

  def class_volume(self) -> np.ndarray:
    """int32 (z, y, x): classes at candidates, 0 elsewhere."""
    out = np.zeros(self.shape, np.int32)
    if len(self.coords):
      out[tuple(self.coords.T)] = self.classes
    return out

  def probability_volume(self, dtype=np.float16) -> np.ndarray:
    """(z, y, x, num_classes) probabilities at candidates, 0 elsewhere (class 0 prob 1 off-candidate)."""
    k = self.logits.shape[-1]
    out = np.zeros(self.shape + (k,), dtype)
    out[..., 0] = 1
    if len(self.coords):
      out[tuple(self.coords.T)] = self.probabilities.astype(dtype)
    return out


def _check_inputs(hu: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  hu = np.asarray(hu)
  candidates = np.asarray(candidates).astype(bool)
  if hu.ndim != 3:
    raise ValueError(f"hu must be a (z, y, x) volume; got shape {hu.shape}")
  if candidates.shape != hu.shape:
    raise ValueError(f"candidates shape {candidates.shape} differs from hu shape {hu.shape}")
  return hu, candidates


def predict_candidates(
  params: dict,
  config: ml_collections.ConfigDict,
  hu: np.ndarray,
  candidates: np.ndarray,
  **kwargs,
) -> CandidatePredictions:
  """Logits at candidate voxels, computing tower features only in candidate ROIs.

  Args:
    params: {"generator": ..., "classifier": ...} (as `models.init_params`; extra keys ignored).
    config: the model's config (model and data sections).
    hu: (z, y, x) HU volume at the working spacing.
    candidates: bool (z, y, x) voxels to classify.
    **kwargs: the options of `predict_candidates_many`.

  Returns:
    CandidatePredictions with (N, 3) coords and (N, num_classes) logits.
  """
  return predict_candidates_many([params], config, hu, candidates, **kwargs)[0]


def predict_candidates_many(
  params_list: Sequence[dict],
  config: ml_collections.ConfigDict,
  hu: np.ndarray,
  candidates: np.ndarray,
  *,
  slab: int | None = None,
  devices: Sequence[jax.Device] | None = None,
  bucket: int = 16,
  max_shapes: int = 4,
  min_gain: float = 0.05,
  max_pixels: int = 1 << 20,
  conv_impl: str = "auto",
  split: bool = True,
  classifier_chunk: int = 16384,
  cache: InferenceCache | None = None,
) -> list[CandidatePredictions]:
  """`predict_candidates` for several models of one architecture (`config.model`) on one scan.

  The ROI plan and each ROI's input crop are made once and fed to every model's towers in
  turn, so scoring a scan with k models costs k times the tower work but only once the
  planning, cropping and gathering. Each model's logits are those `predict_candidates` gives
  it alone (same ROIs, same jitted towers).

  Args:
    params_list: per model, {"generator": ..., "classifier": ...} (as `models.init_params`;
      extra keys ignored).
    config: the models' config (model and data sections).
    hu: (z, y, x) HU volume at the working spacing.
    candidates: bool (z, y, x) voxels to classify.
    slab: max slices per device call. Default: one per device on CPU (batching slices does
      not speed up XLA's CPU convs and multiplies compiled shapes), else
      `config.scoring.slab_slices`.
    devices: jax devices to shard each batch of slices over (1-D mesh; params replicated).
      None or one device: default placement.
    bucket: ROI sizes are rounded up to a ladder of multiples of this (`roi_plan.bucket_ladder`).
    max_shapes: at most this many ROI shapes (= tower compiles per batch size) per scan,
      chosen by `roi_plan.choose_shapes` to minimise padded pixels.
    min_gain: a further shape is added only if it saves this fraction of the tower pixels.
    split: allow several boxes per slice (`roi_plan.split_boxes`) instead of one bounding box.
    max_pixels: cap on padded input pixels per call (bounds activation memory); a single
      larger slice still runs alone.
    conv_impl: "auto", "xla" (lax conv, as models.ViewTower), "im2col" or "shift3" (convs as
      matmuls); see `resolve_conv_impl`. All give the same logits to float32 rounding.
    classifier_chunk: candidates per classifier call.
    cache: where jitted towers and the ROI plan are kept between calls (default
      `DEFAULT_CACHE`, shared by every caller in the process).

  Returns:
    per model, CandidatePredictions with (N, 3) coords and (N, num_classes) logits; the
    stats (timings, work counters) cover all models together.
  """
  cache = DEFAULT_CACHE if cache is None else cache
  hu, candidates = _check_inputs(hu, candidates)
  t_start = time.perf_counter()
  devices = list(devices) if devices is not None else None
  ndev = len(devices) if devices else 1
  if slab is None:
    platform = (devices or jax.devices())[0].platform
    slab = ndev if platform == "cpu" else int(config.scoring.get("slab_slices", 16))
  half = models.receptive_field(config.model.dilations) // 2
  nf = config.model.tower_features
  coords = np.argwhere(candidates)
  n = coords.shape[0]
  stats = {"candidates": int(n), "tower_calls": 0, "tower_pixels": 0, "slices": {}}
  if n == 0:
    empty = np.zeros((0, config.model.num_classes), np.float32)
    return [CandidatePredictions(coords, empty, hu.shape, stats) for _ in params_list]

  vol = _normalize(hu, config)
  pad = pad_value(config)
  # Per model, each view's features in its own (N, nf) block (contiguous rows to scatter
  # into); concatenated to (N, 3 nf) in view order for the classifier.
  feats = [np.zeros((3, n, nf), np.float32) for _ in params_list]
  tower = _tower_fn(
    config, resolve_conv_impl(config, conv_impl, _platform(devices)), devices, cache
  )
  if devices and ndev > 1:
    from jax.sharding import NamedSharding  # pylint: disable=g-import-not-at-top
    from jax.sharding import PartitionSpec as P

    place = NamedSharding(_mesh(devices), P())  # replicated
  else:
    place = devices[0] if devices else None
  gparams = [jax.device_put(p["generator"], place) for p in params_list]  # once, not per call

  rois, shapes, assign, n_slices = roi_plan.plan_rois(
    coords, half, split=split, bucket=bucket, max_shapes=max_shapes, min_gain=min_gain, cache=cache
  )
  stats["slices"] = dict(n_slices)
  stats["rois"] = len(rois)
  stats["shapes"] = [tuple(int(v) for v in sh) for sh in shapes]

  pending = None  # (device results per model, rois) of the call in flight; gathered after the next

  def gather(p):
    # Every candidate of the call's ROIs (one view) at once: its ROI in the batch and its row
    # and column in that ROI's output, computed once for all models.
    outs, items = p
    v_i = items[0][0]
    sizes = [len(it[4]) for it in items]
    idx = np.concatenate([it[4] for it in items])
    k = np.repeat(np.arange(len(items)), sizes)
    c = coords[idx][:, roi_plan.PERMS[models.VIEWS[v_i]]]
    r = c[:, 1] - np.repeat([it[2] for it in items], sizes)
    q = c[:, 2] - np.repeat([it[3] for it in items], sizes)
    for f, out in zip(feats, outs):
      out = np.asarray(out)
      f[v_i][idx] = out.reshape(-1, nf)[(k * out.shape[1] + r) * out.shape[2] + q]

  vols_t = [np.transpose(vol, roi_plan.PERMS[v]) for v in models.VIEWS]
  for sh_i, (hb, wb) in enumerate(shapes):
    hin, win = int(hb) + 2 * half, int(wb) + 2 * half
    max_batch = max(ndev, min(slab, max_pixels // (hin * win)))
    for v_i, view in enumerate(
      models.VIEWS
    ):  # one call holds slices of one view (its tower's params)
      items = [r for r, a in zip(rois, assign) if a == sh_i and r[0] == v_i]
      pos = 0
      for b in _batch_sizes(len(items), max_batch, ndev):
        chunk = items[pos : pos + b]
        pos += b
        x = np.full((b, hin, win, 1), pad, np.float32)
        for k, (_, s, r0, c0, _, _, _) in enumerate(chunk):
          x[k, :, :, 0] = _crop(vols_t[v_i], s, r0 - half, c0 - half, hin, win, pad)
        outs = [tower(g[f"{view}_tower"], x) for g in gparams]
        stats["tower_calls"] += len(outs)
        stats["tower_pixels"] += len(outs) * b * hin * win
        if pending is not None:
          gather(pending)
        pending = (outs, chunk)
  if pending is not None:
    gather(pending)
  t_towers = time.perf_counter()
  logits = [
    _classify(p, config, np.concatenate(f, axis=1), classifier_chunk, cache)
    for p, f in zip(params_list, feats)
  ]
  t_end = time.perf_counter()
  stats.update(towers_s=t_towers - t_start, classifier_s=t_end - t_towers, total_s=t_end - t_start)
  return [CandidatePredictions(coords, lg, hu.shape, stats) for lg in logits]


def predict_classes(params: dict, config, hu: np.ndarray, candidates: np.ndarray, **kwargs):
  """int32 (z, y, x) classes 0..6 at candidate voxels (argmax of logits), 0 elsewhere.

  See `predict_candidates` for the arguments; `kwargs` are its options.
  """
  return predict_candidates(params, config, hu, candidates, **kwargs).class_volume()


def predict_probabilities(
  params: dict, config: ml_collections.ConfigDict, hu: np.ndarray, candidates: np.ndarray, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
  """((N, 3) candidate coords (z, y, x), (N, num_classes) float32 softmax probabilities)."""
  pred = predict_candidates(params, config, hu, candidates, **kwargs)
  return pred.coords, pred.probabilities


# ----------------------------------------------------------------------------- naive reference
def predict_naive(
  params: dict,
  config: ml_collections.ConfigDict,
  hu: np.ndarray,
  candidates: np.ndarray,
  *,
  slab: int | None = None,
  slices: dict | None = None,
  classifier_chunk: int = 1 << 16,
  return_stats: bool = False,
  feature_dtype=np.float16,
  cache: InferenceCache | None = None,
):
  """Naive full-volume reference: classes of the candidates from every slice's features.

  Every slice of every orientation, padded whole, goes through its tower (lax conv, as
  `models.ViewTower`); features stored in a `feature_dtype` (z, y, x, 96)
  volume (float16 as the reference implementation; float32 gives labels that match
  `predict_classes` exactly, float16 can flip near-tied argmaxes); C on every voxel; classes
  masked to candidates.

  Args:
    slab: slices per tower call (default `config.scoring.slab_slices`).
    slices: optional {view: sequence of slice indices} restricting the tower work to those
      slices (for timing extrapolation in the benchmark; classes are only meaningful at
      voxels whose three slices were all computed). Default: all slices.
    return_stats: also return a dict of timings and slice counts.
    cache: where the jitted tower and classifier are kept (default `DEFAULT_CACHE`).

  Returns:
    int32 (z, y, x) classes at candidates, 0 elsewhere (and stats if `return_stats`).
  """
  cache = DEFAULT_CACHE if cache is None else cache
  hu, candidates = _check_inputs(hu, candidates)
  t0 = time.perf_counter()
  slab = int(slab or config.scoring.get("slab_slices", 16))
  half = models.receptive_field(config.model.dilations) // 2
  nf = config.model.tower_features
  vol = _normalize(hu, config)
  padded = np.pad(vol, half, mode="constant", constant_values=pad_value(config))
  feat = np.zeros(hu.shape + (3 * nf,), feature_dtype)
  tower = _tower_fn(config, "xla", None, cache)
  stats = {"slices_computed": {}, "slices_total": {}, "view_s": {}}
  for v_i, view in enumerate(models.VIEWS):
    tv = time.perf_counter()
    perm = roi_plan.PERMS[view]
    pv = np.transpose(padded, perm)
    fv = np.transpose(feat, perm + (3,))
    todo = (
      np.arange(fv.shape[0])
      if slices is None or view not in slices
      else np.asarray(slices[view], int)
    )
    stats["slices_computed"][view] = len(todo)
    stats["slices_total"][view] = fv.shape[0]
    tp = params["generator"][f"{view}_tower"]
    for s in range(0, len(todo), slab):
      idx = todo[s : s + slab]
      x = np.ascontiguousarray(pv[idx + half])[..., None]
      out = np.asarray(tower(tp, x))
      fv[idx, :, :, v_i * nf : (v_i + 1) * nf] = out.astype(feature_dtype)
    stats["view_s"][view] = time.perf_counter() - tv
  t1 = time.perf_counter()
  flat = feat.reshape(-1, 3 * nf)
  classes = np.zeros(flat.shape[0], np.int32)
  fn = _classifier_fn(config, cache)
  for s in range(0, flat.shape[0], classifier_chunk):
    part = flat[s : s + classifier_chunk]
    m = part.shape[0]
    if m < classifier_chunk:
      part = np.concatenate([part, np.zeros((classifier_chunk - m, part.shape[1]), part.dtype)])
    classes[s : s + m] = np.asarray(jnp.argmax(fn(params["classifier"], part), axis=-1))[:m]
  classes = np.where(candidates, classes.reshape(hu.shape), 0).astype(np.int32)
  t2 = time.perf_counter()
  if return_stats:
    stats.update(towers_s=t1 - t0, classifier_s=t2 - t1, total_s=t2 - t0)
    return classes, stats
  return classes
