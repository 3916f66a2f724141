#!/bin/bash
# Experiment M3 (issue 12): see results/configs/gemma-L9-matryoshka-seeds.yaml. Needs the demo's cache (make demo).
set -euo pipefail
PY=${PY:-.venv/bin/python}
$PY -m scaffold_sae study --config results/configs/gemma-L9-matryoshka-seeds.yaml --cache-dir runs/demo/cache \
    --out runs/M3 --no-progress
cp runs/M3/report/results.json runs/M3/report/report.md results/matryoshka-seeds-gemma3/
