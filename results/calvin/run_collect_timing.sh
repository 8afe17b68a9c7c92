#!/usr/bin/env bash
# Times `dynaguide calvin collect` (uniform mixture over the 14 behaviours) at the paper's 200x200 static
# camera and at a CPU training resolution (96x96); writes results/calvin/collect_<size>.json.
# Usage (from the repo root): nohup results/calvin/run_collect_timing.sh > results/calvin/collect.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:-$PWD}
N=${N:-28}
OUT=${OUT:-/tmp/calvin_collect_timing}
mkdir -p "$OUT"
for SIZE in 200 96; do
  RESUME=""
  [ -f "$OUT/demos_$SIZE.hdf5" ] && RESUME="--resume"   # JSON "seconds" and "demos" then cover this run only
  $PY -m dynaguide.cli calvin collect --out "$OUT/demos_$SIZE.hdf5" --demos "$N" --static-size "$SIZE" \
      $RESUME --json results/calvin/collect_$SIZE.json
done
