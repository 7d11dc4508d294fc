"""rlhf_jax.host_memory: freed memory is reused without page faults, in raw malloc and
in XLA:CPU executions. Each case runs in a fresh interpreter, since malloc settings are
process-wide and must precede the threads that allocate."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf_jax import host_memory

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

PAGE = 4096
BLOCK = 96 * 2**20  # above glibc's largest mmap threshold (32 MiB): mmapped by default

# A worker thread (as XLA's are) allocates, writes and frees a block four times, after one
# untimed round; prints the minor page faults per round.
MALLOC_SCRIPT = f"""
import ctypes, json, resource, sys, threading
from rlhf_jax import host_memory
if sys.argv[1] == "keep":
  host_memory.keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.memset.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t)
faults = []
def work():
  for i in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc({BLOCK})
    libc.memset(block, 1, {BLOCK})
    libc.free(block)
    if i:
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=work)
thread.start(); thread.join()
print(json.dumps(faults))
"""

# A jitted function with a 64 MiB intermediate (the [4096, 4096] product, consumed by a
# second matmul, so it must exist in memory); the minor faults of each of 40 calls.
JAX_SCRIPT = """
import json, resource, sys
import jax, jax.numpy as jnp
from rlhf_jax import host_memory
if sys.argv[1] == "keep":
  host_memory.keep_freed_memory()
x = jnp.ones((4096, 64), jnp.float32)
w = jnp.ones((64, 4096), jnp.float32) / 64
v = jnp.ones((4096, 1), jnp.float32)
f = jax.jit(lambda x, w, v: jnp.tanh(x @ w) @ v)
f(x, w, v).block_until_ready()
faults = []
for _ in range(40):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  out = f(x, w, v).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
assert abs(float(out[0, 0]) - 4096 * float(jnp.tanh(1.0))) < 1e-2
print(json.dumps(faults))
"""


def _faults(script: str, mode: str) -> list[int]:
  result = subprocess.run([sys.executable, "-c", script, mode], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1])


def test_freed_blocks_are_reused_without_faulting_their_pages_again():
  pages = BLOCK // PAGE
  default, kept = _faults(MALLOC_SCRIPT, "default"), _faults(MALLOC_SCRIPT, "keep")
  # By default each round maps a fresh block: every page faults (the reference count).
  assert min(default) >= 0.9 * pages, default
  # Kept: the block comes back from the arena, already mapped.
  assert max(kept) <= 0.02 * pages, kept


def test_xla_executions_stop_faulting_their_temporaries():
  pages = 64 * 2**20 // PAGE
  default, kept = _faults(JAX_SCRIPT, "default"), _faults(JAX_SCRIPT, "keep")
  assert min(default) >= 0.5 * pages, default
  # The arena still grows a few times (up to 7 calls in 300 here): XLA can free a call's
  # temporaries after the next call has allocated its own. Most calls find them mapped.
  assert statistics.median(kept) <= 0.05 * pages, kept


def test_status_names_the_settings(monkeypatch):
  # In this process only the message is checked: the settings are process-wide and the
  # subprocess tests above check their effect.
  monkeypatch.setattr(host_memory, "_status", host_memory.status())  # restored afterwards
  monkeypatch.setattr(host_memory, "accelerator_plugins", lambda: [])
  calls, refused = [], {host_memory.M_MMAP_MAX}

  def mallopt(parameter, value):  # glibc returns 1 on success
    calls.append((parameter, value))
    return int(parameter not in refused)

  class FakeLibc:
    def __init__(self):
      self.mallopt = mallopt

  monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: FakeLibc())
  message = host_memory.keep_freed_memory()
  assert calls == [(-8, 1), (-4, 0), (-1, 2**31 - 1)]
  assert message == ("freed memory not kept: glibc mallopt refused M_MMAP_MAX "
                     "(applied: M_ARENA_MAX=1, M_TRIM_THRESHOLD=2147483647)")
  assert host_memory.status() == message
  monkeypatch.setattr(host_memory, "accelerator_plugins", lambda: ["cuda"])
  monkeypatch.setenv("JAX_PLATFORMS", "")
  calls.clear()
  refused.clear()
  assert host_memory.keep_freed_memory().startswith("malloc defaults (accelerator plugins cuda installed")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the user asked for the CPU
  assert host_memory.keep_freed_memory().startswith("freed memory kept") and len(calls) == 3
  monkeypatch.setattr(host_memory.platform, "libc_ver", lambda: ("", ""))
  assert host_memory.keep_freed_memory().startswith("malloc defaults (not glibc")
  assert len(calls) == 3


def test_accelerator_plugins_are_found_as_jax_finds_them(tmp_path, monkeypatch):
  before = host_memory.accelerator_plugins()
  (tmp_path / "jax_plugins" / "xla_cuda12").mkdir(parents=True)
  (tmp_path / "jax_plugins" / "xla_cuda12" / "__init__.py").write_text("")
  (tmp_path / "libtpu").mkdir()
  (tmp_path / "libtpu" / "__init__.py").write_text("")
  monkeypatch.syspath_prepend(str(tmp_path))
  assert host_memory.accelerator_plugins() == sorted({*before, "libtpu", "xla_cuda12"})
