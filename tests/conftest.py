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


# ----------------------------------------------------------------------------------------
# Fixtures shared by several test files. The diffxas imports are inside the fixtures: the
# environment above must be set before anything imports jax.
# ----------------------------------------------------------------------------------------
@pytest.fixture
def cxi(tmp_path):
    """A small CXI file (tests/data_helpers.py's make_dataset), fresh for every test: the
    tests of diffxas.data (test_cxi_read, test_cxi_summary, test_files, test_results, ...)
    mutate it. Files that need another ``cxi`` define their own, which wins over this one."""
    from data_helpers import make_dataset

    from diffxas.data import cxi as io_cxi

    path = tmp_path / "data.cxi"
    io_cxi.write_cxi(path, make_dataset())
    return path


# The joint solver's simulated datasets. Session-scoped: they are used by several
# tests/test_joint_*.py files (and test_dataset.py) and were module-scoped in the one file
# those tests came from; session scope simulates each once per test process, no more often
# than before the split. No test modifies them (each builds its own variants with
# dataclasses.replace).
@pytest.fixture(scope="session")
def clean():
    """`tiny` on tests/joint_helpers.py's 18 energies, noise-free, no bad pixels."""
    from joint_helpers import ENERGIES

    from diffxas.simulate.presets import preset, simulate

    return simulate(preset("tiny", energies=ENERGIES, noise=False, bad_pixel_fraction=0.0))


@pytest.fixture(scope="session")
def small3():
    """`tiny` (with noise) on 3 energies: below, at and above the V K edge."""
    from diffxas.simulate.presets import preset, simulate

    return simulate(preset("tiny", energies=(5420.0, 5466.0, 5484.0)))


# The command-line tests' simulated sample and joint result. Session-scoped: several
# tests/test_cli*.py files read them (read-only), and they were module-scoped in the one
# test_cli.py those tests came from; session scope runs each command once per test process,
# no more often than before the split.
@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory):
    """`diffxas simulate` of the tiny preset (the command under test, run once)."""
    from cli_helpers import TINY_ENERGIES, _run

    d = tmp_path_factory.mktemp("sim")
    rc, out, err = _run(
        ["simulate", d / "tiny.cxi", "--preset", "tiny", "--seed", "1", "--energy-list", TINY_ENERGIES, "--no-progress"]
    )
    assert rc == 0, err
    (d / "simulate.stdout").write_text(out)
    return d


@pytest.fixture(scope="session")
def joint_dir(sim_dir, tmp_path_factory):
    """`diffxas reconstruct --method joint` with 2 steps on the tiny file (run once)."""
    from cli_helpers import _run

    d = tmp_path_factory.mktemp("joint")
    rc, out, err = _run(
        [
            "reconstruct",
            sim_dir / "tiny.cxi",
            "--method",
            "joint",
            "-o",
            d / "joint.h5",
            "--steps",
            2,
            "--set",
            "joint.log_every=1",
            "--no-progress",
        ]
    )
    assert rc == 0, err
    (d / "reconstruct.stdout").write_text(out)
    return d


# Test files that share the session-scoped fixtures above and were one module before the
# split into files that mirror the package's modules (issue #26). `make test` runs the suite
# with pytest-xdist's ``--dist loadfile`` (whole files per worker, so that module fixtures are
# built once): each group below is one unit there, on one worker, so ``small3``, ``clean``,
# ``sim_dir`` and ``joint_dir`` are built once per suite run, as when each group was one file,
# and not once on each worker that happens to get one of its files. Other ``--dist`` modes
# and serial runs are unchanged.
XDIST_FILE_GROUPS = {
    "joint solver tests (small3, clean)": (
        "test_joint_model.py",
        "test_joint_loss.py",
        "test_joint_init.py",
        "test_joint_solver.py",
        "test_joint_result.py",
        "test_joint_run.py",
        "test_dataset.py",
    ),
    "command-line tests (sim_dir, joint_dir)": (
        "test_cli.py",
        "test_cli_files.py",
        "test_cli_reconstruction.py",
        "test_cli_analysis.py",
        "test_cli_workflows.py",
    ),
}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    group_of = {name: group for group, names in XDIST_FILE_GROUPS.items() for name in names}

    class GroupedFileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            path = nodeid.split("::", 1)[0]
            return group_of.get(os.path.basename(path), path)

    return GroupedFileScheduling(config, log)
