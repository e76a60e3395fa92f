"""The networks: generator G, classifier C, deep-supervision heads and the critic D.

G is three view towers; D is the Wasserstein critic. All are pure Flax modules: params in,
arrays out.

Shapes (paper configuration): a sample is three orthogonal 155x155 patches centred on one
voxel, stacked as (3, B, 155, 155, 1) in view order (axial, coronal, sagittal). Each tower
maps its (B, 155, 155, 1) view to (B, 25, 25, 32); G concatenates the three to
(B, 25, 25, 96). The centre position (12, 12) is where the three views meet: the classifier
applied there gives the voxel's 7 class logits. Intensities are normalised HU
(see `cac_jax.data.preprocess.normalize_hu`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cac_jax import dilated_conv

VIEWS = ("axial", "coronal", "sagittal")


def receptive_field(dilations: Sequence[int]) -> int:
  """Receptive field (pixels) of a tower: 3x3 convs with `dilations`, one more 3x3, a 1x1."""
  return 1 + 2 * (sum(dilations) + 1)


def patch_size(config: ml_collections.ConfigDict) -> int:
  """Side (pixels) of each view patch: receptive field + output window - 1."""
  return receptive_field(config.model.dilations) + config.data.output_size - 1


class ViewTower(nn.Module):
  """One view: VALID 3x3 convs with `dilations`, a 3x3, then a 1x1 to `features`; ELU after each.

  (B, H, W, 1) -> (B, H - RF + 1, W - RF + 1, features), RF = `receptive_field(dilations)`.
  `conv`: how the dilated convs are computed, "xla" (lax) or "space_to_batch"
  (`cac_jax.dilated_conv`: the same function, much faster to differentiate on a GPU); the
  params are the same either way.
  """

  width: int = 32
  features: int = 32
  dilations: Sequence[int] = (1, 1, 2, 4, 8, 16, 32)
  conv: str = "xla"

  @property
  def receptive_field(self) -> int:
    return receptive_field(self.dilations)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv_fn = dilated_conv.space_to_batch_conv if self.conv == "space_to_batch" else None
    for i, d in enumerate(self.dilations):
      x = nn.elu(
        nn.Conv(
          self.width,
          (3, 3),
          kernel_dilation=d,
          padding="VALID",
          conv_general_dilated=conv_fn,
          name=f"conv{i}_d{d}",
        )(x)
      )
    x = nn.elu(nn.Conv(self.width, (3, 3), padding="VALID", name=f"conv{len(self.dilations)}")(x))
    return nn.elu(nn.Conv(self.features, (1, 1), name="features")(x))


class Generator(nn.Module):
  """Feature generator G: three independent towers over the three orthogonal views.

  (3, B, H, W, 1) -> (B, H - RF + 1, W - RF + 1, 3 * features), views concatenated on the
  channel axis in order axial, coronal, sagittal.
  """

  width: int = 32
  features: int = 32
  dilations: Sequence[int] = (1, 1, 2, 4, 8, 16, 32)
  conv: str = "xla"  # ViewTower.conv

  def setup(self):
    self.towers = {
      v: ViewTower(self.width, self.features, tuple(self.dilations), self.conv, name=f"{v}_tower")
      for v in VIEWS
    }

  def tower(self, view: str, x: jax.Array) -> jax.Array:
    """Apply one view's tower to (B, H, W, 1) slices (used by dense inference)."""
    return self.towers[view](x)

  def __call__(self, views: jax.Array) -> jax.Array:
    if views.ndim != 5 or views.shape[0] != 3:
      raise ValueError(f"Generator expects (3, B, H, W, 1) view stacks; got {views.shape}")
    return jnp.concatenate([self.towers[v](views[i]) for i, v in enumerate(VIEWS)], axis=-1)


class Classifier(nn.Module):
  """Classifier C: dropout -> 1x1 conv (dense) to `hidden` + ELU -> dropout -> 1x1 to logits.

  (..., 96) features -> (..., num_classes) logits. Softmax is never applied here.
  """

  hidden: int = 128
  num_classes: int = 7
  dropout: float = 0.35

  @nn.compact
  def __call__(self, features: jax.Array, deterministic: bool = True) -> jax.Array:
    x = nn.Dropout(self.dropout, deterministic=deterministic)(features)
    x = nn.elu(nn.Dense(self.hidden, name="hidden")(x))
    x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
    return nn.Dense(self.num_classes, name="logits")(x)


class DeepSupervisionHeads(nn.Module):
  """One dropout + 1x1 conv per view on that view's features (source training only).

  (B, h, w, 3 * f) -> (3, B, h, w, num_classes) logits. The reference puts dropout 0.35
  before each auxiliary head (networks/ConvNet.py:87-105); `dropout` 0 leaves it out.
  """

  num_classes: int = 7
  dropout: float = 0.0

  @nn.compact
  def __call__(self, features: jax.Array, deterministic: bool = True) -> jax.Array:
    per_view = jnp.split(features, 3, axis=-1)
    if self.dropout > 0:
      drop = nn.Dropout(self.dropout, deterministic=deterministic)
      per_view = [drop(f) for f in per_view]
    return jnp.stack(
      [nn.Dense(self.num_classes, name=f"{v}_head")(f) for v, f in zip(VIEWS, per_view)]
    )


class BatchStatsNorm(nn.Module):
  """Per-channel normalisation with the statistics of the batch it is called on, no state.

  (B, h, w, C) -> same shape: each channel is normalised over (B, h, w) with its mean and
  biased variance (PyTorch `BatchNorm2d` in training mode, eps 1e-5), then scaled and shifted
  by learnable (C,) `scale` (init 1) and `bias` (init 0). Running averages are never kept
  because the reference critic never leaves training mode, so they are never read; without
  them the module is stateless and fits a pure `lax.scan` of critic steps.
  """

  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axis=axes)
    var = jnp.square(x - mean).mean(axis=axes)
    scale = self.param("scale", nn.initializers.ones, (c,), x.dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,), x.dtype)
    return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias


CRITIC_NORMS = ("batch", "layer")


class Critic(nn.Module):
  """Wasserstein critic D on G's feature map: (B, h, w, 96) -> (B,) scores (source high).

  Seven VALID 3x3 convs with `channels`, then a dense layer from the flattened map to one
  scalar per sample. Needs h, w >= 15 (>= 17 with "batch"). `norm` chooses what follows each conv:

  * "batch" (the reference, default): per-channel batch statistics + ReLU after *all seven*
    convs, the last (one channel) included, as in the authors' `networks/Gan.py:141-167`
    (`Discriminator`: Conv2d, BatchNorm2d, ReLU seven times, then Flatten and Linear). Their
    training script never calls `modelD.eval()` and scores the NCCT and CCTA batches in
    separate forward calls (`trainGAN_adv_cls_MMD.py:168-169`, `:217-218`, and only the CCTA
    batch at `:242`), so each call normalises one domain's batch with its own statistics: a
    shift of a feature channel, or a common scale of all features, applied to a whole domain
    is invisible to the critic, and L_adv cannot make G chase it. The score of one sample
    depends on the batch it is scored with, so always score one domain per call.
  * "layer": per-sample LayerNorm over (h, w, channels) + ReLU after all but the last conv.
    It scores each sample on its own, and so it sees a per-channel shift of a whole domain's
    features.

  Every scale and bias is clipped to [-c, c] with the other critic params (the reference
  clamps all of `modelD.parameters()`, BatchNorm weights included).
  """

  channels: Sequence[int] = (128, 128, 256, 128, 64, 32, 1)
  norm: str = "batch"

  @nn.compact
  def __call__(self, features: jax.Array) -> jax.Array:
    if self.norm not in CRITIC_NORMS:
      raise ValueError(f"critic norm must be one of {CRITIC_NORMS}; got {self.norm!r}")
    x = features
    last = len(self.channels) - 1
    for i, ch in enumerate(self.channels):
      # A bias before batch statistics is subtracted again with the channel mean: it cannot
      # change any score (the reference's Conv2d has one, inert), only collect float-noise
      # gradients that RMSProp would blow up to full-size updates. So none here.
      x = nn.Conv(ch, (3, 3), padding="VALID", use_bias=self.norm != "batch", name=f"conv{i}")(x)
      if self.norm == "batch":
        x = nn.relu(BatchStatsNorm(name=f"norm{i}")(x))
      elif i < last:
        x = nn.relu(nn.LayerNorm(reduction_axes=(-3, -2, -1), name=f"norm{i}")(x))
    if self.norm == "batch" and x.shape[1] * x.shape[2] < 2:
      # Batch statistics over a 1x1 one-channel map standardise the batch's scores: their
      # batch mean is then the same for every batch, and the critic can tell domains apart
      # only by the shape of the score distribution (the reference's map is 11x11).
      raise ValueError(
        f"a batch-statistics critic needs a final map larger than 1x1; got {x.shape[1:3]} "
        "from features of side "
        f"{features.shape[1]} (config.data.output_size >= 17)"
      )
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(1, name="score")(x)[:, 0]


def tower_conv(config: ml_collections.ConfigDict) -> str:
  """How G's dilated convs are computed on the default backend.

  `dilated_conv.resolve(model.tower_conv)`; "auto" where a config has no such field.
  """
  return dilated_conv.resolve(config.model.get("tower_conv", "auto"))


# `features_no_grad` with chunk -1 goes one patch at a time on CPU when one layer's activations
# for the whole batch exceed this many bytes (the paper config's critic batch: about 140 MB;
# the demo's: 5 MB, where the loop only adds overhead and compile time).
AUTO_CHUNK_BYTES = 32 << 20


def features_no_grad(g: Generator, g_params, views: jax.Array, chunk: int = -1) -> jax.Array:
  """G's features of (3, B, P, P, 1) view stacks -> (B, o, o, 3F), with no gradient.

  Computed `chunk` patches at a time in a `lax.map` when 0 < chunk < B and chunk divides B; 0: the whole
  batch at once; -1 (auto): 1 on CPU when the batch's first-layer activations (3 B P^2 width
  floats) exceed `AUTO_CHUNK_BYTES`, else 0.

  Why: on XLA:CPU a large batch's activations do not stay in the caches, and the bias + ELU
  passes between the convolutions then cost about as much as the convolutions; one patch at a
  time they do. The outputs are the same to float32 rounding (the same bits where XLA picks
  one conv kernel for both batch sizes; not on every CPU). Forward
  only: differentiating through the rolled loop is many times slower on XLA:CPU, so the steps
  that need G's gradient apply G to the whole batch. docs/performance.md has the measurements.
  """
  b = views.shape[1]
  if chunk < 0:
    big = 3 * b * views.shape[2] * views.shape[3] * g.width * 4 > AUTO_CHUNK_BYTES
    chunk = 1 if big and jax.default_backend() == "cpu" else 0
  if chunk <= 0 or chunk >= b or b % chunk:
    out = g.apply({"params": g_params}, views)
  else:
    groups = jnp.moveaxis(views.reshape((3, b // chunk, chunk) + views.shape[2:]), 1, 0)
    out = jax.lax.map(lambda v: g.apply({"params": g_params}, v), groups)
    out = out.reshape((b,) + out.shape[2:])
  return jax.lax.stop_gradient(out)


class Networks(NamedTuple):
  """The four modules of the method, as `build` makes them from one config."""

  generator: Generator
  classifier: Classifier
  heads: DeepSupervisionHeads
  critic: Critic


def build(config: ml_collections.ConfigDict) -> Networks:
  """The networks (G, C, heads, D) of a config's `model` section.

  G's dilated convs are `tower_conv(config)`; the critic's normalisation is chosen by name
  (`model.critic_norm`, one of `CRITIC_NORMS`).
  """
  m = config.model
  return Networks(
    generator=Generator(m.tower_width, m.tower_features, tuple(m.dilations), tower_conv(config)),
    classifier=Classifier(m.classifier_hidden, m.num_classes, m.dropout),
    heads=DeepSupervisionHeads(m.num_classes, float(m.get("head_dropout", 0.0))),
    critic=Critic(tuple(m.critic_channels), m.get("critic_norm", "batch")),
  )


def init_params(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """Initialise {'generator', 'classifier', 'heads', 'critic'} params for one patch size."""
  g, c, h, d = build(config)  # a Networks, in its field order
  p = patch_size(config)
  k_g, k_c, k_h, k_d = jax.random.split(rng, 4)
  views = jnp.zeros((3, 1, p, p, 1), jnp.float32)
  g_params = g.init(k_g, views)["params"]
  feats = jax.eval_shape(lambda: g.apply({"params": g_params}, views))
  feats = jnp.zeros(feats.shape, feats.dtype)
  return {
    "generator": g_params,
    "classifier": c.init(k_c, feats)["params"],
    "heads": h.init(k_h, feats)["params"],
    "critic": d.init(k_d, feats)["params"],
  }


def centre_window(views: jax.Array, receptive_field: int) -> jax.Array:
  """The part of (3, B, P, P, 1) view stacks that G's centre output sees -> (3, B, RF, RF, 1).

  G is VALID convolutions only, so its output at the centre (o // 2, o // 2) of the
  (o = P - RF + 1)-wide map is a function of the RF-wide input window starting at o // 2 and
  nothing else: G on this window gives a (B, 1, 1, 3F) map equal to that centre (to float
  rounding: the tests compare at 1e-5). Where only the
  centre is used (the generator step's L_cls) this skips the rest of the map: the window costs
  about 23 % of the full map's arithmetic for the demo tower and 66 % for the paper's (sums of
  the layers' output areas).
  """
  o = views.shape[-2] - receptive_field + 1
  if o < 1:
    raise ValueError(
      f"views of side {views.shape[-2]} are smaller than the receptive field {receptive_field}"
    )
  s = o // 2
  return views[..., s : s + receptive_field, s : s + receptive_field, :]


def centre_logits(
  classifier: Classifier,
  c_params,
  features: jax.Array,
  *,
  deterministic: bool = True,
  rng: jax.Array | None = None,
) -> jax.Array:
  """Classifier logits at the centre of a (B, h, w, F) feature map -> (B, num_classes)."""
  h, w = features.shape[1:3]
  centre = features[:, h // 2, w // 2, :]
  rngs = None if rng is None else {"dropout": rng}
  return classifier.apply({"params": c_params}, centre, deterministic=deterministic, rngs=rngs)
