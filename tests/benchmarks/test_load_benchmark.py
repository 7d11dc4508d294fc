"""`benchmarks/load.py`: the random checkpoint it writes is the preset's model, and a
measured load reports what it loaded (the full side-by-side run is slow)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import load  # noqa: E402
from rlhf_jax import hf, models  # noqa: E402


def test_checkpoint_has_the_preset_shapes_and_loads(tmp_path):
  load.make_checkpoint(tmp_path, "tiny", shard_gb=0.0002, seed=0)
  assert len(list(tmp_path.glob("*.safetensors"))) > 1  # sharded, with an index
  config = json.loads((tmp_path / "config.json").read_text())
  assert (config["torch_dtype"], config["architectures"]) == ("bfloat16", ["LlamaForCausalLM"])
  model, params = hf.load(tmp_path)
  tiny = models.get_preset("tiny")
  assert model.config == tiny.replace(param_dtype="bfloat16", dtype="bfloat16")
  assert sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(params)) == models.param_count(tiny)
  measured = load.run_child("ours", tmp_path)
  assert measured["parameters"] == models.param_count(tiny)
  query = np.asarray(params["layer_0"]["attention"]["query"], np.float64)
  assert measured["checksum"] == pytest.approx(float(np.sum(query * query)))
  assert 0 < measured["imports_rss_kb"] <= measured["peak_rss_kb"] <= measured["used_peak_rss_kb"]
  assert measured["total_s"] >= measured["load_s"] > 0


def test_arguments_are_checked(capsys):
  for argv, message in ((["--repeats=0"], "--repeats must be at least 1"),
                        (["--shard_gb=0"], "--shard_gb must be positive")):
    with pytest.raises(SystemExit):
      load.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_side_by_side_run_prints_both(tmp_path, capsys):
  pytest.importorskip("torch", reason="the transformers side needs torch (pip install torch==2.13.0)")
  pytest.importorskip("transformers", reason="the transformers side needs transformers")
  load.main(["--preset=tiny", f"--cache_dir={tmp_path}"])
  out = capsys.readouterr().out
  assert "rlhf_jax.hf.load" in out and "transformers from_pretrained" in out and "ratio" in out
