"""Tests for the tokenizer, the truncation policy, masks, the tokenization cache and toy data."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from rlhf_jax import data
from rlhf_jax.data import tokenization

REPO = Path(__file__).resolve().parents[2]
WORDS = ("the a to of and is it you what how can I do not be for are this that with have "
         "your me my on at").split()


def corpus(seed=0, n=200):
  rng = np.random.default_rng(seed)
  return [f"\n\nHuman: {' '.join(rng.choice(WORDS, 8))}?\n\nAssistant: {' '.join(rng.choice(WORDS, 10))}."
          for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  prefix = tmp_path_factory.mktemp("tok") / "tiny"
  return data.Tokenizer.load(data.train_tokenizer(None, prefix, vocab_size=320, texts=corpus()))


# --- tokenizer -----------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "\n\nHuman: how are you?\n\nAssistant: I am fine.",
    "  two  leading spaces and trailing  ",
    "Unicode: café, naïve, 日本語, emoji 😀, tab\tand\nnewline",
    "",
])
def test_round_trip_is_exact(tokenizer, text):
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  # Prompt and completion encoded separately concatenate back exactly.
  prompt, completion = "\n\nHuman: hi\n\nAssistant:", " " + text
  assert tokenizer.decode(tokenizer.encode(prompt) + tokenizer.encode(completion)) == prompt + completion


def test_special_tokens_are_explicit_and_distinct(tokenizer):
  assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
  assert len({tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id}) == 4
  assert [tokenizer.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
  assert tokenizer.vocab_size == 320
  # Raw sentencepiece agrees, and encode never emits a special token.
  sp = spm.SentencePieceProcessor(model_proto=tokenizer.model_proto)
  assert (sp.pad_id(), sp.bos_id(), sp.eos_id()) == (0, 2, 3)
  ids = [i for text in corpus(seed=1, n=20) for i in tokenizer.encode(text)]
  assert not {0, 1, 2, 3} & set(ids)


def test_tokenizer_load_errors(tmp_path):
  with pytest.raises(data.DataError, match="no such tokenizer"):
    data.Tokenizer.load(tmp_path / "absent.model")
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(data.DataError, match="not a sentencepiece model"):
    data.Tokenizer.load(tmp_path / "junk.model")


def test_tokenizer_without_pad_needs_an_explicit_pad(tmp_path):
  # A Llama-style model: no pad piece.
  prefix = tmp_path / "nopad"
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus()), model_prefix=str(prefix), vocab_size=300,
      byte_fallback=True, pad_id=-1, unk_id=0, bos_id=1, eos_id=2, minloglevel=2)
  with pytest.raises(data.DataError, match="no pad token"):
    data.Tokenizer.load(f"{prefix}.model")
  tok = data.Tokenizer.load(f"{prefix}.model", pad_id=0)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  with pytest.raises(data.DataError, match="must be distinct"):
    data.Tokenizer.load(f"{prefix}.model", pad_id=1)


def test_train_tokenizer_script(tmp_path):
  corpus_file = tmp_path / "corpus.txt"
  corpus_file.write_text("\n".join(corpus()), encoding="utf-8")
  prefix = tmp_path / "out" / "tok"
  result = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "train_tokenizer.py"), f"--input={corpus_file}",
       f"--model_prefix={prefix}", "--vocab_size=300"],
      capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
  assert result.returncode == 0, result.stderr
  tok = data.Tokenizer.load(f"{prefix}.model")
  assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (300, 0, 2, 3)
  bad = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "train_tokenizer.py"), f"--input={tmp_path}/absent.txt",
       f"--model_prefix={prefix}", "--vocab_size=300"],
      capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
  assert bad.returncode != 0 and "absent.txt: no such corpus file" in bad.stderr
  assert "Traceback" not in bad.stderr


# --- truncation policy ---------------------------------------------------------------


def test_encode_example_on_integer_tokens():
  prompt, completion = [10, 11, 12, 13, 14], [20, 21, 22]
  # The prompt segment (bos + prompt) is cut from the left to 4 tokens; the completion
  # and eos fit exactly in the remaining 4.
  ids, start, prompt_cut, completion_cut = tokenization.encode_example(
      prompt, completion, bos_id=2, eos_id=3, max_length=8, max_prompt_length=4)
  assert ids == [2, 12, 13, 14, 20, 21, 22, 3]
  assert (start, prompt_cut, completion_cut) == (4, True, False)
  # One token shorter: the eos goes first (the reply no longer ends).
  ids, start, prompt_cut, completion_cut = tokenization.encode_example(
      prompt, completion, bos_id=2, eos_id=3, max_length=7, max_prompt_length=4)
  assert ids == [2, 12, 13, 14, 20, 21, 22]
  assert (start, prompt_cut, completion_cut) == (4, True, True)
  # Nothing cut.
  ids, start, prompt_cut, completion_cut = tokenization.encode_example(
      [10], [20], bos_id=2, eos_id=3, max_length=8, max_prompt_length=4)
  assert (ids, start, prompt_cut, completion_cut) == ([2, 10, 20, 3], 2, False, False)


def reference_row(p_ids, c_ids, *, max_length, max_prompt_length, bos=2, eos=3, pad=0):
  """The documented policy, written out independently of the library."""
  prompt_cut = len(p_ids) + 1 > max_prompt_length
  if prompt_cut:
    p_ids = p_ids[len(p_ids) - (max_prompt_length - 1):]
  sequence = [bos] + list(p_ids)
  start = len(sequence)
  room = max_length - start
  completion_cut = len(c_ids) + 1 > room
  sequence += list(c_ids[:room]) if completion_cut else list(c_ids) + [eos]
  tokens = np.full(max_length, pad, np.int32)
  tokens[:len(sequence)] = sequence
  attention = np.arange(max_length) < len(sequence)
  loss = attention & (np.arange(max_length) >= start)
  return tokens, attention, loss, prompt_cut, completion_cut


def test_tokenize_pairs_masks_and_truncation_counts(tokenizer):
  long_prompt = "\n\nHuman: " + " ".join(WORDS) + "?\n\nAssistant:"
  prompts = ["\n\nHuman: hi\n\nAssistant:", long_prompt, "\n\nHuman: hi\n\nAssistant:", long_prompt]
  chosen = [" yes.", " it is.", " " + " ".join(WORDS * 2), " " + " ".join(WORDS * 2)]
  rejected = [" no.", " " + " ".join(WORDS * 2), " no.", " ok."]
  pairs = data.PreferenceData.from_lists(prompts, chosen, rejected, target_prob=[1.0, 0.8, 0.6, 1.0])
  max_length, max_prompt_length = 40, 16
  out = data.tokenize_pairs(pairs, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
  counts = {"prompt": 0, "chosen": 0, "rejected": 0}
  for i in range(len(prompts)):
    p_ids = tokenizer.encode(prompts[i])
    for part, texts in (("chosen", chosen), ("rejected", rejected)):
      tokens, attention, loss, prompt_cut, completion_cut = reference_row(
          p_ids, tokenizer.encode(texts[i]), max_length=max_length, max_prompt_length=max_prompt_length)
      np.testing.assert_array_equal(out[f"{part}_tokens"][i], tokens)
      np.testing.assert_array_equal(out[f"{part}_attention_mask"][i], attention)
      np.testing.assert_array_equal(out[f"{part}_loss_mask"][i], loss)
      counts[part] += completion_cut
      prompt_cut_once = prompt_cut  # the same for both completions
    counts["prompt"] += prompt_cut_once
  assert dict(out.report.truncated) == counts
  # By construction: prompts of rows 1 and 3, chosen of rows 2 and 3, rejected of row 1.
  assert counts == {"prompt": 2, "chosen": 2, "rejected": 1}
  np.testing.assert_allclose(out["target_prob"], [1.0, 0.8, 0.6, 1.0])
  np.testing.assert_array_equal(out["example_index"], [0, 1, 2, 3])
  assert out["chosen_tokens"].dtype == np.int32 and out["chosen_loss_mask"].dtype == bool
  # Row 0 is not truncated: the loss mask selects exactly the completion and eos.
  row = out["chosen_tokens"][0]
  assert tokenizer.decode(row[out["chosen_loss_mask"][0]]) == " yes."
  assert row[out["chosen_loss_mask"][0]][-1] == tokenizer.eos_id
  prompt_part = row[out["chosen_attention_mask"][0] & ~out["chosen_loss_mask"][0]]
  assert prompt_part[0] == tokenizer.bos_id
  assert tokenizer.decode(prompt_part[1:]) == prompts[0]


def test_loss_mask_convention_for_the_shifted_logprobs(tokenizer):
  """Targets tokens[:, 1:] under loss_mask[:, 1:] are exactly the completion and eos."""
  pairs = data.PreferenceData.from_lists(["Q:"], [" yes"], [" no"])
  out = data.tokenize_pairs(pairs, tokenizer, max_length=16, max_prompt_length=8)
  tokens, mask = out["chosen_tokens"][0], out["chosen_loss_mask"][0]
  expected = tokenizer.encode(" yes") + [tokenizer.eos_id]
  assert tokens[1:][mask[1:]].tolist() == expected
  # The first token (bos) never carries loss: no logit predicts it.
  assert not mask[0]


def test_examples_with_no_room_for_the_completion_are_rejected(tokenizer, tmp_path):
  long_prompt = "\n\nHuman: " + " ".join(WORDS) + "?\n\nAssistant:"
  pairs = data.PreferenceData.from_lists(["Q:", long_prompt, "Q:"], [" a", " b", " c"], [" x", " y", " z"])
  # max_prompt_length == max_length lets a long prompt take every position.
  rejects_path = tmp_path / "tokenize_rejects.jsonl"
  out = data.tokenize_pairs(pairs, tokenizer, max_length=10, max_prompt_length=10, rejects_path=rejects_path)
  assert (out.report.examples, out.report.accepted, out.report.rejected) == (3, 2, 1)
  np.testing.assert_array_equal(out["example_index"], [0, 2])
  (reject,) = out.report.rejects
  assert reject["example_index"] == 1 and reject["field"] == "chosen"
  assert "empty after truncation" in reject["reason"] and reject["source"] == "memory:1"
  with open(rejects_path) as f:
    assert [json.loads(line)["example_index"] for line in f] == [1]


def test_bad_settings_are_errors(tokenizer):
  pairs = data.PreferenceData.from_lists(["Q"], [" a"], [" b"])
  with pytest.raises(ValueError, match="max_prompt_length"):
    data.tokenize_pairs(pairs, tokenizer, max_length=8, max_prompt_length=9)
  with pytest.raises(ValueError, match="max_prompt_length"):
    data.tokenize_pairs(pairs, tokenizer, max_length=8, max_prompt_length=0)


def test_sft_and_unpaired_tokenization(tokenizer):
  sft = data.SFTData.from_lists(["", "Q:"], ["the end.", " A."])
  out = data.tokenize_sft(sft, tokenizer, max_length=24, max_prompt_length=8)
  assert set(out.arrays) == set(data.SEQUENCE_KEYS)
  # Plain text: the prompt segment is the bos alone, every text token carries loss.
  text_ids = tokenizer.encode("the end.")
  assert out["tokens"][0, :len(text_ids) + 2].tolist() == [2, *text_ids, 3]
  assert out["loss_mask"][0].tolist() == [False] + [True] * (len(text_ids) + 1) + [False] * (24 - len(text_ids) - 2)
  unpaired = data.UnpairedData.from_lists(["Q:", "Q:"], [" good", " bad"], [True, False])
  out = data.tokenize_unpaired(unpaired, tokenizer, max_length=16, max_prompt_length=8)
  assert set(out.arrays) == set(data.UNPAIRED_KEYS)
  np.testing.assert_array_equal(out["is_desirable"], [True, False])


# --- cache ---------------------------------------------------------------------------


def write_pairs(path, replies):
  with open(path, "w") as f:
    for reply in replies:
      f.write(json.dumps({"prompt": "Q:", "chosen": f" {reply}", "rejected": " no"}) + "\n")


def test_cache_hit_is_identical_and_a_changed_file_misses(tokenizer, tmp_path):
  cache_dir = tmp_path / "cache"
  path = tmp_path / "pairs.jsonl"
  write_pairs(path, ["yes", "sure thing", "ok"])
  settings = dict(max_length=12, max_prompt_length=4, cache_dir=cache_dir)
  first = data.tokenize_pairs(data.load_preference_data(path), tokenizer, **settings)
  assert first.report.cache == "miss"
  files = sorted(os.listdir(cache_dir))
  assert len(files) == 1 and files[0].endswith(".npz")
  second = data.tokenize_pairs(data.load_preference_data(path), tokenizer, **settings)
  assert second.report.cache == "hit"
  assert set(first.arrays) == set(second.arrays) == set(data.PAIR_KEYS)
  for key in data.PAIR_KEYS:
    assert first[key].dtype == second[key].dtype, key
    np.testing.assert_array_equal(first[key], second[key], err_msg=key)
  assert second.report.truncated == first.report.truncated
  # The cache file is plain arrays: it loads without pickle.
  with np.load(cache_dir / files[0], allow_pickle=False) as npz:
    assert "array/chosen_tokens" in npz.files
  # One changed reply: a different file misses and gives the new tokens.
  write_pairs(path, ["yes", "sure thing", "okay"])
  third = data.tokenize_pairs(data.load_preference_data(path), tokenizer, **settings)
  assert third.report.cache == "miss"
  assert tokenizer.decode(third["chosen_tokens"][2][third["chosen_loss_mask"][2]]) == " okay"
  # Different settings miss too.
  fourth = data.tokenize_pairs(data.load_preference_data(path), tokenizer, **{**settings, "max_length": 13})
  assert fourth.report.cache == "miss"
  assert len(os.listdir(cache_dir)) == 3


def test_a_changed_tokenizer_misses_the_cache(tokenizer, tmp_path):
  other = data.Tokenizer.load(data.train_tokenizer(None, tmp_path / "other", vocab_size=300, texts=corpus(seed=5)))
  assert other.fingerprint != tokenizer.fingerprint
  pairs = data.PreferenceData.from_lists(["Q:"], [" yes"], [" no"])
  settings = dict(max_length=12, max_prompt_length=4, cache_dir=tmp_path / "cache")
  assert data.tokenize_pairs(pairs, tokenizer, **settings).report.cache == "miss"
  assert data.tokenize_pairs(pairs, other, **settings).report.cache == "miss"
  assert data.tokenize_pairs(pairs, other, **settings).report.cache == "hit"


# --- toy data ------------------------------------------------------------------------


def test_toy_preference_data_plants_a_separable_rule():
  toy = data.toy_preference_data(50, seed=3, vocab_size=20, max_length=16)
  assert len(toy) == 50
  for part, marker, other in (("chosen", data.TOY_GOOD, data.TOY_BAD), ("rejected", data.TOY_BAD, data.TOY_GOOD)):
    tokens, attention, loss = toy[f"{part}_tokens"], toy[f"{part}_attention_mask"], toy[f"{part}_loss_mask"]
    assert tokens.dtype == np.int32 and tokens.max() < 20 and tokens.min() >= 0
    for row, att, lm in zip(tokens, attention, loss):
      length = att.sum()
      assert att[:length].all() and not att[length:].any()
      assert row[0] == data.TOY_BOS and row[length - 1] == data.TOY_EOS
      assert (row[length:] == data.TOY_PAD).all()
      completion = row[lm]
      assert completion[-1] == data.TOY_EOS
      assert (completion == marker).sum() == 1 and (completion == other).sum() == 0
      prompt = row[att & ~lm][1:]
      assert not np.isin(prompt, [data.TOY_GOOD, data.TOY_BAD, data.TOY_EOS, data.TOY_PAD]).any()
  # The planted reward (GOOD count minus BAD count over completions) ranks every pair.
  def reward(part):
    completion = np.where(toy[f"{part}_loss_mask"], toy[f"{part}_tokens"], -1)
    return (completion == data.TOY_GOOD).sum(1) - (completion == data.TOY_BAD).sum(1)
  assert (reward("chosen") > reward("rejected")).all()
  np.testing.assert_array_equal(toy["example_index"], np.arange(50))
  # Deterministic in the seed.
  again = data.toy_preference_data(50, seed=3, vocab_size=20, max_length=16)
  np.testing.assert_array_equal(again["chosen_tokens"], toy["chosen_tokens"])


def test_toy_sft_and_unpaired():
  sft = data.toy_sft_data(10)
  assert set(sft.arrays) == set(data.SEQUENCE_KEYS)
  assert all((row[mask] == data.TOY_GOOD).sum() == 1 for row, mask in zip(sft["tokens"], sft["loss_mask"]))
  kto = data.toy_unpaired_data(10)
  for row, mask, desirable in zip(kto["tokens"], kto["loss_mask"], kto["is_desirable"]):
    assert (row[mask] == (data.TOY_GOOD if desirable else data.TOY_BAD)).sum() == 1
  with pytest.raises(ValueError, match="max_length"):
    data.toy_preference_data(4, max_length=8)
