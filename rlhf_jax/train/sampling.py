"""Sampling completions from a trained policy, and the sampler bound to a device mesh.

    policy = sampling.load_policy("runs/sft")           # config.json, tokenizer, newest checkpoint
    config = policy.sampling_config(max_new_tokens=64, temperature=0.7, num_samples=4)
    completions = policy.sample(["\\n\\nHuman: hi\\n\\nAssistant:"], config, seed=0)
    summary = sampling.sample_file(policy, "prompts.jsonl", "completions.jsonl",
                                   rejects_path="completions.rejects.jsonl", config=config, seed=0)

    sampler = sampling.make_sampler(model, config, mesh, param_shardings)   # trainers
    samples = sampler(params, prompt_tokens, prompt_mask, key, prompt_ids)  # models.Samples

`make_sampler` is `models.sample` jitted over the train step's mesh: parameters in their
training shardings, every [rows, ...] input and output split over the batch axes
("data", "fsdp"), inside the mesh and logical-axis-rules contexts the models' sharding
constraints need (`components.MeshFunction`).

`load_policy` reads a run of `scripts/train.py` whose objective trains a language model
(sft, dpo, simpo, orpo, kto, ...): its config.json, its tokenizer (checked against the
fingerprint in run.json) and the parameters of its newest checkpoint. Prompts become
tokens as the trainer made them: [bos] prompt, cut from the left to the run's
`data.max_prompt_length` (the bos stays). A run trained on the synthetic toy data has
no tokenizer: its prompts and completions are written as token ids separated by spaces
("5 17 9"; `ToyIds`).

`sample_file` (behind `scripts/sample.py`) reads prompts from a JSON Lines, Parquet or
CSV file with a "prompt" field (and an optional "id"), or from a text file (.txt) with
one prompt per line, and writes one JSON line per completion: the prompt's line (or
row), id, prompt, sample index, completion text, token count, whether it ended with the
end-of-sequence (or a stop) token, and its summed log-probs. Unusable prompts go to a
rejects file with the reason (read = sampled + rejected). A prompt's completions depend
on the seed, its line number and the settings, not on the batch it was sampled in.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from rlhf_jax import data as data_lib
from rlhf_jax import models
from rlhf_jax.data import sources as sources_lib
from rlhf_jax.io import ingest
from rlhf_jax.train import components as components_lib
from rlhf_jax.train import config as config_lib
from rlhf_jax.train import mesh as mesh_lib
from rlhf_jax.train import networks
from rlhf_jax.train import pretrained
from rlhf_jax.train import objectives as objectives_lib
from rlhf_jax.train import score as score_lib

__all__ = ["Completion", "Policy", "SampleError", "ToyIds", "load_policy", "make_sampler", "read_prompts",
           "sample_file"]

_log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".txt.gz")
# Prompt slots are rounded up to a multiple of this (fewer distinct compiled shapes).
_PROMPT_ROUNDING = 8


class SampleError(ValueError):
  """A run directory, setting or input that cannot be sampled (the message says why)."""


def make_sampler(model: models.Transformer, config: models.SamplingConfig, mesh: Mesh, param_shardings: Any, *,
                 rules: Any = None, compiler_options: dict[str, Any] | None = None
                 ) -> components_lib.MeshFunction:
  """`models.sample` jitted over `mesh`: `(params, prompt_tokens [B, P], prompt_mask [B, P],
  key, prompt_ids [B]) -> models.Samples` with B n rows.

  Parameters come in `param_shardings` (their training shardings, `mesh.param_shardings`),
  the prompt arrays and every output split over the batch axes ("data", "fsdp"): B must
  be divisible by the data-parallel size. The key is replicated.
  """
  rules = components_lib.axis_rules(mesh) if rules is None else rules
  batch = mesh_lib.batch_sharding(mesh)

  def run(params, prompt_tokens, prompt_mask, key, prompt_ids):
    return models.sample(model, params, prompt_tokens, prompt_mask, key, config, prompt_ids)

  jitted = jax.jit(run, in_shardings=(param_shardings, batch, batch, mesh_lib.replicated(mesh), batch),
                   out_shardings=batch, compiler_options=compiler_options)
  return components_lib.MeshFunction(jitted, mesh, rules)


class ToyIds:
  """The "tokenizer" of a run on the toy data: text is token ids separated by spaces.

  `encode("5 17 9") == [5, 17, 9]`; `decode` writes the ids back, without pad, bos and
  eos. Ids must lie in [0, vocab_size) and not be the pad or bos id.
  """

  name = "toy token ids"
  fingerprint = None

  def __init__(self, vocab_size: int):
    self.vocab_size = int(vocab_size)
    self.pad_id, self.bos_id, self.eos_id = data_lib.TOY_PAD, data_lib.TOY_BOS, data_lib.TOY_EOS

  def encode(self, text: str) -> list[int]:
    ids = []
    for word in text.split():
      try:
        value = int(word)
      except ValueError:
        raise ValueError(f"the run trained on toy data, so prompts are token ids separated by spaces "
                         f"(e.g. '5 17 9'); got {word!r}") from None
      if not 0 <= value < self.vocab_size or value in (self.pad_id, self.bos_id):
        raise ValueError(f"token id {value} is not a toy word or marker (ids {self.bos_id + 1}.."
                         f"{self.vocab_size - 1}; {self.pad_id} is padding and {self.bos_id} the bos)")
      ids.append(value)
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    return " ".join(str(int(i)) for i in ids if int(i) not in (self.pad_id, self.bos_id, self.eos_id))


@dataclasses.dataclass(frozen=True)
class Completion:
  """One sampled completion of one prompt.

  Attributes:
    prompt_index: the prompt's position in the list given to `Policy.sample`.
    sample: which of the `num_samples` completions of that prompt.
    text: the decoded completion (special tokens dropped).
    token_ids: the completion's ids, the stop token included.
    num_tokens: `len(token_ids)`.
    finished: it ended with the end-of-sequence id or a stop id (False: cut at
      `max_new_tokens`).
    logprob: sum of the policy's log-probs of its tokens (temperature 1).
    sampling_logprob: sum of the log-probs under the distribution they were drawn from
      (temperature, top-k, top-p; 0 for greedy decoding).
    prompt_truncated: the prompt lost its oldest tokens to `max_prompt_length`.
  """

  prompt_index: int
  sample: int
  text: str
  token_ids: tuple[int, ...]
  num_tokens: int
  finished: bool
  logprob: float
  sampling_logprob: float
  prompt_truncated: bool


def _completions(tokenizer: Any, samples: models.Samples, truncated: Sequence[bool], num_samples: int
                 ) -> list[Completion]:
  """One `Completion` per row of NumPy `samples` (prompt-major, `num_samples` per prompt)."""
  completions = []
  for row in range(samples.completion_tokens.shape[0]):
    length = int(samples.lengths[row])
    ids = tuple(int(i) for i in samples.completion_tokens[row, :length])
    prompt = row // num_samples
    completions.append(Completion(
        prompt_index=prompt, sample=row % num_samples, text=tokenizer.decode(ids), token_ids=ids,
        num_tokens=length, finished=bool(samples.stopped[row]),
        logprob=float(np.sum(samples.policy_logprobs[row], dtype=np.float64)),
        sampling_logprob=float(np.sum(samples.logprobs[row], dtype=np.float64)),
        prompt_truncated=bool(truncated[prompt])))
  return completions


class Policy:
  """A trained language model loaded once (build with `load_policy`).

  Attributes: `workdir`, `step` (the checkpoint's), `tokenizer` (`data.Tokenizer` or
  `ToyIds`), `model` (`models.Transformer`), `mesh`, `max_prompt_length` (bos
  included), `default_new_tokens` (the completion room of the run's sequences),
  `batch_size` (prompts per sampler call).
  """

  def __init__(self, *, workdir: Path, step: int, tokenizer: Any, model: models.Transformer, params: Any,
               mesh: Mesh, param_shardings: Any, max_prompt_length: int, default_new_tokens: int,
               batch_size: int, compiler_options: dict[str, Any] | None):
    self.workdir = workdir
    self.step = step
    self.tokenizer = tokenizer
    self.model = model
    self.mesh = mesh
    self.max_prompt_length = max_prompt_length
    self.default_new_tokens = default_new_tokens
    self.batch_size = batch_size
    self._params = params
    self._param_shardings = param_shardings
    self._compiler_options = compiler_options
    self._samplers: dict[models.SamplingConfig, components_lib.MeshFunction] = {}

  def __repr__(self) -> str:
    return (f"Policy({self.workdir}, step {self.step}, vocab {self.model.config.vocab_size}, max_prompt_length "
            f"{self.max_prompt_length}, max_len {self.model.config.max_len})")

  def sampling_config(self, *, max_new_tokens: int = 0, stop_ids: Sequence[int] = (), **settings: Any
                      ) -> models.SamplingConfig:
    """A `models.SamplingConfig` with this run's end-of-sequence and pad ids;
    `max_new_tokens` 0 means `default_new_tokens`."""
    try:
      return models.SamplingConfig(
          max_new_tokens=int(max_new_tokens) or self.default_new_tokens, eos_id=self.tokenizer.eos_id,
          pad_id=self.tokenizer.pad_id, stop_ids=tuple(stop_ids), **settings)
    except ValueError as error:
      raise SampleError(str(error)) from None

  def encode(self, prompt: str) -> tuple[list[int], bool]:
    """[bos] + the prompt's ids cut from the left to `max_prompt_length`, and whether it
    was cut (raises ValueError when a toy prompt is not token ids)."""
    ids = list(self.tokenizer.encode(prompt))
    keep = self.max_prompt_length - 1
    truncated = len(ids) > keep
    return [self.tokenizer.bos_id] + ids[len(ids) - keep:] if truncated else [self.tokenizer.bos_id] + ids, truncated

  def sample_ids(self, prompts: Sequence[Sequence[int]], config: models.SamplingConfig, *, seed: int,
                 prompt_ids: Sequence[int] | None = None) -> models.Samples:
    """Samples of token prompts (each [bos] + ids, at most `max_prompt_length`), as NumPy.

    The prompts are right-padded to one length (rounded up to a multiple of 8) and sent
    in batches of `batch_size` (the last one filled with bos-only prompts whose samples
    are dropped), so each length compiles once. Row order as `models.generate`:
    prompt-major. `prompt_ids` (default 0..N-1) fold into each prompt's randomness.
    """
    count = len(prompts)
    if count == 0:
      raise SampleError("no prompt to sample.")
    longest = max(len(p) for p in prompts)
    if longest > self.max_prompt_length or min(len(p) for p in prompts) < 1:
      raise SampleError(f"prompts must hold 1 to {self.max_prompt_length} tokens (bos included); "
                        f"got lengths up to {longest}.")
    slots = min(self.max_prompt_length, _PROMPT_ROUNDING * math.ceil(longest / _PROMPT_ROUNDING))
    if slots + config.max_new_tokens > self.model.config.max_len:
      raise SampleError(f"prompts of {slots} tokens + max_new_tokens {config.max_new_tokens} exceed the model's "
                        f"max_len {self.model.config.max_len}; ask for at most "
                        f"{self.model.config.max_len - slots} new tokens.")
    prompt_ids = np.arange(count) if prompt_ids is None else np.asarray(prompt_ids)
    tokens = np.full((count, slots), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((count, slots), bool)
    for i, prompt in enumerate(prompts):
      tokens[i, :len(prompt)] = prompt
      mask[i, :len(prompt)] = True
    sampler = self._sampler(config)
    key = jax.random.key(seed)
    size = self.batch_size
    parts = []
    for start in range(0, count, size):
      stop = min(start + size, count)
      batch = {"tokens": np.full((size, slots), self.tokenizer.pad_id, np.int32),
               "mask": np.zeros((size, slots), bool), "ids": np.full(size, -1, np.int64)}
      batch["tokens"][:, 0], batch["mask"][:, 0] = self.tokenizer.bos_id, True  # fillers: bos only
      batch["tokens"][:stop - start], batch["mask"][:stop - start] = tokens[start:stop], mask[start:stop]
      batch["ids"][:stop - start] = prompt_ids[start:stop]
      placed = mesh_lib.shard_batch({**batch, "ids": batch["ids"].astype(np.int32)}, self.mesh)
      samples = sampler(self._params, placed["tokens"], placed["mask"], key, placed["ids"])
      rows = (stop - start) * config.num_samples
      parts.append(jax.tree.map(lambda x: np.asarray(jax.device_get(x))[:rows], samples))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)

  def sample(self, prompts: Sequence[str], config: models.SamplingConfig, *, seed: int = 0,
             prompt_ids: Sequence[int] | None = None) -> list[Completion]:
    """`config.num_samples` completions of each text prompt, prompt-major."""
    encoded = [self.encode(prompt) for prompt in prompts]
    samples = self.sample_ids([ids for ids, _ in encoded], config, seed=seed, prompt_ids=prompt_ids)
    return _completions(self.tokenizer, samples, [cut for _, cut in encoded], config.num_samples)

  def _sampler(self, config: models.SamplingConfig) -> components_lib.MeshFunction:
    if config not in self._samplers:
      self._samplers[config] = make_sampler(self.model, config, self.mesh, self._param_shardings,
                                            compiler_options=self._compiler_options)
    return self._samplers[config]


def _run_config(workdir: Path) -> dict[str, Any]:
  """The plain values of a language-model run's stored config.json."""
  if not workdir.is_dir():
    raise SampleError(f"{workdir}: no such run directory (expected the --workdir of a run of scripts/train.py).")
  path = workdir / "config.json"
  config = score_lib.read_run_config(workdir, SampleError)
  try:
    kind = objectives_lib.get(config.get("objective")).model
  except (KeyError, ValueError) as error:
    raise SampleError(f"{path}: {error}") from None
  if kind != "policy":
    raise SampleError(f"{path}: the run trained objective {config['objective']!r}, a {kind} model; sampling needs "
                      "a language model (sft, dpo, simpo, orpo, kto, ppo, grpo, rloo, online_dpo).")
  return config


def _online_tokenizer(workdir: Path, config: dict[str, Any]) -> Any:
  """The tokenizer of an online run's prompts: `data.tokenizer`, the one it trained into
  its workdir, or the one it took from `model.init_from` (a pretrained checkpoint or a
  run) or its first reward model, checked against the fingerprint in its run.json."""
  if config["data"].get("tokenizer") or (workdir / "tokenizer" / "spm.model").is_file():
    return score_lib.run_tokenizer(workdir, config["data"].get("tokenizer", ""))
  sources = [config["model"].get("init_from", "")] + [
      p.strip() for p in str(config.get("reward", {}).get("checkpoints", "")).split(",") if p.strip()]
  for source in [s for s in sources if s]:
    if pretrained.is_pretrained(source):
      tokenizer = pretrained.tokenizer(source)
    else:
      source_config = json.loads((Path(source) / "config.json").read_text())
      if not source_config["data"].get("train"):
        continue
      tokenizer = (_online_tokenizer(Path(source), source_config) if "rollout" in source_config
                   else score_lib.run_tokenizer(Path(source), score_lib.tokenizer_source(source_config)))
    recorded = json.loads((workdir / "run.json").read_text()).get("data", {}).get("tokenizer", {}) \
        if (workdir / "run.json").is_file() else {}
    if recorded.get("fingerprint") not in (None, tokenizer.fingerprint):
      raise SampleError(f"{workdir}: the tokenizer of {source} is not the one the run recorded in run.json.")
    return tokenizer
  raise SampleError(f"{workdir}: cannot find the run's tokenizer (no data.tokenizer, no tokenizer/spm.model, "
                    "no model.init_from or reward model with one).")


def load_policy(workdir: str | os.PathLike[str], *, mesh: Mesh | None = None,
                batch_size: int | None = None) -> Policy:
  """Loads a language-model run of `scripts/train.py`: config.json, tokenizer (or toy
  ids), newest checkpoint's parameters, in the shardings the trainer gives them on `mesh`.

  Args:
    workdir: the run directory.
    mesh: a mesh with the axes ("data", "fsdp", "tensor"); default every device on "data".
    batch_size: prompts per sampler call; default the run's `eval.batch_size`, rounded up
      to a multiple of the data-parallel size.

  Raises:
    SampleError / ScoreError: not a language-model run, no checkpoint, a tokenizer or
      checkpoint that does not fit the config (the message says what to do).
  """
  workdir = Path(workdir)
  config = _run_config(workdir)
  data = config["data"]
  online = "rollout" in config
  if data["train"]:
    tokenizer = (_online_tokenizer(workdir, config) if online
                 else score_lib.run_tokenizer(workdir, score_lib.tokenizer_source(config)))
  else:
    tokenizer = ToyIds(int(data["toy"]["vocab_size"]))
  if online:  # an online run (ppo, grpo, rloo, online_dpo): its rollouts' lengths
    default_new_tokens = int(config["rollout"]["max_new_tokens"])
  elif data["train"]:
    default_new_tokens = int(data["max_length"]) - int(data["max_prompt_length"])
  else:
    default_new_tokens = int(data["toy"]["max_length"])
  step, step_dir = score_lib.latest_checkpoint(workdir)
  mesh = mesh if mesh is not None else mesh_lib.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  dp = mesh_lib.data_parallel_size(mesh)
  model = networks.build_model(config_lib.model_settings(config), tokenizer.vocab_size, "policy")
  abstract = score_lib.abstract_params(model, mesh)
  if online and objectives_lib.get(config["objective"]).value_model:
    # A policy trained with a critic: its parameters sit under "policy".
    params = score_lib.restore_params(step_dir, {"policy": abstract})["policy"]
  else:
    params = score_lib.restore_params(step_dir, abstract)
  _log.info("policy of %s, checkpoint step %d", workdir, step)
  size = int(batch_size or (config["rollout"]["prompts"] if online else config["eval"]["batch_size"]))
  if size < 1:
    raise SampleError(f"batch size must be a positive int, got {size}.")
  max_prompt_length = min(int(data["max_prompt_length"]), model.config.max_len - 1)
  return Policy(workdir=workdir, step=step, tokenizer=tokenizer, model=model, params=params, mesh=mesh,
                param_shardings=jax.tree.map(lambda x: x.sharding, abstract), max_prompt_length=max_prompt_length,
                default_new_tokens=max(1, default_new_tokens), batch_size=math.ceil(size / dp) * dp,
                compiler_options=components_lib.compiler_options(bool(config["train"].get("fast_compile"))))


# --- files ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Prompt:
  text: str
  id: Any


def _parse_prompt(record: dict[str, Any]) -> _Prompt:
  if "prompt" not in record or record["prompt"] is None:
    raise sources_lib.RecordError("missing_field", "prompt", f"no 'prompt' field (fields: {sorted(record)})")
  prompt = record["prompt"]
  if not isinstance(prompt, str):
    raise sources_lib.RecordError("wrong_type", "prompt", f"expected a string, got {type(prompt).__name__}")
  if not prompt.strip():
    raise sources_lib.RecordError("empty", "prompt", "the prompt is empty")
  example_id = record.get("id")
  if example_id is not None and not isinstance(example_id, (str, int)):
    raise sources_lib.RecordError("wrong_type", "id", f"expected a string or an int, got {type(example_id).__name__}")
  return _Prompt(prompt, example_id)


def _text_rows(path: Path) -> list[sources_lib.Row]:
  """One row per non-blank line of a text file (the line without its newline)."""
  rows = []
  for index, chunk in enumerate(ingest.physical_lines(ingest.read_bytes(path, data_lib.DataError))):
    chunk = chunk.rstrip(b"\r")
    if not chunk.strip():
      continue
    try:
      text = ingest.decode_line(chunk)
    except sources_lib.RecordError as error:
      rows.append(sources_lib.Row("line", index + 1, None, error, ingest.raw_text(chunk)))
      continue
    rows.append(sources_lib.Row("line", index + 1, {"prompt": text}, None, text))
  return rows


def read_prompts(path: str | os.PathLike[str], *, rejects_path: str | os.PathLike[str]
                 ) -> tuple[list[tuple[sources_lib.Row, _Prompt]], sources_lib.ReadReport]:
  """Prompts of a JSON Lines / Parquet / CSV file ("prompt" field, optional "id") or of
  a text file (.txt, .txt.gz: one prompt per non-blank line), with the unusable rows
  written to `rejects_path` (read = accepted + rejected).

  Raises:
    DataError: the file is missing, of another type, or holds no usable prompt.
  """
  path = Path(path)
  if not path.name.lower().endswith(TEXT_SUFFIXES):
    return sources_lib.load_records(path, _parse_prompt, format_name="prompt", rejects_path=rejects_path)
  if "://" in os.fspath(path) or not path.is_file():
    raise data_lib.DataError(f"{path}: no such file (only local files are read).")
  rows = _text_rows(path)
  if not rows:
    raise data_lib.DataError(f"{path}: the file holds no prompt (blank lines are skipped).")
  return sources_lib.load_records(path, _parse_prompt, format_name="text", rejects_path=rejects_path, rows=rows)


def sample_file(policy: Policy, input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *,
                rejects_path: str | os.PathLike[str], config: models.SamplingConfig, seed: int = 0
                ) -> dict[str, Any]:
  """Samples `config.num_samples` completions of every usable prompt of a file.

  Args:
    policy: from `load_policy`.
    input_path: prompts (see `read_prompts`).
    output_path: one JSON object per completion, prompt by prompt in file order, samples
      in order: {"line" (or "row"), "id", "prompt", "sample", "completion", "num_tokens"
      (the stop token included), "finished" (ended with eos or a stop id), "logprob"
      (summed policy log-probs, temperature 1), "sampling_logprob" (summed under the
      sampling distribution), "prompt_truncated"}. An older file there is removed first.
    rejects_path: unusable prompts with file, line, field, code and reason (an older
      file there is removed first).
    config: the sampling settings (`policy.sampling_config(...)`).
    seed: the key; prompt p draws from fold_in(key, its line or row number).

  Returns:
    A summary: input, output, rejects, read, sampled, rejected, completions, truncated
    prompts, mean completion tokens, fraction finished, run directory and checkpoint step.

  Raises:
    DataError: the file cannot be read or holds no usable prompt.
    SampleError: input, output and rejects are not three files, or settings that do not
      fit the model.
  """
  input_path, output_path, rejects_path = score_lib.fresh_file_paths(input_path, output_path, rejects_path,
                                                                     SampleError)
  accepted, report = read_prompts(input_path, rejects_path=rejects_path)
  usable, unusable = [], []
  for row, prompt in accepted:
    try:
      usable.append((row, prompt, *policy.encode(prompt.text)))
    except ValueError as error:  # a toy prompt that is not token ids
      unusable.append(sources_lib.Reject(file=os.fspath(input_path), location=row.location, number=row.number,
                                         field="prompt", code="not_token_ids", reason=str(error),
                                         record=row.record))
  if unusable:  # merged with the reader's rejects, in file order
    ingest.append_rejects(rejects_path, unusable)
  if not usable:
    raise data_lib.DataError(f"{input_path}: none of its {report.read} prompts can be sampled; see {rejects_path}.")
  samples = policy.sample_ids([ids for _, _, ids, _ in usable], config, seed=seed,
                              prompt_ids=[row.number for row, _, _, _ in usable])
  completions = _completions(policy.tokenizer, samples, [cut for _, _, _, cut in usable], config.num_samples)
  records = []
  for completion in completions:
    row, prompt, _, _ = usable[completion.prompt_index]
    records.append({row.location: row.number, "id": prompt.id, "prompt": prompt.text, "sample": completion.sample,
                    "completion": completion.text, "num_tokens": completion.num_tokens,
                    "finished": completion.finished, "logprob": completion.logprob,
                    "sampling_logprob": completion.sampling_logprob,
                    "prompt_truncated": completion.prompt_truncated})
  rejected = report.rejected + len(unusable)
  summary = score_lib.write_file_job(input_path, output_path, rejects_path, records, read=report.read,
                                     done=len(usable), rejected=rejected, done_name="sampled")
  return {
      **summary, "read": report.read, "sampled": len(usable), "rejected": rejected, "completions": len(records),
      "truncated_prompts": sum(1 for _, _, _, cut in usable if cut),
      "mean_tokens": float(np.mean([c.num_tokens for c in completions])),
      "finished_fraction": float(np.mean([c.finished for c in completions])),
      "workdir": os.fspath(policy.workdir), "checkpoint_step": policy.step,
      "settings": dataclasses.asdict(config), "seed": seed,
  }
