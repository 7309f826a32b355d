"""JAX's persistent compilation cache, as the CLI and sweeps use it.

Two decisions, both from measurement on x86 hosts (issue #27, start-up):

* **One folder per host CPU.** XLA:CPU caches machine code compiled for the host's
  instruction set. A cache folder in a home directory shared by the nodes of a cluster would
  otherwise hand code built on one CPU type to another (XLA's loader only warns, "could lead
  to ... SIGILL"). :func:`cache_dir` appends a tag of the CPU model and its feature flags.
* **XLA's loader warning is silenced while the cache is on.** On current x86 CPUs every
  cached executable is loaded with two ``ERROR ... cpu_aot_loader.cc`` lines ("Target
  machine feature +prefer-no-gather is not supported"), even on the host that wrote it:
  the loader compares LLVM *tuning* flags as if they were instructions (openxla/xla#44565).
  The executables do load and run (a 60-FFT gradient: 1.4-1.7 s compile without the cache,
  0.24-0.31 s from it, on the project's AMD EPYC). Since the folder is per host, the warning
  is always the spurious one, so ``TF_CPP_MIN_LOG_LEVEL=3`` is set for the command unless
  the user set it; Python errors are unaffected.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys

__all__ = ["host_tag", "cache_dir", "enable"]


def host_tag() -> str:
    """Short tag of this host's CPU: machine type plus a hash of model name and feature flags."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = val.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(val.split()))
                if model and flags:
                    break
    except OSError:  # not Linux: the processor string is the best there is
        model = platform.processor()
    digest = hashlib.sha256(f"{model}|{flags}".encode()).hexdigest()[:12]
    return f"{platform.machine() or 'cpu'}-{digest}"


def cache_dir(base: str) -> str:
    """The folder for this host inside ``base``."""
    return os.path.join(base, host_tag())


def enable(path: str) -> None:
    """Switch the cache on at ``path`` for this process, caching every compilation.

    Before jax is imported the settings go into the environment (read by jax at import, so
    commands that never import jax pay nothing); after, into ``jax.config``.
    """
    opts = {
        "jax_compilation_cache_dir": path,
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "jax" in sys.modules:
        import jax  # jax: only once loaded (sys.modules); `diffxas --help` imports this module

        for k, v in opts.items():
            jax.config.update(k, v)
    else:
        for k, v in opts.items():
            os.environ.setdefault(k.upper(), str(v))
