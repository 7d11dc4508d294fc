"""A float64 NumPy forward pass of the decoder, written independently of the Flax code.

It reads the same parameter tree (unscanned layout) and implements the math of the
papers directly: RMSNorm, half-split RoPE, causal softmax attention over non-pad keys
with key/value heads repeated for grouped-query attention (`np.repeat`), SwiGLU.
One sequence at a time, with explicit loops, so it shares no code path with the model.
"""

import jax
import numpy as np


def rmsnorm(x, scale, eps):
  return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * scale


def rope(x, positions, theta):
  """x [T, N, Dh], positions [T]."""
  dh = x.shape[-1]
  half = dh // 2
  frequencies = theta ** (-2.0 * np.arange(half) / dh)
  angles = positions[:, None].astype(np.float64) * frequencies[None, :]
  cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(x, p, positions, mask, cfg):
  """x [T, D] (already normalised); mask [T] bool over keys."""
  length = x.shape[0]
  groups = cfg.n_heads // cfg.n_kv_heads
  q = np.einsum("td,dhk->thk", x, p["query"])
  k = np.einsum("td,dhk->thk", x, p["key"])
  v = np.einsum("td,dhk->thk", x, p["value"])
  q, k = rope(q, positions, cfg.rope_theta), rope(k, positions, cfg.rope_theta)
  k, v = np.repeat(k, groups, axis=1), np.repeat(v, groups, axis=1)  # [T, H, Dh]
  out = np.zeros_like(q)
  for h in range(cfg.n_heads):
    for t in range(length):
      allowed = [s for s in range(t + 1) if mask[s]]
      scores = np.array([q[t, h] @ k[s, h] for s in allowed]) / np.sqrt(cfg.head_dim)
      weights = np.exp(scores - scores.max())
      weights /= weights.sum()
      out[t, h] = sum(w * v[s, h] for w, s in zip(weights, allowed))
  return np.einsum("thk,hkd->td", out, p["out"])


def swiglu(x, p):
  gate = x @ p["gate"]
  silu = gate / (1.0 + np.exp(-gate))
  return (silu * (x @ p["up"])) @ p["down"]


def forward(params, tokens, mask, cfg):
  """Returns (logits [B, T, V], hidden [B, T, D]) in float64 for a batch, row by row.

  `params` is the unboxed, unscanned params tree of `Transformer` (or a backbone).
  Every row must have a real token at or before each query (no all-pad prefix).
  """
  params = _to_numpy(params)
  all_logits, all_hidden = [], []
  for row_tokens, row_mask in zip(np.asarray(tokens), np.asarray(mask, bool)):
    positions = np.maximum(np.cumsum(row_mask) - 1, 0)
    x = params["embed"]["embedding"][row_tokens]
    for i in range(cfg.n_layers):
      layer = params[f"layer_{i}"]
      normed = rmsnorm(x, layer["attention_norm"]["scale"], cfg.norm_eps)
      x = x + attention(normed, layer["attention"], positions, row_mask, cfg)
      normed = rmsnorm(x, layer["mlp_norm"]["scale"], cfg.norm_eps)
      x = x + swiglu(normed, layer["mlp"])
    hidden = rmsnorm(x, params["final_norm"]["scale"], cfg.norm_eps)
    if cfg.tie_embeddings:
      logits = hidden @ params["embed"]["embedding"].T
    else:
      logits = hidden @ params["lm_head"] if "lm_head" in params else None
    all_logits.append(logits)
    all_hidden.append(hidden)
  logits = None if all_logits[0] is None else np.stack(all_logits)
  return logits, np.stack(all_hidden)


def _to_numpy(tree):
  if isinstance(tree, dict) or hasattr(tree, "items"):
    return {k: _to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)


def random_params(abstract, seed=0):
  """Float32 NumPy parameters with the shapes of `abstract` (an unboxed shape tree).

  Drawing them in NumPy avoids compiling `model.init` (slow for threefry on a CPU) in
  every test. Kernels have variance 1 / fan_in (fan_in = the first dimension, or
  heads x head_dim for the attention output); embeddings unit variance; norm scales
  1 + N(0, 0.1^2) so that the scale is exercised; head biases N(0, 0.1^2).
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    names = [getattr(p, "key", None) for p in path]
    shape = leaf.shape
    if names[-1] == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif names[-1] == "bias":
      value = 0.1 * rng.standard_normal(shape)
    elif names[-1] == "embedding":
      value = rng.standard_normal(shape)
    elif names[-1] == "out":
      value = rng.standard_normal(shape) / np.sqrt(shape[0] * shape[1])
    else:
      value = rng.standard_normal(shape) / np.sqrt(shape[0])
    return value.astype(np.float32)

  return jax.tree_util.tree_map_with_path(draw, abstract)
