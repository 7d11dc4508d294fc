"""Simulated worlds with known truth, for ablations and `make run`.

`graded`: a graded gold reward over token sequences and preference pairs with many close
calls. `annotate`: simulated annotators (the `feedback.simulate_annotations` population)
judging pairs from the gold difference through a Bradley-Terry noise model, an expert, a
price per label. `models`: small pure-JAX reward model and unigram DPO policy, trained for
all seeds in one vmapped program. `hh`: the HH-RLHF pairs of ../shared/data as a semi-real
world whose truth is the data set's label. `experiments`: the cell functions of
experiments/*/config.py. `compare`: the comparison `make run` prints.
"""
