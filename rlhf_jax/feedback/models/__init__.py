"""The annotator models: aggregation of repeated labels into posteriors per item.

`voting` (majority, weighted, Wawa, zero-based skill, GoldMV), `dawid_skene` (Dawid-Skene,
one-coin, Bayesian), `spammer_models` (MACE, GLAD), `kos` (Karger-Oh-Shah), `mmsr`
(M-MSR) and `crowd_bt` (pairwise comparisons); `registry.AGGREGATION_METHODS` names the
class-level ones. The class-level
models share one argument check (`_arrays`) and one EM driver with the segment sums
their steps need (`em`).
"""
