"""diffxas's CXI files against the rules of the CXI 1.6 specification.

The rules are those the specification's own validator (``validate_cxi.py`` of the cxidb
CXI repository) checks, restated here (the validator is not vendored), plus the
specification's units, datatypes and mask type that the validator leaves out:

* root: integer ``cxi_version``; ``entry_N`` numbered 1, 2, ... without gaps;
  ``number_of_entries`` (optional) equals their count;
* every entry: at least one ``data_N``; ``data_N``, ``instrument_N``, ``sample_N``,
  ``image_N`` and every instrument's ``detector_N`` numbered 1, 2, ...;
* every ``data_N`` and ``detector_N`` has a ``data`` dataset; every ``axes`` attribute
  has one name per dimension, and each name that is not an implicit axis (``y``, ``x``,
  ``coordinate``, ...) is a dataset (or a link to one) in the same group as the data,
  with the length of that dimension ("Dimension Scales", section 9.1);
* complex datasets are compounds of members ``r`` and ``i`` (section 5.1);
* diffxas's layout: frames (N, M, M) uint32 or float32 in counts; translation (N, 3)
  float in m; mask (M, M) uint32 (the 32-bit pixel mask of the Detector class); energy
  in J, distance and pixel sizes in m (SI units, section 6); ``cxi_version`` 160.

A checker that cannot fail proves nothing: ``test_checker_finds_*`` break one rule each
in a valid file and require the checker to name it (the first of them is the layout
diffxas wrote before: ``axes = "translation:y:x"`` with no ``translation`` next to it).
"""

from __future__ import annotations

import dataclasses
import re

import h5py
import numpy as np
import pytest

from diffxas.data import cxi as io_cxi
from diffxas.data.dataset import Dataset

IMPLICIT_AXES = {"y", "x", "coordinate", "dimension", "dot_product", "unit_cell"}
DET = "instrument_1/detector_1"
SRC = "instrument_1/source_1"
TRANS = "sample_1/geometry_1/translation"


def _numbered(group: h5py.Group, prefix: str, errors: list[str], required: bool = False) -> list[str]:
    keys = sorted((k for k in group if re.fullmatch(rf"{prefix}_\d+", k)), key=lambda k: int(k.split("_")[-1]))
    if required and not keys:
        errors.append(f"{group.name}: no {prefix}_N group")
    for i, k in enumerate(keys, start=1):
        if k != f"{prefix}_{i}":
            errors.append(f"{group.name}: {prefix} groups must be {prefix}_1 .. {prefix}_{len(keys)}, found {k}")
            break
    return keys


def _check_axes(ds: h5py.Dataset, errors: list[str]) -> None:
    if "axes" not in ds.attrs:
        return
    axes = ds.attrs["axes"]
    axes = axes.decode() if isinstance(axes, bytes) else str(axes)
    names = axes.split(":")
    if len(names) != ds.ndim:
        errors.append(f"{ds.name}: axes {axes!r} has {len(names)} names for {ds.ndim} dimensions")
        return
    parent = ds.parent  # the group the dataset was reached through (as the validator does)
    for i, name in enumerate(names):
        if name in IMPLICIT_AXES:
            continue
        scale = parent.get(name)
        if not isinstance(scale, h5py.Dataset):
            errors.append(f"{ds.name}: axes name {name!r} is not a dataset in {parent.name}")
        elif (scale.shape[0] if scale.ndim else 1) != ds.shape[i]:
            errors.append(f"{ds.name}: axes name {name!r} has length {scale.shape[0]}, dimension {i} has {ds.shape[i]}")


def _check_complex(ds: h5py.Dataset, errors: list[str]) -> None:
    t = ds.id.get_type()
    if (
        t.get_class() != h5py.h5t.COMPOUND
        or t.get_nmembers() != 2
        or (t.get_member_name(0), t.get_member_name(1)) != (b"r", b"i")
    ):
        errors.append(f"{ds.name}: complex data must be a compound of members r and i")


def _units(ds: h5py.Dataset, unit: str, errors: list[str]) -> None:
    u = ds.attrs.get("units")
    u = u.decode() if isinstance(u, bytes) else u
    if u is not None and u != unit:
        errors.append(f"{ds.name}: units {u!r}, expected {unit!r}")


def cxi_spec_errors(path) -> list[str]:
    """Every violation of the rules in the module docstring (empty list: the file passes)."""
    errors: list[str] = []
    with h5py.File(path, "r") as f:
        ver = f.get("cxi_version")
        if not isinstance(ver, h5py.Dataset) or ver.dtype.kind not in "iu":
            errors.append("/cxi_version: missing or not an integer")
        elif int(np.asarray(ver[()]).ravel()[0]) != 160:
            errors.append(f"/cxi_version: {ver[()]}, expected 160 (CXI 1.6)")
        entries = _numbered(f, "entry", errors, required=True)
        if "number_of_entries" in f and int(f["number_of_entries"][()]) != len(entries):
            errors.append("/number_of_entries: does not match the entries")
        for name in entries:
            e = f[name]
            data_groups = _numbered(e, "data", errors, required=True)
            for cls in ("instrument", "sample", "image"):
                _numbered(e, cls, errors)
            groups = [e[k] for k in data_groups]
            for inst in _numbered(e, "instrument", errors):
                groups += [e[inst][d] for d in _numbered(e[inst], "detector", errors)]
            for g in groups:
                ds = g.get("data")
                if not isinstance(ds, h5py.Dataset):
                    errors.append(f"{g.name}: no data dataset")
                    continue
                _check_axes(ds, errors)
                if ds.dtype.kind == "c":
                    _check_complex(ds, errors)
            # diffxas's layout: shapes, dtypes and units
            data = e[f"{DET}/data"]
            n, m = data.shape[0], data.shape[-1]
            if data.ndim != 3 or data.shape[1] != m or data.dtype not in (np.uint32, np.float32):
                errors.append(f"{data.name}: {data.dtype} {data.shape}, expected uint32/float32 (N, M, M)")
            _units(data, "counts", errors)
            tr = e[TRANS]
            if tr.shape != (n, 3) or tr.dtype.kind != "f":
                errors.append(f"{tr.name}: {tr.dtype} {tr.shape}, expected float ({n}, 3)")
            _units(tr, "m", errors)
            if f"{DET}/mask" in e:
                mk = e[f"{DET}/mask"]
                if mk.shape != (m, m) or mk.dtype != np.uint32:
                    errors.append(f"{mk.name}: {mk.dtype} {mk.shape}, expected the 32-bit mask uint32 ({m}, {m})")
            _units(e[f"{SRC}/energy"], "J", errors)
            for k in ("distance", "x_pixel_size", "y_pixel_size"):
                _units(e[f"{DET}/{k}"], "m", errors)
            if f"{SRC}/illumination" in e:
                _check_complex(e[f"{SRC}/illumination"], errors)
    return errors


def _dataset(k=3, n=4, m=8, seed=0) -> Dataset:
    rng = np.random.default_rng(seed)
    mask = np.ones((k, m, m), np.float32)
    mask[:, 0, :2] = 0
    return Dataset(
        frames=rng.poisson(9.0, (k * n, m, m)).astype(np.float32),
        positions=rng.uniform(-1e-6, 1e-6, (k * n, 2)),
        energy_index=np.repeat(np.arange(k), n),
        energies=np.array([5450.0, 5465.0, 5480.0][:k]),
        mask=mask,
        illumination=(rng.normal(size=(k, m, m)) + 1j).astype(np.complex64),
        distance=1.0,
        detector_pixel=75e-6,
        monitor=rng.uniform(0.9, 1.1, k * n),
    )


@pytest.fixture
def written(tmp_path):
    return io_cxi.write_cxi(tmp_path / "d.cxi", _dataset())


def test_written_cxi_passes_the_spec_rules(written):
    assert cxi_spec_errors(written) == []


def test_written_cxi_float_frames_pass(tmp_path):
    ds = dataclasses.replace(_dataset(), illumination=None, monitor=None)
    ds = dataclasses.replace(ds, frames=np.asarray(ds.frames) + 0.5)
    path = io_cxi.write_cxi(tmp_path / "f.cxi", ds, compression=None)
    with h5py.File(path) as f:
        assert f[f"entry_1/{DET}/data"].dtype == np.float32
    assert cxi_spec_errors(path) == []


def _break(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)
    return cxi_spec_errors(path)


def test_checker_finds_the_old_layout_without_translation_links(written):
    """What diffxas wrote before: axes named a translation that was in neither group."""
    errs = _break(
        written, lambda f: [f.__delitem__(f"entry_{k}/{g}/translation") for k in (1, 2, 3) for g in (DET, "data_1")]
    )
    assert len(errs) == 6 and all("'translation' is not a dataset" in e for e in errs)


def test_checker_finds_a_uint8_mask(written):
    def fn(f):
        mk = f[f"entry_2/{DET}/mask"][()]
        del f[f"entry_2/{DET}/mask"]
        f[f"entry_2/{DET}/mask"] = mk.astype(np.uint8)

    assert any("32-bit mask" in e for e in _break(written, fn))


def test_checker_finds_an_entry_gap_and_a_missing_data_group(written):
    def fn(f):
        f.move("entry_3", "entry_4")
        del f["entry_1/data_1"]

    errs = _break(written, fn)
    assert any("entry_1 .. entry_3, found entry_4" in e for e in errs)
    assert any("/entry_1: no data_N group" in e for e in errs)


def test_checker_finds_wrong_axes_and_units(written):
    def fn(f):
        f[f"entry_1/{DET}/data"].attrs["axes"] = "translation:x"
        f[f"entry_2/{SRC}/energy"].attrs["units"] = "eV"
        f["cxi_version"][()] = 150

    errs = _break(written, fn)
    assert any("has 2 names for 3 dimensions" in e for e in errs)
    assert any("units 'eV', expected 'J'" in e for e in errs)
    assert any("expected 160" in e for e in errs)
