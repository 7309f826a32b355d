"""The CLI's persistent compilation cache folder (diffxas.app.compile_cache)."""

import os

import jax

from diffxas.app import cli, compile_cache


def test_host_tag_is_stable_and_names_the_machine():
    """Same host -> same tag (the folder is found again); the tag starts with the machine type
    and carries a 12-hex-digit hash of CPU model and flags."""
    a, b = compile_cache.host_tag(), compile_cache.host_tag()
    assert a == b
    machine, digest = a.rsplit("-", 1)
    assert machine and len(digest) == 12 and int(digest, 16) >= 0


def test_default_folder_is_per_host_and_quiet(tmp_path, monkeypatch):
    """Unset variable outside pytest -> $XDG_CACHE_HOME/diffxas/jax/<host tag>, and XLA's
    spurious loader warning silenced unless the user chose a log level."""
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv(cli.COMPILATION_CACHE_ENV, raising=False)
    monkeypatch.delenv("PYTEST_CURRENT_TEST", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    seen = {}
    monkeypatch.setattr(compile_cache, "enable", lambda path: seen.setdefault("path", path))
    got = cli._compilation_cache()
    assert got == os.path.join(str(tmp_path), "diffxas", "jax", compile_cache.host_tag())
    assert seen["path"] == got
    monkeypatch.undo()


def test_enable_keeps_a_users_log_level(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    import jax

    before = jax.config.jax_compilation_cache_dir
    try:
        compile_cache.enable("/nonexistent-but-unused")
        assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
        assert jax.config.jax_compilation_cache_dir == "/nonexistent-but-unused"
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_compilation_cache_switch(tmp_path, monkeypatch):
    """The CLI's persistent compilation cache (``DIFFXAS_COMPILATION_CACHE``): off under pytest
    by default and with ``0``/``off``; a directory switches it on for jax (config read back);
    a user's own ``JAX_COMPILATION_CACHE_DIR`` is left alone."""
    from diffxas.app import cli

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv(cli.COMPILATION_CACHE_ENV, raising=False)
    assert cli._compilation_cache() is None  # pytest: off unless asked
    monkeypatch.setenv(cli.COMPILATION_CACHE_ENV, "off")
    assert cli._compilation_cache() is None
    keys = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    before = {k: getattr(jax.config, k) for k in keys}
    try:
        monkeypatch.setenv(cli.COMPILATION_CACHE_ENV, str(tmp_path / "cache"))
        assert cli._compilation_cache() == str(tmp_path / "cache")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "cache")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
        assert cli._compilation_cache() is None
    finally:
        for k, v in before.items():
            jax.config.update(k, v)
