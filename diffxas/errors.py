"""User-facing errors: one clear line, exit code 2 at the CLI (never a traceback)."""

import errno


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


class DiskFullError(DiffxasError):
    """A file could not be written because its disk is full (or over quota); the message
    names the file, says "disk full" and where the data went instead, if anywhere."""


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or an exception it was raised from or during) is a full disk:
    ``OSError`` with errno ENOSPC or EDQUOT, or h5py's/HDF5's message for it."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFullError):
            return True
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            return True
        text = str(exc)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
