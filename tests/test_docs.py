"""The code in the user guides runs as written (docs/your-data.md)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def test_your_data_snippet_writes_a_readable_file(tmp_path, monkeypatch):
    # The guide's conversion snippet, with small arrays of the shapes it names; the file it
    # writes must read back with the same frames, positions and energies.
    from diffxas.data import cxi as io_cxi

    blocks = _python_blocks("your-data.md")
    assert len(blocks) == 1
    rng = np.random.default_rng(0)
    k, n, m = 3, 4, 16
    ns = {"frames": rng.poisson(5.0, (k * n, m, m)).astype(np.float64),
          "positions": rng.uniform(-1e-6, 1e-6, (k * n, 2)),
          "energy_index": np.repeat(np.arange(k), n).astype(np.int32),
          "energies": np.array([5420.0, 5466.0, 5540.0]),
          "mask": np.ones((k, m, m), np.float32)}
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/your-data.md", "exec"), ns)
    back = io_cxi.read_cxi(tmp_path / "scan.cxi")
    np.testing.assert_array_equal(np.asarray(back.frames), ns["frames"].astype(np.float32))
    np.testing.assert_allclose(np.asarray(back.positions), ns["positions"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.asarray(back.energies), ns["energies"], rtol=1e-12)
    assert 'element = "V"' in io_cxi.cxi_summary(tmp_path / "scan.cxi")
