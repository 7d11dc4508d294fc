"""The one contract every training objective follows, offline and online alike.

An objective is a pure loss function plus a description of what it needs:

    @register("dpo", settings=DPOSettings, data="pairs", model="policy", reference=True,
              summary=evaluate.implicit_reward_metrics)
    def dpo(params, batch, rng, *, model, settings, layout):
      ...
      return weighted_sum(per_example, batch), {"loss": per_example, ...}

- `settings` is a frozen dataclass of the objective's hyper-parameters: the config's
  `loss` section is built from its fields (`config_defaults`), and the loop turns that
  section back into an instance once, at the top (`settings_from`). A default that a
  loss function of `rlhf_jax.losses` already has is read from that function's
  signature (`loss_default`), so every default has one home.
- `layout` (`Layout`) says how pairs sit in the batch (prompt sharing); padding-free
  batches announce themselves by their `packed_tokens`.
- The loss returns a scalar to minimise and a dict of per-example [B] outputs (names
  starting with "label_" carry labels to the evaluation and are not averaged).

Offline objectives (`data` "pairs", "sequences", "unpaired") are trained by
`train.loop` on batches of a data set. Online objectives (`data` "rollouts") are
trained by `rlhf_jax.rl` on batches it makes from the policy's own samples: for them
`prepare(rollout, settings) -> batch` turns a scored `Rollout` into the update's batch
(advantages, returns, pairs; every array [rows, ...], so the update can shuffle and cut
it into minibatches), `value_model` asks for a critic trained alongside the policy
(params {"policy", "value"}, the network `train.networks.PolicyWithValue`), and
`reference` for the frozen reference's per-token log-probs in the rollout. Their
`layout.rollout` (`RolloutLayout`) says where the completion tokens sit in a row and
at which temperature they were drawn. Both kinds use the same train step (`train.step`).

KL control (online): settings with a `kl_coef` field get that coefficient as
`Rollout.kl_coef`; when they also have `adaptive_kl_target > 0` the loop adapts it after
every iteration with `losses.adaptive_kl_update` (Ziegler et al. 2019), keeping it in
the checkpointed state. The controller lives in the loop, not in `prepare`, because it
carries state from one iteration to the next.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
from flax import struct

from rlhf_jax.registry import Registry
from rlhf_jax.train.shared_prompt import SharedPromptLayout

__all__ = [
    "DATA_KINDS",
    "MODEL_KINDS",
    "Layout",
    "OBJECTIVES",
    "Objective",
    "Rollout",
    "RolloutLayout",
    "check_choice",
    "config_defaults",
    "get",
    "loss_default",
    "names",
    "register",
    "settings_from",
    "weighted_sum",
]

Batch = Mapping[str, jax.Array]
ObjectiveFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]

OFFLINE_DATA = ("pairs", "sequences", "unpaired")
DATA_KINDS = OFFLINE_DATA + ("rollouts",)
MODEL_KINDS = ("policy", "reward")


@dataclasses.dataclass(frozen=True)
class RolloutLayout:
  """Where the tokens of a rollout sit and how they were drawn (online objectives).

  A rollout row is [left-padded prompt | completion]: `prompt_length` P slots, then
  `completion_length` N (`rlhf_jax.models.generate`'s `Samples.tokens`), so completion
  token j is at slot P + j and is predicted by the logits at slot P - 1 + j.

  Attributes:
    prompt_length: P, the prompt slots of every row.
    completion_length: N, the sampler's `max_new_tokens`.
    temperature: the sampling temperature; online objectives measure the log-probs of
      the policy and the reference on `logits / temperature`, the distribution the
      tokens were drawn from (Huang et al. 2024, arXiv 2403.17031, detail "temperature
      in the training forward pass"). 0 (greedy) counts as 1.
  """

  prompt_length: int
  completion_length: int
  temperature: float = 1.0

  @property
  def logit_slots(self) -> jax.Array:
    """int [N]: the slots whose logits predict the completion tokens."""
    return jnp.arange(self.completion_length, dtype=jnp.int32) + (self.prompt_length - 1)

  @property
  def logit_scale(self) -> float:
    """1 / temperature (1 for greedy sampling)."""
    return 1.0 / self.temperature if self.temperature > 0 else 1.0


@dataclasses.dataclass(frozen=True)
class Layout:
  """How the examples of a batch are laid out (plain values read from `config.data`,
  or from `config.rollout` for online objectives).

  Attributes:
    shared_prompt: pairs packed as one row [prompt | chosen | rejected]
      (`shared_prompt.SharedPromptLayout`), or None for two rows per pair.
    rollout: online objectives: the rollout rows (`RolloutLayout`), else None.
  """

  shared_prompt: SharedPromptLayout | None = None
  rollout: RolloutLayout | None = None


@struct.dataclass
class Rollout:
  """What `prepare` of an online objective receives: R = prompts x group_size rows
  (prompt-major: the `group_size` samples of a prompt are consecutive), N completion
  slots (`RolloutLayout`). Arrays after a row's end hold 0 / False.

  Attributes:
    tokens: int [R, P + N], the left-padded prompt then the completion.
    attention_mask: bool [R, P + N], true on real tokens.
    completion_mask: bool [R, N], true on completion tokens (the stop token included).
    logprobs: float32 [R, N], log-prob of each token under the distribution it was
      drawn from (the sampler's; the "old" log-probs of PPO ratios).
    scores: float32 [R], the reward source's score of each completion.
    stopped: bool [R], the completion ended with the end-of-sequence (or a stop) token.
    kl_coef: float32 scalar, the current KL coefficient (see the module docstring).
    ref_logprobs: float32 [R, N] of the frozen reference (objectives with `reference`).
    values: float32 [R, N], the critic's value of the state before each completion token
      (objectives with `value_model`).
    group_size: samples per prompt (static).
  """

  tokens: jax.Array
  attention_mask: jax.Array
  completion_mask: jax.Array
  logprobs: jax.Array
  scores: jax.Array
  stopped: jax.Array
  kl_coef: jax.Array
  ref_logprobs: jax.Array | None = None
  values: jax.Array | None = None
  group_size: int = struct.field(pytree_node=False, default=1)


def loss_default(fn: Callable[..., Any], name: str) -> Any:
  """The default of keyword argument `name` of loss function `fn` (its one home)."""
  parameter = inspect.signature(fn).parameters.get(name)
  if parameter is None or parameter.default is inspect.Parameter.empty:
    raise ValueError(f"{fn.__qualname__} has no argument {name!r} with a default.")
  return parameter.default


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
  """Raises ValueError naming the config field `loss.<name>` and its valid values."""
  if value not in choices:
    raise ValueError(f"config loss.{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def _default_denominator(batch: Batch, settings: Any) -> jax.Array:
  del settings
  if "weight" in batch:
    return jnp.sum(jnp.asarray(batch["weight"], jnp.float32))
  first = next(iter(batch.values()))
  return jnp.asarray(first.shape[0], jnp.float32)


def _mean_summary(outputs: Mapping[str, Any], num_bins: int) -> dict[str, float]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  del num_bins
  return {name: float(np.mean(value)) for name, value in outputs.items()}


@dataclasses.dataclass(frozen=True)
class Objective:
  """A registered objective: the loss function and what it needs.

  Attributes:
    name: registry name (`config.objective`).
    fn: `(params, batch, rng, *, model, settings, layout) -> (loss, outputs)`.
    settings: frozen dataclass type of the hyper-parameters (the config's `loss`).
    data: batch kind, one of `DATA_KINDS`.
    model: network kind, one of `MODEL_KINDS`.
    reference: the batch must carry the frozen reference's log-probs.
    denominator: `(global_batch, settings) -> scalar` normaliser of the summed loss.
    extra_params: optional `(key, settings, data_info) -> dict` of parameters the
      objective learns besides the network's (e.g. annotator reliabilities).
    summary: `(per-example outputs of a data set, num_bins) -> metrics` for evaluation.
    prepare: online only: `(rollout: Rollout, settings) -> batch` (advantages, returns,
      pairs), a pure jit-able function.
    value_model: online only: a critic is trained with the policy; the parameters are
      {"policy": ..., "value": ...} and `model` is a `train.networks.PolicyWithValue`.
  """

  name: str
  fn: ObjectiveFn
  settings: type
  data: str
  model: str
  reference: bool = False
  denominator: Callable[[Batch, Any], jax.Array] = _default_denominator
  extra_params: Callable[..., dict[str, Any]] | None = None
  summary: Callable[..., dict[str, float]] = _mean_summary
  prepare: Callable[..., dict[str, jax.Array]] | None = None
  value_model: bool = False

  @property
  def online(self) -> bool:
    return self.data == "rollouts"


OBJECTIVES: Registry[Objective] = Registry("objective")


def register(
    name: str,
    *,
    settings: type,
    data: str,
    model: str,
    reference: bool = False,
    denominator: Callable[[Batch, Any], jax.Array] | None = None,
    extra_params: Callable[..., dict[str, Any]] | None = None,
    summary: Callable[..., dict[str, float]] | None = None,
    prepare: Callable[..., dict[str, jax.Array]] | None = None,
    value_model: bool = False,
    overwrite: bool = False,
) -> Callable[[ObjectiveFn], ObjectiveFn]:
  """Decorator adding an objective function to the registry under `name`."""
  if data not in DATA_KINDS:
    raise ValueError(f"objective {name!r}: data must be one of {DATA_KINDS}, got {data!r}.")
  if model not in MODEL_KINDS:
    raise ValueError(f"objective {name!r}: model must be one of {MODEL_KINDS}, got {model!r}.")
  if not (dataclasses.is_dataclass(settings) and isinstance(settings, type)):
    raise ValueError(f"objective {name!r}: settings must be a dataclass type, got {settings!r}.")
  if (prepare is not None or value_model) and data != "rollouts":
    raise ValueError(f"objective {name!r}: prepare and value_model are for online objectives (data='rollouts').")
  if data == "rollouts" and prepare is None:
    raise ValueError(f"objective {name!r}: an online objective needs `prepare` (rollout -> batch).")

  def decorator(fn: ObjectiveFn) -> ObjectiveFn:
    OBJECTIVES.register(name, Objective(
        name=name, fn=fn, settings=settings, data=data, model=model, reference=reference,
        denominator=denominator or _default_denominator, extra_params=extra_params,
        summary=summary or _mean_summary, prepare=prepare, value_model=value_model), overwrite=overwrite)
    return fn

  return decorator


def get(name: str) -> Objective:
  """The objective registered as `name`; an unknown name lists the close and valid ones."""
  return OBJECTIVES.get(name)


def names(*, online: bool | None = None) -> tuple[str, ...]:
  """Registered objective names, sorted (only the online or offline ones if asked)."""
  return tuple(n for n in OBJECTIVES.names() if online is None or OBJECTIVES.get(n).online == online)


def config_defaults(objective: Objective) -> dict[str, Any]:
  """The `loss` section of a config: the settings' fields and their defaults."""
  return dataclasses.asdict(objective.settings())


def settings_from(objective: Objective, section: Mapping[str, Any]) -> Any:
  """The objective's settings from the plain values of a config's `loss` section
  (`rlhf_jax.train.config.loss_settings` reads a config); unknown fields raise
  ValueError naming them."""
  values = dict(section)
  fields = {f.name for f in dataclasses.fields(objective.settings)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"objective {objective.name!r}: unknown loss field(s) {', '.join(unknown)}; "
                     f"valid fields: {', '.join(sorted(fields))}.")
  return objective.settings(**values)


def weighted_sum(per_example: jax.Array, batch: Batch) -> jax.Array:
  """sum_i weight_i * per_example_i / batch["loss_denominator"] (weights default to 1)."""
  weight = jnp.asarray(batch["weight"], jnp.float32) if "weight" in batch else 1.0
  denominator = jnp.asarray(batch["loss_denominator"], jnp.float32)
  # An all-zero-weight batch contributes nothing instead of 0 / 0.
  return jnp.sum(weight * per_example) / jnp.maximum(denominator, jnp.finfo(jnp.float32).tiny)
