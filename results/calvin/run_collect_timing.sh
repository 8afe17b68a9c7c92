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
# The full 1,000-demonstration timing at the CPU training resolution (N1000=0 skips it):
if [ "${N1000:-1000}" -gt 0 ]; then
  RESUME=""
  [ -f "$OUT/demos_1000_96.hdf5" ] && RESUME="--resume"
  $PY -m dynaguide.cli calvin collect --out "$OUT/demos_1000_96.hdf5" --demos "${N1000:-1000}" --static-size 96 \
      $RESUME --json results/calvin/collect_1000_96.json
fi
