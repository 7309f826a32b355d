"""Shared helpers of the command-line tests (not a test module): a small Dataset, the
one-error-line check, the in-process command runner, the bad input files of every command
that reads a CXI file. Imported by tests/test_cli*.py and tests/conftest.py (tests/ is on
sys.path under pytest's default import mode).
"""

from __future__ import annotations

import contextlib
import io as _stdio

import numpy as np

from diffxas.app import cli
from diffxas.data import cxi as io_cxi
from diffxas.data.dataset import Dataset

ENERGIES = np.array([5420.0, 5480.0, 5540.0])


def make_dataset(k=3, n=5, m=16, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(
        frames=rng.poisson(10.0, (k * n, m, m)).astype(np.float32),
        positions=rng.uniform(-1e-6, 1e-6, (k * n, 2)),
        energy_index=np.repeat(np.arange(k, dtype=np.int32), n),
        energies=ENERGIES[:k].copy(),
        mask=np.ones((k, m, m), np.float32),
        illumination=None,
        distance=0.5,
        detector_pixel=75e-6,
    )


def assert_one_error_line(err: str, *needles):
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("diffxas: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err


def _text(tmp_path):
    p = tmp_path / "notes.cxi"
    p.write_text("hello\n" * 100)
    return p, "not an HDF5 file"


def _missing(tmp_path):
    return tmp_path / "missing.cxi", "no such file"


def _truncated(tmp_path):
    p = io_cxi.write_cxi(tmp_path / "t.cxi", make_dataset())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p, "truncated or corrupt"


def _ev_energy(tmp_path):
    import h5py

    p = io_cxi.write_cxi(tmp_path / "ev.cxi", make_dataset())
    with h5py.File(p, "r+") as f:
        del f["entry_1/instrument_1/source_1/energy"]
        f["entry_1/instrument_1/source_1/energy"] = 5420.0
    return p, "energy 5420 looks like eV; CXI stores J"


#: Six energies over the edge (the two-step fit needs >= 6; a narrow range keeps the joint
#: solver's initial grid search short).
TINY_ENERGIES = "5462,5466,5470,5475,5480,5484"


def _run(argv) -> tuple[int, str, str]:
    out, err = _stdio.StringIO(), _stdio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


# ---- bad CXI files, for every command that reads one ---------------------------------------
def _cxi_edit(tmp_path, name, edit):
    import h5py

    p = io_cxi.write_cxi(tmp_path / name, make_dataset())
    with h5py.File(p, "r+") as f:
        edit(f)
    return p


_DATA = "entry_1/instrument_1/detector_1/data"


def _missing_dataset(tmp_path):
    def edit(f):
        del f["entry_1/instrument_1/detector_1/distance"]

    return _cxi_edit(tmp_path, "nodist.cxi", edit), "/entry_1/instrument_1/detector_1/distance: missing dataset"


def _wrong_shape(tmp_path):
    def edit(f):
        del f[_DATA]
        f[_DATA] = np.ones((5, 16, 15), np.float32)

    return _cxi_edit(tmp_path, "shape.cxi", edit), "must have shape (N, M, M), got (5, 16, 15)"


def _nan_counts(tmp_path):
    def edit(f):
        a = f[_DATA][()].astype(np.float32)
        a[2, 3, 4] = np.nan
        del f[_DATA]
        f[_DATA] = a

    return _cxi_edit(tmp_path, "nan.cxi", edit), "frame 2 contains NaN or inf counts"


def _negative_counts(tmp_path):
    def edit(f):
        a = f[_DATA][()].astype(np.float32)
        a[1, 0, 0] = -3.0
        del f[_DATA]
        f[_DATA] = a

    return _cxi_edit(tmp_path, "neg.cxi", edit), "frame 1 contains negative counts"


BAD_CXI = [_missing, _text, _truncated, _missing_dataset, _wrong_shape, _nan_counts, _negative_counts, _ev_energy]
