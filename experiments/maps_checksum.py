"""Hash of the chemical maps of the `tiny` preset (seed 0) after a short run of each method.

A regression check for changes that must not change behaviour (a refactor, a move of code):
run it before and after; the same hashes mean bit-identical maps (docs/results.md,
"Layout change"). ``python experiments/maps_checksum.py [joint] [two-step]``; set
``MAPS_CHECKSUM_SAVE=DIR`` to also keep the maps as ``DIR/<method>.npz``.
"""

import dataclasses
import hashlib
import os
import sys

# one thread for XLA and BLAS: multi-threaded CPU reductions need not be bit-reproducible
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
).strip()
for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[v] = "1"

import numpy as np  # noqa: E402

from diffxas.simulate.presets import preset, simulate  # noqa: E402
from diffxas.solvers.joint.config import JointConfig  # noqa: E402
from diffxas.solvers.joint.run import reconstruct_joint  # noqa: E402
from diffxas.solvers.twostep.run import TwoStepConfig, reconstruct_two_step  # noqa: E402

SAVE = os.environ.get("MAPS_CHECKSUM_SAVE")  # folder: also save the maps as <method>.npz


def _flat(prefix, v, out):
    """Arrays, scalars and strings of a maps field; dicts (std, extra) by sorted key."""
    if isinstance(v, dict):
        for k in sorted(v):
            _flat(f"{prefix}.{k}", v[k], out)
    elif v is not None:
        out[prefix] = np.asarray(v)


def maps_hash(result, name: str = "") -> str:
    """sha256 over every field of result.maps (arrays by dtype, shape and bytes; dict fields
    such as ``std`` by sorted key; scalars and strings by value)."""
    fields = {}
    for f in dataclasses.fields(result.maps):
        _flat(f.name, getattr(result.maps, f.name), fields)
    if SAVE:
        os.makedirs(SAVE, exist_ok=True)
        np.savez(os.path.join(SAVE, f"{name}.npz"), **fields)
    h = hashlib.sha256()
    for k in sorted(fields):
        a = fields[k]
        h.update(k.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(np.ascontiguousarray(a).tobytes() if a.dtype.kind != "O" else repr(a.tolist()).encode())
    return h.hexdigest()


sim = simulate(preset("tiny", seed=0))
ds = sim.dataset
total = hashlib.sha256()
runs = {
    "joint": lambda: reconstruct_joint(ds, JointConfig.make(steps=30, seed=0)),
    "two-step": lambda: reconstruct_two_step(
        ds,
        TwoStepConfig.fast(
            epie=dataclasses.replace(TwoStepConfig.fast().epie, epochs=12, kk_start=8, kk_every=2, decay_start=9)
        ),
    ),
}
for name in sys.argv[1:] or list(runs):
    hx = maps_hash(runs[name](), name)
    total.update(hx.encode())
    print(name, hx, flush=True)
print("combined", total.hexdigest())
