"""``diffxas export``: one energy of a multi-energy CXI file as a plain single-entry CXI file.

References: the dataset written (exact: the same float32 counts, float64 positions and
masks), and the sign conventions of docs/formats.md ("Other ptychography codes"):
ptychodus writes its probe positions straight into ``sample_1/geometry_1/translation``
(probe position = translation[:, :2]); CXI's own meaning (the sample translation) is the
negative, which diffxas and CDTools read.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from data_helpers import DET, SRC, TRANS, assert_same_dataset, make_dataset
from test_cxi_spec import cxi_spec_errors

from diffxas.app.cli import main
from diffxas.data import cxi as io_cxi
from diffxas.physics.constants import ELEMENTARY_CHARGE


@pytest.fixture
def data(tmp_path):
    return io_cxi.write_cxi(tmp_path / "multi.cxi", make_dataset())


@pytest.mark.parametrize("translation,sign", [("probe", 1.0), ("sample", -1.0)])
def test_export_round_trip_and_sign(data, tmp_path, capsys, translation, sign):
    out = tmp_path / f"one_{translation}.cxi"
    args = [] if translation == "probe" else ["--translation", "sample"]
    assert main(["export", str(data), "--energy", "5465.5", "-o", str(out), *args]) == 0
    assert "5465.5 eV (5 frames)" in capsys.readouterr().out
    ref = make_dataset().select_energies([1])
    pos = np.asarray(ref.positions)
    with h5py.File(out) as f:
        assert [k for k in f if k.startswith("entry_")] == ["entry_1"]  # what single-entry readers open
        e = f["entry_1"]
        # energy in J, 1e-12 relative
        assert e[f"{SRC}/energy"][()] == pytest.approx(5465.5 * ELEMENTARY_CHARGE, rel=1e-12)
        np.testing.assert_array_equal(e["data_1/data"][()], np.asarray(ref.frames))  # exact
        tr = e[TRANS][()]
        # the sign: probe -> ptychodus/PtyPy read (x, y) = translation[:, :2]; sample -> CXI's -(x, y)
        np.testing.assert_array_equal(tr[:, :2], sign * pos)
        np.testing.assert_array_equal(e["data_1/translation"][()], tr)
        mk = e[f"{DET}/mask"][()]
        assert mk.dtype == np.uint32
        np.testing.assert_array_equal(mk != 0, np.asarray(ref.mask)[0] == 0)  # ptychodus: bad = mask != 0
    assert cxi_spec_errors(out) == []
    # diffxas reads its own export back (the convention attribute tells it the sign)
    assert_same_dataset(ref, io_cxi.read_cxi(out))


def test_export_probe_sign_differs_from_a_plain_cxi_reader(data, tmp_path):
    """The probe-convention export is not the CXI sample translation: a reader of CXI's
    meaning (probe = -translation) that ignores the attribute gets the mirrored scan."""
    out, _, _ = io_cxi.export_cxi_entry(data, 5420.0, tmp_path / "one.cxi")
    with h5py.File(out) as f:
        tr = f[f"entry_1/{TRANS}"][()]
        assert f[f"entry_1/{TRANS}"].attrs["convention"] == "probe position"
    pos = np.asarray(make_dataset().select_energies([0]).positions)
    np.testing.assert_array_equal(-tr[:, :2], -pos)


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--energy", "5466"], "no entry at 5466 eV"),
        (["--energy", "nan"], "finite"),
    ],
)
def test_export_bad_energy(data, tmp_path, capsys, argv, words):
    out = tmp_path / "one.cxi"
    assert main(["export", str(data), *argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "diffxas: error:" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [data]  # nothing written, no temp file


def test_export_refuses_to_overwrite_the_input_and_bad_files(data, tmp_path, capsys):
    assert main(["export", str(data), "--energy", "5420", "-o", str(data)]) == 2
    assert "overwrite the input" in capsys.readouterr().err
    bad = tmp_path / "bad.cxi"
    bad.write_bytes(b"not hdf5")
    assert main(["export", str(bad), "--energy", "5420", "-o", str(tmp_path / "o.cxi")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not an HDF5 file" in err
