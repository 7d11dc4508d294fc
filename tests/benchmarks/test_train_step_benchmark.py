"""`benchmarks/train_step.py` helpers: the synthetic batches follow the data convention,
and the analytic FLOP count equals a hand count and XLA's own count of a forward."""

import json
import re
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_step  # noqa: E402
from rlhf_jax import models  # noqa: E402
from rlhf_jax.train import shared_prompt  # noqa: E402


def test_batches_follow_the_token_convention():
  args = train_step.parse_args(["--batch_pairs=5", "--seq_len=32", "--vocab=50", "--batches=2"])
  batches = train_step.make_batches(args)
  assert len(batches) == 2
  for batch in batches:
    for side in ("chosen", "rejected"):
      tokens = batch[f"{side}_tokens"]
      attention = batch[f"{side}_attention_mask"]
      loss = batch[f"{side}_loss_mask"]
      assert tokens.shape == (5, 32) and tokens.dtype == np.int32
      lengths = attention.sum(1)
      # Right padded: real tokens first, then pad ids only.
      np.testing.assert_array_equal(attention, np.arange(32)[None] < lengths[:, None])
      np.testing.assert_array_equal(tokens[~attention], train_step.PAD)
      assert (tokens[:, 0] == train_step.BOS).all()
      assert (tokens[np.arange(5), lengths - 1] == train_step.EOS).all()
      # Completion (with eos) counted, bos and prompt not, nothing outside the sequence.
      assert not (loss & ~attention).any() and not loss[:, 0].any()
      assert loss[np.arange(5), lengths - 1].all() and (loss.sum(1) >= 2).all()
    # Chosen and rejected share the prompt (everything before the first loss token).
    starts_c = batch["chosen_loss_mask"].argmax(1)
    starts_r = batch["rejected_loss_mask"].argmax(1)
    np.testing.assert_array_equal(starts_c, starts_r)
    for row, start in enumerate(starts_c):
      np.testing.assert_array_equal(batch["chosen_tokens"][row, :start], batch["rejected_tokens"][row, :start])


def test_rejects_must_be_a_folder(tmp_path, capsys):
  not_a_folder = tmp_path / "rejects.jsonl"
  not_a_folder.write_text("")
  with pytest.raises(SystemExit):
    train_step.parse_args([f"--rejects={not_a_folder}"])
  assert f"--rejects must be a folder (created if missing), got the file {not_a_folder}" in capsys.readouterr().err


def test_model_flops_hand_count():
  args = train_step.parse_args(["--d_model=8", "--n_layers=1", "--n_heads=2", "--n_kv_heads=1",
                                "--d_ff=16", "--vocab=10", "--seq_len=8", "--batch_pairs=1"])
  config = train_step.model_config(args)
  # q 8x(2x4) + k, v 8x(1x4) each + out (2x4)x8 + gate, up, down 3x8x16 + lm_head 8x10.
  assert train_step.matmul_parameters(config, "dpo") == 64 + 32 + 32 + 64 + 384 + 80
  per_token_forward = 2 * 656 + 4 * 1 * 8 * 8  # + QK^T and AV over 8 keys of width 8
  tokens = 2 * 1 * 8
  assert train_step.model_flops(config, args, reference_forward=False) == 3 * tokens * per_token_forward
  assert train_step.model_flops(config, args, reference_forward=True) == 4 * tokens * per_token_forward


def test_model_flops_match_xla_cost_analysis():
  args = train_step.parse_args(["--d_model=128", "--n_layers=2", "--n_heads=4", "--vocab=1000",
                                "--seq_len=64", "--batch_pairs=2"])
  config = train_step.model_config(args)
  model = models.Transformer(config)
  params = nn.unbox(models.abstract_params(model))
  tokens = jax.ShapeDtypeStruct((4, 64), jnp.int32)
  mask = jax.ShapeDtypeStruct((4, 64), jnp.bool_)
  compiled = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m)).lower(params, tokens, mask).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic_forward = train_step.model_flops(config, args, reference_forward=False) / 3
  # The analytic count takes all T keys (4 L T D per token); `causal_attention` skips the
  # upper-right quarter of the scores (two query blocks): L T D per token fewer.
  skipped = 4 * 64 * config.n_layers * 64 * config.d_model
  # XLA also counts the elementwise work (norms, RoPE, softmax, SwiGLU): a few percent.
  assert analytic_forward - skipped <= cost["flops"] <= 1.1 * analytic_forward


def test_packed_model_flops_hand_count():
  args = train_step.parse_args(["--d_model=8", "--n_layers=1", "--n_heads=2", "--n_kv_heads=1",
                                "--d_ff=16", "--vocab=10", "--seq_len=8", "--batch_pairs=1", "--share_prompt"])
  config = train_step.model_config(args)
  layout = shared_prompt.SharedPromptLayout(length=12, num_targets=8)
  # The body (656 matmul parameters without the 80 of lm_head) on 12 packed slots with
  # attention over 12 keys; the output layer on the 8 completion positions only.
  per_row = 12 * (2 * 576 + 4 * 1 * 12 * 8) + 8 * 2 * 80
  assert train_step.model_flops(config, args, reference_forward=False, layout=layout) == 3 * per_row
  assert train_step.model_flops(config, args, reference_forward=True, layout=layout) == 4 * per_row


def test_packed_model_flops_match_xla_cost_analysis():
  args = train_step.parse_args(["--d_model=128", "--n_layers=2", "--n_heads=4", "--vocab=1000",
                                "--seq_len=64", "--batch_pairs=2", "--share_prompt"])
  config = train_step.model_config(args)
  layout = shared_prompt.SharedPromptLayout(length=96, num_targets=64)
  model = models.Transformer(config)
  params = nn.unbox(models.abstract_params(model))
  ints = jax.ShapeDtypeStruct((2, 96), jnp.int32)
  mask = jax.ShapeDtypeStruct((2, 96), jnp.bool_)
  slots = jax.ShapeDtypeStruct((2, 64), jnp.int32)
  forward = lambda p, t, m, s, q, o: model.apply({"params": p}, t, m, segment_ids=s, positions=q, logit_slots=o)
  compiled = jax.jit(forward).lower(params, ints, mask, ints, ints, slots).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  analytic_forward = train_step.model_flops(config, args, reference_forward=False, layout=layout) / 3
  skipped = 2 * 96 * config.n_layers * 96 * config.d_model  # as above: a quarter of the scores
  # The last block computes queries, attention output and feed-forward at the 64 logit
  # slots only: the 96 - 64 other slots skip those matmuls and their scores.
  d, f = config.d_model, config.d_ff
  pruned = 2 * (96 - 64) * (2 * (2 * d * d + 3 * d * f) + 4 * 96 * d)
  assert analytic_forward - skipped - pruned <= cost["flops"] <= 1.1 * (analytic_forward - pruned)


HH_RLHF = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test-head1500.jsonl.gz"


@pytest.mark.skipif(not HH_RLHF.is_file(), reason=f"real data not found at {HH_RLHF} (see ../shared/data)")
def test_real_batches_are_tokenized_hh_rlhf_pairs_that_share_their_prompt(tmp_path, capsys):
  args = train_step.parse_args([f"--data={HH_RLHF}", "--vocab=600", "--seq_len=64", "--batch_pairs=3",
                                "--batches=2", "--share_prompt", f"--rejects={tmp_path}"])
  batches = train_step.real_batches(args)
  assert len(batches) == 2
  # Every record is accounted for: used, or in a rejects file with its reason.
  line = re.search(r"(\d+) records read = (\d+) pairs tokenized \+ (\d+) unusable records \+ (\d+) pairs "
                   r"emptied by truncation", capsys.readouterr().out)
  read, used, unusable, emptied = map(int, line.groups())
  assert read == 1500 and read == used + unusable + emptied
  for name, count in (("records.jsonl", unusable), ("truncation.jsonl", emptied)):
    path = tmp_path / name
    rows = [json.loads(row) for row in path.read_text().splitlines()] if path.exists() else []
    assert len(rows) == count and all(row["reason"] for row in rows)
  for batch in batches:
    assert batch["chosen_tokens"].shape == (3, 64)
    # Right padded, loss mask on the completion only, same prompt segment on both sides:
    # exactly what the packing checks (it raises otherwise).
    prompt, chosen, rejected = shared_prompt.pair_extents(batch)
    assert (prompt >= 2).all() and (prompt <= 32).all()  # bos + at most half of 64
    np.testing.assert_array_equal(chosen, batch["chosen_loss_mask"].sum(1))
    assert (batch["chosen_tokens"] < 600).all()
  # Different rows in the two batches (drawn without replacement).
  assert not np.array_equal(batches[0]["chosen_tokens"], batches[1]["chosen_tokens"])


def test_packed_reward_model_flops_hand_count():
  args = train_step.parse_args(["--objective=reward_model", "--d_model=8", "--n_layers=1", "--n_heads=2",
                                "--n_kv_heads=1", "--d_ff=16", "--vocab=10", "--seq_len=8", "--batch_pairs=1",
                                "--share_prompt"])
  config = train_step.model_config(args)
  layout = shared_prompt.SharedPromptLayout(length=12, num_targets=8)
  # Body 576 matmul parameters on 12 slots, the 8 -> 1 reward head at the two last tokens.
  per_row = 12 * (2 * 576 + 4 * 1 * 12 * 8) + 2 * 2 * 8
  assert train_step.model_flops(config, args, reference_forward=False, layout=layout) == 3 * per_row


def test_padding_free_model_flops_hand_count():
  args = train_step.parse_args(["--d_model=8", "--n_layers=1", "--n_heads=2", "--n_kv_heads=1",
                                "--d_ff=16", "--vocab=10", "--seq_len=8", "--batch_pairs=1", "--padding_free"])
  config = train_step.model_config(args)
  # One row of 16 slots holding documents of 5 and 7 tokens, 6 targets (2 of them padding).
  slots = np.full((1, 2, 8), -1)
  slots[0, 0, :5], slots[0, 1, :7] = np.arange(5), np.arange(5, 12)
  packed = {"packed_tokens": np.zeros((1, 16)), "packed_document_slots": slots,
            "target_tokens": np.zeros((1, 6)), "reward_slots": np.zeros((1, 2))}
  # Body 576 matmul parameters on the 16 slots; attention over each token's own document
  # (5 x 5 + 7 x 7 query-key pairs); the output layer at the 6 targets.
  per_row = 16 * 2 * 576 + 4 * 1 * 8 * (25 + 49) + 6 * 2 * 80
  assert train_step.model_flops(config, args, reference_forward=True, packed=[packed]) == 4 * per_row


_SMALL_RUN = ["--d_model=32", "--n_layers=2", "--n_heads=2", "--vocab=50", "--seq_len=32", "--batch_pairs=4",
              "--rounds=1", "--steps=1", "--warmup=0", "--batches=2", "--peak_size=64",
              # malloc settings are process-wide: leave pytest's alone (tests/test_host_memory.py)
              "--no-keep_freed_memory"]


def _torch_checks(capsys, flags: list[str], output: str) -> tuple[str, list[tuple[float, float]]]:
  """Runs the benchmark small with `flags`; its output and the (loss, `output`) |diff|
  of every "check vs torch" line."""
  pytest.importorskip("torch", reason="the PyTorch side needs torch (the bench extra)")
  train_step.main(_SMALL_RUN + flags)
  out = capsys.readouterr().out
  diffs = [(float(re.search(r"loss jax \S+ torch \S+ \|diff\| (\S+);", line).group(1)),
            float(re.search(output + r" max \|diff\| (\S+) ", line).group(1)))
           for line in re.findall(r"check vs torch.*", out)]
  return out, diffs


def test_padding_free_benchmark_agrees_with_torch(capsys):
  out, diffs = _torch_checks(capsys, ["--padding_free", "--share_prompt", "--cached_reference"], "log-probs")
  assert "padding-free (8 sizes per octave): one row of" in out
  assert len(diffs) == 4  # steps 1 and 2, against torch with and without the reference forward
  for loss_diff, logp_diff in diffs:
    assert loss_diff < 1e-4 and logp_diff < 1e-3, (loss_diff, logp_diff)


def test_padding_free_reward_model_benchmark_agrees_with_torch(capsys):
  # The reward model's packed batches carry no completion tokens (as in the trainer).
  out, diffs = _torch_checks(capsys, ["--objective=reward_model", "--padding_free", "--buckets_per_octave=2"],
                             "rewards")
  assert "padding-free (2 sizes per octave): one row of" in out and "targets" not in out.split("padding-free")[1]
  assert len(diffs) == 2  # steps 1 and 2
  for loss_diff, reward_diff in diffs:
    assert loss_diff < 1e-5 and reward_diff < 1e-4, (loss_diff, reward_diff)


def test_round_ratios_are_medians_per_round():
  # Two rounds of three steps: round medians 1.0 / 2.0 (jax) and 1.5 / 3.2 (other).
  jax_times = [1.0, 0.9, 1.2, 2.0, 2.5, 1.0]
  other = [1.5, 9.0, 1.4, 3.2, 3.0, 3.3]
  np.testing.assert_allclose(train_step.round_ratios(jax_times, other, 3), [1.5 / 1.0, 3.2 / 2.0])


def test_table_rows_follow_from_the_step_times(capsys):
  """Without torch: the JAX row's pairs/s recomputed from its median, its MFU from its
  GFLOP/s and the peak, and a whole number of page faults per step."""
  train_step.main(_SMALL_RUN + ["--no_torch"])
  out = capsys.readouterr().out
  assert "host memory, both sides (one process): " in out and "faults/step" in out
  lines = out.splitlines()
  row = lines[next(i for i, line in enumerate(lines) if "faults/step" in line) + 1]
  assert row.startswith("jax (ref forward)")
  median, _, _, pairs_per_second, gflops, mfu, faults = row[len("jax (ref forward)"):].split()
  median, pairs_per_second, gflops = float(median), float(pairs_per_second), float(gflops)
  batch_pairs = int(next(f for f in _SMALL_RUN if f.startswith("--batch_pairs")).split("=")[1])
  # Every number is printed rounded (the median to 0.5 ms, the rates and the peak to their
  # last digit): bounds, not equalities.
  slowest, fastest = median + 5e-4, median - 5e-4
  assert batch_pairs / slowest - 0.005 <= pairs_per_second <= batch_pairs / fastest + 0.005
  peak = float(re.search(r"MFU denominator ([\d.]+) GFLOP/s", out).group(1))
  low, high = 100 * (gflops - 0.05) / (peak + 0.05) - 0.05, 100 * (gflops + 0.05) / (peak - 0.05) + 0.05
  assert low <= float(mfu.rstrip("%")) <= high
  assert faults.isdigit()
  # At least the model's parameters and Adam moments (float32) were resident.
  peak = float(re.search(r"peak resident memory of the process \(both sides, compilation included\): (\d+) MiB",
                         out).group(1))
  parameters = float(re.search(r"parameters: ([\d.]+)M", out).group(1)) * 1e6
  assert peak >= 3 * 4 * parameters / 2**20
