"""GGUF files: small ones written here with the `gguf` library the way llama.cpp's
converter writes them (query and key rows permuted for its RoPE layout, Q8_0 weights,
the tokenizer as vocabulary, merges and token types) from the transformers fixtures;
they load to the fixtures' logits and tokenizations. The real SmolLM2 file is in
test_hf_smollm2.py."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from rlhf_jax import hf
from rlhf_jax.data.sources import DataError
from rlhf_jax.models import hf as models_hf

gguf = pytest.importorskip("gguf")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hf"


def llama_cpp_permute(weight, heads):
  """llama.cpp's convert_hf_to_gguf `permute`: rows of each head from (i, i + Dh/2)
  pairs to interleaved (2i, 2i + 1) ones."""
  return (weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:])
          .swapaxes(1, 2).reshape(weight.shape))


def apply(model, params, data, **options):
  forward = jax.jit(lambda p, t, m: model.apply({"params": p}, t, m, **options))
  return np.asarray(forward(params, data["tokens"], data["attention_mask"]))


def fixture_tensors(name):
  directory = FIXTURES / name
  tensors = {}
  for path in sorted(directory.glob("*.safetensors")):
    tensors.update(load_file(path))
  return tensors


def add_tokenizer(writer, pre="default"):
  """The fixture tokenizer as llama.cpp stores a byte-level BPE one."""
  spec = json.loads((FIXTURES / "tokenizer" / "tokenizer.json").read_text())
  vocab = spec["model"]["vocab"]
  tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
  special = {t["content"] for t in spec["added_tokens"] if t["special"]}
  merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
  writer.add_tokenizer_model("gpt2")
  writer.add_tokenizer_pre(pre)
  writer.add_token_list(tokens)
  writer.add_token_merges(merges)
  writer.add_token_types([3 if t in special else 1 for t in tokens])
  writer.add_bos_token_id(vocab["<s>"])
  writer.add_eos_token_id(vocab["<|im_end|>"])
  writer.add_pad_token_id(vocab["<|endoftext|>"])
  writer.add_chat_template((FIXTURES / "tokenizer" / "chat_template.jinja").read_text())


def write_gguf(path, name="mistral", quantize=False, architecture="llama", tokenizer=True, drop=()):
  """The fixture `name` (Llama-shaped) as a GGUF file; with `quantize`, every weight
  whose rows are a multiple of 32 long in Q8_0 (the others stay F32, as llama.cpp does)."""
  config = json.loads((FIXTURES / name / "config.json").read_text())
  tensors = fixture_tensors(name)
  heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
  writer = gguf.GGUFWriter(str(path), architecture)
  writer.add_context_length(config["max_position_embeddings"])
  writer.add_embedding_length(config["hidden_size"])
  writer.add_block_count(config["num_hidden_layers"])
  writer.add_feed_forward_length(config["intermediate_size"])
  writer.add_head_count(heads)
  writer.add_head_count_kv(kv_heads)
  writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
  writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
  writer.add_rope_dimension_count(config["hidden_size"] // heads)
  writer.add_vocab_size(config["vocab_size"])
  if tokenizer:
    add_tokenizer(writer)
  names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
  layer_names = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate",
                 "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
  for hf_name, value in tensors.items():
    if hf_name in drop:
      continue
    if hf_name in names:
      gguf_name = names[hf_name]
    else:
      layer, rest = hf_name[len("model.layers."):].split(".", 1)
      gguf_name = f"blk.{layer}.{layer_names[rest.rsplit('.', 1)[0]]}.weight"
    if hf_name.endswith("q_proj.weight"):
      value = llama_cpp_permute(value, heads)
    elif hf_name.endswith("k_proj.weight"):
      value = llama_cpp_permute(value, kv_heads)
    if quantize and value.ndim == 2 and value.shape[1] % 32 == 0:
      writer.add_tensor(gguf_name, gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0),
                        raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
      writer.add_tensor(gguf_name, value)
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()
  return path


def test_f32_gguf_loads_to_the_transformers_logits(tmp_path):
  """GQA model (4 query, 2 key heads): a wrong or missing unpermutation of the query or
  key rows changes the RoPE pairs and shows in the logits."""
  path = write_gguf(tmp_path / "mistral.gguf")
  model, params = hf.load(path)
  assert (model.config.n_kv_heads, model.config.rope_theta, model.config.param_dtype) == (2, 1e6, "float32")
  data = dict(np.load(FIXTURES / "mistral" / "expected.npz"))
  logits = np.asarray(apply(model, params, data))
  mask = data["attention_mask"]
  np.testing.assert_allclose(logits[mask], data["logits"][mask], atol=1e-4, rtol=0)


def test_q8_0_weights_dequantize_within_the_quantization_error(tmp_path):
  """Q8_0: blocks of 32 along a row, int8 values times an fp16 scale max|x|/127, so each
  weight is within about half a scale step of the original."""
  path = write_gguf(tmp_path / "q8.gguf", quantize=True)
  model, params = hf.load(path)
  original = fixture_tensors("mistral")
  d, h, dh = 32, 4, 8
  ours = {
      "model.embed_tokens.weight": np.asarray(params["embed"]["embedding"]),
      "model.layers.1.self_attn.q_proj.weight": np.asarray(params["layer_1"]["attention"]["query"]).reshape(d, h * dh).T,
      "model.layers.0.mlp.up_proj.weight": np.asarray(params["layer_0"]["mlp"]["up"]).T,
  }
  for name, value in ours.items():
    want = original[name]
    blocks = want.reshape(want.shape[0], -1, 32)
    step = np.abs(blocks).max(axis=-1, keepdims=True) / 127
    error = np.abs(value.reshape(blocks.shape) - blocks)
    assert np.all(error <= 0.6 * step), name
    assert np.any(error > 0), name  # really quantized
  # Rows of 48 (down_proj) stay float32, exact.
  np.testing.assert_array_equal(np.asarray(params["layer_0"]["mlp"]["down"]).T,
                                original["model.layers.0.mlp.down_proj.weight"])


def test_gguf_without_output_layer_is_tied(tmp_path):
  """llama.cpp writes no output.weight for tied models: the logits are then the hidden
  states times the token embeddings."""
  model, params = hf.load(write_gguf(tmp_path / "tied.gguf", drop=("lm_head.weight",)))
  assert model.config.tie_embeddings and "lm_head" not in params
  data = dict(np.load(FIXTURES / "mistral" / "expected.npz"))
  hidden = np.asarray(apply(model, params, data, return_hidden=True))
  logits = np.asarray(apply(model, params, data))
  np.testing.assert_allclose(logits, hidden @ fixture_tensors("mistral")["model.embed_tokens.weight"].T,
                             atol=1e-5)


def test_gguf_tokenizer_matches_the_tokenizer_json_it_came_from(tmp_path):
  """The vocabulary, merges and control tokens of the fixture tokenizer, stored as
  llama.cpp stores them, encode every fixture text to transformers' ids."""
  path = write_gguf(tmp_path / "tok.gguf")
  tokenizer = hf.load_tokenizer(path)
  expected = json.loads((FIXTURES / "tokenizer" / "expected.json").read_text())
  for text, ids in expected["encode"].items():
    assert tokenizer.encode(text) == ids, text
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (
      expected["bos_id"], expected["eos_id"], expected["pad_id"])
  for case in expected["chat"]:
    assert tokenizer.apply_chat_template(case["messages"], add_generation_prompt=case["add_generation_prompt"],
                                         tokenize=True) == case["ids"]


def test_smollm_pre_tokenizer_splits_every_digit(tmp_path):
  """llama.cpp's "smollm" pre-tokenizer splits off each digit (\\p{N}) before GPT-2's
  split; text without digits encodes as with the default one."""
  writer = gguf.GGUFWriter(str(tmp_path / "smol.gguf"), "llama")
  add_tokenizer(writer, pre="smollm")
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.close()
  smol = hf.load_tokenizer(tmp_path / "smol.gguf")
  default = hf.load_tokenizer(FIXTURES / "tokenizer")
  digits = smol.encode("numbers 12345")
  assert [smol.decode([i]) for i in digits[-5:]] == list("12345")
  assert smol.encode("Hello world! Café") == default.encode("Hello world! Café")


def test_gguf_errors(tmp_path):
  path = write_gguf(tmp_path / "model.gguf")
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(path.read_bytes()[:-2000])
  with pytest.raises(hf.CheckpointError, match=r"cut.gguf.*(truncated|not a readable GGUF)"):
    hf.load(cut)
  other = write_gguf(tmp_path / "gpt2.gguf", architecture="gpt2", tokenizer=False)
  with pytest.raises(hf.CheckpointError, match="GGUF architecture 'gpt2' is not supported; supported: 'llama'"):
    hf.load(other)
  writer = gguf.GGUFWriter(str(tmp_path / "pre.gguf"), "llama")
  add_tokenizer(writer, pre="deepseek-llm")
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.close()
  with pytest.raises(DataError, match="GGUF pre-tokenizer 'deepseek-llm' is not supported"):
    hf.load_tokenizer(tmp_path / "pre.gguf")


def test_a_gguf_file_is_parsed_once_until_it_changes(tmp_path, monkeypatch):
  """A run reads its GGUF file several times (architecture, weights, score head,
  tokenizer); the parse is reused while the file is unchanged, and a rewritten file is
  read again."""
  parses = []
  reader = gguf.GGUFReader
  monkeypatch.setattr(gguf, "GGUFReader", lambda *args, **kwargs: parses.append(args) or reader(*args, **kwargs))
  path = write_gguf(tmp_path / "model.gguf")
  first = hf.open_checkpoint(path)
  second = hf.open_checkpoint(path)
  tokenizer = hf.load_tokenizer(path)
  assert len(parses) == 1 and models_hf.read_gguf(path) is models_hf.read_gguf(path)
  assert "lm_head.weight" in first.names() and "lm_head.weight" in second.names()
  assert tokenizer.encode("Hello world") == hf.load_tokenizer(FIXTURES / "tokenizer").encode("Hello world")
  write_gguf(path, drop=("lm_head.weight",))
  again = hf.open_checkpoint(path)
  hf.load_tokenizer(path)
  assert len(parses) == 2 and "lm_head.weight" not in again.names()
