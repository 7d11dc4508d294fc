"""Tokenizers: sentencepiece ones trained here, and pretrained models' own (`HFTokenizer`).

A tokenizer trained here has fixed special ids: pad 0, unk 1, bos 2, eos 3 (pieces
"<pad>", "<unk>", "<s>", "</s>"). Text is not normalised (identity rule, whitespace
kept, no dummy prefix) and unknown characters fall back to bytes, so
`decode(encode(text)) == text` for any text, and `encode(prompt) + encode(completion)`
decodes to `prompt + completion` (prompt and completion are encoded separately so the
boundary between them is exact). Kudo & Richardson 2018, "SentencePiece" (arXiv
1808.06226).

`encode` never adds bos/eos; the tokenization layer places them (see `tokenization.py`).

`HFTokenizer` (built by `load_hf_tokenizer`, also `rlhf_jax.hf.load_tokenizer`) has the
same interface for a pretrained checkpoint's tokenizer: `tokenizer.json` through the
`tokenizers` library, `tokenizer.model` through sentencepiece, or the vocabulary and
merges stored in a GGUF file; with its special tokens and its chat template (Jinja,
rendered as `transformers`' `apply_chat_template` renders it).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sentencepiece as spm

from rlhf_jax.data.formats import ROLE_NAMES, render_messages
from rlhf_jax.data.sources import DataError, read_rows

__all__ = ["SPECIAL_IDS", "HFTokenizer", "Tokenizer", "corpus_texts", "load_hf_tokenizer",
           "render_chat_template", "train_tokenizer"]

_log = logging.getLogger(__name__)

# Ids and pieces of the special tokens of a tokenizer trained by `train_tokenizer`.
SPECIAL_IDS = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
SPECIAL_PIECES = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
_TEXT_SUFFIXES = (".txt", ".txt.gz")
PathLike = str | os.PathLike[str]


class Tokenizer:
  """A sentencepiece model with explicit pad, bos and eos ids.

  Build with `Tokenizer.load(path)` or `Tokenizer(model_bytes)`. `fingerprint` is the
  sha256 of the model bytes (part of tokenization cache keys).
  """

  def __init__(self, model_proto: bytes, *, name: str = "<memory>", pad_id: int | None = None):
    self._proto = bytes(model_proto)
    self.name = name
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self.vocab_size: int = self._sp.vocab_size()
    self.bos_id: int = self._sp.bos_id()
    self.eos_id: int = self._sp.eos_id()
    self.unk_id: int = self._sp.unk_id()
    self.pad_id: int = self._sp.pad_id() if pad_id is None else int(pad_id)
    for special in ("pad", "bos", "eos"):
      value = getattr(self, f"{special}_id")
      if not 0 <= value < self.vocab_size:
        hint = " (pass pad_id=... to choose one)" if special == "pad" else ""
        raise DataError(f"tokenizer {name}: it defines no {special} token{hint}; got id {value}.")
    if len({self.pad_id, self.bos_id, self.eos_id}) != 3:
      raise DataError(
          f"tokenizer {name}: pad {self.pad_id}, bos {self.bos_id} and eos {self.eos_id} "
          "must be distinct.")
    self.fingerprint: str = hashlib.sha256(self._proto).hexdigest()

  @classmethod
  def load(cls, model_path: PathLike, *, pad_id: int | None = None) -> Tokenizer:
    """Loads a sentencepiece `.model` file (the model's own pad id unless `pad_id`)."""
    path = Path(model_path)
    if not path.is_file():
      raise DataError(f"{path}: no such tokenizer model file.")
    try:
      return cls(path.read_bytes(), name=os.fspath(path), pad_id=pad_id)
    except RuntimeError as e:
      raise DataError(f"{path}: not a sentencepiece model ({e}).") from e

  @property
  def model_proto(self) -> bytes:
    return self._proto

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos."""
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """`encode` of many texts at once (one C++ call)."""
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; pad, bos and eos decode to nothing."""
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, token_id: int) -> str:
    return self._sp.id_to_piece(int(token_id))

  def __repr__(self) -> str:
    return (f"Tokenizer({self.name}, vocab_size={self.vocab_size}, pad={self.pad_id}, "
            f"bos={self.bos_id}, eos={self.eos_id})")


def corpus_texts(path: PathLike) -> Iterator[str]:
  """Texts of a corpus file for tokenizer training.

  `.txt` (optionally `.gz`): one text per line. Data files (JSON Lines, Parquet, CSV):
  every string field of every row, and chat message lists rendered with
  `formats.render_messages`. Unreadable rows are skipped with a logged warning.
  """
  path = Path(path)
  if path.name.lower().endswith(_TEXT_SUFFIXES):
    import gzip  # pylint: disable=g-import-not-at-top
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
      for line in f:
        line = line.rstrip("\n")
        if line:
          yield line
    return
  skipped = []
  for row in read_rows(path):
    if row.record is None:
      skipped.append(row)
      continue
    for value in row.record.values():
      if isinstance(value, str) and value:
        yield value
      elif (isinstance(value, list) and value and all(
          isinstance(m, dict) and m.get("role") in ROLE_NAMES and isinstance(m.get("content"), str)
          for m in value)):
        yield render_messages(value)
  if skipped:
    first = skipped[0]
    _log.warning("%s: skipped %d unreadable rows for the tokenizer corpus (first: %s %d: %s).",
                 path, len(skipped), first.location, first.number, first.error.reason)


def train_tokenizer(
    files: PathLike | Sequence[PathLike] | None,
    model_prefix: PathLike,
    *,
    vocab_size: int,
    texts: Iterable[str] = (),
    model_type: str = "bpe",
    character_coverage: float = 0.9995,
    byte_fallback: bool = True,
    user_defined_symbols: Sequence[str] = (),
    max_sentence_length: int = 1 << 16,
    num_threads: int = 1,
) -> Path:
  """Trains a sentencepiece tokenizer and writes `{model_prefix}.model` and `.vocab`.

  Special ids are fixed (`SPECIAL_IDS`: pad 0, unk 1, bos 2, eos 3); text is kept
  exactly (no normalisation, whitespace preserved, no dummy prefix) with byte fallback,
  so every text round-trips. With `byte_fallback` the vocabulary must hold the 256 byte
  pieces plus the required characters, so `vocab_size` of a few hundred is the minimum.

  Args:
    files: corpus files (see `corpus_texts`), or None when only `texts` are given.
    model_prefix: output path without suffix; parent folders are created.
    vocab_size: number of pieces, special tokens included.
    texts: further training texts, e.g. an in-memory corpus.
    model_type: "bpe" or "unigram" (sentencepiece's algorithms).
    character_coverage: share of characters covered by pieces (the rest fall back).
    byte_fallback: encode unknown characters as UTF-8 bytes instead of unk.
    user_defined_symbols: pieces that are never split (e.g. role markers).
    max_sentence_length: longest text (bytes) kept for training; longer are skipped.
    num_threads: trainer threads (1 keeps training deterministic).

  Returns:
    The path of the `.model` file.
  """
  if files is None:
    files = []
  elif isinstance(files, (str, os.PathLike)):
    files = [files]
  for f in files:
    if not Path(f).is_file():
      raise DataError(f"{f}: no such corpus file.")

  def corpus() -> Iterator[str]:
    for f in files:
      yield from corpus_texts(f)
    yield from texts

  model_prefix = Path(model_prefix)
  model_prefix.parent.mkdir(parents=True, exist_ok=True)
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus(),
        model_prefix=os.fspath(model_prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        character_coverage=character_coverage,
        byte_fallback=byte_fallback,
        user_defined_symbols=list(user_defined_symbols),
        pad_id=SPECIAL_IDS["pad"], unk_id=SPECIAL_IDS["unk"],
        bos_id=SPECIAL_IDS["bos"], eos_id=SPECIAL_IDS["eos"],
        pad_piece=SPECIAL_PIECES["pad"], unk_piece=SPECIAL_PIECES["unk"],
        bos_piece=SPECIAL_PIECES["bos"], eos_piece=SPECIAL_PIECES["eos"],
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=max_sentence_length,
        num_threads=num_threads,
        minloglevel=2,
    )
  except RuntimeError as e:
    raise DataError(f"sentencepiece training for {model_prefix} failed: {e}") from e
  return model_prefix.with_name(model_prefix.name + ".model")


# ---------------------------------------------------------------------------------------
# Pretrained models' tokenizers.

_SPECIAL_NAMES = ("bos", "eos", "unk", "pad")


@functools.lru_cache(maxsize=16)
def _compile_chat_template(template: str):
  """A chat template compiled the way transformers compiles it: a sandboxed, immutable
  Jinja environment with `trim_blocks` and `lstrip_blocks`, loop controls, a `tojson`
  that keeps non-ASCII text, `raise_exception` and `strftime_now`, and the
  `{% generation %}` block (rendered as its body)."""
  import jinja2  # pylint: disable=g-import-not-at-top
  from jinja2 import ext, nodes  # pylint: disable=g-import-not-at-top
  from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=g-import-not-at-top

  class GenerationBlock(ext.Extension):
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)

  environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                              extensions=[GenerationBlock, ext.loopcontrols])
  environment.filters["tojson"] = tojson
  environment.globals["raise_exception"] = raise_exception
  environment.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
  return environment.from_string(template)


def _message_dicts(messages: Sequence[Mapping[str, Any]] | Sequence[tuple[str, str]]) -> list[dict]:
  out = []
  for i, message in enumerate(messages):
    if isinstance(message, Mapping):
      # As transformers does: keys whose value is None are dropped (templates test for keys).
      out.append({k: v for k, v in message.items() if v is not None})
    elif isinstance(message, (tuple, list)) and len(message) == 2:
      out.append({"role": message[0], "content": message[1]})
    else:
      raise DataError(f"chat template: message {i} must be a {{'role', 'content'}} dict or a "
                      f"(role, content) pair, got {message!r}.")
  return out


def render_chat_template(template: str, messages, *, add_generation_prompt: bool = False,
                         special_tokens: Mapping[str, str | None] | None = None, **kwargs: Any) -> str:
  """The text `template` renders for `messages` (dicts with "role" and "content", or
  (role, content) pairs), as transformers' `apply_chat_template(..., tokenize=False)`.

  The template sees `messages`, `add_generation_prompt`, the special tokens
  (`bos_token`, `eos_token`, ...) and `kwargs` (e.g. `tools`, `documents`).
  """
  import jinja2  # pylint: disable=g-import-not-at-top
  try:
    compiled = _compile_chat_template(template)
    return compiled.render(messages=_message_dicts(messages), add_generation_prompt=add_generation_prompt,
                           **{**(special_tokens or {}), **kwargs})
  except jinja2.exceptions.TemplateError as e:
    raise DataError(f"chat template: {e}") from e


class _TokenizersBackend:
  """A `tokenizers.Tokenizer` (tokenizer.json, or built from GGUF metadata)."""

  def __init__(self, tokenizer):
    self.tokenizer = tokenizer

  def serialized(self) -> bytes:
    return self.tokenizer.to_str().encode("utf-8")

  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def token_to_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.tokenizer.id_to_token(token_id)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

  def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

  def save(self, directory: Path) -> dict[str, Any]:
    (directory / "tokenizer.json").write_text(self.tokenizer.to_str(), encoding="utf-8")
    return {"tokenizer_class": "PreTrainedTokenizerFast"}


class _SentencePieceBackend:
  """A sentencepiece `tokenizer.model`. Special-token strings in the text are matched
  whole and the pieces between them encoded separately, each with the model's own
  normalisation (the dummy-prefix space included: the "legacy" behaviour of
  transformers' slow Llama tokenizer)."""

  def __init__(self, model_proto: bytes, specials: Sequence[str]):
    self.proto = bytes(model_proto)
    self.processor = spm.SentencePieceProcessor(model_proto=self.proto)
    self.specials = sorted({s for s in specials if s}, key=len, reverse=True)
    self.special_ids = {self.processor.piece_to_id(s) for s in self.specials}

  def serialized(self) -> bytes:
    return self.proto

  def vocab_size(self) -> int:
    return self.processor.vocab_size()

  def token_to_id(self, token: str) -> int | None:
    token_id = self.processor.piece_to_id(token)
    return None if token_id == self.processor.unk_id() and token != self.processor.id_to_piece(token_id) else token_id

  def id_to_token(self, token_id: int) -> str | None:
    return self.processor.id_to_piece(token_id)

  def _encode(self, text: str) -> list[int]:
    ids: list[int] = []
    start = 0
    while start < len(text):
      found = [(text.find(s, start), s) for s in self.specials]
      found = [(at, s) for at, s in found if at >= 0]
      if not found:
        ids.extend(self.processor.encode(text[start:]))
        break
      at, special = min(found, key=lambda f: (f[0], -len(f[1])))
      if at > start:
        ids.extend(self.processor.encode(text[start:at]))
      ids.append(self.processor.piece_to_id(special))
      start = at + len(special)
    return ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [self._encode(t) for t in texts]

  def decode(self, ids: list[int], skip_special_tokens: bool) -> str:
    if skip_special_tokens:
      ids = [i for i in ids if i not in self.special_ids and not self.processor.is_control(i)]
    pieces, run = [], []
    for i in ids:  # special tokens decode to their text, the runs between them through sentencepiece
      if i in self.special_ids:
        pieces.extend([self.processor.decode(run), self.processor.id_to_piece(i)])
        run = []
      else:
        run.append(i)
    pieces.append(self.processor.decode(run))
    return "".join(pieces)

  def save(self, directory: Path) -> dict[str, Any]:
    (directory / "tokenizer.model").write_bytes(self.proto)
    return {"tokenizer_class": "LlamaTokenizer", "legacy": True}


class HFTokenizer:
  """A pretrained model's tokenizer behind the interface of `Tokenizer`.

  `encode` adds no special tokens itself (special-token strings inside the text, such as
  "<|im_start|>", become their ids); `decode` drops special tokens unless
  `skip_special_tokens=False`. `bos_id`, `eos_id`, `unk_id` are None when the tokenizer
  has no such token (Qwen2 has no bos). `pad_id` is the pad token's id, else `pad_id`
  given here, else the eos id: padding is masked, so any id serves, and most pretrained
  models define none. `chat_template` is the Jinja template (None if there is none);
  `apply_chat_template` renders it. `fingerprint` hashes the vocabulary, merges,
  special tokens and template.
  """

  def __init__(self, backend: _TokenizersBackend | _SentencePieceBackend, *, name: str,
               special_tokens: Mapping[str, str | None], chat_template: str | None = None,
               pad_id: int | None = None, extra_config: Mapping[str, Any] | None = None):
    self._backend = backend
    self.name = name
    self.special_tokens = {f"{k}_token": special_tokens.get(f"{k}_token") for k in _SPECIAL_NAMES}
    self.chat_template = chat_template
    self._extra_config = dict(extra_config or {})
    self.vocab_size: int = backend.vocab_size()
    for special in _SPECIAL_NAMES:
      token = self.special_tokens[f"{special}_token"]
      token_id = None if token is None else backend.token_to_id(token)
      if token is not None and token_id is None:
        raise DataError(f"tokenizer {name}: its {special} token {token!r} is not in the vocabulary.")
      setattr(self, f"{special}_id", token_id)
    if pad_id is not None:
      self.pad_id = int(pad_id)
    elif self.pad_id is None:
      self.pad_id = self.eos_id
    if self.pad_id is None or not 0 <= self.pad_id < self.vocab_size:
      raise DataError(f"tokenizer {name}: no pad token and no eos token to pad with; pass pad_id=...")
    digest = hashlib.sha256(backend.serialized())
    digest.update(json.dumps([self.special_tokens, self.chat_template, self.pad_id]).encode("utf-8"))
    self.fingerprint: str = digest.hexdigest()

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without added bos/eos."""
    return self._backend.encode_batch([text])[0]

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return self._backend.encode_batch(list(texts))

  def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
    """Text of `ids`; special tokens decode to nothing unless `skip_special_tokens=False`."""
    return self._backend.decode([int(i) for i in ids], skip_special_tokens)

  def id_to_piece(self, token_id: int) -> str:
    return self._backend.id_to_token(int(token_id))

  def apply_chat_template(self, messages, *, add_generation_prompt: bool = False, tokenize: bool = False,
                          **kwargs: Any) -> str | list[int]:
    """The chat template applied to `messages`, as transformers' `apply_chat_template`:
    the text, or with `tokenize=True` its ids (`encode`, no further special tokens)."""
    if self.chat_template is None:
      raise DataError(f"tokenizer {self.name}: it has no chat template.")
    text = render_chat_template(self.chat_template, messages, add_generation_prompt=add_generation_prompt,
                                special_tokens={k: v for k, v in self.special_tokens.items() if v is not None},
                                **kwargs)
    return self.encode(text) if tokenize else text

  def save(self, directory: PathLike) -> None:
    """Writes the tokenizer as transformers reads it: tokenizer.json (or tokenizer.model)
    and tokenizer_config.json with the special tokens and the chat template."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {**self._extra_config, **self._backend.save(directory)}
    config.update({k: v for k, v in self.special_tokens.items() if v is not None})
    if self.special_tokens["pad_token"] is None and self.pad_id is not None:
      config["pad_token"] = self.id_to_piece(self.pad_id)
    config.update(add_bos_token=False, add_eos_token=False, clean_up_tokenization_spaces=False)
    if self.chat_template is not None:
      config["chat_template"] = self.chat_template
    (directory / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    specials = {k: v for k, v in config.items() if k in self.special_tokens}
    (directory / "special_tokens_map.json").write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n",
                                                       encoding="utf-8")

  def __repr__(self) -> str:
    return (f"HFTokenizer({self.name}, vocab_size={self.vocab_size}, pad={self.pad_id}, "
            f"bos={self.bos_id}, eos={self.eos_id})")


def _token_text(value: Any) -> str | None:
  """A special token as tokenizer_config.json spells it: a string or {"content": ...}."""
  if isinstance(value, Mapping):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: not valid JSON ({e}).") from e
  if not isinstance(value, dict):
    raise DataError(f"{path}: expected a JSON object.")
  return value


def _directory_tokenizer(directory: Path, pad_id: int | None) -> HFTokenizer:
  config_path = directory / "tokenizer_config.json"
  config = _read_json(config_path) if config_path.is_file() else {}
  map_path = directory / "special_tokens_map.json"
  special_map = _read_json(map_path) if map_path.is_file() else {}
  specials = {f"{k}_token": _token_text(config.get(f"{k}_token", special_map.get(f"{k}_token")))
              for k in _SPECIAL_NAMES}
  template = config.get("chat_template")
  if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
    template = named.get("default")
  jinja_path = directory / "chat_template.jinja"
  if jinja_path.is_file():  # transformers 5 writes the template to its own file
    template = jinja_path.read_text(encoding="utf-8")
  if template is not None and not isinstance(template, str):
    raise DataError(f"{config_path}: chat_template must be a string, got {type(template).__name__}.")
  if (directory / "tokenizer.json").is_file():
    import tokenizers  # pylint: disable=g-import-not-at-top
    try:
      backend = _TokenizersBackend(tokenizers.Tokenizer.from_file(os.fspath(directory / "tokenizer.json")))
    except Exception as e:  # tokenizers raises plain Exception subclasses for bad files
      raise DataError(f"{directory / 'tokenizer.json'}: not a readable tokenizer ({e}).") from e
  elif (directory / "tokenizer.model").is_file():
    added = [_token_text(t) for t in (config.get("added_tokens_decoder") or {}).values()]
    try:
      backend = _SentencePieceBackend((directory / "tokenizer.model").read_bytes(),
                                      [t for t in list(specials.values()) + added if t])
    except RuntimeError as e:
      raise DataError(f"{directory / 'tokenizer.model'}: not a sentencepiece model ({e}).") from e
  else:
    raise DataError(f"{directory}: no tokenizer.json and no tokenizer.model.")
  return HFTokenizer(backend, name=os.fspath(directory), special_tokens=specials, chat_template=template,
                     pad_id=pad_id)


# GGUF `tokenizer.ggml.pre` names whose pre-tokenizer is known here (llama.cpp's
# definitions): GPT-2's split, or each digit split off first, then GPT-2's split.
_GGUF_GPT2_PRE = ("default", "gpt2", "mpt", "olmo", "jais")
_GGUF_DIGITS_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")


def _gguf_tokenizer(path: Path, pad_id: int | None) -> HFTokenizer:
  from tokenizers import AddedToken, Tokenizer as BackendTokenizer, decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top

  from rlhf_jax.models.hf import read_gguf  # pylint: disable=g-import-not-at-top

  try:
    reader = read_gguf(path)  # the parse the model's weights were read with, if it was
  except (ValueError, OSError, IndexError, KeyError) as e:
    raise DataError(f"{path}: not a readable GGUF file ({e}).") from e
  field = lambda key, default=None: reader.fields[key].contents() if key in reader.fields else default
  kind = field("tokenizer.ggml.model")
  if kind != "gpt2":
    raise DataError(f"{path}: GGUF tokenizer model {kind!r} is not supported; supported: 'gpt2' "
                    "(byte-level BPE).")
  tokens, merges = field("tokenizer.ggml.tokens"), field("tokenizer.ggml.merges")
  if not tokens or not merges:
    raise DataError(f"{path}: GGUF metadata has no tokenizer.ggml.tokens or tokenizer.ggml.merges.")
  pre = field("tokenizer.ggml.pre", "default")
  if pre in _GGUF_GPT2_PRE:
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  elif pre in _GGUF_DIGITS_PRE:
    pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                             pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  else:
    raise DataError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported; supported: "
                    f"{', '.join(_GGUF_GPT2_PRE + _GGUF_DIGITS_PRE)}.")
  backend = BackendTokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                        merges=[tuple(m.split(" ", 1)) for m in merges]))
  backend.pre_tokenizer = pre_tokenizer
  backend.decoder = decoders.ByteLevel()
  # llama.cpp token types: 3 = control (special: matched whole, dropped by decode), 4 =
  # user-defined (matched whole, kept).
  types = field("tokenizer.ggml.token_type", [1] * len(tokens))
  backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                              for t, kind in zip(tokens, types) if kind == 3])
  backend.add_tokens([AddedToken(t, special=False, normalized=False)
                      for t, kind in zip(tokens, types) if kind == 4])
  specials = {}
  for name, key in (("bos", "bos_token_id"), ("eos", "eos_token_id"), ("unk", "unknown_token_id"),
                    ("pad", "padding_token_id")):
    token_id = field(f"tokenizer.ggml.{key}")
    specials[f"{name}_token"] = None if token_id is None else tokens[int(token_id)]
  return HFTokenizer(_TokenizersBackend(backend), name=os.fspath(path), special_tokens=specials,
                     chat_template=field("tokenizer.chat_template"), pad_id=pad_id)


def load_hf_tokenizer(path: PathLike, *, pad_id: int | None = None) -> HFTokenizer:
  """The tokenizer of a checkpoint directory (tokenizer.json or tokenizer.model, with
  tokenizer_config.json) or of a GGUF file; see `HFTokenizer`."""
  path = Path(path)
  if path.is_dir():
    return _directory_tokenizer(path, pad_id)
  if path.is_file():
    return _gguf_tokenizer(path, pad_id)
  raise DataError(f"{path}: no such tokenizer directory or GGUF file.")
