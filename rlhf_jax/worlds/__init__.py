"""Simulated worlds with known truth, for ablations: a graded gold reward over token
sequences (`graded`), annotators judging pairs from it (`annotate`), small pure-JAX
learners (`models`), the HH-RLHF pairs with simulated annotators (`hh`), and the
experiments of `experiments/*/` (`experiments`)."""
