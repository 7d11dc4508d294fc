"""`benchmarks/generate.py`: its printed lines follow from its own round times, its
recompute decoder draws what `models.generate` draws, and its Hugging Face twin is the
same function (when transformers is installed)."""

import re
import statistics
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import generate as benchmark  # noqa: E402  (benchmarks/generate.py)
from rlhf_jax import models  # noqa: E402

SMALL = ["--d_model=32", "--n_layers=2", "--n_heads=4", "--n_kv_heads=2", "--vocab=64", "--prompt_len=6",
         "--new_tokens=10", "--batch=3", "--rounds=3", "--recompute_bucket=4",
         # malloc settings are process-wide: leave pytest's alone (tests/test_host_memory.py)
         "--no-keep_freed_memory"]
RATE = re.compile(r"^(\S+) tokens/s (\d+\.\d)$")
TIMES = re.compile(r"^(\S+) round times \(s\): ([\d. ]+); median ([\d.]+) s, ([\d.]+) ms per new token$")


def _check_numbers(out: str, names: tuple[str, ...]) -> dict[str, float]:
  """Every rate, median and ratio recomputed from the printed round times."""
  lines = out.splitlines()
  rates = {m.group(1): float(m.group(2)) for m in map(RATE.match, lines) if m}
  assert tuple(rates) == names, out
  assert all(name in benchmark.NAMES for name in rates)
  times = {m.group(1): m for m in map(TIMES.match, lines) if m}
  assert tuple(times) == names
  for name, match in times.items():
    rounds = [float(t) for t in match.group(2).split()]
    assert len(rounds) == 3
    median = statistics.median(rounds)
    # Printed to 4 decimals (seconds): bounds, not equalities.
    assert abs(float(match.group(3)) - median) <= 1e-4
    assert abs(float(match.group(4)) - 1e3 * float(match.group(3)) / 10) <= 0.0015 + 1e3 * 1e-4 / 10
    tokens = 3 * 10
    assert tokens / (median + 1e-4) - 0.05 <= rates[name] <= tokens / max(median - 1e-4, 1e-9) + 0.05
  for other in names[1:]:
    ratio = float(re.search(rf"^rlhf_jax / {other}: ([\d.]+)x$", out, re.M).group(1))
    assert ratio == pytest.approx(rates["rlhf_jax"] / rates[other], rel=1e-3, abs=0.006)
  return rates


def test_lines_follow_from_the_round_times_without_hf(capsys):
  benchmark.main(SMALL + ["--no_hf"])
  out = capsys.readouterr().out
  assert "hf_generate skipped: --no_hf" in out
  assert re.search(r"^rlhf_jax: compilation [\d.]+ s, first call [\d.]+ s \(not timed\)$", out, re.M)
  assert re.search(r"^recompute: compilation [\d.]+ s, first call [\d.]+ s \(not timed\)$", out, re.M)
  _check_numbers(out, ("rlhf_jax", "recompute"))


def test_hf_generate_is_the_same_model(capsys):
  pytest.importorskip("transformers", reason="the Hugging Face side needs transformers (the bench extra)")
  # One torch thread: pytest may share the CPUs with other processes (OpenMP spins).
  # Non-default rope theta and norm epsilon: the checkpoint written for transformers carries them.
  benchmark.main(SMALL + ["--no_recompute", "--temperature=0.8", "--top_k=20", "--torch_threads=1",
                          "--rope_theta=500", "--norm_eps=1e-5"])
  out = capsys.readouterr().out
  _check_numbers(out, ("rlhf_jax", "hf_generate"))
  check = re.search(r"check vs hf: logits on the prompts max \|diff\| (\S+) \(scale (\S+)\); greedy completions of "
                    r"3 rows x 8 tokens (\S+)", out)
  assert float(check.group(1)) < 1e-4 * max(1.0, float(check.group(2))) and check.group(3) == "identical", out


def test_recompute_decoder_draws_what_generate_draws():
  # Sampling (the key schedule and the draws); greedy decoding is the same code with argmax.
  args = benchmark.parse_args(SMALL + ["--top_k=30"])
  model = models.Transformer(args.config)
  prompts = np.random.default_rng(0).integers(1, args.vocab, size=(3, 6)).astype(np.int32)
  params = jax.jit(model.init)(jax.random.key(0), prompts)["params"]
  params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                        is_leaf=lambda x: hasattr(x, "value"))
  key = jax.random.key(5)
  expected = models.generate(model, params, prompts, np.ones(prompts.shape, bool), key, args.sampling)
  recomputed = benchmark.recompute_sampler(model, args.sampling, 6, args.recompute_bucket)(params, prompts, key)
  np.testing.assert_array_equal(recomputed[:, :6], prompts)
  np.testing.assert_array_equal(recomputed[:, 6:], expected.completion_tokens)
