#!/usr/bin/env bash
# One prepared device check for a session that is lent a GPU (issue #4: the GPU test, GPU
# speed against the FFT floor, wall time of the `small` runs on the GPU). Every step gets
# min(its cap, the time left before DEADLINE seconds), so a slow step cannot eat the
# rest and the command ends inside the device's per-call limit; everything lands in $OUT
# as it is made (a step cut short leaves its log). Order = priority.
#
#   On the device machine (repo root; `.whl` carried, see benchmarks/README.md):
#     bash benchmarks/device_check.sh                    # DEADLINE=540 s by default
#   Plumbing test on any CPU (tiny shapes, a few steps):
#     SMOKE=1 OUT=/tmp/dc bash benchmarks/device_check.sh
#
# Outputs in $OUT: summary.txt (the log of steps, rc, wall times and metrics),
# devices.txt, gpu_test.log, bench-quick.json, bench-large.json (+ .err), PRESET.cxi and
# its truth, PRESET-joint.h5 / PRESET-two-step.h5 with .metrics.json.
set -uo pipefail
OUT=${OUT:-device-check}
DEADLINE=${DEADLINE:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
START=$(date +%s)
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  # packages the device image lacks (xraydb and its needs), carried as wheels
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # diffxas from this checkout, not installed
DX="$PY -m diffxas.app.cli"

if [ "${SMOKE:-0}" = 1 ]; then
  PRESET=tiny; JOINT_OPT="--steps 3"; TS_OPT="--iterations 2"
  QUICK="--suite quick --only f64 --no-epie"; LARGE="--suite quick --only m32 --no-epie"
else
  PRESET=small; JOINT_OPT=""; TS_OPT=""
  QUICK="--suite quick"; LARGE="--suite full --only f4096 m256 m512 k40 b1024 --no-epie"
fi

exec 3>&1  # the script's own stdout: log lines go there and to summary.txt, never into a step's log
log() { echo "== $(date -u +%H:%M:%S) +$(( $(date +%s) - START ))s $*" | tee -a "$OUT/summary.txt" >&3; }
# run CAP CMD...: CMD under min(CAP, time left); skipped (rc 125) when under 20 s are left
run() {
  local left=$(( DEADLINE - ($(date +%s) - START) )) cap=$1; shift
  (( left < 20 )) && { log "skipped (deadline): $*"; return 125; }
  (( cap > left )) && cap=$left
  timeout "$cap" "$@"; local rc=$?
  log "rc $rc (cap ${cap}s): ${*:1:4}"
  return $rc
}

log "devices"
run 60 $PY -c "import jax; print(jax.__version__, jax.default_backend(), jax.devices())" 2>&1 | tee "$OUT/devices.txt"
log "GPU test (tests/test_joint_solver.py -k gpu)"
run 120 $PY -m pytest -q -p no:cacheprovider tests/test_joint_solver.py -k gpu > "$OUT/gpu_test.log" 2>&1
tail -3 "$OUT/gpu_test.log" | tee -a "$OUT/summary.txt"
log "benchmark: $QUICK"
run 150 $PY -m benchmarks.run $QUICK --out "$OUT/bench-quick.json" > /dev/null 2> "$OUT/bench-quick.err"
log "simulate $PRESET (seed 0)"
run 90 $DX simulate "$OUT/$PRESET.cxi" --preset "$PRESET" --seed 0 --no-progress > "$OUT/simulate.log" 2>&1
for m in joint two-step; do
  log "reconstruct $PRESET --method $m"
  opt=$JOINT_OPT; [ "$m" = two-step ] && opt=$TS_OPT
  s0=$(date +%s)
  run 150 $DX reconstruct "$OUT/$PRESET.cxi" --method "$m" -o "$OUT/$PRESET-$m.h5" $opt --no-progress > "$OUT/$PRESET-$m.log" 2>&1
  log "$m wall $(( $(date +%s) - s0 )) s (process, incl. start-up and compile)"
  if [ -f "$OUT/$PRESET-$m.h5" ]; then
    run 60 $DX evaluate "$OUT/$PRESET-$m.h5" --truth "$OUT/$PRESET.truth.h5" --json "$OUT/$PRESET-$m.metrics.json" \
      > "$OUT/$PRESET-$m.eval.log" 2>&1
    head -12 "$OUT/$PRESET-$m.eval.log" >> "$OUT/summary.txt"
  fi
done
log "benchmark: $LARGE"
run 180 $PY -m benchmarks.run $LARGE --out "$OUT/bench-large.json" > /dev/null 2> "$OUT/bench-large.err"
log done
