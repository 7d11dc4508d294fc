"""PyTorch twin of `rlhf_jax.models` and of the DPO / reward-model train steps, for
`benchmarks/train_step.py`.

The architecture is the one of `rlhf_jax.models.Transformer` (Llama-style): token
embedding, pre-norm blocks of RMSNorm -> causal grouped-query attention with half-split
RoPE -> residual, RMSNorm -> SwiGLU -> residual, a final RMSNorm and an untied output
projection; `RewardModel` reads a linear head at the last non-pad token. RoPE positions
are the number of real tokens before each token, as in the JAX model, and
`load_jax_params` copies a JAX parameter tree in, so that both start from the same
weights and the benchmark can check that their losses agree.

It is written as a PyTorch user would write it for speed on a CPU (the baseline should be
a good one): fused q/k/v and gate/up projections (one matmul each), RoPE tables computed
once per forward, `F.scaled_dot_product_attention` (with `enable_gqa` for grouped-query
attention), chosen and rejected sequences concatenated into one forward, the reference
forward under `torch.no_grad()`, and `torch.optim.AdamW` with `foreach` or `fused`
kernels. Nothing here imports JAX or `rlhf_jax`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "RewardModel",
    "Transformer",
    "bradley_terry_loss",
    "dpo_loss",
    "load_jax_params",
    "make_dpo_step",
    "make_reward_step",
    "sequence_logprobs",
    "token_positions",
]


class RMSNorm(nn.Module):
  """`x / sqrt(mean(x^2) + eps) * scale` (Zhang & Sennrich 2019, arXiv 1910.07467)."""

  def __init__(self, d_model: int, eps: float):
    super().__init__()
    self.scale = nn.Parameter(torch.ones(d_model))
    self.eps = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
  """Position of every token = number of real tokens before it (pads: last real, or 0)."""
  return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
  """cos, sin [B, 1, T, Dh/2] of the half-split rotary embedding (Su et al. 2021)."""
  half = head_dim // 2
  frequencies = theta ** (-torch.arange(half, dtype=torch.float32) * 2.0 / head_dim)
  angles = positions.float()[:, None, :, None] * frequencies
  return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
  """`[x1 cos - x2 sin, x2 cos + x1 sin]` for x [B, N, T, Dh] split in halves along Dh."""
  x1, x2 = x.chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
  """Causal grouped-query attention with RoPE; q, k and v from one fused projection."""

  def __init__(self, config: Any):
    super().__init__()
    self.n_heads, self.n_kv_heads = config.n_heads, config.n_kv_heads
    self.head_dim = config.d_model // config.n_heads
    width = (self.n_heads + 2 * self.n_kv_heads) * self.head_dim
    self.qkv = nn.Linear(config.d_model, width, bias=False)
    self.out = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=False)

  def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              mask: torch.Tensor | None) -> torch.Tensor:
    batch, length, _ = x.shape
    h, k, dh = self.n_heads, self.n_kv_heads, self.head_dim
    q, key, value = self.qkv(x).split([h * dh, k * dh, k * dh], dim=-1)
    q = apply_rope(q.view(batch, length, h, dh).transpose(1, 2), cos, sin)
    key = apply_rope(key.view(batch, length, k, dh).transpose(1, 2), cos, sin)
    value = value.view(batch, length, k, dh).transpose(1, 2)
    # mask None: plain causal attention, exact on the real tokens of right-padded rows
    # (their earlier keys are all real); the outputs at pad positions are never read.
    attended = F.scaled_dot_product_attention(
        q, key, value, attn_mask=mask, is_causal=mask is None, enable_gqa=h != k)
    return self.out(attended.transpose(1, 2).reshape(batch, length, h * dh))


class FeedForward(nn.Module):
  """SwiGLU (Shazeer 2020, arXiv 2002.05202): `(silu(x W_gate) * x W_up) W_down`."""

  def __init__(self, config: Any):
    super().__init__()
    self.d_ff = config.d_ff
    self.gate_up = nn.Linear(config.d_model, 2 * config.d_ff, bias=False)
    self.down = nn.Linear(config.d_ff, config.d_model, bias=False)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    gate, up = self.gate_up(x).split(self.d_ff, dim=-1)
    return self.down(F.silu(gate) * up)


class Block(nn.Module):
  """Pre-norm block: `x + attn(norm(x))`, then `x + ffn(norm(x))`."""

  def __init__(self, config: Any):
    super().__init__()
    self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
    self.attention = Attention(config)
    self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
    self.mlp = FeedForward(config)

  def forward(self, x, cos, sin, mask):
    x = x + self.attention(self.attention_norm(x), cos, sin, mask)
    return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
  """Decoder-only LM: `forward(tokens [B, T], attention_mask [B, T]) -> logits [B, T, V]`.

  `config` needs vocab_size, d_model, n_layers, n_heads, n_kv_heads, d_ff, rope_theta and
  norm_eps (an `rlhf_jax.models.TransformerConfig` has them). `lm_head=False` builds the
  backbone of a reward model. `right_padded=True` uses plain causal attention (exact for
  right-padded batches: real tokens never see a pad key), otherwise an explicit
  [B, 1, T, T] causal-and-padding mask.
  """

  def __init__(self, config: Any, *, lm_head: bool = True, right_padded: bool = True):
    super().__init__()
    if getattr(config, "tie_embeddings", False):
      raise ValueError("torch_reference.Transformer: tie_embeddings=True is not implemented.")
    self.config = config
    self.right_padded = right_padded
    self.embed = nn.Embedding(config.vocab_size, config.d_model)
    self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
    self.final_norm = RMSNorm(config.d_model, config.norm_eps)
    self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False) if lm_head else None

  def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor, *,
              return_hidden: bool = False) -> torch.Tensor:
    cfg = self.config
    cos, sin = rope_tables(token_positions(attention_mask), cfg.d_model // cfg.n_heads, cfg.rope_theta)
    mask = None
    if not self.right_padded:
      length = tokens.shape[1]
      causal = torch.ones(length, length, dtype=torch.bool).tril()
      mask = causal[None, None] & attention_mask[:, None, None, :].bool()
    x = self.embed(tokens)
    for layer in self.layers:
      x = layer(x, cos, sin, mask)
    hidden = self.final_norm(x)
    if return_hidden or self.lm_head is None:
      return hidden
    return self.lm_head(hidden)


class RewardModel(nn.Module):
  """`reward[b, k] = h[b, last(b)] . w_k + c_k`, `last(b)` the last real token of row b."""

  def __init__(self, config: Any, num_heads: int = 1, *, right_padded: bool = True):
    super().__init__()
    self.backbone = Transformer(config, lm_head=False, right_padded=right_padded)
    self.reward_head = nn.Linear(config.d_model, num_heads)

  def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    hidden = self.backbone(tokens, attention_mask)
    positions = torch.arange(tokens.shape[1])
    last = torch.where(attention_mask.bool(), positions, 0).amax(dim=1)
    return self.reward_head(hidden[torch.arange(tokens.shape[0]), last])


def _copy(target: torch.Tensor, value: np.ndarray, name: str) -> None:
  value = torch.from_numpy(np.array(value, dtype=np.float32))  # a writable copy
  if tuple(target.shape) != tuple(value.shape):
    raise ValueError(f"load_jax_params: {name} has shape {tuple(value.shape)}, the torch "
                     f"parameter {tuple(target.shape)}.")
  with torch.no_grad():
    target.copy_(value)


def _load_transformer(model: Transformer, params: Mapping[str, Any]) -> None:
  cfg = model.config
  d = cfg.d_model
  _copy(model.embed.weight, np.asarray(params["embed"]["embedding"]), "embed/embedding")
  for i, layer in enumerate(model.layers):
    p = params[f"layer_{i}"]
    attention = p["attention"]
    # JAX kernels are [D, heads, Dh] (x @ W); torch Linear weights are [out, in] (x @ W.T).
    qkv = np.concatenate([np.asarray(attention[n]).reshape(d, -1) for n in ("query", "key", "value")], axis=1)
    _copy(layer.attention.qkv.weight, qkv.T, f"layer_{i}/attention/query|key|value")
    _copy(layer.attention.out.weight, np.asarray(attention["out"]).reshape(-1, d).T, f"layer_{i}/attention/out")
    mlp = p["mlp"]
    gate_up = np.concatenate([np.asarray(mlp["gate"]), np.asarray(mlp["up"])], axis=1)
    _copy(layer.mlp.gate_up.weight, gate_up.T, f"layer_{i}/mlp/gate|up")
    _copy(layer.mlp.down.weight, np.asarray(mlp["down"]).T, f"layer_{i}/mlp/down")
    _copy(layer.attention_norm.scale, np.asarray(p["attention_norm"]["scale"]), f"layer_{i}/attention_norm")
    _copy(layer.mlp_norm.scale, np.asarray(p["mlp_norm"]["scale"]), f"layer_{i}/mlp_norm")
  _copy(model.final_norm.scale, np.asarray(params["final_norm"]["scale"]), "final_norm/scale")
  if model.lm_head is not None:
    _copy(model.lm_head.weight, np.asarray(params["lm_head"]).T, "lm_head")


def load_jax_params(model: nn.Module, params: Mapping[str, Any]) -> None:
  """Copy an unboxed, unscanned `rlhf_jax.models` parameter tree (numpy or jax arrays)
  into `model` (a `Transformer` or a `RewardModel`), in place."""
  if isinstance(model, RewardModel):
    _load_transformer(model.backbone, params["backbone"])
    head = params["reward_head"]
    _copy(model.reward_head.weight, np.asarray(head["kernel"]).T, "reward_head/kernel")
    _copy(model.reward_head.bias, np.asarray(head["bias"]), "reward_head/bias")
  elif isinstance(model, Transformer):
    _load_transformer(model, params)
  else:
    raise TypeError(f"load_jax_params: expected a Transformer or RewardModel, got {type(model).__name__}.")


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """`logits[target] - logsumexp(logits)` per token [B, T], zero where `mask` is false."""
  safe_targets = torch.where(mask, targets, 0)
  target_logits = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
  return torch.where(mask, target_logits - torch.logsumexp(logits, dim=-1), 0.0)


def completion_logps(model: Transformer, tokens: torch.Tensor, attention_mask: torch.Tensor,
                     loss_mask: torch.Tensor) -> torch.Tensor:
  """Summed log-prob [B] of the completion tokens: logits at t-1 predict token t."""
  logits = model(tokens, attention_mask)
  return sequence_logprobs(logits[:, :-1], tokens[:, 1:], loss_mask[:, 1:]).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """Sigmoid DPO (Rafailov et al. 2023, arXiv 2305.18290): per-pair
  `-log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r)))` and the implicit rewards."""
  chosen_rewards = beta * (policy_chosen - ref_chosen)
  rejected_rewards = beta * (policy_rejected - ref_rejected)
  return -F.logsigmoid(chosen_rewards - rejected_rewards), chosen_rewards, rejected_rewards


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
  """Bradley-Terry negative log-likelihood `-log sigmoid(r_c - r_r)` per pair."""
  return -F.logsigmoid(chosen_rewards - rejected_rewards)


def _pairs(batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """Chosen rows then rejected rows, as one [2B, T] batch (one forward for both)."""
  cat = lambda name: torch.cat([batch[f"chosen_{name}"], batch[f"rejected_{name}"]])
  return cat("tokens"), cat("attention_mask"), cat("loss_mask")


def reference_logps(reference: Transformer, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
  """The reference's summed completion log-probs (chosen [B], rejected [B]), no grad."""
  tokens, attention_mask, loss_mask = _pairs(batch)
  with torch.no_grad():
    return completion_logps(reference, tokens, attention_mask, loss_mask).chunk(2)


def make_dpo_step(policy: Transformer, reference: Transformer | None, optimizer: torch.optim.Optimizer,
                  beta: float) -> Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]:
  """One DPO update: policy forward/backward, reference forward (no grad) unless the batch
  carries `ref_chosen_logps` / `ref_rejected_logps` (then `reference` may be None), AdamW.

  Returns the loss (mean over pairs) and the policy's per-sequence log-probs [2B] (chosen
  rows first), both detached.
  """

  def step(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tokens, attention_mask, loss_mask = _pairs(batch)
    if "ref_chosen_logps" in batch:
      ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    else:
      ref_chosen, ref_rejected = reference_logps(reference, batch)
    logps = completion_logps(policy, tokens, attention_mask, loss_mask)
    policy_chosen, policy_rejected = logps.chunk(2)
    losses, _, _ = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    loss = losses.mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach(), "logps": logps.detach()}

  return step


def make_reward_step(model: RewardModel, optimizer: torch.optim.Optimizer
                     ) -> Callable[[Mapping[str, torch.Tensor]], dict[str, torch.Tensor]]:
  """One Bradley-Terry reward-model update; returns the loss and the rewards [2B]."""

  def step(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    tokens, attention_mask, _ = _pairs(batch)
    rewards = model(tokens, attention_mask)[:, 0]
    chosen, rejected = rewards.chunk(2)
    loss = bradley_terry_loss(chosen, rejected).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": loss.detach(), "rewards": rewards.detach()}

  return step

