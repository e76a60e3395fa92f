r"""The domain check measured on held-apart phantom sets (AUC and share warned per set).

  cac-domain-check --checkpoint runs/demo/adv_cls/export [--sets ccta,ccta_70kvp,ccta_120kvp,\
      cardiac_ncct,chest_venous] [--num_cases 8] [--seed 900000] [--output_dir DIR]

--checkpoint: an adapted export with a domain check (`cac-adapt` with manifests writes
EXPORT/domain_check). Phantom settings come from its config. Prints the table (see
`cac_jax.studies.domain_check_study`); with --output_dir also writes domain_check.md and
domain_check.csv there.

(From a checkout also `python -m launch.domain_check ...`.)
"""

from absl import app, flags, logging

from cac_jax import atomic, checkpoints
from cac_jax.scoring import domain_check as dc
from cac_jax.studies import domain_check_study as study

from . import _cli

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Adapted export with a domain_check folder.")
_SETS = flags.DEFINE_list("sets", list(study.DEFAULT_SETS), "Held-apart sets (phantoms.variants).")
_NUM = flags.DEFINE_integer("num_cases", 8, "Cases per set.")
_SEED = flags.DEFINE_integer("seed", study.DEFAULT_SEED, "Seed of each set's first case.")
_OUT = flags.DEFINE_string("output_dir", None, "Also write domain_check.md and .csv here.")
flags.mark_flags_as_required(["checkpoint"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _NUM.value < 2:
    raise app.UsageError(f"--num_cases must be at least 2; got {_NUM.value}")
  params, config = checkpoints.load_inference(_CHECKPOINT.value)
  model = dc.load(_CHECKPOINT.value, config)
  if isinstance(model, dc.NoCheck):
    raise ValueError(f"{_CHECKPOINT.value}: {model.reason}")
  results = study.measure(
    model, params, config, _SETS.value, _NUM.value, _SEED.value, log=logging.info
  )
  text = study.markdown(results, model)
  print(text, end="")
  if _OUT.value:
    with atomic.claim_dir(_OUT.value):
      rows = study.csv_rows(results)
      atomic.write_set(
        _OUT.value,
        {
          "domain_check.csv": lambda p: atomic.write_csv(p, list(rows[0]), rows),
          "domain_check.md": lambda p: atomic.write_text(p, text),
        },
      )


def flag_paths():
  return {"--checkpoint": _CHECKPOINT.value, "--output_dir": _OUT.value}


def run() -> None:  # console script cac-domain-check
  _cli.run(main, flag_paths=flag_paths)


if __name__ == "__main__":
  run()
