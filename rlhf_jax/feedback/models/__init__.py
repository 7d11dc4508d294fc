"""The annotator models: aggregation of repeated labels into posteriors per item.

`voting` (majority and weighted votes), `dawid_skene` (Dawid-Skene, one-coin, Bayesian),
`spammer_models` (MACE, GLAD) and `crowd_bt` (pairwise comparisons). The class-level
models share one argument check (`_arrays`) and one EM driver with the segment sums
their steps need (`em`).
"""
