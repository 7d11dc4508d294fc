"""Benchmark: the time of one online iteration (rollout, scoring, update) of the tiny PPO and
GRPO configs, the share of each phase, and the same GRPO iteration with TRL's `GRPOTrainer`.

    .venv/bin/python benchmarks/rl_step.py
    .venv/bin/python benchmarks/rl_step.py --iterations=10 --warmup=2 --objectives=ppo,grpo --no-trl

rlhf_jax side: `rlhf_jax.rl.train` on `configs/{ppo,grpo}.py:preset=tiny` (the toy task:
toy prompts, the reward counts the toy GOOD marker in the completion, `rlhf_jax.rl.toy`),
run for `--warmup + --iterations` iterations; the loop times every iteration's phases
(`phase_seconds`: rollout = sampling with the KV cache + reference log-probs (+ critic
values), reward = the host-side reward function on decoded texts, update = prepare +
epochs x minibatches of train steps). The first `--warmup` iterations (compilation) are
left out; the median of the rest is printed, per phase and in total:

  rlhf_jax_ppo seconds/iteration 0.123 rollout 0.040 (33%) reward 0.001 (1%) update 0.082 (66%)

TRL side (`trl.GRPOTrainer`, CPU, PyTorch eager): the same iteration as the GRPO config,
the same model shape as a `transformers.LlamaForCausalLM` (RoPE, RMSNorm, SwiGLU, grouped
query attention, untied output layer) from a fresh initialisation, the same toy prompts
through a word-level tokenizer of the toy vocabulary (ids written as numbers, as in
`rlhf_jax.rl.prompts`), the same reward function; `rollout.prompts` prompts x
`num_samples` generations of `max_new_tokens` at temperature 1, beta 0.04 (a reference
model), one optimizer step per generation (`steps_per_generation=1`, one iteration),
`loss_type="grpo"` (sequence mean, our GRPO aggregation), no gradient checkpointing.
TRL's time per step (generation, reward, reference and policy log-probs, the update)
is measured with a `TrainerCallback` from step begin to step end; the first `--warmup`
steps are left out. Then:

  trl_grpo seconds/iteration 0.456
  trl_grpo / rlhf_jax_grpo 3.70

When TRL (`pip install trl`; the `bench` extra) or PyTorch is not installed, or TRL cannot
run here (it must not download anything), the TRL lines are replaced by one saying why.
Measured figures go to docs/benchmarks.md only ("Online iteration against TRL").
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _config(objective: str, args: argparse.Namespace):
  spec = importlib.util.spec_from_file_location(f"_config_{objective}", REPO / "configs" / f"{objective}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("preset=tiny")
  config.train.steps = args.warmup + args.iterations
  config.train.log_every = config.train.steps
  config.train.progress_bar = False
  config.train.samples_every = 0
  config.checkpoint.every = 0
  config.checkpoint.async_save = False
  if args.prompts:
    config.rollout.prompts = args.prompts
  if args.max_new_tokens:
    config.rollout.max_new_tokens = args.max_new_tokens
  return config


def run_rlhf_jax(objective: str, args: argparse.Namespace) -> dict:
  from rlhf_jax import rl  # pylint: disable=g-import-not-at-top
  config = _config(objective, args)
  with tempfile.TemporaryDirectory() as workdir:
    results = rl.train(config, workdir)
  phases = {name: values[args.warmup:] for name, values in results["phase_seconds"].items()}
  totals = [sum(parts) for parts in zip(*phases.values())]
  return {"config": config, "total": statistics.median(totals),
          "phases": {name: statistics.median(values) for name, values in phases.items()}}


def _print_rlhf_jax(name: str, result: dict) -> None:
  total = result["total"]
  parts = " ".join(f"{phase} {seconds:.4f} ({100 * seconds / total:.0f}%)" for phase, seconds in result["phases"].items())
  print(f"{name} seconds/iteration {total:.4f} {parts}", flush=True)


def run_trl_grpo(config, args: argparse.Namespace) -> float:
  """Median seconds per GRPOTrainer step on the GRPO config's iteration (see the docstring)."""
  import datasets  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import trl  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer, models as tokenizer_models, pre_tokenizers  # pylint: disable=g-import-not-at-top

  from rlhf_jax import data, models  # pylint: disable=g-import-not-at-top
  from rlhf_jax.rl import prompts as prompts_lib, toy  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(args.torch_threads)
  torch.manual_seed(0)
  vocab_size = int(config.data.toy.vocab_size)
  shape = models.get_preset("tiny", vocab_size=vocab_size)
  special = {data.TOY_PAD: "<pad>", data.TOY_BOS: "<s>", data.TOY_EOS: "</s>"}
  vocab = {special.get(i, str(i)): i for i in range(vocab_size)}
  word_level = Tokenizer(tokenizer_models.WordLevel(vocab, unk_token="<pad>"))
  word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tokenizer = transformers.PreTrainedTokenizerFast(
      tokenizer_object=word_level, pad_token="<pad>", bos_token="<s>", eos_token="</s>", padding_side="left")
  llama = transformers.LlamaConfig(
      vocab_size=vocab_size, hidden_size=shape.d_model, intermediate_size=shape.d_ff,
      num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads, num_key_value_heads=shape.n_kv_heads,
      max_position_embeddings=shape.max_len, rms_norm_eps=shape.norm_eps, rope_theta=shape.rope_theta,
      tie_word_embeddings=False, pad_token_id=data.TOY_PAD, bos_token_id=data.TOY_BOS, eos_token_id=data.TOY_EOS)
  model_dir = tempfile.mkdtemp(prefix="rl_step_llama_")
  # TRL builds its reference model from the policy's path: a local folder, nothing downloaded.
  transformers.LlamaForCausalLM(llama).save_pretrained(model_dir)
  tokenizer.save_pretrained(model_dir)
  prompts = prompts_lib.toy_prompts(
      int(config.data.toy.num_prompts), seed=0, vocab_size=vocab_size,
      max_words=int(config.data.toy.max_prompt_words), max_prompt_length=int(config.data.max_prompt_length))
  dataset = datasets.Dataset.from_dict({"prompt": [f"<s> {text}" for text in prompts.texts]})

  def reward(prompts, completions, **kwargs):
    del kwargs
    return toy.good_marker_count(prompts, completions)

  rows = int(config.rollout.prompts) * int(config.rollout.num_samples)
  steps = args.warmup + args.iterations
  with tempfile.TemporaryDirectory() as output_dir:
    settings = trl.GRPOConfig(
        output_dir=output_dir, per_device_train_batch_size=rows, num_generations=int(config.rollout.num_samples),
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        max_completion_length=int(config.rollout.max_new_tokens), temperature=float(config.rollout.temperature),
        learning_rate=float(config.optim.learning_rate), beta=float(config.loss.kl_coef), loss_type="grpo",
        scale_rewards="group", epsilon=float(config.loss.clip_eps), max_steps=steps, logging_steps=steps,
        save_strategy="no", report_to="none", use_cpu=True, bf16=False, gradient_checkpointing=False,
        disable_tqdm=True, dataloader_num_workers=0, seed=0)
    times: list[float] = []

    class Timer(transformers.TrainerCallback):
      start = 0.0

      def on_step_begin(self, *unused, **kwargs):
        Timer.start = time.perf_counter()

      def on_step_end(self, *unused, **kwargs):
        times.append(time.perf_counter() - Timer.start)

    trainer = trl.GRPOTrainer(model=model_dir, reward_funcs=reward, args=settings, train_dataset=dataset,
                              processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
  shutil.rmtree(model_dir, ignore_errors=True)
  if len(times) <= args.warmup:
    raise RuntimeError(f"GRPOTrainer ran {len(times)} steps, expected {steps}.")
  return statistics.median(times[args.warmup:])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--objectives", default="ppo,grpo", help="comma-separated online configs to time")
  parser.add_argument("--iterations", type=int, default=8, help="timed iterations")
  parser.add_argument("--warmup", type=int, default=2, help="first iterations left out (compilation)")
  parser.add_argument("--prompts", type=int, default=0, help="rollout.prompts (0: the preset's)")
  parser.add_argument("--max_new_tokens", type=int, default=0, help="rollout.max_new_tokens (0: the preset's)")
  parser.add_argument("--trl", action=argparse.BooleanOptionalAction, default=True,
                      help="also time TRL's GRPOTrainer on the GRPO iteration")
  parser.add_argument("--torch_threads", type=int, default=2, help="torch.set_num_threads for TRL")
  args = parser.parse_args(argv)
  if args.iterations < 1 or args.warmup < 1:
    parser.error("--iterations and --warmup must be >= 1 (the first iteration compiles).")
  if args.torch_threads < 1:
    parser.error("--torch_threads must be >= 1.")
  sys.path.insert(0, str(REPO))
  objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
  results = {}
  for objective in objectives:
    results[objective] = run_rlhf_jax(objective, args)
    _print_rlhf_jax(f"rlhf_jax_{objective}", results[objective])
  if not args.trl:
    return
  # Nothing may be downloaded: the model and tokenizer are built here.
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  missing = [name for name in ("torch", "transformers", "trl") if importlib.util.find_spec(name) is None]
  if missing:
    print(f"trl_grpo skipped: {', '.join(missing)} not installed (pip install torch==2.13.0 trl)", flush=True)
    return
  config = results["grpo"]["config"] if "grpo" in results else _config("grpo", args)
  try:
    seconds = run_trl_grpo(config, args)
  except Exception as error:  # pylint: disable=broad-except
    print(f"trl_grpo skipped: GRPOTrainer failed here ({type(error).__name__}: {str(error)[:300]})", flush=True)
    return
  print(f"trl_grpo seconds/iteration {seconds:.4f}", flush=True)
  if "grpo" in results:
    print(f"trl_grpo / rlhf_jax_grpo {seconds / results['grpo']['total']:.2f}", flush=True)
  print(json.dumps({"iterations": args.iterations, "warmup": args.warmup,
                    "rollout": {k: v for k, v in config.rollout.to_dict().items()}}), flush=True)


if __name__ == "__main__":
  main()
