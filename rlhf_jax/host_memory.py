"""Host memory: keep freed memory in the process, so that XLA:CPU does not fault it in anew.

Every call of a compiled XLA:CPU executable allocates its temporary buffers (tens to
hundreds of MB for a train step) and frees them at the end. With glibc's default
settings that memory goes back to the kernel each time: allocations above the mmap
threshold (at most 32 MiB) are `mmap`ed and `munmap`ed, and the per-thread arenas that
XLA's worker threads use shrink their heaps after a free. The next call then touches
fresh pages, one minor page fault (a 4 KiB page zeroed by the kernel) at a time; the
faults per step and the time they cost in `benchmarks/train_step.py` are in
docs/benchmarks.md ("Train step against PyTorch").

`keep_freed_memory` changes three `mallopt` settings (glibc, `man 3 mallopt`) for the
whole process:

  * `M_ARENA_MAX = 1`: every thread allocates from the main arena, which grows with
    `brk` and can hold blocks of any size (the other arenas are capped at 64 MiB heaps);
  * `M_MMAP_MAX = 0`: no block is given its own `mmap`, so a freed block stays in the
    arena for the next call (glibc still falls back to `mmap` if `brk` fails);
  * `M_TRIM_THRESHOLD = 2**31 - 1` (mallopt's largest): the arena keeps up to 2 GiB of
    free memory at its top mapped instead of giving it back.

The price is resident memory: it does not shrink after a peak, and the arena grows until
it holds a few of a step's temporaries side by side (XLA may free one call's buffers
after the next call has allocated its own, and small blocks split the holes); the peak
measured in the reward-model benchmark is in docs/benchmarks.md. A training process,
whose steps all need the same buffers, trades that for the time.

It must run before the XLA backend starts its threads (before the first JAX
computation): a thread that has allocated already keeps its arena, and there blocks
above 64 MiB are still mapped and unmapped one by one. Other C libraries of the process
(PyTorch, NumPy) allocate through the same malloc and get the same behaviour.

Nothing is changed, and the returned message says why:
  * off glibc (macOS, musl);
  * when a JAX accelerator plugin (CUDA, ROCm, TPU) is installed and `JAX_PLATFORMS` does
    not say `cpu`: XLA keeps device buffers in its own allocator, so the faults are not
    there to save, and the host's data pipeline keeps glibc's per-thread arenas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import pkgutil
import platform

__all__ = ["accelerator_plugins", "keep_freed_memory", "status"]

# mallopt parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_SETTINGS = (("M_ARENA_MAX", M_ARENA_MAX, 1), ("M_MMAP_MAX", M_MMAP_MAX, 0),
             ("M_TRIM_THRESHOLD", M_TRIM_THRESHOLD, 2**31 - 1))

_status = "glibc malloc defaults (keep_freed_memory not called)"


def accelerator_plugins() -> list[str]:
  """The JAX accelerator plugins installed (found the way JAX finds them: the
  `jax_plugins` entry points and namespace package, and `libtpu`), without loading them."""
  names = {entry.name for entry in importlib.metadata.entry_points(group="jax_plugins")}
  namespace = importlib.util.find_spec("jax_plugins")
  if namespace is not None and namespace.submodule_search_locations:
    names |= {module.name for module in pkgutil.iter_modules(namespace.submodule_search_locations)}
  if importlib.util.find_spec("libtpu") is not None:
    names.add("libtpu")
  return sorted(names)


def keep_freed_memory() -> str:
  """Sets glibc malloc to keep freed memory for reuse in a CPU-only process (module
  docstring); returns a one-line description of what was done or why nothing was, also
  given by `status()` afterwards."""
  global _status
  library, _ = platform.libc_ver()
  if library != "glibc":
    _status = f"malloc defaults (not glibc: {library or 'unknown C library'}; nothing changed)"
    return _status
  plugins = accelerator_plugins()
  if plugins and os.environ.get("JAX_PLATFORMS", "").strip().lower() != "cpu":
    _status = (f"malloc defaults (accelerator plugins {', '.join(plugins)} installed and JAX_PLATFORMS "
               "is not cpu: device buffers are XLA's own; nothing changed)")
    return _status
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  except (OSError, AttributeError) as error:
    _status = f"malloc defaults (glibc's mallopt not found: {error})"
    return _status
  failed = [name for name, parameter, value in _SETTINGS if not mallopt(parameter, value)]
  applied = ", ".join(f"{name}={value}" for name, _, value in _SETTINGS if name not in failed)
  if failed:  # all three are needed (module docstring): say so rather than "kept"
    _status = (f"freed memory not kept: glibc mallopt refused {', '.join(failed)} "
               f"(applied: {applied or 'none'})")
  else:
    _status = f"freed memory kept (glibc mallopt {applied})"
  return _status


def status() -> str:
  """What the last `keep_freed_memory` call did, or that it was not called."""
  return _status
