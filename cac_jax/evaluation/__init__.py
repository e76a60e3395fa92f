"""Stage 4, evaluation: detection metrics, the written reports and figures, and the gates.

Detection metrics against reference labels (volume- and lesion-wise sensitivity, FP volume,
F1, Spearman, Bland-Altman, kappa), the written reports and figures, and the benchmark gates
with the share of the oracle gap.
"""
