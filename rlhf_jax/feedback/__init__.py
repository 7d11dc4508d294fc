"""The human-feedback layer: annotations in, labels with a confidence out.

Layers: `io` (reading and writing), `models` (annotator models and aggregation),
`metrics` (agreement, calibration, drift) and `workflow` (golden items, routing, the
aggregation pipeline and its report; a campaign's streaming aggregation
`StreamingAggregator`, task planning `plan_tasks` and label audits `audit_labels`);
`types` and `simulate` serve them all. Every public name is importable from here.

Records (`read_annotations`) -> agreement (`fleiss_kappa`, `krippendorff_alpha`, ...) ->
annotator calibration and drift (`annotator_metrics`, `annotator_weights`,
`change_point_test` and `classify_drift` for drift against always-bad annotators,
`bernoulli_cusum`, `page_hinkley` as level monitors) -> aggregation (`majority_vote`, `dawid_skene`, ...,
each returning an `AggregationResult`; by name in `AGGREGATION_METHODS`) -> routing (`route_items`) and lineage
(`item_lineage`). `simulate_annotations` makes annotator populations with known truth.
Every algorithm takes flat integer arrays `items, annotators, labels` (see `types`).
"""

from rlhf_jax.feedback import io, metrics, models, workflow
from rlhf_jax.feedback.workflow import pipeline, report
from rlhf_jax.feedback.metrics.agreement import (
    ALPHA_LEVELS,
    coincidence_matrix,
    cohen_kappa,
    fleiss_kappa,
    item_agreement,
    item_majority_share,
    krippendorff_alpha,
    percent_agreement,
)
from rlhf_jax.feedback.models.dawid_skene import (
    BAYESIAN_METHODS,
    bayesian_dawid_skene,
    dawid_skene,
    e_step,
    m_step,
    one_coin_dawid_skene,
)
from rlhf_jax.feedback.models.kos import kos
from rlhf_jax.feedback.models.mmsr import mmsr
from rlhf_jax.feedback.models.registry import AGGREGATION_METHODS
from rlhf_jax.feedback.models.voting import (
    TIE_BREAKS,
    gold_majority_vote,
    majority_vote,
    wawa,
    weighted_vote,
    zero_based_skill,
)
from rlhf_jax.feedback.io.training import TrainingFileReport, write_training_file
from rlhf_jax.feedback.metrics.calibration import AnnotatorMetrics, annotator_metrics, annotator_weights
from rlhf_jax.feedback.workflow.golden import GoldenPlan, plan_golden_injection
from rlhf_jax.feedback.metrics.drift import (
    DETECTORS,
    DRIFT_STATUSES,
    ChangePointEvaluation,
    ChangePointResult,
    DetectorEvaluation,
    DriftResult,
    bernoulli_cusum,
    change_point_test,
    classify_drift,
    detect_annotator_drift,
    detect_change_points,
    evaluate_change_point_test,
    evaluate_detector,
    page_hinkley,
)
from rlhf_jax.feedback.models.crowd_bt import (
    CrowdBTResult,
    SimulatedComparisons,
    crowd_bt,
    crowd_bt_log_likelihood,
    crowd_bt_log_prior,
    simulate_comparisons,
)
from rlhf_jax.feedback.io.records import (
    DUPLICATE_POLICIES,
    FORMATS,
    FeedbackInputError,
    ReadReport,
    declared_classes,
    item_lineage,
    read_annotations,
    read_annotator_truth,
    read_truth,
)
from rlhf_jax.feedback.workflow.routing import (
    assign_hard_items,
    difficulty,
    price_items,
    resolve_expert_reviews,
    route_items,
    simulate_budget,
)
from rlhf_jax.feedback.simulate import (
    ANNOTATOR_TYPES,
    Simulation,
    SimulationConfig,
    simulate_annotations,
    to_encoded,
    to_records,
    write_annotator_truth,
    write_jsonl,
)
from rlhf_jax.feedback.models.spammer_models import (
    glad,
    glad_log_likelihood,
    glad_m_step_objective,
    mace,
    mace_log_likelihood,
)
from rlhf_jax.feedback.types import (
    A_PREFERRED,
    B_PREFERRED,
    PAIRWISE_CLASS_NAMES,
    TIE,
    AggregationResult,
    EncodedAnnotations,
)

# The campaign workflow (issue 20): streaming aggregation, task planning, label audits.
from rlhf_jax.feedback.workflow.stream import (  # pylint: disable=wrong-import-position
    STREAM_METHODS,
    BatchResult,
    StreamConfig,
    StreamingAggregator,
    follow,
)
from rlhf_jax.feedback.workflow.plan import (  # pylint: disable=wrong-import-position
    PlanConfig,
    TaskPlan,
    guideline_breakdown,
    plan_tasks,
    read_label_studio_export,
)
from rlhf_jax.feedback.workflow.audit import (  # pylint: disable=wrong-import-position
    AuditResult,
    audit_labels,
    dataset_balance,
)
