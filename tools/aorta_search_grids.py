#!/usr/bin/env python3
"""The CCTA threshold from the coarse aorta search against the search on the scan's own grid.

Resamples a CT (default: ../shared/realdata/contrast_chest_ct_1.nii.gz) to each
INPLANExSLICES grid as `launch.benchmark_score` builds its cases and prints, per grid, the
aortic-ROI threshold of `cac_jax.data.threshold.find_ascending_aorta` (every slice at the
scan's resolution) and of `find_ascending_aorta_coarse` (what scoring uses), their difference,
the ROI box centres and the seconds of each.

  python tools/aorta_search_grids.py 200x160 256x280 320x200 384x420 512x300 512x600
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from cac_jax.data import threshold, volume_io  # noqa: E402
from launch.benchmark_score import build_case  # noqa: E402


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("grids", nargs="+", help="INPLANExSLICES, e.g. 512x600")
  p.add_argument(
    "--image", default=os.path.join(ROOT, "..", "shared", "realdata", "contrast_chest_ct_1.nii.gz")
  )
  a = p.parse_args()
  roi = (18.0, 14.0, 14.0)
  print(
    "| grid | spacing z, y, x mm | own grid HU | coarse HU | difference HU | box centres mm | s own / coarse |"
  )
  print("|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for grid in a.grids:
      inplane, slices = (int(v) for v in grid.split("x"))
      path = os.path.join(tmp, f"{grid}.nii.gz")
      build_case(a.image, path, inplane, slices)
      scan = volume_io.read_scan(path)
      t = time.perf_counter()
      own = threshold._roi_from_lumen(scan, threshold.find_ascending_aorta(scan), roi, "auto")
      t_own = time.perf_counter() - t
      t = time.perf_counter()
      coarse = threshold._roi_from_lumen(
        scan, threshold.find_ascending_aorta_coarse(scan), roi, "auto"
      )
      t_coarse = time.perf_counter() - t
      centres = [
        tuple(round((b.start + b.stop) / 2 * s, 1) for b, s in zip(r.box, scan.spacing))
        for r in (own, coarse)
      ]
      print(
        f"| {inplane}² × {slices} | {', '.join(f'{s:.2f}' for s in scan.spacing)} | "
        f"{own.threshold_hu:.2f} | {coarse.threshold_hu:.2f} | "
        f"{coarse.threshold_hu - own.threshold_hu:+.2f} | {centres[0]} / {centres[1]} | "
        f"{t_own:.1f} / {t_coarse:.1f} |",
        flush=True,
      )


if __name__ == "__main__":
  main()
