"""`rlhf_jax.data.tokenizer` (`rlhf_jax.hf.load_tokenizer`): a pretrained tokenizer behind
the project's interface.

The fixture (tests/models/fixtures/hf/tokenizer, made by make_hf_fixtures.py) is a tiny
byte-level BPE trained with `tokenizers`, with a chat template; `expected.json` holds
transformers' encodings, decodings and `apply_chat_template` outputs for it. A
sentencepiece `tokenizer.model` is checked against sentencepiece itself.
"""

import json
from pathlib import Path

import pytest
import sentencepiece as spm

from rlhf_jax import hf
from rlhf_jax.data.sources import DataError
from rlhf_jax.data.tokenizer import train_tokenizer

FIXTURE = Path(__file__).resolve().parents[1] / "models" / "fixtures" / "hf" / "tokenizer"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
  return hf.load_tokenizer(FIXTURE)


def test_encode_and_decode_match_transformers(tokenizer):
  for text, ids in EXPECTED["encode"].items():
    assert tokenizer.encode(text) == ids, text
    assert tokenizer.decode(ids) == EXPECTED["decode_skip_special"][text], text
    assert tokenizer.decode(ids, skip_special_tokens=False) == text, text
  texts = list(EXPECTED["encode"])
  assert tokenizer.encode_batch(texts) == [EXPECTED["encode"][t] for t in texts]


def test_special_tokens(tokenizer):
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (
      EXPECTED["bos_id"], EXPECTED["eos_id"], EXPECTED["pad_id"])
  assert tokenizer.vocab_size == EXPECTED["vocab_size"]
  assert tokenizer.unk_id is None
  assert [tokenizer.id_to_piece(i) for i in (tokenizer.bos_id, tokenizer.eos_id)] == ["<s>", "<|im_end|>"]
  # A special-token string inside text is that token, and decode drops it by default.
  assert tokenizer.encode("<|im_end|>") == [tokenizer.eos_id]


def test_chat_template_matches_transformers(tokenizer):
  for case in EXPECTED["chat"]:
    generation = case["add_generation_prompt"]
    assert tokenizer.apply_chat_template(case["messages"], add_generation_prompt=generation) == case["text"]
    assert tokenizer.apply_chat_template(case["messages"], add_generation_prompt=generation,
                                         tokenize=True) == case["ids"]
  pairs = [(m["role"], m["content"]) for m in EXPECTED["chat"][0]["messages"]]
  assert tokenizer.apply_chat_template(pairs) == EXPECTED["chat"][0]["text"]


def test_chat_template_errors_and_filters(tokenizer):
  with pytest.raises(DataError, match="chat template: unknown role tool"):
    tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])
  with pytest.raises(DataError, match="message 0 must be"):
    tokenizer.apply_chat_template(["hello"])
  messages = [{"role": "user", "content": "Café 東京", "name": None}]
  text = hf.render_chat_template("{{ messages | tojson }}", messages)
  assert text == json.dumps([{"role": "user", "content": "Café 東京"}], ensure_ascii=False)
  loop = "{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}"
  assert hf.render_chat_template(loop, [("user", "a"), ("user", "b")]) == "a"
  generation = "{% generation %}{{ messages[0].content }}{% endgeneration %}!"
  assert hf.render_chat_template(generation, [("assistant", "ok")]) == "ok!"
  # The sandbox refuses attribute access to Python internals.
  with pytest.raises(DataError, match="chat template"):
    hf.render_chat_template("{{ messages.__class__.__mro__ }}", [("user", "a")])


def test_fingerprint_tracks_template_and_vocabulary(tokenizer, tmp_path):
  tokenizer.save(tmp_path / "same")
  assert hf.load_tokenizer(tmp_path / "same").fingerprint == tokenizer.fingerprint
  changed = tmp_path / "changed"
  tokenizer.save(changed)
  config = json.loads((changed / "tokenizer_config.json").read_text())
  config["chat_template"] = "{{ messages[0].content }}"
  (changed / "tokenizer_config.json").write_text(json.dumps(config))
  assert hf.load_tokenizer(changed).fingerprint != tokenizer.fingerprint


def test_save_and_load_round_trip(tokenizer, tmp_path):
  tokenizer.save(tmp_path)
  again = hf.load_tokenizer(tmp_path)
  for text, ids in EXPECTED["encode"].items():
    assert again.encode(text) == ids
  assert again.chat_template == tokenizer.chat_template
  assert (again.bos_id, again.eos_id, again.pad_id) == (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  assert config["tokenizer_class"] == "PreTrainedTokenizerFast" and config["add_bos_token"] is False


def test_pad_defaults_to_eos_and_can_be_chosen(tmp_path, tokenizer):
  tokenizer.save(tmp_path)
  config = json.loads((tmp_path / "tokenizer_config.json").read_text())
  del config["pad_token"]
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  (tmp_path / "special_tokens_map.json").unlink()
  assert hf.load_tokenizer(tmp_path).pad_id == tokenizer.eos_id
  assert hf.load_tokenizer(tmp_path, pad_id=0).pad_id == 0
  config["bos_token"] = "<never>"
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
  with pytest.raises(DataError, match="its bos token '<never>' is not in the vocabulary"):
    hf.load_tokenizer(tmp_path)


def test_missing_tokenizer_files(tmp_path):
  with pytest.raises(DataError, match="no tokenizer.json and no tokenizer.model"):
    hf.load_tokenizer(tmp_path)
  with pytest.raises(DataError, match="no such tokenizer directory or GGUF file"):
    hf.load_tokenizer(tmp_path / "absent")


@pytest.fixture(scope="module")
def sentencepiece_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("sp")
  corpus = ["The quick brown fox jumps over the lazy dog.", "Café crème and naïve résumé.",
            "Hello world! What is 2+2?"] * 30
  model = train_tokenizer(None, directory / "tok", vocab_size=400, texts=corpus,
                          user_defined_symbols=["<|im_start|>", "<|im_end|>"])
  model.rename(directory / "tokenizer.model")
  (directory / "tokenizer_config.json").write_text(json.dumps({
      "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
      "added_tokens_decoder": {"4": {"content": "<|im_start|>", "special": True},
                               "5": {"content": "<|im_end|>", "special": True}},
      "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"}))
  return directory


def test_sentencepiece_model_with_special_tokens(sentencepiece_dir):
  """Text between special tokens is encoded by sentencepiece piece by piece; the special
  tokens are their own ids; decode restores the text."""
  tokenizer = hf.load_tokenizer(sentencepiece_dir)
  sp = spm.SentencePieceProcessor(model_file=str(sentencepiece_dir / "tokenizer.model"))
  assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
  start, end = sp.piece_to_id("<|im_start|>"), sp.piece_to_id("<|im_end|>")
  text = "<|im_start|>user\nCafé crème<|im_end|>\nHi"
  assert tokenizer.encode(text) == [start] + sp.encode("user\nCafé crème") + [end] + sp.encode("\nHi")
  assert tokenizer.decode(tokenizer.encode(text), skip_special_tokens=False) == text
  assert tokenizer.decode(tokenizer.encode(text)) == "user\nCafé crème\nHi"
  assert tokenizer.apply_chat_template([("user", "Hi")]) == "<|im_start|>user\nHi<|im_end|>\n"
