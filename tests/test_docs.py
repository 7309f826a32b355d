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
    ns = {
        "frames": rng.poisson(5.0, (k * n, m, m)).astype(np.float64),
        "positions": rng.uniform(-1e-6, 1e-6, (k * n, 2)),
        "energy_index": np.repeat(np.arange(k), n).astype(np.int32),
        "energies": np.array([5420.0, 5466.0, 5540.0]),
        "mask": np.ones((k, m, m), np.float32),
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/your-data.md", "exec"), ns)
    back = io_cxi.read_cxi(tmp_path / "scan.cxi")
    np.testing.assert_array_equal(np.asarray(back.frames), ns["frames"].astype(np.float32))
    np.testing.assert_allclose(np.asarray(back.positions), ns["positions"], rtol=0, atol=1e-15)
    np.testing.assert_allclose(np.asarray(back.energies), ns["energies"], rtol=1e-12)
    assert 'element = "V"' in io_cxi.cxi_summary(tmp_path / "scan.cxi")


ROOT = DOCS.parent


def test_readme_is_short_and_for_users():
    # the project's rule: the README is for users, at most 150 lines; results live in docs/
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150)"


def test_results_are_dated_by_commit_not_by_session():
    # no "session N" dating anywhere in the package, the tests, the docs or the notes
    pattern = re.compile(r"\bsession[ -]?\d+", re.I)
    offenders = []
    for sub in ("diffxas", "tests", "docs", "experiments", "benchmarks", "examples"):
        for p in (ROOT / sub).rglob("*"):
            if p.suffix in (".py", ".md", ".toml", ".sh") and p.is_file():
                for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
                    if pattern.search(line):
                        offenders.append(f"{p.relative_to(ROOT)}:{i}")
    for p in ROOT.glob("*.md"):
        for i, line in enumerate(p.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{p.name}:{i}")
    assert not offenders, offenders


def test_readme_and_docs_links_resolve():
    # every relative markdown link of the README and docs/ points at an existing file
    missing = []
    for p in [ROOT / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", p.read_text()):
            if "://" in target or target.startswith("mailto:") or not re.search(r"[./]", target):
                continue  # a URL, or not a path (math such as f[x](E))
            if not (p.parent / target).exists():
                missing.append(f"{p.relative_to(ROOT)} -> {target}")
    assert not missing, missing


def test_readme_commands_exist():
    # every `diffxas COMMAND` line of the README names a command the CLI has
    from diffxas.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    commands = set(re.findall(r"^diffxas ([a-z-]+)", (ROOT / "README.md").read_text(), flags=re.M))
    assert commands, "the README shows no command"
    assert commands <= set(sub.choices), sorted(commands - set(sub.choices))
