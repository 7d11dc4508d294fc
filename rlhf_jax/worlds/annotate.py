"""Simulated annotators judging pairs from the gold reward difference (Bradley-Terry noise).

The population, its assignment of annotators to items, timestamps, response times,
golden items and drift change points come from `rlhf_jax.feedback.simulate_annotations`
(two classes: a = 0, b = 1). Only the labels are redrawn here, from the world's gold
difference `d_i = r(a_i) - r(b_i)` (in units of its spread over pairs) instead of a
fixed accuracy, so that close calls are hard and clear ones easy, for every annotator:

| type | P(label = a) for item i, annotator m (tau_m its temperature) |
|---|---|
| good | sigmoid(d_i / tau_m), tau_m ~ U(good_temperature) |
| position_biased | position_bias + (1 - position_bias) * sigmoid(d_i / tau_m) |
| length_biased | length_bias * [a is longer] + (1 - length_bias) * sigmoid(d_i / tau_m) (equal lengths: 1/2) |
| spammer | 1/2 |
| adversary | adversary_flip * sigmoid(-d_i / tau_m) + (1 - adversary_flip) / 2 |
| fast | sigmoid(d_i / tau_m), tau_m ~ U(fast_temperature) |
| drifting | as good before its change time, then tau_m ~ U(drift_temperature_after) |

This is the Bradley-Terry model of a noisy judge (Bradley & Terry 1952; the temperature
is the Thurstone-style discriminal noise): the probability of preferring a grows with the
gold difference, and a larger temperature flattens it toward a coin flip. The expert
(`expert_labels`) is the same model with a small `expert_temperature`. Every label has a
price: `crowd_cost` per crowd label, `expert_cost` per expert label (`Costs`).

Golden items keep the simulator's choice of which items are golden; their known answer is
the gold preference (`d_i > 0` -> a).
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from rlhf_jax import feedback

__all__ = ["Costs", "CrowdConfig", "CrowdLabels", "expert_labels", "label_probability", "simulate_crowd"]

_TYPE = {name: index for index, name in enumerate(feedback.ANNOTATOR_TYPES)}


@dataclasses.dataclass(frozen=True)
class Costs:
  """Price of one label, in arbitrary money units."""

  crowd: float = 1.0
  expert: float = 10.0


@dataclasses.dataclass(frozen=True)
class CrowdConfig:
  """The crowd: the population of `feedback.SimulationConfig` plus Bradley-Terry temperatures.

  Attributes:
    num_annotators, annotations_per_item, *_share, golden_rate, position_bias,
      length_bias, adversary_flip, drift_window, response_ms_median,
      fast_response_ms_median, repeat_rate: as in `feedback.SimulationConfig`.
    good_temperature: (low, high) temperature range of good, biased and drifting (before
      the change) annotators, in units of the spread of gold differences.
    fast_temperature: range for fast annotators.
    drift_temperature_after: range for drifting annotators after their change.
    expert_temperature: temperature of the expert.
  """

  num_annotators: int = 40
  annotations_per_item: int = 3
  good_share: float = 0.7
  position_biased_share: float = 0.05
  length_biased_share: float = 0.05
  spammer_share: float = 0.05
  adversary_share: float = 0.05
  fast_share: float = 0.05
  drifting_share: float = 0.05
  golden_rate: float = 0.05
  position_bias: float = 0.6
  length_bias: float = 0.6
  adversary_flip: float = 0.9
  drift_window: tuple[float, float] = (0.3, 0.7)
  response_ms_median: float = 9000.0
  fast_response_ms_median: float = 1500.0
  repeat_rate: float = 0.0
  good_temperature: tuple[float, float] = (0.2, 0.6)
  fast_temperature: tuple[float, float] = (3.0, 10.0)
  drift_temperature_after: tuple[float, float] = (3.0, 10.0)
  expert_temperature: float = 0.05

  def simulation_config(self, num_items: int) -> feedback.SimulationConfig:
    """The population part, as the feedback simulator's config (two classes)."""
    return feedback.SimulationConfig(
        num_items=num_items, num_annotators=self.num_annotators,
        annotations_per_item=self.annotations_per_item, num_classes=2,
        good_share=self.good_share, position_biased_share=self.position_biased_share,
        length_biased_share=self.length_biased_share, spammer_share=self.spammer_share,
        adversary_share=self.adversary_share, fast_share=self.fast_share, drifting_share=self.drifting_share,
        golden_rate=self.golden_rate, position_bias=self.position_bias, length_bias=self.length_bias,
        adversary_flip=self.adversary_flip, drift_window=self.drift_window,
        response_ms_median=self.response_ms_median, fast_response_ms_median=self.fast_response_ms_median,
        repeat_rate=self.repeat_rate)


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def label_probability(difference: np.ndarray, annotator_type: np.ndarray, temperature: np.ndarray,
                      a_is_longer: np.ndarray, config: CrowdConfig) -> np.ndarray:
  """P(label = a) per annotation (the table of the module docstring).

  Args:
    difference: [N] gold difference d of the annotated item.
    annotator_type: [N] index into `feedback.ANNOTATOR_TYPES`.
    temperature: [N] temperature of the annotator at the time of the annotation.
    a_is_longer: [N] float, 1 when a is longer, 0 when shorter, 0.5 when equal.
    config: the crowd config (biases, flip probability).
  """
  bt = _sigmoid(np.asarray(difference) / np.asarray(temperature))
  t = np.asarray(annotator_type)
  return np.select(
      [t == _TYPE["position_biased"], t == _TYPE["length_biased"], t == _TYPE["spammer"], t == _TYPE["adversary"]],
      [config.position_bias + (1 - config.position_bias) * bt,
       config.length_bias * np.asarray(a_is_longer) + (1 - config.length_bias) * bt,
       np.full_like(bt, 0.5),
       config.adversary_flip * (1.0 - bt) + (1 - config.adversary_flip) / 2],
      bt)


@dataclasses.dataclass(frozen=True)
class CrowdLabels:
  """Crowd labels of a set of pairs (NumPy), with everything known about how they arose.

  Per annotation [N]: items, annotators, labels (0 = a, 1 = b), timestamps, response_ms,
  is_golden, golden_labels (-1 when not golden), after_drift, probability_a (the model's
  P(label = a)).  Per item: truth (0 = a when d > 0).  Per annotator: types, temperature,
  temperature_after, change_times.  `simulation` is the population draw behind them.
  """

  items: np.ndarray
  annotators: np.ndarray
  labels: np.ndarray
  timestamps: np.ndarray
  response_ms: np.ndarray
  is_golden: np.ndarray
  golden_labels: np.ndarray
  after_drift: np.ndarray
  probability_a: np.ndarray
  truth: np.ndarray
  types: np.ndarray
  temperature: np.ndarray
  temperature_after: np.ndarray
  simulation: feedback.Simulation

  @property
  def num_annotations(self) -> int:
    return int(self.items.shape[0])

  def cost(self, costs: Costs) -> float:
    return self.num_annotations * costs.crowd


def simulate_crowd(seed: int, difference: np.ndarray, lengths: np.ndarray, config: CrowdConfig) -> CrowdLabels:
  """Crowd labels for pairs with gold differences `difference` [P] and `lengths` [P, 2].

  Deterministic given `seed`: the population comes from `feedback.simulate_annotations`
  with `jax.random.key(seed)`, temperatures and labels from a NumPy generator seeded
  with `seed`.
  """
  difference = np.asarray(difference, np.float64)
  num_items = int(difference.shape[0])
  sim = feedback.simulate_annotations(jax.random.key(seed), config.simulation_config(num_items))
  rng = np.random.default_rng([seed, 0xC70D])
  m = config.num_annotators
  types = sim.annotator_types
  uniform = rng.random((3, m))
  def draw(bounds, u):
    return bounds[0] + (bounds[1] - bounds[0]) * u
  temperature = np.where(types == _TYPE["fast"], draw(config.fast_temperature, uniform[1]),
                         draw(config.good_temperature, uniform[0]))
  temperature_after = np.where(types == _TYPE["drifting"], draw(config.drift_temperature_after, uniform[2]),
                               temperature)
  items, annotators = sim.items, sim.annotators
  lengths = np.asarray(lengths)
  a_is_longer = np.sign(lengths[:, 0] - lengths[:, 1]) * 0.5 + 0.5
  tau = np.where(sim.after_drift, temperature_after[annotators], temperature[annotators])
  prob_a = label_probability(difference[items], types[annotators], tau, a_is_longer[items], config)
  labels = np.where(rng.random(items.shape[0]) < prob_a, feedback.A_PREFERRED, feedback.B_PREFERRED)
  truth = np.where(difference > 0, feedback.A_PREFERRED, feedback.B_PREFERRED).astype(np.int32)
  golden_labels = np.where(sim.is_golden, truth[items], -1).astype(np.int32)
  return CrowdLabels(
      items=items, annotators=annotators, labels=labels.astype(np.int32), timestamps=sim.timestamps,
      response_ms=sim.response_ms, is_golden=sim.is_golden, golden_labels=golden_labels,
      after_drift=sim.after_drift, probability_a=prob_a, truth=truth, types=types,
      temperature=temperature, temperature_after=temperature_after, simulation=sim)


def expert_labels(seed: int, difference: np.ndarray, temperature: float) -> np.ndarray:
  """One expert label per item (0 = a): a Bradley-Terry judge at `temperature`."""
  rng = np.random.default_rng([seed, 0xE4B])
  prob_a = _sigmoid(np.asarray(difference, np.float64) / temperature)
  return np.where(rng.random(prob_a.shape) < prob_a, feedback.A_PREFERRED, feedback.B_PREFERRED).astype(np.int32)
