"""Benchmark: tokens per second of `rlhf_jax.models.generate` against decoding that
recomputes the prefix every step and Hugging Face `transformers` `generate` on PyTorch.

    .venv/bin/python benchmarks/generate.py --d_model=256 --n_layers=4 --n_heads=4 \\
        --vocab=8000 --prompt_len=64 --new_tokens=128 --batch=16

Three samplers draw `--new_tokens` tokens for each of `--batch` prompts of `--prompt_len`
random tokens, from the same model and with the same sampling settings (`--temperature`,
`--top_k`, `--top_p`; no end-of-sequence id, so every row draws all its tokens):

  * rlhf_jax: `rlhf_jax.models.generate`, one jitted function: prefill, then a
    `lax.while_loop` of one-token steps with the KV cache.
  * recompute: no cache: every new token is a full forward pass (all layers, every
    position of the prefix, logits at the last one) of the `rlhf_jax.models.Transformer`
    over the prefix rounded up to a multiple of `--recompute_bucket` slots, jitted as one
    `lax.fori_loop` per prefix bucket, sampling with the same code as rlhf_jax
    (`generate.choose_tokens`).
  * hf_generate: `transformers` `LlamaForCausalLM.generate(do_sample=True, ...)` on
    PyTorch (CPU, `--torch_threads` threads, its default dynamic KV cache): the JAX model
    and its random weights written as a Hugging Face checkpoint by `rlhf_jax.hf.save`
    and read by `from_pretrained`, so the architecture is the same (RoPE, RMSNorm,
    SwiGLU, grouped-query heads, untied output layer, rope theta, norm epsilon). The
    script prints how far the two models' logits are apart on the prompts and whether
    their greedy completions agree. Skipped with a note when `transformers` or `torch`
    is not installed (`pip install torch==2.13.0 transformers`, the `bench` extra).

Each sampler is warmed up first (JAX: compilation, reported separately; PyTorch: a first
call); then `--rounds` rounds time one whole call of each (prefill included), the
samplers interleaved round by round so that a change in machine load hits all of them.
Reported per sampler: the round times, their median, and `<name> tokens/s <number>` =
batch x new_tokens / median; then the speed-ups of rlhf_jax over the others.

`--jax_dots`, `--keep_freed_memory` and `--torch_threads` are the process flags of
`benchmarks/train_step.py`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Allow `python benchmarks/generate.py` from the repository root without installation.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

from rlhf_jax import hf, models  # noqa: E402
from rlhf_jax.models.generate import choose_tokens  # noqa: E402
import train_step  # noqa: E402  (process flags shared by the benchmarks)

try:  # The Hugging Face side is optional (the `bench` extra).
  import torch  # noqa: E402
  import transformers  # noqa: E402
except ImportError as error:  # pragma: no cover - depends on the environment
  torch, transformers, HF_ERROR = None, None, error
else:
  HF_ERROR = None

NAMES = ("rlhf_jax", "recompute", "hf_generate")
PAD = 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--n_layers", type=int, default=4)
  parser.add_argument("--n_heads", type=int, default=4)
  parser.add_argument("--n_kv_heads", type=int, default=0, help="0: same as --n_heads (no GQA)")
  parser.add_argument("--d_ff", type=int, default=0, help="SwiGLU width; 0: 4 * d_model")
  parser.add_argument("--vocab", type=int, default=8000)
  parser.add_argument("--rope_theta", type=float, default=10000.0)
  parser.add_argument("--norm_eps", type=float, default=1e-6)
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--batch", type=int, default=16, help="prompts (rows) per call")
  parser.add_argument("--temperature", type=float, default=1.0, help="0: greedy")
  parser.add_argument("--top_k", type=int, default=0, help="0: off")
  parser.add_argument("--top_p", type=float, default=1.0, help="1: off")
  parser.add_argument("--cache_segments", type=int, default=models.SamplingConfig(1).cache_segments,
                      help="rlhf_jax: decoding segments with growing caches (SamplingConfig)")
  parser.add_argument("--recompute_bucket", type=int, default=32,
                      help="recompute: the prefix is rounded up to a multiple of this many slots")
  parser.add_argument("--rounds", type=int, default=3, help="timed calls per sampler (interleaved)")
  parser.add_argument("--no_hf", action="store_true", help="skip the Hugging Face side")
  parser.add_argument("--no_recompute", action="store_true", help="skip the recompute side")
  parser.add_argument("--seed", type=int, default=0)
  train_step.add_process_flags(parser)
  args = parser.parse_args(argv)
  args.n_kv_heads = args.n_kv_heads or args.n_heads
  args.d_ff = args.d_ff or 4 * args.d_model
  for name in ("d_model", "n_layers", "n_heads", "vocab", "prompt_len", "new_tokens", "batch", "rounds",
               "recompute_bucket", "cache_segments"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
  try:
    args.sampling = models.SamplingConfig(
        max_new_tokens=args.new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        pad_id=PAD, cache_segments=args.cache_segments)
    args.config = models.TransformerConfig(
        vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads, d_ff=args.d_ff, max_len=args.prompt_len + args.new_tokens,
        rope_theta=args.rope_theta, norm_eps=args.norm_eps)
  except ValueError as error:
    parser.error(str(error))
  return args


# ----------------------------------------------------------------------------- samplers


def recompute_sampler(model: models.Transformer, config: models.SamplingConfig, prompt_len: int,
                      bucket: int) -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
  """`(params, prompts [B, P], key) -> tokens [B, P + N]` without a cache: token t is
  drawn from a full forward pass over the prefix (rounded up to `bucket` slots) with the
  key schedule of `generate` (one uniform per row from fold_in(fold_in(fold_in(key, row),
  0), t)), so that it draws what rlhf_jax draws up to float rounding."""
  new_tokens = config.max_new_tokens
  total = prompt_len + new_tokens
  ends = sorted({min(total - 1, bucket * -(-(prompt_len + t) // bucket)) for t in range(new_tokens)})

  def draw(params, tokens, key, step, length):
    batch = tokens.shape[0]
    prefix = tokens[:, :length]
    mask = jnp.arange(length)[None, :] < prompt_len + step
    slot = jnp.full((batch, 1), prompt_len + step - 1, jnp.int32)
    logits = model.apply({"params": params}, prefix, jnp.broadcast_to(mask, prefix.shape), logit_slots=slot)[:, 0]
    uniforms = None
    if not config.greedy:
      keys = jax.vmap(lambda row: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, row), 0), step))(
          jnp.arange(batch))
      uniforms = jax.vmap(jax.random.uniform)(keys)
    token = choose_tokens(logits, uniforms, config)[0]
    return jax.lax.dynamic_update_slice(tokens, token[:, None], (0, prompt_len + step))

  @jax.jit
  def run(params, prompts, key):
    tokens = jnp.concatenate([prompts, jnp.full((prompts.shape[0], new_tokens), PAD, jnp.int32)], axis=1)
    step = 0
    for end in ends:  # steps whose prefix fits `end` slots: one loop body per bucket
      last = min(new_tokens, end - prompt_len + 1)
      tokens = jax.lax.fori_loop(step, last, lambda t, tokens, end=end: draw(params, tokens, key, t, end), tokens)
      step = last
    return tokens

  return run


def hf_model(model: models.Transformer, params: Any) -> Any:
  """The `transformers` model of our model and parameters: written as a Hugging Face
  checkpoint by `rlhf_jax.hf.save` (a Llama for this architecture) into a temporary
  folder and read back with `AutoModelForCausalLM.from_pretrained` (local files only)."""
  with tempfile.TemporaryDirectory() as folder:
    hf.save(folder, model, params, pad_token_id=PAD)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
  if type(loaded).__name__ != "LlamaForCausalLM":
    raise RuntimeError(f"hf_model: expected a LlamaForCausalLM, transformers built {type(loaded).__name__}.")
  loaded.generation_config.eos_token_id = None  # every row draws all its tokens, as on the JAX side
  return loaded.eval()


def hf_generate(model: Any, prompts: np.ndarray, config: models.SamplingConfig, seed: int) -> np.ndarray:
  """`generate` with the same settings: sampling (or greedy), no end-of-sequence id."""
  torch.manual_seed(seed)
  sampling = dict(do_sample=False) if config.greedy else dict(
      # top_k 0 and top_p 1 switch those warpers off, as in SamplingConfig.
      do_sample=True, temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
  with torch.inference_mode():
    out = model.generate(torch.from_numpy(prompts.astype(np.int64)),
                         attention_mask=torch.ones(prompts.shape, dtype=torch.long),
                         max_new_tokens=config.max_new_tokens, min_new_tokens=config.max_new_tokens,
                         eos_token_id=None, pad_token_id=PAD, **sampling)
  return out.numpy()


# ----------------------------------------------------------------------------- main


def tokens_per_second(batch: int, new_tokens: int, seconds: float) -> float:
  return batch * new_tokens / seconds


def main(argv: list[str] | None = None) -> dict[str, float]:
  args = parse_args(argv)
  memory = train_step.configure_process(args)
  config, sampling = args.config, args.sampling
  use_hf = transformers is not None and not args.no_hf
  print(f"generate benchmark: d_model={config.d_model} n_layers={config.n_layers} n_heads={config.n_heads} "
        f"n_kv_heads={config.n_kv_heads} d_ff={config.d_ff} vocab={config.vocab_size} rope_theta={config.rope_theta} "
        f"norm_eps={config.norm_eps} (float32); "
        f"batch={args.batch} prompt_len={args.prompt_len} new_tokens={args.new_tokens}; "
        f"temperature={sampling.temperature} top_k={sampling.top_k} top_p={sampling.top_p}")
  hf_text = (f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
             f"{transformers.__version__}" if use_hf else "hf_generate: not run")
  print(f"jax {jax.__version__} (backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); {hf_text}; host memory: {memory}")

  model = models.Transformer(config)
  rng = np.random.default_rng(args.seed)
  prompts_np = rng.integers(1, config.vocab_size, size=(args.batch, args.prompt_len)).astype(np.int32)
  prompts = jnp.asarray(prompts_np)
  prompt_mask = jnp.ones(prompts.shape, bool)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(args.seed), prompts)["params"])
  key = jax.random.key(args.seed + 1)
  # Round r samples with key r (the warm-up with the last one), made before any timing.
  round_keys = [jax.random.fold_in(key, r) for r in range(args.rounds + 1)]

  runners: dict[str, Callable[[int], Any]] = {}
  compile_seconds: dict[str, float] = {}
  start = time.perf_counter()
  compiled = jax.jit(models.sample, static_argnames=("model", "config")).lower(
      model, params, prompts, prompt_mask, key, sampling).compile()
  compile_seconds["rlhf_jax"] = time.perf_counter() - start
  runners["rlhf_jax"] = lambda r: compiled(params, prompts, prompt_mask, round_keys[r]).tokens
  if not args.no_recompute:
    recompute = recompute_sampler(model, sampling, args.prompt_len, args.recompute_bucket)
    start = time.perf_counter()
    recompiled = recompute.lower(params, prompts, key).compile()
    compile_seconds["recompute"] = time.perf_counter() - start
    runners["recompute"] = lambda r: recompiled(params, prompts, round_keys[r])
  if use_hf:
    hf_policy = hf_model(model, params)
    runners["hf_generate"] = lambda r: hf_generate(hf_policy, prompts_np, sampling, args.seed + r)
  else:
    reason = "--no_hf" if args.no_hf else f"transformers is not installed ({HF_ERROR})"
    print(f"hf_generate skipped: {reason}; install with `pip install torch==2.13.0 transformers` "
          "(the bench extra).")

  for name, run in runners.items():  # warm-up (and the JAX compilations above)
    start = time.perf_counter()
    jax.block_until_ready(run(args.rounds))
    first = time.perf_counter() - start
    extra = f"compilation {compile_seconds[name]:.2f} s, " if name in compile_seconds else ""
    print(f"{name}: {extra}first call {first:.3f} s (not timed)")

  if use_hf:
    check_agreement(model, params, hf_policy, prompts_np)

  times: dict[str, list[float]] = {name: [] for name in runners}
  for r in range(args.rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      jax.block_until_ready(run(r))
      times[name].append(time.perf_counter() - start)

  rates = {}
  for name in NAMES:
    if name not in times:
      continue
    median = statistics.median(times[name])
    rates[name] = tokens_per_second(args.batch, args.new_tokens, median)
    print(f"{name} round times (s): {' '.join(f'{t:.4f}' for t in times[name])}; median {median:.4f} s, "
          f"{1e3 * median / args.new_tokens:.3f} ms per new token")
  for name in NAMES:
    if name in rates:
      print(f"{name} tokens/s {rates[name]:.1f}")
  for other in NAMES[1:]:
    if other in rates:
      print(f"rlhf_jax / {other}: {rates['rlhf_jax'] / rates[other]:.2f}x")
  return rates


def check_agreement(model: models.Transformer, params: Any, hf_policy: Any, prompts: np.ndarray) -> None:
  """Same weights, same function: the logits on the prompts and a few greedy tokens."""
  ours = np.asarray(model.apply({"params": params}, prompts))
  with torch.inference_mode():
    theirs = hf_policy(torch.from_numpy(prompts.astype(np.int64))).logits.numpy()
  greedy = models.SamplingConfig(max_new_tokens=8, temperature=0.0, pad_id=PAD)
  rows = prompts[:4]
  our_tokens = np.asarray(models.generate(model, params, rows, np.ones(rows.shape, bool), jax.random.key(0),
                                          greedy).completion_tokens)
  their_tokens = hf_generate(hf_policy, rows, greedy, 0)[:, rows.shape[1]:]
  print(f"check vs hf: logits on the prompts max |diff| {np.max(np.abs(ours - theirs)):.2e} "
        f"(scale {np.max(np.abs(ours)):.1f}); greedy completions of {len(rows)} rows x 8 tokens "
        f"{'identical' if np.array_equal(our_tokens, their_tokens) else 'DIFFER'}")


if __name__ == "__main__":
  main()
