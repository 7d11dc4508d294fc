"""Command-line helpers: a misspelt config override is explained, not a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_jax import cli

ROOT = Path(__file__).resolve().parents[1]


def test_override_error_names_field_section_and_valid_fields():
  argv = ["prog", f"--config={ROOT / 'configs' / 'aggregate.py'}", "--config.routing.confidence=0.5"]
  message = cli.config_override_error(argv)
  assert "unknown config field 'routing.confidence'" in message
  assert "config.routing has no field 'confidence'" in message
  assert "confidence_threshold" in message  # the valid field the user meant


def test_valid_override_gives_no_error():
  argv = ["prog", f"--config={ROOT / 'configs' / 'aggregate.py'}", "--config.routing.confidence_threshold=0.5"]
  assert cli.config_override_error(argv) is None


def test_missing_config_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="absent.py"):
    cli.load_config_file(tmp_path / "absent.py")


def test_run_script_rejects_typo_with_exit_code_2():
  completed = subprocess.run(
      [sys.executable, str(ROOT / "scripts" / "run.py"), "--config.task.num_pair=3"],
      capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert completed.returncode == 2
  assert "unknown config field 'task.num_pair'" in completed.stderr
  assert "Traceback" not in completed.stderr


def test_fail_prints_one_line_and_exits_with_the_code(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.fail("prog.py", ValueError("first line\nsecond line"), 2)
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "prog.py: error: first line second line\n"


def test_stopped_exit_code_differs_from_finished_and_user_errors():
  # A scheduler tells a resumable stop from a finished run (0) and from user errors (1, 2).
  assert cli.EXIT_FINISHED == 0 and cli.EXIT_STOPPED == 75
