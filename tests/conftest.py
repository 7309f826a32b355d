import os
import tempfile

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
# Persistent XLA compilation cache for the test processes: many tests build solvers whose
# step functions compile to the same programs (fresh closures each time), and the two
# pytest-xdist workers compile the same kernels; cached executables are keyed by the
# program, the compile options and the jax version, so a code change misses, never hits
# stale. Measured on the 2-core CI-like machine: the suite took 677 s serially without it,
# 376 s with two workers and the cache. Set JAX_COMPILATION_CACHE_DIR yourself to move or
# share it; the thresholds below cache every executable.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"diffxas-test-jax-cache-{getattr(os, 'getuid', lambda: 0)()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# XLA:CPU logs a false "machine type doesn't match" error on every load from that cache
# (tuning flags counted as CPU features, openxla/xla#44565; the load works), which floods
# the captured stderr of a failing test and hides its message. Silence XLA's C++ log for
# the tests only: failures reach the tests as Python exceptions all the same.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    import jax

    has_gpu = any(d.platform == "gpu" for d in jax.devices())
    skip_slow = pytest.mark.skip(reason="slow: use --runslow")
    skip_gpu = pytest.mark.skip(reason="needs a GPU")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
