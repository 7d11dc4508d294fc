"""Measures of the annotations and annotators: `agreement` (percent agreement, Cohen,
Fleiss, Krippendorff), `calibration` (per-annotator metrics and weights) and `drift`
(level monitors and the change-point test)."""
