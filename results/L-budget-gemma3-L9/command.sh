#!/bin/bash
# Experiment L (issue 12, item 4; written, not run yet): see results/configs/gemma-L9-budget.yaml.
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -m scaffold_sae study --config results/configs/gemma-L9-budget.yaml --out runs/L --no-progress
cp runs/L/report/results.json runs/L/report/report.md results/L-budget-gemma3-L9/
