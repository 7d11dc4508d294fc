"""benchmarks/rl_step.py: the printed iteration time is the sum of its phases."""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import rl_step  # noqa: E402


@pytest.mark.slow
def test_phases_add_up_to_the_iteration(capsys):
  rl_step.main(["--objectives=grpo", "--iterations=2", "--warmup=1", "--no-trl", "--prompts=4",
                "--max_new_tokens=4"])
  (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("rlhf_jax_grpo")]
  total = float(re.search(r"seconds/iteration ([0-9.]+)", line).group(1))
  phases = {name: (float(seconds), int(share)) for name, seconds, share in
            re.findall(r"(rollout|reward|update) ([0-9.]+) \(([0-9]+)%\)", line)}
  assert set(phases) == {"rollout", "reward", "update"}
  # Medians of each phase need not add up exactly to the median total; with 2 timed
  # iterations (median = mean) they do.
  assert abs(sum(s for s, _ in phases.values()) - total) < 2e-4
  assert abs(sum(share for _, share in phases.values()) - 100) <= 2


def test_bad_arguments_are_usage_errors():
  with pytest.raises(SystemExit):
    rl_step.main(["--iterations=0"])
  with pytest.raises(SystemExit):
    rl_step.main(["--torch_threads=0"])
