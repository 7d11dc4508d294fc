"""`benchmarks/lora.py`: the side-by-side table is computed from the two sides' numbers,
arguments are checked, and (slow) a tiny run trains fewer parameters with less optimizer
state and no reference copy on the LoRA side."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lora as lora_benchmark  # noqa: E402

SIDE = dict(trained=100, param_bytes=2**20, optimizer_bytes=2 * 2**20, reference_bytes=2**20, first_step_s=2.0,
            step_s=0.5, peak_rss_kb=2048)


def test_table_ratios():
  lora = dict(SIDE, trained=5, optimizer_bytes=2**19, reference_bytes=0, step_s=0.25)
  lines = lora_benchmark.table(SIDE, lora).splitlines()
  row = {line[:26].strip(): line[26:].split() for line in lines[1:]}
  assert row["parameters trained"] == ["100", "5", "0.050"]
  assert row["optimizer state MB"] == ["2.0", "0.5", "0.250"]
  assert row["median step s"] == ["0.500", "0.250", "0.500"]
  assert row["reference copy MB"][1:] == ["0.0", "0.000"]


def test_arguments_are_checked(capsys):
  with pytest.raises(SystemExit):
    lora_benchmark.parse_args(["--steps=0"])
  assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_run_prints_both_sides(capsys):
  lora_benchmark.main(["--preset=tiny", "--steps=1", "--batch_size=2", "--max_length=16"])
  out = capsys.readouterr().out
  assert "full DPO" in out and "LoRA DPO" in out
  import json
  sides = json.loads(out.strip().splitlines()[-1])
  assert sides["lora"]["trained"] < sides["full"]["trained"] == sides["full"]["parameters"]
  assert sides["lora"]["optimizer_bytes"] < sides["full"]["optimizer_bytes"]
  assert sides["lora"]["reference_bytes"] == 0 < sides["full"]["reference_bytes"]
