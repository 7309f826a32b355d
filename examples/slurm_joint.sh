#!/bin/bash
# Joint solver on several GPUs / nodes with SLURM: the frames are split over every GPU of
# the job (diffxas.solvers.joint.parallel), parameters are replicated, gradients are summed with psum.
#
#   sbatch examples/slurm_joint.sh data.cxi joint.h5 [STEPS]
#
# One process per GPU (multi-controller JAX). `diffxas reconstruct --distributed` calls
# jax.distributed.initialize(), which reads the SLURM step environment (SLURM_JOB_ID,
# SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID): the coordinator is the
# first node of the step, its port derived from the job id. Each process reads only its
# share of the frames from the CXI file (host memory for the frames: 1/N of them per
# process; the initialisation's one pass over all frames reads them in blocks), process 0
# writes the checkpoint and the results file. See docs/distributed.md.
#
# Open MPI 4 instead of srun:
#   mpirun -np 8 --map-by ppr:4:node diffxas reconstruct DATA --method joint -o OUT --distributed
#   (jax reads OMPI_MCA_orte_hnp_uri, OMPI_COMM_WORLD_SIZE/RANK/LOCAL_RANK).
# Anything else (Open MPI 5, ssh): on each host i of N
#   diffxas reconstruct DATA --method joint -o OUT --coordinator host0:12345 --num-processes N --process-id i
#
#SBATCH --job-name=diffxas-joint
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4          # = GPUs per node: one JAX process per GPU
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --mem-per-gpu=32G            # host memory per process: ~1/N of the frames + ~2 GiB (docs/distributed.md)
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

# --resume: a requeued or resubmitted job continues from the checkpoint (OUT.ckpt, kept with
# --keep-checkpoint until the run is done). chunk_size: frames per scan step, split over all GPUs.
srun --kill-on-bad-exit=1 diffxas reconstruct "$DATA" --method joint -o "$OUT" --steps "$STEPS" \
    --distributed --resume --keep-checkpoint --no-progress --set joint.chunk_size=512
