"""User-facing errors: one clear line, exit code 2 at the CLI (never a traceback)."""


class DiffxasError(Exception):
    """An error caused by the user's input or configuration.

    The CLI prints ``diffxas: error: <message>`` on stderr and exits with code 2.
    Messages name the file, HDF5 entry and dataset where that applies.
    """


class InputError(DiffxasError):
    """Bad input file or dataset."""


class ConfigError(DiffxasError):
    """Bad configuration value."""


class DivergenceError(DiffxasError):
    """A reconstruction diverged (NaN, exploding probe); names the energy and iteration."""
