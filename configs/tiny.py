"""Narrow towers and small patches: trains in seconds on a CPU (tests, CI, demo quick mode)."""

import ml_collections

from cac_jax.configs import paper


def get_config() -> ml_collections.ConfigDict:
  c = paper.get_config()
  c.name = "tiny"
  c.model.tower_width = 8
  c.model.tower_features = 8
  c.model.dilations = (1, 2, 4)  # RF = 1 + 2*(1+2+4+1) = 17
  c.model.classifier_hidden = 16
  c.model.critic_channels = (16, 16, 16, 16, 16, 8, 1)
  c.model.head_dropout = 0.0  # the tests' trained bits predate this option
  # Dilated tower convs: "auto" = space-to-batch on GPU (fast gradients), XLA's conv elsewhere
  # (cac_jax.dilated_conv; the same function and params either way).
  c.model.tower_conv = "auto"
  # The batch-statistics critic needs a final map > 1x1: 25 gives 11x11, as the paper; patch = 41.
  c.data.output_size = 25
  c.data.working_spacing = (1.5, 1.0, 1.0)
  c.sampling.source_threshold = 2
  c.sampling.source_uniform = 2
  c.sampling.source_labelled = 4
  c.sampling.critic_batch = 4
  c.source.num_steps = 50
  c.source.log_every = 10
  c.source.checkpoint_every = 25
  c.adapt.critic_pretrain_steps = 5
  c.adapt.critic_steps = 3
  c.adapt.schedule = "interleaved"  # the tests' expected runs predate this option
  c.adapt.tested_fraction = 0.0  # the tests' expected columns predate this option
  c.adapt.num_generator_steps = 5
  c.adapt.log_every = 1
  c.adapt.checkpoint_every = 5
  c.scoring.slab_slices = 8
  c.scoring.heart_filter = "lesion"  # the tests' expected lesions predate this option
  c.evaluation.reference_min_voxels = 0  # the tests' expected scores predate this option
  c.phantoms.at_working_spacing = True
  c.phantoms.fov_scale = 0.5
  return c
