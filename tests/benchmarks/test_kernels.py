"""benchmarks/kernels.py: every piece's JAX values against NumPy, and against PyTorch
when it is installed."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import kernels  # noqa: E402
import train_step  # noqa: E402
from rlhf_jax import host_memory  # noqa: E402

ARGS = ["--tokens=48", "--d_model=16", "--d_ff=24", "--n_heads=2", "--documents=3", "--width=8", "--repeats=1"]


@pytest.fixture(scope="module")
def pieces():
  return kernels.pieces(kernels.parse_args(ARGS))


def _sigmoid(a):
  return 1 / (1 + np.exp(-a))


def _numpy_swiglu(params, x, readout):
  """Loss sum(y * r) of y = (silu(x G) * x U) D and its gradients, by hand (float64)."""
  g, u, d = (np.asarray(params[k], np.float64) for k in ("gate", "up", "down"))
  x = np.asarray(x, np.float64)[0]
  a, b = x @ g, x @ u
  s = _sigmoid(a)
  h = a * s * b
  r = np.asarray(readout, np.float64)[0]
  dh = r @ d.T
  da = dh * b * (s + a * s * (1 - s))
  db = dh * a * s
  return np.sum((h @ d) * r), (da @ g.T + db @ u.T)[None], x.T @ da, x.T @ db, h.T @ r


def _numpy_attention_loss(q, k, v, readout):
  """sum(out * r) for causal softmax attention per document (float64)."""
  q, k, v = (np.asarray(t, np.float64).transpose(0, 2, 1, 3) for t in (q, k, v))  # [D, H, W, Dh]
  scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
  width = q.shape[2]
  scores = np.where(np.tril(np.ones((width, width), bool)), scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  out = (weights / weights.sum(-1, keepdims=True)) @ v
  return float(np.sum(out.transpose(0, 2, 1, 3) * readout))


def test_every_piece_matches_numpy(pieces):
  names = [p["name"] for p in pieces]
  assert len(names) == 10 and len(set(names)) == 10
  for piece in pieces[:6]:
    first, second = (np.asarray(x, np.float64) for x in piece["inputs"])
    if "forward" in piece["name"]:
      expected = first @ second
    elif "input grad" in piece["name"]:
      expected = first @ second.T
    else:
      expected = first.T @ second
    np.testing.assert_allclose(kernels.run_jax(piece)[0], expected, rtol=1e-4, atol=1e-4)
    assert piece["flops"] == 2 * expected.size * (first.shape[1] if "forward" in piece["name"] or
                                                  "input grad" in piece["name"] else first.shape[0])
  swiglu, split = pieces[6], pieces[7]
  expected_swiglu = _numpy_swiglu(*swiglu["inputs"], swiglu["readout"])
  for value, expected in zip(kernels.run_jax(swiglu), expected_swiglu):
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
  # The layer as separately jitted pieces: the same loss and gradients ([n, d] input).
  got = kernels.run_jax(split)
  assert len(got) == 5 and got[1].shape == expected_swiglu[1].shape[1:]
  for value, expected in zip(got, (expected_swiglu[0], expected_swiglu[1][0], *expected_swiglu[2:])):
    np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-4)
  batched, packed = pieces[8], pieces[9]
  values = kernels.run_jax(batched)
  np.testing.assert_allclose(values[0], _numpy_attention_loss(*batched["inputs"], batched["readout"]), rtol=1e-4)
  # The packed row (a second algorithm: gathers into documents) gives the same loss and gradients.
  for a, b in zip(kernels.run_jax(packed), values):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_torch_pieces_agree_with_jax(pieces):
  if kernels.torch is None:
    pytest.skip(f"torch is not installed ({kernels.TORCH_ERROR}); the PyTorch column is optional")
  compared = 0
  for piece in pieces:
    runner = kernels.torch_runner(piece)
    if runner is None:
      continue
    out = runner()
    assert kernels.relative_difference(kernels.run_jax(piece), out if isinstance(out, tuple) else (out,)) < 1e-4
    compared += 1
  assert compared == 8  # all but the split layer and the packed row


def test_main_prints_every_piece_and_the_feed_forward_split(capsys):
  kernels.main(ARGS + ["--no_torch", "--no-keep_freed_memory"])  # pytest's malloc left alone
  out = capsys.readouterr().out
  assert f"host memory, both sides (one process): {host_memory.status()}" in out
  assert "torch: not used" in out and "SwiGLU forward+backward [48,16]->24" in out
  assert "jax: SwiGLU layer" in out and "its nine matmul forms timed alone" in out
  with pytest.raises(SystemExit):
    kernels.parse_args(["--d_model=10", "--n_heads=4"])


@pytest.mark.parametrize("script", [kernels, train_step])
def test_torch_threads_below_one_is_a_usage_error(script, capsys):
  # Both scripts take the process flags from train_step.add_process_flags.
  with pytest.raises(SystemExit):
    script.parse_args(["--torch_threads=0"])
  assert "argument --torch_threads: must be at least 1, got 0" in capsys.readouterr().err
