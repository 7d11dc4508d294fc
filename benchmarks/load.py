"""Benchmark: loading a ~1B-parameter Hugging Face checkpoint, `rlhf_jax.hf.load` against
transformers' `from_pretrained`, on this CPU.

    .venv/bin/python benchmarks/load.py                      # TinyLlama-1.1B shapes, bfloat16
    .venv/bin/python benchmarks/load.py --preset=125m --repeats=3

The checkpoint is random weights with the shapes of a `rlhf_jax.models` preset
(default "1b": TinyLlama-1.1B, Llama architecture, GQA, 1.1B parameters), written once by
our own writer (`rlhf_jax.models.hf`: config.json and bfloat16 safetensors, the dtype
of released checkpoints, in shards of `--shard_gb`) into `--cache_dir`, and reused.

Each load runs in a fresh Python process, so each side pays its own imports, and is
measured there: seconds from the first line of the script to the parameters ready
("total", imports included), the imports and the load alone, the resident memory after
the imports, and the peak resident memory
of the process (VmHWM) when the load returns ("peak") and after every weight has been
read once ("used"; the columns "/ weights" are those peaks minus the imports' memory,
over the checkpoint's bytes). The two differ for transformers: its bfloat16 parameters
can stay memory-mapped views of the files, paged in from the page cache when first
read, so its peak at return can be far below the weights. Weights stay bfloat16 on both
sides: `hf.load(dir)` (JAX arrays on the CPU device) and
`AutoModelForCausalLM.from_pretrained(dir, dtype=torch.bfloat16)`. Both processes print
a checksum of one weight, which must agree. With `--repeats` > 1 the two alternate and
the medians are printed. Without torch and transformers only our side runs.

Goal (issue 19): load at least as fast as transformers, with peak memory (above what
the imports take) no more than 1.2x the weights. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import time

_START = time.perf_counter()  # before any heavy import: the child processes count their imports

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

CHECKSUM_TENSOR = "model.layers.0.self_attn.q_proj.weight"


def _status_kb(field: str) -> int:
  for line in Path("/proc/self/status").read_text().splitlines():
    if line.startswith(field + ":"):
      return int(line.split()[1])
  raise RuntimeError(f"/proc/self/status has no {field}")


def child(side: str, directory: str) -> None:
  """Loads `directory` with one library and prints one JSON line of measurements."""
  if side == "ours":
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from rlhf_jax import hf  # pylint: disable=g-import-not-at-top
    imported, imports_rss = time.perf_counter(), _status_kb("VmRSS")
    model, params = hf.load(directory)
    jax.block_until_ready(params)
    loaded = time.perf_counter()
    query = np.asarray(params["layer_0"]["attention"]["query"], np.float64)
    checksum = float(np.sum(query * query))  # a sum of squares: unchanged by the layout change
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    loaded_peak = _status_kb("VmHWM")
    for leaf in jax.tree.leaves(params):  # every weight byte read once (views, no copies)
      np.asarray(leaf).view(np.uint16).sum()
  else:
    import torch  # pylint: disable=g-import-not-at-top
    import transformers  # pylint: disable=g-import-not-at-top
    imported, imports_rss = time.perf_counter(), _status_kb("VmRSS")
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.bfloat16)
    loaded = time.perf_counter()
    query = model.model.layers[0].self_attn.q_proj.weight.detach().double()
    checksum = float((query * query).sum())
    count = sum(p.numel() for p in model.parameters())
    loaded_peak = _status_kb("VmHWM")
    with torch.no_grad():
      for parameter in model.parameters():  # every weight byte read once (views, no copies)
        parameter.view(torch.int16).sum()
  print(json.dumps({
      "side": side, "imports_s": imported - _START, "load_s": loaded - imported, "total_s": loaded - _START,
      "imports_rss_kb": imports_rss, "peak_rss_kb": loaded_peak, "used_peak_rss_kb": _status_kb("VmHWM"),
      "checksum": checksum,
      "parameters": count}))


def make_checkpoint(directory: Path, preset: str, shard_gb: float, seed: int) -> None:
  """Random bfloat16 weights of the preset's shapes, written by our writer, one shard in
  memory at a time."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from rlhf_jax import models  # pylint: disable=g-import-not-at-top
  from rlhf_jax.models.hf import checkpoint, families  # pylint: disable=g-import-not-at-top

  config = models.get_preset(preset, param_dtype="bfloat16", dtype="bfloat16", scan_layers=False, remat=False)
  family = families.family_for_config(config, "llama")
  rng = np.random.default_rng(seed)

  def random_tensor(shape):
    def make():
      if len(shape) == 1:  # norm scales
        return np.ones(shape, ml_dtypes.bfloat16)
      return (rng.standard_normal(shape, np.float32) * 0.02).astype(ml_dtypes.bfloat16)
    return make

  directory.mkdir(parents=True, exist_ok=True)
  tensors = {}
  for source in family.sources(config, "policy").values():
    name = (family.base_prefix if source.base else "") + source.name
    tensors[name] = (name, source.shape, np.dtype(ml_dtypes.bfloat16), random_tensor(source.shape))
  checkpoint.write_safetensors(directory, list(tensors.values()), int(shard_gb * 2**30))
  hf_config = family.hf_config(config)
  hf_config.update(architectures=[family.causal_lm], torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
  (directory / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
  (directory / "COMPLETE").write_text(f"{preset} seed={seed}\n")


def run_child(side: str, directory: Path) -> dict:
  result = subprocess.run([sys.executable, __file__, f"--child={side}", f"--dir={directory}"],
                          capture_output=True, text=True, env=dict(os.environ, TQDM_DISABLE="1"))
  if result.returncode:
    raise SystemExit(f"{side} load failed:\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--preset", default="1b", help="rlhf_jax.models preset whose shapes the checkpoint has")
  parser.add_argument("--cache_dir", type=Path, default=Path.home() / ".cache" / "rlhf_jax" / "bench_load",
                      help="where the random checkpoint is written once and reused")
  parser.add_argument("--shard_gb", type=float, default=1.0, help="largest safetensors file, GiB")
  parser.add_argument("--repeats", type=int, default=1, help="loads per side (alternating); medians printed")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--child", choices=("ours", "transformers"), help=argparse.SUPPRESS)
  parser.add_argument("--dir", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error(f"--repeats must be at least 1, got {args.repeats}")
  if args.shard_gb <= 0:
    parser.error(f"--shard_gb must be positive, got {args.shard_gb}")
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.child:
    child(args.child, args.dir)
    return
  directory = args.cache_dir / f"{args.preset}-bf16-seed{args.seed}"
  if not (directory / "COMPLETE").is_file():
    print(f"writing a random {args.preset} checkpoint to {directory} (once) ...", flush=True)
    make_checkpoint(directory, args.preset, args.shard_gb, args.seed)
  files = sorted(directory.glob("*.safetensors"))
  weight_bytes = sum(f.stat().st_size for f in files)
  sides = ["ours"]
  if importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"):
    sides.append("transformers")
  else:
    print("torch or transformers not installed: transformers' side skipped "
          "(pip install torch==2.13.0 transformers)")
  runs = {side: [] for side in sides}
  for _ in range(args.repeats):
    for side in sides:
      runs[side].append(run_child(side, directory))
  checksums = {side: runs[side][0]["checksum"] for side in sides}
  if len(set(round(c, 1) for c in checksums.values())) > 1:
    raise SystemExit(f"the two loads disagree on {CHECKSUM_TENSOR}: {checksums}")

  gib = 2**30
  median = lambda side, key: statistics.median(run[key] for run in runs[side])
  print(f"checkpoint: {directory}\n  {runs['ours'][0]['parameters']:,} parameters, bfloat16 safetensors, "
        f"{weight_bytes / gib:.2f} GiB in {len(files)} file(s); {args.repeats} load(s) per side, medians")
  header = (f"{'':<28}{'total s':>10}{'imports s':>10}{'load s':>8}{'imports GiB':>12}"
            f"{'peak GiB':>10}{'/ weights':>10}{'used GiB':>10}{'/ weights':>10}")
  print(header)
  names = {"ours": "rlhf_jax.hf.load", "transformers": "transformers from_pretrained"}
  for side in sides:
    peak = median(side, "peak_rss_kb") * 1024
    used = median(side, "used_peak_rss_kb") * 1024
    base = median(side, "imports_rss_kb") * 1024
    print(f"{names[side]:<28}{median(side, 'total_s'):>10.2f}{median(side, 'imports_s'):>10.2f}"
          f"{median(side, 'load_s'):>8.2f}{base / gib:>12.2f}{peak / gib:>10.2f}"
          f"{(peak - base) / weight_bytes:>10.2f}{used / gib:>10.2f}{(used - base) / weight_bytes:>10.2f}")
  if len(sides) == 2:
    print(f"{'ratio transformers / ours':<28}"
          f"{median('transformers', 'total_s') / median('ours', 'total_s'):>10.2f}"
          f"{median('transformers', 'imports_s') / median('ours', 'imports_s'):>10.2f}"
          f"{median('transformers', 'load_s') / median('ours', 'load_s'):>8.2f}"
          f"{median('transformers', 'peak_rss_kb') / median('ours', 'peak_rss_kb'):>10.2f}")


if __name__ == "__main__":
  main()
