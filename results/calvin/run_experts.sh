#!/usr/bin/env bash
# Measures every scripted expert over 50 seeded episodes on both scenes (about 15-30 min on a loaded CPU).
# Usage (from the repo root): nohup results/calvin/run_experts.sh > results/calvin/experts.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=${PYTHONPATH:-$PWD}
$PY -m dynaguide.cli calvin experts --episodes 50 --json results/calvin/experts_procedural.json
if [ -d ../shared/calvin_assets ]; then
  $PY -m dynaguide.cli calvin experts --calvin-data-dir ../shared/calvin_assets --table calvin_table_D \
      --episodes 50 --json results/calvin/experts_calvin_D.json
fi
