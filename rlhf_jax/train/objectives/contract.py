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
`prepare(rollout, settings) -> batch` turns a scored rollout into the update's batch
(advantages, returns, pairs), `value_model` asks for a critic trained alongside the
policy (params {"policy", "value"}), and `reference` for the frozen reference's
per-token log-probs in the rollout. Both kinds use the same train step (`train.step`).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from rlhf_jax.registry import Registry
from rlhf_jax.train.shared_prompt import SharedPromptLayout

__all__ = [
    "DATA_KINDS",
    "MODEL_KINDS",
    "Layout",
    "OBJECTIVES",
    "Objective",
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
class Layout:
  """How the examples of a batch are laid out (plain values read from `config.data`).

  Attributes:
    shared_prompt: pairs packed as one row [prompt | chosen | rejected]
      (`shared_prompt.SharedPromptLayout`), or None for two rows per pair.
  """

  shared_prompt: SharedPromptLayout | None = None


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
    prepare: online only: `(rollout, settings) -> batch` (advantages, returns, pairs).
    value_model: online only: a critic is trained with the policy.
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


def settings_from(objective: Objective, section: Mapping[str, Any] | Any) -> Any:
  """The objective's settings from a config's `loss` section (a ConfigDict or a dict);
  unknown or missing fields raise ValueError naming them."""
  values = section.to_dict() if hasattr(section, "to_dict") else dict(section)
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
