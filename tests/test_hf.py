"""`rlhf_jax.hf`, the facade of pretrained models: every name it promises is the weights'
(`rlhf_jax.models.hf`) or the tokenizers' (`rlhf_jax.data.tokenizer`) own, and a fixture
loads through it with its tokenizer."""

from pathlib import Path

import numpy as np

from rlhf_jax import hf
from rlhf_jax.data import tokenizer as tokenizer_lib
from rlhf_jax.models import hf as models_hf

FIXTURES = Path(__file__).resolve().parent / "models" / "fixtures" / "hf"


def test_the_facade_reexports_the_implementations():
  for name in ("CheckpointError", "load", "mesh_shardings", "model_for", "open_checkpoint", "place", "save"):
    assert getattr(hf, name) is getattr(models_hf, name), name
  assert hf.HFTokenizer is tokenizer_lib.HFTokenizer
  assert hf.load_tokenizer is tokenizer_lib.load_hf_tokenizer
  assert hf.render_chat_template is tokenizer_lib.render_chat_template
  assert sorted(hf.__all__) == sorted(n for n in dir(hf) if not n.startswith("_") and n not in ("annotations",))


def test_a_checkpoint_and_its_tokenizer_load_through_the_facade():
  model, params = hf.load(FIXTURES / "llama")
  data = dict(np.load(FIXTURES / "llama" / "expected.npz"))
  logits = np.asarray(model.apply({"params": params}, data["tokens"], data["attention_mask"]))
  mask = data["attention_mask"]
  np.testing.assert_allclose(logits[mask], data["logits"][mask], atol=1e-4, rtol=0)
  tokenizer = hf.load_tokenizer(FIXTURES / "tokenizer")
  assert tokenizer.decode(tokenizer.encode("hello world")) == "hello world"
