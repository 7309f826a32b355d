#!/bin/bash
# Joint solver on several GPUs / nodes with SLURM: the frames are split over every GPU of
# the job (diffxas.parallel), parameters are replicated, gradients are summed with psum.
#
#   sbatch examples/slurm_joint.sh data.cxi joint.h5 [STEPS]
#
# One process per GPU (multi-controller JAX). jax.distributed.initialize() reads the SLURM
# step environment (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID,
# SLURM_LOCALID): the coordinator is the first node of the step, its port derived from the
# job id. Every process reads the whole CXI file (host memory: the full frames per
# process; device memory: its own share of the frames, see docs/scaling.md).
#
# Open MPI 4 instead of srun:  mpirun -np 8 --map-by ppr:4:node python -c "$PY" ...
#   (jax reads OMPI_MCA_orte_hnp_uri, OMPI_COMM_WORLD_SIZE/RANK/LOCAL_RANK).
# Anything else (Open MPI 5, ssh): export JAX_COORDINATOR_ADDRESS=host0:12345 and call
#   jax.distributed.initialize(num_processes=N, process_id=i) in each process.
#
#SBATCH --job-name=diffxas-joint
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # = GPUs per node: one JAX process per GPU
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --mem=0                      # all host memory of the node (each process holds the frames)
#SBATCH --time=02:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail

DATA=${1:?usage: sbatch examples/slurm_joint.sh DATA.cxi RESULT.h5 [STEPS]}
OUT=${2:?usage: sbatch examples/slurm_joint.sh DATA.cxi RESULT.h5 [STEPS]}
STEPS=${3:-500}

# site-specific: activate the environment that has diffxas with jax[cuda12]
# module load cuda/12 ; source /path/to/diffxas/.venv/bin/activate

# Each process sees only its GPU (--gpus-per-task=1): jax.local_devices() has one device,
# jax.devices() lists all SLURM_NTASKS of them after initialize().
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # grow GPU memory as needed (the step's peak is in docs/scaling.md)

read -r -d '' PY <<'EOF' || true
import sys
from diffxas.parallel import initialize_distributed

initialize_distributed()          # before any other JAX call; a no-op for a single process
import jax
from diffxas.io import read_cxi, write_result
from diffxas.joint import JointConfig
from diffxas.parallel import reconstruct_joint_sharded

data, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
main = jax.process_index() == 0
if main:
    print(f"{jax.process_count()} processes, {jax.device_count()} devices: {jax.devices()}", flush=True)
ds = read_cxi(data)
cfg = JointConfig(steps=steps, chunk_size=512)     # chunk: frames per scan step, split over all devices
res = reconstruct_joint_sharded(ds, cfg, progress=main, checkpoint=out + ".ckpt", resume=True)
if main:                                             # results are replicated: one process writes
    write_result(out, res)
    print(f"wrote {out}: {res.history['wall_s'][0]:.0f} s, compile {res.history['compile_s'][0]:.0f} s", flush=True)
EOF

srun --kill-on-bad-exit=1 python -c "$PY" "$DATA" "$OUT" "$STEPS"
