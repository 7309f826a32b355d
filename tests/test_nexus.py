"""Reading multi-energy NeXus NXcxi_ptycho files (diffxas.data.nexus, dispatched from io.read_cxi).

The test file is written with plain h5py from the application definition (nexusformat
definitions, NXcxi_ptycho.nxdl.xml): per energy one NXentry with ``definition``,
NXinstrument/NXsource (the *machine* energy, 3 GeV, which must not be taken for the photon
energy)/NXbeam (photon energy in keV)/NXdetector (data, translation (N, 3) in um, pixel
sizes in um, distance in mm)/NXmonitor, NXdata and the CXI-compatible data_1 and
sample_1/geometry_1 links. One entry uses the raster layout (npts_x, npts_y, M, M).
Reference: the Dataset the file was written from (data_helpers.make_dataset): frames exact,
energies 1e-12 relative (keV -> eV), positions and lengths 1e-12 relative (unit scaling).
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from data_helpers import ENERGIES, K, M, N, make_dataset

from diffxas.app.cli import main
from diffxas.data import cxi as io_cxi
from diffxas.data import info as io_info
from diffxas.data import nexus
from diffxas.errors import InputError


def write_nxcxi_ptycho(path, ds, names=("entry_1", "entry_2", "entry_3"), raster_entry=1, order=(2, 0, 1)):
    """One NXentry per energy, written from the definition (entries in ``order``)."""
    frames, pos = np.asarray(ds.frames), np.asarray(ds.positions)
    with h5py.File(path, "w") as f:
        f.attrs["NX_class"] = "NXroot"
        f["cxi_version"] = 160
        for slot, k in enumerate(order):
            idx = ds.frames_of(k)
            e = f.create_group(names[slot])
            e.attrs["NX_class"] = "NXentry"
            e["definition"] = "NXcxi_ptycho"
            e["title"] = f"XANES ptychography at {ENERGIES[k]} eV"
            inst = e.create_group("instrument_1")
            inst.attrs["NX_class"] = "NXinstrument"
            src = inst.create_group("source_1")
            src.attrs["NX_class"] = "NXsource"
            src["name"], src["probe"], src["type"] = "Diamond", "x-ray", "Synchrotron X-ray Source"
            src["energy"] = 3.0
            src["energy"].attrs["units"] = "GeV"  # the machine energy: not the photons'
            beam = inst.create_group("beam_1")
            beam.attrs["NX_class"] = "NXbeam"
            beam["energy"] = ENERGIES[k] / 1e3
            beam["energy"].attrs["units"] = "keV"
            det = inst.create_group("detector_1")
            det.attrs["NX_class"] = "NXdetector"
            block = frames[idx].astype(np.uint32)
            if slot == raster_entry:  # raster scan: (npts_x, npts_y, M, M), C order = translation order
                block = block.reshape(1, N, M, M)
            det.create_dataset("data", data=block)
            tr = np.zeros((N, 3))
            tr[:, :2] = -pos[idx] * 1e6  # um, sample translation
            det["translation"] = tr
            det["translation"].attrs["units"] = "um"
            det["translation"].attrs["axes"] = "translation:y:x"
            det["translation"].attrs["interpretation"] = "image"
            for key, value, unit in (
                ("x_pixel_size", ds.detector_pixel * 1e6, "um"),
                ("y_pixel_size", ds.detector_pixel * 1e6, "um"),
                ("distance", ds.distance * 1e3, "mm"),
                ("beam_center_x", M / 2 * ds.detector_pixel, "m"),
                ("beam_center_y", M / 2 * ds.detector_pixel, "m"),
            ):
                det[key] = value
                det[key].attrs["units"] = unit
            det["pixel_mask"] = (np.asarray(ds.mask)[k] == 0).astype(np.uint32)  # NeXus bit 0: gap/bad
            mon = inst.create_group("monitor")
            mon.attrs["NX_class"] = "NXmonitor"
            mon["data"] = np.full(N, 1e6)
            nxdata = e.create_group("data")
            nxdata.attrs.update({"NX_class": "NXdata", "signal": "data", "axes": ["x", "."]})
            nxdata["data"] = h5py.SoftLink(det["data"].name)
            d1 = e.create_group("data_1")
            d1.attrs["NX_class"] = "NXcollection"
            d1["translation"] = h5py.SoftLink(det["translation"].name)
            sample = e.create_group("sample_1")
            sample.attrs["NX_class"] = "NXsample"
            geo = sample.create_group("geometry_1")
            geo.attrs["NX_class"] = "NXcollection"
            geo["translation"] = h5py.SoftLink(det["translation"].name)
            if slot != raster_entry:  # a 4-D raster cannot sit behind the CXI (N, M, M) link unremapped
                d1["data"] = h5py.SoftLink(det["data"].name)
    return path


@pytest.fixture
def nxs(tmp_path):
    return write_nxcxi_ptycho(tmp_path / "scan.nxs", make_dataset(illumination=False))


def test_read_nxcxi_ptycho_into_the_same_dataset(nxs):
    ref = make_dataset(illumination=False)
    with h5py.File(nxs) as f:
        assert nexus.is_nxcxi_ptycho(f) and len(nexus.nexus_entries(f)) == K
    assert io_info.file_kind(nxs) == "nexus"
    for ds in (io_cxi.read_cxi(nxs), io_cxi.open_cxi(nxs)):
        np.testing.assert_allclose(ds.energies, ENERGIES, rtol=1e-12)  # keV -> eV; sorted
        np.testing.assert_array_equal(np.asarray(ds.frames), np.asarray(ref.frames))  # exact
        np.testing.assert_allclose(np.asarray(ds.positions), np.asarray(ref.positions), rtol=1e-12, atol=1e-22)
        np.testing.assert_array_equal(np.asarray(ds.mask), np.asarray(ref.mask))
        assert ds.distance == pytest.approx(ref.distance, rel=1e-12)
        assert ds.detector_pixel == pytest.approx(ref.detector_pixel, rel=1e-12)
        np.testing.assert_array_equal(np.asarray(ds.monitor), 1e6)
    sub = io_cxi.read_cxi(nxs, energies=[2])
    np.testing.assert_allclose(sub.energies, ENERGIES[2:], rtol=1e-12)


def test_nexus_info(nxs, capsys):
    assert main(["info", str(nxs)]) == 0
    out = capsys.readouterr().out
    assert "NXcxi_ptycho" in out and "3 entries, 5420.00 .. 5540.25 eV" in out and "(total 15)" in out


def test_nexus_wavelength_and_entry_names(tmp_path):
    """Any NXentry names; NXbeam incident_wavelength in Angstrom (E = h c / lambda)."""
    from diffxas.physics.constants import HC_EV_M

    p = write_nxcxi_ptycho(tmp_path / "w.nxs", make_dataset(illumination=False), names=("scan_a", "scan_b", "zz"))
    with h5py.File(p, "r+") as f:
        for name in ("scan_a", "scan_b", "zz"):
            b = f[f"{name}/instrument_1/beam_1"]
            ev = float(b["energy"][()]) * 1e3
            del b["energy"]
            b["incident_wavelength"] = HC_EV_M / ev * 1e10
            b["incident_wavelength"].attrs["units"] = "angstrom"
    np.testing.assert_allclose(io_cxi.read_cxi(p).energies, ENERGIES, rtol=1e-12)


def _mut_machine_energy_only(f):
    del f["entry_2/instrument_1/beam_1/energy"]


def _mut_energy_units(f):
    f["entry_1/instrument_1/beam_1/energy"].attrs["units"] = "eV"  # 5.42 eV


def _mut_translation_rows(f):
    d = f["entry_3/instrument_1/detector_1"]
    del d["translation"]
    d["translation"] = np.zeros((N + 1, 3))


def _mut_translation_text(f):
    d = f["entry_2/instrument_1/detector_1"]
    del d["translation"]
    d["translation"] = np.array([b"1 um"] * N)


def _mut_pixel_units(f):
    f["entry_1/instrument_1/detector_1/x_pixel_size"].attrs["units"] = "furlong"


def _mut_same_energy(f):
    f["entry_2/instrument_1/beam_1/energy"][()] = f["entry_1/instrument_1/beam_1/energy"][()]


@pytest.mark.parametrize(
    "mutate,words",
    [
        (_mut_machine_energy_only, "no photon energy"),
        (_mut_energy_units, "not a plausible X-ray energy"),
        (_mut_translation_rows, "one row per frame"),
        (_mut_pixel_units, "unknown length unit"),
        (_mut_translation_text, "expected real numbers"),
        (_mut_same_energy, "two entries at one energy"),
    ],
)
def test_nexus_bad_input_one_line_exit_2(nxs, capsys, mutate, words):
    with h5py.File(nxs, "r+") as f:
        mutate(f)
    with pytest.raises(InputError) as ei:
        io_cxi.read_cxi(nxs)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith(f"{nxs}: ") and words in msg
    assert main(["info", str(nxs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
