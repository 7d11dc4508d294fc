"""Shared pieces of the Hugging Face checkpoint tests: the fixtures (made by
tests/models/fixtures/make_hf_fixtures.py), a jitted forward, and fixture copies to break."""

import json
import shutil
from pathlib import Path

import jax
import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"
CAUSAL = ["llama", "llama3_gqa_tied", "llama_linear_bias", "mistral", "qwen2", "gpt2"]


def expected(name):
  return dict(np.load(FIXTURES / name / "expected.npz"))


def apply(model, params, data, **options):
  """The model's jitted forward on a fixture's tokens (one compile, not op by op)."""
  forward = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m, **options))
  return np.asarray(forward(params, data["tokens"], data["attention_mask"]))


def logits_of(model, params, data):
  return apply(model, params, data)


def assert_logits_match(model, params, data):
  mask = data["attention_mask"]
  np.testing.assert_allclose(logits_of(model, params, data)[mask], data["logits"][mask], atol=1e-4, rtol=0)


def copy_fixture(name, tmp_path):
  target = tmp_path / name
  shutil.copytree(FIXTURES / name, target)
  return target


def edit_config(directory, **changes):
  path = directory / "config.json"
  config = json.loads(path.read_text())
  config.update(changes)
  path.write_text(json.dumps(config))
