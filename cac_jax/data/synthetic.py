"""Small in-memory synthetic patches and scans for tests, CI and benchmarks (no files).

Each sample is three orthogonal views through the centre of a small 3D scene: a noisy
soft-tissue background with up to two spherical "calcifications" (bright blobs), each of a
class 1..6 whose brightness depends on the class. Spheres are rendered analytically in
each view plane, so the three views are geometrically consistent and the centre voxel has
the same class in every view. Batches follow `docs/architecture.md`:

  source: {"views": f32 (3, B, P, P, 1) normalised HU, "labels": i32 (3, B, o, o)}
  target: {"views": f32 (3, B, P, P, 1)}

with P = `models.patch_size(config)` and o = `config.data.output_size`. The target domain
has a shifted appearance (a bright contrast-filled "lumen" region, brighter and noisier
background, dimmer blobs), like CCTA against non-contrast CT.

Every batch is a pure function of (seed, stream, step), so a training run that restarts
at step k sees exactly the batches it would have seen without the interruption.

Two whole-scan generators feed the benchmarks: `ccta_volume` (a CCTA-like volume and its
candidates, for dense inference) and `labelled_case` (a labelled case, for the patch sampler).
"""

from __future__ import annotations

import dataclasses
import zlib

import ml_collections
import numpy as np

from cac_jax import models
from cac_jax.data.scan import Case, Scan
from cac_jax.labels import NUM_CLASSES

# Normalised intensity of a blob of class k (k = 1..6): clearly above background.
_CLASS_LEVEL = np.array([0.0, 0.35, 0.6, 0.85, 1.1, 1.35, 1.6], np.float32)


def _rng(seed: int, stream: str, step: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), zlib.crc32(stream.encode()), int(step)])


def _scene(config: ml_collections.ConfigDict, rng: np.random.Generator, batch: int, target: bool):
  """Render `batch` samples -> views (3, B, P, P, 1) f32, labels (3, B, o, o) i32."""
  p = models.patch_size(config)
  o = config.data.output_size
  c = p // 2
  n_blobs = 2
  # Blob 0 covers the centre voxel in ~60% of samples; blob 1 is a distractor anywhere.
  classes = rng.integers(1, NUM_CLASSES, size=(batch, n_blobs))
  radius = rng.uniform(1.5, max(2.0, o / 5), size=(batch, n_blobs))
  pos = rng.uniform(-o / 2, o / 2, size=(batch, n_blobs, 3))  # (dz, dy, dx) from the centre
  at_centre = rng.random(batch) < 0.6
  pos[at_centre, 0] = rng.uniform(-0.5, 0.5, size=(int(at_centre.sum()), 3))
  far = ~at_centre
  # Keep blob 0 clear of the centre voxel when the centre is background.
  pos[far, 0] = np.sign(pos[far, 0] + 1e-3) * np.maximum(
    np.abs(pos[far, 0]), radius[far, 0:1] + 1.0
  )

  grid = np.arange(p, dtype=np.float32) - c
  u = grid[None, :, None]  # first in-plane axis
  v = grid[None, None, :]  # second in-plane axis
  # View planes: axial (y, x) at dz=0; coronal (z, x) at dy=0; sagittal (z, y) at dx=0.
  planes = ((0, (1, 2)), (1, (0, 2)), (2, (0, 1)))
  noise = 0.08 if target else 0.05
  views = np.empty((3, batch, p, p), np.float32)
  labels = np.zeros((3, batch, o, o), np.int32)
  lo = (p - o) // 2
  for vi, (normal, (a, b)) in enumerate(planes):
    img = -0.1 + noise * rng.standard_normal((batch, p, p), dtype=np.float32)
    # Smooth anatomy-like gradient so the background is not pure noise.
    tilt = rng.uniform(-0.1, 0.1, size=(batch, 2)).astype(np.float32)
    img += (tilt[:, 0, None, None] * u + tilt[:, 1, None, None] * v) / p
    if target:
      # Contrast-filled lumen: a large bright disc at a random place.
      lc = rng.uniform(-p / 2, p / 2, size=(batch, 2)).astype(np.float32)
      lr = rng.uniform(p / 6, p / 3, size=batch).astype(np.float32)
      lumen = (u - lc[:, 0, None, None]) ** 2 + (v - lc[:, 1, None, None]) ** 2 <= lr[
        :, None, None
      ] ** 2
      img += 0.3 * lumen + 0.1
    lab = np.zeros((batch, p, p), np.int32)
    for k in range(n_blobs):
      d_plane = pos[:, k, normal]
      r2 = radius[:, k] ** 2 - d_plane**2  # squared radius of the sphere's cut
      inside = (u - pos[:, k, a, None, None]) ** 2 + (v - pos[:, k, b, None, None]) ** 2 <= r2[
        :, None, None
      ]
      level = _CLASS_LEVEL[classes[:, k]] * (0.75 if target else 1.0)
      img = np.where(
        inside, level[:, None, None] + noise * rng.standard_normal(img.shape, dtype=np.float32), img
      )
      lab = np.where(inside, classes[:, k, None, None], lab)
    views[vi] = img
    labels[vi] = lab[:, lo : lo + o, lo : lo + o]
  return views[..., None], labels


def source_batch(
  config: ml_collections.ConfigDict,
  seed: int,
  step: int,
  batch_size: int | None = None,
  stream: str = "source",
) -> dict[str, np.ndarray]:
  """Labelled source batch {"views" (3, B, P, P, 1), "labels" (3, B, o, o)} for (seed, step)."""
  s = config.sampling
  b = batch_size or (s.source_threshold + s.source_uniform + s.source_labelled)
  views, labels = _scene(config, _rng(seed, stream, step), b, target=False)
  return {"views": views, "labels": labels}


def target_batch(
  config: ml_collections.ConfigDict,
  seed: int,
  step: int,
  batch_size: int | None = None,
  stream: str = "target",
) -> dict[str, np.ndarray]:
  """Unlabelled target-domain batch {"views" (3, B, P, P, 1)} for (seed, step)."""
  b = batch_size or config.sampling.critic_batch
  views, _ = _scene(config, _rng(seed, stream, step), b, target=True)
  return {"views": views}


@dataclasses.dataclass(frozen=True)
class SyntheticData:
  """Step-indexed synthetic streams with the interface of `cac_jax.train.data.Streams`."""

  config: ml_collections.ConfigDict
  seed: int = 0

  def source(self, step: int) -> dict[str, np.ndarray]:
    return source_batch(self.config, self.seed, step)

  def source_critic(self, step: int) -> dict[str, np.ndarray]:
    b = self.config.sampling.critic_batch
    return {"views": source_batch(self.config, self.seed, step, b, stream="source_critic")["views"]}

  def target_critic(self, step: int) -> dict[str, np.ndarray]:
    return target_batch(self.config, self.seed, step, stream="target_critic")

  def target_generator(self, step: int) -> dict[str, np.ndarray]:
    return target_batch(self.config, self.seed, step, stream="target_generator")


def ccta_volume(shape, seed, spacing=(1.5, 0.66, 0.66)):
  """A synthetic CCTA-like (z, y, x) HU volume and its candidate mask, for benchmarks.

  Body ellipse (40 HU) with lungs (-850), spine (700), heart ellipsoid (myocardium 60 HU,
  left chambers 380, right chambers 250), ascending/descending aorta (420 HU), eight coronary
  calcifications (600-1000 HU, 1-3 voxels radius) along the atrioventricular groove; noise
  SD 30 HU. Candidates: HU >= aorta mean + 3 SD inside the heart dilated by 10 mm.
  """
  rng = np.random.RandomState(seed)
  nz, ny, nx = shape
  z, y, x = np.ogrid[:nz, :ny, :nx]
  mm = lambda a, b, c: (z * spacing[0] - a, y * spacing[1] - b, x * spacing[2] - c)  # noqa: E731
  cz, cy, cx = nz * spacing[0] / 2, ny * spacing[1] / 2, nx * spacing[2] / 2
  hu = np.full(shape, -1000.0, np.float32)
  dz, dy, dx = mm(cz, cy, cx)
  hu[
    np.broadcast_to(
      (dy / (0.42 * ny * spacing[1])) ** 2 + (dx / (0.48 * nx * spacing[2])) ** 2 <= 1, shape
    )
  ] = 40
  for side in (-1, 1):
    dz, dy, dx = mm(cz, cy - 10, cx + side * 0.24 * nx * spacing[2])
    hu[np.broadcast_to((dy / 55) ** 2 + (dx / 40) ** 2 <= 1, shape)] = -850
  dz, dy, dx = mm(cz, cy + 0.33 * ny * spacing[1], cx)
  hu[np.broadcast_to(dy**2 + dx**2 <= 14**2, shape)] = 700  # vertebra
  hz, hy, hx = cz + 10, cy - 12, cx - 8
  dz, dy, dx = mm(hz, hy, hx)
  rad = (55.0, 50.0, 62.0)
  r2 = (dz / rad[0]) ** 2 + (dy / rad[1]) ** 2 + (dx / rad[2]) ** 2
  heart = r2 <= 1
  hu[heart] = 60
  dz, dy, dx = mm(hz, hy + 8, hx + 15)
  hu[heart & ((dz / 40) ** 2 + (dy / 30) ** 2 + (dx / 30) ** 2 <= 1)] = 380  # left chambers
  dz, dy, dx = mm(hz, hy - 15, hx - 25)
  hu[heart & ((dz / 40) ** 2 + (dy / 25) ** 2 + (dx / 25) ** 2 <= 1)] = 250  # right chambers
  aorta = np.zeros(shape, bool)
  for (ay, ax), zmax in (
    ((cy - 10, cx + 5), cz + 5),
    ((cy + 0.22 * ny * spacing[1], cx + 18), nz * spacing[0]),
  ):
    dz, dy, dx = mm(0, ay, ax)
    aorta |= np.broadcast_to((dy**2 + dx**2 <= 14**2) & (dz <= zmax), shape)
  hu[aorta] = 420
  for _ in range(8):  # calcifications on the AV groove (an ellipse around the heart's waist)
    t = rng.uniform(0, 2 * np.pi)
    p = (hz + rng.uniform(-20, 20), hy + 0.85 * rad[1] * np.sin(t), hx + 0.85 * rad[2] * np.cos(t))
    dz, dy, dx = mm(*p)
    hu[(dz**2 + dy**2 + dx**2) <= rng.uniform(0.7, 2.0) ** 2] = rng.uniform(600, 1000)
  hu += rng.normal(0, 30, shape).astype(np.float32)
  vals = hu[aorta]
  threshold = vals.mean() + 3 * vals.std()
  dil = r2 <= ((1 + 10 / min(rad)) ** 2)  # ~10 mm dilation of the ellipsoid
  return hu, (hu >= threshold) & dil


def labelled_case(case_id: str, shape, seed: int) -> Case:
  """A labelled NCCT-like case for sampler benchmarks.

  Soft tissue and noise, a bright 'spine', a heart box and 40 labelled calcium blobs.
  """
  rng = np.random.default_rng(seed)
  z, y, x = shape
  hu = rng.normal(40.0, 25.0, size=shape).astype(np.float32)
  hu[:, : y // 8] = -1000.0  # air in front of the chest
  hu[:, int(0.75 * y) : int(0.85 * y), int(0.45 * x) : int(0.55 * x)] = 700.0  # spine
  heart = np.zeros(shape, bool)
  heart[z // 5 : 4 * z // 5, y // 4 : 3 * y // 4, x // 4 : 3 * x // 4] = True
  labels = np.zeros(shape, np.int32)
  for k in range(40):
    cz, cy, cx = (
      rng.integers(z // 5, 4 * z // 5),
      rng.integers(y // 4, 3 * y // 4),
      rng.integers(x // 4, 3 * x // 4),
    )
    cls = 1 + k % 6
    sl = (slice(cz, cz + 2), slice(cy, cy + 3), slice(cx, cx + 3))
    hu[sl] = 300.0 + 40 * cls
    labels[sl] = cls
  scan = Scan(hu=hu, spacing=(1.5, 0.66, 0.66))
  return Case(case_id, scan, "ncct", labels=labels, heart_mask=heart)
