"""The paper's network sizes and training schedule (for a GPU)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "paper"  # recorded in exports and scores.json provenance
  c.seed = 0

  # Networks (cac_jax.models).
  c.model = ml_collections.ConfigDict()
  c.model.tower_width = 32  # channels of every 3x3 conv in a view tower
  c.model.tower_features = 32  # features out of each tower's final 1x1 conv
  c.model.dilations = (1, 1, 2, 4, 8, 16, 32)  # then one undilated 3x3 -> RF 131
  c.model.classifier_hidden = 128
  c.model.num_classes = 7
  c.model.dropout = 0.35
  # Dropout before each deep-supervision head, as the reference (networks/ConvNet.py:87-105).
  c.model.head_dropout = 0.35
  c.model.critic_channels = (128, 128, 256, 128, 64, 32, 1)
  # Dilated tower convs: "auto" = space-to-batch on GPU (fast gradients), XLA's conv elsewhere
  # (cac_jax.dilated_conv; the same function and params either way).
  c.model.tower_conv = "auto"
  # "batch": per-call batch statistics + ReLU after all seven critic convs, as the reference
  # (networks/Gan.py:141-167, never in eval mode); "layer": per-sample LayerNorm (see models.Critic).
  c.model.critic_norm = "batch"

  # Data geometry (cac_jax.data.preprocess, cac_jax.data.sampling).
  c.data = ml_collections.ConfigDict()
  c.data.working_spacing = (1.5, 0.66, 0.66)  # (z, y, x) mm
  c.data.output_size = 25  # output window per view; patch = RF + output - 1 = 155
  c.data.hu_clip = (-1000.0, 3000.0)
  c.data.hu_center = 130.0
  c.data.hu_scale = 1130.0
  c.data.thick_slice = False  # chest NCCT: 3 mm thickness every 1.5 mm by averaging
  c.data.thick_slice_mm = 3.0  # with thick_slice: reconstructed slice thickness
  c.data.thick_increment_mm = 1.5  # with thick_slice: slice increment
  c.data.interp_order = 1  # spline order of the resampling to working spacing (1: linear)

  # Batch policies (cac_jax.data.sampling).
  c.sampling = ml_collections.ConfigDict()
  c.sampling.source_threshold = 2  # patches centred on voxels >= 130 HU
  c.sampling.source_uniform = 6  # uniformly random voxels
  c.sampling.source_labelled = 8  # centred on labelled calcium voxels
  c.sampling.critic_batch = 16  # per domain: half >= threshold, half uniform
  c.sampling.prefetch = 2
  c.sampling.bright_in_heart = (
    False  # source training: ">= threshold" patches only in the dilated heart
  )
  # Of the source batch's ">= threshold" patches, how many in the dilated heart (the rest over the
  # whole volume); 0 = the reference's draw (a voxel >= 130 HU anywhere in a random slice).
  c.sampling.source_threshold_in_heart = 0
  # ">= threshold" patches of supervised batches at the fixed 130 HU (scoring.ncct_threshold) in
  # every domain, as the reference draws its bright patches (CalciumDataset.py:308, T=130 for both
  # domains in trainGAN_adv_cls_MMD.py:161-162), instead of the case's scoring threshold (the
  # aortic-lumen mean + 3 SD in CCTA). Only the CCTA oracle sees a difference: it learns the
  # contrast lumen between 130 HU and the lumen threshold as background, which scoring without
  # FP reduction classifies (FPReductionSettings.aorta_threshold).
  c.sampling.fixed_threshold = True

  # Supervised source training (cac_jax.train.source).
  c.source = ml_collections.ConfigDict()
  c.source.learning_rate = 5e-4
  c.source.weight_decay = 5e-5  # L2 added to the gradient (as PyTorch Adam weight_decay)
  c.source.deep_supervision_weight = 0.05
  c.source.init_seed = -1  # seed of the parameter initialisation; -1: config.seed
  c.source.num_steps = 200_000
  c.source.log_every = 100
  c.source.checkpoint_every = 5_000

  # Adversarial adaptation (cac_jax.train.adversarial). Every value below is the reference's
  # (qurAI-amsterdam/CACscoringUsingDomainAdaptation, trainGAN_adv_cls_MMD.py and run_bash.sh).
  c.adapt = ml_collections.ConfigDict()
  c.adapt.critic_lr = 5e-4  # lr (:38, :105)
  c.adapt.generator_lr = 5e-5  # 0.1 * lr (:105)
  c.adapt.weight_decay = 5e-4  # both RMSprop optimisers (:107-108)
  c.adapt.rmsprop_decay = 0.99  # PyTorch RMSprop alpha (default)
  c.adapt.rmsprop_eps = 1e-8
  c.adapt.clip = 0.1  # critic params clamped to [-clip, clip] after each update (:66, :231)
  c.adapt.alpha = 2.0  # weight of the source classification loss (run_bash.sh --w_cls 2)
  c.adapt.classifier_dropout = False  # dropout in the frozen C during adaptation's L_cls
  # Critic pre-training: N_Diters (10; 20 in run_bash.sh:5) x 100 x batch_size (10) critic updates (:145-180).
  c.adapt.critic_pretrain_steps = 10_000
  # Then per epoch 5 x (d_iters x 10 critic updates, 10 generator updates) (:203-261): 20 critic
  # updates per generator update, 5 from epoch 100 (:196-199), i.e. from generator step 99 * 50.
  c.adapt.critic_steps = 20
  c.adapt.critic_steps_later = 5  # 0: no change; else critic steps from generator step `change_at`
  c.adapt.change_at = 4_950
  c.adapt.num_generator_steps = 10_000  # 200 epochs x 50 generator updates
  # "blocked": per block, critic_steps x block critic updates, then `block` generator updates
  # against that critic, as the reference (d_iters x batch_size 10, :203-261); "interleaved":
  # critic_steps critic updates before every generator update (train.loop.critic_updates_before).
  c.adapt.schedule = "blocked"
  c.adapt.block = 10
  # Critic and generator-target patches: "reference" = half >= 130 HU, half uniform, in a random
  # slice of either domain (dataset/CalciumDataset.py:335-387); "scan_threshold" = CCTA bright
  # patches at the aortic-ROI threshold. See cac_jax.data.sampling.
  c.adapt.critic_patches = "reference"
  c.adapt.bright_in_heart = (
    False  # "scan_threshold" only: critic bright patches only in the dilated heart
  )
  c.adapt.unroll_critic_scan = True  # unroll the lax.scan of critic steps (faster on XLA:CPU)
  # Patches per iteration of the critic update's G forward (`models.features_no_grad`): -1 =
  # one at a time on CPU for large batches (activations stay in the caches), else the whole
  # batch; 0 = the whole batch. Results agree to float32 rounding (models.features_no_grad).
  c.adapt.critic_feature_chunk = -1
  c.adapt.log_every = 10
  c.adapt.checkpoint_every = 500
  # Inference snapshots of G every N generator steps (0: none) for checkpoint selection; the
  # reference saves G every 5 epochs = 250 steps (:285-287) and tests G_15 (TestNet_transf.py:89).
  c.adapt.snapshot_every = 250
  # The snapshot at this fraction of training is scored as its own column, as the reference
  # tested G_15 (750 of 10,000 steps, TestNet_transf.py:89); 0: no such column.
  c.adapt.tested_fraction = 0.075

  # Scoring (cac_jax.data.threshold, cac_jax.scoring.postprocess, cac_jax.scoring.infer).
  c.scoring = ml_collections.ConfigDict()
  c.scoring.ncct_threshold = 130.0
  c.scoring.roi_size_mm = (18.0, 14.0, 14.0)  # (z, y, x) ascending-aorta lumen ROI
  c.scoring.min_lesion_mm3 = 1.0
  c.scoring.max_lesion_mm3 = 500.0
  c.scoring.heart_dilation_mm = 10.0
  # "voxel": calcium outside the dilated heart is zeroed voxel by voxel, as the reference
  # (Post_processing_FPreduction.ipynb, cell 5); "lesion": whole lesions are kept or dropped by
  # whether they touch it (postprocess.FPReductionSettings.heart_filter_mode).
  c.scoring.heart_filter = "voxel"
  c.scoring.slab_slices = 16  # slices per streamed slab in dense inference

  # Evaluation (cac_jax.evaluation.metrics, the experiment's scoring of every column).
  c.evaluation = ml_collections.ConfigDict()
  # Reference components (26-connected) of at most this many voxels are left out before
  # scoring, as the authors' evaluation reference `annotations_resampled_sl_2`
  # (Evaluation_senF1_volumeWise.py:50, utils/util.py:237-250); 0: the labels as drawn.
  c.evaluation.reference_min_voxels = 2

  # Phantoms (cac_jax.phantoms).
  c.phantoms = ml_collections.ConfigDict()
  c.phantoms.at_working_spacing = False  # True: generate directly at working spacing
  c.phantoms.fov_scale = 1.0  # <1 shrinks the field of view towards the heart (fast CI)
  c.phantoms.paired_patients = False  # True: same seed -> same patient/calcium in every domain
  # Probability that a phantom patient has no coronary calcium planned (lesions.plan_calcium);
  # the experiment overrides it per data role (experiment.p_no_coronary_calcium).
  c.phantoms.p_no_coronary_calcium = 1.0 / 3.0
  # The phantom experiment (cac_jax.studies.experiment): cases per data role.
  c.experiment = ml_collections.ConfigDict()
  c.experiment.n_source_train = 40
  c.experiment.n_adapt_source = 20
  c.experiment.n_adapt_target = 40  # = n_source_train: the oracle trains on these, labelled
  c.experiment.n_ccta_test = 20
  c.experiment.n_ncct_test = 10
  # Columns without FP reduction classify every voxel >= 130 HU of a scan, most of the test
  # scoring's cost: they score the first N scans of each test set (-1: every scan).
  c.experiment.n_no_fp_scans = -1
  # Labelled CCTA used only to pick an adaptation snapshot (the reference validates every epoch
  # on labelled CCTA, utils/GAN_validation.py:19-47 via trainGAN_adv_cls_MMD.py:283): model
  # selection with target labels, reported as such. 0: no selection.
  c.experiment.n_ccta_val = 5
  # Patients drawn twice, as cardiac NCCT and as CCTA (`phantoms.variants.paired_cases`), whose
  # CCTA risk category is compared with the same patient's NCCT one (experiment.score_paired,
  # the report's "Same patient, NCCT and CCTA"); 0: no paired test set.
  c.experiment.n_paired_test = 0
  # The oracle: the source architecture and schedule trained on the labelled adapt_target CCTA.
  c.experiment.oracle = True
  # Per data role, the phantoms' probability of no planned coronary calcium (roles not listed:
  # phantoms.p_no_coronary_calcium). The test and validation roles draw fewer calcium-free
  # patients so that their scans with labelled calcium, over which the gates read F1, are
  # enough to decide them (experiment.MIN_CALCIUM_SCANS).
  c.experiment.p_no_coronary_calcium = ml_collections.ConfigDict(
    {"ncct_test": 0.0, "ccta_test": 0.0, "ccta_val": 0.0}
  )
  return c
