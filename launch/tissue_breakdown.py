r"""Where each network's calcium calls land on phantoms: predicted-class volume by true tissue.

  cac-tissue-breakdown --checkpoints no_adaptation=runs/demo/source/export,\
      adv_cls=runs/demo/adv_cls/export --role ccta_test --experiment_seed 0 --num_cases 8 \
      [--fp_reduction | --whole_scan] [--output_dir DIR]

Re-simulates the experiment's phantoms of --role (the same seeds `launch.reproduce` used, so the
cases are those of its tables) with tissue bookkeeping, scores them with every checkpoint and
prints one table per checkpoint (mm³ per scan; see `cac_jax.studies.tissue_breakdown`). With
--output_dir, also writes <name>.md and <name>.csv there. Phantom settings come from the first
checkpoint's config; every checkpoint must share its model and data sections.

(From a checkout also `python -m launch.tissue_breakdown ...`.)
"""

import os

from absl import app, flags, logging

from cac_jax import atomic, checkpoints
from cac_jax.scoring import postprocess
from cac_jax.studies import experiment
from cac_jax.studies import tissue_breakdown as tb

from . import _cli

_CHECKPOINTS = flags.DEFINE_list(
  "checkpoints", None, "name=export_dir pairs (or bare export dirs)."
)
_ROLE = flags.DEFINE_enum(
  "role", "ccta_test", list(experiment.ROLES), "Experiment data role to re-simulate."
)
_SEED = flags.DEFINE_integer("experiment_seed", 0, "The experiment's --seed (launch.reproduce).")
_NUM = flags.DEFINE_integer("num_cases", 8, "Number of cases of the role (from its first).")
_FP = flags.DEFINE_bool(
  "fp_reduction",
  False,
  "Apply the config's FP reduction (default: raw calls inside the "
  "dilated heart, no region growing or size limits).",
)
_WHOLE = flags.DEFINE_bool(
  "whole_scan",
  False,
  "Score as Table 2's columns without FP reduction: every voxel >= 130 HU of the whole scan "
  "(CCTA contrast lumen included). Not with --fp_reduction.",
)
_OUT = flags.DEFINE_string("output_dir", None, "Also write <name>.md and <name>.csv here.")
flags.mark_flags_as_required(["checkpoints"])


def _named(entries):
  out = []
  for e in entries:
    name, _, path = (
      e.partition("=")
      if "=" in e
      else (os.path.basename(os.path.dirname(e.rstrip("/"))) or e, "", e)
    )
    out.append((name, path))
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _NUM.value < 1:
    raise app.UsageError("--num_cases must be >= 1")
  if _WHOLE.value and _FP.value:
    raise app.UsageError("--whole_scan is the scoring without FP reduction: drop --fp_reduction")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  if _OUT.value:
    atomic.check_dir(_OUT.value)  # before any computation
  models = [(name, *checkpoints.load_inference(path)) for name, path in _named(_CHECKPOINTS.value)]
  config = models[0][2]
  for name, _, cfg in models[1:]:
    if (cfg.model.to_dict(), cfg.data.to_dict()) != (config.model.to_dict(), config.data.to_dict()):
      raise app.UsageError(f"checkpoint {name}: model/data config differs from {models[0][0]}'s")
  domain = experiment.ROLES[_ROLE.value][0]
  first = experiment.first_case_seed(_ROLE.value, _SEED.value)
  seeds = range(first, first + _NUM.value)
  if _OUT.value:
    os.makedirs(_OUT.value, exist_ok=True)
  fp = postprocess.FPReductionSettings.from_config(config.scoring) if _FP.value else None
  tables = tb.phantom_breakdown(
    {name: params for name, params, _ in models}, config, domain, seeds, fp, _WHOLE.value
  )
  for name, b in tables.items():
    text = tb.markdown(
      b,
      f"{name}: {_ROLE.value} ({domain}) phantoms {first}..{first + _NUM.value - 1}, "
      + _scoring_name(),
    )
    print(text)
    if _OUT.value:
      atomic.write_text(os.path.join(_OUT.value, f"{name}.md"), text)
      tb.write_csv(b, os.path.join(_OUT.value, f"{name}.csv"))


def _scoring_name() -> str:
  if _WHOLE.value:
    return "raw calls at every voxel >= 130 HU of the whole scan (Table 2 without FP reduction)"
  return "after FP reduction" if _FP.value else "raw calls in the dilated heart"


def run() -> None:  # console script cac-tissue-breakdown
  _cli.run(main)


if __name__ == "__main__":
  run()
