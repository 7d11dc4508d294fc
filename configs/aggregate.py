r"""Aggregate repeated human annotations into labels with a confidence, and report on them.

Launch (the duck data set of ../shared/data/crowd, 4,212 answers, 108 items, 39 workers):

  python scripts/aggregate.py --config=configs/aggregate.py \
    --config.input=../shared/data/crowd/duck/answers.csv --config.format=crowd_csv \
    --config.method=dawid_skene --config.output_dir=/tmp/duck

It writes /tmp/duck/{labels.csv, annotators.csv, rejects.jsonl, report.md, summary.json}
and the PNG plots that report.md shows, with the accuracy against the truth.csv found
next to answers.csv. Its result (counts, agreement, accuracy, time) is recorded in
docs/benchmarks.md ("Demo runs: the configs and make run"); every method's accuracy on the three crowd data sets in docs/feedback.md.

Pairwise preference records (JSONL/CSV/Parquet, schema in rlhf_jax/feedback/io/records.py):

  python scripts/aggregate.py --config=configs/aggregate.py --config.input=prefs.jsonl \
    --config.format=jsonl --config.method=dawid_skene --config.output_dir=runs/labels

Declare the classes when you know them: `--config.classes=0,1` rejects an answer outside
them (a typo such as `O` or `yes`) into rejects.jsonl with its line, instead of making it
a class of its own; for pairwise records `--config.classes=a,b` says the task has no ties.

`--config.method` is one of majority_vote, weighted_vote, wawa, zero_based_skill, kos (two
classes; `num_iters` rounds), mmsr, dawid_skene (default), one_coin_dawid_skene,
bayesian_dawid_skene, mace, glad, and crowd_bt (item-level
Crowd-BT over the responses of arena-style comparisons, which need `response_a_id` /
`response_b_id` or the response texts). `configs/aggregate.py:method=glad` sets the
method from the config argument. Any field below can be overridden with
`--config.<field>=<value>`; an unknown field is an error, not a silently ignored setting.
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
  """`arg`: optional "method=NAME" (and/or "format=NAME"), comma-separated."""
  config = ml_collections.ConfigDict()

  # ---- Input and output.
  config.input = ""  # Annotation file to read (required); .gz is decompressed.
  config.format = "crowd_csv"  # crowd_csv (question,worker,answer) | jsonl | csv | parquet.
  config.output_dir = ""  # Directory for labels.csv, annotators.csv, report.md, ... (required).
  # Gold labels (CSV `question,truth`) for an accuracy line; "" uses truth.csv next to
  # the input when it exists.
  config.truth = ""
  # Expert decisions (CSV `question,truth`): expert agreement of the annotators, and
  # the label of every item they cover (its label_source becomes "expert").
  config.expert_labels = ""
  config.duplicate_policy = "keep_last"  # keep_last | keep_first | keep_all | reject_all.
  # The classes of the task, comma-separated in class order ("0,1"; pairwise: a subset
  # of a,b,tie with a and b). An answer outside them is rejected with its line. "" (not
  # declared): every answer seen is a class (pairwise: a, b, and tie if anyone chose it).
  config.classes = ""
  # Without declared classes: a class given by fewer than this share of the answers is
  # reported first in the report as a probable typo (0 turns the check off).
  config.rare_class_share = 0.01
  # Truth about simulated annotators (CSV `annotator,type,change_time`): the report then
  # states the drift detection rate and delay; "" uses annotator_truth.csv next to the
  # input when it exists.
  config.annotator_truth = ""

  # ---- Aggregation.
  config.method = "dawid_skene"  # See the module docstring for the names.
  # EM iterations (L-BFGS steps for crowd_bt); the iterations each method needs on the
  # crowd data sets, and its accuracy there, are in docs/feedback.md.
  config.num_iters = 100
  config.tol = 1e-5  # Stop EM once no posterior moves by this much; 0 runs every iteration.
  # What `tol` bounds in the Dawid-Skene family: "posteriors" (above) or "objective" (stop
  # once the per-annotation log-likelihood gains less than tol, crowd-kit's kind of rule:
  # fewer iterations, a few labels not yet settled). --follow stops on the posteriors.
  config.stop_on = "posteriors"
  config.seed = 0  # PRNG seed (MACE restarts, random tie-breaks).
  config.tie_break = "lowest"  # Vote ties: lowest | random | uniform.
  config.smoothing = 0.0  # Pseudo-count on confusion cells (dawid_skene, one_coin_dawid_skene).

  config.bayesian = ml_collections.ConfigDict()
  config.bayesian.method = "map"  # map | variational.
  config.bayesian.prior_correct = 2.0  # Dirichlet concentration on the confusion diagonal.
  config.bayesian.prior_incorrect = 1.0  # Dirichlet concentration off the diagonal.
  config.bayesian.prior_class = 1.0  # Dirichlet concentration of the class prior.

  config.mace = ml_collections.ConfigDict()
  config.mace.method = "vb"  # vb (variational Bayes) | em.
  config.mace.num_restarts = 10  # Random restarts (vmapped); the best objective wins.

  config.glad = ml_collections.ConfigDict()
  config.glad.m_step_iters = 5  # L-BFGS steps per M-step.

  config.crowd_bt = ml_collections.ConfigDict()
  config.crowd_bt.ties = "split"  # A tie: split (one win each way) | drop.
  config.crowd_bt.position_bias = True  # Fit a per-annotator bias toward response a.
  config.crowd_bt.optimizer = "optax"  # optax (joint L-BFGS) | em.
  config.crowd_bt.score_prior_var = 1.0  # Variance of the Gaussian prior on scores.

  # ---- Routing: items below a threshold go to expert review, out of training.
  config.routing = ml_collections.ConfigDict()
  # Review when the label's confidence is below: its posterior, or for majority_vote and
  # weighted_vote the (weighted) share of the item's votes that agree with it.
  config.routing.confidence_threshold = 0.7
  # Review when the item's pairwise agreement is below (unset: not used; items with a
  # single annotation have no agreement and then go to review).
  config.routing.agreement_threshold = config_dict.placeholder(float)

  # ---- Annotator weights: (golden*g + expert*e + temporal*t) / (sum of the coefficients
  # with data), times fast_penalty when the median response is under fast_threshold_ms.
  config.weights = ml_collections.ConfigDict()
  config.weights.golden_coef = 0.4  # Golden-set accuracy.
  config.weights.expert_coef = 0.4  # Agreement with expert labels.
  config.weights.temporal_coef = 0.2  # Same item, different days, same answer.
  config.weights.fast_threshold_ms = 3000.0  # "Fast" median response time (ms).
  config.weights.fast_penalty = 0.7  # Weight multiplier for fast annotators.
  config.weights.min_count = 1  # Observations a metric needs to count.
  # weighted_vote's weights: calibration (the formula above) | reliability (dawid_skene's)
  # | auto (calibration when any annotator has golden, expert or repeat data).
  config.weights.source = "auto"

  # Target share of golden (known-answer) annotations per annotator; annotators below
  # it are listed in the report as under-calibrated.
  config.golden_rate = 0.07

  # ---- Drift (needs timestamps). Verdicts from a change-point test on each annotator's
  # agreement with the reference answers (golden, else expert, else aggregated label):
  # drift = a significant drop from at least min_agreement to below it; always bad =
  # below min_agreement without such a drop. Beside it, level monitors: Bernoulli CUSUM
  # on golden correctness, Page-Hinkley on agreement with the other annotators.
  config.drift = ml_collections.ConfigDict()
  config.drift.alpha = 0.05  # Test level: at most this share of unchanged annotators is called drift.
  config.drift.min_segment = 10  # Fewest annotations on each side of a change point.
  config.drift.num_permutations = 999  # Permutations of the test's null distribution.
  config.drift.min_agreement = 0.6  # Agreement an acceptable annotator reaches.
  config.drift.cusum_p0 = 0.9  # In-control golden accuracy.
  config.drift.cusum_p1 = 0.6  # Accuracy to detect.
  config.drift.cusum_threshold = 5.0  # Decision interval (log-likelihood ratio).
  config.drift.ph_delta = 0.05  # Page-Hinkley tolerated change.
  config.drift.ph_threshold = 8.0  # Page-Hinkley lambda.
  config.drift.ph_min_samples = 30  # No Page-Hinkley alarm before this many annotations.

  # ---- Report.
  config.report = ml_collections.ConfigDict()
  config.report.plots = True  # Write the PNG plots.
  config.report.num_confusion = 6  # Confusion matrices of the most active annotators.
  config.report.num_drift = 6  # Drift timelines shown (alarmed annotators first).
  config.progress = "auto"  # tqdm progress bar: auto (inputs of 8 MiB or more) | on | off.

  if arg:
    for part in str(arg).split(","):
      key, sep, value = part.partition("=")
      if not sep or key.strip() not in ("method", "format"):
        raise ValueError(
            f"configs/aggregate.py: unknown argument {part!r}; expected method=NAME or format=NAME.")
      config[key.strip()] = value.strip()
  return config
