"""Stage 1, data: scans, volumes, manifests, resampling, thresholds and training patches.

Scans with geometry, reading and writing volumes, manifests, resampling and HU normalisation,
the calcium threshold policy, and the patches and batches the networks train on.

Imports only `cac_jax.labels`, `cac_jax.atomic` and `cac_jax.models` (patch geometry) from the
rest of the package: every later stage reads its inputs through here.
"""
