"""Stage 5, studies on phantoms that combine every earlier stage.

The paper's experiment (Table 2, gates, oracle, snapshot selection), the tissue breakdown of
false positives and the heart-region check.
"""
