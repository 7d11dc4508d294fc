"""Small pure-JAX learners for the worlds: a reward model and a unigram DPO policy.

Both train full-batch with optax Adam inside one jitted `lax.scan`, and `jax.vmap` over a
leading seed axis: an ablation cell trains all its seeds in one compiled program (shapes
are equal across seeds by construction). They are the instruments of the ablations, sized
so that a cell of five seeds takes seconds (runtimes: experiments/*/README.md); the
project's transformer trainers (`rlhf_jax.train`) stay for real text.

Reward model (`RewardModelConfig`): a bag of token embeddings plus response features,

  r(x) = MLP([(1/n) sum_t E[x_t], log n, #distinct / n, [x_1 = OPEN], [x_n = CLOSE]])

trained on pairs (a, b) with a soft target p = P(a preferred) and a weight w per pair,

  loss = sum_i w_i * bradley_terry_soft(r(a_i), r(b_i), p_i) / sum_i w_i

(`rlhf_jax.losses.bradley_terry_soft`; a hard label is p in {0, 1}, unweighted training is
w = 1). With `annotator` indices the examples are single annotations and the loss is
Crowd-BT jointly with one reliability per annotator (`rlhf_jax.losses.crowd_bt`, Chen et al.
2013), eta_j = sigmoid(u_j) with a Beta(4, 2) prior on eta_j, learned with the model.

Policy (`PolicyConfig`): a unigram language model, log pi(y) = sum_t log softmax(theta)[y_t],
initialised at the reference pi_ref (the world's word frequencies), trained with a DPO-family
loss of `rlhf_jax.losses` on the log-ratios log pi(y) - log pi_ref(y). Its implicit reward
beta * (log pi(y) - log pi_ref(y)) ranks held-out pairs; accuracy against gold is reported.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax import losses
from rlhf_jax.worlds.graded import CLOSE, OPEN

__all__ = ["PolicyConfig", "RewardModelConfig", "pair_features", "train_policy", "train_reward_model"]


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
  """Hyperparameters of the bag-of-embeddings reward model."""

  embed_dim: int = 2
  hidden_dim: int = 16
  steps: int = 200
  learning_rate: float = 0.03
  weight_decay: float = 0.3


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  """Hyperparameters of the unigram DPO policy; `loss` names a `rlhf_jax.losses` function."""

  loss: str = "dpo"  # dpo | cdpo | robust | ipo
  beta: float = 0.1
  label_smoothing: float = 0.0  # the assumed flip rate of cdpo and robust DPO
  steps: int = 300
  learning_rate: float = 0.05


def pair_features(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """float32 [..., 4]: log n, #distinct / n, [x_1 = OPEN], [x_n = CLOSE] per response."""
  tokens = np.asarray(tokens)
  lengths = np.asarray(lengths)
  positions = np.arange(tokens.shape[-1])
  mask = positions < lengths[..., None]
  n = np.maximum(lengths, 1)
  big = np.where(mask, tokens, np.iinfo(np.int32).max - positions)
  ordered = np.sort(big, axis=-1)
  distinct = np.minimum(1 + np.sum((np.diff(ordered, axis=-1) != 0) & (ordered[..., 1:] < 2**30), axis=-1),
                        lengths)
  last = np.take_along_axis(tokens, np.maximum(lengths - 1, 0)[..., None], axis=-1)[..., 0]
  return np.stack([np.log(n), distinct / n, tokens[..., 0] == OPEN, last == CLOSE], axis=-1).astype(np.float32)


def _init_reward(key, vocab_size: int, config: RewardModelConfig, num_annotators: int):
  k1, k2, k3 = jax.random.split(key, 3)
  d, h = config.embed_dim, config.hidden_dim
  return {
      "embed": 0.1 * jax.random.normal(k1, (vocab_size, d)),
      "w1": jax.random.normal(k2, (d + 4, h)) / np.sqrt(d + 4),
      "b1": jnp.zeros(h),
      "w2": jax.random.normal(k3, (h,)) / np.sqrt(h),
      # eta = sigmoid(1.1) ~ 0.75, the mode of the Beta(4, 2) prior.
      "reliability_logit": jnp.full((max(num_annotators, 1),), 1.1),
  }


def _reward(params, tokens, lengths, features):
  mask = (jnp.arange(tokens.shape[-1]) < lengths[..., None]).astype(jnp.float32)
  pooled = jnp.sum(params["embed"][tokens] * mask[..., None], axis=-2) / jnp.maximum(lengths, 1)[..., None]
  hidden = jax.nn.gelu(jnp.concatenate([pooled, features], axis=-1) @ params["w1"] + params["b1"])
  return hidden @ params["w2"]


@functools.partial(jax.jit, static_argnames=("vocab_size", "config", "num_annotators"))
def _fit_reward(key, tokens, lengths, features, target, weight, annotator, eval_tokens, eval_lengths,
                eval_features, eval_prefers_a, *, vocab_size, config, num_annotators):
  def one_seed(key, tokens, lengths, features, target, weight, annotator, eval_tokens, eval_lengths,
               eval_features, eval_prefers_a):
    params = _init_reward(key, vocab_size, config, num_annotators)
    optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)

    def loss_fn(params):
      rewards = _reward(params, tokens, lengths, features)
      if num_annotators:
        eta = jax.nn.sigmoid(params["reliability_logit"])
        # target is the reported winner (1: a); crowd_bt takes the reported winner as chosen.
        chosen = jnp.where(target > 0.5, rewards[:, 0], rewards[:, 1])
        rejected = jnp.where(target > 0.5, rewards[:, 1], rewards[:, 0])
        per_example = losses.crowd_bt(chosen, rejected, eta[annotator])
        log_prior = jnp.sum(3.0 * jnp.log(eta) + 1.0 * jnp.log1p(-eta))  # Beta(4, 2)
        return jnp.sum(weight * per_example) / jnp.maximum(jnp.sum(weight), 1e-9) - log_prior / tokens.shape[0]
      per_example = losses.bradley_terry_soft(rewards[:, 0], rewards[:, 1], target)
      return jnp.sum(weight * per_example) / jnp.maximum(jnp.sum(weight), 1e-9)

    def step(carry, _):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss

    (params, _), loss_trace = jax.lax.scan(step, (params, optimizer.init(params)), None, length=config.steps)
    eval_rewards = _reward(params, eval_tokens, eval_lengths, eval_features)
    correct = (eval_rewards[:, 0] > eval_rewards[:, 1]) == eval_prefers_a
    return {"accuracy": jnp.mean(correct.astype(jnp.float32)), "final_loss": loss_trace[-1],
            "reliability": jax.nn.sigmoid(params["reliability_logit"]),
            "eval_rewards": eval_rewards}

  return jax.vmap(one_seed)(key, tokens, lengths, features, target, weight, annotator, eval_tokens, eval_lengths,
                            eval_features, eval_prefers_a)


def train_reward_model(seeds: np.ndarray, tokens, lengths, target, weight, eval_tokens, eval_lengths,
                       eval_prefers_a, *, vocab_size: int, config: RewardModelConfig = RewardModelConfig(),
                       annotator=None, num_annotators: int = 0) -> dict[str, np.ndarray]:
  """Trains one reward model per seed (leading axis S of every array) and evaluates it.

  Args:
    seeds: int [S], one initialisation key `jax.random.key(seed)` each.
    tokens, lengths: int [S, B, 2, L], [S, B, 2] training pairs.
    target: float [S, B] P(a preferred) (or, with `annotator`, 1 where the annotator chose a).
    weight: float [S, B] per-example weights (0 removes an example).
    eval_tokens, eval_lengths, eval_prefers_a: [S, E, 2, L], [S, E, 2], bool [S, E] held out.
    vocab_size: number of token ids.
    annotator: int [S, B] annotator of each example: Crowd-BT joint training.
    num_annotators: number of annotators (with `annotator`).

  Returns:
    NumPy dict: accuracy [S] on the held-out gold preferences, final_loss [S],
    reliability [S, M], eval_rewards [S, E, 2].
  """
  seeds = np.asarray(seeds)
  keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
  if annotator is None:
    annotator = np.zeros(np.shape(target), np.int32)
    num_annotators = 0
  out = _fit_reward(keys, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(pair_features(tokens, lengths)),
                    jnp.asarray(target, jnp.float32), jnp.asarray(weight, jnp.float32),
                    jnp.asarray(annotator, jnp.int32), jnp.asarray(eval_tokens), jnp.asarray(eval_lengths),
                    jnp.asarray(pair_features(eval_tokens, eval_lengths)), jnp.asarray(eval_prefers_a),
                    vocab_size=vocab_size, config=config, num_annotators=int(num_annotators))
  return jax.tree.map(np.asarray, out)


def _policy_logps(theta, tokens, lengths):
  logp = jax.nn.log_softmax(theta)
  mask = jnp.arange(tokens.shape[-1]) < lengths[..., None]
  return jnp.sum(jnp.where(mask, logp[tokens], 0.0), axis=-1)


def _dpo_loss(config: PolicyConfig, chosen_logratios, rejected_logratios):
  if config.loss == "dpo":
    return losses.dpo_sigmoid_loss(chosen_logratios, rejected_logratios, beta=config.beta)
  if config.loss == "cdpo":
    return losses.cdpo_loss(chosen_logratios, rejected_logratios, beta=config.beta,
                            label_smoothing=config.label_smoothing)
  if config.loss == "robust":
    return losses.dpo_robust_loss(chosen_logratios, rejected_logratios, beta=config.beta,
                                  label_smoothing=config.label_smoothing)
  if config.loss == "ipo":
    return losses.ipo_loss(chosen_logratios, rejected_logratios, beta=config.beta)
  raise ValueError(f"PolicyConfig.loss: expected one of dpo, cdpo, robust, ipo; got {config.loss!r}.")


@functools.partial(jax.jit, static_argnames=("config",))
def _fit_policy(reference_logits, tokens, lengths, target, eval_tokens, eval_lengths, eval_prefers_a, *, config):
  def one_seed(reference_logits, tokens, lengths, target, eval_tokens, eval_lengths, eval_prefers_a):
    optimizer = optax.adam(config.learning_rate)
    ref_logps = _policy_logps(reference_logits, tokens, lengths)

    def loss_fn(theta):
      logratios = _policy_logps(theta, tokens, lengths) - ref_logps  # [B, 2]
      forward = _dpo_loss(config, logratios[:, 0], logratios[:, 1])  # a chosen
      backward = _dpo_loss(config, logratios[:, 1], logratios[:, 0])  # b chosen
      return jnp.mean(target * forward + (1.0 - target) * backward)

    def step(carry, _):
      theta, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(theta)
      updates, opt_state = optimizer.update(grads, opt_state, theta)
      return (optax.apply_updates(theta, updates), opt_state), loss

    theta0 = reference_logits
    (theta, _), trace = jax.lax.scan(step, (theta0, optimizer.init(theta0)), None, length=config.steps)
    implicit = config.beta * (_policy_logps(theta, eval_tokens, eval_lengths)
                              - _policy_logps(reference_logits, eval_tokens, eval_lengths))
    correct = (implicit[:, 0] > implicit[:, 1]) == eval_prefers_a
    return {"accuracy": jnp.mean(correct.astype(jnp.float32)), "final_loss": trace[-1]}

  return jax.vmap(one_seed)(reference_logits, tokens, lengths, target, eval_tokens, eval_lengths, eval_prefers_a)


def train_policy(word_probs: np.ndarray, tokens, lengths, target, eval_tokens, eval_lengths, eval_prefers_a, *,
                 config: PolicyConfig = PolicyConfig()) -> dict[str, np.ndarray]:
  """Trains one unigram policy per seed (leading axis S of every array) with a DPO-family loss.

  `target` [S, B] is the probability that a is preferred: a hard label (0 or 1) gives the
  loss with the labelled side as chosen, a soft one the expectation of the two
  (`p * loss(a > b) + (1 - p) * loss(b > a)`). The reference is the unigram model of
  `word_probs` [S, V] (floored at 1e-6 so reserved ids have finite log-probability).
  Returns NumPy accuracy [S] (implicit reward on held-out gold) and final_loss [S].
  """
  reference = jnp.log(jnp.maximum(jnp.asarray(word_probs, jnp.float32), 1e-6))
  out = _fit_policy(reference, jnp.asarray(tokens), jnp.asarray(lengths), jnp.asarray(target, jnp.float32),
                    jnp.asarray(eval_tokens), jnp.asarray(eval_lengths), jnp.asarray(eval_prefers_a), config=config)
  return jax.tree.map(np.asarray, out)
