r"""ePIE: per-energy ptychographic reconstruction (step one of the two-step baseline).

Maiden & Rodenburg, Ultramicroscopy 109, 1256 (2009): every energy is reconstructed
independently, frame by frame (in a fresh random order every epoch), with the optional
Kramers-Kronig constraint (Hirose et al., Opt. Express 25, 8593 (2017)) applied between
epochs. This module is the driver (:func:`run_epie`: epochs, divergence checks, KK
schedule, checkpoints, progress) and the public face of the ePIE: every name below is
importable from here as before the split. The work is in one module per concern, imported
one way (config <- kernel <- batches; config <- checkpoint; kk alone; all <- this driver):

* :mod:`~diffxas.solvers.twostep.epie_config`: :class:`EpieConfig` (options, step decay, KK schedule);
* :mod:`~diffxas.solvers.twostep.epie_kernel`: the jitted per-frame update and the epoch
  (``lax.scan`` over frames, ``vmap`` over energies), the Fourier shift ramps, the update
  equations and the 2-FFT route;
* :mod:`~diffxas.solvers.twostep.epie_batches`: grids, initial probes, frame tables, padded
  energy batches, frame orders, gathering and the background's EM step;
* :mod:`~diffxas.solvers.twostep.epie_checkpoint`: fingerprint, atomic checkpoint write and read;
* :mod:`~diffxas.solvers.twostep.kk`: the KK constraint.

Each energy is reconstructed on its own natural grid (``Dataset.energy_grids``, padded to
one shape, same centre), starting from O = 1 and the dataset's illumination (or a KB
probe of ``probe_fwhm`` when absent). One energy's epoch is one jitted ``lax.scan`` over
its shuffled frames; energies are batched with ``vmap`` (frames padded to equal counts;
padded frames have a zero validity flag that makes them exact no-ops).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from diffxas.data.dataset import Dataset, mean_frames
from diffxas.errors import DivergenceError, InputError
from diffxas.physics.background import as_maps, initial_background
from diffxas.physics.geometry import Grid
from diffxas.solvers.twostep.epie_batches import OFFSET_TOL as OFFSET_TOL
from diffxas.solvers.twostep.epie_batches import _background_em, _gather, _gather_background, _gather_probes
from diffxas.solvers.twostep.epie_batches import _frame_tables as _frame_tables
from diffxas.solvers.twostep.epie_batches import _make_batches as _make_batches
from diffxas.solvers.twostep.epie_batches import frame_orders as frame_orders
from diffxas.solvers.twostep.epie_batches import initial_probes as initial_probes
from diffxas.solvers.twostep.epie_batches import reconstruction_grids as reconstruction_grids
from diffxas.solvers.twostep.epie_checkpoint import _fingerprint
from diffxas.solvers.twostep.epie_checkpoint import load_checkpoint as load_checkpoint
from diffxas.solvers.twostep.epie_checkpoint import save_checkpoint as save_checkpoint
from diffxas.solvers.twostep.epie_config import EpieConfig as EpieConfig
from diffxas.solvers.twostep.epie_kernel import epie_update as epie_update
from diffxas.solvers.twostep.epie_kernel import epoch_fn as epoch_fn
from diffxas.solvers.twostep.epie_kernel import shift_ramps as shift_ramps
from diffxas.solvers.twostep.kk import kk_constrain as kk_constrain
from diffxas.solvers.twostep.kk import kk_matrix as kk_matrix
from diffxas.solvers.twostep.kk import kk_phase as kk_phase

# ----------------------------------------------------------------------------- result


@dataclasses.dataclass
class EpieResult:
    """Output of :func:`run_epie` (host side).

    Attributes:
        objects: (K, ny, nx) complex64, each on ``grids[k]``.
        probes: (K, M, M) complex64, each on its energy's pixel size.
        grids: each energy's grid; common: the map grid.
        energies: (K,) eV.
        history: ``loss`` (epochs, K) amplitude loss per epoch and energy, ``time`` (epochs,)
            seconds per epoch, ``kk_epochs`` epochs after which KK was applied.
        corners, fracs: per energy, the frames' patch corners and sub-pixel offsets.
        epochs_done: completed epochs.
        background: the incoherent background (``EpieConfig.background``): None, (K,)
            ("flat") or (K, M, M) ("map", centred like the frames), photons per pixel per frame.
    """

    objects: np.ndarray
    probes: np.ndarray
    grids: list[Grid]
    common: Grid
    energies: np.ndarray
    history: dict[str, np.ndarray]
    corners: list[np.ndarray]
    fracs: list[np.ndarray]
    epochs_done: int
    compile_time: float = 0.0
    background: np.ndarray | None = None


# ----------------------------------------------------------------------------- driver


def run_epie(
    dataset: Dataset,
    config: EpieConfig | None = None,
    *,
    common: Grid | None = None,
    progress: bool = False,
    checkpoint=None,
    resume: bool = False,
    init_objects: np.ndarray | None = None,
    init_probes: np.ndarray | None = None,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> EpieResult:
    """Reconstruct every energy of ``dataset`` independently with ePIE (+ optional KK).

    Args:
        dataset: the measurement.
        config: :class:`EpieConfig` (default ``EpieConfig()``).
        common: the map grid (default ``dataset.common_grid()``); each energy's grid is
            centred on it (see :func:`reconstruction_grids`).
        progress: show a tqdm bar over epochs.
        checkpoint: path of an ``.npz`` checkpoint written every ``checkpoint_every`` epochs
            and at the end (atomically).
        resume: continue from ``checkpoint`` if it exists and matches the data and config.
        init_objects, init_probes: optional starting guesses (K, ny, nx) / (K, M, M).
        callback: called as ``callback(epoch_done, loss_per_energy)`` after every epoch.

    Raises:
        DivergenceError: NaN/inf in an object or probe, or probe power above
            ``probe_power_limit`` x its initial value; names the energy and epoch.
    """
    config = EpieConfig() if config is None else config
    common, grids = reconstruction_grids(dataset, common)
    energies = np.asarray(dataset.energies, np.float64)
    kn = len(energies)
    m = dataset.frame_size
    tables = _frame_tables(dataset, grids)
    batches = _make_batches(dataset, tables, config.batch_energies)
    n_max = max(t[0].size for t in tables)

    probes0 = np.asarray(
        initial_probes(dataset, grids, config.probe_fwhm, config.use_illumination)
        if init_probes is None
        else init_probes,
        np.complex64,
    )
    if probes0.shape != (kn, m, m):
        raise InputError(f"initial probes must be ({kn}, {m}, {m}), got {probes0.shape}")
    shape = grids[0].shape
    objects0 = np.ones((kn,) + shape, np.complex64) if init_objects is None else np.asarray(init_objects, np.complex64)
    if objects0.shape != (kn,) + shape:
        raise InputError(f"initial objects must be ({kn}, {shape[0]}, {shape[1]}), got {objects0.shape}")
    power0 = np.sum(np.abs(probes0.astype(np.complex128)) ** 2, axis=(1, 2))
    empty = np.nonzero(power0 == 0)[0]  # (a non-finite probe still fails as a divergence at epoch 1)
    if empty.size:  # else the first epoch fails as "diverged ... lower alpha/beta", which it is not
        raise InputError(
            f"the initial probe of energy {energies[empty[0]]:.1f} eV is empty (all zero; "
            f"{empty.size} energies): fix the file's illumination or set epie.use_illumination=false"
        )

    fp = _fingerprint(dataset, config)
    bg0 = None
    if config.background != "none":
        bg0 = initial_background(mean_frames(dataset), np.asarray(dataset.mask), config.background)
    start_epoch = 0
    loss_hist: list[np.ndarray] = []
    time_hist: list[float] = []
    kk_epochs: list[int] = []
    if checkpoint is not None and resume and os.path.exists(os.fspath(checkpoint)):
        ck = load_checkpoint(checkpoint)
        if str(ck["fingerprint"]) != fp:
            raise InputError(
                f"checkpoint {os.fspath(checkpoint)} was written for other data or another ePIE "
                "configuration; remove it or run without resume"
            )
        objects0 = ck["objects"].astype(np.complex64)
        probes0 = ck["probes"].astype(np.complex64)
        start_epoch = int(ck["epoch"])
        loss_hist = [row for row in ck["loss"]]
        time_hist = list(ck["time"])
        kk_epochs = [int(e) for e in ck["kk_epochs"]]
        if "background" in ck:
            bg0 = ck["background"]

    objs = [jnp.asarray(objects0[b.energies]) for b in batches]
    phat = [jnp.fft.fft2(jnp.asarray(probes0[b.energies])) for b in batches]
    with_bg = config.background != "none"
    bgm = [jnp.asarray(as_maps(None if bg0 is None else bg0[b.energies], len(b.energies), m)) for b in batches]

    it = range(start_epoch, config.epochs)
    bar = None
    if progress:
        from tqdm import tqdm  # tqdm: ~25 ms, only with progress

        bar = tqdm(
            it,
            desc=f"ePIE {kn} energies {energies.min():.1f}-{energies.max():.1f} eV",
            unit="epoch",
            initial=start_epoch,
            total=config.epochs,
        )
        it = bar
    compile_time = 0.0
    for epoch in it:
        t0 = time.perf_counter()
        upd = config.beta > 0 and epoch >= config.probe_update_start
        orders = frame_orders(config.seed, epoch, n_max, energies)
        fac = config.step_factor(epoch)
        alpha = jnp.float32(config.alpha * fac)
        beta = jnp.float32(config.beta * fac)
        loss_e = np.zeros(kn)
        for i, b in enumerate(batches):
            fn = epoch_fn(upd, with_bg, b.common_offset and not config.per_frame_shift)
            objs[i], phat[i], loss, power, finite, share = fn(
                objs[i],
                phat[i],
                orders[b.energies],
                b.corners,
                b.rows,
                b.cols,
                b.counts,
                b.mask,
                b.valid,
                bgm[i],
                alpha,
                beta,
            )
            if with_bg and epoch >= config.background_start:
                bgm[i] = _background_em(share, b, config.background)
            loss = np.asarray(loss)
            power = np.asarray(power)
            finite = np.asarray(finite)
            loss_e[b.energies] = loss
            for j, k in enumerate(b.energies):
                if not finite[j] or not np.isfinite(loss[j]):
                    raise DivergenceError(
                        f"ePIE diverged at energy {energies[k]:.1f} eV, epoch {epoch + 1}: "
                        "non-finite object or probe (lower alpha/beta or start the probe update later)"
                    )
                if power[j] > config.probe_power_limit * power0[k]:
                    raise DivergenceError(
                        f"ePIE diverged at energy {energies[k]:.1f} eV, epoch {epoch + 1}: probe power "
                        f"{power[j] / power0[k]:.3g} x its initial value (limit "
                        f"{config.probe_power_limit:g}); lower beta or start the probe update later"
                    )
        done = epoch + 1
        if config.kk_due(done):
            cur_o = _gather(objs, batches, kn)
            new_o = kk_constrain(
                cur_o,
                energies,
                grids,
                common,
                weight=config.kk_weight,
                register=config.kk_register,
                tail_ev=config.kk_tail_ev,
                probes=_gather_probes(phat, batches, kn),
                tables=tables,
                frame_size=m,
            )
            objs = [jnp.asarray(new_o[b.energies]) for b in batches]
            kk_epochs.append(done)
        dt = time.perf_counter() - t0
        if epoch == start_epoch:
            compile_time = dt
        loss_hist.append(loss_e)
        time_hist.append(dt)
        if bar is not None:
            bar.set_postfix(loss=f"{loss_e.sum():.4g}")
        if callback is not None:
            callback(done, loss_e)
        if checkpoint is not None and (done % config.checkpoint_every == 0 or done == config.epochs):
            save_checkpoint(
                checkpoint,
                _gather(objs, batches, kn),
                _gather_probes(phat, batches, kn),
                done,
                loss_hist,
                time_hist,
                kk_epochs,
                fp,
                background=_gather_background(bgm, batches, kn, config),
            )

    objects = _gather(objs, batches, kn)
    probes = _gather_probes(phat, batches, kn)
    return EpieResult(
        objects=objects,
        probes=probes,
        grids=grids,
        common=common,
        energies=energies,
        history={
            "loss": np.asarray(loss_hist, np.float64).reshape(-1, kn),
            "time": np.asarray(time_hist, np.float64),
            "kk_epochs": np.asarray(kk_epochs, np.int64),
        },
        corners=[t[1] for t in tables],
        fracs=[t[2] for t in tables],
        epochs_done=max(start_epoch, config.epochs),
        compile_time=compile_time,
        background=_gather_background(bgm, batches, kn, config),
    )
