#!/bin/bash
# Experiment N (issue 12): see results/configs/smollm2-L15-seeds-baselines.yaml. Reuses H4's cache (the same harvest).
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -m scaffold_sae study --config results/configs/smollm2-L15-seeds-baselines.yaml --cache-dir runs/H4/study/cache \
    --out runs/N --no-progress
cp runs/N/report/results.json runs/N/report/report.md results/seeds-baselines-smollm2/
