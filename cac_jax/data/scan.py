"""The `Scan`: a HU volume with the geometry that places it in the patient.

Every stage takes and returns a `Scan`. Conventions:
  * `hu` is a float32 numpy array indexed (z, y, x).
  * `spacing` is (z, y, x) in mm, matching the array axes.
  * `origin` is the physical position (x, y, z) in mm (ITK/LPS convention) of voxel (0, 0, 0).
  * `direction` is ITK's 3x3 direction matrix (row-major); column k is the physical direction
    of the k-th ITK index axis (i.e. array axis x, y, z for k = 0, 1, 2).
  * `source`, when set, remembers the geometry and orientation of the file the scan was read
    from, so outputs can be written back on the input's own grid (see `cac_jax.data.volume_io`).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math
from typing import Any

import numpy as np


def voxel_volume_mm3(spacing: Sequence[float]) -> float:
  """Volume of one voxel in mm³ from a (z, y, x) spacing in mm.

  ValueError unless it is three positive finite numbers."""
  spacing = tuple(float(s) for s in spacing)
  if len(spacing) != 3 or any(not math.isfinite(s) or s <= 0 for s in spacing):
    raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm; got {spacing}")
  return float(np.prod(spacing))


@dataclasses.dataclass(frozen=True)
class SourceGeometry:
  """Geometry of the file a scan came from (ITK conventions, (x, y, z) order)."""

  size_xyz: tuple[int, int, int]
  spacing_xyz: tuple[float, float, float]
  origin_xyz: tuple[float, float, float]
  direction: tuple[float, ...]  # 9 numbers, row-major
  orientation: str  # e.g. "LPS", "RAS": the DICOM orientation code of the file's axes
  path: str = ""


@dataclasses.dataclass(frozen=True)
class Scan:
  """A CT volume in HU with its geometry.

  Attributes:
    hu: float32 array (z, y, x) in Hounsfield units.
    spacing: voxel size (z, y, x) in mm, all > 0.
    origin: physical position (x, y, z) in mm of voxel index (0, 0, 0).
    direction: 3x3 direction cosines, row-major, ITK convention (default identity = LPS).
    source: geometry of the original file, if the scan was read from one.
    meta: free-form, non-identifying metadata (e.g. {"kvp": 100, "domain": "ccta"}).
  """

  hu: np.ndarray
  spacing: tuple[float, float, float]
  origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
  direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
  source: SourceGeometry | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.hu.ndim != 3:
      raise ValueError(f"Scan.hu must be 3D (z, y, x); got shape {self.hu.shape}")
    if len(self.spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in self.spacing):
      raise ValueError(
        f"Scan.spacing must be three positive numbers (z, y, x) in mm; got {self.spacing}"
      )

  @property
  def shape(self) -> tuple[int, int, int]:
    return tuple(self.hu.shape)  # type: ignore[return-value]

  @property
  def voxel_volume_mm3(self) -> float:
    """Volume of one voxel in mm³."""
    return voxel_volume_mm3(self.spacing)

  @property
  def direction_matrix(self) -> np.ndarray:
    return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

  def with_array(self, array: np.ndarray, **changes) -> Scan:
    """Same geometry, another (z, y, x) array of the same shape (e.g. a label map)."""
    if array.shape != self.hu.shape and "spacing" not in changes:
      raise ValueError(f"array shape {array.shape} differs from scan shape {self.hu.shape}")
    return dataclasses.replace(self, hu=array, **changes)

  def index_to_physical(self, zyx: np.ndarray) -> np.ndarray:
    """Map (..., 3) voxel indices (z, y, x) to physical points (..., 3) (x, y, z) in mm."""
    zyx = np.asarray(zyx, dtype=np.float64)
    ijk = zyx[..., ::-1] * np.asarray(self.spacing[::-1])
    return ijk @ self.direction_matrix.T + np.asarray(self.origin)

  def physical_to_index(self, xyz: np.ndarray) -> np.ndarray:
    """Map (..., 3) physical points (x, y, z) in mm to continuous (z, y, x) indices."""
    xyz = np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin)
    ijk = xyz @ np.linalg.inv(self.direction_matrix).T / np.asarray(self.spacing[::-1])
    return ijk[..., ::-1]


@dataclasses.dataclass(frozen=True)
class Case:
  """One data-set case: a scan with optional label map and masks on the same grid.

  labels: int32 (z, y, x) class indices 0..6 (see `cac_jax.labels`), or None if unlabelled.
  heart_mask, aorta_mask: bool (z, y, x) or None.
  left_main: bool (z, y, x) LAD-class voxels the reference labels as left main, or None when
    the labels do not separate it (`labels.left_main_mask`).
  domain: "ncct" or "ccta".
  """

  case_id: str
  scan: Scan
  domain: str
  labels: np.ndarray | None = None
  heart_mask: np.ndarray | None = None
  aorta_mask: np.ndarray | None = None
  left_main: np.ndarray | None = None
