"""Prompts of online runs: toy prompts, prompt files of every kind, truncation, rejects."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from rlhf_jax import data
from rlhf_jax.rl import prompts as prompts_lib

REPO = Path(__file__).resolve().parents[2]
# The HH-RLHF sample beside the checkout (../shared/data/hh-rlhf; from a worktree
# further up).
HH_RLHF = next((p / "shared" / "data" / "hh-rlhf" / "harmless-base-test-head1500.jsonl.gz" for p in REPO.parents
                if (p / "shared" / "data" / "hh-rlhf").is_dir()), REPO / ".." / "shared" / "data" / "hh-rlhf" /
               "harmless-base-test-head1500.jsonl.gz")


def _need_hh_rlhf() -> None:
  if not HH_RLHF.is_file():
    pytest.skip(f"HH-RLHF sample not present at {HH_RLHF} (../shared/data beside the checkout; "
                "see ../shared/data/README.md)")


def test_toy_prompts_are_left_padded_filler_words():
  prompts = prompts_lib.toy_prompts(50, seed=3, vocab_size=20, max_words=5, max_prompt_length=9)
  # As many slots as the longest prompt (bos + 5 words), not max_prompt_length.
  assert prompts.tokens.shape == (50, 6) and len(prompts) == 50 and prompts.toy
  for row, mask, text in zip(prompts.tokens, prompts.mask, prompts.texts):
    words = [int(w) for w in text.split()]
    assert 2 <= len(words) <= 5 and all(data.toy.TOY_FIRST_WORD <= w < 20 for w in words)
    # [pad ...] [bos] words: the real tokens end the row.
    np.testing.assert_array_equal(row[mask], [data.TOY_BOS] + words)
    assert mask[-len(words) - 1:].all() and not mask[:-len(words) - 1].any()
  again = prompts_lib.toy_prompts(50, seed=3, vocab_size=20, max_words=5, max_prompt_length=9)
  np.testing.assert_array_equal(again.tokens, prompts.tokens)
  # Completion text: ids as numbers; pad, bos and eos decode to nothing (train.sampling.ToyIds).
  assert prompts.completion_text([7, data.TOY_PAD, 9, data.TOY_EOS]) == "7 9"
  assert prompts.completion_text([7, 9]) == "7 9"
  with pytest.raises(ValueError, match="data.toy.max_prompt_words must lie in"):
    prompts_lib.toy_prompts(5, seed=0, vocab_size=20, max_words=7, max_prompt_length=7)


def _write(path: Path, records) -> str:
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
  return str(path)


def _settings(train, **kwargs):
  return prompts_lib.PromptSettings(train=train, tokenizer_vocab_size=kwargs.pop("vocab", 320), **kwargs)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
  """A tokenizer trained on the HH-RLHF sample (files too small to train one on)."""
  _need_hh_rlhf()
  prefix = tmp_path_factory.mktemp("tokenizer") / "spm"
  with gzip.open(HH_RLHF, "rt") as f:
    texts = [json.loads(line)["chosen"] for line in f][:300]
  data.train_tokenizer(None, prefix, vocab_size=400, texts=texts)
  return str(prefix.with_suffix(".model"))


def test_preference_file_gives_its_distinct_prompts_and_rejects_bad_rows(tmp_path):
  dialogue = "\n\nHuman: what is the weather like today in the mountains?\n\nAssistant:"
  rows = [
      {"chosen": dialogue + " Sunny and mild.", "rejected": dialogue + " No idea."},
      {"chosen": dialogue + " Cold.", "rejected": dialogue + " Go away."},  # same prompt again
      {"chosen": "\n\nHuman: a poem?\n\nAssistant: Roses.", "rejected": "\n\nHuman: a poem?\n\nAssistant: No."},
      '{"chosen": "broken json',
  ]
  path = _write(tmp_path / "hh.jsonl", rows)
  prompts = prompts_lib.load_prompts(_settings(path, max_prompt_length=12), tmp_path / "run")
  assert prompts.texts == [dialogue, "\n\nHuman: a poem?\n\nAssistant:"]
  record = prompts.provenance
  assert record["train"]["format"] == "hh_rlhf"
  assert record["train"]["read"] == 4 == record["train"]["accepted"] + record["train"]["rejected"]
  rejects = [json.loads(line) for line in (tmp_path / "run" / "rejects" / "prompts.jsonl").read_text().splitlines()]
  assert len(rejects) == 1 and rejects[0]["line"] == 4
  tokenizer = prompts.tokenizer
  assert (tmp_path / "run" / "tokenizer" / "spm.model").is_file()
  # Cut from the left to 12 tokens, the bos first (the data layer's policy), left-padded.
  encoded = [tokenizer.encode(text) for text in prompts.texts]
  assert len(encoded[0]) > 11  # the long prompt is cut
  assert record["prompts"] == {"distinct": 2, "duplicates_dropped": 1, "max_prompt_length": 12, "prompt_slots": 12,
                               "truncated": sum(len(ids) > 11 for ids in encoded)}
  for row, mask, ids in zip(prompts.tokens, prompts.mask, encoded):
    kept = [tokenizer.bos_id] + ids[-11:]
    np.testing.assert_array_equal(row[mask], kept)
    assert mask[12 - len(kept):].all() and not mask[:12 - len(kept)].any()
  assert prompts.completion_text(tokenizer.encode(" Sunny.") + [tokenizer.eos_id]) == " Sunny."


@pytest.mark.parametrize("records, format_name", [
    ([{"prompt": "Say hi.", "completion": " Hi."}, {"prompt": "Count.", "completion": " 1 2"}], "prompt_completion"),
    ([{"prompt": "Say hi."}, {"prompt": "Count."}], "prompts"),
    ([{"prompt": "Say hi.", "completion": " Hi.", "label": True},
      {"prompt": "Count.", "completion": " x", "label": False}], "unpaired"),
])
def test_every_kind_of_file_with_prompts(tmp_path, records, format_name, tokenizer_file):
  path = _write(tmp_path / "data.jsonl", records)
  prompts = prompts_lib.load_prompts(_settings(path, tokenizer=tokenizer_file), tmp_path / "run")
  assert prompts.tokenizer.name == tokenizer_file and not (tmp_path / "run" / "tokenizer").exists()
  assert prompts.texts == ["Say hi.", "Count."]
  assert prompts.provenance["train"]["format"] == format_name


def test_empty_prompts_join_the_readers_rejects_in_file_order(tmp_path, tokenizer_file):
  # Line 1 is rejected after reading (empty prompt), line 2 by the reader (not a string):
  # one rejects file, the data layer's layout, in file order; read = accepted + rejected.
  path = _write(tmp_path / "prompts.jsonl", [{"prompt": "  "}, {"prompt": 3}, {"prompt": "Say hi."}])
  prompts = prompts_lib.load_prompts(_settings(path, tokenizer=tokenizer_file), tmp_path / "run")
  assert prompts.texts == ["Say hi."]
  train = prompts.provenance["train"]
  assert (train["read"], train["accepted"], train["rejected"]) == (3, 1, 2)
  rejects = [json.loads(line) for line in Path(train["rejects_path"]).read_text().splitlines()]
  assert rejects == [
      {"file": path, "line": 1, "field": "prompt", "code": "empty_prompt",
       "reason": "the prompt is empty (nothing to complete)", "record": {"prompt": "  "}},
      {"file": path, "line": 2, "field": "prompt", "code": "wrong_type",
       "reason": "expected a string, got int 3", "record": {"prompt": 3}},
  ]


def test_unusable_prompt_files_are_clear_errors(tmp_path):
  path = _write(tmp_path / "texts.jsonl", [{"text": "only text"}])
  with pytest.raises(data.DataError, match="cannot find prompts in records with the fields \\['text'\\]"):
    prompts_lib.load_prompts(_settings(path), tmp_path / "run")
  path = _write(tmp_path / "empty.jsonl", [{"prompt": "  "}, {"prompt": ""}])
  with pytest.raises(data.DataError, match="none of the 2 records has a non-empty prompt"):
    prompts_lib.load_prompts(_settings(path), tmp_path / "run2")
  with pytest.raises(ValueError, match="data.format 'text' is not a format with prompts"):
    prompts_lib.load_prompts(_settings(path, format="text"), tmp_path / "run3")


def test_hh_rlhf_sample(tmp_path):
  _need_hh_rlhf()
  prompts = prompts_lib.load_prompts(_settings(str(HH_RLHF), vocab=400, max_prompt_length=64), tmp_path)
  record = prompts.provenance
  assert record["train"]["read"] == 1500 == record["train"]["accepted"] + record["train"]["rejected"]
  with gzip.open(HH_RLHF, "rt") as f:
    expected = {data.split_hh_dialogue(json.loads(line)["chosen"])[0] for line in f}
  assert set(prompts.texts) <= expected and len(prompts) == record["prompts"]["distinct"]
  assert all(t.endswith("\n\nAssistant:") for t in prompts.texts)
  assert (prompts.tokens[prompts.mask.argmax(1) == 0][:, 0] == prompts.bos_id).all()  # full rows start with bos
