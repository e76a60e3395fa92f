"""CT phantom generator: the embedded, labelled data set (NCCT source and CCTA target domains).

Public API:
  generate_case(domain, seed, config) -> Case
  write_dataset(output_dir, domain, num_cases, seed, config, split="train") -> manifest path
  plots_preview(cases, png_path)                   (cac_jax.phantoms.preview; needs matplotlib)
  simulate(domain, seed, config, track_tissue)     Case plus bookkeeping (tests, previews)
  plan_case_calcium(domain, seed, config)          cheap: the calcifications a case will carry
  sample_lesion_volumes(rng, n)                    the per-lesion volume distribution (mm^3)
  DOMAINS = ("chest_ncct", "cardiac_ncct", "ccta")

CCTA cases also carry contrast heterogeneity (cac_jax.phantoms.contrast): dense SVC / right-atrial
inflow, inhomogeneous left-heart and coronary enhancement, streak artefacts; all label 0.
"""

from cac_jax.phantoms.acquisition import DOMAINS
from cac_jax.phantoms.generate import case_id, generate_case, plan_case_calcium, simulate
from cac_jax.phantoms.lesions import sample_lesion_volumes
from cac_jax.phantoms.writer import write_dataset


def plots_preview(cases, png_path, **kwargs):
  from cac_jax.phantoms import preview

  return preview.plots_preview(cases, png_path, **kwargs)


__all__ = [
  "DOMAINS",
  "case_id",
  "generate_case",
  "plan_case_calcium",
  "simulate",
  "sample_lesion_volumes",
  "write_dataset",
  "plots_preview",
]
