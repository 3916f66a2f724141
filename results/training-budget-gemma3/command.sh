#!/bin/bash
# Experiment L (issue 12, item 4): see results/configs/gemma-L9-budget.yaml. Ran 2026-11-28 in 81 min on 2 cores.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -m scaffold_sae study --config results/configs/gemma-L9-budget.yaml --out runs/L --no-progress
cp runs/L/report/results.json runs/L/report/report.md results/training-budget-gemma3/
