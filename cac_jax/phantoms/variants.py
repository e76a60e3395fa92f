"""Held-apart phantom acquisitions and same-patient pairs.

Acquisitions the training sets never draw, to test whether a network notices a scan is unlike
its target domain (`cac_jax.studies.domain_check_study`):
  ccta_<k>kvp    CCTA with the tube voltage fixed at k kVp (iodine rescaled to it by
                 `acquisition.iodine_factor`, calcium and bone by `materials`)
  cardiac_ncct   the calcium-scoring protocol as it is (to be scored as CCTA)
  chest_venous   chest CT (chest field of view, 3 mm slices, 120 kVp) with contrast in a venous
                 phase: aorta and left heart 140-200 HU, right heart about as bright; the
                 simulator's CCTA contrast heterogeneity (venous inflow, streaks) is kept
Pairs (`paired_cases`): one virtual patient (anatomy, calcium plan) acquired as cardiac NCCT
(120 kVp, 3 mm) and as CCTA (70-120 kVp, 0.6 mm), each with its own noise and reconstruction
(`config.phantoms.paired_patients` on; the CCTA reference is labelled above its own aortic
threshold, as the authors labelled theirs).
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from cac_jax import atomic
from cac_jax.data.scan import Case
from cac_jax.phantoms import acquisition, generate, writer

VENOUS_IODINE_HU = (140.0, 200.0)
VENOUS_RIGHT_FRACTION = (0.9, 1.0)
PAIR_DOMAINS = ("cardiac_ncct", "ccta")


def fixed_kvp(kvp: int):
  """A `generate.simulate` protocol_fn setting a CCTA's tube voltage to `kvp`."""

  def apply(p: acquisition.Protocol, seed: int) -> acquisition.Protocol:
    base = p.iodine_hu / acquisition.iodine_factor(p.kvp)
    iodine = float(np.clip(base * acquisition.iodine_factor(kvp), 250.0, 600.0))
    return dataclasses.replace(p, kvp=int(kvp), iodine_hu=iodine)

  return apply


def venous_phase(p: acquisition.Protocol, seed: int) -> acquisition.Protocol:
  """A `generate.simulate` protocol_fn giving a chest NCCT protocol venous-phase contrast."""
  rng = np.random.default_rng([0xCAC, 36, int(seed)])
  return dataclasses.replace(
    p,
    iodine_hu=float(rng.uniform(*VENOUS_IODINE_HU)),
    right_heart_fraction=float(rng.uniform(*VENOUS_RIGHT_FRACTION)),
  )


def held_apart_case(name: str, seed: int, config) -> Case:
  """One case of a held-apart set.

  The sets: "ccta", "ccta_<k>kvp", "cardiac_ncct", "chest_ncct", "chest_venous"."""
  if name in acquisition.DOMAINS:
    return generate.generate_case(name, seed, config)
  if name == "chest_venous":
    return generate.simulate("chest_ncct", seed, config, protocol_fn=venous_phase).case
  if name.startswith("ccta_") and name.endswith("kvp"):
    kvp = int(name[len("ccta_") : -len("kvp")])
    return generate.simulate("ccta", seed, config, protocol_fn=fixed_kvp(kvp)).case
  raise ValueError(
    f"unknown held-apart set {name!r}: expected one of {acquisition.DOMAINS}, ccta_<k>kvp "
    "or chest_venous"
  )


def paired_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with `phantoms.paired_patients` on (same seed, same patient)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.phantoms.paired_patients = True
  return out


def paired_cases(seed: int, config) -> dict[str, generate.Simulation]:
  """{"cardiac_ncct", "ccta"}: the same virtual patient acquired both ways."""
  cfg = paired_config(config)
  return {d: generate.simulate(d, seed, cfg) for d in PAIR_DOMAINS}


def patient_id(seed: int) -> str:
  return f"patient_{int(seed):06d}"


PAIRED_COLUMNS = writer.MANIFEST_COLUMNS + ("patient",)


def write_paired_dataset(
  output_dir: str, num_patients: int, seed: int, config, split: str = "test", progress=None
) -> str:
  """Writes paired patients, each as cardiac NCCT and CCTA, with a manifest.csv; returns its path.

  Patients seed..seed+num_patients-1; the manifest's `patient` column links the two
  (`cac-evaluate --paired`). An existing manifest.csv in output_dir is replaced."""
  os.makedirs(output_dir, exist_ok=True)
  rows = []
  for k in range(int(num_patients)):
    s = int(seed) + k
    for sim in paired_cases(s, config).values():
      row = writer.write_case(sim.case, output_dir)
      rows.append(dict(row, split=split, patient=patient_id(s)))
      if progress is not None:
        progress(sim.case.case_id)
  marker = os.path.join(output_dir, writer.PHANTOM_MARKER)
  if not os.path.exists(marker):
    atomic.write_text(
      marker, '{"generator": "cac_jax.phantoms", "note": "synthetic phantoms, no patient data"}\n'
    )
  path = os.path.join(output_dir, "manifest.csv")
  atomic.write_csv(path, PAIRED_COLUMNS, rows)
  return path
