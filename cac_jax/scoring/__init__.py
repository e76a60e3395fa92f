"""Stage 3, scoring (beside training; neither imports the other): whole-scan scoring.

Whole-scan inference, the heart region, false-positive reduction, Agatston and volume scores,
and the files `launch.score` writes (labels, lesions.csv, overlay, DICOM SEG, scores.json).
One path: `pipeline.prepare -> raw_classes -> finish` is what every scorer runs.
"""
