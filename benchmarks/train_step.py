"""Benchmark: one DPO or reward-model train step in JAX (jitted) against PyTorch (eager).

    .venv/bin/python benchmarks/train_step.py --objective=dpo --d_model=256 --n_layers=4 \\
        --n_heads=4 --vocab=8000 --seq_len=256 --batch_pairs=8
    .venv/bin/python benchmarks/train_step.py --objective=dpo ... --cached_reference
    .venv/bin/python benchmarks/train_step.py --objective=reward_model ...
    .venv/bin/python benchmarks/train_step.py --objective=dpo ... --share_prompt \
        --data=../shared/data/hh-rlhf/harmless-base-test-head1500.jsonl.gz
    .venv/bin/python benchmarks/train_step.py --objective=dpo ... --padding_free [--share_prompt]

Both sides train the same model (`rlhf_jax.models` and its PyTorch twin in
`benchmarks/torch_reference.py`: RoPE, RMSNorm, SwiGLU, grouped-query attention when
`--n_kv_heads` < `--n_heads`, untied output layer) on the same synthetic right-padded
preference batches, with the same objective and the same AdamW update:

  * dpo: sigmoid DPO (`rlhf_jax.losses.dpo`); chosen and rejected rows in one [2B, T]
    forward; the frozen reference's forward is part of every step, unless
    `--cached_reference`: the JAX step then reads reference log-probs precomputed once
    per data set (what the trainer does for a frozen reference) and is compared with
    PyTorch both with the reference forward (the issue's target) and with cached
    reference log-probs (the like-for-like comparison).
    With `--share_prompt` the JAX side packs each pair as one row [prompt | chosen |
    rejected] (`rlhf_jax.train.shared_prompt`, the trainer's `data.share_prompt`): the
    prompt is computed once and logits only at completion positions; PyTorch keeps
    the two-row layout a PyTorch user (TRL) runs. Its FLOPs are those of the packed rows.
  * reward_model: `RewardModel` (scalar head at the last real token) and the
    Bradley-Terry loss (`rlhf_jax.losses.bradley_terry`).
    `--share_prompt` packs the pair the same way and reads both rewards from the one row.

`--padding_free` runs the JAX side the way the trainer runs with
`--config.data.padding_free=true` (`rlhf_jax.data.packing`, `rlhf_jax.train.padding_free`):
the pairs of a batch are laid end to end in one row without padding (rounded up to a
bucket length, one compiled step per bucket, all compiled before timing), attention
runs per sequence (per pair with `--share_prompt`) and logits only at completion
tokens. PyTorch keeps the padded two-row layout. Its FLOPs are those of the packed rows.

The JAX step is one `jax.jit` function of (state, batch) with the state donated, built
from `rlhf_jax.models`, `rlhf_jax.losses` and `optax.adamw`; it is compiled ahead of time
(`lower().compile()`, which also gives XLA's `cost_analysis()` FLOPs) and warmed up.
PyTorch runs with `torch.set_num_threads(--torch_threads)` (default 2, the cores of
this machine). Both start from the same weights (the JAX initialisation copied into
torch) and the script prints how far their first losses, log-probs or rewards, and
second-step losses (after one AdamW update) are apart.

Reported per implementation: median step time over `--rounds` x `--steps` timed steps
(implementations interleaved round by round, so that a change in machine load hits all
of them; the speed-ups are also printed round by round, to show their spread), the median
minor page faults per step (memory the kernel had to map in), pairs per second, achieved
GFLOP/s and model FLOP utilisation (MFU): analytic model FLOPs per step over the median
step time, divided by a peak measured in the same run: the faster of a large jitted
float32 matmul and `torch.mm` of the same size. Model FLOPs (Kaplan et al. 2020; PaLM,
Chowdhery et al. 2022, appendix B): a forward costs `2 N + 4 L T D` per token (N = matmul parameters
including the output layer, not the embedding lookup; `4 L T D` for the attention
scores and weighted values over all T keys of the padded length), a training step three
forwards, the DPO reference one more; every position of the padded [2B, T] batch counts.
Without torch installed the PyTorch columns are skipped with a message.

The pairs are synthetic (random tokens, prompts T/8 to T/2 long) unless `--data` names a
preference file: its pairs are then tokenized as the trainer does (`real_batches`), so
the prompt share, which decides what `--share_prompt` saves, is that of real data.
Unusable records and pairs go to the `--rejects` folder with their reasons.

The model FLOPs are those of the full computation, which PyTorch performs. The JAX model
skips part of it: `causal_attention` computes 3/4 of the attention scores, and where
only a few slots are read (a reward model's last token, logits at completion slots) the
last block computes queries, attention output and feed-forward only there. JAX's
GFLOP/s and MFU therefore count work it did not do: they compare throughput at equal
model FLOPs. XLA's own count of the compiled step is printed beside.

`--keep_freed_memory` (default; `--no-keep_freed_memory` turns it off) sets glibc's malloc
to keep freed memory for reuse (`rlhf_jax.host_memory`, what `scripts/train.py` does), so
that XLA:CPU's step does not page-fault its temporary buffers in anew on every call. It
applies to the whole process, so to both sides; the header says what was set.

`--jax_dots=eigen` (default) sets `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
-individual_dot` before the first JAX computation, so that XLA:CPU runs the matmuls with
its Eigen kernels instead of YNNPACK (both float32, default precision); `--jax_dots=ynnpack`
keeps XLA's default. The flags in force are printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import sys
import time
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

# Allow `python benchmarks/train_step.py` from the repository root without installation.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

from rlhf_jax import data as data_lib  # noqa: E402
from rlhf_jax import host_memory  # noqa: E402
from rlhf_jax import losses, models  # noqa: E402
from rlhf_jax.data import packing  # noqa: E402
from rlhf_jax.train import objectives, padding_free, shared_prompt  # noqa: E402

try:  # The PyTorch side is optional: `pip install torch==2.13.0` (the `bench` extra).
  import torch  # noqa: E402

  import torch_reference  # noqa: E402
except ImportError as error:  # pragma: no cover - depends on the environment
  torch, torch_reference, TORCH_ERROR = None, None, error
else:
  TORCH_ERROR = None

PAD, BOS, EOS = 0, 1, 2
OBJECTIVES = ("dpo", "reward_model")
# XLA:CPU (jax 0.10) sends every dot to YNNPACK by default; taking dots out of the YNNPACK
# fusions leaves them to XLA's Eigen kernels, which were faster on this step here
# (float32 either way: the kernels differ, not the precision; the measurements are in
# docs/benchmarks.md, "Kernels of a train step").
DOT_FLAGS = {"eigen": "--xla_cpu_experimental_ynn_fusion_type=-individual_dot", "ynnpack": ""}


# ----------------------------------------------------------------------------- setup


def add_process_flags(parser: argparse.ArgumentParser) -> None:
  """Flags of the process both sides run in (shared with benchmarks/kernels.py)."""
  parser.add_argument("--jax_dots", choices=tuple(DOT_FLAGS), default="eigen",
                      help="XLA:CPU matmul kernels: Eigen, or YNNPACK (the XLA default)")
  parser.add_argument("--keep_freed_memory", action=argparse.BooleanOptionalAction, default=True,
                      help="glibc malloc keeps freed memory for reuse (rlhf_jax.host_memory, as "
                           "scripts/train.py does); it applies to both sides")
  parser.add_argument("--torch_threads", type=_at_least_one, default=2)


def _at_least_one(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def configure_process(args: argparse.Namespace) -> str:
  """Applies `add_process_flags` before the first JAX computation; returns what
  `host_memory` did. XLA_FLAGS is read when the CPU client is created, so setting it
  here still applies; a kernel choice the caller already made in XLA_FLAGS wins."""
  xla_flags = os.environ.get("XLA_FLAGS", "")
  if DOT_FLAGS[args.jax_dots] and "ynn_fusion_type" not in xla_flags:
    os.environ["XLA_FLAGS"] = f"{xla_flags} {DOT_FLAGS[args.jax_dots]}".strip()
  # Before torch or XLA start their threads: a thread keeps the malloc arena it began with.
  memory = host_memory.keep_freed_memory() if args.keep_freed_memory else host_memory.status()
  if torch is not None:
    torch.set_num_threads(args.torch_threads)
  return memory


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("--objective", choices=OBJECTIVES, default="dpo")
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--n_layers", type=int, default=4)
  parser.add_argument("--n_heads", type=int, default=4)
  parser.add_argument("--n_kv_heads", type=int, default=0, help="0: same as --n_heads (no GQA)")
  parser.add_argument("--d_ff", type=int, default=0, help="SwiGLU width; 0: 4 * d_model")
  parser.add_argument("--vocab", type=int, default=8000)
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch_pairs", type=int, default=8, help="preference pairs per step")
  parser.add_argument("--cached_reference", action="store_true",
                      help="dpo: JAX reads precomputed reference log-probs (no reference forward)")
  parser.add_argument("--data", default="",
                      help="preference file (e.g. HH-RLHF .jsonl.gz): real pairs instead of synthetic "
                           "ones, tokenized by a sentencepiece model of --vocab pieces trained on it")
  parser.add_argument("--rejects", default="train_step_rejects",
                      help="with --data: folder for the records and pairs that cannot be used")
  parser.add_argument("--share_prompt", action="store_true",
                      help="JAX packs [prompt | chosen | rejected] in one row (prompt computed once)")
  parser.add_argument("--padding_free", action="store_true",
                      help="JAX lays the pairs of a batch end to end in one row, without padding "
                           "(`rlhf_jax.data.packing`; with --share_prompt the prompt once per pair)")
  parser.add_argument("--buckets_per_octave", type=int, default=packing.BUCKETS_PER_OCTAVE,
                      help="with --padding_free: row lengths and target counts per octave "
                           "(the trainer's data.buckets_per_octave)")
  parser.add_argument("--beta", type=float, default=0.1, help="DPO inverse temperature")
  parser.add_argument("--learning_rate", type=float, default=1e-4)
  parser.add_argument("--weight_decay", type=float, default=0.01)
  parser.add_argument("--rounds", type=int, default=3, help="timing rounds (implementations interleaved)")
  parser.add_argument("--steps", type=int, default=4, help="timed steps per implementation per round")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  parser.add_argument("--batches", type=int, default=4, help="distinct batches cycled through")
  add_process_flags(parser)
  parser.add_argument("--torch_optimizer", choices=("foreach", "fused", "for-loop"), default="fused",
                      help="implementation of torch.optim.AdamW")
  parser.add_argument("--torch_padding_mask", action="store_true",
                      help="torch attention with an explicit causal+padding mask instead of is_causal")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch side")
  parser.add_argument("--peak_size", type=int, default=2048, help="n of the n x n x n peak matmul")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  args.n_kv_heads = args.n_kv_heads or args.n_heads
  args.d_ff = args.d_ff or 4 * args.d_model
  for name in ("d_model", "n_layers", "n_heads", "vocab", "seq_len", "batch_pairs", "rounds",
               "steps", "batches", "peak_size"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
  if args.warmup < 0:
    parser.error(f"--warmup must be >= 0, got {args.warmup}.")
  if args.seq_len < 8:
    parser.error(f"--seq_len must be >= 8 (prompt + completion + eos), got {args.seq_len}.")
  if args.vocab < 4:
    parser.error(f"--vocab must be >= 4 (pad, bos, eos and one word), got {args.vocab}.")
  if os.path.exists(args.rejects) and not os.path.isdir(args.rejects):
    parser.error(f"--rejects must be a folder (created if missing), got the file {args.rejects}.")
  if args.cached_reference and args.objective != "dpo":
    parser.error("--cached_reference applies to --objective=dpo only.")
  return args


def model_config(args: argparse.Namespace) -> models.TransformerConfig:
  try:
    return models.TransformerConfig(
        vocab_size=args.vocab, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads, d_ff=args.d_ff, max_len=args.seq_len, dtype="float32",
        param_dtype="float32", remat=False)
  except ValueError as error:
    raise SystemExit(f"train_step.py: bad model flags: {error}") from None


def make_batches(args: argparse.Namespace) -> list[dict[str, np.ndarray]]:
  """Synthetic right-padded preference pairs: [bos][prompt][completion][eos][pad...].

  Chosen and rejected share the prompt; prompt lengths are uniform in [T/8, T/2],
  completion lengths fill between a quarter of the rest and all of it, so rows have
  different amounts of padding. `loss_mask` is true on completion tokens and the eos.
  """
  rng = np.random.default_rng(args.seed)
  b, t = args.batch_pairs, args.seq_len
  batches = []
  for _ in range(args.batches):
    batch: dict[str, np.ndarray] = {}
    prompt_lengths = rng.integers(max(1, t // 8), max(2, t // 2) + 1, size=b)
    prompts = rng.integers(3, args.vocab, size=(b, t))
    for side in ("chosen", "rejected"):
      room = t - 2 - prompt_lengths  # bos and eos take two slots
      completion_lengths = rng.integers(np.maximum(1, room // 4), room + 1)
      words = rng.integers(3, args.vocab, size=(b, t))
      tokens = np.full((b, t), PAD, np.int32)
      attention_mask = np.zeros((b, t), bool)
      loss_mask = np.zeros((b, t), bool)
      for row in range(b):
        p, c = prompt_lengths[row], completion_lengths[row]
        sequence = np.concatenate([[BOS], prompts[row, :p], words[row, :c], [EOS]])
        tokens[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = True
        loss_mask[row, 1 + p : len(sequence)] = True
      batch[f"{side}_tokens"] = tokens
      batch[f"{side}_attention_mask"] = attention_mask
      batch[f"{side}_loss_mask"] = loss_mask
    batches.append(batch)
  return batches


def real_batches(args: argparse.Namespace) -> list[dict[str, np.ndarray]]:
  """Pairs of a local preference file, tokenized as the trainer does.

  A sentencepiece model of `--vocab` pieces is trained on the file's texts (in a
  temporary folder), pairs are cut to `--seq_len` tokens with prompts of at most half
  of it (the trainer's default ratio), and `--batches` x `--batch_pairs` of them are
  drawn at random (`--seed`). Records that cannot be read as pairs and pairs the
  truncation empties are written to `--rejects` (`records.jsonl`, `truncation.jsonl`,
  each row with its reason) and counted: read = used + rejected.
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  for name in ("records.jsonl", "truncation.jsonl"):  # stale files of an earlier run
    if os.path.exists(os.path.join(args.rejects, name)):
      os.remove(os.path.join(args.rejects, name))
  pairs = data_lib.load_preference_data(args.data, rejects_path=os.path.join(args.rejects, "records.jsonl"))
  with tempfile.TemporaryDirectory() as folder:
    model_file = data_lib.train_tokenizer(
        None, os.path.join(folder, "spm"), vocab_size=args.vocab,
        texts=[*pairs.prompts, *pairs.chosen, *pairs.rejected], num_threads=2)
    tokenizer = data_lib.Tokenizer.load(model_file)
    tokenized = data_lib.tokenize_pairs(pairs, tokenizer, max_length=args.seq_len,
                                        max_prompt_length=args.seq_len // 2,
                                        rejects_path=os.path.join(args.rejects, "truncation.jsonl"))
  wanted = args.batches * args.batch_pairs
  if len(tokenized) < wanted:
    raise SystemExit(f"train_step.py: {args.data} has {len(tokenized)} usable pairs; "
                     f"--batches x --batch_pairs needs {wanted}.")
  rows = np.random.default_rng(args.seed).choice(len(tokenized), wanted, replace=False)
  keys = [f"{part}_{name}" for part in ("chosen", "rejected") for name in ("tokens", "attention_mask", "loss_mask")]
  batches = []
  for i in range(args.batches):
    batch = tokenized.batch(rows[i * args.batch_pairs:(i + 1) * args.batch_pairs])
    batches.append({k: np.asarray(batch[k]) for k in keys})
  prompt = sum(int((b["chosen_attention_mask"] & ~b["chosen_loss_mask"]).sum()) for b in batches)
  real = sum(int(b["chosen_attention_mask"].sum() + b["rejected_attention_mask"].sum()) for b in batches)
  read, truncated = pairs.report, tokenized.report
  rejected = ""
  if read.rejected or truncated.rejected:
    rejected = f" (rejects with reasons in {args.rejects})"
  print(f"data: {args.data}: {read.read} records read = {len(tokenized)} pairs tokenized + {read.rejected} "
        f"unusable records + {truncated.rejected} pairs emptied by truncation{rejected}; "
        f"{tokenizer.vocab_size} pieces; prompts are {100 * 2 * prompt / real:.0f}% of the real tokens "
        "of the two-row layout")
  return batches


def matmul_parameters(config: models.TransformerConfig, objective: str) -> int:
  """Parameters that multiply activations (all but the embedding table and norm scales)."""
  d, dh = config.d_model, config.head_dim
  attention = d * (config.n_heads + 2 * config.n_kv_heads) * dh + config.n_heads * dh * d
  mlp = 3 * d * config.d_ff
  head = d * config.vocab_size if objective == "dpo" else d * 1
  return config.n_layers * (attention + mlp) + head


def model_flops(config: models.TransformerConfig, args: argparse.Namespace, reference_forward: bool,
                layout: shared_prompt.SharedPromptLayout | None = None,
                packed: list[dict[str, np.ndarray]] | None = None) -> float:
  """Analytic model FLOPs of one train step (see the module docstring).

  With a shared-prompt `layout` the body runs on B packed rows of `layout.length` slots
  and the output layer on `layout.num_targets` positions per row (DPO) or on the two
  last tokens (reward model). With `packed` (padding-free batches) the body runs on the
  slots of the rows (bucket padding included), each token's attention on the keys of
  its own document, and the output layer on the targets (or the read-out slots); the
  mean over the batches.
  """
  body = matmul_parameters(config, args.objective)
  dpo = args.objective == "dpo"
  head = config.d_model * (config.vocab_size if dpo else 1)
  if packed is not None:
    per_batch = []
    for batch in packed:
      doc_lengths = np.sum(batch["packed_document_slots"] >= 0, axis=-1)
      outputs = batch["target_tokens" if dpo else "reward_slots"].size
      per_batch.append(batch["packed_tokens"].size * 2 * (body - head) + 4 * config.n_layers * config.d_model
                       * float(np.sum(doc_lengths.astype(np.float64) ** 2)) + outputs * 2 * head)
    return (3 + (1 if reference_forward else 0)) * float(np.mean(per_batch))
  if layout is None:
    tokens = 2 * args.batch_pairs * args.seq_len
    forward = tokens * (2 * body + 4 * config.n_layers * args.seq_len * config.d_model)
  else:
    outputs = layout.num_targets if dpo else 2
    rows, length = args.batch_pairs, layout.length
    forward = (rows * length * (2 * (body - head) + 4 * config.n_layers * length * config.d_model)
               + rows * outputs * 2 * head)
  return (3 + (1 if reference_forward else 0)) * forward


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure_peak(n: int, repeats: int = 7) -> tuple[float, float | None]:
  """FLOP/s of an n x n x n float32 matmul: jitted JAX (the MFU denominator) and torch.mm."""
  keys = jax.random.split(jax.random.key(1))
  a = jax.random.normal(keys[0], (n, n), jnp.float32)
  b = jax.random.normal(keys[1], (n, n), jnp.float32)
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  jax.block_until_ready(matmul(a, b))
  flops = 2.0 * n**3
  jax_peak = flops / median_seconds(lambda: jax.block_until_ready(matmul(a, b)), repeats)
  torch_peak = None
  if torch is not None:
    ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))
    torch.mm(ta, tb)
    torch_peak = flops / median_seconds(lambda: torch.mm(ta, tb), repeats)
  return jax_peak, torch_peak


# ----------------------------------------------------------------------------- JAX side


def pair_rows(batch: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Chosen rows then rejected rows as one [2B, T] batch: one forward for both."""
  cat = lambda name: jnp.concatenate([batch[f"chosen_{name}"], batch[f"rejected_{name}"]])
  return cat("tokens"), cat("attention_mask"), cat("loss_mask")


def completion_logps(model: nn.Module, params: Any, batch: dict[str, jax.Array],
                     layout: shared_prompt.SharedPromptLayout | None, unpadded: bool = False) -> jax.Array:
  """Summed completion log-probs [2B] (chosen rows, then rejected), by the trainer's own
  `objectives.pair_logps`: two rows per pair, or one packed row with a `layout`, or from
  padding-free rows (`padding_free.packed_pair_logps`)."""
  if unpadded:
    logps = padding_free.packed_pair_logps(model, params, batch)
  else:
    logps = objectives.pair_logps(model, params, batch, layout)
  return jnp.concatenate([logps["chosen_logps"], logps["rejected_logps"]])


@dataclasses.dataclass
class JaxSide:
  """The jitted step, its state and what `cost_analysis` says about it."""

  step: Any  # (state, batch, reference_params) -> (state, outputs), compiled per batch shape
  state: Any
  reference_params: Any
  init_params: Any  # numpy copy of the initial parameters (for torch)
  xla_flops: float | None  # mean over the batches
  compile_seconds: float  # all shapes
  shapes: int  # distinct batch shapes compiled


def _shape_key(batch: dict[str, Any]) -> tuple:
  return tuple(sorted((k, tuple(np.shape(v))) for k, v in batch.items()))


def build_jax(args: argparse.Namespace, config: models.TransformerConfig, batches: list[dict[str, jax.Array]],
              cached: bool, layout: shared_prompt.SharedPromptLayout | None = None,
              unpadded: bool = False) -> JaxSide:
  """The jitted step, compiled ahead of time for every distinct batch shape (padding-free
  batches come in a few row lengths)."""
  model = models.Transformer(config) if args.objective == "dpo" else models.RewardModel(config)
  # Parameter values depend on the shapes of the config only, not on the example input.
  init_tokens = jnp.zeros((2, args.seq_len), jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(args.seed), init_tokens)["params"])
  init_params = jax.tree.map(np.asarray, params)
  tx = optax.adamw(args.learning_rate, b1=0.9, b2=0.999, eps=1e-8, weight_decay=args.weight_decay)

  def loss_fn(params, batch, reference_params):
    if args.objective == "reward_model":
      if unpadded:
        chosen, rejected = (r[:, 0] for r in padding_free.packed_pair_rewards(model, params, batch))
        rewards = jnp.concatenate([chosen, rejected])
      elif layout is not None:
        chosen, rejected = (r[:, 0] for r in shared_prompt.shared_pair_rewards(model, params, batch, layout))
        rewards = jnp.concatenate([chosen, rejected])
      else:
        tokens, attention_mask, _ = pair_rows(batch)
        rewards = model.apply({"params": params}, tokens, attention_mask)[:, 0]
        chosen, rejected = jnp.split(rewards, 2)
      return losses.bradley_terry(chosen, rejected).mean(), rewards
    logps = completion_logps(model, params, batch, layout, unpadded)
    if cached:
      ref_chosen, ref_rejected = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    else:
      ref_logps = completion_logps(model, reference_params, batch, layout, unpadded)
      ref_chosen, ref_rejected = jnp.split(ref_logps, 2)
    policy_chosen, policy_rejected = jnp.split(logps, 2)
    per_pair, _, _ = losses.dpo(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=args.beta)
    return per_pair.mean(), logps

  def step(state, batch, reference_params):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["params"], batch, reference_params)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state}, {"loss": loss, "aux": aux}

  # The reference is a separate copy of the initial weights: the policy's buffers are donated.
  reference_params = None
  if args.objective == "dpo" and not cached:
    reference_params = jax.tree.map(jnp.copy, params)
  state = {"params": params, "opt_state": tx.init(params)}
  jitted = jax.jit(step, donate_argnums=(0,))
  compiled, flops = {}, []
  start = time.perf_counter()
  for batch in batches:
    key = _shape_key(batch)
    if key not in compiled:
      compiled[key] = jitted.lower(state, batch, reference_params).compile()
    cost = compiled[key].cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
      cost = cost[0] if cost else None
    flops.append(float(cost["flops"]) if cost and "flops" in cost else None)
  compile_seconds = time.perf_counter() - start
  xla_flops = None if None in flops else float(np.mean(flops))

  def run(state, batch, reference_params):
    return compiled[_shape_key(batch)](state, batch, reference_params)

  return JaxSide(run, state, reference_params, init_params, xla_flops, compile_seconds, len(compiled))


def cached_reference_logps(args, config, params, batches, layout=None, unpadded=False):
  """Reference log-probs of every batch, computed once (as the trainer caches them)."""
  model = models.Transformer(config)
  forward = jax.jit(lambda p, b: jnp.split(completion_logps(model, p, b, layout, unpadded), 2))
  out = []
  for batch in batches:
    ref_chosen, ref_rejected = forward(params, batch)
    out.append({**batch, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected})
  return out


# ----------------------------------------------------------------------------- torch side


@dataclasses.dataclass
class TorchSide:
  step: Callable[[dict[str, Any]], dict[str, Any]]
  batches: list[dict[str, Any]]


def build_torch(args, config, init_params, batches_np, cached: bool) -> TorchSide:
  right_padded = not args.torch_padding_mask
  torch.manual_seed(args.seed)
  if args.objective == "dpo":
    policy = torch_reference.Transformer(config, right_padded=right_padded)
    torch_reference.load_jax_params(policy, init_params)
  else:
    policy = torch_reference.RewardModel(config, right_padded=right_padded)
    torch_reference.load_jax_params(policy, init_params)
  policy.train()
  kwargs = {"foreach": {"foreach": True}, "fused": {"fused": True},
            "for-loop": {"foreach": False}}[args.torch_optimizer]
  optimizer = torch.optim.AdamW(policy.parameters(), lr=args.learning_rate, betas=(0.9, 0.999),
                                eps=1e-8, weight_decay=args.weight_decay, **kwargs)
  batches = []
  for batch in batches_np:
    converted = {}
    for name, value in batch.items():
      value = np.array(value)  # a writable copy (arrays from JAX are read-only)
      if name.endswith("_tokens"):
        value = value.astype(np.int64)  # gather and embedding index with int64
      converted[name] = torch.from_numpy(value)
    batches.append(converted)
  if args.objective == "reward_model":
    return TorchSide(torch_reference.make_reward_step(policy, optimizer), batches)
  reference = None
  if not cached:
    reference = torch_reference.Transformer(config, right_padded=right_padded)
    torch_reference.load_jax_params(reference, init_params)
    reference.eval().requires_grad_(False)
  return TorchSide(torch_reference.make_dpo_step(policy, reference, optimizer, args.beta), batches)


# ----------------------------------------------------------------------------- run


@dataclasses.dataclass
class Runner:
  """One implementation: a callable running step i and blocking until it is done."""

  name: str
  run: Callable[[int], dict[str, float | np.ndarray]]
  flops: float
  times: list[float] = dataclasses.field(default_factory=list)
  faults: list[int] = dataclasses.field(default_factory=list)  # minor page faults per timed step


def jax_runner(name: str, side: JaxSide, batches: list[dict[str, jax.Array]], flops: float) -> Runner:
  def run(i: int):
    side.state, outputs = side.step(side.state, batches[i % len(batches)], side.reference_params)
    jax.block_until_ready((side.state, outputs))
    return {"loss": float(outputs["loss"]), "aux": np.asarray(outputs["aux"])}

  return Runner(name, run, flops)


def torch_runner(name: str, side: TorchSide, flops: float) -> Runner:
  def run(i: int):
    outputs = side.step(side.batches[i % len(side.batches)])
    aux = outputs.get("logps", outputs.get("rewards"))
    return {"loss": float(outputs["loss"]), "aux": aux.numpy()}

  return Runner(name, run, flops)


def _minor_faults() -> int:
  """Minor page faults of this process so far (the sides run one at a time, so the
  difference around a step is that step's)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def round_ratios(jax_times: list[float], other_times: list[float], steps: int) -> list[float]:
  """Speed-up round by round: the other side's median step time over JAX's, per round of
  `steps` timed steps each (the rounds interleave the sides, so each ratio is taken
  under one load). Their spread shows how far the overall median ratio can be trusted."""
  cut = lambda times: [times[i:i + steps] for i in range(0, len(times), steps)]
  return [statistics.median(o) / statistics.median(j) for j, o in zip(cut(jax_times), cut(other_times))]


def check_agreement(reference: dict, other: dict, label: str, aux_name: str) -> str:
  loss_diff = abs(reference["loss"] - other["loss"])
  aux_diff = float(np.max(np.abs(reference["aux"] - other["aux"])))
  aux_scale = float(np.max(np.abs(reference["aux"])))
  return (f"{label}: loss jax {reference['loss']:.6f} torch {other['loss']:.6f} |diff| {loss_diff:.2e}; "
          f"{aux_name} max |diff| {aux_diff:.2e} (max |value| {aux_scale:.3g})")


def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  memory = configure_process(args)
  config = model_config(args)
  use_torch = torch is not None and not args.no_torch

  print(f"train step benchmark: objective={args.objective}"
        f"{' (cached reference log-probs)' if args.cached_reference else ''}; "
        f"d_model={config.d_model} n_layers={config.n_layers} n_heads={config.n_heads} "
        f"n_kv_heads={config.n_kv_heads} d_ff={config.d_ff} vocab={config.vocab_size} "
        f"seq_len={args.seq_len} batch_pairs={args.batch_pairs} (float32, AdamW)")
  torch_text = (f"torch {torch.__version__} ({torch.get_num_threads()} threads, AdamW {args.torch_optimizer}, "
                f"attention {'explicit padding mask' if args.torch_padding_mask else 'is_causal'})"
                if use_torch else "torch: not used")
  print(f"jax {jax.__version__} (backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}); {torch_text}")
  print(f"host memory, both sides (one process): {memory}")
  if torch is None:
    print(f"PyTorch columns skipped: torch is not installed ({TORCH_ERROR}); "
          "install the CPU build with `.venv/bin/pip install torch==2.13.0`.")
  elif args.no_torch:
    print("PyTorch columns skipped: --no_torch.")

  jax_peak, torch_peak = measure_peak(args.peak_size)
  # The MFU denominator is the faster of the two large matmuls: the best this CPU did.
  peak = max(jax_peak, torch_peak or 0.0)
  peak_text = f"peak: jitted float32 matmul {args.peak_size}^3: {jax_peak / 1e9:.1f} GFLOP/s"
  if torch_peak is not None:
    peak_text += f", torch.mm: {torch_peak / 1e9:.1f} GFLOP/s"
  print(peak_text + f" -> MFU denominator {peak / 1e9:.1f} GFLOP/s")

  batches_np = real_batches(args) if args.data else make_batches(args)
  batches = [jax.device_put(b) for b in batches_np]
  jax_cached = args.objective == "dpo" and args.cached_reference
  layout = packed_np = None
  if args.padding_free:
    # One row per batch (one data-parallel shard); documents are as wide as the longest of
    # the benchmark's batches, as the trainer measures it on its data sets.
    width = packing.document_width({f"batch {i}": b for i, b in enumerate(batches_np)}, args.share_prompt)
    packed_np = [packing.pack_pairs(b, rows=1, share_prompt=args.share_prompt, width=width,
                                    per_octave=args.buckets_per_octave) for b in batches_np]
    if args.objective == "reward_model":  # as in the trainer: rewards need no completion tokens
      packed_np = [{k: v for k, v in b.items() if k not in packing.TARGET_KEYS} for b in packed_np]
    batches = [jax.device_put(b) for b in packed_np]
    lengths = sorted({b["packed_tokens"].shape[1] for b in packed_np})
    targets = sorted({b["target_tokens"].shape[1] for b in packed_np if "target_tokens" in b})
    print(f"padding-free ({args.buckets_per_octave} sizes per octave): one row of "
          f"{'/'.join(map(str, lengths))} slots per batch (two rows: "
          f"{2 * args.batch_pairs} x {args.seq_len} = {2 * args.batch_pairs * args.seq_len})"
          + (f", logits at {'/'.join(map(str, targets))} targets" if args.objective == "dpo" else "")
          + f"; attention per document, {width} slots wide{'; prompt once per pair' if args.share_prompt else ''}")
  elif args.share_prompt:
    # Measured on the benchmark's batches, as the trainer measures its data sets.
    layout = shared_prompt.layout_for({f"batch {i}": b for i, b in enumerate(batches_np)})
    outputs = (f"logits at {layout.num_targets} completion positions per pair" if args.objective == "dpo"
               else "rewards at the two last tokens")
    print(f"shared prompt: packed rows of {layout.length} slots (two rows: {2 * args.seq_len}), {outputs}")
  zeros = {"ref_chosen_logps": jnp.zeros(args.batch_pairs), "ref_rejected_logps": jnp.zeros(args.batch_pairs)}
  jax_side = build_jax(args, config, [{**b, **zeros} for b in batches] if jax_cached else batches,
                       jax_cached, layout, args.padding_free)
  if jax_cached:
    batches = cached_reference_logps(args, config, jax.device_put(jax_side.init_params), batches, layout,
                                     args.padding_free)
  total_params = sum(np.size(x) for x in jax.tree.leaves(jax_side.init_params))
  tokens = 2 * args.batch_pairs * args.seq_len
  real = sum(int(b["chosen_attention_mask"].sum() + b["rejected_attention_mask"].sum()) for b in batches_np)
  print(f"parameters: {total_params / 1e6:.2f}M ({matmul_parameters(config, args.objective) / 1e6:.2f}M in "
        f"matmuls); tokens/step {tokens} (2 x {args.batch_pairs} x {args.seq_len}, "
        f"{100 * real / (tokens * len(batches_np)):.0f}% non-pad)")

  with_reference = args.objective == "dpo"
  flops_jax = model_flops(config, args, reference_forward=with_reference and not jax_cached, layout=layout,
                          packed=packed_np)
  kind = ", packed rows" if layout else (", padding-free rows" if args.padding_free else "")
  flops_text = f"model FLOPs/step (analytic{kind}): {flops_jax / 1e9:.1f} G"
  if jax_side.xla_flops is not None:
    flops_text += f"; XLA cost_analysis of the JAX step: {jax_side.xla_flops / 1e9:.1f} G"
  print(flops_text + f"; JAX compile {jax_side.compile_seconds:.1f} s"
        + (f" ({jax_side.shapes} batch shapes)" if jax_side.shapes > 1 else ""))

  label = "jax (cached ref)" if jax_cached else ("jax (ref forward)" if with_reference else "jax")
  if layout is not None or args.padding_free:
    tag = ", ".join(t for t, on in (("shared", args.share_prompt), ("padding-free", args.padding_free)) if on)
    label = label.replace(")", f", {tag})") if ")" in label else f"jax ({tag})"
  runners = [jax_runner(label, jax_side, batches, flops_jax)]
  if use_torch:
    if with_reference:
      runners.append(torch_runner("torch (ref forward)", build_torch(args, config, jax_side.init_params,
                                                                     batches_np, cached=False),
                                  model_flops(config, args, reference_forward=True)))
      if jax_cached:
        cached_np = [{**two_rows, "ref_chosen_logps": np.asarray(b["ref_chosen_logps"]),
                      "ref_rejected_logps": np.asarray(b["ref_rejected_logps"])}
                     for two_rows, b in zip(batches_np, batches)]
        runners.append(torch_runner("torch (cached ref)", build_torch(args, config, jax_side.init_params,
                                                                      cached_np, cached=True),
                                    model_flops(config, args, reference_forward=False)))
    else:
      runners.append(torch_runner("torch", build_torch(args, config, jax_side.init_params,
                                                       batches_np, cached=False), flops_jax))

  # Same weights, same batch twice: both steps must agree, the second one after an AdamW
  # update, so that it also checks the gradients and the optimizer. How far the second
  # step moved from the first shows the size of that update next to the disagreement.
  aux_name = "policy log-probs" if with_reference else "rewards"
  first = [r.run(0) for r in runners]
  second = [r.run(0) for r in runners]
  moved_loss = abs(second[0]["loss"] - first[0]["loss"])
  moved_aux = float(np.max(np.abs(second[0]["aux"] - first[0]["aux"])))
  print(f"check: the update moved the JAX loss by {moved_loss:.2e} and the {aux_name} by up to "
        f"{moved_aux:.2e} (same batch, step 2 vs step 1)")
  for runner, one, two in zip(runners[1:], first[1:], second[1:]):
    print(f"check vs {runner.name}: " + check_agreement(first[0], one, "step 1", aux_name))
    print(f"check vs {runner.name}: " + check_agreement(second[0], two, "step 2", aux_name))
  for runner in runners:
    for i in range(args.warmup):
      runner.run(2 + i)

  step_index = 2 + args.warmup
  for _ in range(args.rounds):
    for runner in runners:
      for i in range(args.steps):
        faults, start = _minor_faults(), time.perf_counter()
        runner.run(step_index + i)
        runner.times.append(time.perf_counter() - start)
        runner.faults.append(_minor_faults() - faults)
    step_index += args.steps

  timed = args.rounds * args.steps
  print(f"\nmedian of {timed} timed steps ({args.rounds} rounds x {args.steps}, after {2 + args.warmup} untimed)")
  name_width = max(28, *(len(r.name) + 2 for r in runners))
  print(f"{'':{name_width}s}{'median s':>10s}{'min s':>9s}{'max s':>9s}{'pairs/s':>10s}{'GFLOP/s':>10s}{'MFU':>8s}"
        f"{'faults/step':>13s}")
  medians = {}
  for runner in runners:
    median = statistics.median(runner.times)
    medians[runner.name] = median
    print(f"{runner.name:{name_width}s}{median:10.3f}{min(runner.times):9.3f}{max(runner.times):9.3f}"
          f"{args.batch_pairs / median:10.2f}{runner.flops / median / 1e9:10.1f}"
          f"{100 * runner.flops / median / peak:7.1f}%{statistics.median(runner.faults):13.0f}")
  jax_median = medians[runners[0].name]
  for runner in runners[1:]:
    speedup = medians[runner.name] / jax_median
    target = ""
    if runner.name.startswith("torch (ref forward)") or runner.name == "torch":
      target = f" (target {'2' if jax_cached else '1.5'}x: {'met' if speedup >= (2 if jax_cached else 1.5) else 'MISSED'})"
    rounds = " ".join(f"{r:.2f}x" for r in round_ratios(runners[0].times, runner.times, args.steps))
    print(f"speed-up {runners[0].name} over {runner.name}: {speedup:.2f}x{target}; per round: {rounds}")
  # ru_maxrss is in KiB on Linux, in bytes on macOS.
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
  print(f"peak resident memory of the process (both sides, compilation included): {peak_rss:.0f} MiB")


if __name__ == "__main__":
  main()
