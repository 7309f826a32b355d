"""The package's layering (README, "Layout"): each subpackage imports only the ones below it.

Order, bottom to top: errors, maps, physics, data, simulate, analysis, solvers, report, app.
Every ``import``/``from ... import`` of a ``diffxas`` module, at module level or inside a
function, is checked; the package top (``diffxas/__init__.py``) re-exports the public API
and may name every layer.
"""

from __future__ import annotations

import ast
import io
import os
import subprocess
import sys
import tokenize
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "diffxas"
ORDER = ["errors", "maps", "physics", "data", "simulate", "analysis", "solvers", "report", "app"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported diffxas module, at module level) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    is_pkg = path.name == "__init__.py"
    top_level = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = me.split(".") if is_pkg else me.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for n in names:
            if n == "diffxas" or n.startswith("diffxas."):
                out.append((node.lineno, n, id(node) in top_level))
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ORDER else None


def test_every_module_belongs_to_a_layer():
    stray = [p.name for p in PKG.glob("*.py") if p.stem not in ORDER and p.name != "__init__.py"]
    assert not stray, f"top-level modules outside the layers: {stray}"


def test_imports_flow_one_way():
    upward = []
    for path in PKG.rglob("*.py"):
        if path == PKG / "__init__.py":
            continue
        me = _layer(_module_name(path))
        for line, mod, _ in _imports(path):
            other = _layer(mod)
            if me and other and ORDER.index(other) > ORDER.index(me):
                upward.append(f"{path.relative_to(PKG.parent)}:{line} imports {mod}")
    assert not upward, upward


def test_no_module_level_import_cycles():
    # module-level imports only: a cycle there fails at import time or hides a design knot
    graph: dict[str, set[str]] = {}
    known = {_module_name(p) for p in PKG.rglob("*.py")}
    for path in PKG.rglob("*.py"):
        me = _module_name(path)
        deps = set()
        for _, mod, top in _imports(path):
            if top:
                while mod not in known and "." in mod:  # `from pkg.mod import name`
                    mod = mod.rsplit(".", 1)[0]
                if mod in known and mod != me and not me.startswith(mod + "."):
                    deps.add(mod)
        graph[me] = deps
    state: dict[str, int] = {}
    cycles = []

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m) :] + [m])
            elif not state.get(m):
                visit(m, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if not state.get(n):
            visit(n, [])
    assert not cycles, cycles


def _comment_lines(source: str) -> set[int]:
    """Line numbers (1-based) that carry a ``#`` comment (tokens, so a ``#`` in a string is none)."""
    toks = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.start[0] for t in toks if t.type == tokenize.COMMENT}


def _bare_local_imports(path: Path) -> list[int]:
    """Lines of the imports inside a function of ``path`` with no comment on any of the
    statement's lines or on the line above."""
    source = path.read_text()
    comments = _comment_lines(source)
    bare = set()
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    lines = range(node.lineno - 1, (node.end_lineno or node.lineno) + 1)
                    if not comments.intersection(lines):
                        bare.add(node.lineno)
    return sorted(bare)


def test_function_local_imports_say_why():
    """An import inside a function is the exception (an optional heavy dependency such as
    JAX, scipy.optimize, sklearn, matplotlib, dask kept off a light path like `diffxas --help`,
    or a real import cycle); each one names its reason in a ``#`` comment on its line or the
    line above. Everything else is imported at the top of the module."""
    offenders = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).as_posix()
        offenders += [f"{rel}:{n}" for n in _bare_local_imports(path)]
    assert not offenders, f"function-local imports without a comment saying why they are local: {offenders}"


def test_light_modules_import_no_jax():
    """The modules whose local imports say "jax: kept local" (the comment the test above asks
    for) are indeed JAX-free at import: the CLI's light commands and `diffxas --help` load them.
    Checked in a fresh interpreter (this one has JAX loaded by other tests)."""
    light = [
        "diffxas.app.pipeline",
        "diffxas.app.config",
        "diffxas.app.compile_cache",
        "diffxas.app.sweep.cli",
        "diffxas.app.sweep.spec",
        "diffxas.app.sweep.summary",
        "diffxas.solvers.twostep.epie_config",
    ]
    code = f"import importlib, sys\nfor m in {light!r}:\n    importlib.import_module(m)\nprint('jax' in sys.modules)\n"
    env = {**os.environ, "PYTHONPATH": str(PKG.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False", f"one of {light} imports jax at import time"
