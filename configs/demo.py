"""The CPU demo of the phantom experiment (README's first command), sized for 2 CPU cores.

The paper's config (`configs/paper.py`) with smaller networks and a CPU schedule; every value
that differs from the paper is set here, so a change to the test config (`configs/tiny.py`)
never moves a headline number. Towers with dilations (1, 1, 2, 4, 8, 16) (receptive field
67 px = 67 mm at 1 mm in-plane, half the paper's 131); phantoms generated at working spacing
with a field of view reduced towards the heart.
"""

import ml_collections

from cac_jax.configs import paper


def get_config() -> ml_collections.ConfigDict:
  c = paper.get_config()
  c.name = "demo"
  c.model.tower_width = 16
  c.model.tower_features = 16
  c.model.dilations = (1, 1, 2, 4, 8, 16)  # then one undilated 3x3 -> RF 67
  c.model.classifier_hidden = 32
  c.model.critic_channels = (32, 32, 32, 32, 16, 8, 1)
  c.model.head_dropout = 0.0  # the benchmark's networks predate this option (docs/results.md)
  c.data.output_size = 25  # as the paper: the critic's last map is 11x11 (models.Critic)
  c.data.working_spacing = (1.5, 1.0, 1.0)
  # Source batches: noise/bone negatives >= 130 HU (low-dose chest noise is the NCCT FP
  # source), 4 of them inside the dilated heart (noise peaks in blood and myocardium: the
  # candidates the heart filter keeps), 2 anywhere (bone); docs/results.md has the trial.
  c.sampling.source_threshold = 6
  c.sampling.source_threshold_in_heart = 4
  c.sampling.source_uniform = 2
  c.sampling.source_labelled = 8
  c.sampling.critic_batch = 8
  c.source.num_steps = 1500
  c.source.log_every = 50
  c.source.checkpoint_every = 500
  # Adaptation as the reference (batch-statistics critic, weight decay 5e-4, critic patches
  # >= 130 HU / uniform in random slices of both domains), on a CPU schedule; docs/results.md
  # records what each departure costs.
  c.adapt.critic_pretrain_steps = 100  # reference 10,000-20,000
  c.adapt.critic_steps = 5  # reference 20 per generator step (5 from epoch 100)
  c.adapt.schedule = "interleaved"  # the benchmark's schedule (docs/results.md, fidelity table)
  c.adapt.num_generator_steps = 200  # reference 10,000 (its tested G_15: 750)
  c.adapt.generator_lr = 2e-4  # 4x the reference's, so that G moves in 200 steps
  c.adapt.log_every = 10
  c.adapt.checkpoint_every = 50
  c.adapt.snapshot_every = 50
  c.adapt.tested_fraction = 0.0  # no tested-step column: one network fewer to score
  c.scoring.slab_slices = 8
  c.scoring.heart_filter = "lesion"  # whole lesions (docs/results.md, fidelity table)
  c.evaluation.reference_min_voxels = 0  # the labels as drawn (docs/results.md, fidelity table)
  c.phantoms.at_working_spacing = True
  c.phantoms.fov_scale = 0.5
  c.experiment.n_source_train = 16
  c.experiment.n_adapt_source = 8
  # As many as source_train: the oracle (trained on these with their labels) gets the source
  # network's data size.
  c.experiment.n_adapt_target = 16
  # Test sets large enough to decide the gates (experiment.MIN_CALCIUM_SCANS).
  c.experiment.n_ccta_test = 24
  c.experiment.n_ncct_test = 16
  c.experiment.n_ccta_val = 10
  # The columns without FP reduction (readings, not gates) on the first 8 scans of each test
  # set: they classify every voxel >= 130 HU, most of the scoring time (docs/results.md).
  c.experiment.n_no_fp_scans = 8
  # No paired NCCT/CCTA test set: the demo already runs past its 30-minute budget on 2 cores
  # (docs/results.md), and 16 patients are 32 more scans to score; the benchmark has one.
  c.experiment.n_paired_test = 0
  return c
