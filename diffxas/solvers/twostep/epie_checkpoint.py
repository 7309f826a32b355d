"""ePIE checkpoints: the fingerprint of data and configuration, atomic write, read.

A checkpoint (``.npz``) holds the objects, probes, completed epochs, loss and time
histories, the KK epochs, the fingerprint and (optionally) the background; the driver
(:func:`diffxas.solvers.twostep.epie.run_epie`) resumes from it only when the fingerprint
matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any

import numpy as np

from diffxas.data.dataset import Dataset
from diffxas.errors import is_disk_full
from diffxas.solvers.twostep.epie_config import EpieConfig


def _fingerprint(dataset: Dataset, config: EpieConfig) -> str:
    h = hashlib.sha256()
    # per_frame_shift picks an equivalent route (same result to round-off), not another answer
    h.update(
        json.dumps(
            {k: v for k, v in config.to_dict().items() if k not in ("epochs", "checkpoint_every", "per_frame_shift")},
            sort_keys=True,
        ).encode()
    )
    h.update(np.asarray(dataset.energies).tobytes())
    h.update(np.asarray(dataset.positions).tobytes())
    h.update(str(tuple(dataset.frames.shape)).encode())
    if dataset.monitor is not None:
        h.update(np.asarray(dataset.monitor, np.float64).tobytes())
    fr = np.asarray(dataset.frames)
    h.update(fr[:: max(1, fr.shape[0] // 7)].tobytes())
    return h.hexdigest()[:16]


def save_checkpoint(
    path, objects, probes, epoch: int, loss_hist, time_hist, kk_epochs, fingerprint: str, background=None
) -> None:
    """Write an ePIE checkpoint atomically (temporary file in the same folder, then rename)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".epie-", suffix=".npz", dir=d)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                objects=np.asarray(objects),
                probes=np.asarray(probes),
                epoch=np.int64(epoch),
                loss=np.asarray(loss_hist, np.float64).reshape(-1, np.asarray(objects).shape[0]),
                time=np.asarray(time_hist, np.float64),
                kk_epochs=np.asarray(kk_epochs, np.int64),
                fingerprint=np.asarray(fingerprint),
                **({} if background is None else {"background": np.asarray(background, np.float32)}),
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, Exception) and is_disk_full(e):  # the run goes on; the previous checkpoint is kept
            import logging

            logging.getLogger("diffxas").warning(
                "%s: disk full: checkpoint at epoch %d not written (the previous "
                "one, if any, is kept); the run goes on",
                path,
                int(epoch),
            )
            return
        raise


def load_checkpoint(path) -> dict[str, Any]:
    with np.load(os.fspath(path), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
