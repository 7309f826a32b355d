#!/usr/bin/env bash
# Run every study: ./experiments/run_all.sh [--quick] [other options of the study scripts]
#   --quick : minutes per study on 2 CPU cores (tiny geometry); without it: the full studies (GPU).
# Results (plots, findings.md, summary.csv) go to experiments/results/<study>-<mode>/,
# the sweep folders (data, results files) to experiments/runs/<study>-<mode>/ (add --resume to continue).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
for study in dose energies overlap realism fairness; do
  echo "=== $study $*"
  "$PY" "experiments/$study.py" "$@"
done
