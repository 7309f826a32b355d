"""The split-halves workflow for real data: reconstruct --half even/odd, evaluate --split (FRC)."""

import pytest

from diffxas.app import cli
from diffxas.data import cxi as io_cxi
from diffxas.errors import InputError
from diffxas.simulate.presets import preset, simulate


def test_half_partitions_frames():
    ds = simulate(preset("tiny", energies=(5420.0, 5480.0))).dataset
    a, b = ds.half("even"), ds.half("odd")
    assert a.n_frames + b.n_frames == ds.n_frames
    for k in range(ds.n_energies):  # each energy keeps half its frames
        assert abs(len(a.frames_of(k)) - len(b.frames_of(k))) <= 1
    with pytest.raises(InputError):
        ds.half("third")


def test_reconstruct_halves_and_frc(tmp_path, capsys):
    sim = simulate(preset("tiny"))
    data = tmp_path / "d.cxi"
    io_cxi.write_cxi(data, sim.dataset)
    for h in ("even", "odd"):
        rc = cli.main(
            [
                "reconstruct",
                str(data),
                "--method",
                "joint",
                "-o",
                str(tmp_path / f"{h}.h5"),
                "--steps",
                "3",
                "--half",
                h,
                "--set",
                "init=stxm",
            ]
        )
        assert rc == 0
    rc = cli.main(
        [
            "evaluate",
            str(tmp_path / "even.h5"),
            "--split",
            str(tmp_path / "odd.h5"),
            "--json",
            str(tmp_path / "frc.json"),
        ]
    )
    assert rc == 0
    assert (tmp_path / "frc.json").exists()
    assert "wrote" in capsys.readouterr().out
